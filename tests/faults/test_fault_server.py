"""The fault server itself, checked with plain sockets and http.client (never the library)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any

import h11
import pytest

from tests.faults import FAULT_KINDS, FaultServer

from ._support import exchange, request_bytes
from .conftest import Connect


def get_json(conn: http.client.HTTPConnection, path: str = "/", **kw: Any) -> dict[str, Any]:
    conn.request(kw.pop("method", "GET"), path, **kw)
    response = conn.getresponse()
    assert response.status == 200
    result: dict[str, Any] = json.loads(response.read())
    return result


def strict_parse(data: bytes) -> None:
    """Feed a response to h11, a strict parser, as the answer to a GET."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
        pass


# -- normal behaviour ---------------------------------------------------------------------


def test_binds_loopback_on_a_free_port(srv: FaultServer) -> None:
    """The server listens on 127.0.0.1 only, on the port its URL names."""
    assert srv.url == f"http://127.0.0.1:{srv.port}"
    assert srv._listener is not None and srv._listener.getsockname() == ("127.0.0.1", srv.port)


def test_normal_requests_keep_alive(srv: FaultServer, connect: Connect) -> None:
    """Plain requests get 200 JSON naming the client port and the index on the connection."""
    conn = connect(srv)
    first, second = get_json(conn), get_json(conn, "/other?q=1")
    port = conn.sock.getsockname()[1]
    assert first == {"client_port": port, "request_index": 1, "user": None}
    assert second == {"client_port": port, "request_index": 2, "user": None}
    assert srv.stats().connections == 1 and srv.stats().requests == 2


def test_request_bodies_are_read(srv: FaultServer, connect: Connect) -> None:
    """Content-Length and chunked bodies are consumed, so the connection stays in sync."""
    conn = connect(srv)
    get_json(conn, method="POST", body=b"x" * 70_000)
    get_json(conn, method="POST", body=iter([b"ab", b"", b"cd" * 5000]))
    conn.request("PUT", "/", body=b"{}", headers={"Expect": "100-continue"})
    assert conn.getresponse().read()
    assert get_json(conn)["request_index"] == 4


def test_connection_close_is_honoured(srv: FaultServer) -> None:
    """A request with `Connection: close` gets `Connection: close` and then EOF."""
    data, error = exchange(srv, request_bytes("/", Connection="close"))
    assert error is None
    assert b"\r\nConnection: close\r\n" in data and data.endswith(b'"user": null}')


def test_malformed_request_gets_400(srv: FaultServer) -> None:
    """Bytes that are not a request are answered 400 and the connection closed."""
    data, error = exchange(srv, b"HELLO\r\nnot a header\r\n\r\n")
    assert error is None and data.startswith(b"HTTP/1.1 400 ")


def test_unknown_fault_name_gets_404(srv: FaultServer, connect: Connect) -> None:
    """A `/fault/<name>` path with a name no fault has is answered 404 listing the kinds."""
    conn = connect(srv)
    conn.request("GET", "/fault/nonsense")
    response = conn.getresponse()
    assert response.status == 404
    assert json.loads(response.read())["faults"] == list(FAULT_KINDS)


# -- faults forced by path ----------------------------------------------------------------


def test_reset_headers(srv: FaultServer) -> None:
    """`reset_headers` sends part of the header block, then RST."""
    data, error = exchange(srv, request_bytes("/fault/reset_headers"))
    assert isinstance(error, ConnectionResetError)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n" not in data
    assert srv.stats().faults == {"reset_headers": 1}


def test_reset_body(srv: FaultServer) -> None:
    """`reset_body` sends all headers and part of the body, then RST."""
    data, error = exchange(srv, request_bytes("/fault/reset_body"))
    assert isinstance(error, ConnectionResetError)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert 0 < len(body) < length


def test_truncate_body(srv: FaultServer, connect: Connect) -> None:
    """`truncate_body` sends fewer bytes than Content-Length, then a clean FIN."""
    conn = connect(srv)
    conn.request("GET", "/fault/truncate_body")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    data, error = exchange(srv, request_bytes("/fault/truncate_body"))
    assert error is None  # EOF, not a reset


def test_bad_status_line(srv: FaultServer, connect: Connect) -> None:
    """`bad_status_line` sends a status line with no numeric code, which parsers reject."""
    conn = connect(srv)
    conn.request("GET", "/fault/bad_status_line")
    with pytest.raises(http.client.BadStatusLine):
        conn.getresponse()
    data, _ = exchange(srv, request_bytes("/fault/bad_status_line"))
    with pytest.raises(h11.RemoteProtocolError):
        strict_parse(data)


def test_bad_header(srv: FaultServer) -> None:
    """`bad_header` sends a header line without a colon, which a strict parser rejects."""
    data, error = exchange(srv, request_bytes("/fault/bad_header"))
    assert error is None and b"\r\nthis line has no colon\r\n" in data
    with pytest.raises(h11.RemoteProtocolError):
        strict_parse(data)


