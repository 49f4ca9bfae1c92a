"""The public auth classes: ``NegotiateAuth``, ``NTLMAuth``, ``KerberosAuth``.

Configuration, the sync/async drivers and the choices (scheme, SPN, context) live here;
the per-request flow itself (the state machine) is in ``_flow.py``. An auth object is
shared by many concurrent flows: after ``__init__`` it only changes its bounded caches.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx

from ._exceptions import AuthenticationError, MechanismNotAllowedError, NoCredentialsError
from ._flow import (
    LRU,
    SCOUT_WAIT_SECONDS,
    AuthIdentity,
    FlowMixin,
    Job,
    _disarm,
    _Fast,
    _Origin,
    _Scout,
    log,
)
from ._headers import Challenge
from ._spnego import (
    KERBEROS_AVAILABLE,
    Credential,
    SecurityContext,
    Target,
    canonicalize,
    overrides,
)

__all__ = ["AuthIdentity", "KerberosAuth", "NTLMAuth", "NegotiateAuth"]

_DNS_TTL = 300.0


#: (event loop, credential fingerprint, SPN) -> event set when the flow finding out whether
#: Kerberos works there is done (see ``_SpnegoAuth._probe_step``). Entries live only while
#: a probe runs.
_PROBING: dict[tuple[Any, str, str], anyio.Event] = {}


class _SpnegoAuth(FlowMixin, httpx.Auth):
    """Shared machinery of the three public classes; see the module docstring."""

    _kind: ClassVar[str]
    _preferences: tuple[tuple[str, str], ...]  # (header scheme, pyspnego protocol), best first
    _forbidden: frozenset[str] = frozenset()
    max_legs: int = 6

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        domain: str | None = None,
        service: str = "HTTP",
        spn: Mapping[str, str] | None = None,
        canonicalize_host: bool = False,
        channel_binding: bool = True,
        mutual_auth: bool = True,
        delegate: bool = False,
        proxy: str | httpx.URL | None = None,
        buffer_body: bool = True,
    ) -> None:
        self._credential = Credential(username, password, domain)
        self._service = service
        self._spn = overrides(spn, service)
        self._canonicalize = canonicalize_host
        self._channel_binding = channel_binding
        self._mutual = mutual_auth
        self._delegate = delegate
        self._proxy = httpx.URL(proxy) if proxy is not None else None
        self.requires_request_body = buffer_body
        self._dns = LRU(1024)
        self._pool_aware: bool | None = None
        self._identities: dict[str, AuthIdentity] = {}
        self._handshaken: dict[_Origin, tuple[str, str]] = {}
        #: (event loop, origin) -> event set when the flow scouting that origin sent its first
        #: token or ended (see _scout).
        self._scouting: dict[tuple[Any, _Origin], anyio.Event] = {}
        self._by_host: dict[str, tuple[Target, AuthIdentity]] = {}
        self._fast: dict[_Origin, _Fast] = {}
        #: The last request URL's parsed form (httpx's ``URL._uri_reference``) and its origin:
        #: requests to one URL string through ExClient share it, so the fast path rarely
        #: recomputes the origin.
        self._last_origin: tuple[object, _Origin] = (None, ("", "", None))

    def __repr__(self) -> str:
        who = self._credential.principal or "<current user>"
        secret = ", password=***" if not self._credential.current_user else ""
        proxy = f", proxy='{self._proxy}'" if self._proxy is not None else ""
        return f"{type(self).__name__}(username={who!r}{secret}{proxy})"

    # -- drivers -------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """Run the flow for ``httpx.Client``: blocking work runs inline."""
        if self.requires_request_body:
            request.read()
        flow = self._flow(request)
        try:
            value: Any = None
            error: AuthenticationError | None = None
            while True:
                try:
                    action = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration:
                    return
                value, error = None, None
                if isinstance(action, Job):
                    try:
                        value = action.fn()
                    except AuthenticationError as exc:
                        error = exc
                elif isinstance(action, _Scout):
                    value = False  # threads: no waiting for a scout
                else:
                    value = yield action
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Run the flow for ``httpx.AsyncClient``/``ExClient``: blocking work in a thread."""
        if self.requires_request_body and not isinstance(request.stream, httpx.ByteStream):
            await request.aread()  # (an in-memory body was read when the request was built)
        steady = self._steady_start(request)
        if steady is None:
            flow = self._flow(request)
        else:  # the fast path: usually one leg on a connection authenticated as us
            try:
                response = yield request
            except BaseException:  # the send failed: no request <-> hook cycle left behind
                _disarm(request)
                raise
            if self._steady_end(request, response, steady):
                return
            flow = self._flow(request, (steady, response))
        scout: _Scout | None = None
        try:
            value: Any = None
            error: AuthenticationError | None = None
            while True:
                try:
                    action = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration:
                    return
                value, error = None, None
                if isinstance(action, _Scout):
                    value = await self._scout(action)
                    scout = action if value else None
                elif isinstance(action, Job):
                    try:
                        if action.probe is not None:
                            value = await self._probe_step(action, action.probe)
                        elif action.blocking:
                            value = await anyio.to_thread.run_sync(
                                action.fn, abandon_on_cancel=True
                            )
                        else:
                            value = action.fn()
                    except AuthenticationError as exc:
                        error = exc
                else:
                    value = yield action
        finally:
            flow.close()
            if scout is not None:
                self._end_scout(scout)

    async def _scout(self, job: _Scout) -> bool:
        # True: this flow scouts job.origin. False: it waited for the scout (bounded).
        # Keyed by event loop too: one auth object may serve flows on several loops
        # (threads), and an event can only be awaited on its own.
        key = (anyio.lowlevel.current_token(), job.origin)
        event = self._scouting.get(key)
        if event is None:
            self._scouting[key] = job.event = anyio.Event()
            job.key = key
            return True
        with anyio.move_on_after(SCOUT_WAIT_SECONDS):
            await event.wait()
        return False

    def _end_scout(self, job: _Scout | None) -> None:
        if job is None or job.event is None:
            return
        event, job.event = job.event, None
        if self._scouting.get(job.key) is event:
            del self._scouting[job.key]
        event.set()

    async def _probe_step(self, job: Job, ctx: SecurityContext) -> Any:
        # The first step of a Negotiate context that may have to find out whether Kerberos
        # works for its SPN: one flow finds out (KDC/DNS, in a thread); the others wait here,
        # on the event loop, then run NTLM inline or Kerberos in a thread.
        # Per loop (see _scout) and per user and password, not per auth object: the probe
        # lock is (Credential.probe_lock), and auth objects built per request must wait here
        # too, not in worker threads.
        key = (anyio.lowlevel.current_token(), self._credential.fingerprint, str(ctx.target))
        probing = _PROBING
        while (event := probing.get(key)) is not None:
            await event.wait()
        if ctx.needs_probe:
            probing[key] = event = anyio.Event()
            try:
                return await anyio.to_thread.run_sync(job.fn, abandon_on_cancel=True)
            finally:
                del probing[key]
                event.set()
        if ctx.blocking:
            return await anyio.to_thread.run_sync(job.fn, abandon_on_cancel=True)
        return job.fn()

    # -- choices -------------------------------------------------------------------------
    def _choose(
        self, challenges: list[Challenge], request: httpx.Request, target: Target
    ) -> tuple[str, str] | None:
        offered = {c.scheme for c in challenges}
        for scheme, protocol in self._preferences:
            if scheme.lower() in offered:
                if (
                    protocol == "negotiate"
                    and "ntlm" in offered
                    and (not KERBEROS_AVAILABLE or self._kerberos_failed(target))
                ):
                    # Negotiate can only end in NTLM here (no Kerberos, or it cannot work
                    # for this SPN just now: Credential.note_kerberos): speak the NTLM the
                    # server also offers: raw NTLMSSP, what Windows' Negotiate falls back
                    # to. SPNEGO would add ~0.4 ms of client CPU per handshake and no
                    # protection: its final mechListMIC cannot authenticate a server that
                    # could as well have offered NTLM alone (docs/internals.md, "Negotiate
                    # falling back").
                    return "NTLM", "ntlm"
                return scheme, protocol
        if offered & self._forbidden:
            raise MechanismNotAllowedError(
                f"{request.url.host} offers only {', '.join(sorted(offered))}; "
                f"{type(self).__name__} may not use NTLM here: fix Kerberos for this host "
                "or use NegotiateAuth(allow_ntlm=True)",
                request=request,
            )
        return None

    def _kerberos_failed(self, target: Target) -> bool:
        """Whether a recent Negotiate attempt found Kerberos unusable for ``target``."""
        return self._credential.kerberos_known_unusable(target)

    def _proactive_choice(self, request: httpx.Request) -> tuple[str, str] | None:
        """On a client without conn_ids, send the first token at once (when safe)."""
        if self._pool_aware is not False:
            return None
        scheme, protocol = self._preferences[0]
        tls = (self._proxy or request.url).scheme == "https"
        if protocol != "ntlm" and tls and self._channel_binding:
            return None  # the token needs the certificate of a connection not yet chosen
        return scheme, protocol

    def _context(
        self, protocol: str, target: Target, cert: bytes | None, request: httpx.Request
    ) -> SecurityContext:
        if protocol == "kerberos" and not KERBEROS_AVAILABLE:
            raise NoCredentialsError(
                "Kerberos is not available: install httpx-extensions[kerberos] "
                "(pyspnego[kerberos], needs the system's krb5 libraries)",
                request=request,
            )
        return SecurityContext(
            protocol,
            self._credential,
            target,
            cert_der=cert,
            mutual=self._mutual,
            delegate=self._delegate,
            request=request,
        )

    def _target_nowait(self, host: str) -> Target | None:
        host = host.lower()
        override = self._spn.get(host)
        if override is not None:
            return override
        if not self._canonicalize:
            return Target(self._service, host)
        cached = self._dns.get(host)
        if cached is not None and cached[1] > time.monotonic():
            return Target(self._service, cached[0])
        return None

    def _resolve(self, host: str) -> Target:
        canonical = canonicalize(host)
        self._dns.put(host.lower(), (canonical, time.monotonic() + _DNS_TTL))
        if canonical != host.lower():
            log.debug("SPN host %s canonicalized to %s", host, canonical)
        return Target(self._service, canonical)


