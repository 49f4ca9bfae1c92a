"""The bulk engine behind ``fetch`` and ``demo``: a reader, N workers, one result writer.

Theory of operation. A reader task pulls input lines in batches from a worker thread
(a pipe or a huge file never blocks the event loop, and is never read whole), parses
them (:func:`parse_line`), drops the ones a previous run already finished (``--out``
resume) and puts jobs in a bounded stream; ``concurrency`` workers take jobs from it.
Memory therefore stays bounded by the queue, whatever the input size. Each worker sends
its request on the shared client, retrying transient failures with exponential backoff,
and writes one JSON line per URL, flushed at once, so an interrupted run loses nothing
it finished. A URL is *done* when it got a status below 400 with no error; only those
are skipped by a re-run.

This module knows nothing of the terminal: progress is read from :class:`RunStats` by
the caller; warnings go through a callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any, Callable

import anyio
import anyio.to_thread
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._cli_output import mask_url
from ._summary import RunStats

__all__ = [
    "FetchOptions",
    "InvalidLine",
    "Job",
    "ResultWriter",
    "body_filename",
    "load_done",
    "parse_line",
    "run_fetch",
]

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.TimeoutException,
)
TRANSIENT_STATUS = frozenset({502, 503, 504})
_BATCH = 256
_MAX_BACKOFF = 10.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Job:
    """One URL to fetch: ``name`` (optional) names its body file; ``line`` is its input line."""

    url: str
    name: str | None
    line: int


class InvalidLine(ValueError):
    """An input line that is neither an http(s) URL nor a JSON object with one."""


@dataclass(frozen=True)
class FetchOptions:
    """How to run a bulk job; see ``httpx-extensions fetch --help`` for each option."""

    concurrency: int = 10
    retries: int = 2
    backoff: float = 0.25
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    data: bytes | None = None
    out_dir: Path | None = None
    new_connection: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def parse_line(text: str, line: int) -> Job | None:
    """Parse one input line: a URL, or JSON ``{"url": ..., "name": ...}``.

    Returns:
        The job, or ``None`` for a blank line or a ``#`` comment.

    Raises:
        InvalidLine: the line holds no usable http(s) URL; report it and go on.
    """
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    name: str | None = None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise InvalidLine("not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
            raise InvalidLine('JSON line without a string "url"')
        raw_name = obj.get("name")
        if raw_name is not None and not isinstance(raw_name, str):
            raise InvalidLine('"name" must be a string')
        text, name = obj["url"].strip(), raw_name
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidLine(f"not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidLine("not an absolute http:// or https:// URL")
    return Job(text, name, line)


def _key(url: str) -> bytes:
    """A 16-byte digest of the (masked) URL: what resume remembers per finished URL."""
    return hashlib.blake2b(mask_url(url).encode(), digest_size=16).digest()


def load_done(path: Path) -> set[bytes]:
    """The URLs a previous run wrote to ``path`` as done (status < 400, no error).

    Lines that are not valid JSON (such as one cut short by a crash) are ignored.
    """
    done: set[bytes] = set()
    if not path.exists():
        return done
    with path.open(encoding="utf-8", errors="replace") as fh:
        for text in fh:
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("url"), str):
                continue
            status = rec.get("status")
            if rec.get("error") is None and isinstance(status, int) and status < 400:
                done.add(_key(rec["url"]))
    return done


def body_filename(job: Job) -> str:
    """The body file name of a job: its ``name`` made safe, else a hash of its URL."""
    if job.name:
        safe = _SAFE_NAME.sub("_", job.name).strip("._")[:120]
        if safe:
            return safe
    return hashlib.sha256(job.url.encode()).hexdigest()[:32]


class ResultWriter:
    """Appends one JSON line per result to a file and flushes it at once."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write and flush one record."""
        if self._fh is not None:
            self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Flush and close the file; idempotent."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def run_fetch(
    client: httpx.AsyncClient,
    lines: Iterator[str],
    options: FetchOptions,
    stats: RunStats,
    writer: ResultWriter,
    *,
    done: set[bytes] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> None:
    """Fetch every URL of ``lines`` with ``options.concurrency`` workers on ``client``.

    Cancel the surrounding scope to stop: results already written stay written.
    """
    send, receive = anyio.create_memory_object_stream[Job](options.concurrency * 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read, lines, send, stats, done or set(), warn)
        async with receive:
            for _ in range(options.concurrency):
                tg.start_soon(_work, client, receive.clone(), options, stats, writer)
    stats.finish()


