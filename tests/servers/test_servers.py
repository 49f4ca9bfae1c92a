"""The real servers work on their own: curl, or pyspnego + http.client, never our library."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import spnego

from ._apache import Apache
from ._kdc import Kdc
from ._nginx import Nginx
from ._squid import Squid
from .fixtures import need_kerberos_client

pytestmark = pytest.mark.realserver

Headers = dict[str, str]
Connect = Callable[[str], http.client.HTTPConnection]


def _get(
    conn: http.client.HTTPConnection, target: str, headers: Headers | None = None
) -> http.client.HTTPResponse:
    conn.request("GET", target, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response


def _challenges(response: http.client.HTTPResponse, header: str) -> list[str]:
    return [value.split(" ")[0] for value in response.headers.get_all(header) or []]


def _token(response: http.client.HTTPResponse, header: str, scheme: str) -> bytes | None:
    for value in response.headers.get_all(header) or []:
        if value.startswith(scheme + " "):
            return base64.b64decode(value.split(" ", 1)[1])
    return None


def _handshake(
    send: Callable[[Headers], http.client.HTTPResponse],
    context: spnego.ContextProxy,
    scheme: str,
    proxy: bool = False,
) -> tuple[http.client.HTTPResponse, int]:
    """Run a handshake through ``send``; return the last response and the legs sent."""
    auth, challenge = ("Proxy-", "Proxy-") if proxy else ("", "WWW-")
    token = context.step()
    legs = 0
    while True:
        assert token is not None
        response = send({f"{auth}Authorization": f"{scheme} {base64.b64encode(token).decode()}"})
        legs += 1
        server_token = _token(response, f"{challenge}Authenticate", scheme)
        if response.status not in (401, 407) or server_token is None or context.complete:
            return response, legs
        token = context.step(server_token)


def _curl(url: str, *args: str, env: Headers) -> tuple[int, Headers, str]:
    """Run curl; return the status, headers (lower-case names) and body of the last response."""
    done = subprocess.run(
        ["curl", "-sS", "-i", *args, url], capture_output=True, env=env, check=True
    )
    head, _, body = done.stdout.decode().rpartition("\r\n\r\n")
    lines = head.split("\r\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("HTTP/"))
    status = int(lines[last].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[last + 1 :])}
    return status, headers, body


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open HTTP connections to a URL's host and port; all are closed after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_connection(url: str) -> http.client.HTTPConnection:
        host, _, port = urlsplit(url).netloc.partition(":")
        opened.append(http.client.HTTPConnection(host, int(port), timeout=10))
        return opened[-1]

    yield open_connection
    for conn in opened:
        conn.close()


def test_kdc_kinit_into_given_ccache(kdc: Kdc, apache: Apache, tmp_path: Path) -> None:
    """kinit bob into a fresh cache, and curl --negotiate with it is seen as bob."""
    ccache = kdc.kinit("bob", tmp_path / "bob.cc")
    env = {**kdc.env, "KRB5CCNAME": f"FILE:{ccache}"}
    status, headers, _ = _curl(apache.urls["krb"], "--negotiate", "-u", ":", env=env)
    assert (status, headers["x-remote-user"]) == (200, f"bob@{kdc.realm}")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2"])
def test_kerberos_curl_ticket_cache(kdc: Kdc, apache: Apache, host: str) -> None:
    """curl --negotiate with alice's cached ticket gets 200 and X-Remote-User alice@REALM."""
    url = apache.location_url("krb", host)
    status, headers, body = _curl(url, "--negotiate", "-u", ":", env=kdc.env)
    assert status == 200
    assert headers["x-remote-user"] == f"alice@{kdc.realm}"
    assert headers["x-gss-mech"] == "Negotiate/krb5"
    assert body == "krb: krb5\n"


def test_kerberos_per_request_needs_a_token_each_time(
    kdc: Kdc, apache: Apache, connect: Connect
) -> None:
    """On /krb/ a token gets 200, the next request on the same connection without one 401."""
    need_kerberos_client()
    conn = connect(apache.url)
    context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
    response, legs = _handshake(lambda h: _get(conn, "/krb/", h), context, "Negotiate")
    assert (response.status, legs) == (200, 1)
    assert response.headers["X-Remote-User"] == f"alice@{kdc.realm}"
    assert _get(conn, "/krb/").status == 401


def test_kerberos_connection_bound(kdc: Kdc, apache: Apache, connect: Connect) -> None:
    """/krb-cb/ keeps alice on the connection; a new connection gets 401."""
    need_kerberos_client()
    mark = apache.access_log.mark()
    conn = connect(apache.url)
    context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
    response, _ = _handshake(lambda h: _get(conn, "/krb-cb/", h), context, "Negotiate")
    assert response.status == 200
    assert response.headers["Persistent-Auth"] == "true"
    again = _get(conn, "/krb-cb/")
    assert (again.status, again.headers["X-Remote-User"]) == (200, f"alice@{kdc.realm}")
    assert _get(connect(apache.url), "/krb-cb/").status == 401
    entries = apache.access_log.wait(3, mark, "/krb-cb/")
    # Lines of different connections may be logged out of order: compare as sets.
    assert sorted((e.status, e.has_auth, e.index) for e in entries) == [
        (200, False, 1),
        (200, True, 0),
        (401, False, 0),
    ]
    assert apache.access_log.summary(mark, "/krb-cb/").connections == 2