_COMMON_DOC = """
    Args:
        username: ``"DOMAIN\\\\user"``, ``"user@REALM"`` or ``"user"`` (with ``domain=``);
            omit for single sign-on as the current user (SSPI, or the Kerberos ticket cache).
        password: the password; omit to use the current logon / ticket cache.
        domain: NetBIOS domain of a plain ``username``.
        service: SPN service class (``HTTP``).
        spn: per-host SPN overrides, ``{"alias.example.com": "HTTP/web01.example.com"}``.
        canonicalize_host: resolve DNS aliases (CNAMEs) to build the SPN (in a thread).
        channel_binding: send RFC 5929 ``tls-server-end-point`` bindings over TLS.
        mutual_auth: require and verify the server's final token (Kerberos, and NTLM
            inside SPNEGO; raw NTLM has none: it never authenticates the server).
        delegate: ask for a delegated (forwardable) Kerberos ticket.
        proxy: the proxy URL: answer ``407``/``Proxy-Authenticate`` with
            ``Proxy-Authorization`` for the proxy's SPN instead of the origin's ``401``.
        buffer_body: read a streamed request body into memory so it can be replayed.

    Raises:
        ValueError: contradictory ``username``/``domain`` or a malformed SPN override.
        AuthenticationError: (while sending) a subclass saying what failed and what to do.
"""


