"""Mutual authentication against the real KDC + Apache, with the server's last token tampered.

``Tamper`` wraps ExClient's own transport (a real round trip to Apache's ``/krb/``, pinning
and reservations intact) and flips one byte of the token in a 200's
``WWW-Authenticate: Negotiate <token>``: the AP-REP that proves the server's identity.
"""

from __future__ import annotations

import base64
import typing

import httpx
import pytest

from httpx_extensions import (
    ExClient,
    ExTransport,
    KerberosAuth,
    MutualAuthenticationError,
    NegotiateAuth,
)

pytestmark = pytest.mark.anyio
kerberos_classes = pytest.mark.parametrize("auth_cls", [KerberosAuth, NegotiateAuth])


class Tamper(httpx.AsyncBaseTransport):
    """ExTransport, except that the final token of every 200 has one byte flipped."""

    def __init__(self) -> None:
        self.inner = ExTransport()
        self.tampered = 0
        self.final_without_token = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code != 200:
            return response
        scheme, _, token = response.headers.get("WWW-Authenticate", "").partition(" ")
        if not token:
            self.final_without_token += 1
            return response
        raw = bytearray(base64.b64decode(token))
        raw[-10] ^= 0xFF  # inside the encrypted part of the AP-REP
        response.headers["WWW-Authenticate"] = f"{scheme} {base64.b64encode(raw).decode()}"
        self.tampered += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@kerberos_classes
async def test_tampered_final_token_raises(
    kdc: typing.Any, apache: typing.Any, auth_cls: type[KerberosAuth | NegotiateAuth]
) -> None:
    """A flipped byte in the server's AP-REP is MutualAuthenticationError, not a 200."""
    tamper = Tamper()
    async with ExClient(transport=tamper) as client:
        with pytest.raises(MutualAuthenticationError) as info:
            await client.get(apache.urls["krb"], auth=auth_cls())
        assert type(info.value) is MutualAuthenticationError
        assert "did not verify" in str(info.value)
        assert tamper.tampered == 1
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)


@kerberos_classes
async def test_untampered_final_token_verifies(
    kdc: typing.Any, apache: typing.Any, auth_cls: type[KerberosAuth | NegotiateAuth]
) -> None:
    """The same round trip without tampering authenticates with Kerberos (the control)."""
    async with ExClient() as client:
        response = await client.get(apache.urls["krb"], auth=auth_cls())
        assert response.status_code == 200
        assert response.extensions["auth_mechanism"] == "kerberos"
        assert response.headers["X-Remote-User"] == kdc.principal("alice")


@kerberos_classes
async def test_mutual_auth_false_relaxes_it(
    kdc: typing.Any, apache: typing.Any, auth_cls: type[KerberosAuth | NegotiateAuth]
) -> None:
    """With mutual_auth=False the tampering proxy cannot fail the request.

    Raw Kerberos then asks for no AP-REP at all; SPNEGO still gets one, and its failure to
    verify is ignored (logged at DEBUG).
    """
    tamper = Tamper()
    async with ExClient(transport=tamper) as client:
        response = await client.get(apache.urls["krb"], auth=auth_cls(mutual_auth=False))
        assert response.status_code == 200
        assert response.headers["X-Remote-User"] == kdc.principal("alice")
        if auth_cls is KerberosAuth:
            assert (tamper.tampered, tamper.final_without_token) == (0, 1)
        else:
            assert tamper.tampered == 1
