"""ExClient + NTLMAuth/NegotiateAuth against the misbehaving FaultServer, one test per fault.

Every fault is forced by path (``/auth/fault/<kind>``). Each test checks four things: the
exact error (or answer) the caller gets, that it came within the auth object's leg limit
and a time bound, that no connection stays active or reserved, and that the *next*
request on the same client, to a well-behaved path, authenticates and succeeds.
"""

from __future__ import annotations

import logging
import pathlib
import socket
import threading
import time
import typing
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from httpx_extensions import (
    CredentialsRejectedError,
    ExClient,
    HandshakeError,
    NegotiateAuth,
    NTLMAuth,
)
from tests.faults import FAULT_KINDS, FaultServer, write_user_file

USER, PASSWORD = "DOM\\alice", "Passw0rd!"
READ_TIMEOUT = 0.5
TIME_BOUND = 3.0  # seconds for any fault to end in its error; the server stalls for 2 s

Auth = typing.Union[NTLMAuth, NegotiateAuth]
auth_classes = pytest.mark.parametrize("auth_cls", [NTLMAuth, NegotiateAuth])
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def srv() -> Iterator[FaultServer]:
    """One fault server for the module; stall and accept_no_answer outlast the read timeout."""
    with FaultServer(stall_seconds=2.0, hold_seconds=2.0) as server:
        yield server


