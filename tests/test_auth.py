"""The auth flows against a real pyspnego acceptor behind httpx.MockTransport.

``FakeServer`` plays both sides of docs/internals.md: a connection-bound server (state per
connection) and a tiny pool that honours ``conn_id``/``identity``/``new_connection`` and
reports ``conn_id``/``conn_tagged``; with ``pool=False`` it reports nothing, like httpx.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import pathlib
import re
import typing
import weakref

import anyio
import httpx
import pytest
import spnego
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import httpx_extensions
from httpx_extensions import (
    AuthenticationError,
    CredentialsRejectedError,
    HandshakeError,
    KerberosAuth,
    MechanismNotAllowedError,
    MutualAuthenticationError,
    NegotiateAuth,
    NTLMAuth,
    RequestBodyNotReplayableError,
)
from httpx_extensions._auth import _SpnegoAuth
from httpx_extensions._flow import Job
from httpx_extensions._headers import parse_challenges

pytestmark = pytest.mark.usefixtures("user_file")


@pytest.fixture
def user_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> pathlib.Path:
    """An NTLM_USER_FILE for pyspnego's acceptor with alice/pw in EXAMPLE."""
    path = tmp_path / "users"
    path.write_text("EXAMPLE:alice:pw\n:alice:pw\nEXAMPLE:bob:s3cret-Pass\n:bob:s3cret-Pass\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(path))
    if "kdc" in request.fixturenames:
        return path  # the real KDC's environment applies
    krb5_conf = tmp_path / "krb5.conf"  # no KDC anywhere: Kerberos fails fast, not after DNS
    krb5_conf.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")
    return path


class Conn:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.tag: object = None
        self.user: str | None = None
        self.ctx: typing.Any = None
        self.requests = 0


class FakeServer:
    """A connection-bound NTLM/Negotiate server and a fake pool, for MockTransport."""

    def __init__(
        self,
        schemes: tuple[str, ...] = ("Negotiate", "NTLM"),
        *,
        pool: bool = True,
        connection_bound: bool = True,
        close_first: int = 0,
        drop_after_challenge: int = 0,
        drop_after_bare: int = 0,
        headers: dict[str, str] | None = None,
        status: int = 401,
    ) -> None:
        self.schemes = schemes
        self.pool = pool
        self.connection_bound = connection_bound
        self.close_first = close_first
        #: Drop the connection after this many token challenges, unannounced (the next leg
        #: pinned to it lands on another connection), as a busy server does.
        self.drop_after_challenge = drop_after_challenge
        #: The same after this many answers to a request without credentials (a bare 401).
        self.drop_after_bare = drop_after_bare
        self.headers = headers or {}
        self.status = status
        self.conns: dict[str, Conn] = {}
        self.ids = itertools.count(1)
        self.log: list[tuple[str, str | None, int]] = []  # (conn_id, auth scheme, status)
        self.handshakes = 0

    def _conn(self, request: httpx.Request) -> Conn:
        ext = request.extensions
        pinned = ext.get("conn_id")
        if not self.pool and self.conns:  # httpx with one keep-alive connection
            return next(iter(self.conns.values()))
        if self.pool and pinned in self.conns and not ext.get("new_connection"):
            return self.conns[pinned]
        if self.pool and not ext.get("new_connection") and ext.get("identity") is not None:
            for conn in reversed(self.conns.values()):
                if conn.tag == ext["identity"]:
                    return conn
        conn = Conn(f"c{next(self.ids)}")
        self.conns[conn.conn_id] = conn
        return conn

    def __call__(self, request: httpx.Request) -> httpx.Response:
        conn = self._conn(request)
        tagged = conn.tag is not None and conn.tag == request.extensions.get("identity")
        conn.tag = request.extensions.get("identity")
        conn.requests += 1
        header = request.headers.get(
            "authorization" if self.status == 401 else "proxy-authorization"
        )
        response = self._answer(conn, header)
        self.log.append((conn.conn_id, header.split()[0] if header else None, response.status_code))
        if self.drop_after_challenge and conn.ctx is not None:  # a handshake between legs
            self.drop_after_challenge -= 1
            del self.conns[conn.conn_id]
        elif self.drop_after_bare and header is None and response.status_code == self.status:
            self.drop_after_bare -= 1
            del self.conns[conn.conn_id]
        if self.pool:
            response.extensions.update(
                conn_id=conn.conn_id, conn_tagged=tagged, conn_requests=conn.requests
            )
        return response

    def _challenge(self, token: bytes | None = None, scheme: str | None = None) -> httpx.Response:
        name = "WWW-Authenticate" if self.status == 401 else "Proxy-Authenticate"
        if token is not None:
            values = [f"{scheme} {base64.b64encode(token).decode()}"]
        else:
            values = list(self.schemes)
        headers = [(name, v) for v in values]
        if self.close_first > 0:
            self.close_first -= 1
            headers.append(("Connection", "close"))
        return httpx.Response(self.status, headers=headers)

    def _answer(self, conn: Conn, header: str | None) -> httpx.Response:
        if header is None:
            if conn.user is not None:
                return self._ok(conn.user)
            return self._challenge()
        scheme, _, b64 = header.partition(" ")
        if scheme not in self.schemes:
            return self._challenge()
        if conn.ctx is None:
            protocol = "ntlm" if base64.b64decode(b64).startswith(b"NTLMSSP") else "negotiate"
            conn.ctx = spnego.server(protocol=protocol)
        try:
            out = conn.ctx.step(base64.b64decode(b64))
        except Exception:
            conn.ctx = None
            return self._challenge()
        if not conn.ctx.complete:
            return self._challenge(out, scheme)
        user, conn.ctx = conn.ctx.client_principal, None
        self.handshakes += 1
        if self.connection_bound:
            conn.user = user
        response = self._ok(user)
        if out:
            response.headers["WWW-Authenticate"] = f"{scheme} {base64.b64encode(out).decode()}"
        return response

    def _ok(self, user: str | None) -> httpx.Response:
        return httpx.Response(200, json={"user": user}, headers=self.headers)


def _client(server: FakeServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server))


