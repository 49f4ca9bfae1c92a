"""The connection pool: idle, active and reserved connections, identity tags, fair waiters.

Theory of operation
-------------------
Rule 1: every change of pool state happens in a synchronous method of :class:`Pool`, with no
``await`` inside, so on one event loop no lock is needed and no other task can observe a
half-done change. I/O (opening and closing sockets) happens outside those methods.

A connection is in exactly one state:

* CONNECTING: counted against ``max_connections`` while its socket opens;
* ACTIVE: carrying a request; the pool never closes it (httpcore issue 1110);
* RESERVED: idle, but held for one *flow* (the legs of one ``send()``: auth and redirects) or
  for an explicit ``reserve``; only that flow, or an explicit ``conn_id`` pin, may take it;
* IDLE: free to a request of the same origin whose identity matches the connection's tag
  (an untagged connection matches anyone; a tagged one only its identity).

Waiters queue FIFO. Each waiter sits in up to three deques: its (origin, identity) deque,
its origin deque, and the global deque of requests waiting for *capacity*. Entries are
deleted lazily (a served or abandoned waiter is skipped when reached), so acquire and release
cost O(1) amortized, however many requests are queued. A freed connection goes to exactly
one waiter, never broadcast.

When a connection becomes free (``_make_available``), there are four cases:

1. a request pinned to it by ``conn_id`` waits: it gets the connection;
2. a request of a matching origin and identity waits: the oldest gets it;
3. other requests wait for capacity: the connection is closed, and its slot goes to the
   oldest of them (they cannot use it: other origin or identity);
4. nobody waits: it goes idle (closing the least recently used idle connection beyond
   ``max_keepalive_connections``).

This module knows origins, connection ids and identity tags; it knows nothing of HTTP
authentication schemes, and nothing of httpx.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import itertools
import logging
import time
import typing

import httpcore

from ._connection import Connection, Origin
from ._waiters import (
    GONE,
    POOL_TIMEOUT_MESSAGE,
    SLOT,
    Gone,
    Result,
    Slot,
    Waiter,
    enqueue,
    pop_live,
    wait_or_abandon,
)

if typing.TYPE_CHECKING:
    from ._admission import Admission

__all__ = ["Flow", "Pool", "PoolState", "current_flow"]

logger = logging.getLogger("httpx_extensions")

CONNECTING, ACTIVE, RESERVED, IDLE, CLOSED = range(5)
_CONN_IDS = itertools.count(1)  # process-wide: a conn_id is never reused
_STATE_NAMES = ("connecting", "active", "reserved", "idle", "closed")

Key = tuple[Origin, typing.Hashable]
#: Opens a connection: ``(conn_id, origin, connect timeout, TLS server name or None)``.
Opener = typing.Callable[
    [str, Origin, typing.Union[float, None], typing.Union[str, None]],
    typing.Awaitable[Connection],
]


class Flow:
    """The legs of one ``ExClient.send()``: it holds at most one reserved connection."""

    __slots__ = ("active", "reserved", "pool", "admission", "waited")

    def __init__(self, admission: Admission | None = None, waited: float = 0.0) -> None:
        self.active = True
        self.reserved: Connection | None = None
        self.pool: Pool | None = None
        #: The place this flow holds in its pool's admission, given back when it ends.
        self.admission = admission
        #: Seconds it waited at admission: deducted from the pool timeout of its first leg.
        self.waited = waited

    def end(self) -> None:
        """End the flow: its reservation, if any, is released at once (synchronously).

        Idempotent: the admission place is given back once."""
        self.active = False
        self.release_reservation()
        admission = self.admission
        if admission is not None:
            self.admission = None
            admission.leave()

    def release_reservation(self) -> None:
        """Give back the connection this flow holds reserved, if any."""
        if self.pool is not None and self.reserved is not None:
            self.pool.release_flow(self)


current_flow: contextvars.ContextVar[Flow | None] = contextvars.ContextVar(
    "httpx_extensions_flow", default=None
)


@dataclasses.dataclass(frozen=True)
class PoolState:
    """A snapshot of a pool's bookkeeping."""

    active: int
    idle: int
    reserved: int
    connecting: int
    queued: int
    max_connections: int

    @property
    def connections(self) -> int:
        """Open (or opening) connections, whatever their state."""
        return self.active + self.idle + self.reserved + self.connecting


