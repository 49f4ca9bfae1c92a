"""Cancellation at any await point of a request or an NTLM flow leaves the pool clean.

Hypothesis draws what runs (NTLM users, anonymous, streamed bodies, a server that stalls
every leg), how many at once, the pool size (1 makes requests queue), whether an
authenticated connection is idle beforehand, and how the requests are cancelled: after
``k`` scheduler checkpoints, by an anyio ``CancelScope`` deadline, or (asyncio only) by
``asyncio.wait_for``. After each cancellation nothing may be active, reserved, connecting
or queued, and the next request must succeed as the right user.
"""

from __future__ import annotations

import asyncio
import time
import typing
from collections.abc import Coroutine, Iterator

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from httpx_extensions import ExClient, NTLMAuth
from tests import soak

pytestmark = pytest.mark.anyio

_STALL = 0.1  # the fault server's stall: every leg of /auth/fault/stall waits this long
_AUTHS = {user: NTLMAuth(f"{soak.DOMAIN}\\{user}", pw) for user, pw in soak.USERS.items()}
_EXAMPLES: dict[str, int] = {}
_SECONDS: dict[str, float] = {}


class Servers(typing.NamedTuple):
    auth: str  # AuthServer base URL
    faults: str  # FaultServer base URL


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """The embedded AuthServer and a FaultServer without random faults, for the module."""
    with soak.embedded_targets(fault_rate=0.0, stall_seconds=_STALL) as (targets, faults):
        yield Servers(targets[0].protected.rsplit("/p/", 1)[0], faults.url)


class Job(typing.NamedTuple):
    kind: str  # "ntlm", "anon", "stream", "stall"
    user: str


_jobs = st.builds(
    Job,
    st.sampled_from(["ntlm", "ntlm", "anon", "stream", "stall"]),
    st.sampled_from(sorted(soak.USERS)),
)


async def _run(client: ExClient, servers: Servers, job: Job) -> None:
    auth = _AUTHS[job.user]
    if job.kind == "anon":
        await client.get(f"{servers.auth}/anon/x")
    elif job.kind == "stall":
        await client.get(f"{servers.faults}/auth/fault/stall/x", auth=auth)
    elif job.kind == "stream":
        # Held open, closed unread: iterating a body that is cancelled half-way leaves
        # httpx's own async generators to the garbage collector (a ResourceWarning on trio).
        async with client.stream("GET", f"{servers.auth}/p/s", auth=auth):
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
    else:
        await client.get(f"{servers.auth}/p/x", auth=auth)


async def _all(client: ExClient, servers: Servers, jobs: list[Job]) -> None:
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(_run, client, servers, job)


async def _cancel(
    how: str, amount: float, work: typing.Callable[[], Coroutine[typing.Any, typing.Any, None]]
) -> None:
    """Run ``work`` and cancel it the way drawn; completing first is fine too."""
    if how == "checkpoints":
        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            for _ in range(int(amount)):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    elif how == "deadline":
        with anyio.CancelScope(deadline=anyio.current_time() + amount):
            await work()
    else:
        try:
            await asyncio.wait_for(work(), amount)
        except asyncio.TimeoutError:
            pass


@settings(
    max_examples=200,
    deadline=None,
    # No "explain" phase: on CPython 3.11.7 it crashes pytest (AST recursion SystemError).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_cancellation_leaves_the_pool_clean(
    anyio_backend: str, servers: Servers, data: st.DataObject
) -> None:
    """Cancelled anywhere, requests and flows release everything; the next one succeeds."""
    began = time.monotonic()
    hows = ["checkpoints", "deadline"] + (["wait_for"] if anyio_backend == "asyncio" else [])
    how = data.draw(st.sampled_from(hows), label="how")
    if how == "checkpoints":
        amount: float = data.draw(st.integers(0, 120), label="checkpoints")
    else:
        amount = data.draw(st.floats(0.0, 0.05), label="seconds")
    jobs = data.draw(st.lists(_jobs, min_size=1, max_size=4), label="jobs")
    max_connections = data.draw(st.sampled_from([1, 2, 100]), label="max_connections")
    warm = data.draw(st.sampled_from([None, *sorted(soak.USERS)]), label="warm")
    after = data.draw(st.sampled_from(sorted(soak.USERS)), label="after")
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    async with ExClient(limits=limits, timeout=5.0) as client:
        with anyio.fail_after(10):
            if warm is not None:
                assert (await client.get(f"{servers.auth}/p/w", auth=_AUTHS[warm])).is_success
            await _cancel(how, amount, lambda: _all(client, servers, jobs))
        state = client.pool_state()
        assert (state.active, state.reserved, state.connecting, state.queued) == (0, 0, 0, 0), state
        with anyio.fail_after(10):
            response = await client.get(f"{servers.auth}/p/after", auth=_AUTHS[after])
        assert response.status_code == 200
        assert soak._user_name(response.json()["user"]) == after
        state = client.pool_state()
        assert (state.active, state.reserved, state.queued) == (0, 0, 0), state
    _EXAMPLES[anyio_backend] = _EXAMPLES.get(anyio_backend, 0) + 1
    _SECONDS[anyio_backend] = _SECONDS.get(anyio_backend, 0.0) + time.monotonic() - began


def test_cancellation_examples_ran() -> None:
    """The property above really ran its examples (printed for docs/reliability.md)."""
    if not _EXAMPLES:
        pytest.skip("run together with test_cancellation_leaves_the_pool_clean")
    for backend, count in sorted(_EXAMPLES.items()):
        print(f"\ncancellation {backend}: {count} examples in {_SECONDS[backend]:.1f} s")
        assert count >= 200