@pytest.mark.anyio
@pytest.mark.parametrize("cls", [NegotiateAuth, NTLMAuth])
async def test_handshake_then_reuse(cls: type[_SpnegoAuth]) -> None:
    """One handshake on the 401's connection; later requests reuse it with no header."""
    server = FakeServer()
    auth = cls("EXAMPLE\\alice", "pw")
    async with _client(server) as client:
        first = await client.get("http://h/", auth=auth)
        second = await client.get("http://h/", auth=auth)
    assert first.status_code == 200 and first.json()["user"].lower().endswith("alice")
    assert first.extensions["auth_mechanism"] == "ntlm"
    assert second.extensions["auth_mechanism"] == "ntlm"
    assert server.handshakes == 1 and len(server.conns) == 1
    # NegotiateAuth too: Kerberos cannot work for realm EXAMPLE (no KDC), and the server
    # offers NTLM, so NTLM in its own scheme (test_negotiate_only_server_gets_spnego_ntlm).
    scheme = "NTLM"
    assert server.log == [
        ("c1", None, 401),
        ("c1", scheme, 401),
        ("c1", scheme, 200),
        ("c1", None, 200),
    ]


@pytest.mark.anyio
async def test_negotiate_only_server_gets_spnego_ntlm() -> None:
    """Kerberos cannot work, and the server offers Negotiate alone: NTLM inside SPNEGO (the
    server's final token verified); its first token is the one that found out about Kerberos."""
    server = FakeServer(("Negotiate",))
    auth = NegotiateAuth("EXAMPLE\\alice", "pw")
    async with _client(server) as client:
        first = await client.get("http://h/", auth=auth)
        second = await client.get("http://h/", auth=auth)
    assert first.json()["user"].lower().endswith("alice")
    assert first.extensions["auth_mechanism"] == second.extensions["auth_mechanism"] == "ntlm"
    assert server.log == [
        ("c1", None, 401),
        ("c1", "Negotiate", 401),
        ("c1", "Negotiate", 200),
        ("c1", None, 200),
    ]


@pytest.mark.anyio
async def test_negotiate_switches_to_the_ntlm_scheme_once_kerberos_fails() -> None:
    """The first handshake finds Kerberos unusable (a SPNEGO context, built and stepped, but
    its token never sent): with NTLM offered too, raw NTLMSSP in that scheme. Not when NTLM
    is forbidden: allow_ntlm=False never sends NTLM, whatever the server offers."""
    server = FakeServer(("Negotiate", "NTLM"))
    async with _client(server) as client:
        await client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))
        assert [scheme for _, scheme, _ in server.log] == [None, "NTLM", "NTLM"]
        with pytest.raises(httpx_extensions.AuthenticationError, match="KDC"):
            await client.get(
                "http://h/x", auth=NegotiateAuth("EXAMPLE\\bob", "pw", allow_ntlm=False)
            )
    assert "NTLM" not in [scheme for _, scheme, _ in server.log[3:]]


@pytest.mark.anyio
async def test_auth_objects_built_per_request_probe_kerberos_once(
    steps_in_threads: list[object],
) -> None:
    """20 concurrent requests, each with its own NegotiateAuth of one user and password: one
    first step finds out about Kerberos in a worker thread; the others wait on the event
    loop (not in threads, which would tie up the thread limiter), then use NTLM."""
    server = FakeServer()
    async with _client(server) as client:

        async def one() -> None:
            auth = NegotiateAuth("EXAMPLE\\alice", "pw")
            response = await client.get("http://h/", auth=auth)
            assert response.extensions["auth_mechanism"] == "ntlm"

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert len(steps_in_threads) == 1
    assert server.handshakes == 20


@pytest.mark.anyio
async def test_no_auth_needed_means_no_handshake() -> None:
    """A 200 to the anonymous first leg ends the flow without a handshake."""
    server = FakeServer()
    server.conns["c0"] = Conn("c0")
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as c:
        response = await c.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))
    assert response.status_code == 200 and "auth_mechanism" not in response.extensions
    assert response.request.extensions["identity"].principal == "EXAMPLE\\alice"
    assert "Authorization" not in response.request.headers


@pytest.mark.anyio
async def test_lost_authentication_goes_to_fresh_connection() -> None:
    """A 401 on a connection tagged with our identity restarts on a new connection."""
    server = FakeServer()
    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    async with _client(server) as client:
        await client.get("http://h/", auth=auth)
        server.conns["c1"].user = None  # the server forgot the logon
        response = await client.get("http://h/", auth=auth)
    assert response.status_code == 200 and server.handshakes == 2
    assert server.log[3:] == [
        ("c1", None, 401),
        ("c2", None, 401),
        ("c2", "NTLM", 401),
        ("c2", "NTLM", 200),
    ]


@pytest.mark.anyio
async def test_connection_close_challenge_restarts_once() -> None:
    """A challenge with Connection: close moves the handshake to a fresh connection, once."""
    server = FakeServer(close_first=1)
    async with _client(server) as client:
        response = await client.get("http://h/", auth=NTLMAuth("EXAMPLE\\alice", "pw"))
    assert response.status_code == 200
    assert [c for c, _, _ in server.log] == ["c1", "c2", "c2", "c2"]
    server = FakeServer(close_first=5)
    async with _client(server) as client:
        with pytest.raises(HandshakeError, match="twice"):
            await client.get("http://h/", auth=NTLMAuth("EXAMPLE\\alice", "pw"))


