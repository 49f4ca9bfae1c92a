"""Small units of the CLI: redaction of parameter challenges, handshake detection, options."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import trustme

from httpx_extensions._cli import _data, make_client
from httpx_extensions._cli_output import _opens_handshake, redact_header


def test_parameter_challenges_are_redacted_whole() -> None:
    """A WWW-Authenticate with parameters shows only its scheme."""
    value = 'Digest realm="corp", nonce="abc123", qop="auth"'
    assert redact_header("WWW-Authenticate", value) == "Digest [parameters redacted]"
    assert redact_header("Authorization", "Negotiate") == "Negotiate"


def test_opens_handshake() -> None:
    """Basic is one round trip; bad base64 never opens a handshake; NTLM type 1 does."""
    assert _opens_handshake("Basic dXNlcjpwdw==")
    assert not _opens_handshake("NTLM !!!not-base64")
    type1 = b"NTLMSSP\x00\x01\x00\x00\x00" + b"\x00" * 28
    assert _opens_handshake("NTLM " + base64.b64encode(type1).decode())
    type3 = b"NTLMSSP\x00\x03\x00\x00\x00" + b"\x00" * 28
    assert not _opens_handshake("NTLM " + base64.b64encode(type3).decode())


def test_data_option(tmp_path: Path) -> None:
    """-d takes text, or @FILE for a file's bytes, or nothing."""
    body = tmp_path / "body.bin"
    body.write_bytes(b"\x00\x01")
    assert _data(None) is None
    assert _data("a=1") == b"a=1"
    assert _data(f"@{body}") == b"\x00\x01"


def test_make_client_tls_options(tmp_path: Path) -> None:
    """--insecure and --cacert reach the client's TLS configuration."""
    base = {"scheme": None, "user": None, "domain": None, "proxy": None, "timeout": 5.0}
    base["location"] = False
    insecure = make_client({**base, "insecure": True, "cacert": None})
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    pinned = make_client({**base, "insecure": False, "cacert": str(pem)})
    for client in (insecure, pinned):
        assert isinstance(client, httpx.AsyncClient)
    assert ssl.CERT_NONE == insecure._transport._ssl_context.verify_mode
    assert pinned._transport._ssl_context.verify_mode == ssl.CERT_REQUIRED
