"""The only importer of pyspnego: credentials, SPN, channel bindings, one context per handshake.

Theory of operation:

1. A :class:`Credential` is built once per auth object and is immutable afterwards, except
   for the NTLM hashes it derives from the password on first use (under a lock) so that
   pyspnego does not redo the ~2 ms LM DES work for every handshake. Its repr never shows
   the password or the hashes; its ``fingerprint`` is an HMAC under a per-process random
   key, so equal credentials give equal identities without the secret being recoverable.
   What Negotiate found out about Kerberos for it (per SPN: works, or not for a while) is
   shared by every Credential of that user and password (:class:`_KerberosVerdicts`,
   process-wide, bounded, locked; SPNs and times only).
2. A :class:`SecurityContext` wraps exactly one pyspnego context, for exactly one handshake
   of one flow. Nothing in it is shared; the auth object only holds configuration.
3. Every pyspnego / GSSAPI / SSPI failure leaves this module as a subclass of
   :class:`~httpx_extensions.AuthenticationError` (see :func:`_translate`).

4. pyspnego logs every token it reads or writes at DEBUG (``spnego._ntlm``, ``_gss``,
   ``_negotiate``, ``_sspi``, ``_credssp``). Importing this module puts a filter on those
   loggers that keeps the records but replaces each token with its length, so a
   DEBUG log of a whole run holds no token (:class:`_RedactTokens`).

This module does no I/O of its own except :func:`canonicalize` (blocking DNS: call it off
the event loop) and the background Kerberos check of :meth:`Credential.kerberos_unusable_until`
(its own daemon thread); it knows nothing of HTTP, headers or connections.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import spnego
import spnego.channel_bindings
import spnego.exceptions

from ._exceptions import (
    AuthenticationError,
    CredentialsRejectedError,
    HandshakeError,
    MutualAuthenticationError,
    NoCredentialsError,
    SPNNotFoundError,
)

__all__ = [
    "KERBEROS_AVAILABLE",
    "Credential",
    "SecurityContext",
    "Target",
    "canonicalize",
    "parse_spn",
    "peer_certificate",
    "tls_server_end_point",
]

KERBEROS_AVAILABLE: bool = sys.platform == "win32" or (
    importlib.util.find_spec("gssapi") is not None and importlib.util.find_spec("krb5") is not None
)
_FINGERPRINT_KEY = os.urandom(32)
#: After Kerberos failed for a password and SPN (no KDC for the realm, unknown principal or
#: SPN), Negotiate skips it for this long, then asks the KDC again (it may be back): in a
#: background check while the verdict is fresh, by the next handshake once it is stale
#: (see :meth:`Credential.kerberos_unusable_until`).
KERBEROS_RETRY_SECONDS = 60

logger = logging.getLogger("httpx_extensions.auth")

#: pyspnego's loggers that write whole tokens (base64) at DEBUG.
_TOKEN_LOGGERS = (
    "spnego._ntlm",
    "spnego._gss",
    "spnego._negotiate",
    "spnego._sspi",
    "spnego._credssp",
)
_TOKEN_MESSAGE = re.compile(r"((?:step|TSRequest) (?:input|output): )([A-Za-z0-9+/=]+)")


class _RedactTokens(logging.Filter):
    """Keep pyspnego's "step input/output" records but show each token's length, not it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format: leave it to the handler's error path
            return True
        redacted = _TOKEN_MESSAGE.sub(_redacted, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _redacted(match: re.Match[str]) -> str:
    return f"{match.group(1)}<token redacted, {len(match.group(2)) * 3 // 4} bytes>"


for _name in _TOKEN_LOGGERS:
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactTokens) for f in _logger.filters):
        _logger.addFilter(_RedactTokens())


