"""The CLI's bookkeeping: run statistics, the live progress bar and the summary tables.

Theory of operation. One :class:`RunStats` per run is the only mutable state shared by
the workers of ``fetch``; it is touched from the event loop thread only (event hooks and
workers), so it needs no lock. Latencies are kept in an ``array('d')`` (8 bytes a
request) for exact percentiles. This module renders; it never sends a request and never
sees a header value.
"""

from __future__ import annotations

import array
import collections
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["RunStats", "make_progress", "percentile", "side_by_side", "summary_table"]


@dataclass
class RunStats:
    """Counters of one bulk run; see the module docstring."""

    requests: int = 0
    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0
    queued: int = 0
    reading_done: bool = False
    skipped: int = 0
    invalid: int = 0
    handshakes: int = 0
    auth_legs: int = 0
    conn_ids: set[str] = field(default_factory=set)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    interrupted: bool = False

    @property
    def failed(self) -> int:
        """Requests that ended in an error or an HTTP status of 400 or more."""
        return sum(self.failures.values())

    @property
    def connections(self) -> int:
        """Distinct connections (``conn_id``) that carried any response of this run."""
        return len(self.conn_ids)

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the end of the run (or to now, while it runs)."""
        end = self.finished if self.finished is not None else time.perf_counter()
        return max(end - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Finished requests per second."""
        return self.requests / self.elapsed

    def record(self, ok: bool, kind: str | None, elapsed: float) -> None:
        """Count one finished request: ``kind`` names the failure (``None`` when ok)."""
        self.requests += 1
        self.latencies.append(elapsed)
        if ok:
            self.ok += 1
        else:
            self.failures[kind or "error"] += 1

    def finish(self) -> None:
        """Stop the clock."""
        if self.finished is None:
            self.finished = time.perf_counter()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


class _CountersColumn(ProgressColumn):
    """errors / connections / handshakes of the live run, read from its :class:`RunStats`."""

    def __init__(self, stats: RunStats) -> None:
        super().__init__()
        self._stats = stats

    def render(self, task: Task) -> Text:
        s = self._stats
        text = Text()
        text.append(f"{s.rate:.0f} req/s ", style="cyan")
        text.append(f"errors {s.failed} ", style="red" if s.failed else "green")
        text.append(f"conns {s.connections} handshakes {s.handshakes}")
        return text


def make_progress(console: Console, stats: RunStats) -> Progress:
    """A rich progress bar showing done / total, rate, errors, connections and handshakes."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        _CountersColumn(stats),
        console=console,
        refresh_per_second=8,
    )


def summary_table(stats: RunStats, title: str = "Summary") -> Table:
    """The end-of-run table: requests, ok, failures by kind, connections, handshakes, rates."""
    table = Table(
        title=title, show_header=False, title_justify="left", min_width=max(34, len(title) + 2)
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("requests", str(stats.requests))
    table.add_row("ok", str(stats.ok))
    table.add_row("failed", str(stats.failed), style="red" if stats.failed else None)
    for kind, count in sorted(stats.failures.items()):
        table.add_row(f"  {kind}", str(count), style="red")
    if stats.retries:
        table.add_row("retries", str(stats.retries))
    if stats.skipped:
        table.add_row("skipped (done before)", str(stats.skipped))
    if stats.invalid:
        table.add_row("invalid input lines", str(stats.invalid), style="yellow")
    table.add_row("connections opened", str(stats.connections))
    table.add_row("handshakes", str(stats.handshakes))
    table.add_row("auth round trips", str(stats.auth_legs))
    table.add_row("elapsed", f"{stats.elapsed:.2f} s")
    table.add_row("req/s", f"{stats.rate:.1f}")
    table.add_row("p50 latency", _ms(percentile(stats.latencies, 50)))
    table.add_row("p95 latency", _ms(percentile(stats.latencies, 95)))
    if stats.interrupted:
        table.add_row("interrupted", "yes (partial results)", style="yellow")
    return table


def side_by_side(runs: Sequence[tuple[str, RunStats]], title: str) -> Table:
    """Compare runs column by column: requests, failures, connections, handshakes, req/s."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name, _ in runs:
        table.add_column(name, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("requests", [str(s.requests) for _, s in runs]),
        ("failed", [str(s.failed) for _, s in runs]),
        ("connections opened", [str(s.connections) for _, s in runs]),
        ("handshakes", [str(s.handshakes) for _, s in runs]),
        ("auth round trips", [str(s.auth_legs) for _, s in runs]),
        ("req/s", [f"{s.rate:.1f}" for _, s in runs]),
        ("p50 latency", [_ms(percentile(s.latencies, 50)) for _, s in runs]),
        ("p95 latency", [_ms(percentile(s.latencies, 95)) for _, s in runs]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    return table
