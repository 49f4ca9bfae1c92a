"""Issue 3's "Show" items 2, 5 and 8 against real servers: MIT KDC, Apache, squid.

Who authenticated is the server's word: Apache's ``X-Remote-User`` / ``X-GSS-Mech`` headers,
the ticket cache (``klist``) for which service ticket was used, and squid's access log for
proxy handshakes (see :mod:`tests.servers._accesslog`). The load items (3, 4) and the
log audit (10) are in ``test_auth_realservers_load.py``.
"""

from __future__ import annotations

import subprocess
import threading
import time
import typing
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from httpx_extensions import (
    ExClient,
    KerberosAuth,
    MutualAuthenticationError,
    NegotiateAuth,
    NoCredentialsError,
    NTLMAuth,
    SPNNotFoundError,
)
from tests.servers import Apache, Kdc, LogEntry, Squid

PROXY_REQUESTS = 60


def ntlm_user(apache: Apache | Squid, user: str) -> str:
    """``EXAMPLE\\user``, the NTLM form of a test user."""
    return f"EXAMPLE\\{user}"


def legs_per_connection(entries: list[LogEntry]) -> dict[tuple[int, int], int]:
    """TCP connection (``LogEntry.connection``) -> how many of its requests carried auth."""
    legs = Counter({entry.connection: 0 for entry in entries})
    legs.update(entry.connection for entry in entries if entry.has_auth)
    return dict(legs)


def service_tickets(kdc: Kdc, ccache: Path) -> list[str]:
    """The service principals (``HTTP/...``) that have a ticket in ``ccache``."""
    klist = Path(kdc.kinit_path).with_name("klist")
    done = subprocess.run(
        [str(klist), "-c", f"FILE:{ccache}"],
        capture_output=True,
        text=True,
        env={**kdc.env, "KRB5CCNAME": f"FILE:{ccache}"},
        check=True,
    )
    # MIT also caches referral entries with an empty realm ("HTTP/host@"): not tickets.
    return sorted({w for w in done.stdout.split() if w.startswith("HTTP/") and w[-1] != "@"})


