"""The pyspnego wrapper: credentials, SPNs, channel bindings, contexts and error mapping."""

from __future__ import annotations

import datetime
import hashlib
import logging
import pathlib
import subprocess
import threading
import time
import typing

import pytest
import spnego
import spnego.channel_bindings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from httpx_extensions import _spnego
from httpx_extensions._exceptions import (
    AuthenticationError,
    HandshakeError,
    MutualAuthenticationError,
    NoCredentialsError,
    SPNNotFoundError,
)
from httpx_extensions._spnego import (
    Credential,
    SecurityContext,
    Target,
    _translate,
    canonicalize,
    parse_spn,
    peer_certificate,
    tls_server_end_point,
)


@pytest.fixture
def user_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """An NTLM_USER_FILE for pyspnego's acceptor with alice/pw in EXAMPLE."""
    path = tmp_path / "users"
    path.write_text("EXAMPLE:alice:pw\n:alice:pw\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(path))
    krb5_conf = tmp_path / "krb5.conf"  # no KDC anywhere: Kerberos fails fast, not after DNS
    krb5_conf.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")
    return path


def _handshake(ctx: SecurityContext, server: typing.Any) -> None:
    token = ctx.step(None)
    while token is not None:
        reply = server.step(token)
        token = ctx.step(reply) if reply and not ctx.complete else None


@pytest.mark.parametrize(
    ("username", "domain", "principal"),
    [
        ("EXAMPLE\\alice", None, "EXAMPLE\\alice"),
        ("alice", "EXAMPLE", "EXAMPLE\\alice"),
        ("alice@EXAMPLE.COM", None, "alice@EXAMPLE.COM"),
        ("alice", None, "alice"),
        (None, None, ""),
    ],
)
def test_credential_forms(username: str | None, domain: str | None, principal: str) -> None:
    """DOMAIN\\user, user@REALM and domain= all give the expected principal."""
    assert Credential(username, "pw" if username else None, domain).principal == principal


def test_credential_rejects_contradictions() -> None:
    """A password without user, or two different domains, is a configuration error."""
    with pytest.raises(ValueError):
        Credential(None, "pw")
    with pytest.raises(ValueError):
        Credential("A\\alice", "pw", domain="B")
    with pytest.raises(ValueError):
        Credential("alice@R", "pw", domain="B")


def test_password_never_in_repr_or_fingerprint() -> None:
    """The password and its hashes appear in no repr; fingerprints separate passwords."""
    secret = "S3cr3t-Passw0rd"
    cred = Credential("EXAMPLE\\alice", secret)
    creds = cred.for_spnego("negotiate")
    hashes_hex = cred._ntlm_hashes()
    for text in (repr(cred), repr(creds), cred.fingerprint):
        assert secret not in text and hashes_hex not in text
        assert hashes_hex.split(":")[1] not in text.lower()
    assert cred.fingerprint == Credential("EXAMPLE\\alice", secret).fingerprint
    assert cred.fingerprint != Credential("EXAMPLE\\alice", "other").fingerprint
    assert Credential().fingerprint == "" and Credential().current_user


def test_ntlm_hashes_derived_once() -> None:
    """The LM:NT hashes are computed once and reused (no per-context DES)."""
    cred = Credential("EXAMPLE\\alice", "pw")
    first = cred.for_spnego("ntlm")
    start = time.perf_counter()
    for _ in range(100):
        again = cred.for_spnego("ntlm")
    assert time.perf_counter() - start < 0.05
    assert isinstance(first[0], spnego.NTLMHash) and first[0].nt_hash == again[0].nt_hash
    kerberos = cred.for_spnego("kerberos")
    assert [type(c) for c in kerberos] == [spnego.Password]
    assert kerberos[0].username == "alice@EXAMPLE"
    assert Credential().for_spnego("negotiate") is None
    assert Credential("alice@R").for_spnego("ntlm") == "alice@R"


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("HTTP/web01.example.com", Target("HTTP", "web01.example.com")),
        ("http@Web01", Target("http", "web01")),
        ("HTTP/web01@EXAMPLE.COM", Target("HTTP", "web01")),
        ("web01", Target("HTTP", "web01")),
    ],
)
def test_parse_spn(value: str, target: Target) -> None:
    """SPNs in slash, at and bare forms parse to service@host."""
    assert parse_spn(value) == target
    assert str(target) == f"{target.service}@{target.host}"


def test_parse_spn_rejects_empty() -> None:
    """An SPN without a host is a configuration error."""
    with pytest.raises(ValueError):
        parse_spn("HTTP/")


def test_canonicalize_keeps_ip_and_unknown_names() -> None:
    """IP literals are untouched; unresolvable names come back lower-cased."""
    assert canonicalize("127.0.0.1") == "127.0.0.1"
    assert canonicalize("::1") == "::1"
    assert canonicalize("NoSuchHost.invalid.") == "nosuchhost.invalid"
    assert canonicalize("localhost")  # resolves to something non-empty


