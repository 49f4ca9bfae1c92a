"""Run one bulk job in the terminal: progress bar, Ctrl-C, the client's lifetime.

Theory of operation. :func:`run_job` owns three tasks: the engine (:func:`run_fetch`, in
its own cancel scope), a signal watcher and a progress refresher. SIGINT or SIGTERM cancels
the engine's scope only, so the code after it runs normally: the result file is already
flushed line by line, the client is closed (its connections shut), and the caller prints
the partial summary and exits 130. Everything terminal-related stays here and in
:mod:`._summary`; the engine knows nothing of it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Callable

import anyio
import httpx
from rich.console import Console
from rich.progress import Progress, TaskID

from ._cli_output import AuthCounter
from ._fetch import FetchOptions, ResultWriter, run_fetch
from ._summary import RunStats, make_progress

__all__ = ["instrument", "run_job"]

_REFRESH = 0.1


def instrument(stats: RunStats) -> dict[str, list[Callable[..., object]]]:
    """Event hooks that count handshakes, auth round trips and connections into ``stats``."""

    def on_leg(opens: bool) -> None:
        stats.auth_legs += 1
        if opens:
            stats.handshakes += 1

    async def on_response(response: httpx.Response) -> None:
        # A first token the auth flow's before_send hook put on the wire: not in
        # request.headers, so the request hook did not see it (docs/internals.md).
        added = response.extensions.get("before_send_headers") or ()
        if "authorization" in added or "proxy-authorization" in added:
            on_leg(True)
        conn_id = response.extensions.get("conn_id")
        if conn_id is not None:
            stats.conn_ids.add(conn_id)

    return {"request": [AuthCounter(on_leg)], "response": [on_response]}


async def run_job(
    client: httpx.AsyncClient,
    lines: Iterator[str],
    options: FetchOptions,
    stats: RunStats,
    writer: ResultWriter,
    *,
    console: Console,
    title: str = "fetch",
    total: int | None = None,
    done: set[bytes] | None = None,
    progress: bool = True,
    warn: Callable[[str], None] = lambda message: None,
) -> RunStats:
    """Run the job on ``client`` (closed at the end) behind a live progress bar.

    Args:
        total: the number of URL lines when known in advance (a file), for the bar.
        done: URL keys already done by an earlier run (see ``load_done``), skipped.
        progress: show the live bar (off for ``--no-progress``).

    Returns:
        ``stats``, finished; ``stats.interrupted`` tells whether Ctrl-C cut the run short.
    """
    work = anyio.CancelScope()
    bar = make_progress(console, stats) if progress else None
    async with client:
        try:
            if bar is not None:
                bar.start()
            task = bar.add_task(title, total=total) if bar is not None else None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, work, stats)
                if bar is not None and task is not None:
                    tg.start_soon(_refresh, bar, task, stats, total)
                with work:
                    await run_fetch(client, lines, options, stats, writer, done=done, warn=warn)
                tg.cancel_scope.cancel()
            if bar is not None and task is not None:
                _update(bar, task, stats, total)
        finally:
            stats.finish()
            writer.close()
            if bar is not None:
                bar.stop()
    return stats


async def _watch_signals(work: anyio.CancelScope, stats: RunStats) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stats.interrupted = True
            work.cancel()
            return


async def _refresh(bar: Progress, task: TaskID, stats: RunStats, total: int | None) -> None:
    while True:
        _update(bar, task, stats, total)
        await anyio.sleep(_REFRESH)


def _update(bar: Progress, task: TaskID, stats: RunStats, total: int | None) -> None:
    if total is not None:
        expected: int | None = max(total - stats.skipped - stats.invalid, stats.requests)
    elif stats.reading_done:
        expected = stats.queued
    else:
        expected = None
    bar.update(task, completed=stats.requests, total=expected)