class _KerberosVerdicts:
    """What Negotiate found out about Kerberos for one user and password, per SPN: no
    secret, only SPNs and times. Shared process-wide (bounded) by fingerprint."""

    __slots__ = ("checking", "kerberos_ok", "lock", "no_kerberos", "probe_locks", "revision")

    _shared: ClassVar[OrderedDict[str, _KerberosVerdicts]] = OrderedDict()
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: SPN -> monotonic time until which Kerberos is known not to work for it.
        self.no_kerberos: dict[str, float] = {}
        self.kerberos_ok: set[str] = set()
        #: SPN -> lock held by the one handshake finding out whether Kerberos works there.
        self.probe_locks: dict[str, threading.Lock] = {}
        #: SPNs whose background check (Credential._recheck_kerberos) is running.
        self.checking: set[str] = set()
        #: Bumped whenever an SPN is found to work with Kerberos: what was cached from an
        #: "unusable" verdict (an auth object's fast path) is then stale.
        self.revision = 0

    @classmethod
    def of(cls, fingerprint: str) -> _KerberosVerdicts:
        """The verdicts of the credential with this fingerprint (created if new). Looked up
        on every use, never kept: an evicted entry is only forgotten (Kerberos is asked
        again), never split between credentials of one user and password."""
        with cls._shared_lock:
            shared = cls._shared
            found = shared.get(fingerprint)
            if found is None:
                found = shared[fingerprint] = cls()
                if len(shared) > 256:
                    shared.popitem(last=False)
            else:
                shared.move_to_end(fingerprint)
            return found