@pytest.mark.parametrize("location", ["ntlm_cb", "negotiate_cb"])
def test_ntlm_three_legs_on_one_connection(apache: Apache, location: str, connect: Connect) -> None:
    """NTLM with alice's password: 401, type-1 401, type-3 200; then bound to the connection."""
    path = apache.urls[location].split(str(apache.port), 1)[1]
    mark = apache.access_log.mark()
    conn = connect(apache.url)
    first = _get(conn, path)
    assert first.status == 401
    assert "NTLM" in _challenges(first, "WWW-Authenticate")
    user = f"{apache.ntlm_domain}\\alice"
    context = spnego.client(user, apache.users["alice"], protocol="ntlm")
    response, legs = _handshake(lambda h: _get(conn, path, h), context, "NTLM")
    assert (response.status, legs) == (200, 2)
    assert "alice" in response.headers["X-Remote-User"]
    assert _get(conn, path).status == 200
    assert _get(connect(apache.url), path).status == 401
    entries = apache.access_log.wait(5, mark, path)
    per_connection = Counter(e.connection for e in entries)
    assert sorted(per_connection.values()) == [1, 4]
    assert sorted(e.index or 0 for e in entries) == [0, 0, 1, 2, 3]
    summary = apache.access_log.summary(mark, path)
    assert (summary.auth_requests, summary.connections) == (2, 2)


def test_ntlm_wrong_password_is_refused(apache: Apache, connect: Connect) -> None:
    """gss-ntlmssp checks the password: a wrong one ends with 401."""
    conn = connect(apache.url)
    context = spnego.client("alice", "not-the-password", protocol="ntlm")
    response, _ = _handshake(lambda h: _get(conn, "/ntlm-cb/", h), context, "NTLM")
    assert response.status == 401


def test_anonymous_location(apache: Apache, connect: Connect) -> None:
    """/anon/ answers 200 without authentication, with an empty X-Remote-User."""
    response = _get(connect(apache.url), "/anon/")
    assert (response.status, response.headers["X-Remote-User"]) == (200, "")


def test_access_log_never_holds_tokens(kdc: Kdc, apache: Apache) -> None:
    """The Apache access log says whether Authorization was sent, never its value."""
    _curl(apache.urls["krb"], "--negotiate", "-u", ":", env=kdc.env)
    text = apache.access_log.path.read_text()
    assert "Negotiate" not in text and "TlRMTVNT" not in text and "YII" not in text
    assert any(entry.has_auth for entry in apache.access_log.entries())


@pytest.mark.parametrize("scheme", ["Negotiate", "NTLM"])
def test_squid_407_then_success(kdc: Kdc, squid: Squid, scheme: str, connect: Connect) -> None:
    """squid answers 407 (Negotiate, NTLM), then 200 after a handshake on that connection."""
    if scheme == "Negotiate":
        need_kerberos_client()
        context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
    else:
        context = spnego.client("alice", squid.users["alice"], protocol="ntlm")
    mark = squid.access_log.mark()
    conn = connect(squid.proxy_url)
    first = _get(conn, squid.origin_url)
    assert first.status == 407
    assert _challenges(first, "Proxy-Authenticate") == ["Negotiate", "NTLM"]
    response, legs = _handshake(
        lambda h: _get(conn, squid.origin_url, h), context, scheme, proxy=True
    )
    assert response.status == 200
    assert legs == (1 if scheme == "Negotiate" else 2)
    entries = squid.access_log.wait(1 + legs, mark)
    assert sum(e.has_auth for e in entries) == legs
    assert entries[-1].user is not None and "alice" in entries[-1].user


def test_squid_ntlm_checks_password(squid: Squid, connect: Connect) -> None:
    """squid's NTLM helper refuses a wrong password with 407."""
    if not squid.ntlm_checks_password:
        pytest.skip("squid runs ntlm_fake_auth here")
    conn = connect(squid.proxy_url)
    context = spnego.client("alice", "not-the-password", protocol="ntlm")
    response, _ = _handshake(lambda h: _get(conn, squid.origin_url, h), context, "NTLM", proxy=True)
    assert response.status == 407


def test_nginx_serves_json_with_keep_alive(nginx: Nginx, connect: Connect) -> None:
    """nginx serves the 1 KB JSON at /json, twice on one connection."""
    conn = connect(nginx.url)
    for _ in range(2):
        conn.request("GET", "/json")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert body == nginx.body and len(body) == 1024
        assert json.loads(body)["service"]
        assert not response.will_close


def test_access_log_tells_connections_on_a_reused_port_apart(tmp_path: Path) -> None:
    """Loopback reuses a closed connection's port at once (tcp_tw_reuse=2): a run of lines
    restarting at index 0 on a port is another connection. Squid logs no index: port only."""
    from ._accesslog import AccessLog

    log = tmp_path / "access.log"
    lines = [
        '5000 0 401 - - "GET /a HTTP/1.1"',
        '5000 1 200 1 alice "GET /a HTTP/1.1"',
        '5001 0 200 - - "GET /a HTTP/1.1"',
        '5000 0 401 - - "GET /b HTTP/1.1"',  # port 5000 again: a new connection
        '5000 1 200 1 bob "GET /b HTTP/1.1"',
        '6000 - 200 1 carol "GET http://x/ HTTP/1.1"',
        '6000 - 200 - carol "GET http://x/ HTTP/1.1"',
    ]
    log.write_text("\n".join(lines[:2]) + "\n")
    access = AccessLog(log)
    mark = access.mark()
    log.write_text("\n".join(lines) + "\n")
    assert [e.connection for e in access.entries()] == [
        (5000, 0), (5000, 0), (5001, 0), (5000, 1), (5000, 1), (6000, 0), (6000, 0)
    ]  # fmt: skip
    assert [e.connection for e in access.entries(mark, "/b")] == [(5000, 1), (5000, 1)]
    assert access.summary().connections == 4