def _cert(algorithm: hashes.HashAlgorithm, key: typing.Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the certificate tests."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [(hashes.SHA256(), hashlib.sha256), (hashes.SHA512(), hashlib.sha512)],
)
def test_end_point_uses_signature_hash(
    rsa_key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm, digest: typing.Any
) -> None:
    """RFC 5929: the certificate's own signature hash is used (SHA-256, SHA-512)."""
    der = _cert(algorithm, rsa_key)
    assert tls_server_end_point(der) == b"tls-server-end-point:" + digest(der).digest()


def test_end_point_ecdsa_sha384() -> None:
    """An ECDSA-with-SHA384 certificate is hashed with SHA-384."""
    der = _cert(hashes.SHA384(), ec.generate_private_key(ec.SECP384R1()))
    assert tls_server_end_point(der).endswith(hashlib.sha384(der).digest())


def test_end_point_sha1_becomes_sha256(tmp_path: pathlib.Path) -> None:
    """RFC 5929: a SHA-1 signed certificate is hashed with SHA-256 (made by openssl, as
    this cryptography build refuses to sign with SHA-1)."""
    pem = tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-sha1",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=sha1.test",
            "-days",
            "1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(pem),
        ],
        check=True,
        capture_output=True,
    )
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der).endswith(hashlib.sha256(der).digest())


def test_end_point_rejects_garbage() -> None:
    """A certificate that does not parse raises a typed error."""
    with pytest.raises(HandshakeError):
        tls_server_end_point(b"not a certificate")


def test_peer_certificate_reads_the_stream() -> None:
    """The certificate comes from network_stream.get_extra_info('ssl_object')."""

    class SSLObject:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            assert binary_form
            return b"DER"

    class Stream:
        def __init__(self, obj: object) -> None:
            self.obj = obj

        def get_extra_info(self, name: str) -> object:
            return self.obj if name == "ssl_object" else None

    assert peer_certificate(Stream(SSLObject())) == b"DER"
    assert peer_certificate(Stream(None)) is None
    assert peer_certificate(None) is None
    assert peer_certificate(object()) is None


@pytest.mark.usefixtures("user_file")
@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_context_against_real_acceptor(protocol: str) -> None:
    """A context completes against pyspnego's acceptor and reports the NTLM mechanism."""
    ctx = SecurityContext(protocol, Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "host"))
    server = spnego.server(protocol=protocol)
    _handshake(ctx, server)
    assert server.complete and ctx.mechanism == "ntlm"
    assert "pw" not in repr(ctx)


# DER encodings of the mechanism OIDs a SPNEGO NegTokenInit may offer.
_NTLM_OID = bytes.fromhex("060a2b0601040182370202 0a".replace(" ", ""))
_KRB5_OIDS = (bytes.fromhex("06092a864886f712010202"), bytes.fromhex("06092a864882f712010202"))


@pytest.mark.usefixtures("user_file")
def test_private_pyspnego_negotiate_contexts_is_honoured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pin of pyspnego's private ``NegotiateProxy(_negotiate_contexts=...)``, which
    ``ntlm_spnego_client`` uses when Kerberos is known unusable: the SPNEGO context must offer
    NTLM only (no Kerberos context tried and failed on every handshake) and still complete,
    mechListMIC and all. If this fails after a pyspnego upgrade, re-read
    ``spnego/_negotiate.py`` (``_rebuild_context_list``) and adapt ``ntlm_spnego_client``."""
    credential, target = Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "host")
    credential.note_kerberos(target, usable=False)
    with caplog.at_level(logging.DEBUG, logger="spnego"):
        ctx = SecurityContext("negotiate", credential, target)
        assert type(ctx._ctx).__name__ == "NegotiateProxy"
        first = ctx.step(None)
    # pyspnego builds (and logs building) its mechanism contexts only without our list.
    assert not [r for r in caplog.records if "when building SPNEGO mech list" in r.getMessage()]
    assert first is not None and _NTLM_OID in first
    assert not any(oid in first for oid in _KRB5_OIDS)
    server = spnego.server(protocol="negotiate")
    token = server.step(first)
    while token is not None and not ctx.complete:
        reply = ctx.step(token)
        token = server.step(reply) if reply else None
        if token is not None and server.complete:
            ctx.step(token, final=True)
            break
    assert server.complete and ctx.complete and ctx.mechanism == "ntlm"


@pytest.mark.usefixtures("user_file")
def test_channel_binding_reaches_the_acceptor(rsa_key: rsa.RSAPrivateKey) -> None:
    """The tls-server-end-point binding built from the certificate must match the server's."""
    der = _cert(hashes.SHA256(), rsa_key)
    bindings = spnego.channel_bindings.GssChannelBindings(
        application_data=tls_server_end_point(der)
    )
    cred = Credential("EXAMPLE\\alice", "pw")
    good = SecurityContext("ntlm", cred, Target("HTTP", "h"), cert_der=der)
    assert good.channel_bound
    _handshake(good, spnego.server(protocol="ntlm", channel_bindings=bindings))
    assert good.complete
    other = _cert(hashes.SHA256(), rsa.generate_private_key(public_exponent=65537, key_size=2048))
    bad = SecurityContext("ntlm", cred, Target("HTTP", "h"), cert_der=other)
    server = spnego.server(protocol="ntlm", channel_bindings=bindings)
    token = server.step(bad.step(None))
    final = bad.step(token)
    with pytest.raises(Exception, match="(?i)bind"):
        server.step(final)