def test_huge_header(srv: FaultServer) -> None:
    """`huge_header` sends a 1 MiB header line before an otherwise normal 200."""
    data, error = exchange(srv, request_bytes("/fault/huge_header", Connection="close"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert error is None and head.startswith(b"HTTP/1.1 200 OK\r\nX-Huge: ")
    assert len(head) > 1024 * 1024 and json.loads(body)["request_index"] == 1


def test_stall(srv: FaultServer, connect: Connect) -> None:
    """`stall` answers only after stall_seconds: an impatient client times out first."""
    conn = connect(srv, 0.2)
    conn.request("GET", "/fault/stall")
    with pytest.raises(TimeoutError):
        conn.getresponse()
    started = time.monotonic()
    data, _ = exchange(srv, request_bytes("/fault/stall", Connection="close"))
    assert time.monotonic() - started >= 0.45 and data.startswith(b"HTTP/1.1 200 OK")


def test_accept_no_answer(srv: FaultServer) -> None:
    """`accept_no_answer` reads the request and never answers; it closes after hold_seconds."""
    with socket.create_connection((srv.host, srv.port), timeout=0.2) as sock:
        sock.sendall(request_bytes("/fault/accept_no_answer"))
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(2)
        assert sock.recv(1) == b""  # server gave up after hold_seconds, without a byte
    assert srv.stats().faults == {"accept_no_answer": 1}


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("garbage_token", b"WWW-Authenticate: NTLM !!!notbase64\r\n"),
        ("empty_token", b"WWW-Authenticate: NTLM \r\n"),
        ("unknown_scheme", b'WWW-Authenticate: Bearer realm="x"\r\n'),
    ],
)
def test_bad_challenges_keep_alive(srv: FaultServer, kind: str, line: bytes) -> None:
    """Bad-token faults send a 401 with exactly that one challenge and keep the connection."""
    with socket.create_connection((srv.host, srv.port), timeout=2) as sock:
        sock.sendall(request_bytes(f"/fault/{kind}") + request_bytes("/", Connection="close"))
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    first, _, second = data.partition(b'"unauthorized"}')
    assert first.startswith(b"HTTP/1.1 401 ") and first.count(b"WWW-Authenticate") == 1
    assert line in first and b"Connection: close" not in first
    assert second.startswith(b"HTTP/1.1 200 OK") and b'"request_index": 2' in second


def test_close_after_401_and_challenge_conn_close(srv: FaultServer) -> None:
    """Both send the 401 offer then FIN; only `challenge_conn_close` says `Connection: close`."""
    for kind, says_close in (("close_after_401", False), ("challenge_conn_close", True)):
        data, error = exchange(srv, request_bytes(f"/fault/{kind}"))
        assert error is None and data.startswith(b"HTTP/1.1 401 ")
        assert b"WWW-Authenticate: Negotiate\r\nWWW-Authenticate: NTLM\r\n" in data
        assert (b"\r\nConnection: close\r\n" in data) is says_close
    assert srv.stats().faults == {"close_after_401": 1, "challenge_conn_close": 1}


def test_endless_401_drawn_sticks_to_the_connection(connect: Connect) -> None:
    """A drawn `endless_401` answers 401 to its request and every later one on the connection."""
    with FaultServer(rate=1.0, kinds=["endless_401"], fault_on_request=(2, 2)) as srv:
        conn = connect(srv)
        get_json(conn)
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 401 and response.read()
        assert srv.stats().faults == {"endless_401": 3} and srv.stats().connections == 1


# -- faults drawn per connection ----------------------------------------------------------


def outcomes(srv: FaultServer, count: int) -> list[str]:
    """Make `count` sequential one-request connections; name each one's outcome."""
    names = []
    for _ in range(count):
        data, error = exchange(srv, request_bytes("/", Connection="close"))
        names.append(type(error).__name__ if error else data[:12].decode())
    return names


def test_drawn_faults_are_deterministic_per_seed() -> None:
    """The same seed gives the same faults on the same connections; reset() starts over."""
    kwargs: dict[str, Any] = {"rate": 0.5, "kinds": ["reset_headers"], "seed": 42}
    with FaultServer(**kwargs) as one, FaultServer(**kwargs) as two:
        first = outcomes(one, 20)
        assert outcomes(two, 20) == first
        assert {"ConnectionResetError", "HTTP/1.1 200"} == set(first)
        stats = one.stats()
        assert stats.connections == stats.requests == 20
        assert stats.faults == {"reset_headers": first.count("ConnectionResetError")}
        one.reset()
        assert one.stats().connections == 0 and one.stats().total_faults == 0
        assert outcomes(one, 20) == first


def test_drawn_fault_fires_on_the_drawn_request(connect: Connect) -> None:
    """With fault_on_request=(2, 2) the first request is served and the second one faults."""
    with FaultServer(rate=1.0, kinds=["reset_headers"], fault_on_request=(2, 2)) as srv:
        conn = connect(srv)
        assert get_json(conn)["request_index"] == 1
        conn.request("GET", "/")
        with pytest.raises(ConnectionResetError):
            conn.getresponse()


# -- lifecycle ----------------------------------------------------------------------------


def test_exit_stops_busy_threads_within_one_second() -> None:
    """Leaving the block ends stalled, holding and idle connections within one second."""
    with FaultServer(stall_seconds=30, hold_seconds=30, idle_timeout=30) as srv:
        socks = [socket.create_connection((srv.host, srv.port)) for _ in range(3)]
        for sock, path in zip(socks, ["/fault/stall", "/fault/accept_no_answer", "/"]):
            sock.sendall(request_bytes(path))
        while srv.stats().requests < 3:
            time.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith(f"fault-server-{srv.port}")]
    for sock in socks:
        sock.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 1.5},
        {"kinds": []},
        {"kinds": ["no_such_fault"]},
        {"fault_on_request": (0, 1)},
        {"fault_on_request": (3, 2)},
        {"stall_seconds": 61},
        {"hold_seconds": -1},
        {"idle_timeout": 0},
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    """Out-of-range arguments and unknown fault names raise ValueError."""
    with pytest.raises(ValueError):
        FaultServer(**kwargs)
