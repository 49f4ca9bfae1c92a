"""Smoke test of the benchmark harness (bench/pool.py --quick): it runs and prints a table.

No timing assertions: the figures of a few hundred requests on a shared machine mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "pool.py"


def _find_nginx() -> str | None:
    """bench/pool.py's own lookup ($NGINX, PATH, /usr/sbin), so both agree."""
    spec = importlib.util.spec_from_file_location("_bench_pool", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    found: str | None = module.find_nginx()
    return found


def _nginx_or_skip() -> None:
    if _find_nginx() is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("nginx not found ($NGINX, PATH, /usr/sbin); CI=true requires this test")
    pytest.skip("nginx not found ($NGINX, PATH, /usr/sbin): apt-get install nginx-light")


@pytest.mark.timeout(300)
def test_bench_quick_runs_and_prints_a_table(tmp_path: Path) -> None:
    _nginx_or_skip()
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    stdout = proc.stdout
    assert "Worker scenario" in stdout
    assert "req/s" in stdout and "CPU us/req" in stdout
    assert "Gather scenario" in stdout
    assert "Targets" in stdout
    for client in ("httpx", "aiohttp"):
        assert f"{client} req/s" in stdout
    data = json.loads(out.read_text())
    assert data["runs"], "no runs recorded"
    assert {"runs", "medians", "targets", "environment"} <= set(data)


def _bench(script: str, *args: str, timeout: float) -> str:
    """Run ``bench/<script>`` with ``args``; return its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(120)
def test_auth_phases_runs_against_the_embedded_server() -> None:
    """bench/auth_phases.py (where authenticated runs spend their extra CPU) runs and prints
    its split for each column; the figures themselves are not checked."""
    stdout = _bench(
        "auth_phases.py", "--server", "embedded", "--requests", "200", "--concurrency", "10",
        "--rounds", "1", timeout=110,
    )  # fmt: skip
    assert "extra phase 1 ms" in stdout
    rows = [line.split()[0] for line in stdout.splitlines()[-3:]]
    assert rows == ["anon", "negotiate", "ntlm"]


@pytest.mark.timeout(120)
def test_auth_bench_runs_its_target_columns_in_pairs() -> None:
    """bench/auth.py against the embedded server: the two columns of the 90 % target run
    --pairs times a round, back to back in alternating order, and the per-pair ratios are
    printed; the figures themselves are not checked."""
    stdout = _bench(
        "auth.py", "--server", "embedded", "--requests", "200", "--concurrency", "10",
        "--rounds", "2", "--pairs", "2", "--only", "ExClient anon", "ExClient+NegotiateAuth",
        timeout=110,
    )  # fmt: skip
    timed = [line.split()[2] for line in stdout.splitlines() if line.startswith("round ")]
    anon, ours = "ExClient", "ExClient+NegotiateAuth"
    # At the baseline's turn, pairs in alternating order; the next round opens with ours.
    assert timed == [anon, ours, ours, anon, ours, anon, anon, ours], stdout
    assert "2 back-to-back pairs a round" in stdout
    pairs = next(line for line in stdout.splitlines() if "per pair:" in line)
    assert pairs.count("%") == 4 + 1, pairs  # four pairs and their median
    assert "0 failures in every run" in stdout


@pytest.mark.timeout(600)
def test_auth_instructions_counts_each_column_under_callgrind() -> None:
    """bench/auth_instructions.py runs each column's client under callgrind against the
    embedded server and prints instructions per request and the anonymous share; the
    figures themselves are not checked."""
    if shutil.which("valgrind") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("valgrind not found; CI=true requires this test (scripts/install-servers)")
        pytest.skip("valgrind not found: apt-get install valgrind")
    stdout = _bench(
        "auth_instructions.py", "--server", "embedded", "--requests", "20", "--warmup", "10",
        "--concurrency", "5", "--columns", "anon", "ntlm", timeout=580,
    )  # fmt: skip
    rows = [line.split() for line in stdout.splitlines()[-2:]]
    assert [row[0] for row in rows] == ["anon", "ntlm"], stdout
    assert rows[0][2] == "100.0%" and rows[1][2].endswith("%"), stdout
    assert all(int(row[1].replace(",", "")) > 0 for row in rows), stdout
