"""``httpx-extensions serve``: the embedded server from the command line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from click.testing import CliRunner

from httpx_extensions._cli import cli

from .conftest import cli_command


def test_serve_until_ctrl_c(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """serve prints its URL and users (no password from --users), serves, stops on SIGINT."""
    users = tmp_path / "users.txt"
    users.write_text("# name:password\ncarol:Carol-Secr3t\n")
    with subprocess.Popen(
        cli_command("serve", "--users", str(users), "--scheme", "ntlm", "--domain", "CORP"),
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            first, rest = _talk_to(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    output = first + rest
    assert "carol" in output and "Carol-Secr3t" not in output
    assert "stopped" in output


def _talk_to(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", first)
    assert match, first
    result = CliRunner().invoke(
        cli, ["get", "--ntlm", "-u", "CORP\\carol:Carol-Secr3t", f"{match.group(0)}/x"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user"] == "CORP\\carol"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    return first, proc.stdout.read()  # not communicate(): it would skip readline's buffer


def test_python_m_help(cli_env: dict[str, str]) -> None:
    """python -m httpx_extensions lists the four commands."""
    result = subprocess.run(
        cli_command("--help"), env=cli_env, capture_output=True, text=True, check=True
    )
    for command in ("get", "fetch", "serve", "demo"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M)
