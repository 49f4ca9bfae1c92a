"""Model-based test of the pool: random acquire / release / tag / close / expire sequences.

Hypothesis draws a program of operations; each is run against the real :class:`Pool` (with
fake sockets) on asyncio and on trio, checking after every step that

* no tagged connection is handed to another identity or to an anonymous request;
* never more than ``max_connections`` connections exist (open or opening);
* every request eventually gets a connection (no waiter starves) once holders finish;
* the pool ends with 0 active, 0 reserved and 0 queued, even when queued or connecting
  requests are cancelled at random (whatever they had been handed goes back).
"""

from __future__ import annotations

import typing

import anyio
import httpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from httpx_extensions._connection import Connection, Origin
from httpx_extensions._pool import ACTIVE, CLOSED, IDLE, Flow, Pool

ORIGINS: list[Origin] = [(b"http", b"a.test", 80), (b"http", b"b.test", 80)]
IDENTITIES: list[typing.Hashable] = [None, "alice", "bob"]
MAX = 3


class FakeStream(httpcore.AsyncNetworkStream):
    """A socket that is alive until the test says the server closed it."""

    def __init__(self) -> None:
        self.dead = False

    async def aclose(self) -> None:
        self.dead = True

    def get_extra_info(self, info: str) -> typing.Any:
        return self.dead if info == "is_readable" else None


Op = tuple[str, int, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["request", "request", "request", "finish", "finish", "lose", "expire", "cancel"]
        ),
        st.integers(0, len(ORIGINS) - 1),
        st.integers(0, len(IDENTITIES) - 1),
        st.integers(0, 7),
    ),
    min_size=1,
    max_size=40,
)


async def _scenario(program: list[Op]) -> None:
    streams: dict[str, FakeStream] = {}

    async def opener(
        conn_id: str, origin: Origin, timeout: float | None, sni: str | None = None
    ) -> Connection:
        await anyio.sleep(0)  # connecting takes a turn of the loop
        streams[conn_id] = FakeStream()
        return Connection(conn_id, origin, streams[conn_id])

    on_asyncio = anyio.get_current_task().__class__.__module__.startswith(
        "anyio._backends._asyncio"
    )
    pool = Pool(
        opener,
        max_connections=MAX,
        max_keepalive_connections=MAX,
        keepalive_expiry=60.0,
        on_asyncio=on_asyncio,
    )
    model_tag: dict[str, typing.Hashable] = {}
    holders: list[tuple[Connection, Flow]] = []
    pending = 0
    served = 0

    scopes: list[anyio.CancelScope] = []

    async def request(origin: Origin, identity: typing.Hashable) -> None:
        nonlocal pending, served
        flow = Flow()
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            try:
                conn, _ = await pool.acquire(origin, identity, None, False, False, flow, {})
            finally:
                pending -= 1
                scopes.remove(scope)
        if scope.cancelled_caught:
            flow.end()
            return
        served += 1
        before = model_tag.get(conn.conn_id)
        # The identity rule: anonymous only on untagged, tagged only to its own identity.
        assert before is None or before == identity, (before, identity)
        assert conn.origin == origin
        if identity is not None:
            model_tag[conn.conn_id] = identity
        holders.append((conn, flow))

    def check() -> None:
        state = pool.state()
        assert state.connections <= MAX
        for conn in pool._conns.values():
            assert conn.state != CLOSED
            if conn.state == IDLE:
                assert conn.conn_id in pool._lru

    async with anyio.create_task_group() as tg:
        for kind, o, i, k in program:
            if kind == "request":
                pending += 1  # counted now: the task may not have started when we drain
                tg.start_soon(request, ORIGINS[o], IDENTITIES[i])
            elif kind == "finish" and holders:
                conn, flow = holders.pop(k % len(holders))
                conn.done(k % 3 != 0)  # one in three is not reusable
                flow.end()
            elif kind == "lose":
                idle = [c for c in pool._conns.values() if c.state == IDLE]
                if idle:
                    conn = idle[k % len(idle)]
                    streams[conn.conn_id].dead = True
                    if k % 2:
                        pool.on_lost(conn)  # the transport noticed; else found when taken
            elif kind == "cancel" and scopes:
                scopes[k % len(scopes)].cancel()  # a queued or connecting request gives up
            elif kind == "expire":
                for conn in pool._conns.values():
                    conn.idle_since -= 120.0
            if k % 4 != 3:  # sometimes act again before the loop runs: races
                await anyio.sleep(0)
                await anyio.sleep(0)
            check()
        # Drain: holders finish until every request was served (no starvation).
        with anyio.fail_after(5):
            while pending or holders:
                if holders:
                    conn, flow = holders.pop(0)
                    conn.done(True)
                    flow.end()
                await anyio.sleep(0)
                check()
    state = pool.state()
    assert (state.active, state.reserved, state.queued, state.connecting) == (0, 0, 0, 0)
    assert all(c.state != ACTIVE for c in pool._conns.values())
    await pool.aclose()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
def test_pool_model(backend: str, program: list[Op]) -> None:
    """Random programs keep the identity rule, the connection limit and liveness."""
    anyio.run(_scenario, program, backend=backend)


async def _fake_opener(
    conn_id: str, origin: Origin, timeout: float | None, sni: str | None = None
) -> Connection:
    await anyio.sleep(0)
    return Connection(conn_id, origin, FakeStream())


@pytest.mark.anyio
@pytest.mark.parametrize("reusable", [True, False])
async def test_cancelled_waiter_gives_back_what_it_was_handed(reusable: bool) -> None:
    """A waiter cancelled right after being handed a connection (or a slot) gives it back."""
    from httpx_extensions._backends import backend_for_current_loop

    pool = Pool(_fake_opener, max_connections=1, on_asyncio=backend_for_current_loop()[1])
    origin = ORIGINS[0]
    holder = Flow()
    conn, _ = await pool.acquire(origin, None, None, False, False, holder, {})
    outcome: list[str] = []

    async def waiter(scope: anyio.CancelScope) -> None:
        flow = Flow()
        with scope:
            got, _ = await pool.acquire(origin, None, None, False, False, flow, {})
            got.done(True)
            outcome.append("served")
        flow.end()
        if scope.cancelled_caught:
            outcome.append("cancelled")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, scope)
        await anyio.sleep(0.01)
        assert pool.state().queued == 1
        conn.done(reusable)  # hands the connection (or a slot) to the waiter...
        holder.end()
        scope.cancel()  # ...which is cancelled before it runs again
    state = pool.state()
    assert (state.active, state.reserved, state.queued, state.connecting) == (0, 0, 0, 0)
    assert outcome in (["served"], ["cancelled"])
    again, _ = await pool.acquire(origin, None, None, False, False, Flow(), {})
    again.done(True)
    await pool.aclose()
