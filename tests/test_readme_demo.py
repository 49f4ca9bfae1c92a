"""The README's demo command works from a fresh virtual environment."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_scripts_demo_in_a_fresh_venv(tmp_path: pathlib.Path) -> None:
    """`scripts/demo` builds its own venv, exits 0, 0 failures, handshakes == connections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE", "VIRTUAL_ENV"))}
    env["DEMO_VENV"] = str(tmp_path / "venv")
    env["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    proc = subprocess.run(
        ["sh", str(ROOT / "scripts" / "demo"), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"PASS: run 1 had 0 failures and handshakes == connections: (\d+) == \1", out)
    # The venv the demo used is its own: the package came from this checkout, not from .venv.
    assert (tmp_path / "venv" / "bin" / "httpx-extensions").exists()