def test_no_credentials_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """NTLM single sign-on without NTLM_USER_FILE raises NoCredentialsError."""
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    with pytest.raises(NoCredentialsError, match="NTLM_USER_FILE|kinit"):
        ctx = SecurityContext("ntlm", Credential(), Target("HTTP", "h"))
        ctx.step(None)


def test_bad_server_token_is_typed() -> None:
    """A garbage server token gives a HandshakeError, or a mutual-auth error when final."""
    ctx = SecurityContext("ntlm", Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "h"))
    ctx.step(None)
    with pytest.raises(AuthenticationError):
        ctx.step(b"garbage")
    ctx = SecurityContext("negotiate", Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "h"))
    ctx.step(None)
    with pytest.raises(MutualAuthenticationError):
        ctx.step(b"garbage", final=True)


@pytest.mark.usefixtures("user_file")
@pytest.mark.parametrize("protocol", ["ntlm", "negotiate"])
def test_pyspnego_debug_log_shows_no_token(protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    """pyspnego's "step input/output" DEBUG records keep only each token's length."""
    import base64

    caplog.set_level(logging.DEBUG)
    ctx = SecurityContext(protocol, Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "host"))
    server = spnego.server(protocol=protocol)
    tokens = [ctx.step(None)]
    while tokens[-1] is not None:
        reply = server.step(tokens[-1])
        tokens += [reply, ctx.step(reply) if reply and not ctx.complete else None]
    assert server.complete
    steps = [r.getMessage() for r in caplog.records if "step output: " in r.getMessage()]
    shown = [m.split("step output: ", 1)[1] for m in steps]
    assert shown and all(not s or s.startswith("<token redacted, ") for s in shown)
    for token in filter(None, tokens):
        assert base64.b64encode(token).decode()[:16] not in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Minor (2529638919): Server HTTP/web@EXAMPLE.TEST not found in Kerberos database", 1),
        ("Server not found in Kerberos database", 1),
        ("Minor (2529638918): Client 'eve@EXAMPLE.TEST' not found in Kerberos database", 0),
    ],
)
def test_unknown_spn_is_typed(text: str, expected: int) -> None:
    """MIT's "Server <principal> not found" is SPNNotFoundError; an unknown client is not."""
    ctx = SecurityContext("ntlm", Credential("EXAMPLE\\alice", "pw"), Target("HTTP", "web"))
    error = _translate(RuntimeError(text), ctx, "testing")
    assert isinstance(error, SPNNotFoundError) == bool(expected)


def test_kerberos_verdicts_are_shared_by_user_and_password_only() -> None:
    """What a Negotiate handshake learnt about Kerberos for an SPN holds for every Credential
    of that user and password (an auth object built per request must not ask the KDC every
    time), never for another password or user, nor for the current user's credential."""
    target = Target("HTTP", "host")
    Credential("EXAMPLE\\alice", "pw").note_kerberos(target, usable=False)
    assert Credential("EXAMPLE\\alice", "pw").kerberos_known_unusable(target)
    assert not Credential("EXAMPLE\\alice", "other").kerberos_known_unusable(target)
    assert not Credential("EXAMPLE\\bob", "pw").kerberos_known_unusable(target)
    assert not Credential("EXAMPLE\\alice", "pw").kerberos_known_unusable(Target("HTTP", "h2"))
    Credential("EXAMPLE\\alice", "pw").note_kerberos(target, usable=True)
    assert Credential("EXAMPLE\\alice", "pw").kerberos_known_usable(target)
    current = Credential()
    current.note_kerberos(target, usable=False)
    assert not Credential().kerberos_known_unusable(target)
    assert Credential("EXAMPLE\\alice", "pw").probe_lock(target) is Credential(
        "EXAMPLE\\alice", "pw"
    ).probe_lock(target)