class Credential:
    """Who authenticates: the current user (all ``None``) or an explicit user and password.

    Args:
        username: ``"DOMAIN\\\\user"``, ``"user@REALM"`` or ``"user"``; ``None`` for the current
            user (single sign-on).
        password: the password; ``None`` to use the user's ticket cache / SSPI logon.
        domain: the NetBIOS domain for a plain ``"user"``.

    Raises:
        ValueError: a password without a username, or ``domain=`` together with a
            username that already names a domain: pass the user in one form only.
    """

    __slots__ = (
        "_hashes",
        "_lock",
        "_own_verdicts",
        "_password",
        "domain",
        "fingerprint",
        "user",
        "upn",
    )

    def __init__(
        self, username: str | None = None, password: str | None = None, domain: str | None = None
    ) -> None:
        if password is not None and not username:
            raise ValueError("password= needs username= ('DOMAIN\\\\user' or 'user@REALM')")
        user, upn = username or "", None
        if "\\" in user:
            named_domain, user = user.split("\\", 1)
            if domain and domain.lower() != named_domain.lower():
                raise ValueError(f"domain={domain!r} contradicts the username's domain")
            domain = named_domain
        elif "@" in user:
            if domain:
                raise ValueError("domain= cannot be combined with a 'user@REALM' username")
            upn = user
        self.user: str = user
        self.domain: str | None = domain or None
        self.upn: str | None = upn
        self._password = password
        self._hashes: str | None = None
        self._lock = threading.Lock()
        secret = f"{self.principal}\0{password or ''}".encode("utf-8", "surrogatepass")
        digest = hmac.new(_FINGERPRINT_KEY, secret, hashlib.sha256).hexdigest()
        self.fingerprint: str = digest[:16] if password is not None else ""
        #: The current user's Kerberos verdicts are its own; a password's are shared (see
        #: :attr:`_verdicts`).
        self._own_verdicts = _KerberosVerdicts() if password is None else None

    def kerberos_verdicts(self) -> _KerberosVerdicts:
        """What Negotiate found out about Kerberos for this user and password (shared);
        its ``revision`` changes whenever an SPN is found to work with Kerberos."""
        return self._verdicts

    @property
    def _verdicts(self) -> _KerberosVerdicts:
        # Shared by every Credential of this user and password: an auth object built per
        # request asks the KDC once a while, not every time.
        own = self._own_verdicts
        return own if own is not None else _KerberosVerdicts.of(self.fingerprint)

    @property
    def principal(self) -> str:
        """The user as written in logs and identities (``""`` for the current user)."""
        if self.upn:
            return self.upn
        return f"{self.domain}\\{self.user}" if self.domain else self.user

    @property
    def current_user(self) -> bool:
        """True when no password was given: the OS credential (ticket cache, SSPI) is used."""
        return self._password is None

    def __repr__(self) -> str:
        who = self.principal or "<current user>"
        secret = ", password=***" if self._password is not None else ""
        return f"Credential({who!r}{secret})"

    def _ntlm_hashes(self) -> str:
        """``LM:NT`` hex hashes, derived once (pyspnego accepts them in place of a password)."""
        with self._lock:
            if self._hashes is None:
                password = self._password or ""
                try:  # pyspnego's own one-way functions; private, so fall back gracefully.
                    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

                    self._hashes = f"{lmowfv1(password).hex()}:{ntowfv1(password).hex()}"
                except Exception:  # pragma: no cover - only if pyspnego moves them
                    return password
            return self._hashes

    def kerberos_known_unusable(self, target: Target) -> bool:
        """Whether a recent Negotiate handshake for ``target`` could not use Kerberos with
        this password (no KDC for the realm, unknown principal or SPN): then Negotiate goes
        straight to NTLM for a while instead of asking the KDC (or DNS) on every handshake.
        May start a background check: see :meth:`kerberos_unusable_until`."""
        return self.kerberos_unusable_until(target) is not None

    def kerberos_unusable_until(self, target: Target) -> float | None:
        """When :meth:`kerberos_known_unusable` ends for ``target`` (``time.monotonic``), or
        ``None`` if it is not so now. May start a background check (a thread asking the KDC):

        * a verdict younger than :data:`KERBEROS_RETRY_SECONDS` stands;
        * once it is that old, the first caller extends it by as much and starts one check
          in a daemon thread (:meth:`_recheck_kerberos`): handshakes go on with NTLM meanwhile
          rather than all waiting for the one that asks the KDC (or DNS), which with an
          unreachable KDC took seconds, once a minute, on a busy client;
        * a verdict older than twice that (nobody asked for a minute: an idle client) is
          dropped, and the next handshake finds out again itself, as the first one did, so a
          server that takes Kerberos only is not sent NTLM after a quiet spell.
        """
        verdicts = self._verdicts
        until = verdicts.no_kerberos.get(str(target))
        if until is None or time.monotonic() < until:
            return until
        return self._recheck_later(target, verdicts)

    def _recheck_later(self, target: Target, verdicts: _KerberosVerdicts) -> float | None:
        spn = str(target)
        with verdicts.lock:
            until = verdicts.no_kerberos.get(spn)
            now = time.monotonic()
            if until is None or now < until:  # found usable, or another caller extended it
                return until
            if now >= until + KERBEROS_RETRY_SECONDS:  # stale: the next handshake asks
                del verdicts.no_kerberos[spn]
                return None
            until = verdicts.no_kerberos[spn] = now + KERBEROS_RETRY_SECONDS
            if spn in verdicts.checking:  # a check outlived the retry time: one is enough
                return until
            verdicts.checking.add(spn)
        try:
            threading.Thread(
                target=self._recheck_kerberos,
                args=(target, verdicts),
                name=f"httpx-extensions Kerberos check for {spn}",
                daemon=True,
            ).start()
        except RuntimeError as exc:  # no thread to be had (limits, shutdown): NTLM for now
            logger.debug("cannot check Kerberos for %s again now: %s", target, exc)
            with verdicts.lock:
                verdicts.checking.discard(spn)
        return until

    def _recheck_kerberos(self, target: Target, verdicts: _KerberosVerdicts) -> None:
        """Ask the KDC again (in its own thread) whether Kerberos works for ``target`` with
        this password: the first step of a Kerberos context (a TGT, then a ticket for the
        SPN), its token thrown away. The verdict is recorded for the next handshakes."""
        try:
            try:
                context = spnego.client(
                    self.for_spnego("kerberos"),
                    hostname=target.host,
                    service=target.service,
                    protocol="kerberos",
                )
                context.step()
            except Exception as exc:
                logger.debug(
                    "Kerberos still unusable for %s with these credentials (%s); NTLM for "
                    "the next %d s",
                    target, _summary(exc), KERBEROS_RETRY_SECONDS,
                )  # fmt: skip
                self.note_kerberos(target, usable=False)
            else:
                logger.debug("Kerberos works again for %s; Negotiate uses it from now on", target)
                self.note_kerberos(target, usable=True)
        except Exception as exc:  # pragma: no cover - nothing above should raise
            logger.debug("the Kerberos check for %s failed: %s", target, _summary(exc))
        finally:
            with verdicts.lock:
                verdicts.checking.discard(str(target))

    def probe_lock(self, target: Target) -> threading.Lock:
        """The lock of the one handshake finding out whether Kerberos works for ``target``."""
        spn = str(target)
        verdicts = self._verdicts
        with verdicts.lock:
            lock = verdicts.probe_locks.get(spn)
            if lock is None:
                if len(verdicts.probe_locks) >= 256:
                    verdicts.probe_locks.clear()
                lock = verdicts.probe_locks[spn] = threading.Lock()
            return lock

    def kerberos_known_usable(self, target: Target) -> bool:
        """Whether a Negotiate handshake for ``target`` already got Kerberos going."""
        return str(target) in self._verdicts.kerberos_ok

    def note_kerberos(self, target: Target, *, usable: bool) -> None:
        """Remember whether Kerberos worked for ``target`` (a failure for
        :data:`KERBEROS_RETRY_SECONDS`), for every Credential of this user and password."""
        spn = str(target)
        verdicts = self._verdicts
        with verdicts.lock:
            if len(verdicts.no_kerberos) >= 256:
                verdicts.no_kerberos.clear()
            if len(verdicts.kerberos_ok) >= 256:
                verdicts.kerberos_ok.clear()
            if usable:
                verdicts.no_kerberos.pop(spn, None)
                if spn not in verdicts.kerberos_ok:
                    verdicts.kerberos_ok.add(spn)
                    verdicts.revision += 1
            else:
                verdicts.kerberos_ok.discard(spn)
                verdicts.no_kerberos[spn] = time.monotonic() + KERBEROS_RETRY_SECONDS

    def for_spnego(self, protocol: str) -> Any:
        """The ``username`` argument for ``spnego.client`` (credential objects or ``None``)."""
        if self._password is None:
            return self.principal or None
        creds: list[Any] = []
        if protocol in ("ntlm", "negotiate"):
            ntlm_user = self.principal
            hashes = self._ntlm_hashes()
            if spnego.NTLMHash is not None and ":" in hashes and len(hashes) == 65:
                lm, nt = hashes.split(":")
                creds.append(spnego.NTLMHash(username=ntlm_user, lm_hash=lm, nt_hash=nt))
            else:  # pragma: no cover
                creds.append(spnego.Password(username=ntlm_user, password=self._password))
        if protocol in ("kerberos", "negotiate"):
            krb_user = self.upn or (
                f"{self.user}@{self.domain.upper()}" if self.domain else self.user
            )
            creds.append(spnego.Password(username=krb_user, password=self._password))
        return creds