@pytest.fixture(autouse=True)
def ntlm_only(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM_USER_FILE for the server's acceptor, and a Kerberos setup with no KDC at all."""
    users = write_user_file(
        tmp_path / "users", [("DOM", "alice", PASSWORD), ("", "alice", PASSWORD)]
    )
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    krb5_conf = tmp_path / "krb5.conf"  # Negotiate falls back to NTLM at once
    krb5_conf.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")


@pytest.fixture
async def client(srv: FaultServer) -> AsyncIterator[ExClient]:
    """An ExClient with a short read timeout; the server's counters start from zero."""
    srv.reset()
    async with ExClient(timeout=httpx.Timeout(5.0, read=READ_TIMEOUT)) as c:
        yield c


async def fault(
    client: ExClient, srv: FaultServer, kind: str, auth: Auth, error: type[Exception]
) -> Exception:
    """GET /auth/fault/<kind>: assert the exact error, the leg limit and the time bound."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        await client.get(f"{srv.url}/auth/fault/{kind}", auth=auth)
    elapsed = time.monotonic() - started
    assert type(info.value) is error, repr(info.value)
    assert elapsed < TIME_BOUND, f"{kind} took {elapsed:.2f} s"
    assert srv.stats().requests <= auth.max_legs
    assert srv.stats().faults.get(kind, 0) >= 1
    return info.value


async def next_request_succeeds(client: ExClient, srv: FaultServer, auth: Auth) -> None:
    """Nothing is left active or reserved, and a normal authenticated GET gets 200."""
    state = client.pool_state()
    assert (state.active, state.reserved, state.queued) == (0, 0, 0), state
    response = await client.get(f"{srv.url}/auth/ok", auth=auth)
    assert response.status_code == 200
    assert response.json()["user"] == USER
    assert response.extensions["auth_mechanism"] == "ntlm"


def test_every_fault_kind_has_a_test() -> None:
    """Each of the fault server's kinds has its own focused test in this module."""
    assert {f"test_{kind}" for kind in FAULT_KINDS} <= set(globals())


@auth_classes
async def test_reset_headers(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A reset halfway through the status and headers is httpx.ReadError."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "reset_headers", auth, httpx.ReadError)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_reset_body(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A reset halfway through the 401's body is httpx.ReadError."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "reset_body", auth, httpx.ReadError)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_close_after_401(
    srv: FaultServer, auth_cls: type[Auth], caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 then FIN without `Connection: close`, every time: the handshake restarts while
    a whole one fits in max_legs (from an anonymous request: three legs), then
    HandshakeError. The flow's own pinned legs finding
    their connection gone log at DEBUG: the caller pinned nothing, so there is no WARNING
    to act on (the error says what happened)."""
    caplog.set_level(logging.DEBUG, logger="httpx_extensions")
    srv.reset()
    # The pool sees the FIN only if it arrives before the next leg is written; a slow
    # response hook makes sure it does (the other side of that race:
    # test_pinned_leg_written_to_a_connection_the_server_closes).
    hooks = {"response": [_let_the_fin_arrive]}
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT)
    async with ExClient(timeout=timeout, event_hooks=hooks) as client:
        auth = auth_cls(USER, PASSWORD)
        error = await fault(client, srv, "close_after_401", auth, HandshakeError)
        assert "lost its connection twice (4 of at most 6 legs sent" in str(error)
        assert srv.stats().connections == srv.stats().requests == 4
        await next_request_succeeds(client, srv, auth)
    gone = [r for r in caplog.records if "was requested but" in r.getMessage()]
    assert gone and all(r.levelno == logging.DEBUG for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def _let_the_fin_arrive(response: httpx.Response) -> None:
    await anyio.sleep(0.05)


@auth_classes
async def test_challenge_conn_close(
    client: ExClient, srv: FaultServer, auth_cls: type[Auth]
) -> None:
    """A challenge with `Connection: close` restarts once, then HandshakeError."""
    auth = auth_cls(USER, PASSWORD)
    error = await fault(client, srv, "challenge_conn_close", auth, HandshakeError)
    assert "lost its connection twice" in str(error)
    assert srv.stats().connections == 2
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_stall(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A server that answers after 2 s trips the 0.5 s read timeout: httpx.ReadTimeout."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "stall", auth, httpx.ReadTimeout)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_truncate_body(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """Half a body and FIN is httpx.RemoteProtocolError."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "truncate_body", auth, httpx.RemoteProtocolError)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_bad_status_line(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """`HTTP/1.1 OK 200` is httpx.RemoteProtocolError."""
    auth = auth_cls(USER, PASSWORD)
    error = await fault(client, srv, "bad_status_line", auth, httpx.RemoteProtocolError)
    assert "status line" in str(error)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_bad_header(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A header line without a colon is httpx.RemoteProtocolError."""
    auth = auth_cls(USER, PASSWORD)
    error = await fault(client, srv, "bad_header", auth, httpx.RemoteProtocolError)
    assert "header line" in str(error)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_endless_401(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """Fresh challenges forever: the type 3 gets a bare 401, CredentialsRejectedError."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "endless_401", auth, CredentialsRejectedError)
    assert srv.stats().requests == 3  # anonymous, type 1, type 3: no second handshake
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_accept_no_answer(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A server that reads the request and never answers: httpx.ReadTimeout."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "accept_no_answer", auth, httpx.ReadTimeout)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_huge_header(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A 1 MB header exceeds h11's limit: httpx.RemoteProtocolError, no unbounded read."""
    auth = auth_cls(USER, PASSWORD)
    error = await fault(client, srv, "huge_header", auth, httpx.RemoteProtocolError)
    assert "too long" in str(error)
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_garbage_token(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """A challenge token that is not base64 is HandshakeError naming it malformed."""
    auth = auth_cls(USER, PASSWORD)
    error = await fault(client, srv, "garbage_token", auth, HandshakeError)
    assert "malformed NTLM token" in str(error).replace("ntlm", "NTLM")
    assert srv.stats().requests == 2  # the bare offer, then the type 1 it answered
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_empty_token(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """`NTLM ` with no token after our type 1 is a bare 401: CredentialsRejectedError."""
    auth = auth_cls(USER, PASSWORD)
    await fault(client, srv, "empty_token", auth, CredentialsRejectedError)
    assert srv.stats().requests == 2
    await next_request_succeeds(client, srv, auth)


@auth_classes
async def test_unknown_scheme(client: ExClient, srv: FaultServer, auth_cls: type[Auth]) -> None:
    """Only `Bearer` offered: the 401 is handed back untouched (one request, no token sent)."""
    auth = auth_cls(USER, PASSWORD)
    started = time.monotonic()
    response = await client.get(f"{srv.url}/auth/fault/unknown_scheme", auth=auth)
    assert time.monotonic() - started < TIME_BOUND
    assert response.status_code == 401
    assert response.headers.get_list("WWW-Authenticate") == ['Bearer realm="x"']
    assert "authorization" not in response.request.headers
    assert srv.stats().requests == 1
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()
    await next_request_succeeds(client, srv, auth)


class _StaleFirstConnection:
    """A relay to FaultServer whose first connection is a stale keep-alive connection.

    On connection 1 it answers the first request with a keep-alive `401 NTLM` offer, then
    reads the next request (the pinned type 1) and closes without answering: the classic
    keep-alive race, made deterministic. Later connections are relayed byte for byte.
    """

    def __init__(self, upstream: FaultServer) -> None:
        self._upstream = (upstream.host, upstream.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        self._listener.close()

    def _accept(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            target = self._stale if first else self._relay
            first = False
            thread = threading.Thread(target=target, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _stale(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(2.0)
            _read_head(sock)
            offer = b"WWW-Authenticate: NTLM\r\nContent-Length: 0\r\n"
            sock.sendall(b"HTTP/1.1 401 Unauthorized\r\n" + offer + b"\r\n")
            _read_head(sock)

    def _relay(self, sock: socket.socket) -> None:
        with sock, socket.create_connection(self._upstream) as up:
            for conn in (sock, up):
                conn.settimeout(0.1)
            while not self._stop.is_set():
                for src, dst in ((sock, up), (up, sock)):
                    try:
                        data = src.recv(65536)
                    except socket.timeout:
                        continue
                    if not data:
                        return
                    dst.sendall(data)


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_pinned_leg_written_to_a_connection_the_server_closes(srv: FaultServer) -> None:
    """The type 1 lost on a stale connection is resent on a new one; the logon completes."""
    stale = _StaleFirstConnection(srv)
    try:
        async with ExClient(timeout=httpx.Timeout(5.0)) as client:
            auth = NTLMAuth(USER, PASSWORD)
            response = await client.get(f"{stale.url}/auth/ok", auth=auth)
            assert response.status_code == 200
            assert response.json()["user"] == USER
    finally:
        stale.close()


async def test_a_send_that_fails_after_the_fast_paths_first_token_leaves_no_cycle(
    client: ExClient, srv: FaultServer
) -> None:
    """On the fast path, a handshake the shared first-token hook started on a new connection
    that then fails leaves no request <-> security context cycle: the request is freed by
    reference counting."""
    import gc
    import weakref

    from httpx_extensions._flow import _ARMED

    seen: list[weakref.ref[httpx.Request]] = []
    armed: list[bool] = []

    async def capture(request: httpx.Request) -> None:
        seen.append(weakref.ref(request))
        armed.append(_ARMED in request.extensions)

    auth = NTLMAuth(USER, PASSWORD)
    assert (await client.get(f"{srv.url}/auth/ok", auth=auth)).status_code == 200
    client.event_hooks["request"] = [capture]
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(httpx.ReadError):
            await client.get(
                f"{srv.url}/auth/fault/reset_headers",
                auth=auth,
                extensions={"new_connection": True},
            )
        assert srv.stats().faults == {"reset_headers": 1}
        assert armed == [True]  # the fast path, with the shared hook
        assert seen and seen[0]() is None
    finally:
        gc.enable()
    client.event_hooks["request"] = []
    await next_request_succeeds(client, srv, auth)