@pytest.mark.anyio
async def test_a_handshake_that_loses_its_connection_restarts_while_legs_remain() -> None:
    """A connection lost between two legs without notice (a busy server dropping idle
    keep-alive connections) restarts the handshake on another connection, as long as a
    whole handshake still fits in max_legs; then HandshakeError says what happened."""
    server = FakeServer(drop_after_challenge=2)
    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    auth.max_legs = 8
    async with _client(server) as client:
        response = await client.get("http://h/", auth=auth)
    assert response.status_code == 200
    # anonymous, type 1, type 3 (lost: answered on c2), type 1, type 3 (lost again), ...
    assert [c for c, _, _ in server.log] == ["c1", "c1", "c2", "c2", "c3", "c3", "c3"]
    for drops, max_legs, times in ((5, 8, "3 times"), (5, 6, "twice")):
        server = FakeServer(drop_after_challenge=drops)
        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        auth.max_legs = max_legs
        async with _client(server) as client:
            with pytest.raises(HandshakeError, match=f"lost its connection {times}"):
                await client.get("http://h/", auth=auth)
        assert len(server.log) <= max_legs


@pytest.mark.anyio
async def test_a_restart_from_an_anonymous_request_needs_three_legs() -> None:
    """A type 1 that lands on another connection (the one it was pinned to was dropped
    after its bare 401) restarts anonymously on a new connection: allowed only while three
    more legs fit, so the error names the lost connections, not the leg limit."""
    server = FakeServer(drop_after_bare=1)
    async with _client(server) as client:
        response = await client.get("http://h/", auth=NTLMAuth("EXAMPLE\\alice", "pw"))
    assert response.status_code == 200
    assert [c for c, _, _ in server.log] == ["c1", "c2", "c3", "c3", "c3"]
    server = FakeServer(drop_after_bare=2)
    async with _client(server) as client:
        with pytest.raises(HandshakeError, match=r"lost its connection twice \(4 of at most 6"):
            await client.get("http://h/", auth=NTLMAuth("EXAMPLE\\alice", "pw"))


@pytest.mark.anyio
async def test_an_auth_object_is_freed_by_reference_counting() -> None:
    """The fast path's shared hook (held by the auth object) refers back to it weakly:
    an auth object used on the fast path needs no cyclic garbage collection."""
    import gc

    from httpx_extensions import ExClient

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        async with ExClient() as client:
            auth = NTLMAuth("EXAMPLE\\alice", "pw")
            for _ in range(2):  # a handshake, then the fast path
                assert (await client.get(server.url + "/", auth=auth)).status_code == 200
            assert auth._fast
            ref = weakref.ref(auth)
            gc.collect()
            gc.disable()
            try:
                del auth
                assert ref() is None
            finally:
                gc.enable()


@pytest.mark.anyio
async def test_wrong_password_is_rejected() -> None:
    """A bare 401 after the last token raises CredentialsRejectedError, password unnamed."""
    server = FakeServer()
    async with _client(server) as client:
        with pytest.raises(CredentialsRejectedError) as info:
            await client.get("http://h/", auth=NTLMAuth("EXAMPLE\\alice", "wrong-pw"))
    assert "wrong-pw" not in str(info.value) and "alice" in str(info.value)


@pytest.mark.anyio
async def test_plain_client_sends_proactively() -> None:
    """Without conn_ids the second request starts with a token (no anonymous leg)."""
    server = FakeServer(pool=False, connection_bound=False)
    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    async with _client(server) as client:
        assert (await client.get("http://h/", auth=auth)).status_code == 200
        assert (await client.get("http://h/", auth=auth)).status_code == 200
    assert [s for _, s, _ in server.log] == [None, "NTLM", "NTLM", "NTLM", "NTLM"]


@pytest.mark.anyio
async def test_ntlm_only_server_and_allow_ntlm_false() -> None:
    """allow_ntlm=False and KerberosAuth refuse an NTLM-only server with a typed error."""
    for auth in (NegotiateAuth("EXAMPLE\\alice", "pw", allow_ntlm=False), KerberosAuth()):
        async with _client(FakeServer(("NTLM",))) as client:
            with pytest.raises(MechanismNotAllowedError, match="NTLM"):
                await client.get("http://h/", auth=auth)


@pytest.mark.anyio
async def test_negotiate_uses_ntlm_scheme_when_only_offered() -> None:
    """NegotiateAuth answers an NTLM-only server with the NTLM scheme."""
    server = FakeServer(("NTLM",))
    async with _client(server) as client:
        response = await client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))
    assert response.status_code == 200 and server.log[1][1] == "NTLM"


@pytest.mark.anyio
async def test_foreign_challenge_is_returned() -> None:
    """A 401 with only Basic is handed back unchanged."""
    async with _client(FakeServer(("Basic",))) as client:
        response = await client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))
    assert response.status_code == 401


@pytest.mark.anyio
async def test_endless_challenges_are_bounded() -> None:
    """A server that always answers with a new token stops after max_legs."""
    token = base64.b64encode(b"NTLMSSP\x00garbage").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": f"Negotiate {token}"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(AuthenticationError):
            await client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))


@pytest.mark.anyio
async def test_mutual_auth_needs_final_token() -> None:
    """SPNEGO without the server's final token fails mutual auth unless relaxed."""

    class NoFinal(FakeServer):
        def _ok(self, user: str | None) -> httpx.Response:
            return httpx.Response(200, json={"user": user})

        def _answer(self, conn: Conn, header: str | None) -> httpx.Response:
            response = super()._answer(conn, header)
            if response.status_code == 200:
                response.headers.pop("WWW-Authenticate", None)
            return response

    async with _client(NoFinal(("Negotiate",))) as client:
        with pytest.raises(MutualAuthenticationError):
            await client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\alice", "pw"))
        relaxed = NegotiateAuth("EXAMPLE\\alice", "pw", mutual_auth=False)
        assert (await client.get("http://h/", auth=relaxed)).status_code == 200


