"""Admission: ExClient holds flows beyond ``max_connections`` before httpx's call chain.

See ``src/httpx_extensions/_admission.py``. What must hold: requests queued there are
served FIFO and all complete; waiting there counts as pool waiting (``PoolTimeout``,
cancellation) and never leaks a place; a send nested in another send of the same task (an
event hook, an auth flow calling the client) is not held there, so it cannot wait for the
place its own caller holds.
"""

from __future__ import annotations

import typing

import anyio
import httpx
import pytest

from httpx_extensions import ExClient, ExTransport
from httpx_extensions._admission import Admission
from tests._portserver import PortServer

pytestmark = pytest.mark.anyio


def _client(max_connections: int, pool: float | None = 5.0, **kw: typing.Any) -> ExClient:
    return ExClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=10),
        timeout=httpx.Timeout(5.0, pool=pool),
        **kw,
    )


def _transport(client: ExClient) -> ExTransport:
    assert isinstance(client._transport, ExTransport)
    return client._transport


async def test_queued_requests_wait_at_admission_fifo_and_all_complete(
    port_server: PortServer,
) -> None:
    """50 requests at once on 2 connections: 48 wait at admission, not inside the pool;
    they are admitted in the order they came, and every one completes."""
    order: list[int] = []
    async with _client(2) as client:
        seen_queued: list[tuple[int, int]] = []

        async def one(i: int) -> None:
            r = await client.get(f"{port_server.url}/slow?s=0.01&i={i}")
            assert r.status_code == 200
            order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
                await anyio.sleep(0)  # start them in order
            await anyio.sleep(0.005)
            admission, _ = _transport(client).admission()
            assert admission is not None
            seen_queued.append((admission.queued, _transport(client)._pool.state().queued))
        assert seen_queued[0][0] >= 40  # waiting at admission...
        assert seen_queued[0][1] == 0  # ...not inside the pool
        assert sorted(order) == list(range(50))
        # FIFO: admitted in arrival order, two at a time, so completion order lags by <= 2.
        assert all(abs(pos - i) <= 2 for pos, i in enumerate(order)), order
        state = client.pool_state()
        assert (state.active, state.reserved, state.queued) == (0, 0, 0)
        assert admission.inside == 0


async def test_pool_state_counts_requests_waiting_at_admission(port_server: PortServer) -> None:
    """pool_state().queued includes requests held at admission (what a user would count)."""
    async with _client(1) as client:
        async with client.stream("GET", port_server.url + "/") as held:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client.get, port_server.url + "/")
                await anyio.sleep(0.05)
                assert client.pool_state().queued == 3
                assert "queued=3" in repr(_transport(client).admission()[0])
                await held.aread()
                await held.aclose()
        assert client.pool_state().queued == 0


async def test_admission_wait_times_out_with_pool_timeout_and_leaks_nothing(
    port_server: PortServer,
) -> None:
    """An open stream holds the only place; another request gets httpx.PoolTimeout after
    the pool timeout, and once the stream is closed the next request goes through."""
    async with _client(1, pool=0.1) as client:
        admission, _ = _transport(client).admission()
        assert admission is not None
        async with client.stream("GET", port_server.url + "/") as held:
            with pytest.raises(httpx.PoolTimeout, match="pool timeout"):
                await client.get(port_server.url + "/")
            assert admission.queued == 0 and admission.inside == 1
        assert admission.inside == 0
        assert held.is_closed
        r = await client.get(port_server.url + "/")
        assert r.status_code == 200
        assert admission.inside == 0


async def test_cancelled_while_waiting_at_admission_leaks_nothing(
    port_server: PortServer,
) -> None:
    """Requests cancelled while queued at admission leave no place taken."""
    async with _client(1, pool=None) as client:
        admission, _ = _transport(client).admission()
        assert admission is not None
        async with client.stream("GET", port_server.url + "/") as held:
            with anyio.move_on_after(0.1):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(client.get, port_server.url + "/")
            assert admission.queued == 0
            await held.aread()
        assert admission.inside == 0
        r = await client.get(port_server.url + "/")
        assert r.status_code == 200


async def test_place_handed_to_a_waiter_that_is_then_cancelled_passes_on(
    anyio_backend: str,
) -> None:
    """The race: a place is handed to the oldest waiter, which is cancelled before it runs.

    On asyncio (``task.cancel()``, as ``asyncio.wait_for`` does) the woken waiter gets
    CancelledError and must pass the place to the next waiter. On trio a woken task has been
    rescheduled and cannot be cancelled any more: it enters, and leaves. Either way no place
    is lost and the second waiter gets in."""
    admission = Admission(1)
    assert admission.enter_nowait()
    request = httpx.Request("GET", "http://example.invalid/")
    on_asyncio = anyio_backend == "asyncio"
    entered: list[str] = []
    first_task: list[typing.Any] = []

    async def first(scope: anyio.CancelScope) -> None:
        if on_asyncio:
            import asyncio

            first_task.append(asyncio.current_task())
        try:
            with scope:
                await admission.enter(None, on_asyncio, request)
                entered.append("first")
                admission.leave()
        except BaseException:
            # Raw asyncio cancellation (not anyio's): recorded, not re-raised, so the task
            # group does not mistake it for its own.
            entered.append("first cancelled")

    async def second() -> None:
        await admission.enter(None, on_asyncio, request)
        entered.append("second")
        admission.leave()

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        tg.start_soon(first, scope)
        await anyio.sleep(0.01)
        tg.start_soon(second)
        await anyio.sleep(0.01)
        assert admission.queued == 2
        admission.leave()  # hands the place to `first`...
        if on_asyncio:
            first_task[0].cancel()  # ...which is cancelled before it gets to run
        else:
            scope.cancel()
    expected = ["first cancelled", "second"] if on_asyncio else ["first", "second"]
    assert entered == expected
    assert admission.inside == 0 and admission.queued == 0