async def concurrent_gets(url: str, auth: httpx.Auth, n: int) -> list[httpx.Response]:
    """``n`` GETs at once on ``n`` connections of a fresh ExClient (so ``n`` handshakes)."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    responses: list[httpx.Response] = []
    async with ExClient(limits=limits) as client:

        async def one() -> None:
            responses.append(await client.get(url, auth=auth))

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return responses


# -- item 2: each way to log on, and who the server says we are ---------------------------------


async def _offer_negotiate_only(response: httpx.Response) -> None:
    """A response hook (httpx runs it before the auth flow sees the response): Apache as a
    server that offers Negotiate alone (IIS with only the Negotiate provider, say)."""
    response.headers = httpx.Headers(
        [
            (name, value)
            for name, value in response.headers.raw
            if name.lower() != b"www-authenticate" or value.split(b" ")[0].lower() != b"ntlm"
        ]
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("case", "location", "user", "mechanism", "gss_mech"),
    [
        ("kerberos-ticket-cache", "krb_cb", "alice@EXAMPLE.TEST", "kerberos", "Negotiate/krb5"),
        ("kerberos-password", "krb_cb", "bob@EXAMPLE.TEST", "kerberos", "Negotiate/krb5"),
        ("negotiate-no-mutual", "krb_cb", "alice@EXAMPLE.TEST", "kerberos", "Negotiate/krb5"),
        ("ntlm", "ntlm_cb", "EXAMPLE\\alice", "ntlm", "NTLM/NTLM"),
        # Kerberos cannot work (no ticket; realm EXAMPLE has no KDC): NTLM in its own scheme,
        # which Apache offers too...
        ("negotiate-without-ticket", "negotiate_cb", "EXAMPLE\\bob", "ntlm", "NTLM/NTLM"),
        # ...or, from a server that offers Negotiate alone, NTLM inside SPNEGO.
        ("negotiate-only-server", "negotiate_cb", "EXAMPLE\\bob", "ntlm", "Negotiate/NTLM"),
    ],
)
async def test_logon_shows_user_and_mechanism(
    kdc: Kdc,
    apache: Apache,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: str,
    location: str,
    user: str,
    mechanism: str,
    gss_mech: str,
) -> None:
    """Each logon is seen by Apache as the expected user and mechanism, twice on one connection."""
    auth: httpx.Auth
    if case == "kerberos-ticket-cache":
        auth = KerberosAuth()  # KRB5CCNAME: alice's cache, from the kdc fixture
    elif case == "kerberos-password":
        auth = KerberosAuth(kdc.principal("bob"), kdc.users["bob"])
    elif case == "negotiate-no-mutual":  # pyspnego dropped the AP-REQ here (fixed in _spnego)
        auth = NegotiateAuth(mutual_auth=False)
    elif case == "ntlm":
        auth = NTLMAuth(ntlm_user(apache, "alice"), kdc.users["alice"])
    else:
        monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-such-ccache'}")
        async with ExClient() as client:
            with pytest.raises(NoCredentialsError, match="no usable credential"):
                await client.get(apache.urls["krb_cb"], auth=KerberosAuth())
        auth = NegotiateAuth(ntlm_user(apache, "bob"), kdc.users["bob"])
    hooks = {"response": [_offer_negotiate_only]} if case == "negotiate-only-server" else {}
    async with ExClient(event_hooks=hooks) as client:
        first = await client.get(apache.urls[location], auth=auth)
        again = await client.get(apache.urls[location], auth=auth)
    for response in (first, again):
        assert response.status_code == 200, response.headers
        assert response.headers["X-Remote-User"] == user
        assert response.headers["X-GSS-Mech"] == gss_mech
        assert response.extensions["auth_mechanism"] == mechanism
    assert again.extensions["conn_id"] == first.extensions["conn_id"]
    assert again.extensions["conn_tagged"] is True


@pytest.mark.anyio
async def test_negotiate_asks_the_kdc_once_when_kerberos_cannot_work(
    kdc: Kdc, apache: Apache, monkeypatch: pytest.MonkeyPatch, steps_in_threads: list[object]
) -> None:
    """NegotiateAuth('EXAMPLE\\bob', password): realm EXAMPLE has no KDC, so Kerberos fails and
    Negotiate falls back to NTLM. Of 12 concurrent handshakes only the first may try Kerberos
    (a KDC or DNS lookup that can take seconds); the rest go straight to NTLM, and all log on.
    Apache offers NTLM too: once Kerberos is known not to work, handshakes use that scheme
    (raw NTLMSSP, no SPNEGO layer); from a server that offers Negotiate alone, SPNEGO."""
    from httpx_extensions import _spnego

    tried_kerberos: list[bool] = []
    original = _spnego.Credential.for_spnego

    def recording(self: _spnego.Credential, protocol: str) -> typing.Any:
        creds = original(self, protocol)
        tried_kerberos.append(any(type(c).__name__ == "Password" for c in creds))
        return creds

    monkeypatch.setattr(_spnego.Credential, "for_spnego", recording)
    auth = NegotiateAuth(ntlm_user(apache, "bob"), kdc.users["bob"])
    responses = await concurrent_gets(apache.urls["negotiate_cb"], auth, 12)
    assert len(responses) == 12
    assert {r.headers["X-Remote-User"] for r in responses} == {"EXAMPLE\\bob"}
    assert {r.extensions["auth_mechanism"] for r in responses} == {"ntlm"}
    assert len({r.extensions["conn_id"] for r in responses}) == 12  # 12 handshakes
    # One security context per handshake, plus the first one's SPNEGO context that found out
    # about Kerberos (its NTLM token unsent: NTLM's own scheme replaced it).
    assert len(tried_kerberos) == 13
    assert sum(tried_kerberos) == 1, tried_kerberos  # one probe; the others waited for it
    assert len(steps_in_threads) == 1  # ...on the event loop, not in worker threads
    assert {r.headers["X-GSS-Mech"] for r in responses} == {"NTLM/NTLM"}
    target = _spnego.Target("HTTP", httpx.URL(apache.urls["negotiate_cb"]).host)
    assert auth._credential.kerberos_known_unusable(target)
    auth._handshaken.clear()  # no first token on new connections: the 401 decides
    async with ExClient() as client:  # a new connection, Kerberos known not to work
        later = await client.get(apache.urls["negotiate_cb"], auth=auth)
        # A server offering Negotiate alone: NTLM inside SPNEGO, still no Kerberos attempt.
        client.event_hooks["response"] = [_offer_negotiate_only]
        auth._handshaken.clear()
        auth._fast.clear()
        spnego = await client.get(
            apache.urls["negotiate_cb"], auth=auth, extensions={"new_connection": True}
        )
    assert later.headers["X-Remote-User"] == "EXAMPLE\\bob"
    assert later.headers["X-GSS-Mech"] == "NTLM/NTLM"
    assert later.extensions["auth_mechanism"] == "ntlm"
    assert spnego.headers["X-Remote-User"] == "EXAMPLE\\bob"
    assert spnego.headers["X-GSS-Mech"] == "Negotiate/NTLM"
    assert spnego.extensions["auth_mechanism"] == "ntlm"
    # Another auth object of the same user and password (one built per request, say) knows.
    async with ExClient() as client:
        fresh = await client.get(
            apache.urls["negotiate_cb"],
            auth=NegotiateAuth(ntlm_user(apache, "bob"), kdc.users["bob"]),
        )
    assert fresh.headers["X-GSS-Mech"] == "NTLM/NTLM"
    assert sum(tried_kerberos) == 1
    # Only for that SPN, and only for a while: then the KDC is asked again, by one check in
    # the background; handshakes meanwhile go on with NTLM, none waits for the KDC.
    assert not auth._credential.kerberos_known_unusable(_spnego.Target("HTTP", "other.test"))
    auth._credential._verdicts.no_kerberos[str(target)] = time.monotonic() - 1  # a minute on
    auth._handshaken.clear()
    auth._fast.clear()
    async with ExClient() as client:
        meanwhile = await client.get(apache.urls["negotiate_cb"], auth=auth)
    for thread in threading.enumerate():
        if thread.name.startswith("httpx-extensions Kerberos check"):
            thread.join(30)
    assert meanwhile.headers["X-GSS-Mech"] == "NTLM/NTLM"
    assert meanwhile.extensions["auth_mechanism"] == "ntlm"
    assert sum(tried_kerberos) == 2  # the check's own Kerberos context, no handshake's
    assert auth._credential.kerberos_known_unusable(target)  # still none: another minute


@pytest.mark.anyio
async def test_negotiate_picks_kerberos_up_again_when_a_check_finds_it_works(
    kdc: Kdc, apache: Apache
) -> None:
    """NegotiateAuth('bob@EXAMPLE.TEST', password) whose Kerberos was found unusable a minute
    ago (the KDC was down, say): the background check gets a ticket from the real KDC, and
    the next handshake uses Kerberos again."""
    from httpx_extensions import _spnego

    auth = NegotiateAuth(kdc.principal("bob"), kdc.users["bob"])
    target = _spnego.Target("HTTP", httpx.URL(apache.urls["negotiate_cb"]).host)
    auth._credential.note_kerberos(target, usable=False)
    auth._credential._verdicts.no_kerberos[str(target)] = time.monotonic() - 1
    assert auth._credential.kerberos_known_unusable(target)  # starts the check
    for thread in threading.enumerate():
        if thread.name.startswith("httpx-extensions Kerberos check"):
            thread.join(30)
    assert auth._credential.kerberos_known_usable(target)
    async with ExClient() as client:
        response = await client.get(apache.urls["negotiate_cb"], auth=auth)
    assert response.headers["X-Remote-User"] == "bob@EXAMPLE.TEST"
    assert response.extensions["auth_mechanism"] == "kerberos"


@pytest.mark.anyio
async def test_negotiate_with_a_kerberos_password_keeps_kerberos(kdc: Kdc, apache: Apache) -> None:
    """NegotiateAuth('bob@EXAMPLE.TEST', password): the first handshake finds Kerberos works;
    concurrent ones then use it too (in parallel), none falls back to NTLM."""
    from httpx_extensions import _spnego

    auth = NegotiateAuth(kdc.principal("bob"), kdc.users["bob"])
    responses = await concurrent_gets(apache.urls["krb_cb"], auth, 6)
    assert {r.headers["X-Remote-User"] for r in responses} == {"bob@EXAMPLE.TEST"}
    assert {r.extensions["auth_mechanism"] for r in responses} == {"kerberos"}
    target = _spnego.Target("HTTP", httpx.URL(apache.urls["krb_cb"]).host)
    assert auth._credential.kerberos_known_usable(target)
    assert not auth._credential.kerberos_known_unusable(target)


# -- item 5: SPN of the alias host, overrides, canonicalization ----------------------------------


@pytest.fixture
def private_ccache(kdc: Kdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ticket cache holding only alice's TGT, used as the default cache."""
    ccache = kdc.kinit("alice", tmp_path / "alice.cc")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    return ccache


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("spn", "canonicalize", "ticket"),
    [
        (None, False, "HTTP/127.0.0.2@EXAMPLE.TEST"),
        (None, True, "HTTP/127.0.0.2@EXAMPLE.TEST"),  # an IP literal is never rewritten
        ({"127.0.0.2": "HTTP/localhost"}, False, "HTTP/localhost@EXAMPLE.TEST"),
        ({"127.0.0.2": "HTTP@localhost"}, True, "HTTP/localhost@EXAMPLE.TEST"),  # override wins
    ],
)
async def test_alias_host_spn(
    kdc: Kdc,
    apache: Apache,
    private_ccache: Path,
    spn: dict[str, str] | None,
    canonicalize: bool,
    ticket: str,
) -> None:
    """The alias 127.0.0.2 works with its own SPN and with an override; klist shows which."""
    auth = KerberosAuth(spn=spn, canonicalize_host=canonicalize)
    async with ExClient() as client:
        response = await client.get(apache.location_url("krb_cb", "127.0.0.2"), auth=auth)
    assert response.status_code == 200
    assert response.headers["X-Remote-User"] == "alice@EXAMPLE.TEST"
    assert service_tickets(kdc, private_ccache) == [ticket]