class NegotiateAuth(_SpnegoAuth):
    """``Negotiate`` (SPNEGO): Kerberos, falling back to NTLM unless ``allow_ntlm=False``.

    The mechanism used is in ``response.extensions["auth_mechanism"]``. With
    ``allow_ntlm=False`` raw Kerberos tokens are sent and an NTLM-only server raises
    :class:`~httpx_extensions.MechanismNotAllowedError`.

    With a password, when Kerberos cannot work for a host (no KDC for the realm, unknown
    principal or SPN), one handshake finds out and, for the next 60 seconds, handshakes with
    that host go straight to NTLM (raw NTLMSSP tokens, as Windows falls back to, in the
    ``NTLM`` scheme when the server offers it; else inside SPNEGO). Then one check in a
    background thread asks the KDC again while handshakes go on with NTLM (none waits for
    a slow or unreachable KDC); once it finds Kerberos works, handshakes use it. What was
    found out is shared by every auth object with the same user and password. Use
    ``user@REALM`` for a Kerberos login; ``DOMAIN\\user`` names an NTLM domain, which is
    rarely also a Kerberos realm.
    """

    _kind = "negotiate"

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        allow_ntlm: bool = True,
        domain: str | None = None,
        service: str = "HTTP",
        spn: Mapping[str, str] | None = None,
        canonicalize_host: bool = False,
        channel_binding: bool = True,
        mutual_auth: bool = True,
        delegate: bool = False,
        proxy: str | httpx.URL | None = None,
        buffer_body: bool = True,
    ) -> None:
        super().__init__(
            username,
            password,
            domain=domain,
            service=service,
            spn=spn,
            canonicalize_host=canonicalize_host,
            channel_binding=channel_binding,
            mutual_auth=mutual_auth,
            delegate=delegate,
            proxy=proxy,
            buffer_body=buffer_body,
        )
        self.allow_ntlm = allow_ntlm
        if allow_ntlm:
            self._preferences = (("Negotiate", "negotiate"), ("NTLM", "ntlm"))
        else:
            self._preferences = (("Negotiate", "kerberos"), ("Kerberos", "kerberos"))
            self._forbidden = frozenset({"ntlm"})


class NTLMAuth(_SpnegoAuth):
    """NTLM: raw NTLMSSP tokens in an ``NTLM`` header (``Negotiate`` if only that is offered)."""

    _kind = "ntlm"
    _preferences = (("NTLM", "ntlm"), ("Negotiate", "ntlm"))


class KerberosAuth(_SpnegoAuth):
    """Kerberos only (raw Kerberos tokens in the ``Negotiate`` header); never NTLM."""

    _kind = "kerberos"
    _preferences = (("Negotiate", "kerberos"), ("Kerberos", "kerberos"))
    _forbidden = frozenset({"ntlm"})


for _cls in (NegotiateAuth, NTLMAuth, KerberosAuth):
    _cls.__doc__ = (_cls.__doc__ or "") + _COMMON_DOC
