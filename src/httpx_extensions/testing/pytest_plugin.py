"""pytest plugin: the ``auth_server`` fixture, a running :class:`AuthServer`.

Enable it with ``pytest -p httpx_extensions.testing.pytest_plugin`` or
``pytest_plugins = ["httpx_extensions.testing.pytest_plugin"]`` in a ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._server import AuthServer

__all__ = ["auth_server"]


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    """A running :class:`AuthServer` with the demo users in domain ``EXAMPLE``, per test.

    For other settings, create your own: ``with AuthServer(users=..., scheme="ntlm") as s:``.
    """
    with AuthServer() as server:
        yield server
