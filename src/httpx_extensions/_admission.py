"""Admission: at most ``max_connections`` flows of one pool in progress; the rest queue early.

Why. A request that waits for a connection inside the pool has already gone down httpx's
call chain: six httpx coroutines, its auth and event-hook generators, our transport's frames,
some forty objects the cyclic garbage collector must traverse. With 20,000 requests started
at once (``asyncio.gather``) that is close to a million objects, and CPython's full
collections over them made each request cost 1.2-1.4x what it costs at 1,000. Waiting here,
at the top of ``ExClient.send``, a queued request holds only itself: cost per request stays
flat however many are queued.

Rules. A flow (one ``send()``: its auth legs and redirects) needs at most one connection at a
time, so admitting ``max_connections`` flows never starves the pool, and a flow inside the
pool behaves exactly as before. Admission is FIFO; a freed place passes straight to the
oldest waiter (no broadcast). A send made while another send of the same task is in progress
(an event hook or an auth flow calling the client) is not held here: it could otherwise
wait for a place its own caller holds. Waiting here counts against the pool timeout.
"""

from __future__ import annotations

import collections

import httpx

from ._waiters import POOL_TIMEOUT_MESSAGE, SLOT, Waiter, enqueue, pop_live, wait_or_abandon

__all__ = ["Admission"]

_NOWHERE = (b"", b"", 0)  # admission waiters are not for an origin


class Admission:
    """FIFO admission of flows to one pool, ``capacity`` at a time."""

    __slots__ = ("capacity", "inside", "_queue")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inside = 0
        self._queue: collections.deque[Waiter] = collections.deque()

    def __repr__(self) -> str:
        return f"<Admission inside={self.inside}/{self.capacity} queued={self.queued}>"

    @property
    def queued(self) -> int:
        """Flows waiting to be admitted."""
        return sum(1 for w in self._queue if not w.done)

    def enter_nowait(self) -> bool:
        """Take a place if one is free and nobody waits for it; else False (call ``enter``)."""
        queue = self._queue
        while queue and queue[0].done:
            queue.popleft()
        if self.inside < self.capacity and not queue:
            self.inside += 1
            return True
        return False

    async def enter(self, timeout: float | None, on_asyncio: bool, request: httpx.Request) -> None:
        """Wait for a place, first come first served.

        Raises:
            httpx.PoolTimeout: no place within ``timeout``; raise
                ``Limits(max_connections=...)`` or ``Timeout(pool=...)``, or send fewer at once.
        """
        waiter = Waiter(_NOWHERE, None, None, on_asyncio)
        enqueue(self._queue, waiter)
        if not await wait_or_abandon(waiter, timeout, self._abandon):
            raise httpx.PoolTimeout(POOL_TIMEOUT_MESSAGE, request=request)

    def leave(self) -> None:
        """Give the place back: to the oldest waiter if any (it keeps the count), else free."""
        waiter = pop_live(self._queue)
        if waiter is not None:
            waiter.wake(SLOT)
        else:
            self.inside -= 1

    def _abandon(self, waiter: Waiter) -> None:
        # Cancelled or timed out. If a place was handed over meanwhile, pass it on.
        granted = waiter.done and waiter.result is SLOT
        waiter.done = True
        waiter.result = None
        if granted:
            self.leave()
