"""AuthServer, driven by http.client and pyspnego as an independent client."""

from __future__ import annotations

import glob
import http.client
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from typing import Any

import pytest

from httpx_extensions.testing import DEMO_USERS, AuthServer, pytest_plugin
from httpx_extensions.testing._acceptor import UserFile
from httpx_extensions.testing._handler import Config

from ._client import PASSWORD, client, connect, handshake, header, port_of, raw, send, server_token

auth_server = pytest_plugin.auth_server


def test_ntlm_handshake_on_one_connection_serves_the_user(server: AuthServer) -> None:
    """A 3-leg NTLM handshake on one connection ends in 200 as EXAMPLE\\alice."""
    conn = connect(server)
    response, body, _ = handshake(conn)
    data = json.loads(body)
    assert response.status == 200
    assert response.headers["X-Remote-User"] == data["user"] == "EXAMPLE\\alice"
    assert data["mech"] == "ntlm"
    assert data["request_index"] == 2
    assert data["client_port"] == conn.sock.getsockname()[1]
    assert (data["method"], data["path"]) == ("GET", "/")


def test_authenticated_connection_needs_no_header(server: AuthServer) -> None:
    """Once authenticated, later requests on the same connection are served without a header."""
    conn = connect(server)
    handshake(conn)
    response, body = send(conn, path="/next")
    assert response.status == 200
    assert json.loads(body)["user"] == "EXAMPLE\\alice"
    assert json.loads(body)["request_index"] == 3


def test_new_connection_gets_both_challenges(server: AuthServer) -> None:
    """A new connection without a header gets 401 with Negotiate and NTLM as two headers."""
    handshake(connect(server))
    response, _ = send(connect(server))
    assert response.status == 401
    assert response.headers.get_all("WWW-Authenticate") == ["Negotiate", "NTLM"]


def test_type3_on_another_connection_is_rejected(server: AuthServer) -> None:
    """A type-3 sent on another connection than its type-1 gets 401 with bare challenges."""
    ctx = client()
    response, _ = send(connect(server), header("NTLM", ctx.step()))
    authenticate = ctx.step(server_token(response, "NTLM"))
    response, _ = send(connect(server), header("NTLM", authenticate))
    assert response.status == 401
    assert response.headers.get_all("WWW-Authenticate") == ["Negotiate", "NTLM"]


def test_wrong_password_is_rejected(server: AuthServer) -> None:
    """A type-3 computed from a wrong password gets 401 and the connection stays anonymous."""
    conn = connect(server)
    response, _, _ = handshake(conn, password="wrong")
    assert response.status == 401
    assert response.headers.get_all("WWW-Authenticate") == ["Negotiate", "NTLM"]
    assert send(conn)[0].status == 401


@pytest.mark.parametrize("user", ["alice", "EXAMPLE\\alice", "example\\ALICE", "alice@EXAMPLE"])
def test_user_name_forms(server: AuthServer, user: str) -> None:
    """Bare, domain-qualified (any case) and UPN user names all authenticate as alice."""
    response, body, _ = handshake(connect(server), user=user)
    assert response.status == 200
    assert json.loads(body)["user"] == "EXAMPLE\\alice"


def test_other_domain_is_rejected(server: AuthServer) -> None:
    """A user name qualified with another domain is not a user of this server."""
    assert handshake(connect(server), user="OTHER\\alice")[0].status == 401


def test_negotiate_spnego_completes_with_mutual_auth_token(server: AuthServer) -> None:
    """SPNEGO-wrapped NTLM under Negotiate succeeds and its final token completes the client."""
    response, body, ctx = handshake(connect(server), scheme="Negotiate", protocol="negotiate")
    assert response.status == 200
    assert json.loads(body)["mech"] == "ntlm"
    ctx.step(server_token(response, "Negotiate"))
    assert ctx.complete


def test_negotiate_header_with_raw_ntlm_token(server: AuthServer) -> None:
    """A raw NTLM token under the Negotiate scheme is accepted, answered under Negotiate."""
    response, body, _ = handshake(connect(server), scheme="Negotiate", protocol="ntlm")
    assert response.status == 200
    assert json.loads(body)["user"] == "EXAMPLE\\alice"


def test_ntlm_scheme_server_offers_and_takes_ntlm_only() -> None:
    """scheme="ntlm" challenges with NTLM alone and refuses the Negotiate scheme."""
    with AuthServer(scheme="ntlm") as ntlm_server:
        response, _ = send(connect(ntlm_server))
        assert response.headers.get_all("WWW-Authenticate") == ["NTLM"]
        assert handshake(connect(ntlm_server), scheme="Negotiate")[0].status == 401
        assert handshake(connect(ntlm_server))[0].status == 200