async def test_nested_send_in_an_event_hook_is_not_held(port_server: PortServer) -> None:
    """max_connections=1: a request event hook that calls the same client must not wait for
    the admission place its own send holds (that would hang until the pool timeout)."""
    inner: list[int] = []

    async def hook(request: httpx.Request) -> None:
        if request.url.path == "/":
            r = await client.get(port_server.url + "/inner")
            inner.append(r.status_code)

    client = _client(1, pool=2.0, event_hooks={"request": [hook]})
    async with client:
        with anyio.fail_after(5):
            r = await client.get(port_server.url + "/")
        assert r.status_code == 200 and inner == [200]
        admission, _ = _transport(client).admission()
        assert admission is not None and admission.inside == 0


async def test_mounted_plain_transport_is_not_held(port_server: PortServer) -> None:
    """Requests routed to a caller's own (non-ExTransport) mount never touch our admission."""
    async with _client(1, mounts={"http://": httpx.AsyncHTTPTransport()}) as client:
        r = await client.get(port_server.url + "/")
        assert r.status_code == 200
        assert "conn_id" not in r.extensions
        admission, _ = _transport(client).admission()
        assert admission is not None and admission.inside == 0


def test_unlimited_pool_has_no_admission() -> None:
    """Limits(max_connections=None): nothing to admit against."""
    transport = ExTransport(limits=httpx.Limits(max_connections=None))
    assert transport._admission is None


async def test_request_built_by_hand_gets_the_client_pool_timeout(port_server: PortServer) -> None:
    """client.send(httpx.Request(...)) has no timeout extension until httpx's send() sets it:
    waiting at admission still ends with the client's pool timeout, not never."""
    async with _client(1, pool=0.2) as client:
        async with client.stream("GET", port_server.url + "/"):
            with anyio.fail_after(3), pytest.raises(httpx.PoolTimeout):
                await client.send(httpx.Request("GET", port_server.url + "/"))
    with pytest.raises(RuntimeError, match="closed"):  # httpx's own error, not a wait
        await client.send(httpx.Request("GET", port_server.url + "/"))


async def test_pinned_request_is_not_held_behind_requests_it_would_unblock(
    port_server: PortServer,
) -> None:
    """max_connections=1: A reserves its connection; B is admitted and waits in the pool for
    it. A's next request, pinned to that connection, must not queue at admission behind B."""
    async with _client(1, pool=5.0) as client:
        first = await client.get(port_server.url + "/", extensions={"reserve": True})
        conn_id = first.extensions["conn_id"]
        done: list[int] = []

        async def b() -> None:
            r = await client.get(port_server.url + "/")
            done.append(r.status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(b)
            await anyio.sleep(0.05)
            with anyio.fail_after(2):
                pinned = await client.get(port_server.url + "/", extensions={"conn_id": conn_id})
            assert pinned.extensions["conn_id"] == conn_id
            assert await client.release(conn_id)
        assert done == [200]


async def test_waiting_at_admission_counts_against_the_pool_timeout(
    port_server: PortServer,
) -> None:
    """Pool timeout 2 s: 1.2 s waiting at admission, then waiting in the pool (the connection
    stays reserved) times out about 2 s after the request started, not 3.2 s. (Wide margins:
    this checks which timeout applies, not speed.)"""
    async with _client(1, pool=2.0) as client:
        elapsed: list[float] = []

        async def b() -> None:
            start = anyio.current_time()
            with pytest.raises(httpx.PoolTimeout):
                await client.get(port_server.url + "/")
            elapsed.append(anyio.current_time() - start)

        async with anyio.create_task_group() as tg:
            async with client.stream(
                "GET", port_server.url + "/", extensions={"reserve": True}
            ) as held:
                tg.start_soon(b)
                await anyio.sleep(1.2)
                await held.aread()
        assert 1.8 <= elapsed[0] < 2.8, elapsed
        await client.release(held.extensions["conn_id"])


async def test_task_spawned_by_a_finished_flow_is_held_again(port_server: PortServer) -> None:
    """A task started inside a send inherits its flow; once that flow has ended, the task's
    own sends go through admission like any other."""
    async with _client(1, pool=5.0) as client:
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            go = anyio.Event()

            async def later() -> None:
                started.set()
                await go.wait()
                await client.get(port_server.url + "/")

            async def hook(request: httpx.Request) -> None:
                tg.start_soon(later)

            client.event_hooks["request"] = [hook]
            await client.get(port_server.url + "/")
            client.event_hooks["request"] = []
            await started.wait()
            async with client.stream("GET", port_server.url + "/"):
                go.set()
                await anyio.sleep(0.05)
                admission, _ = _transport(client).admission()
                assert admission is not None
                assert admission.queued == 1  # held at admission, not bypassing it
