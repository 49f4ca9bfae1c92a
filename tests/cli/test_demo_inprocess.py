"""The demo, run in this process (the subprocess tests show the console script works)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from httpx_extensions._cli import cli


@pytest.mark.usefixtures("no_realm")
def test_demo_in_process() -> None:
    """demo --requests 200 prints both runs side by side and passes."""
    result = CliRunner().invoke(cli, ["demo", "--requests", "200", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Side by side" in result.output
    assert "PASS" in result.output
