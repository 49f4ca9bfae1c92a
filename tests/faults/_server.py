"""FaultServer: a loopback HTTP/1.1 server that misbehaves on purpose, for reliability tests.

Theory of operation: one accept thread plus one thread per connection, all daemon threads
named `fault-server-<port>-...`, bound to 127.0.0.1 only. The accept thread draws every
connection's fault plan from a seeded `random.Random` in accept order, so a client that
connects sequentially sees the same faults on every run. Counters, the RNG and the set of
live connections change only under `_lock`; no socket I/O happens under it. Every loop polls
`_stop` at least every `POLL_SECONDS` and every wait has a bound, so `stop()` joins all
threads within one second.

This module chooses and counts faults; what a fault puts on the wire lives in `_faults`.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from ._auth import ConnAuth
from ._faults import (
    FAULT_KINDS,
    FaultContext,
    FaultKind,
    FaultSettings,
    fault_kind,
    forced_name,
    inject,
    unauthorized,
)
from ._http import POLL_SECONDS, BadRequest, ConnectionDone, Request, Wire, build_response

HOST = "127.0.0.1"
_MAX_REQUESTS_PER_CONNECTION = 10_000
_MAX_SECONDS = 60.0
_JSON = ("Content-Type", "application/json")


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of the counters; `faults` maps each kind injected to how often."""

    connections: int
    requests: int
    faults: Mapping[str, int] = field(default_factory=dict)

    @property
    def total_faults(self) -> int:
        """All faults injected, whatever their kind."""
        return sum(self.faults.values())


@dataclass(frozen=True)
class _Plan:
    kind: FaultKind | None  # None: this connection behaves
    at_request: int  # the 1-based request index on this connection that gets the fault


@dataclass
class _Conn:
    port: int
    plan: _Plan
    auth: ConnAuth = field(default_factory=ConnAuth)
    endless: bool = False  # a drawn endless_401 has fired: every later request gets 401


class FaultServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that injects faults per connection or per path.

    Use it as a context manager: `with FaultServer(rate=0.2, seed=7) as srv: srv.url`.

    Args:
        rate: probability that a connection gets a fault, drawn per connection.
        kinds: the kinds drawn from (default: all of `FAULT_KINDS`).
        seed: seeds the RNG; `reset()` reseeds it.
        fault_on_request: inclusive range of the request index (per connection, from 1)
            on which the drawn fault fires; drawn uniformly per connection.
        stall_seconds: how long `stall` waits before answering (at most 60).
        hold_seconds: how long `accept_no_answer` waits for the client to close (at most 60).
        idle_timeout: a connection with no complete request for this long is closed.
        huge_header_bytes: size of the `X-Huge` header value sent by `huge_header`.
        max_connections: connections beyond this many at once are closed on accept.

    Raises:
        ValueError: an argument is out of range or names an unknown fault; fix the call.
    """

    def __init__(
        self,
        *,
        rate: float = 0.0,
        kinds: Iterable[FaultKind] = FAULT_KINDS,
        seed: int = 0,
        fault_on_request: tuple[int, int] = (1, 1),
        stall_seconds: float = 2.0,
        hold_seconds: float = 5.0,
        idle_timeout: float = 5.0,
        huge_header_bytes: int = 1024 * 1024,
        max_connections: int = 256,
    ) -> None:
        self._kinds: tuple[FaultKind, ...] = tuple(kinds)
        unknown = [k for k in self._kinds if fault_kind(k) is None]
        low, high = fault_on_request
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        if unknown or not self._kinds:
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}, bad: {unknown}")
        if not 1 <= low <= high <= _MAX_REQUESTS_PER_CONNECTION:
            raise ValueError(f"fault_on_request must satisfy 1 <= low <= high, got {low, high}")
        for name, seconds in (("stall_seconds", stall_seconds), ("hold_seconds", hold_seconds)):
            if not 0.0 <= seconds <= _MAX_SECONDS:
                raise ValueError(f"{name} must be within [0, {_MAX_SECONDS}], got {seconds}")
        if not 0.0 < idle_timeout <= _MAX_SECONDS:
            raise ValueError(f"idle_timeout must be within (0, {_MAX_SECONDS}], got {idle_timeout}")
        self._rate = rate
        self._seed = seed
        self._request_range = (low, high)
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._settings = FaultSettings(stall_seconds, hold_seconds, huge_header_bytes, idle_timeout)

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._connections = 0
        self._requests = 0
        self._faults: dict[str, int] = {}
        self._live: set[socket.socket] = set()

        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._port = 0
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start accepting."""
        if self._accept_thread is not None:
            raise RuntimeError("FaultServer already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen(128)
        listener.settimeout(POLL_SECONDS)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._stop.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fault-server-{self._port}-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, end every connection thread and join them all within one second.

        Raises:
            RuntimeError: a thread outlived the second; that is a bug in the fault server.
        """
        accept_thread = self._accept_thread
        if accept_thread is None:
            return
        deadline = time.monotonic() + 1.0
        self._stop.set()
        accept_thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in (accept_thread, *self._threads) if t.is_alive()]
        self._accept_thread = None
        self._threads = []
        if alive:
            raise RuntimeError(f"fault server threads still running after 1 s: {alive}")

    # -- public state -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Always `127.0.0.1`."""
        return HOST

    @property
    def port(self) -> int:
        """The bound port (0 before `start()`)."""
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, without a trailing slash."""
        if not self._port:
            raise RuntimeError("FaultServer not started")
        return f"http://{HOST}:{self._port}"

    def stats(self) -> ServerStats:
        """A snapshot of connections accepted, requests read and faults injected per kind."""
        with self._lock:
            return ServerStats(self._connections, self._requests, dict(self._faults))

    def reset(self) -> None:
        """Zero the counters and reseed the RNG, so the fault sequence starts over."""
        with self._lock:
            self._connections = 0
            self._requests = 0
            self._faults = {}
            self._rng = random.Random(self._seed)

    def __repr__(self) -> str:
        with self._lock:
            live, conns, reqs = len(self._live), self._connections, self._requests
            faults = sum(self._faults.values())
        state = "running" if self._accept_thread is not None else "stopped"
        return (
            f"<FaultServer {HOST}:{self._port} {state} connections={conns} requests={reqs}"
            f" faults={faults} live={live} rate={self._rate} seed={self._seed}>"
        )

    # -- threads ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                sock, address = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._admit(sock, address[1])

    def _admit(self, sock: socket.socket, port: int) -> None:
        with self._lock:
            self._connections += 1
            number = self._connections
            roll, kind = self._rng.random(), self._rng.choice(self._kinds)
            at_request = self._rng.randint(*self._request_range)
            crowded = len(self._live) >= self._max_connections
            if not crowded:
                self._live.add(sock)
        if crowded:
            sock.close()
            return
        conn = _Conn(port, _Plan(kind if roll < self._rate else None, at_request))
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._serve,
            args=(sock, conn),
            name=f"fault-server-{self._port}-conn-{number}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _serve(self, sock: socket.socket, conn: _Conn) -> None:
        wire = Wire(sock, self._stop)
        try:
            for index in range(1, _MAX_REQUESTS_PER_CONNECTION + 1):
                try:
                    request = wire.read_request(self._idle_timeout)
                except BadRequest:
                    bad = build_response(400, [("Connection", "close")], b"bad request")
                    wire.send(bad, 1.0)
                    return
                except ConnectionDone:
                    return
                with self._lock:
                    self._requests += 1
                if not self._answer(wire, request, conn, index):
                    return
        finally:
            wire.close()
            with self._lock:
                self._live.discard(sock)

    # -- answers ------------------------------------------------------------------------

    def _answer(self, wire: Wire, request: Request, conn: _Conn, index: int) -> bool:
        """Answer one request; return whether the connection may carry another.

        There are three cases:
        1. The path names a fault (`.../fault/<kind>`): that fault, every time; 404 if unknown.
        2. The connection's drawn fault is due (or a drawn `endless_401` already fired).
        3. Otherwise the normal answer (see `_normal`).
        """

        def normal() -> tuple[bytes, bool]:
            return self._normal(request, conn, index)

        name = forced_name(request.path)
        kind: FaultKind | None = None
        if name is not None:  # case 1
            kind = fault_kind(name)
            if kind is None:
                body = json.dumps({"error": f"unknown fault {name!r}", "faults": FAULT_KINDS})
                data = build_response(404, [_JSON], body.encode())
                return wire.send(data, self._settings.send_timeout) and request.keep_alive
        elif conn.endless or index == conn.plan.at_request:  # case 2
            kind = "endless_401" if conn.endless else conn.plan.kind
            conn.endless = kind == "endless_401"
        if kind is None:  # case 3
            data, keep_alive = normal()
            return wire.send(data, self._settings.send_timeout) and keep_alive
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1
        return inject(kind, FaultContext(wire, request, normal, self._settings))

    def _normal(self, request: Request, conn: _Conn, index: int) -> tuple[bytes, bool]:
        """The well-behaved answer: 401 until authenticated under `/auth/`, else 200 JSON."""
        keep_alive = request.keep_alive
        headers = [_JSON] if keep_alive else [_JSON, ("Connection", "close")]
        if request.path == "/auth" or request.path.startswith("/auth/"):
            authenticated, auth_headers = conn.auth.step(request.header("Authorization"))
            if not authenticated:
                return unauthorized(auth_headers, close=not keep_alive), keep_alive
            headers += auth_headers
        user = conn.auth.user
        body = json.dumps({"client_port": conn.port, "request_index": index, "user": user})
        return build_response(200, headers, body.encode()), keep_alive