@dataclass(frozen=True)
class Target:
    """A service principal name: ``service@host`` (GSSAPI host-based form)."""

    service: str
    host: str

    def __post_init__(self) -> None:
        # Looked up on every request of a Negotiate flow: format it once.
        object.__setattr__(self, "_spn", f"{self.service}@{self.host}")

    def __str__(self) -> str:
        return self._spn  # type: ignore[attr-defined,no-any-return]


def parse_spn(value: str, default_service: str = "HTTP") -> Target:
    """Read ``"HTTP/host"``, ``"HTTP@host"`` or a bare ``"host"`` into a :class:`Target`.

    Raises:
        ValueError: an empty host or service; write the SPN as ``"HTTP/host.example.com"``.
    """
    for sep in ("/", "@"):
        if sep in value:
            service, host = value.split(sep, 1)
            break
    else:
        service, host = default_service, value
    host = host.split("@", 1)[0]  # drop a realm: "HTTP/host@REALM"
    if not service or not host:
        raise ValueError(f"invalid SPN {value!r}: write it as 'HTTP/host.example.com'")
    return Target(service, host.lower())


def canonicalize(host: str) -> str:
    """Resolve a DNS alias (CNAME) to its canonical name; blocking, so call it in a thread.

    IP literals and names that do not resolve are returned unchanged (lower-cased).
    """
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return host
    for info in infos:
        if info[3]:
            return info[3].lower().rstrip(".")
    return host


