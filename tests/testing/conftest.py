"""Fixtures of the AuthServer tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from httpx_extensions.testing import AuthServer

from ._client import close_all


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def server() -> Iterator[AuthServer]:
    """A running AuthServer with the demo users."""
    with AuthServer() as running:
        yield running
