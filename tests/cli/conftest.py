"""Helpers for the CLI tests: URL files, the CLI in a subprocess, a Kerberos-free krb5.conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

USER = "EXAMPLE\\alice"
PASSWORD = "alice-Passw0rd"
CREDENTIALS = f"{USER}:{PASSWORD}"


def write_urls(path: Path, lines: Iterable[str]) -> Path:
    """Write one input line per item."""
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a results file (all must parse)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a CLI subprocess: no system krb5.conf (no KDC lookups in DNS)."""
    conf = tmp_path / "krb5.conf"
    conf.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    return {**os.environ, "KRB5_CONFIG": str(conf), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def no_realm(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process too, point GSSAPI at a krb5.conf without realms."""
    monkeypatch.setenv("KRB5_CONFIG", cli_env["KRB5_CONFIG"])


def cli_command(*args: str) -> list[str]:
    """``python -m httpx_extensions ARGS`` with this interpreter."""
    return [sys.executable, "-m", "httpx_extensions", *args]


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion, capturing its output."""
    return subprocess.run(
        cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
