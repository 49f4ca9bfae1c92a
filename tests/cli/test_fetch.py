"""``httpx-extensions fetch``: bulk runs, resume, bad input, failures, retries."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from httpx_extensions import ExClient
from httpx_extensions._cli import cli
from httpx_extensions._fetch import FetchOptions, Job, fetch_one
from httpx_extensions._summary import RunStats
from httpx_extensions.testing import AuthServer

from .conftest import CREDENTIALS, read_results, write_urls

FIELDS = {"url", "name", "status", "bytes", "elapsed", "conn_id", "error", "attempt"}


def _fetch(*args: str, input: str | None = None) -> Result:
    base = ["fetch", "--ntlm", "-u", CREDENTIALS, "--no-progress", "--backoff", "0.01"]
    return CliRunner().invoke(cli, [*base, *args], input=input)


def test_fetch_1000_then_resume(auth_server: AuthServer, tmp_path: Path) -> None:
    """1,000 URLs: no failure, one JSON line each, 10 handshakes; a re-run skips them all."""
    urls = [f"{auth_server.url}/item/{i}" for i in range(1000)]
    source = write_urls(tmp_path / "urls.txt", urls)
    out = tmp_path / "results.jsonl"
    result = _fetch(str(source), "--concurrency", "10", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert all(set(r) == FIELDS for r in records)
    assert all(r["status"] == 200 and r["error"] is None and r["attempt"] == 1 for r in records)
    conn_ids = {r["conn_id"] for r in records}
    assert 1 <= len(conn_ids) <= 10
    assert auth_server.connections == len(conn_ids)
    assert "handshakes" in result.stdout and "p95 latency" in result.stdout

    again = _fetch(str(source), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert len(read_results(out)) == 1000
    assert auth_server.connections == len(conn_ids)  # nothing was sent
    assert "skipped (done before)" in again.stdout and "1000" in again.stdout


def test_fetch_reports_bad_lines(auth_server: AuthServer, tmp_path: Path) -> None:
    """Malformed lines are reported by number on stderr and skipped; the rest is fetched."""
    lines = [
        f"{auth_server.url}/a",
        "not a url",
        "# a comment",
        "",
        "ftp://example.com/x",
        '{"url": 5}',
        "{broken json",
        f'{{"url": "{auth_server.url}/b", "name": "bee"}}',
    ]
    source = write_urls(tmp_path / "urls.txt", lines)
    out = tmp_path / "r.jsonl"
    result = _fetch(str(source), "--out", str(out))
    assert result.exit_code == 1
    for number in (2, 5, 6, 7):
        assert f"line {number}: skipped" in result.stderr
    assert "line 1:" not in result.stderr and "line 3:" not in result.stderr
    records = read_results(out)
    assert {r["name"] for r in records} == {None, "bee"}
    assert all(r["status"] == 200 for r in records)


def test_fetch_unreachable_host_fails_alone(auth_server: AuthServer, tmp_path: Path) -> None:
    """An unreachable host is retried, then counted as a failure while the rest succeed."""
    lines = [f"{auth_server.url}/ok/{i}" for i in range(50)] + ["http://127.0.0.1:1/down"]
    source = write_urls(tmp_path / "urls.txt", lines)
    out = tmp_path / "r.jsonl"
    result = _fetch(str(source), "--out", str(out), "--retries", "2")
    assert result.exit_code == 1
    records = {r["url"]: r for r in read_results(out)}
    down = records.pop("http://127.0.0.1:1/down")
    assert down["error"].startswith("ConnectError") and down["attempt"] == 3
    assert down["status"] is None
    assert all(r["status"] == 200 for r in records.values()) and len(records) == 50
    assert "ConnectError" in result.stdout


def test_fetch_stdin_jsonl_and_bodies(auth_server: AuthServer, tmp_path: Path) -> None:
    """JSON Lines on stdin; bodies go to --out-dir, named by "name" or a hash of the URL."""
    stdin = f'{{"url": "{auth_server.url}/one", "name": "../one.json"}}\n{auth_server.url}/two\n'
    out_dir = tmp_path / "bodies"
    result = _fetch("--out-dir", str(out_dir), "-", input=stdin)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 2 and "one.json" in names
    assert all(".." not in n and "/" not in n for n in names)
    assert b'"path": "/one"' in (out_dir / "one.json").read_bytes()


@pytest.mark.anyio
async def test_fetch_one_retries_transient_status() -> None:
    """503 and 502 are retried with backoff; the record shows the attempt that succeeded."""
    answers = iter([503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), content=b"body")

    stats = RunStats()
    async with ExClient(transport=httpx.MockTransport(handler)) as client:
        record = await fetch_one(
            client, Job("http://x.test/", None, 1), FetchOptions(backoff=0.001), stats
        )
    assert (record["status"], record["attempt"], record["error"]) == (200, 3, None)
    assert (stats.ok, stats.retries) == (1, 2)


@pytest.mark.anyio
async def test_fetch_one_gives_up_after_retries() -> None:
    """After --retries the last transient answer is the result, counted by its kind."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(504)

    stats = RunStats()
    async with ExClient(transport=httpx.MockTransport(handler)) as client:
        record = await fetch_one(
            client, Job("http://x.test/", None, 1), FetchOptions(retries=1, backoff=0.001), stats
        )
    assert (record["status"], record["attempt"]) == (504, 2)
    assert record["error"].startswith("HTTP 504")
    assert stats.failures == {"HTTP 504": 1}