@pytest.mark.anyio
async def test_body_replayed_and_streams_refused() -> None:
    """A bytes body is sent on every leg; a one-shot stream fails before sending."""
    bodies: list[bytes] = []
    server = FakeServer()

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return server(request)

    async def stream() -> typing.AsyncIterator[bytes]:
        yield b"chunk"

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        await client.post("http://h/", content=b"data", auth=auth)
        assert bodies == [b"data"] * 3
        buffered = await client.post("http://h/", content=stream(), auth=auth)
        assert buffered.status_code == 200 and bodies[-1] == b"chunk"
        unbuffered = NTLMAuth("EXAMPLE\\alice", "pw", buffer_body=False)
        count = len(bodies)
        with pytest.raises(RequestBodyNotReplayableError):
            await client.post("http://h/", content=stream(), auth=unbuffered)
        assert len(bodies) == count


@pytest.mark.anyio
async def test_proxy_407() -> None:
    """proxy= answers 407/Proxy-Authenticate with Proxy-Authorization for the proxy's SPN."""
    server = FakeServer(status=407)
    auth = NTLMAuth("EXAMPLE\\alice", "pw", proxy="http://proxy.example:3128")
    async with _client(server) as client:
        response = await client.get("http://h/", auth=auth)
    assert response.status_code == 200
    assert response.request.extensions["identity"].target == "HTTP@proxy.example"
    assert response.request.extensions["identity"].proxy
    assert "Authorization" not in response.request.headers


@pytest.mark.anyio
async def test_spn_override_per_host() -> None:
    """spn= overrides only the named host; the Host header is never rewritten."""
    auth = NegotiateAuth(spn={"alias.example": "HTTP/web01.example"})
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await client.get("http://alias.example/", auth=auth)
        await client.get("http://other.example/", auth=auth)
    assert seen[0].extensions["identity"].target == "HTTP@web01.example"
    assert seen[0].headers["host"] == "alias.example"
    assert seen[1].extensions["identity"].target == "HTTP@other.example"


def test_sync_client_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """httpx.Client works too; DEBUG logs name mechanism and SPN but no secret or token."""
    server = FakeServer()
    caplog.set_level(logging.DEBUG, logger="httpx_extensions.auth")
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        response = client.get("http://h/", auth=NegotiateAuth("EXAMPLE\\bob", "s3cret-Pass"))
    assert response.status_code == 200 and response.json()["user"].lower().endswith("bob")
    text = caplog.text
    assert "HTTP@h" in text and "s3cret" not in text and "TlRM" not in text and "ntlm" in text
    assert not re.search(r"(Negotiate|NTLM) [A-Za-z0-9+/=]{16,}", text)


def test_repr_hides_password() -> None:
    """No repr of the auth objects or identities contains the password."""
    for cls in (NegotiateAuth, NTLMAuth, KerberosAuth):
        auth = cls("EXAMPLE\\alice", "hunter2-secret")
        assert "hunter2-secret" not in repr(auth) and "***" in repr(auth)
        assert "hunter2-secret" not in repr(vars(auth))
    assert repr(NegotiateAuth()) == "NegotiateAuth(username='<current user>')"


def test_public_names() -> None:
    """The auth classes and errors are public and subclass the httpx errors."""
    for name in ("NegotiateAuth", "NTLMAuth", "KerberosAuth", "AuthIdentity"):
        assert name in httpx_extensions.__all__
    assert issubclass(CredentialsRejectedError, httpx.RequestError)


# -- the flow as a state machine: any server behaviour ends in a response or a typed error ----

_statuses = st.sampled_from([200, 401, 401, 401, 403, 500])
_values = st.sampled_from(
    ["Negotiate", "NTLM", "Negotiate, NTLM", "Basic realm=x", "NTLM !!!", "Negotiate oQcwBaADCgEC",
     "NTLM TlRMTVNTUAACAAAA", "", "Negotiate " + base64.b64encode(b"\x00" * 40).decode()]
)  # fmt: skip
_responses = st.builds(
    lambda status, values, close, tagged, conn: (status, values, close, tagged, conn),
    _statuses,
    st.lists(_values, max_size=2),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "c1", "c2"]),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_responses, min_size=1, max_size=10), st.sampled_from([0, 1, 2]))
def test_flow_fuzz(script: list[tuple[typing.Any, ...]], which: int) -> None:
    """Driven with arbitrary responses, the flow only ever raises AuthenticationError."""
    auth = [NegotiateAuth("EXAMPLE\\alice", "pw"), NTLMAuth("EXAMPLE\\alice", "pw"),
            NegotiateAuth("EXAMPLE\\alice", "pw", allow_ntlm=False)][which]  # fmt: skip
    request = httpx.Request("GET", "https://h/")
    flow = auth._flow(request)
    value: typing.Any = None
    steps = iter(script)
    try:
        for _ in range(50):
            action = flow.send(value)
            if isinstance(action, Job):
                value = action.fn()
                continue
            status, values, close, tagged, conn = next(steps)
            headers = [("WWW-Authenticate", v) for v in values]
            if close:
                headers.append(("Connection", "close"))
            ext = {"conn_id": conn, "conn_tagged": tagged} if conn else {}
            value = httpx.Response(status, headers=headers, extensions=ext, request=action)
        raise AssertionError("the flow did not end")  # pragma: no cover
    except (StopIteration, AuthenticationError):
        pass
    assert parse_challenges([]) == []
    json.dumps(None)


# -- integration: the real threaded AuthServer, with ExClient and with plain httpx -----------

