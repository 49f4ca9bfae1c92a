"""An independent client for AuthServer tests: http.client for HTTP, pyspnego for tokens."""

from __future__ import annotations

import base64
import http.client
import socket
from typing import Any

import spnego
from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

from httpx_extensions.testing import DEMO_USERS, AuthServer

PASSWORD = DEMO_USERS["alice"]
_open: list[http.client.HTTPConnection] = []


def close_all() -> None:
    """Close every connection :func:`connect` opened."""
    while _open:
        _open.pop().close()


def port_of(server: AuthServer) -> int:
    """The port of a running server."""
    return int(server.url.rsplit(":", 1)[1])


def connect(server: AuthServer, host: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A new (lazily connected) connection to ``server``, closed after the test."""
    conn = http.client.HTTPConnection(host, port_of(server), timeout=10)
    _open.append(conn)
    return conn


def send(
    conn: http.client.HTTPConnection,
    authorization: str | None = None,
    path: str = "/",
    method: str = "GET",
    body: Any = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on ``conn``; the response and its whole body."""
    headers = {} if authorization is None else {"Authorization": authorization}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def header(scheme: str, token: bytes) -> str:
    """An ``Authorization`` value."""
    return f"{scheme} {base64.b64encode(token).decode()}"


def server_token(response: http.client.HTTPResponse, scheme: str) -> bytes | None:
    """The token of the one ``WWW-Authenticate: <scheme> <token>`` header, if there is one."""
    values = [v for v in response.headers.get_all("WWW-Authenticate") or [] if " " in v]
    if not values:
        return None
    assert len(values) == 1 and values[0].startswith(scheme + " ")
    return base64.b64decode(values[0].split(" ", 1)[1])


def client(user: str = "alice", password: str = PASSWORD, protocol: str = "ntlm") -> Any:
    """A pyspnego client context."""
    # An NTLM-only credential: with a password, pyspnego's Negotiate would first try a
    # Kerberos kinit where gssapi is installed, which can stall on DNS for seconds.
    credential = spnego.NTLMHash(user, lmowfv1(password).hex(), ntowfv1(password).hex())
    return spnego.client(credential, hostname="127.0.0.1", service="HTTP", protocol=protocol)


def handshake(
    conn: http.client.HTTPConnection,
    user: str = "alice",
    password: str = PASSWORD,
    scheme: str = "NTLM",
    protocol: str = "ntlm",
) -> tuple[http.client.HTTPResponse, bytes, Any]:
    """Run every leg on ``conn``; return the last response, its body and the client context."""
    ctx = client(user, password, protocol)
    response, body = send(conn, header(scheme, ctx.step()))
    while response.status == 401 and not ctx.complete:
        token = server_token(response, scheme)
        if token is None:
            break  # bare challenges: the server rejected the handshake
        response, body = send(conn, header(scheme, ctx.step(token)))
    return response, body, ctx


def raw(server: AuthServer, data: bytes) -> bytes:
    """Send raw bytes on a new connection, end our side, and read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile("rb").read()
