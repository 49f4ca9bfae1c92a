"""Waiters of the pool: one queued request each, woken exactly once, FIFO with lazy deletion.

A waiter is woken with its result: a connection handed to it, a *slot* (capacity to open a
new connection), or *gone* (the connection it was pinned to vanished). On asyncio it waits on
a bare future with one ``call_later`` for the pool timeout; elsewhere on an anyio event.
Queues are plain deques: an abandoned or served waiter stays where it is and is skipped when
reached, so no operation scans a queue.
"""

from __future__ import annotations

import asyncio
import collections
import typing

import anyio

from ._connection import Connection, Origin

__all__ = [
    "GONE",
    "POOL_TIMEOUT_MESSAGE",
    "SLOT",
    "Gone",
    "Result",
    "Slot",
    "Waiter",
    "enqueue",
    "pop_live",
    "wait_or_abandon",
]

#: What a pool timeout says, wherever the request waited (pool or admission).
POOL_TIMEOUT_MESSAGE = (
    "no connection became free within the pool timeout; raise Limits(max_connections=...) "
    "or Timeout(pool=...), or send fewer at once"
)


class Slot:
    """Waiter result: capacity was granted; open a new connection."""


class Gone:
    """Waiter result: the pinned connection vanished; acquire normally."""


SLOT = Slot()
GONE = Gone()
Result = typing.Union[Connection, Slot, Gone]


class Waiter:
    """One queued request."""

    __slots__ = ("origin", "identity", "flow", "result", "done", "_future", "_event")

    def __init__(
        self, origin: Origin, identity: typing.Hashable, flow: typing.Any, on_asyncio: bool
    ) -> None:
        self.origin = origin
        self.identity = identity
        self.flow = flow
        self.result: Result | None = None
        self.done = False
        self._future: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if on_asyncio else None
        )
        self._event: anyio.Event | None = None if on_asyncio else anyio.Event()

    def wake(self, result: Result) -> None:
        self.result = result
        self.done = True
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
        else:
            assert self._event is not None
            self._event.set()

    async def wait(self, timeout: float | None) -> bool:
        """Wait to be woken; False on timeout."""
        if self._future is not None:
            future = self._future
            handle = (
                future.get_loop().call_later(timeout, _time_out, future)
                if timeout is not None
                else None
            )
            try:
                await future
            except _PoolWaitTimeout:
                return self.done
            finally:
                if handle is not None:
                    handle.cancel()
            return True
        assert self._event is not None
        with anyio.move_on_after(timeout):
            await self._event.wait()
        return self.done


async def wait_or_abandon(
    waiter: Waiter, timeout: float | None, abandon: typing.Callable[[Waiter], None]
) -> bool:
    """Wait for ``waiter``; on timeout (False) or any exception, ``abandon`` it first."""
    try:
        woken = await waiter.wait(timeout)
    except BaseException:
        abandon(waiter)
        raise
    if not woken:
        abandon(waiter)
    return woken


class _PoolWaitTimeout(Exception):
    pass


def _time_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_PoolWaitTimeout())


def enqueue(queue: collections.deque[Waiter], waiter: Waiter) -> None:
    while queue and queue[0].done:  # lazy deletion: keep the head live
        queue.popleft()
    queue.append(waiter)


def pop_live(queue: collections.deque[Waiter] | None) -> Waiter | None:
    while queue:
        waiter = queue.popleft()
        if not waiter.done:
            return waiter
    return None
