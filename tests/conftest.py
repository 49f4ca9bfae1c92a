"""Shared fixtures: every async test runs on asyncio and trio."""

from __future__ import annotations

import importlib.util
import threading
import typing

import anyio
import pytest

from tests._portserver import PortServer

pytest_plugins = [
    name
    for name in ("tests.servers.fixtures", "httpx_extensions.testing.pytest_plugin")
    if importlib.util.find_spec(name) is not None
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both event loops."""
    return typing.cast(str, request.param)


@pytest.fixture(scope="session")
def port_server() -> typing.Iterator[PortServer]:
    """A loopback server that reports the client port of each request."""
    with PortServer() as server:
        yield server


@pytest.fixture(scope="session")
def port_server2() -> typing.Iterator[PortServer]:
    """A second origin (another port) for cross-origin redirects."""
    with PortServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_kerberos_verdicts() -> typing.Iterator[None]:
    """What Negotiate learnt about Kerberos is shared process-wide per user and password:
    each test starts knowing nothing, as a new process would."""
    from httpx_extensions._spnego import _KerberosVerdicts

    def forget() -> None:
        # A background Kerberos check still running would record its verdict into the
        # next test's registry: let it finish first.
        for thread in threading.enumerate():
            if thread.name.startswith("httpx-extensions Kerberos check"):
                thread.join(30)
        with _KerberosVerdicts._shared_lock:
            _KerberosVerdicts._shared.clear()

    forget()
    yield
    forget()


@pytest.fixture
def steps_in_threads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The security-context steps the auth flows ran in worker threads (recorded as they
    go through ``anyio.to_thread.run_sync``); the rest ran on the event loop."""
    steps: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(fn: typing.Any, *args: typing.Any, **kw: typing.Any) -> typing.Any:
        if getattr(getattr(fn, "func", None), "__name__", "") == "step":
            steps.append(fn)
        return await run_sync(fn, *args, **kw)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return steps
