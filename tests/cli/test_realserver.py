"""``fetch`` of 5,000 URLs from a real Apache (mod_auth_gssapi, gss-ntlmssp): issue Show 2."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from httpx_extensions._cli import cli
from tests.servers._apache import Apache

from .conftest import read_results, write_urls

COUNT = 5000


def _row(stdout: str, label: str) -> int:
    match = re.search(rf"{label}\D+(\d+)", stdout)
    assert match, stdout
    return int(match.group(1))


@pytest.mark.realserver
@pytest.mark.timeout(300)
@pytest.mark.parametrize("location", ["ntlm_cb", "krb_cb"])
def test_fetch_5000_from_apache(apache: Apache, location: str, tmp_path: Path) -> None:
    """5,000 URLs, no failure, one handshake per connection, as Apache's log confirms."""
    base = apache.urls[location]
    source = write_urls(tmp_path / "urls.txt", (f"{base}?i={i}" for i in range(COUNT)))
    out = tmp_path / "results.jsonl"
    if location == "ntlm_cb":
        user = f"{apache.ntlm_domain}\\alice:{apache.users['alice']}"
        auth = ["--ntlm", "-u", user]
    else:
        auth = ["--kerberos"]  # alice's ticket cache, from the kdc fixture's environment
    mark = apache.access_log.mark()
    command = ["fetch", str(source), *auth, "--concurrency", "10", "--out", str(out)]
    result = CliRunner().invoke(cli, [*command, "--no-progress"])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    for record in records:
        assert {"url", "status", "bytes", "elapsed", "conn_id"} <= record.keys()
    assert len(records) == COUNT and all(r["status"] == 200 for r in records)
    connections = _row(result.stdout, "connections opened")
    # At most 10 are open at once; over the run a few more may open when idle ones pass
    # keepalive_expiry (5 s) on a slow machine. What matters: one handshake per connection.
    assert 1 <= connections <= 20
    assert _row(result.stdout, "handshakes") == connections
    path = base.split(str(apache.port), 1)[1]
    entries = apache.access_log.wait(COUNT, mark, path, timeout=10)
    assert len({e.connection for e in entries}) == connections
    legs_per_handshake = 2 if location == "ntlm_cb" else 1
    auth_legs = collections.Counter(e.connection for e in entries if e.has_auth)
    assert set(auth_legs.values()) == {legs_per_handshake}, auth_legs

    # A re-run with the same --out skips all 5,000: nothing reaches Apache.
    again_mark = apache.access_log.mark()
    again = CliRunner().invoke(cli, [*command, "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "skipped (done before)" in again.stdout and str(COUNT) in again.stdout
    assert len(read_results(out)) == COUNT
    assert apache.access_log.entries(again_mark, path) == []