def test_malformed_authorization_is_rejected(server: AuthServer) -> None:
    """Unknown schemes, bad base64 and garbage tokens get 401, never an error."""
    conn = connect(server)
    for value in ["Basic YWxpY2U6cHc=", "NTLM !!!", "NTLM", "Negotiate AAAA"]:
        assert send(conn, value)[0].status == 401
    assert handshake(conn)[0].status == 200


def test_anon_paths_need_no_auth(server: AuthServer) -> None:
    """Paths under /anon are served anonymously; /anonymous is not under /anon."""
    conn = connect(server)
    response, body = send(conn, path="/anon/x?y=1")
    assert response.status == 200 and json.loads(body)["user"] is None
    assert send(conn, path="/anonymous")[0].status == 401


def test_request_bodies_are_read_and_counted(server: AuthServer) -> None:
    """Content-Length and chunked bodies are read whole; their length is echoed."""
    conn = connect(server)
    handshake(conn)
    response, body = send(conn, method="POST", body=b"x" * 100_000)
    assert json.loads(body)["body_length"] == 100_000
    chunks = iter([b"abc", b"", b"defgh"])  # http.client sends an iterable chunked
    response, body = send(conn, method="PUT", body=chunks)
    assert (response.status, json.loads(body)["body_length"]) == (200, 8)
    assert send(conn)[0].status == 200


def test_per_request_auth_forgets_after_the_request() -> None:
    """With connection_bound=False the identity ends with the request that completed it."""
    with AuthServer(connection_bound=False, persistent_auth_header=True) as per_request:
        conn = connect(per_request)
        response, _, _ = handshake(conn)
        assert response.status == 200
        assert response.headers["Persistent-Auth"] == "false"
        assert send(conn)[0].status == 401
        assert handshake(conn)[0].status == 200


def test_persistent_auth_header(server: AuthServer) -> None:
    """persistent_auth_header=True marks authenticated responses Persistent-Auth: true."""
    assert handshake(connect(server))[0].getheader("Persistent-Auth") is None
    with AuthServer(persistent_auth_header=True) as persistent:
        conn = connect(persistent)
        assert handshake(conn)[0].headers["Persistent-Auth"] == "true"
        assert send(conn)[0].headers["Persistent-Auth"] == "true"


def test_counters(server: AuthServer) -> None:
    """connections, handshakes, requests and per-user counts add up; reset_counters zeroes them."""
    conn = connect(server)
    handshake(conn)
    send(conn)
    handshake(connect(server), user="bob", password=DEMO_USERS["bob"])
    send(connect(server))
    send(connect(server), path="/anon")
    assert (server.connections, server.handshakes, server.requests) == (4, 4, 7)
    assert server.user_requests == {"alice": 2, "bob": 1}
    server.reset_counters()
    assert (server.connections, server.handshakes, server.requests) == (0, 0, 0)
    assert server.user_requests == {}


def test_stop_with_open_connections_returns_quickly() -> None:
    """stop() closes idle keep-alive connections and joins every thread at once."""
    server = AuthServer()
    server.start()
    conns = [connect(server) for _ in range(5)]
    for conn in conns[:3]:
        handshake(conn)
    conns[3].connect()  # connected, no request yet
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("AuthServer")]
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        send(conns[0])
    server.stop()  # idempotent


def test_two_servers_in_one_process_keep_their_users() -> None:
    """Two servers with different users (same name, other password) each accept only theirs."""
    with (
        AuthServer({"alice": "one"}, domain="ONE") as one,
        AuthServer({"alice": "two", "carol": "c"}, domain="TWO") as two,
    ):
        assert handshake(connect(one), password="one")[0].status == 200
        assert handshake(connect(two), password="two")[0].status == 200
        assert handshake(connect(one), password="two")[0].status == 401
        assert handshake(connect(one), user="carol", password="c")[0].status == 401
        response, body, _ = handshake(connect(two), user="TWO\\carol", password="c")
        assert json.loads(body)["user"] == "TWO\\carol"