class Pool:
    """Connections for one transport. See the module docstring for the rules."""

    def __init__(
        self,
        opener: Opener,
        *,
        max_connections: int | None = 100,
        max_keepalive_connections: int | None = 20,
        keepalive_expiry: float | None = 5.0,
        on_asyncio: bool = True,
    ) -> None:
        self._open = opener
        self._max = max_connections if max_connections is not None else 2**62
        self._max_idle = (
            max_keepalive_connections if max_keepalive_connections is not None else 2**62
        )
        self._expiry = keepalive_expiry
        #: Whether waiters may use asyncio futures (else anyio events); set on first use.
        self.on_asyncio = on_asyncio
        self._conns: dict[str, Connection] = {}
        self._connecting = 0
        self._idle: dict[Key, dict[str, Connection]] = {}
        self._lru: collections.OrderedDict[str, Connection] = collections.OrderedDict()
        self._by_key: dict[Key, collections.deque[Waiter]] = {}
        self._by_origin: dict[Origin, collections.deque[Waiter]] = {}
        self._global: collections.deque[Waiter] = collections.deque()
        self._to_close: list[Connection] = []
        self._closed = False

    # -- inspection ------------------------------------------------------------------------
    def state(self) -> PoolState:
        """Count connections by state, and live waiters."""
        counts = [0] * 5
        for conn in self._conns.values():
            counts[conn.state] += 1
        queued = sum(1 for w in self._global if not w.done)
        queued += sum(
            1
            for conn in self._conns.values()
            if conn.pinned_waiters
            for w in conn.pinned_waiters
            if not w.done
        )
        return PoolState(
            active=counts[ACTIVE],
            idle=counts[IDLE],
            reserved=counts[RESERVED],
            connecting=counts[CONNECTING] + self._connecting,
            queued=queued,
            max_connections=self._max,
        )

    def connection_info(self) -> dict[str, str]:
        """Map each open conn_id to its state name (for diagnostics and tests)."""
        return {cid: _STATE_NAMES[c.state] for cid, c in self._conns.items()}

    def __repr__(self) -> str:
        s = self.state()
        return (
            f"<Pool active={s.active} idle={s.idle} reserved={s.reserved} "
            f"connecting={s.connecting} queued={s.queued} max={s.max_connections}>"
        )

    # -- acquire ---------------------------------------------------------------------------
    async def acquire(
        self,
        origin: Origin,
        identity: typing.Hashable,
        pin: str | None,
        explicit: bool,
        new: bool,
        flow: Flow | None,
        timeouts: typing.Mapping[str, float | None],
        level: int = logging.WARNING,
        sni: str | None = None,
    ) -> tuple[Connection, bool]:
        """Get a connection for one request; return it and whether it already had this tag.

        ``level``: how an explicit pin that is gone is logged (DEBUG for an auth flow's own
        legs, where the caller asked for no connection). ``sni``: the TLS server name for a
        connection opened for this request (httpx's ``sni_hostname``; as in httpcore, an
        idle connection of the origin is reused whatever name it was opened with).

        Raises:
            httpcore.PoolTimeout: no connection within the pool timeout; raise the pool
                size or the timeout, or send fewer requests at once.
            httpcore.ConnectError, httpcore.ConnectTimeout: a new connection failed.
        """
        if self._to_close:
            await self._drain_close()
        pool_timeout = timeouts.get("pool")
        if flow is not None and flow.waited:  # waiting at admission counts as pool waiting
            if pool_timeout is not None:
                pool_timeout = max(0.0, pool_timeout - flow.waited)
            flow.waited = 0.0
        while True:
            if self._closed:
                raise RuntimeError("the connection pool was closed; create a new client")
            result: Result | Waiter = self._acquire_nowait(
                origin, identity, pin, explicit, new, flow, level
            )
            if isinstance(result, Waiter):
                result = await self._wait(result, pool_timeout)
            if isinstance(result, Gone):
                if pin is not None and explicit:  # closed while this request waited for it
                    logger.log(
                        level,
                        "conn_id %s was requested but it closed while the request waited for "
                        "it; sending on another connection",
                        pin,
                    )
                pin = None
                continue
            if isinstance(result, Slot):
                conn = await self._open_slot(origin, timeouts.get("connect"), sni)
            else:
                conn = result
            break
        tagged = identity is not None and conn.tag == identity
        if identity is not None:
            conn.tag = identity
        conn.flow = flow
        conn.on_response_done = self._on_done
        return conn, tagged

    def _acquire_nowait(
        self,
        origin: Origin,
        identity: typing.Hashable,
        pin: str | None,
        explicit: bool,
        new: bool,
        flow: Flow | None,
        level: int = logging.WARNING,
    ) -> Result | Waiter:
        # Case 1: the request is pinned to a connection.
        if pin is not None:
            got = self._take_pinned(origin, identity, pin, explicit, flow, level)
            if got is not None:
                return got
        # A flow holds at most one reservation: moving on frees the previous one, so a
        # redirect to another origin can progress even with max_connections=1.
        if flow is not None:
            flow.release_reservation()
        # Case 2: an idle connection of this origin and identity (then an untagged one).
        if not new:
            conn = self._pop_idle((origin, identity))
            if conn is None and identity is not None:
                conn = self._pop_idle((origin, None))
            if conn is not None:
                conn.state = ACTIVE
                logger.debug("connection %s reused", conn.conn_id)
                return conn
        # Case 3: capacity for a new connection, closing the LRU idle one if need be.
        if len(self._conns) + self._connecting >= self._max and self._lru:
            self._remove(next(iter(self._lru.values())), "least recently used, making room")
        if len(self._conns) + self._connecting < self._max:
            self._connecting += 1
            return SLOT
        # Case 4: wait, first come first served.
        waiter = Waiter(origin, identity, flow, self.on_asyncio)
        enqueue(self._global, waiter)
        if not new:
            if identity is not None:
                enqueue(self._by_key.setdefault((origin, identity), collections.deque()), waiter)
            enqueue(self._by_origin.setdefault(origin, collections.deque()), waiter)
        return waiter

    def _take_pinned(
        self,
        origin: Origin,
        identity: typing.Hashable,
        pin: str,
        explicit: bool,
        flow: Flow | None,
        level: int = logging.WARNING,
    ) -> Connection | Waiter | None:
        conn = self._conns.get(pin)
        why = None
        if conn is None:
            why = "it is closed or unknown"
        elif conn.origin != origin:
            why = "it belongs to another origin"
        elif conn.tag is not None and conn.tag != identity:
            why = "it is bound to another identity"
        elif conn.state in (IDLE, RESERVED) and not conn.is_alive():
            # Liveness only: a pinned connection is not ours to expire early (a slow
            # handshake leg may hold it past keepalive_expiry); the server decides.
            self._remove(conn, "closed by the server")
            why = "it was closed by the server"
        if why is not None:
            if explicit:
                logger.log(
                    level,
                    "conn_id %s was requested but %s; sending on another connection",
                    pin,
                    why,
                )
            else:
                logger.debug("connection %s of this flow is gone: %s", pin, why)
            return None
        assert conn is not None
        mine = conn.flow is flow and flow is not None
        if conn.state == IDLE or (
            conn.state == RESERVED and (mine or (explicit and conn.flow is None))
        ):
            self._unidle(conn)
            if flow is not None and flow.reserved is conn:
                flow.reserved = None
            conn.state = ACTIVE
            logger.debug("connection %s taken by pin", conn.conn_id)
            return conn
        # Busy with another leg (or reserved by another flow): wait for this connection.
        waiter = Waiter(origin, identity, flow, self.on_asyncio)
        if conn.pinned_waiters is None:
            conn.pinned_waiters = collections.deque()
        conn.pinned_waiters.append(waiter)
        return waiter

    async def _wait(self, waiter: Waiter, timeout: float | None) -> Result:
        if not await wait_or_abandon(waiter, timeout, self._abandon):
            raise httpcore.PoolTimeout(POOL_TIMEOUT_MESSAGE)
        assert waiter.result is not None
        return waiter.result

    def _abandon(self, waiter: Waiter) -> None:
        """A waiter leaves (timeout, cancellation): give back whatever it was handed."""
        result = waiter.result
        waiter.done = True
        waiter.result = None
        if isinstance(result, Connection):
            result.flow = None
            self._make_available(result)
        elif isinstance(result, Slot):
            self._connecting -= 1
            self._grant_capacity()

    async def _open_slot(
        self, origin: Origin, timeout: float | None, sni: str | None = None
    ) -> Connection:
        conn_id = f"conn-{next(_CONN_IDS)}"
        try:
            conn = await self._open(conn_id, origin, timeout, sni)
        except BaseException:
            self._connecting -= 1
            self._grant_capacity()
            raise
        self._connecting -= 1
        conn.state = ACTIVE
        self._conns[conn_id] = conn
        logger.debug("connection %s created", conn_id)
        return conn

    # -- release ---------------------------------------------------------------------------
    def _on_done(self, conn: Connection, reusable: bool) -> None:
        """The exchange on ``conn`` ended (body read, closed early, or failed)."""
        if conn.state == CLOSED:
            return
        if not reusable or self._closed:
            self._remove(conn, "not reusable")
            return
        conn.idle_since = time.monotonic()
        flow = conn.flow
        if conn.explicit_reserve:
            conn.state = RESERVED
            conn.flow = None
            logger.debug("connection %s reserved until released", conn.conn_id)
            self._serve_pinned(conn, explicit_only=True)
        elif flow is not None and flow.active:
            if flow.reserved is not conn:
                flow.release_reservation()
            flow.reserved = conn
            flow.pool = self
            conn.state = RESERVED
            logger.debug("connection %s reserved for its flow", conn.conn_id)
            self._serve_pinned(conn, explicit_only=False)
        else:
            conn.flow = None
            conn.state = RESERVED
            self._make_available(conn)
        self._sweep()

    def _serve_pinned(self, conn: Connection, explicit_only: bool) -> None:
        queue = conn.pinned_waiters
        while queue:
            waiter = queue[0]
            if waiter.done:
                queue.popleft()
                continue
            if explicit_only or waiter.flow is conn.flow:
                queue.popleft()
                self._hand(conn, waiter)
            return

    def release_flow(self, flow: Flow) -> None:
        """End the reservation a flow holds, if any."""
        conn = flow.reserved
        flow.reserved = None
        if conn is not None and conn.state == RESERVED and conn.flow is flow:
            conn.flow = None
            logger.debug("connection %s released by its flow", conn.conn_id)
            self._make_available(conn)

    def reserve(self, conn: Connection) -> None:
        """Keep ``conn`` reserved after its response, until :meth:`release`."""
        conn.explicit_reserve = True

    def release(self, conn_id: str) -> bool:
        """End any reservation of ``conn_id``; False if there is no such open connection."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        conn.explicit_reserve = False
        if conn.state == RESERVED:
            if conn.flow is not None:
                conn.flow.reserved = None
            conn.flow = None
            logger.debug("connection %s released", conn_id)
            self._make_available(conn)
        return True

    def _make_available(self, conn: Connection) -> None:
        # Case 1: a request pinned to this connection.
        waiter = pop_live(conn.pinned_waiters)
        # Case 2: a request of the same origin and identity (any identity if untagged).
        if waiter is None:
            if conn.tag is None:
                waiter = pop_live(self._by_origin.get(conn.origin))
            else:
                waiter = pop_live(self._by_key.get((conn.origin, conn.tag)))
        if waiter is not None:
            self._hand(conn, waiter)
            return
        # Case 3: others wait for capacity this connection cannot serve.
        while self._global and self._global[0].done:
            self._global.popleft()
        if self._global:
            self._remove(conn, "making room for a queued request")
            return
        # Case 4: idle.
        conn.state = IDLE
        self._idle.setdefault((conn.origin, conn.tag), {})[conn.conn_id] = conn
        self._lru[conn.conn_id] = conn
        self._lru.move_to_end(conn.conn_id)
        if len(self._lru) > self._max_idle:
            self._remove(next(iter(self._lru.values())), "over max_keepalive_connections")

    def _hand(self, conn: Connection, waiter: Waiter) -> None:
        conn.state = ACTIVE
        conn.flow = waiter.flow
        logger.debug("connection %s handed to a queued request", conn.conn_id)
        waiter.wake(conn)

    def _grant_capacity(self) -> None:
        while len(self._conns) + self._connecting < self._max:
            waiter = pop_live(self._global)
            if waiter is None:
                return
            self._connecting += 1
            waiter.wake(SLOT)

    # -- idle bookkeeping ------------------------------------------------------------------
    def _usable(self, conn: Connection) -> bool:
        if self._expiry is not None and time.monotonic() - conn.idle_since > self._expiry:
            return False
        return conn.is_alive()

    def _pop_idle(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            _, conn = idle.popitem()
            del self._lru[conn.conn_id]
            if self._usable(conn):
                return conn
            conn.state = ACTIVE  # off the idle lists already
            self._remove(conn, "expired or closed by the server")
        return None

    def _unidle(self, conn: Connection) -> None:
        if conn.state == IDLE:
            del self._idle[(conn.origin, conn.tag)][conn.conn_id]
            del self._lru[conn.conn_id]

    def _sweep(self) -> None:
        """Close idle connections past keepalive_expiry, oldest first (O(expired))."""
        if self._expiry is None or not self._lru:
            return
        deadline = time.monotonic() - self._expiry
        while self._lru:
            conn = next(iter(self._lru.values()))
            if conn.idle_since > deadline:
                return
            self._remove(conn, "keep-alive expired")

    def on_lost(self, conn: Connection) -> None:
        """The transport reports the peer closed ``conn``: drop it now if nobody uses it."""
        if conn.state in (IDLE, RESERVED):
            self._remove(conn, "closed by the server")

    def _remove(self, conn: Connection, why: str) -> None:
        if conn.state == CLOSED:
            return
        self._unidle(conn)
        conn.state = CLOSED
        self._conns.pop(conn.conn_id, None)
        flow = conn.flow
        if flow is not None and flow.reserved is conn:
            flow.reserved = None
        conn.flow = None
        logger.debug("connection %s closed: %s", conn.conn_id, why)
        conn.close_nowait()
        self._to_close.append(conn)
        while conn.pinned_waiters:
            waiter = conn.pinned_waiters.popleft()
            if not waiter.done:
                waiter.wake(GONE)
        self._grant_capacity()

    async def _drain_close(self) -> None:
        to_close, self._to_close = self._to_close, []
        for conn in to_close:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail with a read or write error."""
        self._closed = True
        for conn in list(self._conns.values()):
            self._remove(conn, "pool closed")
        for waiter in self._global:
            if not waiter.done:
                waiter.wake(GONE)
        await self._drain_close()