AuthServer = pytest.importorskip("httpx_extensions.testing").AuthServer


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["negotiate", "ntlm"])
async def test_exclient_concurrent_flows_reuse_connections(scheme: str) -> None:
    """200 concurrent requests through ExClient: each connection authenticates once."""
    import anyio

    from httpx_extensions import ExClient

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme=scheme) as server:
        auth = NegotiateAuth("EXAMPLE\\alice", "pw")
        users: list[str] = []
        async with ExClient(limits=httpx.Limits(max_connections=5)) as client:

            async def one() -> None:
                response = await client.get(server.url + "/", auth=auth)
                assert response.status_code == 200, response.headers
                assert response.extensions["auth_mechanism"] == "ntlm"
                users.append(response.json()["user"])

            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(one)
        assert len(users) == 200 and all(u.lower().endswith("alice") for u in users)
        assert server.connections <= 5
        # two legs with Authorization per connection (type 1 and type 3), nothing more
        assert server.handshakes <= 2 * server.connections


@pytest.mark.anyio
async def test_plain_httpx_against_auth_server() -> None:
    """A plain httpx.AsyncClient completes the handshake too (sequential requests)."""
    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        auth = NTLMAuth("alice", "pw", domain="EXAMPLE")
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                response = await client.get(server.url + "/", auth=auth)
                assert response.status_code == 200
                assert response.json()["user"].lower().endswith("alice")


@pytest.mark.anyio
async def test_exclient_wrong_password_and_identities_do_not_mix() -> None:
    """Wrong password raises; two users never share an authenticated connection."""
    from httpx_extensions import ExClient

    users = {"alice": "pw", "bob": "pw2"}
    with AuthServer(users=users, domain="EXAMPLE", scheme="negotiate") as server:
        async with ExClient() as client:
            with pytest.raises(CredentialsRejectedError):
                await client.get(server.url + "/", auth=NTLMAuth("EXAMPLE\\alice", "bad"))
            for _ in range(3):
                for name, password in users.items():
                    auth = NegotiateAuth(f"EXAMPLE\\{name}", password)
                    response = await client.get(server.url + "/", auth=auth)
                    assert response.json()["user"].lower().endswith(name)
            anonymous = await client.get(server.url + "/")
            assert anonymous.status_code == 401


@pytest.mark.anyio
async def test_exclient_new_connection_after_lost_logon() -> None:
    """A server that forgets the logon: the re-handshake moves to a fresh connection."""
    from httpx_extensions import ExClient

    with AuthServer(
        users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm", connection_bound=False
    ) as server:
        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        async with ExClient() as client:
            for _ in range(2):
                assert (await client.get(server.url + "/", auth=auth)).status_code == 200
        assert server.connections == 2


# -- real servers (root only): MIT KDC + Apache mod_auth_gssapi ---------------------------------


@pytest.mark.anyio
async def test_kerberos_against_apache(kdc: typing.Any, apache: typing.Any) -> None:
    """Kerberos SSO from the ticket cache, then an explicit NTLM-free Negotiate, on Apache."""
    from httpx_extensions import ExClient

    async with ExClient() as client:
        for auth in (KerberosAuth(), NegotiateAuth(allow_ntlm=False)):
            response = await client.get(apache.urls["krb"], auth=auth)
            assert response.status_code == 200, response.headers
            assert response.extensions["auth_mechanism"] == "kerberos"
        cb = await client.get(apache.urls["krb_cb"], auth=KerberosAuth())
        assert cb.status_code == 200


def test_identity_is_shared_per_target_and_hashes_by_value() -> None:
    """One auth object reuses its identity per SPN (the pool compares by ``is`` first);
    equal identities of two auth objects are equal and hash alike, so they share
    connections; another password or target is another identity."""
    from httpx_extensions._flow import AuthIdentity

    one = NTLMAuth("EXAMPLE\\alice", "pw-1")
    two = NTLMAuth("EXAMPLE\\alice", "pw-1")
    other = NTLMAuth("EXAMPLE\\alice", "pw-2")
    a = one._identity("HTTP@web")
    assert one._identity("HTTP@web") is a
    assert two._identity("HTTP@web") == a and hash(two._identity("HTTP@web")) == hash(a)
    assert other._identity("HTTP@web") != a
    assert one._identity("HTTP@api") != a
    copy = AuthIdentity(a.scheme, a.principal, a.target, a.credential, a.proxy)
    assert copy == a and hash(copy) == hash(a) and {copy: 1}[a] == 1


@pytest.mark.anyio
async def test_handshake_on_a_new_connection_skips_the_anonymous_round_trip() -> None:
    """Once an origin wanted NTLM, a flow that lands on a connection not yet authenticated
    sends its first token with the request itself: 2 requests per handshake, not 3. An
    authenticated connection still gets no Authorization at all."""
    from httpx_extensions import ExClient

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        async with ExClient(auth=auth) as client:
            first = await client.get(server.url + "/")
            assert first.status_code == 200
            assert (server.requests, server.handshakes) == (3, 2)  # probe, type 1, type 3
            server.reset_counters()
            fresh = await client.get(server.url + "/", extensions={"new_connection": True})
            assert fresh.status_code == 200 and fresh.json()["user"].lower().endswith("alice")
            assert fresh.extensions["conn_id"] != first.extensions["conn_id"]
            assert fresh.extensions["auth_mechanism"] == "ntlm"
            assert (server.requests, server.handshakes, server.connections) == (2, 2, 1)
            server.reset_counters()
            again = await client.get(server.url + "/")
            assert again.status_code == 200 and again.extensions["conn_tagged"]
            assert (server.requests, server.handshakes, server.connections) == (1, 0, 0)
            assert "Authorization" not in again.request.headers