@pytest.mark.anyio
async def test_wrong_spn_override_is_typed(kdc: Kdc, apache: Apache, private_ccache: Path) -> None:
    """An unknown SPN raises SPNNotFoundError naming it and the fix; no token is sent."""
    auth = KerberosAuth(spn={"127.0.0.2": "HTTP/nosuch.example.test"})
    mark = apache.access_log.mark()
    async with ExClient() as client:
        with pytest.raises(SPNNotFoundError) as caught:
            await client.get(apache.location_url("krb_cb", "127.0.0.2"), auth=auth)
    message = str(caught.value)
    assert "HTTP@nosuch.example.test" in message and "spn=" in message
    assert caught.value.request.url.host == "127.0.0.2"
    entries = apache.access_log.wait(1, mark, "/krb-cb/")
    assert [(e.status, e.has_auth) for e in entries] == [(401, False)]
    assert service_tickets(kdc, private_ccache) == []


# -- item 8: through squid (Proxy-Authorization) -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("mechanism", "legs"), [("kerberos", 1), ("ntlm", 2)])
async def test_proxy_handshakes_equal_connections(
    kdc: Kdc, squid: Squid, mechanism: str, legs: int
) -> None:
    """Concurrent GETs through squid: all 200, one handshake per connection in squid's log."""
    proxy = squid.proxy_url
    auth: httpx.Auth
    if mechanism == "kerberos":  # squid sends no final token: mutual auth cannot be had
        auth, user = NegotiateAuth(proxy=proxy, mutual_auth=False), "alice@EXAMPLE.TEST"
    else:
        auth, user = NTLMAuth(ntlm_user(squid, "alice"), kdc.users["alice"], proxy=proxy), "alice"
    mark = squid.access_log.mark()
    statuses: list[int] = []
    conn_ids: set[str] = set()
    async with ExClient(proxy=proxy, limits=httpx.Limits(max_connections=4)) as client:

        async def get(i: int) -> None:
            response = await client.get(f"{squid.origin_url}?i={i}", auth=auth)
            statuses.append(response.status_code)
            conn_ids.add(response.extensions["conn_id"])
            assert response.extensions["auth_mechanism"] == mechanism
            assert response.json()

        async with anyio.create_task_group() as group:
            for i in range(PROXY_REQUESTS):
                group.start_soon(get, i)
    assert statuses == [200] * PROXY_REQUESTS
    entries = squid.access_log.wait(PROXY_REQUESTS, mark)
    entries = squid.access_log.wait(PROXY_REQUESTS + legs * len(conn_ids), mark)
    per_connection = legs_per_connection(entries)
    print(f"\nproxy {mechanism}: {PROXY_REQUESTS} requests, {len(entries)} in squid's log, "
          f"{sum(per_connection.values())} with Proxy-Authorization, "
          f"{len(per_connection)} connections")  # fmt: skip
    assert len(per_connection) == len(conn_ids) <= 4
    assert set(per_connection.values()) == {legs}
    assert {e.user for e in entries if e.status == 200} == {user}


@pytest.mark.anyio
async def test_proxy_kerberos_requires_final_token_by_default(kdc: Kdc, squid: Squid) -> None:
    """squid never proves its identity, so mutual auth (the default) refuses its 200."""
    auth = NegotiateAuth(proxy=squid.proxy_url)
    async with ExClient(proxy=squid.proxy_url) as client:
        with pytest.raises(MutualAuthenticationError, match="mutual_auth=False"):
            await client.get(squid.origin_url, auth=auth)
