"""Fixtures for the fault server's own tests."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from tests.faults import FaultServer, write_user_file

Connect = Callable[..., http.client.HTTPConnection]


@pytest.fixture
def srv() -> Iterator[FaultServer]:
    """A fault server with short stall and hold times, faults only when forced by path."""
    with FaultServer(stall_seconds=0.5, hold_seconds=0.5) as server:
        yield server


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open http.client connections to a server; all are closed after the test."""
    opened: list[http.client.HTTPConnection] = []

    def factory(server: FaultServer, timeout: float = 2.0) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()


@pytest.fixture
def ntlm_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point NTLM_USER_FILE at a file with a domain user and a domain-less user."""
    users = [("DOM", "alice", "Passw0rd!"), ("", "bob", "hunter2")]
    monkeypatch.setenv("NTLM_USER_FILE", str(write_user_file(tmp_path / "users.txt", users)))
    return {"DOM\\alice": "Passw0rd!", "bob": "hunter2"}