def test_arming_a_request_chains_the_callers_hook_and_replaces_ours() -> None:
    """_arm tags the request and arms our hook for it; a before_send the caller put there
    is chained (called first, its headers kept); one of ours left by an earlier send of
    the request is replaced, never chained."""
    from httpx_extensions._flow import _ARMED, _arm, _Chained, _OriginHook
    from httpx_extensions._spnego import Target
    from httpx_extensions._transport import ConnectionFacts

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    identity = auth._identity("HTTP@web.example")
    hook = _OriginHook(auth, ("NTLM", "ntlm"), Target("HTTP", "web.example"))

    def mine(request: httpx.Request, facts: typing.Any) -> list[tuple[bytes, bytes]]:
        return [(b"X-Mine", b"1")]

    request = httpx.Request("GET", "http://web.example/", extensions={"before_send": mine})
    _arm(request, identity, hook)
    chained = request.extensions["before_send"]
    assert type(chained) is _Chained and chained.inner is mine and not chained.untagged_only
    assert request.extensions["identity"] is identity
    assert request.extensions[_ARMED]() is request
    headers = chained(request, ConnectionFacts("conn-1", False, typing.cast(typing.Any, None)))
    assert headers is not None and [name for name, _ in headers] == [b"X-Mine", b"Authorization"]
    _arm(request, identity, hook)  # sent again: the caller's hook once, not ours twice
    assert request.extensions["before_send"].inner is mine
    plain = httpx.Request("GET", "http://web.example/")
    _arm(plain, identity, hook)
    _arm(plain, identity, hook)
    assert plain.extensions["before_send"] is hook


def test_first_token_hook_gives_way_when_it_cannot_make_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No token from the hook (the flow then probes anonymously) when the context would
    block the event loop, fails to build, or yields nothing."""
    from httpx_extensions._flow import _ARMED, _STARTED, _OriginHook
    from httpx_extensions._spnego import Target
    from httpx_extensions._transport import ConnectionFacts

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    request = httpx.Request("GET", "http://web.example/")
    request.extensions = {_ARMED: weakref.ref(request)}
    facts = ConnectionFacts("conn-1", False, typing.cast(typing.Any, None))
    hook = _OriginHook(auth, ("NTLM", "ntlm"), Target("HTTP", "web.example"))

    class Ctx:
        def __init__(self, blocking: bool, token: bytes | None) -> None:
            self.blocking, self._token = blocking, token

        def step(self, _: object) -> bytes | None:
            return self._token

    def fails(*_: object) -> typing.NoReturn:
        raise httpx_extensions.NoCredentialsError("no ticket", request=request)

    for context in (
        lambda *_: Ctx(blocking=True, token=b"t"),
        lambda *_: Ctx(blocking=False, token=b""),
        fails,
    ):
        monkeypatch.setattr(auth, "_context", context)
        assert hook(request, facts) is None and _STARTED not in request.extensions


def test_shared_first_token_hook_acts_only_on_its_armed_request() -> None:
    """The fast path's first-token hook is one per origin: it adds a token only to the
    request armed with it (not a redirect's, not one whose flow ended), only on a connection
    not authenticated as its identity, and leaves what it started on that request."""
    from httpx_extensions._flow import _ARMED, _STARTED, _disarm, _OriginHook
    from httpx_extensions._spnego import Target
    from httpx_extensions._transport import ConnectionFacts

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    hook = _OriginHook(auth, ("NTLM", "ntlm"), Target("HTTP", "web.example"))
    stream = typing.cast(typing.Any, None)
    new_conn = ConnectionFacts("conn-2", False, stream)
    request = httpx.Request("GET", "http://web.example/")
    request.extensions = {"before_send": hook, _ARMED: weakref.ref(request)}
    redirect = httpx.Request("GET", "http://web.example/next", extensions=request.extensions)
    assert hook(redirect, new_conn) is None and _STARTED not in redirect.extensions
    assert hook(request, ConnectionFacts("conn-1", True, stream)) is None
    assert _STARTED not in request.extensions
    headers = hook(request, new_conn)
    assert headers is not None and headers[0][0] == b"Authorization"
    assert headers[0][1].startswith(b"NTLM TlRMTVNTUAAB")  # an NTLM NEGOTIATE message
    ctx, conn_id, choice = request.extensions[_STARTED]
    assert (ctx.protocol, conn_id, choice) == ("ntlm", "conn-2", ("NTLM", "ntlm"))
    _disarm(request)  # its flow ended
    assert _ARMED not in request.extensions and _STARTED not in request.extensions
    assert hook(request, new_conn) is None  # the request sent again, without a flow


@pytest.mark.anyio
async def test_untagged_only_hook_is_not_called_on_a_tagged_connection() -> None:
    """A before_send hook with ``untagged_only`` is skipped on a connection already tagged
    with the request's identity; one without it is called there too."""
    from httpx_extensions import ExClient

    class Hook:
        def __init__(self, untagged_only: bool) -> None:
            self.untagged_only = untagged_only
            self.calls: list[bool] = []

        def __call__(self, request: httpx.Request, facts: typing.Any) -> None:
            self.calls.append(facts.tagged)

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        async with ExClient() as client:
            for untagged_only in (True, False):
                hook = Hook(untagged_only)
                ext = {"identity": f"someone-{untagged_only}", "before_send": hook}
                for _ in range(2):
                    response = await client.get(server.url + "/anon", extensions=ext)
                    assert response.status_code == 200
                assert response.extensions["conn_tagged"]  # the second went to a tagged one
                assert hook.calls == ([False] if untagged_only else [False, True])
            # The same for a caller's hook on an auth flow's requests (which wraps it).
            auth = NTLMAuth("EXAMPLE\\alice", "pw")
            hook = Hook(untagged_only=True)
            for _ in range(3):  # a handshake, then the fast path on its connection
                response = await client.get(
                    server.url + "/", auth=auth, extensions={"before_send": hook}
                )
                assert response.status_code == 200
            assert response.extensions["conn_tagged"] and hook.calls == [False]


@pytest.mark.anyio
async def test_before_send_hook_that_raises_leaves_the_pool_whole() -> None:
    """An exception from a before_send hook reaches the caller; the connection it was
    about to use goes back to the pool unharmed and serves the next request."""
    from httpx_extensions import ExClient

    def boom(request: httpx.Request, facts: typing.Any) -> None:
        raise RuntimeError("hook failed")

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        async with ExClient(limits=httpx.Limits(max_connections=1)) as client:
            first = await client.get(server.url + "/anon")
            with pytest.raises(RuntimeError, match="hook failed"):
                await client.get(server.url + "/anon", extensions={"before_send": boom})
            state = client.pool_state()
            assert (state.active, state.reserved, state.idle) == (0, 0, 1)
            again = await client.get(server.url + "/anon")
            assert again.extensions["conn_id"] == first.extensions["conn_id"]


@pytest.mark.anyio
async def test_auth_flow_keeps_the_callers_own_before_send_hook() -> None:
    """A before_send hook the caller put on the request survives an auth flow: one that has
    no first-token hook of its own to set (it used to be removed), and one that has (the
    fast path, and a handshake on a new connection): the caller's hook is still called, and
    the headers of both reach the wire."""
    from httpx_extensions import ExClient

    seen: list[str] = []

    def mine(request: httpx.Request, facts: typing.Any) -> list[tuple[bytes, bytes]]:
        seen.append(facts.conn_id)
        return [(b"X-Mine", b"1")]

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        async with ExClient() as client:
            for extensions in ({}, {"new_connection": True}):  # first contact, then...
                seen.clear()
                r = await client.get(
                    server.url + "/", auth=auth, extensions={"before_send": mine, **extensions}
                )
                assert r.status_code == 200
                assert seen and seen[-1] == r.extensions["conn_id"]
                assert "x-mine" in r.extensions["before_send_headers"]
            # ...a new connection on the fast path: our first token and the caller's header
            assert auth._fast and r.extensions["conn_requests"] == 2
            assert set(r.extensions["before_send_headers"]) == {"x-mine"}  # its 2nd leg
            assert r.history and "authorization" in r.history[0].extensions["before_send_headers"]


@pytest.mark.anyio
async def test_a_burst_on_first_contact_sends_one_anonymous_request() -> None:
    """30 requests at once on a new client, 10 connections: one flow (the scout) meets the
    challenge anonymously; the others wait for its first token, then send theirs with their
    first request. The server sees 1 anonymous 401, 2 token legs per connection and the
    rest on authenticated connections: 41 requests, not 50."""
    from httpx_extensions import ExClient

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="ntlm") as server:
        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
        async with ExClient(auth=auth, limits=limits) as client:
            statuses: list[int] = []

            async def get() -> None:
                statuses.append((await client.get(server.url + "/")).status_code)

            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(get)
        assert statuses == [200] * 30
        assert (server.connections, server.handshakes, server.requests) == (10, 20, 41)
        assert auth._scouting == {}  # nothing left behind


