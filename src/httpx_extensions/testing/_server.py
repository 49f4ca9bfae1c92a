"""AuthServer: a real NTLM / Negotiate protected HTTP/1.1 server on loopback, in a thread.

Theory of operation. A listening thread accepts connections and starts one handler thread
per connection (:mod:`._handler`). The server keeps the set of live connections, so that
:meth:`AuthServer.stop` can shut every socket down (waking handlers blocked on idle
keep-alive connections) and join every thread: nothing outlives ``stop()``. The set is
changed only under ``_live_lock``, and a socket leaves it before its handler closes it, so
``stop()`` never shuts down a descriptor that was closed and reused.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any

from ._acceptor import UserFile
from ._handler import Config, ConnectionHandler, Stats

__all__ = ["DEMO_USERS", "AuthServer"]

log = logging.getLogger("httpx_extensions.testing")

DEMO_USERS: Mapping[str, str] = MappingProxyType({"alice": "alice-Passw0rd", "bob": "bob-Passw0rd"})
"""The users of an :class:`AuthServer` created without ``users=``."""

_SCHEMES = {"negotiate": ("Negotiate", "NTLM"), "ntlm": ("NTLM",)}
_JOIN_TIMEOUT = 5.0


class _ThreadedServer(socketserver.TCPServer):
    """A TCP server with one thread per connection, all of them tracked and joinable."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], config: Config, stats: Stats) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._config = config
        self._stats = stats
        self._live: dict[socket.socket, threading.Thread] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, socketserver.BaseRequestHandler)  # see finish_request

    def finish_request(self, request: Any, client_address: Any) -> None:
        ConnectionHandler(request, client_address, self, config=self._config, stats=self._stats)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run,
            args=(request, client_address),
            daemon=True,
            name=f"AuthServer-conn-{client_address[1]}",
        )
        with self._live_lock:
            self._live[request] = thread
        self._stats.connection()
        thread.start()

    def _run(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._live_lock:
                del self._live[request]
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a connection that ended in an error (usually the client hung up), at DEBUG."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Shut down the live connections and join their threads; call after ``shutdown()``."""
        with self._live_lock:
            threads = list(self._live.values())
            for sock in self._live:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)


class AuthServer:
    """An HTTP/1.1 server on loopback that demands NTLM or Negotiate, like IIS does.

    Use it as ``with AuthServer() as server:`` (or :meth:`start` / :meth:`stop`) and send
    requests to :attr:`url`. A ``200`` carries a JSON body ``{"user", "mech", "path",
    "method", "client_port", "request_index", "body_length"}`` and ``X-Remote-User``. Paths
    under ``/anon`` need no authentication.

    The acceptor is pyspnego's: NTLM in pure Python with the given users, and Negotiate
    (SPNEGO, falling back to NTLM where no Kerberos is configured). No domain is needed.
    User names are matched case-insensitively, with or without the domain
    (``EXAMPLE\\alice``, ``alice``, ``alice@EXAMPLE``).

    Args:
        users: user name -> password; :data:`DEMO_USERS` when ``None``.
        domain: the NTLM domain the users belong to.
        scheme: ``"negotiate"`` accepts SPNEGO and raw NTLM tokens; ``"ntlm"`` raw NTLM only.
        connection_bound: ``True`` (IIS, and Apache with ``GssapiConnectionBound On``): once a
            handshake completes on a connection, later requests on it without
            ``Authorization`` are served as that user; a new connection gets ``401``.
            ``False``: every request must carry ``Authorization``, and the connection
            forgets the identity after the request that completed a handshake; NTLM needs
            three legs, so each served request costs a full handshake, the first two legs
            being answered ``401``.
        schemes: the ``WWW-Authenticate`` challenges of a ``401``, one header each, and the
            only schemes accepted in ``Authorization``; by default ``("Negotiate", "NTLM")``
            for ``"negotiate"`` and ``("NTLM",)`` for ``"ntlm"``.
        persistent_auth_header: send ``Persistent-Auth: true`` (``false`` when not
            connection-bound) with every response served as a user.
        host: the address to bind; keep loopback unless other machines must reach it.
        port: the port to bind; ``0`` picks a free one.

    Raises:
        ValueError: an unknown ``scheme``, an empty ``schemes``, or a user name, password or
            domain the NTLM user file cannot hold (``:``, newlines; ``\\`` or ``@`` in names).
            Fix the argument.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        domain: str = "EXAMPLE",
        scheme: str = "negotiate",
        connection_bound: bool = True,
        *,
        schemes: Sequence[str] | None = None,
        persistent_auth_header: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if scheme not in _SCHEMES:
            raise ValueError(f"scheme must be 'negotiate' or 'ntlm', not {scheme!r}")
        self._schemes = tuple(schemes) if schemes is not None else _SCHEMES[scheme]
        if not self._schemes:
            raise ValueError("schemes must name at least one scheme, e.g. ('Negotiate', 'NTLM')")
        self._users: Mapping[str, str] = MappingProxyType(
            dict(DEMO_USERS if users is None else users)
        )
        self._domain = domain
        self._scheme = scheme
        self._connection_bound = connection_bound
        self._persistent_auth_header = persistent_auth_header
        self._address = (host, port)
        self._stats = Stats()
        self._user_file: UserFile | None = None
        self._server: _ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        UserFile.validate(self._users, domain)

    @property
    def users(self) -> Mapping[str, str]:
        """The users (name -> password), read-only."""
        return self._users

    @property
    def domain(self) -> str:
        """The NTLM domain of the users."""
        return self._domain

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server.

        Raises:
            RuntimeError: the server is not running: call :meth:`start` or use ``with``.
        """
        if self._server is None:
            raise RuntimeError("AuthServer is not running: call start() or use 'with AuthServer()'")
        host, port = self._address[0], self._server.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Bind and start serving in a background thread.

        A stopped server may be started again (with ``port=0``, on another port); the
        counters carry on.

        Raises:
            RuntimeError: the server is already running: call :meth:`stop` first.
            OSError: the address cannot be bound (port taken): pick another ``port`` or 0.
        """
        if self._server is not None:
            raise RuntimeError("AuthServer is already running; call stop() first")
        user_file = UserFile(self._users, self._domain)
        config = Config(
            protocol=self._scheme,
            schemes=self._schemes,
            connection_bound=self._connection_bound,
            persistent_auth_header=self._persistent_auth_header,
            domain=self._domain,
            users=self._users,
            user_file=user_file,
        )
        try:
            self._server = _ThreadedServer(self._address, config, self._stats)
        except BaseException:
            user_file.close()
            raise
        self._user_file = user_file
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"AuthServer-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close every open connection, join every thread; idempotent."""
        server, thread, user_file = self._server, self._thread, self._user_file
        if server is None or thread is None or user_file is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(_JOIN_TIMEOUT)
        user_file.close()
        self._server = self._thread = self._user_file = None

    def __enter__(self) -> AuthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        return self._stats.connections

    @property
    def handshakes(self) -> int:
        """Requests that carried an ``Authorization`` header (one per handshake leg)."""
        return self._stats.handshakes

    @property
    def requests(self) -> int:
        """Requests received, whatever their answer."""
        return self._stats.requests

    @property
    def user_requests(self) -> dict[str, int]:
        """Requests answered ``200`` per user name (as in :attr:`users`; Kerberos: principal)."""
        return self._stats.users()

    def reset_counters(self) -> None:
        """Set every counter (connections, handshakes, requests, per user) back to zero."""
        self._stats.reset()

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return (
            f"<AuthServer {state} scheme={self._scheme} users={len(self._users)} "
            f"connections={self.connections} requests={self.requests}>"
        )