def test_concurrent_handshakes_on_two_servers() -> None:
    """Handshakes racing on two servers' threads never see the other server's user file."""
    failures: list[int] = []

    def worker(target: AuthServer, password: str) -> None:
        for _ in range(10):
            status = handshake(connect(target), password=password)[0].status
            if status != 200:
                failures.append(status)

    with AuthServer({"alice": "one"}) as one, AuthServer({"alice": "two"}) as two:
        threads = [
            threading.Thread(target=worker, args=(target, pw))
            for target, pw in [(one, "one"), (two, "two")] * 3
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_url_and_lifecycle_errors() -> None:
    """url needs a running server; a server starts once; bad settings raise ValueError."""
    server = AuthServer()
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        assert "connections=0" in repr(server)
        with pytest.raises(RuntimeError):
            server.start()
    assert "stopped" in repr(server)
    with server:  # a stopped server starts again
        assert send(connect(server), path="/anon")[0].status == 200
    bad: list[dict[str, Any]] = [
        {"scheme": "basic"},
        {"schemes": ()},
        {"users": {"a:b": "pw"}},
        {"users": {"alice": "pw\n"}},
        {"domain": "EX\\AMPLE"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            AuthServer(**kwargs)


def test_bind_refused_cleans_up() -> None:
    """A port already in use raises OSError from start() and leaves no user file behind."""
    pattern = os.path.join(tempfile.gettempdir(), "httpx-ext-users-*")
    before = set(glob.glob(pattern))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = AuthServer(port=busy.getsockname()[1])
        with pytest.raises(OSError):
            server.start()
    assert set(glob.glob(pattern)) == before


def test_pytest_plugin_fixture(auth_server: AuthServer) -> None:
    """The plugin's auth_server fixture yields a running server with the demo users."""
    assert auth_server.users == DEMO_USERS
    assert auth_server.domain == "EXAMPLE"
    assert handshake(connect(auth_server))[0].status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /anon HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /anon HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /anon HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"POST /anon HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
    ],
)
def test_malformed_bodies_get_400(server: AuthServer, request_bytes: bytes) -> None:
    """A negative length, a bad chunk size or a body cut short gets 400 and a closed connection."""
    answer = raw(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.requests == 1


def test_chunked_trailers_and_expect_continue(server: AuthServer) -> None:
    """Chunk trailers are skipped, and Expect: 100-continue is answered before the body."""
    answer = raw(
        server,
        b"POST /anon HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    assert b'"body_length": 3' in answer
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(b"PUT /anon HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n")
        sock.sendall(b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"ok")
        assert b'"body_length": 2' in sock.recv(65536)


def test_head_has_headers_only(server: AuthServer) -> None:
    """HEAD is answered with Content-Length and no body, keeping the connection usable."""
    conn = connect(server)
    response, body = send(conn, method="HEAD", path="/anon")
    assert (response.status, body) == (200, b"")
    assert int(response.headers["Content-Length"]) > 0
    assert send(conn, path="/anon")[0].status == 200


def test_empty_domain() -> None:
    """With domain="" users are shown without a domain and authenticate by bare name."""
    with AuthServer({"dave": "pw"}, domain="") as plain:
        response, body, _ = handshake(connect(plain), user="dave", password="pw")
        assert (response.status, json.loads(body)["user"]) == (200, "dave")


def test_user_file_env_is_restored(monkeypatch: pytest.MonkeyPatch, server: AuthServer) -> None:
    """A caller's own NTLM_USER_FILE is back in place after every handshake step."""
    monkeypatch.setenv("NTLM_USER_FILE", "/elsewhere")
    assert handshake(connect(server))[0].status == 200
    assert os.environ["NTLM_USER_FILE"] == "/elsewhere"


def test_ipv6_loopback() -> None:
    """host="::1" binds IPv6 and gives a bracketed URL."""
    with AuthServer(host="::1") as v6:
        assert v6.url.startswith("http://[::1]:")
        assert send(connect(v6, host="::1"), path="/anon")[0].status == 200


def test_logs_name_users_but_never_tokens(
    caplog: pytest.LogCaptureFixture, server: AuthServer
) -> None:
    """Debug logs say who authenticated and that a client hung up, never a token or password."""
    caplog.set_level(logging.DEBUG, logger="httpx_extensions.testing")
    conn = connect(server)
    response, _, _ = handshake(conn)
    handshake(connect(server), password="wrong")
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # reset: the server's read fails
    server.stop()
    ours = [r for r in caplog.records if r.name == "httpx_extensions.testing"]
    text = "\n".join(r.getMessage() for r in ours)
    assert "authenticated as EXAMPLE\\alice (ntlm)" in text
    assert "authentication failed" in text
    assert "ended with an error" in text
    assert PASSWORD not in text and "TlRMTVNT" not in text and "NTLM " not in text


def test_principals_resolve_to_users() -> None:
    """NTLM principals map to the configured spelling; Kerberos principals pass unchanged."""
    user_file = UserFile({"Alice": "pw"}, "EXAMPLE")
    try:
        config = Config(
            "negotiate", ("Negotiate",), True, False, "EXAMPLE", {"Alice": "pw"}, user_file
        )
        assert config.resolve("example\\ALICE", "ntlm") == ("Alice", "EXAMPLE\\Alice", "ntlm")
        assert config.resolve("mallory", "ntlm") is None
        assert config.resolve("alice@REALM", "kerberos") == ("alice@REALM",) * 2 + ("kerberos",)
        assert config.resolve("", "kerberos") is None
    finally:
        user_file.close()
