"""Issue 3's "Show" items 3, 4 and 10 against real servers: load, identities, logs.

Apache's access log (:mod:`tests.servers._accesslog`) is the judge: which requests
carried ``Authorization``, on which client port (TCP connection), as which user. Each
request's URL carries ``?who=<identity>&i=<n>`` so the log can be matched to the request.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from httpx_extensions import ExClient, KerberosAuth, NegotiateAuth, NTLMAuth
from tests.servers import Apache, Kdc, LogEntry, Squid


def who(entry: LogEntry) -> str:
    """The ``who=`` tag of the request that produced this log line."""
    return parse_qs(urlsplit(entry.target).query)["who"][0]


async def run_all(count: int, one: Callable[[int], Awaitable[None]]) -> list[BaseException]:
    """Run ``one(i)`` for ``i < count`` concurrently; return the exceptions raised."""
    errors: list[BaseException] = []

    async def guarded(i: int) -> None:
        try:
            await one(i)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(guarded, i)
    return errors


# -- item 3: 500 concurrent GETs over 10 connections ---------------------------------------------

REQUESTS = 500


@pytest.mark.anyio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("location", "legs"), [("ntlm_cb", 2), ("krb_cb", 1)])
async def test_500_gets_one_handshake_per_connection(
    kdc: Kdc, apache: Apache, location: str, legs: int
) -> None:
    """500 concurrent GETs, 10 connections: 0 failures, Apache saw one handshake a connection."""
    auth: httpx.Auth
    if location == "ntlm_cb":  # type-1 and type-3: two requests with Authorization
        auth, user = NTLMAuth("EXAMPLE\\alice", kdc.users["alice"]), "EXAMPLE\\alice"
    else:  # one AP-REQ; Persistent-Auth keeps the connection authenticated
        auth, user = KerberosAuth(), "alice@EXAMPLE.TEST"
    url = apache.urls[location]
    mark = apache.access_log.mark()
    users: Counter[str] = Counter()
    conn_ids: set[str] = set()
    async with ExClient(limits=httpx.Limits(max_connections=10)) as client:

        async def get(i: int) -> None:
            response = await client.get(url, params={"who": "alice", "i": i}, auth=auth)
            assert response.status_code == 200
            users[response.headers["X-Remote-User"]] += 1
            conn_ids.add(response.extensions["conn_id"])

        errors = await run_all(REQUESTS, get)
        state = client.pool_state()
    assert errors == []
    assert users == {user: REQUESTS}
    path = urlsplit(url).path
    # At least: every request, the legs before each connection's last one, one anonymous 401.
    apache.access_log.wait(REQUESTS + (legs - 1) * len(conn_ids) + 1, mark, path, timeout=10)
    time.sleep(0.3)  # Apache logs after answering: let any last line land
    entries = apache.access_log.entries(mark, path)
    summary = apache.access_log.summary(mark, path)
    auth_per_port = Counter(e.connection for e in entries if e.has_auth)
    ports = {e.connection for e in entries}
    anonymous_401 = sum(not e.has_auth and e.status == 401 for e in entries)
    print(
        f"\n{location}: {REQUESTS} requests, {summary.requests} in Apache's log "
        f"({summary.statuses}), {summary.auth_requests} with Authorization = "
        f"{summary.auth_requests // legs} handshakes, {summary.connections} connections "
        f"({len(conn_ids)} conn_ids), {anonymous_401} anonymous 401s; pool {state}"
    )
    assert 1 <= len(ports) == len(conn_ids) <= 10
    assert {port: auth_per_port[port] for port in ports} == dict.fromkeys(ports, legs)
    assert summary.requests == REQUESTS + (legs - 1) * len(ports) + anonymous_401
    assert summary.auth_requests // legs == summary.connections
    if location == "ntlm_cb":
        # One flow meets the challenge anonymously; the others, waiting for it, send their
        # first NTLM token with their first request on their own connection.
        assert anonymous_401 < len(ports)
    else:  # Kerberos (not connection-bound by default): each connection asks first
        assert anonymous_401 == len(ports)


# -- item 4: two users and anonymous requests interleaved on one client --------------------------

MIXED = 1000


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_identities_and_anonymous_never_mix(kdc: Kdc, apache: Apache) -> None:
    """1,000 interleaved requests of alice, bob (NTLM, Kerberos) and nobody: nobody borrows."""
    pw = kdc.users
    # tag -> (location, auth, user Apache must report, status)
    plan: dict[str, tuple[str, httpx.Auth | None, str, int]] = {
        "alice-ntlm": ("ntlm_cb", NTLMAuth("EXAMPLE\\alice", pw["alice"]), "EXAMPLE\\alice", 200),
        "bob-ntlm": ("ntlm_cb", NTLMAuth("EXAMPLE\\bob", pw["bob"]), "EXAMPLE\\bob", 200),
        "alice-krb": (
            "krb_cb",
            KerberosAuth("alice@EXAMPLE.TEST", pw["alice"]),
            "alice@EXAMPLE.TEST",
            200,
        ),  # noqa: E501
        "bob-krb": ("krb_cb", KerberosAuth("bob@EXAMPLE.TEST", pw["bob"]), "bob@EXAMPLE.TEST", 200),
        "anon-ntlm": ("ntlm_cb", None, "", 401),
        "anon-krb": ("krb_cb", None, "", 401),
        "anon-negotiate": ("negotiate_cb", None, "", 401),
        "anon": ("anon", None, "", 200),
    }
    tags = [tag for tag in plan for _ in range(MIXED // len(plan))]
    random.Random(3).shuffle(tags)
    mark = apache.access_log.mark()
    wrong: list[tuple[str, int, str]] = []
    conn_users: defaultdict[str, set[str]] = defaultdict(set)
    async with ExClient(limits=httpx.Limits(max_connections=20)) as client:

        async def get(i: int) -> None:
            tag = tags[i]
            location, auth, user, status = plan[tag]
            params = {"who": tag, "i": i}
            response = await client.get(apache.urls[location], params=params, auth=auth)
            seen = response.headers.get("X-Remote-User", "")
            conn_users[response.extensions["conn_id"]].add(seen)
            if (response.status_code, seen) != (status, user):
                wrong.append((tag, response.status_code, seen))

        errors = await run_all(len(tags), get)
    assert errors == []
    assert wrong == []
    # An untagged connection may serve anonymous 401s before a flow authenticates it.
    assert all(len(users - {""}) <= 1 for users in conn_users.values())
    entries = apache.access_log.wait(len(tags), mark, timeout=10)
    served = [e for e in entries if e.status == 200 and e.user is not None]
    anonymous = [e for e in entries if who(e).startswith("anon")]
    by_port: defaultdict[tuple[int, int], set[str]] = defaultdict(set)
    for entry in served:  # by connection: a port may be reused (see tests/servers/_accesslog)
        by_port[entry.connection].add(entry.user or "")
    auth_legs = sum(e.has_auth for e in entries)
    print(
        f"\nmixed: {len(tags)} requests, {len(entries)} in Apache's log, {auth_legs} with "
        f"Authorization, {len({e.connection for e in entries})} connections, "
        f"{len(by_port)} of them authenticated; {len(anonymous)} anonymous lines, statuses "
        f"{Counter((who(e), e.status) for e in anonymous)}"
    )
    assert all(e.user is None and not e.has_auth for e in anonymous)
    assert {e.status for e in anonymous if who(e) != "anon"} == {401}
    assert all(plan[who(e)][2] == e.user for e in served)  # the log agrees with the headers
    mixed = {port: users for port, users in by_port.items() if len(users) != 1}
    assert not mixed, [  # one user per connection; else show those connections' lines
        (e.connection, e.index, e.status, e.has_auth, e.user, who(e))
        for e in entries
        if e.connection in mixed
    ]
    legs = {"ntlm_cb": 2, "krb_cb": 1}
    for port in by_port:  # one handshake's legs on each authenticated connection
        tag = who(next(e for e in served if e.connection == port))
        assert sum(e.has_auth for e in entries if e.connection == port) == legs[plan[tag][0]]
    for port in by_port:  # once authenticated, a connection carries only its user's requests
        lines = sorted((e for e in entries if e.connection == port), key=lambda e: e.index or 0)
        first = next(n for n, e in enumerate(lines) if e.user is not None)
        assert not [e for e in lines[first:] if who(e).startswith("anon")]


# -- item 10: a DEBUG log of a whole run holds no token and no password ------------------------

_BLOB = re.compile(r"[A-Za-z0-9+/]{20,}={0,2}")


def _looks_like_token(blob: str) -> bool:
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4))
    except (binascii.Error, ValueError):
        return False
    # NTLMSSP anywhere; a GSS-API initial token (0x60), a raw AP-REQ (0x6e), a NegTokenResp (0xa1)
    return b"NTLMSSP\0" in raw or (len(raw) >= 16 and raw[0] in (0x60, 0x6E, 0xA1))


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_debug_log_has_no_token_or_password(
    kdc: Kdc, apache: Apache, squid: Squid, caplog: pytest.LogCaptureFixture
) -> None:
    """Root DEBUG log over NTLM, Kerberos, passwords and a proxy: no token, no password."""
    caplog.set_level(logging.DEBUG)
    sent: list[str] = []  # every Authorization / Proxy-Authorization / challenge value

    async def on_request(request: httpx.Request) -> None:
        sent.extend(v for k, v in request.headers.items() if k.endswith("authorization"))

    async def on_response(response: httpx.Response) -> None:
        for name in ("www-authenticate", "proxy-authenticate"):
            sent.extend(v for v in response.headers.get_list(name) if " " in v)

    hooks = {"request": [on_request], "response": [on_response]}
    pw = kdc.users
    runs: list[tuple[str | None, str, httpx.Auth]] = [
        (None, apache.urls["ntlm_cb"], NTLMAuth("EXAMPLE\\alice", pw["alice"])),
        (None, apache.urls["krb_cb"], KerberosAuth("bob@EXAMPLE.TEST", pw["bob"])),
        (None, apache.urls["krb"], KerberosAuth()),  # a token on every request
        (None, apache.urls["negotiate_cb"], NegotiateAuth("EXAMPLE\\bob", pw["bob"])),
        (None, apache.urls["negotiate_cb"], NegotiateAuth(mutual_auth=False)),
        (
            squid.proxy_url,
            squid.origin_url,
            NTLMAuth("EXAMPLE\\bob", pw["bob"], proxy=squid.proxy_url),
        ),
        (
            squid.proxy_url,
            squid.origin_url,
            NegotiateAuth(proxy=squid.proxy_url, mutual_auth=False),
        ),
    ]
    for proxy, url, auth in runs:
        async with ExClient(proxy=proxy, event_hooks=hooks) as client:

            async def get(i: int, url: str = url, auth: httpx.Auth = auth) -> None:
                assert (await client.get(url, auth=auth)).status_code == 200

            assert await run_all(6, get) == []
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    tokens = [value.split(" ", 1)[1] for value in sent]
    assert len(tokens) >= 2 * len(runs)
    assert "spnego" in text and "authenticated" in text  # the log did capture the run
    windows = {token[i : i + 16] for token in tokens for i in range(len(token) - 15)}
    leaked = {text[i : i + 16] for i in range(len(text) - 15)} & windows
    assert leaked == set()
    assert [blob for blob in _BLOB.findall(text) if _looks_like_token(blob)] == []
    for secret in pw.values():
        assert secret not in text