async def _read(
    lines: Iterator[str],
    send: MemoryObjectSendStream[Job],
    stats: RunStats,
    done: set[bytes],
    warn: Callable[[str], None],
) -> None:
    number = 0
    async with send:
        while True:
            batch = await anyio.to_thread.run_sync(
                lambda: list(islice(lines, _BATCH)), abandon_on_cancel=True
            )
            if not batch:
                break
            for text in batch:
                number += 1
                try:
                    job = parse_line(text, number)
                except InvalidLine as exc:
                    stats.invalid += 1
                    warn(f"line {number}: skipped: {exc}")
                    continue
                if job is None:
                    continue
                if done and _key(job.url) in done:
                    stats.skipped += 1
                    continue
                stats.queued += 1
                await send.send(job)
    stats.reading_done = True


async def _work(
    client: httpx.AsyncClient,
    receive: MemoryObjectReceiveStream[Job],
    options: FetchOptions,
    stats: RunStats,
    writer: ResultWriter,
) -> None:
    async with receive:
        async for job in receive:
            record = await fetch_one(client, job, options, stats)
            writer.write(record)


async def fetch_one(
    client: httpx.AsyncClient, job: Job, options: FetchOptions, stats: RunStats
) -> dict[str, Any]:
    """Fetch one job with retries; count it in ``stats``; return its JSON record."""
    attempt = 0
    while True:
        attempt += 1
        start = time.perf_counter()
        status: int | None = None
        nbytes = 0
        conn_id: str | None = None
        kind: str | None = None
        error: str | None = None
        try:
            status, nbytes, conn_id = await _attempt(client, job, options)
            if status >= 400:
                kind = f"HTTP {status}"
                error = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".strip()
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            kind = type(exc).__name__
            error = f"{kind}: {exc}" if str(exc) else kind
            transient = isinstance(exc, TRANSIENT_ERRORS)
        else:
            transient = status in TRANSIENT_STATUS
        elapsed = time.perf_counter() - start
        if transient and attempt <= options.retries:
            stats.retries += 1
            delay = min(_MAX_BACKOFF, options.backoff * 2 ** (attempt - 1))
            await anyio.sleep(delay * (0.5 + random.random() / 2))
            continue
        stats.record(error is None, kind, elapsed)
        if conn_id is not None:
            stats.conn_ids.add(conn_id)
        return {
            "url": mask_url(job.url),
            "name": job.name,
            "status": status,
            "bytes": nbytes,
            "elapsed": round(elapsed, 6),
            "conn_id": conn_id,
            "error": error,
            "attempt": attempt,
        }


async def _attempt(
    client: httpx.AsyncClient, job: Job, options: FetchOptions
) -> tuple[int, int, str | None]:
    extensions = dict(options.extra)
    if options.new_connection:
        extensions["new_connection"] = True
    request = client.build_request(
        options.method,
        job.url,
        headers=list(options.headers),
        content=options.data,
        extensions=extensions,
    )
    response = await client.send(request, stream=True)
    nbytes = 0
    try:
        conn_id = response.extensions.get("conn_id")
        if options.out_dir is not None and response.status_code < 400:
            target = options.out_dir / body_filename(job)
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as fh:
                async for chunk in response.aiter_bytes():
                    nbytes += len(chunk)
                    fh.write(chunk)
            os.replace(partial, target)
        else:
            async for chunk in response.aiter_bytes():
                nbytes += len(chunk)
    finally:
        await response.aclose()
    return response.status_code, nbytes, conn_id