def peer_certificate(network_stream: object) -> bytes | None:
    """The DER certificate of the TLS connection behind an httpcore network stream, or None."""
    get_extra_info = getattr(network_stream, "get_extra_info", None)
    if get_extra_info is None:
        return None
    try:
        ssl_object = get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    except Exception:  # a closed or foreign stream: no binding rather than a crash
        return None
    return cert if isinstance(cert, bytes) and cert else None


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 ``tls-server-end-point`` application data for a DER certificate.

    The hash is the certificate's signature hash, except MD5 and SHA-1 (and algorithms
    without one, like Ed25519) which use SHA-256.

    Raises:
        HandshakeError: the certificate cannot be parsed; use ``channel_binding=False``
            only if you trust the network path.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        algorithm = x509.load_der_x509_certificate(cert_der).signature_hash_algorithm
    except Exception as exc:
        raise HandshakeError(
            f"cannot read the server certificate for channel binding: {exc}"
        ) from exc
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return b"tls-server-end-point:" + digest.finalize()


def ntlm_spnego_client(credentials: Any, kwargs: dict[str, Any]) -> Any:
    """A pyspnego SPNEGO client context offering NTLM only.

    pyspnego's SPNEGO always tries every mechanism it has: with GSSAPI present, it first
    builds a Kerberos context from our NTLM-only credentials, which fails and leaves an
    exception (and its traceback: a reference cycle holding the whole context) behind, on
    every handshake: about a third of the SPNEGO cost. There is no public option to leave
    Kerberos out, so, in this one place, we hand ``NegotiateProxy`` its list of mechanism
    contexts through its private ``_negotiate_contexts`` argument (pyspnego 0.11; its
    CredSSP code uses it the same way). ``tests/test_spnego.py::test_private_pyspnego_*``
    fails if a pyspnego upgrade stops honouring it; any error here falls back to the public
    call, which produces the same tokens, only slower.
    """
    try:
        from spnego._context import GSSMech
        from spnego._negotiate import NegotiateProxy

        ntlm = spnego.client(
            credentials, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm, **kwargs
        )
        ntlm._is_wrapped = True  # as NegotiateProxy marks the contexts it builds itself
        return NegotiateProxy(
            credentials, protocol="negotiate", _negotiate_contexts={GSSMech.ntlm: ntlm}, **kwargs
        )
    except Exception:  # pragma: no cover - a pyspnego that changed: the public path
        return spnego.client(credentials, protocol="negotiate", **kwargs)


