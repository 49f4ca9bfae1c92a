"""Redaction, URL masking, input parsing and resume bookkeeping of the CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from httpx_extensions._cli_output import is_initial_token, mask_url, redact_header
from httpx_extensions._fetch import InvalidLine, Job, body_filename, load_done, parse_line
from httpx_extensions._summary import percentile


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("Authorization", "Negotiate YIIBabc=", "Negotiate [redacted 8 chars]"),
        ("proxy-authorization", "NTLM TlRMTVNTUAAB", "NTLM [redacted 12 chars]"),
        ("WWW-Authenticate", "NTLM", "NTLM"),
        ("WWW-Authenticate", "Negotiate oYG2MIGzoAMKAQ==", "Negotiate [redacted 16 chars]"),
        ("Authorization", "Basic YWxpY2U6cHc=", "Basic [redacted 12 chars]"),
        ("Cookie", "session=abc", "[redacted]"),
        ("X-Other", "visible", "visible"),
    ],
)
def test_redact_header(name: str, value: str, shown: str) -> None:
    """Token values are replaced by their length; bare challenges and other headers stay."""
    assert redact_header(name, value) == shown


def test_mask_url() -> None:
    """A password in a URL is masked; URLs without one are unchanged."""
    assert mask_url("http://bob:pw@h.test/x") == "http://bob:***@h.test/x"
    assert mask_url("http://h.test/x?q=1") == "http://h.test/x?q=1"


def test_initial_tokens() -> None:
    """NTLM type 1 and GSS-API initial tokens open a handshake; later legs do not."""
    assert is_initial_token(b"NTLMSSP\x00\x01\x00\x00\x00rest")
    assert not is_initial_token(b"NTLMSSP\x00\x03\x00\x00\x00rest")
    assert is_initial_token(b"\x60\x82\x01")
    assert not is_initial_token(base64.b64decode("oYG2MIGzoAMKAQ=="))


@pytest.mark.parametrize(
    "line", ["nope", "ftp://h/x", "http:///path", '{"url": 1}', '{"url": "http://h/", "name": 2}']
)
def test_parse_line_rejects(line: str) -> None:
    """Lines without a usable http(s) URL raise InvalidLine."""
    with pytest.raises(InvalidLine):
        parse_line(line, 1)


def test_parse_line_accepts() -> None:
    """Plain URLs and JSON lines parse; blanks and comments are no job."""
    assert parse_line(" http://h.test/a \n", 3) == Job("http://h.test/a", None, 3)
    assert parse_line('{"url": "https://h.test/b", "name": "b"}', 4) == Job(
        "https://h.test/b", "b", 4
    )
    assert parse_line("   ", 5) is None and parse_line("# x", 6) is None


def test_body_filename_is_safe() -> None:
    """Names lose path separators and dots at the ends; without a name the URL is hashed."""
    assert body_filename(Job("http://h/", "../../etc/passwd", 1)) == "etc_passwd"
    hashed = body_filename(Job("http://h/", None, 1))
    assert len(hashed) == 32 and hashed.isalnum()
    assert body_filename(Job("http://h/", "..", 1)) == hashed


def test_load_done_only_successes(tmp_path: Path) -> None:
    """Resume remembers URLs with status < 400 and no error, and survives a cut-off line."""
    path = tmp_path / "r.jsonl"
    records = [
        {"url": "http://h/ok", "status": 200, "error": None},
        {"url": "http://h/404", "status": 404, "error": "HTTP 404 Not Found"},
        {"url": "http://h/down", "status": None, "error": "ConnectError"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"url": "http://h/cut')
    done = load_done(path)
    assert len(done) == 1
    assert load_done(tmp_path / "missing.jsonl") == set()


def test_percentile() -> None:
    """Nearest-rank percentiles; None for no data."""
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
