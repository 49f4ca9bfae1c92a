"""The CLI as a user runs it: Ctrl-C mid-run, the demo, and the live progress bar in tmux."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from httpx_extensions.testing import AuthServer

from .conftest import CREDENTIALS, cli_command, read_results, run_cli, write_urls


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigint_stops_within_2s_flushes_and_resumes(
    auth_server: AuthServer, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """SIGINT mid-run: exit 130 within 2 s, every finished URL on disk; a re-run completes."""
    urls = [f"{auth_server.url}/s/{i}" for i in range(3000)]
    source = write_urls(tmp_path / "urls.txt", urls)
    out = tmp_path / "results.jsonl"
    args = ["fetch", str(source), "--ntlm", "-u", CREDENTIALS, "--out", str(out)]
    proc = subprocess.Popen(
        cli_command(*args, "--concurrency", "4", "--no-progress"),
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _count_lines(out) < 100:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no results within 30 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert took < 2.0
    assert "interrupted" in stdout
    first = read_results(out)  # every line is whole JSON
    assert 100 <= len(first) < len(urls)
    assert all(r["status"] == 200 for r in first)

    again = run_cli(*args, "--no-progress", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert re.search(rf"skipped \(done before\)\D+{len(first)}\b", again.stdout)
    records = read_results(out)
    assert sorted(r["url"] for r in records) == sorted(urls)  # each URL exactly once


def test_demo_300(cli_env: dict[str, str]) -> None:
    """demo --requests 300 passes: handshakes == connections kept, == requests when not."""
    result = run_cli("demo", "--requests", "300", "--no-progress", env=cli_env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"handshakes == connections: (\d+) == (\d+)", result.stdout)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) <= 10
    rows = [line for line in result.stdout.splitlines() if re.match(r"\W*handshakes\b", line)]
    row = rows[-1]  # the side-by-side table comes last
    kept, fresh = (int(n) for n in re.findall(r"\d+", row))
    assert (kept, fresh) == (int(match.group(1)), 300)


def test_tmux_progress_bar_and_summary(
    auth_server: AuthServer, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """In a real terminal (tmux) fetch shows a live progress bar, then the summary table."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is required in CI")
        pytest.skip("tmux is not installed")
    count = 3000
    source = write_urls(tmp_path / "urls.txt", [f"{auth_server.url}/t/{i}" for i in range(count)])
    command = shlex.join(
        cli_command("fetch", str(source), "--ntlm", "-u", CREDENTIALS, "--concurrency", "4")
    )
    script = tmp_path / "run.sh"
    script.write_text(
        f"export KRB5_CONFIG={shlex.quote(cli_env['KRB5_CONFIG'])}\n"
        f"{command}\necho EXIT=$?\nsleep 600\n"
    )
    socket = f"httpx-ext-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "120", "-y", "40", "-s", "cli", "sh", str(script)],
        check=True,
        env={**cli_env, "TERM": "xterm-256color"},
    )
    try:
        seen_live = False
        deadline = time.monotonic() + 60
        while True:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "cli"], capture_output=True, text=True
            ).stdout
            if "EXIT=" in screen:
                break
            if re.search(rf"\d+/{count}", screen) and "req/s" in screen:
                seen_live = True
            assert time.monotonic() < deadline, screen
            time.sleep(0.05)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert seen_live, "no live progress bar was seen"
    assert f"{count}/{count}" in screen
    assert "Summary" in screen and "handshakes" in screen and "p95 latency" in screen
    assert "EXIT=0" in screen