class SecurityContext:
    """One pyspnego client context for one handshake; never shared between flows.

    Args:
        protocol: ``"negotiate"``, ``"ntlm"`` or ``"kerberos"``.
        credential: who authenticates.
        target: the SPN.
        cert_der: certificate of the TLS connection the tokens travel on (channel binding).
        mutual: require the server's final token (mutual authentication).
        delegate: ask for a forwardable, delegated Kerberos ticket.
        request: the request, for error reporting.
    """

    def __init__(
        self,
        protocol: str,
        credential: Credential,
        target: Target,
        *,
        cert_der: bytes | None = None,
        mutual: bool = True,
        delegate: bool = False,
        request: httpx.Request | None = None,
    ) -> None:
        self.protocol = protocol
        self.target = target
        self.channel_bound = cert_der is not None
        self._request = request
        self._credential = credential
        req = spnego.ContextReq.default
        if not mutual and protocol != "negotiate":
            # Not for SPNEGO: pyspnego 0.12 then drops the Kerberos AP-REQ from its first
            # token (the mech context completes in one step) and every server refuses it.
            # Asked for, the server's final token is verified if sent; the flow decides
            # whether its absence is an error (``mutual`` there).
            req &= ~spnego.ContextReq.mutual_auth
        if delegate:
            req |= spnego.ContextReq.delegate
        self._req = req
        self._cb: Any = None
        self._ctx: Any = None
        password_negotiate = (
            protocol == "negotiate" and KERBEROS_AVAILABLE and not credential.current_user
        )
        unusable = password_negotiate and credential.kerberos_known_unusable(target)
        #: Kerberos known not to work for this SPN with this password: NTLM only.
        self._ntlm_only = unusable
        #: Whether the first step tells us if Kerberos works (and records it).
        self._learns = password_negotiate and not unusable
        #: Nobody found out yet: the first step waits for, or makes, the one probe.
        self._tries_kerberos = self._learns and not credential.kerberos_known_usable(target)
        try:
            if cert_der is not None:
                self._cb = spnego.channel_bindings.GssChannelBindings(
                    application_data=tls_server_end_point(cert_der)
                )
            # Built at the first step when that step must first find out about Kerberos.
            if not self._tries_kerberos:
                self._ctx = self._build()
        except AuthenticationError:
            raise
        except Exception as exc:
            raise _translate(exc, self, "creating the security context") from exc

    def _build(self) -> Any:
        # Kerberos known not to work for this SPN: SPNEGO carrying NTLM only (no KDC or DNS
        # asked again). Only for a server that offers Negotiate alone: one that offers NTLM
        # too gets raw NTLMSSP in its NTLM scheme instead (_SpnegoAuth._choose), cheaper.
        # Under a Negotiate header we keep to SPNEGO, which every acceptor takes (raw
        # NTLMSSP there is a Microsoft extension).
        kwargs: dict[str, Any] = {
            "hostname": self.target.host,
            "service": self.target.service,
            "channel_bindings": self._cb,
            "context_req": self._req,
        }
        if self._ntlm_only:  # (only ever set for "negotiate")
            return ntlm_spnego_client(self._credential.for_spnego("ntlm"), kwargs)
        credentials = self._credential.for_spnego(self.protocol)
        return spnego.client(credentials, protocol=self.protocol, **kwargs)

    @property
    def blocking(self) -> bool:
        """Whether :meth:`step` may block (KDC round trip, SSPI): run it in a worker thread.

        Pure-Python NTLM never blocks and runs inline.
        """
        if self.protocol == "ntlm" or not KERBEROS_AVAILABLE or self._ntlm_only:
            return False
        if self._tries_kerberos and self._credential.kerberos_known_unusable(self.target):
            return False  # its first step will build an NTLM-only context
        return self.mechanism != "ntlm"

    @property
    def needs_probe(self) -> bool:
        """Whether the first step must still find out if Kerberos works for this SPN (a KDC
        or DNS round trip; see ``_first_negotiate_step``)."""
        credential, target = self._credential, self.target
        return (
            self._tries_kerberos
            and not credential.kerberos_known_usable(target)
            and not credential.kerberos_known_unusable(target)
        )

    @property
    def complete(self) -> bool:
        """The context is established (and, if asked, the server proved its identity)."""
        return self._ctx is not None and bool(self._ctx.complete)

    @property
    def mechanism(self) -> str | None:
        """``"kerberos"`` or ``"ntlm"`` once known, else ``None``."""
        proto = self._ctx.negotiated_protocol if self._ctx is not None else None
        return proto if proto in ("kerberos", "ntlm") else None

    def step(self, in_token: bytes | None, *, final: bool = False) -> bytes | None:
        """Process the server's token (``None`` to start) and return the next one to send.

        Args:
            in_token: the decoded token of the server's challenge.
            final: the token came with the server's final (non-401) answer: failures are
                mutual-authentication failures.

        Raises:
            AuthenticationError: a subclass saying what failed; see its docstring.
        """
        if self._tries_kerberos:
            return self._first_negotiate_step(in_token)
        try:
            out = self._ctx.step(in_token)
        except Exception as exc:
            if final:
                raise MutualAuthenticationError(
                    f"the final token of {self.target} did not verify ({_summary(exc)}); do not "
                    "trust this response. Use mutual_auth=False only for servers known to "
                    "send a broken final token.",
                    request=self._request,
                ) from exc
            raise _translate(exc, self, "processing a token") from exc
        if self._learns:  # the first step of a password Negotiate: did Kerberos work?
            self._learns = False
            self._learn()
        return out if isinstance(out, bytes) else None

    def _first_negotiate_step(self, in_token: bytes | None) -> bytes | None:
        # Negotiate with a password, Kerberos untried for this SPN. One handshake at a time
        # finds out (in its worker thread); the others wait for the answer rather than all
        # asking the KDC, or DNS for a realm that has none, at once.
        self._tries_kerberos = False
        credential, target = self._credential, self.target
        with credential.probe_lock(target):
            unusable = credential.kerberos_known_unusable(target)
            if not unusable and not credential.kerberos_known_usable(target):
                return self._build_and_step(in_token)  # learns, holding the lock
        # Another handshake found out meanwhile: Kerberos works (go ahead, in parallel, and
        # still learn from it), or it does not (NTLM only).
        self._ntlm_only = unusable
        self._learns = not unusable
        return self._build_and_step(in_token)

    def _learn(self) -> None:
        # Negotiate prefers Kerberos: NTLM chosen on the first step means the Kerberos
        # attempt with this password failed for this SPN before the server was asked.
        if self.mechanism == "ntlm":
            logger.debug(
                "Kerberos unusable for %s with these credentials; Negotiate uses NTLM for it "
                "for the next %d s",
                self.target,
                KERBEROS_RETRY_SECONDS,
            )
            self._credential.note_kerberos(self.target, usable=False)
        else:
            self._credential.note_kerberos(self.target, usable=True)

    def _build_and_step(self, in_token: bytes | None) -> bytes | None:
        try:
            self._ctx = self._build()
        except Exception as exc:
            raise _translate(exc, self, "creating the security context") from exc
        return self.step(in_token)

    def __repr__(self) -> str:
        return (
            f"SecurityContext(protocol={self.protocol!r}, target='{self.target}', "
            f"mechanism={self.mechanism!r}, complete={self.complete})"
        )


