"""The atheris target fuzz/fuzz_challenges.py runs for a bounded time and finds nothing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_challenges.py"
SEEDS = ROOT / "fuzz" / "seeds_challenges"
SECONDS = 20


def _need_atheris() -> None:
    """Skip without atheris, except under CI=true, where it must be installed (fail)."""
    if importlib.util.find_spec("atheris") is not None:
        return
    reason = "atheris is not installed: pip install -e '.[fuzz]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the fuzz target must run)", pytrace=False)
    pytest.skip(reason)


@pytest.mark.timeout(SECONDS + 100)
def test_fuzz_challenges_finds_nothing(tmp_path: Path) -> None:
    """libFuzzer drives the challenge parser and the auth flow for 20 s without a finding."""
    _need_atheris()
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    done = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 90,
        cwd=tmp_path,
        check=False,
    )
    tail = done.stderr[-3000:]
    assert done.returncode == 0, tail
    assert "Done " in done.stderr, tail
    print("\n" + [line for line in done.stderr.splitlines() if line.startswith("Done ")][-1])
