"""``httpx-extensions get`` against the embedded AuthServer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from httpx_extensions._cli import cli
from httpx_extensions.testing import AuthServer

from .conftest import CREDENTIALS, PASSWORD, USER


def _no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert "TlRMTVNT" not in text  # base64 of "NTLMSSP": no NTLM token leaks
    assert "YII" not in text  # base64 of a GSS-API initial token


def test_get_verbose_redacts_tokens(auth_server: AuthServer) -> None:
    """-v shows every leg's headers with the token values and the password redacted."""
    result = CliRunner().invoke(
        cli, ["get", "--ntlm", "-u", CREDENTIALS, "-v", "-H", "X-Demo: 1", f"{auth_server.url}/v"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user"] == USER
    assert "> authorization: NTLM [redacted" in result.stderr
    assert "< www-authenticate: NTLM [redacted" in result.stderr
    assert "> x-demo: 1" in result.stderr
    _no_secret(result.output)


@pytest.mark.parametrize("schemes", [("Negotiate",), ("Negotiate", "NTLM")])
def test_get_negotiate_verbose(schemes: tuple[str, ...], no_realm: None) -> None:
    """--negotiate -v: SPNEGO tokens are redacted too. No Kerberos here: from a server that
    offers NTLM as well, Negotiate switches to that scheme (raw NTLM)."""
    with AuthServer(
        users={USER.split("\\")[1]: PASSWORD}, domain="EXAMPLE", schemes=schemes
    ) as srv:
        result = CliRunner().invoke(
            cli, ["get", "--negotiate", "-u", CREDENTIALS, "-v", f"{srv.url}/n"]
        )
    assert result.exit_code == 0, result.output
    assert f"> authorization: {schemes[-1]} [redacted" in result.stderr
    _no_secret(result.output)


def test_get_prompts_for_password_without_echo(auth_server: AuthServer, tmp_path: Path) -> None:
    """-u USER without a password prompts for it (hidden) and writes the body to -o."""
    out = tmp_path / "body.json"
    result = CliRunner().invoke(
        cli,
        ["get", "--ntlm", "-u", "alice", "--domain", "EXAMPLE", "-o", str(out), auth_server.url],
        input=f"{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "Password for alice" in result.stderr
    assert json.loads(out.read_text())["user"] == USER
    _no_secret(result.output)


def test_get_wrong_password(auth_server: AuthServer) -> None:
    """A refused logon exits 1 with a typed error that names neither password."""
    result = CliRunner().invoke(cli, ["get", "--ntlm", "-u", "alice:S3cret-wrong", auth_server.url])
    assert result.exit_code == 1
    assert "CredentialsRejectedError" in result.stderr
    assert "S3cret-wrong" not in result.output


def test_get_without_auth_is_http_error(auth_server: AuthServer) -> None:
    """Without auth the 401 comes back: exit code 22, like curl --fail."""
    result = CliRunner().invoke(cli, ["get", auth_server.url])
    assert result.exit_code == 22
    assert "HTTP 401" in result.stderr


def test_get_post_data(auth_server: AuthServer) -> None:
    """-d sends a body (POST), which the auth flow replays across its legs."""
    result = CliRunner().invoke(
        cli, ["get", "--ntlm", "-u", CREDENTIALS, "-d", "hello", f"{auth_server.url}/post"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["method"], body["body_length"]) == ("POST", 5)


@pytest.mark.parametrize("args", [["-u", "alice:x"], ["-H", "no-colon"]])
def test_get_usage_errors(args: list[str]) -> None:
    """-u without a scheme and a malformed -H are usage errors (exit 2)."""
    result = CliRunner().invoke(cli, ["get", *args, "http://127.0.0.1:1/"])
    assert result.exit_code == 2
