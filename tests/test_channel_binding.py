"""NTLM over HTTPS with channel bindings, against an acceptor that requires them.

The server is tests/_tls_acceptor.py: pyspnego's NTLM acceptor given the RFC 5929
``tls-server-end-point`` bindings of its certificate, plus a check that refuses a missing or
all-zero ``MsvAvChannelBindings``. A client is accepted only if it bound its logon to the
certificate of the very TLS connection it authenticates.
"""

from __future__ import annotations

import hashlib
import pathlib
import ssl
from collections.abc import Iterator

import pytest
import spnego
import trustme
from spnego.channel_bindings import GssChannelBindings

from httpx_extensions import CredentialsRejectedError, ExClient, NTLMAuth
from tests._tls_acceptor import TlsNtlmServer, av_channel_bindings, tls_server_end_point

USER, PASSWORD = "EXAMPLE\\alice", "pw"
pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def user_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM_USER_FILE with alice for pyspnego's acceptor."""
    path = tmp_path / "users"
    path.write_text("EXAMPLE:alice:pw\n:alice:pw\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(path))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throw-away CA for the server certificates."""
    return trustme.CA()


@pytest.fixture(scope="module")
def verify(ca: trustme.CA) -> ssl.SSLContext:
    """A client SSL context that trusts only the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[TlsNtlmServer]:
    """The HTTPS NTLM server, expecting bindings of its own certificate."""
    with TlsNtlmServer(ca) as srv:
        yield srv


async def test_bound_logon_is_accepted(server: TlsNtlmServer, verify: ssl.SSLContext) -> None:
    """ExClient + NTLMAuth over HTTPS sends the right bindings and the connection is reused."""
    async with ExClient(verify=verify) as client:
        auth = NTLMAuth(USER, PASSWORD)
        for _ in range(3):
            response = await client.get(server.url + "/", auth=auth)
            assert response.status_code == 200
            assert response.text == USER
            assert response.extensions["auth_mechanism"] == "ntlm"
    assert server.results == [f"accepted: {USER}"]  # one handshake, two reuses


async def test_logon_without_bindings_is_rejected(
    server: TlsNtlmServer, verify: ssl.SSLContext
) -> None:
    """channel_binding=False leaves MsvAvChannelBindings out: the server refuses the logon."""
    async with ExClient(verify=verify) as client:
        with pytest.raises(CredentialsRejectedError):
            await client.get(server.url + "/", auth=NTLMAuth(USER, PASSWORD, channel_binding=False))
        (result,) = server.results
        assert result.startswith("rejected: BadBindingsError") and "not present" in result
        response = await client.get(server.url + "/", auth=NTLMAuth(USER, PASSWORD))
        assert response.status_code == 200  # same client, bindings on: accepted


async def test_logon_with_wrong_bindings_is_rejected(
    ca: trustme.CA, verify: ssl.SSLContext
) -> None:
    """Bindings of another certificate (a TLS-terminating proxy in between) are refused."""
    with TlsNtlmServer(ca) as other, TlsNtlmServer(ca, expected_cert=other.cert_der) as server:
        async with ExClient(verify=verify) as client:
            with pytest.raises(CredentialsRejectedError):
                await client.get(server.url + "/", auth=NTLMAuth(USER, PASSWORD))
            response = await client.get(other.url + "/", auth=NTLMAuth(USER, PASSWORD))
            assert response.status_code == 200
    (result,) = server.results
    assert result.startswith("rejected: BadBindingsError") and "do not match" in result
    assert other.results == [f"accepted: {USER}"]


@pytest.mark.parametrize("bound", [True, False])
def test_server_reads_the_binding_av_pair(server: TlsNtlmServer, bound: bool) -> None:
    """The strict check finds MD5(bindings) in a bound AUTHENTICATE message, None otherwise."""
    bindings = GssChannelBindings(application_data=tls_server_end_point(server.cert_der))
    client = spnego.client(
        USER, PASSWORD, protocol="ntlm", channel_bindings=bindings if bound else None
    )
    acceptor = spnego.server(protocol="ntlm")
    challenge = acceptor.step(client.step())
    authenticate = client.step(challenge)
    assert authenticate is not None
    expected = hashlib.md5(bindings.pack()).digest() if bound else None
    assert av_channel_bindings(authenticate) == expected
