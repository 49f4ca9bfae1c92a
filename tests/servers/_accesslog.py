"""Read the access logs that Apache and squid write in our own format.

Both servers write one line a request, fields separated by single spaces::

    <client port> <index on the connection|-> <status> <auth 1|-> <user|-> "<request line>"

The auth field says only whether the request carried ``Authorization`` (Apache) or
``Proxy-Authorization`` (squid): tokens are never written. A TCP connection is a client port
and, for Apache, a run of lines on it starting at index 0: on loopback Linux reuses a port
as soon as its connection is closed (``tcp_tw_reuse=2``), so one port may carry several
connections in a test. ``LogEntry.connection`` names the connection; a test can tell how many
handshakes a client made (requests with auth) and over how many connections.

A session-scoped server is shared by many tests: take :meth:`AccessLog.mark` before
the requests under test and pass it as ``since``. Servers write the line after the
response went out, so :meth:`AccessLog.wait` polls until the expected lines are there.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["AccessLog", "LogEntry", "LogSummary"]

_LINE = re.compile(
    r'^(?P<port>\d+) (?P<index>\d+|-) (?P<status>\d{3}) (?P<auth>\S+) (?P<user>\S+) "(?P<line>.*)"$'
)


@dataclass(frozen=True)
class LogEntry:
    """One request as the server logged it."""

    client_port: int
    #: Requests served on this connection before this one (Apache ``%k``); None for squid.
    index: int | None
    status: int
    #: The request carried Authorization (Apache) / Proxy-Authorization (squid).
    has_auth: bool
    #: The authenticated user as the server saw it, or None.
    user: str | None
    method: str
    #: The request target: a path for Apache, an absolute URL for squid.
    target: str
    #: (client port, how many earlier connections the log shows on that port).
    connection: tuple[int, int] = (0, 0)

    @property
    def path(self) -> str:
        """The path of the target (without the query)."""
        return urlsplit(self.target).path or "/"


@dataclass(frozen=True)
class LogSummary:
    """What happened on one location."""

    requests: int
    auth_requests: int
    connections: int
    statuses: dict[int, int]


def parse_line(line: str) -> LogEntry | None:
    """Parse one line of our format; return None for anything else."""
    match = _LINE.match(line.rstrip("\n"))
    if match is None:
        return None
    method, _, rest = match["line"].partition(" ")
    target = rest.rsplit(" ", 1)[0] if " " in rest else rest
    index = match["index"]
    user = match["user"]
    return LogEntry(
        client_port=int(match["port"]),
        index=None if index == "-" else int(index),
        status=int(match["status"]),
        has_auth=match["auth"] not in ("-", "0", ""),
        user=None if user == "-" else user.replace("\\\\", "\\"),
        method=method,
        target=target,
    )


@dataclass(frozen=True)
class AccessLog:
    """An access log file in our format."""

    path: Path

    def mark(self) -> int:
        """Return the current end of the log, to pass as ``since`` later."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def entries(self, since: int = 0, location: str | None = None) -> list[LogEntry]:
        """Return the entries written after ``since``, optionally under ``location``.

        ``location`` is a path prefix such as ``"/krb/"``; for squid it matches the
        path of the absolute URL.
        """
        try:
            with self.path.open("rb") as log:
                data = log.read()
        except FileNotFoundError:
            return []
        generation: dict[int, int] = {}  # port -> connections seen on it so far
        found: list[LogEntry] = []
        offset = 0
        for raw in data.splitlines(keepends=True):
            start, offset = offset, offset + len(raw)
            entry = parse_line(raw.decode("utf-8", "replace"))
            if entry is None:
                continue
            port = entry.client_port
            if port not in generation:
                generation[port] = 0
            elif entry.index == 0:  # Apache: a new connection on a reused port
                generation[port] += 1
            if start < since or (location is not None and not entry.path.startswith(location)):
                continue
            found.append(dataclasses.replace(entry, connection=(port, generation[port])))
        return found

    def wait(
        self, count: int, since: int = 0, location: str | None = None, timeout: float = 3.0
    ) -> list[LogEntry]:
        """Like :meth:`entries`, but wait (up to ``timeout``) for at least ``count`` entries.

        Raises:
            AssertionError: fewer entries were logged; the message lists those that were.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(since, location)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} log entries, got {found}")
            time.sleep(0.02)

    def summary(self, since: int = 0, location: str | None = None) -> LogSummary:
        """Count requests, requests with auth and connections after ``since``."""
        found = self.entries(since, location)
        return LogSummary(
            requests=len(found),
            auth_requests=sum(entry.has_auth for entry in found),
            connections=len({entry.connection for entry in found}),
            statuses=dict(Counter(entry.status for entry in found)),
        )

    def auth_requests(self, since: int = 0, location: str | None = None) -> int:
        """Count requests that carried (Proxy-)Authorization: the handshake legs."""
        return self.summary(since, location).auth_requests

    def connections(self, since: int = 0, location: str | None = None) -> int:
        """Count TCP connections (see :attr:`LogEntry.connection`)."""
        return self.summary(since, location).connections