def test_kerberos_verdicts_of_a_long_lived_credential_survive_eviction() -> None:
    """The registry is bounded (256 credentials); a credential whose entry was evicted still
    shares what it records next with later credentials of the same user and password."""
    target = Target("HTTP", "host")
    old = Credential("EXAMPLE\\alice", "pw")
    for i in range(300):  # evicts alice's entry
        Credential(f"EXAMPLE\\user{i}", "pw")
    old.note_kerberos(target, usable=False)
    assert Credential("EXAMPLE\\alice", "pw").kerberos_known_unusable(target)


def _checks() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("httpx-extensions Kerberos")]


def _join_checks() -> None:
    for thread in _checks():
        thread.join(30)
    assert not _checks(), "a background Kerberos check did not finish"


def test_an_old_kerberos_verdict_is_checked_again_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A minute after Kerberos was found unusable, the first caller extends the verdict and
    starts one background check; no caller waits for the KDC (handshakes go on with NTLM).
    What the check finds is recorded for every Credential of that user and password."""
    target = Target("HTTP", "recheck.test")
    credential = Credential("EXAMPLE\\carol", "pw")
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    class _KerberosContext:  # what the check asks of pyspnego: a first Kerberos token
        def step(self) -> bytes:
            started.set()
            release.wait(10)
            return b"AP-REQ"

    def client(credentials: typing.Any, **kwargs: typing.Any) -> _KerberosContext:
        assert kwargs["protocol"] == "kerberos"
        calls.append(f"{kwargs['service']}@{kwargs['hostname']}")
        return _KerberosContext()

    monkeypatch.setattr(_spnego.spnego, "client", client)
    try:
        credential.note_kerberos(target, usable=False)
        assert credential.kerberos_known_unusable(target)
        assert not calls  # a fresh verdict: nothing to check
        credential._verdicts.no_kerberos[str(target)] = time.monotonic() - 1  # a minute on
        begin = time.monotonic()
        barrier = threading.Barrier(8)
        answers: list[bool] = []

        def caller() -> None:
            barrier.wait(5)
            answers.append(Credential("EXAMPLE\\carol", "pw").kerberos_known_unusable(target))

        callers = [threading.Thread(target=caller) for _ in range(8)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join(10)
        assert answers == [True] * 8  # still NTLM, at once, for every caller
        assert started.wait(10)
        until = credential.kerberos_unusable_until(target)
        assert until is not None and until > begin + _spnego.KERBEROS_RETRY_SECONDS - 5
        assert calls == [str(target)]  # one check, however many callers at once
    finally:
        release.set()
        _join_checks()
    assert Credential("EXAMPLE\\carol", "pw").kerberos_known_usable(target)
    assert not credential.kerberos_known_unusable(target)
    assert not credential.kerberos_verdicts().checking


def test_a_stale_kerberos_verdict_is_dropped_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict nobody asked about for twice the retry time (an idle client) is forgotten:
    the next handshake finds out itself, in-band, as the first one did (a server that takes
    Kerberos only must not be sent NTLM after a quiet spell); no check is started."""
    monkeypatch.setattr(Credential, "_recheck_kerberos", lambda *args: pytest.fail("checked"))
    target = Target("HTTP", "stale.test")
    credential = Credential("EXAMPLE\\erin", "pw")
    credential.note_kerberos(target, usable=False)
    stale = time.monotonic() - _spnego.KERBEROS_RETRY_SECONDS - 1
    credential._verdicts.no_kerberos[str(target)] = stale
    assert not credential.kerberos_known_unusable(target)
    assert str(target) not in credential._verdicts.no_kerberos
    assert not _checks()


def test_a_failed_kerberos_check_keeps_ntlm_for_another_while(
    caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real check: realm EXAMPLE has no KDC, so the check fails and Negotiate keeps to
    NTLM for another KERBEROS_RETRY_SECONDS from the check's end; its DEBUG record says so
    and no record (ours or pyspnego's) shows the password."""
    config = tmp_path / "krb5.conf"
    config.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(config))
    target = Target("HTTP", "recheck-fails.test")
    credential = Credential("EXAMPLE\\dave", "s3cret-Pa55")
    credential.note_kerberos(target, usable=False)
    credential._verdicts.no_kerberos[str(target)] = time.monotonic() - 1
    with caplog.at_level(logging.DEBUG):
        assert credential.kerberos_known_unusable(target)
        extended = credential.kerberos_unusable_until(target)
        time.sleep(0.01)
        _join_checks()
    until = credential.kerberos_unusable_until(target)
    assert extended is not None and until is not None
    assert until > extended  # the failed check recorded its own, later verdict
    assert not credential.kerberos_known_usable(target)
    messages = [r.getMessage() for r in caplog.records]
    assert any("Kerberos still unusable for HTTP@recheck-fails.test" in m for m in messages)
    assert not any("s3cret" in m for m in messages)