@pytest.mark.anyio
async def test_scout_waiters_give_up_waiting_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flow waits for the scout at most SCOUT_WAIT_SECONDS, then goes its own way."""
    from httpx_extensions import _auth as auth_module
    from httpx_extensions._flow import _Scout

    monkeypatch.setattr(auth_module, "SCOUT_WAIT_SECONDS", 0.05)
    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    origin = ("http", "web.example", None)
    scout, waiter = _Scout(origin), _Scout(origin)
    assert await auth._scout(scout) is True
    with anyio.fail_after(2):
        assert await auth._scout(waiter) is False  # timed out: the scout never ended
    auth._end_scout(scout)
    auth._end_scout(scout)  # idempotent
    assert auth._scouting == {}
    assert await auth._scout(_Scout(origin)) is True  # a new scout may go


@pytest.mark.anyio
@pytest.mark.usefixtures("user_file")
async def test_fast_path_hands_over_to_the_whole_flow_when_it_must() -> None:
    """After a handshake, requests take the fast path; it hands over to the whole flow for
    a one-shot body it must not send twice, and when Negotiate's 'Kerberos unusable' verdict
    expires or a check finds Kerberos works (Kerberos is then tried again)."""
    import time

    from httpx_extensions import ExClient
    from httpx_extensions._spnego import KERBEROS_AVAILABLE

    async def stream() -> typing.AsyncIterator[bytes]:
        yield b"chunk"

    with AuthServer(users={"alice": "pw"}, domain="EXAMPLE", scheme="negotiate") as server:
        unbuffered = NTLMAuth("EXAMPLE\\alice", "pw", buffer_body=False)
        negotiate = NegotiateAuth("EXAMPLE\\alice", "pw")
        async with ExClient() as client:
            assert (await client.get(server.url + "/", auth=unbuffered)).status_code == 200
            assert unbuffered._fast == {} and unbuffered._handshaken
            assert (await client.get(server.url + "/", auth=unbuffered)).status_code == 200
            assert len(unbuffered._fast) == 1  # the second request took the fast path
            with pytest.raises(RequestBodyNotReplayableError):
                await client.post(server.url + "/", content=stream(), auth=unbuffered)

            for _ in range(2):
                response = await client.get(server.url + "/", auth=negotiate)
                assert response.status_code == 200
                assert response.extensions["auth_mechanism"] == "ntlm"
            if not KERBEROS_AVAILABLE:
                return
            ((origin, fast),) = negotiate._fast.items()
            negotiate._fast[origin] = fast._replace(until=time.monotonic() - 1)
            response = await client.get(server.url + "/", auth=negotiate)
            assert response.status_code == 200 and origin not in negotiate._fast
            # A check (or another auth object) found Kerberos works: the fast path, which
            # would start NTLM on new connections until its `until`, hands over at once.
            await client.get(server.url + "/", auth=negotiate)
            ((origin, fast),) = negotiate._fast.items()
            negotiate._credential.note_kerberos(fast.target, usable=True)
            response = await client.get(server.url + "/", auth=negotiate)
            assert response.status_code == 200 and origin not in negotiate._fast


@pytest.mark.anyio
@pytest.mark.usefixtures("user_file")
async def test_fast_path_follows_the_origin_of_each_request() -> None:
    """The fast path caches the origin of the last URL it saw (by httpx's parsed URL):
    requests alternating between two origins each get their own origin's facts, and the
    origin that had no handshake yet gets the whole flow, not the other's fast path."""
    with (
        AuthServer(users={"alice": "pw"}, domain="EXAMPLE") as one,
        AuthServer(users={"alice": "pw"}, domain="EXAMPLE") as two,
    ):
        from httpx_extensions import ExClient

        auth = NTLMAuth("EXAMPLE\\alice", "pw")
        first = httpx.URL(one.url + "/")
        second = httpx.URL(two.url + "/")
        origin_one = (first.scheme, first.host, first.port)
        origin_two = (second.scheme, second.host, second.port)
        async with ExClient() as client:
            for _ in range(2):
                assert (await client.get(one.url + "/", auth=auth)).status_code == 200
            assert list(auth._fast) == [origin_one]  # the second request took the fast path
            assert auth._last_origin[1] == origin_one
            cached = auth._last_origin
            assert (await client.get(one.url + "/", auth=auth)).status_code == 200
            assert auth._last_origin is cached  # a hit: the origin was not computed again
            response = await client.get(two.url + "/", auth=auth)
            assert response.status_code == 200 and response.extensions["auth_mechanism"]
            assert auth._last_origin[1] == origin_two
            assert two.handshakes == 2  # its own handshake (2 legs): the whole flow ran
            for url, origin in [(one.url, origin_one), (two.url, origin_two)] * 2:
                response = await client.get(url + "/", auth=auth)
                assert response.status_code == 200
                assert response.extensions["auth_mechanism"] == "ntlm"
                assert auth._last_origin[1] == origin
            assert set(auth._fast) == {origin_one, origin_two}
            assert (one.handshakes, two.handshakes) == (2, 2)  # no other handshake
            assert (one.connections, two.connections) == (1, 1)
            # A URL with credentials is never cached (a parsed URL's repr shows them).
            userinfo = one.url.replace("http://", "http://bob:url-s3cret@")
            cached = auth._last_origin
            assert (await client.get(userinfo + "/", auth=auth)).status_code == 200
            assert auth._last_origin is cached
            assert "url-s3cret" not in repr(auth._last_origin)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_scouts_are_per_event_loop(backend: str) -> None:
    """A scout left on one event loop (here: a loop that ended with its scout pending) never
    makes a flow on another loop wait for, or await, that loop's event: the flow on the new
    loop becomes its scout (a waiter would get False, or an error from a foreign event)."""
    from httpx_extensions._flow import _Scout

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    origin = ("http", "web.example", None)

    async def take(job: _Scout) -> bool:
        return await auth._scout(job)

    assert anyio.run(take, _Scout(origin), backend=backend) is True  # left pending
    assert anyio.run(take, _Scout(origin), backend=backend) is True  # not a waiter


@pytest.mark.anyio
@pytest.mark.usefixtures("user_file")
async def test_per_origin_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The auth object's per-host and per-origin caches (SPN and identity by host, origins
    that handshook, fast-path facts) are cleared when full, and flows stay correct."""
    from httpx_extensions import _flow

    monkeypatch.setattr(_flow, "_CACHE_SIZE", 2)
    server = FakeServer()
    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    async with _client(server) as client:
        for _ in range(2):
            for host in ("h1", "h2", "h3"):
                response = await client.get(f"http://{host}/", auth=auth)
                assert response.status_code == 200
                assert response.extensions["auth_mechanism"] == "ntlm"
    caches = (auth._by_host, auth._fast, auth._handshaken, auth._identities)
    assert all(len(cache) <= 2 for cache in caches)


@pytest.mark.anyio
@pytest.mark.usefixtures("user_file")
async def test_a_leg_redirected_to_another_origin_is_not_answered() -> None:
    """A leg that httpx redirected elsewhere (follow_redirects) ends the flow: its answer is
    not ours to handle, on the full flow and on the fast path alike."""
    server = FakeServer()

    def handler(request: httpx.Request) -> httpx.Response:
        ext = {"conn_id": "other"}  # as ExClient reports it on every response
        if request.url.host == "elsewhere":
            return httpx.Response(200, json={"user": None}, extensions=ext)
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "http://elsewhere/"}, extensions=ext)
        return server(request)

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):  # the first before any handshake, the second on the fast path
            response = await client.get("http://h/moved", auth=auth, follow_redirects=True)
            assert response.status_code == 200 and response.url.host == "elsewhere"
            assert "auth_mechanism" not in response.extensions
            assert (await client.get("http://h/", auth=auth)).status_code == 200
    assert server.handshakes == 1


@pytest.mark.anyio
@pytest.mark.usefixtures("user_file")
async def test_a_failed_send_leaves_no_reference_cycle() -> None:
    """When sending fails, the request and its first-token hook are freed by reference
    counting (the hook's link back to its request is cut), on the fast path and on the
    full flow alike."""
    import gc
    import weakref

    server = FakeServer()
    failing = {"on": False}
    seen: list[weakref.ref[httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if failing["on"]:
            raise httpx.ConnectError("refused", request=request)
        return server(request)

    async def capture(request: httpx.Request) -> None:
        seen.append(weakref.ref(request))

    auth = NTLMAuth("EXAMPLE\\alice", "pw")
    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, event_hooks={"request": [capture]}) as c:
        assert (await c.get("http://h/", auth=auth)).status_code == 200  # a handshake
        gc.collect()
        gc.disable()
        try:
            failing["on"] = True
            for path in ("/", "/x"):  # the fast path; then a first contact (full flow)
                seen.clear()
                if path == "/x":  # forget the host (not the origin): the full flow runs,
                    auth._fast.clear()  # and still sets a first-token hook
                    auth._by_host.clear()
                    auth._pool_aware = True
                with pytest.raises(httpx.ConnectError):
                    await c.get("http://h" + path, auth=auth)
                assert seen and seen[0]() is None
        finally:
            gc.enable()