# MIT names the principal inside its message: "Server HTTP/h@R not found in Kerberos
# database" (minor code 2529638919, KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN).
_SPN_MARKERS = re.compile(
    r"server (?:\S+ )?not found in kerberos database|minor \(2529638919\)"
    r"|s_principal_unknown|target_unknown"
)
_NOCRED_MARKERS = (
    "no kerberos credentials",
    "credentials cache",
    "ntlm_user_file",
    "no username or password",
    "no credentials",
    "ticket expired",
    "no applicable credentials",
)
_REJECT_MARKERS = ("preauthentication failed", "password incorrect", "client not found")


def _summary(exc: BaseException) -> str:
    """A short, secret-free description of an exception and its causes."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(parts) < 4:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}"[:300])
        base = getattr(cur, "base_error", None)
        cur = base if isinstance(base, BaseException) else (cur.__cause__ or cur.__context__)
    return "; ".join(parts)


def _translate(exc: BaseException, ctx: SecurityContext, doing: str) -> AuthenticationError:
    """Map a pyspnego/GSSAPI/SSPI exception to the matching AuthenticationError subclass."""
    text = _summary(exc)
    low = text.lower()
    where = f"{ctx.protocol} authentication for {ctx.target} failed while {doing}"
    request = ctx._request
    if _SPN_MARKERS.search(low):
        return SPNNotFoundError(
            f"{where}: the KDC does not know SPN {ctx.target} ({text}). Register the SPN, "
            "pass spn={host: 'HTTP/real.host'} or canonicalize_host=True.",
            request=request,
        )
    if any(m in low for m in _REJECT_MARKERS):
        return CredentialsRejectedError(
            f"{where}: the KDC refused the credentials ({text}). Check username and password.",
            request=request,
        )
    if isinstance(
        exc, (spnego.exceptions.NoCredentialError, spnego.exceptions.CredentialsExpiredError)
    ) or any(m in low for m in _NOCRED_MARKERS):
        return NoCredentialsError(
            f"{where}: no usable credential ({text}). Run kinit / log on, set NTLM_USER_FILE, "
            "or pass username= and password=.",
            request=request,
        )
    if isinstance(exc, spnego.exceptions.BadMICError):
        return MutualAuthenticationError(f"{where}: {text}", request=request)
    return HandshakeError(f"{where}: {text}", request=request)


def overrides(spn: Mapping[str, str] | None, service: str) -> dict[str, Target]:
    """Normalise the ``spn=`` argument: request host (lower-case) -> :class:`Target`."""
    return {host.lower(): parse_spn(value, service) for host, value in (spn or {}).items()}
