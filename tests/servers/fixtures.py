"""pytest plugin: session fixtures ``kdc``, ``apache``, ``squid``, ``nginx`` (real servers).

Registered in ``tests/conftest.py`` (``pytest_plugins``). Every server lives in one
private directory per session and stops when its fixture finalizes (its whole process
group is signalled). Tests that use one of these fixtures get the ``realserver`` marker
automatically, so ``pytest -m "not realserver"`` leaves them out.

When a server cannot be started here because its packages are missing, the fixture skips
the test with a hint to run ``scripts/install-servers`` as root; under ``CI=true`` it
fails instead, because CI must run the real-server tests. A server that is installed but
fails to start is always an error.

``kdc`` also puts the realm's ``KRB5_CONFIG``, ``KRB5_KDC_PROFILE``, ``KRB5CCNAME`` (alice's
ticket cache), ``KRB5_KTNAME`` and ``KRB5RCACHEDIR`` into ``os.environ`` for the session,
so gssapi in this process uses the test realm. Set ``KEEP_SERVERS_DIR=1`` to keep the
directory (configs and logs) after the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from ._apache import Apache, start_apache
from ._kdc import Kdc, start_kdc
from ._nginx import Nginx, start_nginx
from ._process import ServerUnavailable, is_root
from ._squid import Squid, start_squid

__all__ = ["apache", "kdc", "need_kerberos_client", "nginx", "servers_dir", "squid"]

SERVER_FIXTURES = frozenset({"kdc", "apache", "squid", "nginx"})
_T = TypeVar("_T")
#: Server name -> seconds its start-up took in this session (reported in the summary).
_STARTUP_SECONDS: dict[str, float] = {}


def unavailable(reason: str) -> NoReturn:
    """Skip the test (fail it when ``CI=true``): a server cannot run on this machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: real-server tests must run)", pytrace=False)
    pytest.skip(reason)


def need_kerberos_client() -> None:
    """Skip (or fail in CI) unless gssapi and krb5 (``pyspnego[kerberos]``) import."""
    try:
        import gssapi  # noqa: F401
        import krb5  # noqa: F401
    except ImportError:
        unavailable("gssapi/krb5 missing: run scripts/install-servers as root to enable")


def _start(name: str, start: Callable[[], _T]) -> _T:
    """Start a server and time it; skip (fail in CI) when it cannot run here."""
    if not is_root():
        unavailable(
            "real servers run as root (they drop to www-data / proxy): "
            "run scripts/install-servers as root to enable, then the tests as root"
        )
    began = time.monotonic()
    try:
        server = start()
    except ServerUnavailable as exc:
        reason = str(exc)
    else:
        _STARTUP_SECONDS[name] = time.monotonic() - began
        return server
    unavailable(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-server fixture ``realserver``."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realserver)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long each real server took to start."""
    if _STARTUP_SECONDS:
        times = ", ".join(f"{name} {secs:.2f} s" for name, secs in _STARTUP_SECONDS.items())
        terminalreporter.write_line(f"real servers started: {times}")


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    """A private directory for the session's servers, readable by www-data and proxy."""
    path = Path(tempfile.mkdtemp(prefix="httpx-ext-servers-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("KEEP_SERVERS_DIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def kdc(servers_dir: Path) -> Iterator[Kdc]:
    """An MIT KDC for realm EXAMPLE.TEST, users alice and bob, with their TGTs cached."""
    directory = servers_dir / "kdc"
    directory.mkdir(exist_ok=True)
    server = _start("kdc", lambda: start_kdc(directory))
    names = [name for name in server.env if name != "PATH"]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: server.env[name] for name in names})
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(scope="session")
def apache(kdc: Kdc, servers_dir: Path) -> Iterator[Apache]:
    """Apache with /krb/, /krb-cb/, /ntlm-cb/, /negotiate-cb/ and /anon/."""
    server = _start("apache", lambda: start_apache(kdc, servers_dir / "apache"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx(servers_dir: Path) -> Iterator[Nginx]:
    """nginx serving a 1 KB JSON document at /json, keep-alive without limit."""
    server = _start("nginx", lambda: start_nginx(servers_dir / "nginx"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def squid(kdc: Kdc, nginx: Nginx, servers_dir: Path) -> Iterator[Squid]:
    """squid demanding Negotiate or NTLM proxy auth, with nginx's /json as origin."""
    server = _start("squid", lambda: start_squid(kdc, servers_dir / "squid", nginx.json_url))
    try:
        yield server
    finally:
        server.stop()
