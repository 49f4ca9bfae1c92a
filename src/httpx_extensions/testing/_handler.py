"""One TCP connection of the test server: HTTP/1.1 keep-alive and IIS-style connection auth.

Theory of operation. One :class:`ConnectionHandler` lives exactly as long as its TCP
connection, so the connection's authentication state is plain instance state, touched by
one thread only: the handshake in progress (``_acceptor``) and, once a handshake succeeded
and the server is connection-bound, the identity the connection is authenticated as.

A request is answered in one of four ways (numbered as in :meth:`_answer`):

1. it carries ``Authorization`` and the leg fails or is out of order: ``401`` with the bare
   challenges, and the connection forgets any handshake and identity;
2. it carries ``Authorization`` and the handshake needs another leg: ``401`` with the
   server's token;
3. its handshake completed, the connection is authenticated, or the path is anonymous:
   ``200`` with a JSON description of the request;
4. anything else: ``401`` with the bare challenges.

Shared state (:class:`Stats`) is updated under its own lock. Nothing here logs a header
value, a token or a password.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ._acceptor import Acceptor, AuthFailed, UserFile, is_initial_token

__all__ = ["Config", "ConnectionHandler", "Identity", "Stats"]

log = logging.getLogger("httpx_extensions.testing")

_UNAUTHORIZED = b"401 Unauthorized\n"
_CHUNK = 64 * 1024


class Identity(NamedTuple):
    """Who a request is served as: ``key`` counts requests, ``display`` is shown."""

    key: str
    display: str
    mech: str


@dataclass(frozen=True)
class Config:
    """What every connection of one server needs to know; immutable while it runs."""

    protocol: str
    schemes: tuple[str, ...]
    connection_bound: bool
    persistent_auth_header: bool
    domain: str
    users: Mapping[str, str]
    user_file: UserFile

    def resolve(self, principal: str, mech: str) -> Identity | None:
        """Map pyspnego's client principal to one of our users (Kerberos: taken as is)."""
        if mech == "kerberos":
            return Identity(principal, principal, mech) if principal else None
        name = principal.rpartition("\\")[2].partition("@")[0].lower()
        key = next((user for user in self.users if user.lower() == name), None)
        if key is None:
            return None
        return Identity(key, f"{self.domain}\\{key}" if self.domain else key, mech)


