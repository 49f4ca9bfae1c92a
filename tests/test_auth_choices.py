"""Auth object choices that need no server: proactive tokens, SPN cache, Kerberos absence."""

from __future__ import annotations

import httpx
import pytest

import httpx_extensions._auth as auth_module
from httpx_extensions import NegotiateAuth, NoCredentialsError, NTLMAuth
from httpx_extensions._spnego import Target


def test_no_proactive_negotiate_token_over_tls() -> None:
    """On a client without conn_ids, Negotiate over HTTPS waits for the connection's certificate."""
    auth = NegotiateAuth("EXAMPLE\\alice", "pw")
    auth._pool_aware = False
    assert auth._proactive_choice(httpx.Request("GET", "https://h.example/")) is None
    assert auth._proactive_choice(httpx.Request("GET", "http://h.example/")) is not None
    ntlm = NTLMAuth("EXAMPLE\\alice", "pw")
    ntlm._pool_aware = False
    assert ntlm._proactive_choice(httpx.Request("GET", "https://h.example/")) == ("NTLM", "ntlm")


def test_canonical_spn_is_cached_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A canonicalized host name is looked up once, then served from the cache, per host."""
    calls: list[str] = []

    def canonicalize(host: str) -> str:
        calls.append(host)
        return "web01.example" if host == "alias.example" else host

    monkeypatch.setattr(auth_module, "canonicalize", canonicalize)
    auth = NegotiateAuth(canonicalize_host=True)
    assert auth._target_nowait("alias.example") is None  # not resolved yet
    assert auth._resolve("alias.example") == Target("HTTP", "web01.example")
    assert auth._target_nowait("ALIAS.example") == Target("HTTP", "web01.example")
    assert auth._target_nowait("other.example") is None  # never another host's SPN
    assert calls == ["alias.example"]


def test_kerberos_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the Kerberos libraries, a Kerberos context fails saying what to install."""
    monkeypatch.setattr(auth_module, "KERBEROS_AVAILABLE", False)
    auth = NegotiateAuth()
    request = httpx.Request("GET", "http://h.example/")
    with pytest.raises(NoCredentialsError, match=r"httpx-extensions\[kerberos\]"):
        auth._context("kerberos", Target("HTTP", "h.example"), None, request)