class Stats:
    """Thread-safe counters of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self.connections = 0
            self.handshakes = 0
            self.requests = 0
            self.per_user: dict[str, int] = {}

    def connection(self) -> None:
        """Count one accepted TCP connection."""
        with self._lock:
            self.connections += 1

    def request(self, handshake: bool) -> None:
        """Count one request, and one handshake leg if it carried ``Authorization``."""
        with self._lock:
            self.requests += 1
            self.handshakes += handshake

    def served(self, user: str) -> None:
        """Count one request answered ``200`` as ``user``."""
        with self._lock:
            self.per_user[user] = self.per_user.get(user, 0) + 1

    def users(self) -> dict[str, int]:
        """A copy of the per-user counts."""
        with self._lock:
            return dict(self.per_user)


class ConnectionHandler(BaseHTTPRequestHandler):
    """Serves every request of one TCP connection (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    server_version = "httpx-extensions-testing"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffer headers and body into one send; flushed after every response

    def __init__(
        self, request: Any, client_address: Any, server: Any, *, config: Config, stats: Stats
    ) -> None:
        self._config = config
        self._stats = stats
        self._acceptor: Acceptor | None = None
        self._identity: Identity | None = None
        self._index = 0
        super().__init__(request, client_address, server)

    # Every method gets the same treatment; HEAD omits the body.
    def do_GET(self) -> None:
        """Answer a request of any method."""
        self._answer()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def version_string(self) -> str:
        """The ``Server`` header value, without the Python version."""
        return self.server_version

    def handle_expect_100(self) -> bool:
        """Send ``100 Continue`` at once (our output is buffered)."""
        result = super().handle_expect_100()
        self.wfile.flush()
        return result

    def log_message(self, format: str, *args: Any) -> None:
        """Send the stdlib's access and error lines to our logger, at DEBUG."""
        log.debug("%s:%s " + format, *self.client_address[:2], *args)

    def _answer(self) -> None:
        self._index += 1
        header = self.headers.get("Authorization")
        self._stats.request(handshake=header is not None)
        body_length = self._read_body()
        if body_length is None:
            return
        if header is not None:
            identity, www = self._leg(header)
            if identity is None:  # cases 1 and 2
                self._unauthorized([www] if www else None)
                return
        else:
            identity, www = self._identity, None
            path = urlsplit(self.path).path
            if identity is None and not (path == "/anon" or path.startswith("/anon/")):
                self._unauthorized(None)  # case 4
                return
        self._ok(identity, www, body_length)  # case 3

    def _leg(self, header: str) -> tuple[Identity | None, str | None]:
        """Run one handshake leg: (identity, None/final token) or (None, challenge or None)."""
        scheme, _, encoded = header.strip().partition(" ")
        name = next((s for s in self._config.schemes if s.lower() == scheme.lower()), None)
        try:
            token = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            token = b""
        if name is None or not token:
            return self._fail("unsupported scheme or malformed token")
        if is_initial_token(token):
            self._identity = None  # a new handshake replaces the connection's identity
            self._acceptor = Acceptor(self._config.protocol, self._config.user_file)
        elif self._acceptor is None:
            return self._fail("a later leg without its first leg on this connection")
        acceptor = self._acceptor
        try:
            out = acceptor.step(token)
        except AuthFailed as exc:
            return self._fail(f"rejected by the acceptor ({exc})")
        www = f"{name} {base64.b64encode(out).decode()}" if out else None
        if not acceptor.complete:
            return None, www
        self._acceptor = None
        identity = self._config.resolve(acceptor.principal, acceptor.mech)
        if identity is None:
            return self._fail("authenticated principal is not a user of this server")
        if self._config.connection_bound:
            self._identity = identity
        log.debug("port %s authenticated as %s (%s)", self.client_address[1], *identity[1:])
        return identity, www

    def _fail(self, why: str) -> tuple[None, None]:
        log.debug("port %s: authentication failed: %s", self.client_address[1], why)
        self._acceptor = self._identity = None
        return None, None

    def _read_body(self) -> int | None:
        """Read and discard the request body; its length, or None after answering 400."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
            remaining = length
            while remaining:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise ValueError("body ended early")
                remaining -= len(data)
            return length
        except ValueError:
            self.send_error(400, "Malformed request body")
            return None

    def _read_chunked(self) -> int:
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            while size:
                data = self.rfile.read(min(size, _CHUNK))
                if not data:
                    raise ValueError("chunk ended early")
                size -= len(data)
                total += len(data)
            self.rfile.readline(1024)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return total

    def _unauthorized(self, www: list[str] | None) -> None:
        self.send_response(401)
        for value in www or self._config.schemes:
            self.send_header("WWW-Authenticate", value)
        self._send_body(_UNAUTHORIZED, "text/plain")

    def _ok(self, identity: Identity | None, www: str | None, body_length: int) -> None:
        body = {
            "user": identity.display if identity else None,
            "mech": identity.mech if identity else None,
            "path": self.path,
            "method": self.command,
            "client_port": self.client_address[1],
            "request_index": self._index,
            "body_length": body_length,
        }
        self.send_response(200)
        if identity is not None:
            self._stats.served(identity.key)
            self.send_header("X-Remote-User", identity.display)
            if self._config.persistent_auth_header:
                bound = "true" if self._config.connection_bound else "false"
                self.send_header("Persistent-Auth", bound)
        if www:
            self.send_header("WWW-Authenticate", www)
        self._send_body(json.dumps(body).encode(), "application/json")

    def _send_body(self, body: bytes, content_type: str) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
