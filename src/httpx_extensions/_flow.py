"""The auth flows: ``NegotiateAuth``, ``NTLMAuth``, ``KerberosAuth`` (httpx ``Auth`` subclasses).

Theory of operation. One auth object is shared by thousands of concurrent flows, so it
holds configuration and three small, bounded, lock-protected caches only (canonical host
names, what each connection was authenticated with, whether the client reports conn_ids).
Everything about one handshake (the security context, the connection, the leg count) is
local to one flow: :meth:`_SpnegoAuth._flow`, a sans-IO generator that yields either an
``httpx.Request`` to send or a :class:`Job` (blocking work: DNS, a Kerberos/SSPI step) for
the sync or async driver to run (inline, or in a worker thread).

A flow, per docs/internals.md (the pool/auth contract):

1. Tag the request with a frozen :class:`AuthIdentity` and send it *without* credentials:
   ExClient hands it a connection already authenticated as that identity when one is idle.
2. Not a 401 (407 for proxies): done, no handshake.
3. A 401 on a connection that was not authenticated as us: handshake on *this* connection
   (pinned by ``conn_id``); channel bindings come from this connection's certificate.
4. A 401 on a connection authenticated as us (``conn_tagged``), or a challenge with
   ``Connection: close``: restart once, anonymously, on a fresh connection, except where
   the server re-authenticates per request (Kerberos without ``Persistent-Auth: true``).
   A connection lost between two legs without notice restarts the handshake too, as long
   as a whole one fits in ``max_legs`` (``_restart_or_raise``).
5. During a handshake: a 401 with a token continues; a bare 401 means the server refused
   the credentials; any other status ends it, after the server's final token is verified.

Once this auth object completed a connection-bound NTLM handshake with an origin, step 1
also sets a ``before_send`` hook: if the pool hands the request a connection not yet
authenticated as us, the hook starts the handshake there, in that same request (case 5
follows), saving the anonymous round trip that would only fetch a 401.

At volume (docs/internals.md, "Auth flows at volume"): on first contact with an origin one
flow (the scout, :class:`_Scout`) meets the challenge while the others wait for its first
token, so they can use that hook too; afterwards requests take a fast path
(:meth:`FlowMixin._steady_start` / :meth:`FlowMixin._steady_end`) that hands the response
to the whole flow (``_flow(first=...)``) only when there is something to answer.

The flow never knows about pools: it reads and writes extension keys only. A plain
``httpx.AsyncClient`` reports no ``conn_id``: then the flow sends its first token with the
first request (proactive) where no channel binding is needed before the connection is
known.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Generator, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

import httpx

from ._exceptions import (
    AuthenticationError,
    CredentialsRejectedError,
    HandshakeError,
    MechanismNotAllowedError,
    MutualAuthenticationError,
    RequestBodyNotReplayableError,
)
from ._headers import Challenge, find_challenge, parse_challenges, persistent_auth
from ._spnego import KERBEROS_AVAILABLE, Credential, SecurityContext, Target, peer_certificate

if TYPE_CHECKING:  # the hook's argument type only: the flow does not depend on the transport
    from ._transport import ConnectionFacts

__all__ = ["SCOUT_WAIT_SECONDS", "AuthIdentity", "FlowMixin", "Job", "LRU"]

log = logging.getLogger("httpx_extensions.auth")

_CACHE_SIZE = 4096

#: How long flows on first contact with an origin wait for the scout's first token.
SCOUT_WAIT_SECONDS = 1.0

_Origin = tuple[str, str, "int | None"]  # scheme, host, port


@dataclass(frozen=True)
class AuthIdentity:
    """The identity a connection is authenticated as: never holds a secret.

    ``credential`` is a keyed fingerprint of the password (empty for the current user), so
    two passwords of one user never share an authenticated connection.
    """

    scheme: str
    principal: str
    target: str
    credential: str = ""
    proxy: bool = False

    def __post_init__(self) -> None:
        # The pool hashes the identity several times per request: compute it once.
        fields = (self.scheme, self.principal, self.target, self.credential, self.proxy)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __eq__(self, other: object) -> bool:
        # Usually the very same instance (one per auth object and SPN): skip the field tuples.
        if self is other:
            return True
        if type(other) is not AuthIdentity:
            return NotImplemented
        return self._hash == other._hash and (  # type: ignore[attr-defined]
            self.scheme,
            self.principal,
            self.target,
            self.credential,
            self.proxy,
        ) == (other.scheme, other.principal, other.target, other.credential, other.proxy)


class Job:
    """Work the flow needs done outside itself; ``blocking`` jobs run in a worker thread.

    ``probe``: the security context whose first step this is, when that step may have to
    find out whether Kerberos works for its SPN. The async driver then lets one flow at a
    time find out (in a thread) while the others wait on the event loop, not in threads.
    """

    __slots__ = ("blocking", "fn", "probe")

    def __init__(
        self, fn: Callable[[], Any], blocking: bool, probe: SecurityContext | None = None
    ) -> None:
        self.fn = fn
        self.blocking = blocking
        self.probe = probe


def _first_step(ctx: SecurityContext) -> Job:
    """The Job of a context's first step."""
    return Job(partial(ctx.step, None), ctx.blocking, ctx if ctx.needs_probe else None)


class _ConnInfo(NamedTuple):
    mechanism: str
    persistent: bool


class LRU:
    """A small thread-safe bounded mapping (flows may run on several threads)."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        #: The entries: read it directly (``data.get``) only where a method call costs too
        #: much; write through :meth:`put`.
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def peek(self, key: Any) -> Any:
        """``get`` without refreshing the entry: lock-free (one dict read), for hot paths."""
        return self.data.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self._size:
                self.data.popitem(last=False)


# What each (connection, identity) was authenticated with, shared by all auth objects:
# equal identities share connections, whichever auth object made them.
_CONNS = LRU()


class FlowMixin:
    """The per-request flow of :class:`~httpx_extensions._auth._SpnegoAuth` (see module doc)."""

    _kind: ClassVar[str]
    _forbidden: frozenset[str]
    _credential: Credential
    _proxy: httpx.URL | None
    _channel_binding: bool
    _mutual: bool
    _pool_aware: bool | None
    _identities: dict[str, AuthIdentity]
    _handshaken: dict[_Origin, tuple[str, str]]
    _by_host: dict[str, tuple[Target, AuthIdentity]]
    _fast: dict[_Origin, _Fast]
    _last_origin: tuple[object, _Origin]
    _canonicalize: bool
    max_legs: int

    def _choose(
        self, challenges: list[Challenge], request: httpx.Request, target: Target
    ) -> tuple[str, str] | None:
        raise NotImplementedError

    def _kerberos_failed(self, target: Target) -> bool:
        raise NotImplementedError

    def _proactive_choice(self, request: httpx.Request) -> tuple[str, str] | None:
        raise NotImplementedError

    def _context(
        self, protocol: str, target: Target, cert: bytes | None, request: httpx.Request
    ) -> SecurityContext:
        raise NotImplementedError

    def _target_nowait(self, host: str) -> Target | None:
        raise NotImplementedError

    def _resolve(self, host: str) -> Target:
        raise NotImplementedError

    # -- the flow --------------------------------------------------------------------------
    def _steady_start(self, request: httpx.Request) -> _Steady | None:
        """The fast path's first half, for a request to an origin this auth object already
        authenticated with (``_handshaken``) through ExClient: tag the request as the flow
        would and return what :meth:`_steady_end` needs; ``None``: run the whole flow.

        Most requests of a run are of this kind and are answered on a connection already
        authenticated as us; the fast path sends them without building the flow.
        """
        if not self._pool_aware or self._proxy is not None:
            return None
        # Every request passes here: calls are inlined where they would cost a frame each.
        url = request.url
        # httpx private API, read here only (tests/test_httpx_private_api.py): a parsed URL's
        # ``_uri_reference``, which httpx shares between the URL objects it copies from one
        # another, as a request's URL is from ExClient's cached merged URL (_merge_url). So
        # the origin, three property calls, is computed once per URL string, not per request.
        # Never cached: a URL with credentials (a parsed URL's repr shows its password;
        # httpx.URL's masks it), so no local or attribute here ever holds one.
        last_parsed, origin = self._last_origin
        if url._uri_reference is not last_parsed:
            origin = (url.scheme, url.host, url.port)  # _origin(url)
            if not url.userinfo:
                self._last_origin = (url._uri_reference, origin)
        fast = self._fast.get(origin)
        if fast is None:
            fast = self._fast_entry(origin)
            if fast is None:
                return None
        target, identity, choice, until, hook, verdicts, revision = fast
        if until is not None and (time.monotonic() >= until or verdicts.revision != revision):
            # Negotiate: time to ask about Kerberos again, or it was found to work (by a
            # background check): the whole flow, which decides afresh.
            del self._fast[origin]
            return None
        if not isinstance(request.stream, httpx.ByteStream):
            return None
        ext = request.extensions
        if "before_send" in ext:
            _arm(request, identity, hook)
        else:  # _arm, for the usual request that has no hook of its own
            request.extensions = {
                **ext, "identity": identity, "before_send": hook, _ARMED: weakref.ref(request)
            }  # fmt: skip
        return (target, identity, origin)  # a _Steady (a tuple: the cheapest)

    def _steady_end(
        self, request: httpx.Request, response: httpx.Response, steady: _Steady
    ) -> bool:
        """The fast path's second half: ``True`` if the flow is done (the common case: no
        challenge); ``False``: hand ``response`` to the whole flow (``_flow(first=...)``)."""
        ext = response.extensions
        self._pool_aware = "conn_id" in ext
        request_ext = request.extensions
        if _STARTED in request_ext:
            return False  # the hook started a handshake on a new connection
        if response.status_code == 401:
            return False
        try:  # _same_origin, inlined for its common case: the response is to this request
            other = response.request
        except RuntimeError:
            other = request
        if other is not request and not _same_origin(request, response):
            return False
        # _disarm and _note_reuse, inlined: every request of a run passes here.
        request_ext.pop(_ARMED, None)
        request_ext.pop("_auth_leg_pin", None)
        if ext.get("conn_tagged"):
            info = _CONNS.data.get((ext.get("conn_id"), steady[1]))  # _CONNS.peek, inlined
            if info is not None:
                if type(ext) is dict:
                    ext["auth_mechanism"] = info.mechanism
                else:  # pragma: no cover - httpx always uses a dict
                    _set_response_ext(response, info.mechanism)
        return True

    def _fast_entry(self, origin: _Origin) -> _Fast | None:
        """Build (and cache) the fast path's facts about ``origin``: ``None`` if its
        requests need the whole flow (no handshake yet, or no preflight to offer)."""
        known_host = self._by_host.get(origin[1])
        if known_host is None:
            return None
        target, identity = known_host
        found = self._preflight_choice(origin, target)
        if found is None:
            return None
        choice, until, verdicts, revision = found
        fast = _Fast(
            target, identity, choice, until, _OriginHook(self, choice, target), verdicts, revision
        )
        if len(self._fast) >= _CACHE_SIZE:
            self._fast.clear()
        self._fast[origin] = fast
        return fast

    def _flow(
        self, request: httpx.Request, first: tuple[_Steady, httpx.Response] | None = None
    ) -> Generator[httpx.Request | Job | _Scout, Any, None]:
        """The whole flow of one request (module doc); with ``first``, from the response to
        the request :meth:`_steady_start` prepared."""
        status = 407 if self._proxy is not None else 401
        challenge_header = "Proxy-Authenticate" if self._proxy is not None else "WWW-Authenticate"
        if first is not None:
            yield from _unhooking(
                request, self._legs(request, status, challenge_header, first[0], first[1])
            )
            return
        host = self._proxy.host if self._proxy is not None else request.url.host
        known_host = self._by_host.get(host)
        if known_host is not None:
            target, identity = known_host
        else:
            found = self._target_nowait(host)
            if found is None:
                found = yield Job(partial(self._resolve, host), blocking=True)
            target = found
            identity = self._identity(str(target))
            if not self._canonicalize:  # host -> SPN is then fixed for this auth object
                if len(self._by_host) >= _CACHE_SIZE:
                    self._by_host.clear()
                    self._fast.clear()
                self._by_host[host] = (target, identity)
        if not _replayable(request):
            raise RequestBodyNotReplayableError(
                f"{request.method} {request.url}: the body is a one-shot stream and the "
                "handshake may have to send it again; pass content=bytes or buffer_body=True",
                request=request,
            )
        preflight: _OriginHook | None = None
        origin = _origin(request.url)
        proactive = self._proactive_choice(request)
        if proactive is None:
            preflight = self._preflight(origin, request, target)
        scout_job = None
        if proactive is None and preflight is None and self._may_scout(origin):
            # First contact with this origin: one flow (the scout) goes ahead; the others
            # wait for its first token, then start their handshakes without the anonymous
            # round trip (preflight) where that can work. See _Scout.
            scout_job = _Scout(origin)
            scout = yield scout_job
            if not scout:
                scout_job = None
                preflight = self._preflight(origin, request, target)
                proactive = self._proactive_choice(request) if preflight is None else None
        if preflight is not None:
            _arm(request, identity, preflight)
        else:
            request.extensions = {**request.extensions, "identity": identity}
        ctx: SecurityContext | None = None
        scheme = ""
        if proactive is not None:
            scheme, protocol = proactive
            try:
                ctx = self._context(protocol, target, None, request)
                token = yield _first_step(ctx)
                self._send_token(request, scheme, token, None)
            except AuthenticationError as exc:  # best effort: go anonymous, fail on a 401
                log.debug("no proactive token for %s: %s", target, type(exc).__name__)
                ctx = proactive = None
        steady: _Steady = (target, identity, origin)
        yield from _unhooking(
            request,
            self._legs(
                request, status, challenge_header, steady, None, ctx, scheme, proactive, scout_job
            ),
        )

    def _legs(
        self,
        request: httpx.Request,
        status: int,
        challenge_header: str,
        steady: _Steady,
        response: httpx.Response | None,
        ctx: SecurityContext | None = None,
        scheme: str = "",
        proactive: tuple[str, str] | None = None,
        scout_job: _Scout | None = None,
    ) -> Generator[httpx.Request | Job, Any, None]:
        """Send ``request`` and answer challenges (cases 2-5 of the module doc); with
        ``response``, its first leg was sent already and this is the answer. Run it through
        :func:`_unhooking`."""
        target, identity, origin = steady
        armed = _ARMED in request.extensions
        scout = scout_job is not None
        legs = 0 if response is None else 1
        restarts = (0, 0)  # (announced, lost): see _restart_or_raise
        conn_id: Any = None
        while True:
            if response is None:
                if legs >= self.max_legs:
                    raise HandshakeError(
                        f"gave up after {legs} requests for "
                        f"{identity.principal or 'current user'} to {target}: the server kept "
                        f"answering {status}",
                        request=request,
                    )
                legs += 1
                response = yield request
            ext = response.extensions
            self._pool_aware = "conn_id" in ext
            if armed:  # disarm the first-token hook: later legs carry their own tokens
                armed = False
                request.extensions.pop(_ARMED, None)
                started = request.extensions.pop(_STARTED, None)
                if started is not None:  # the transport sent its token: a handshake
                    ctx, conn_id, proactive = started
                    scheme = proactive[0]
            if not _same_origin(request, response):
                return  # a redirect inside the leg ended elsewhere: not ours to answer
            if ctx is None and response.status_code != status:
                self._note_reuse(response, identity)  # the common case: no challenge
                return
            challenges = parse_challenges(response.headers.get_list(challenge_header))
            closing = "close" in response.headers.get("connection", "").lower()
            counted = False  # a restart was counted for this response already
            # Decide what to send next: `break` sends, `return` ends, `continue` re-decides.
            while True:
                if ctx is not None:
                    # Case 5: a response to one of our tokens.
                    in_token = _token(find_challenge(challenges, scheme), request)
                    moved = conn_id is not None and ext.get("conn_id") != conn_id
                    if response.status_code != status and in_token is None and proactive:
                        self._note_reuse(
                            response, identity
                        )  # the server never asked: nothing to verify
                        return
                    if response.status_code != status:
                        yield from self._finish(ctx, in_token, response, request, identity, scheme)
                        return
                    if in_token is None and (proactive is not None or moved):
                        ctx, proactive = None, None  # decide afresh on this bare challenge
                        if moved:  # (here, on the connection that answered: two legs)
                            restarts = self._restart_or_raise(restarts, legs, request, target)
                            counted = True
                        continue
                    if in_token is None or ctx.complete:
                        raise CredentialsRejectedError(
                            f"the server refused the {ctx.mechanism or scheme} logon of "
                            f"{identity.principal or 'the current user'} for {target} "
                            f"(conn {ext.get('conn_id')}): check username and password, "
                            "the account, and the server's authorization rules",
                            request=request,
                        )
                    if closing or moved:  # anonymously, on a new connection: three legs
                        restarts = self._restart_or_raise(
                            restarts, legs, request, target, announced=closing, needs=3
                        )
                        ctx = None
                        _set_ext(request, conn_id=None, new_connection=True, _auth_leg_pin=None)
                        request.headers.pop(self._auth_header, None)
                        break
                    proactive = None
                    out = yield Job(partial(ctx.step, in_token), ctx.blocking)
                    self._send_token(request, scheme, out, conn_id)
                    break
                # Cases 2-4: a response to a request without credentials.
                if response.status_code != status:
                    self._note_reuse(response, identity)
                    return
                choice = self._choose(challenges, request, target)
                if choice is None:
                    return  # no challenge of ours: hand the 401 back to the caller
                scheme, protocol = choice
                conn_id = ext.get("conn_id")
                if closing or (
                    ext.get("conn_tagged") and not self._reauth_in_place(conn_id, identity)
                ):
                    restarts = self._restart_or_raise(
                        restarts, legs, request, target, announced=True, needs=3, count=not counted
                    )
                    _set_ext(request, conn_id=None, new_connection=True, _auth_leg_pin=None)
                    request.headers.pop(self._auth_header, None)
                    break
                cert = None
                if self._channel_binding:
                    cert = peer_certificate(ext.get("network_stream"))
                ctx = self._context(protocol, target, cert, request)
                log.debug(
                    "starting %s handshake (%s) for %s, SPN %s, conn %s, channel binding %s",
                    scheme, protocol, identity.principal or "current user", target, conn_id,
                    cert is not None,
                )  # fmt: skip
                out = yield _first_step(ctx)
                if protocol == "negotiate" and ctx.mechanism == "ntlm":
                    # This first step found out (or waited for the flow that did) that
                    # Kerberos cannot work here: choose again, now that it is known.
                    again = self._choose(challenges, request, target)
                    if again is not None and again != (scheme, protocol):
                        log.debug("Kerberos unusable for %s: %s instead", target, again[0])
                        scheme, protocol = again
                        ctx = self._context(protocol, target, cert, request)
                        out = yield _first_step(ctx)
                self._send_token(request, scheme, out, conn_id)
                if scout:  # the waiting flows may now start as this one did
                    scout = False
                    if not ctx.blocking and self._pool_aware:
                        self._note_handshake(origin, scheme, ctx.protocol)
                    self._end_scout(scout_job)
                break
            response = None

    @property
    def _auth_header(self) -> str:
        return "Proxy-Authorization" if self._proxy is not None else "Authorization"

    def _send_token(
        self, request: httpx.Request, scheme: str, token: bytes | None, conn_id: Any
    ) -> None:
        if not token:
            raise HandshakeError(
                f"the {scheme} security context produced no token to send", request=request
            )
        request.headers[self._auth_header] = _credentials(scheme, token)
        # The leg goes on the handshake's connection; _auth_leg_pin tells ExClient the pin
        # is ours, not the caller's: if that connection is gone it logs no WARNING.
        pinned = True if conn_id is not None else None
        _set_ext(request, conn_id=conn_id, new_connection=None, _auth_leg_pin=pinned)

    def _restart_or_raise(
        self,
        restarts: tuple[int, int],
        legs: int,
        request: httpx.Request,
        target: Target,
        *,
        announced: bool = False,
        needs: int = 2,
        count: bool = True,
    ) -> tuple[int, int]:
        """Count one more restart of the handshake on another connection, or raise.

        ``restarts`` is (announced, lost) so far. Announced: the server said so, with a
        challenge carrying ``Connection: close`` or a 401 on a connection already
        authenticated as us; a server that does it does it every time, so one fresh
        connection is tried, not two. Lost: the connection closed between two legs without
        notice. A busy server does that at random (Apache's event MPM, short of workers,
        closes idle keep-alive connections, handshakes between legs included), so the
        handshake starts again as long as a whole one (``needs`` more legs: two where a
        bare challenge already came, three from an anonymous request) fits in ``max_legs``.
        ``count=False``: the restart that this same response already counted goes
        elsewhere (the connection that answered cannot take the handshake either).
        """
        done, lost = restarts
        if count:
            done, lost = (done + 1, lost) if announced else (done, lost + 1)
        if done > 1 or legs + needs > self.max_legs:
            n = done + lost
            times = "once" if n == 1 else "twice" if n == 2 else f"{n} times"
            raise HandshakeError(
                f"the handshake for {target} lost its connection {times} ({legs} of at most "
                f"{self.max_legs} legs sent; the server closes connections mid-handshake, or "
                "re-challenges authenticated ones); connection-bound auth cannot complete "
                "here: check keep-alive and load on the server or any proxy in between",
                request=request,
            )
        log.debug("restarting the handshake for %s on another connection", target)
        return done, lost

    def _finish(
        self,
        ctx: SecurityContext,
        in_token: bytes | None,
        response: httpx.Response,
        request: httpx.Request,
        identity: AuthIdentity,
        scheme: str,
    ) -> Generator[Job, Any, None]:
        """Case 5, last leg: verify the server's final token, record and report the result."""
        if in_token is not None and not ctx.complete:
            try:
                yield Job(partial(ctx.step, in_token, final=True), ctx.blocking)
            except MutualAuthenticationError as exc:
                if self._mutual:
                    raise
                log.debug("mutual_auth=False: ignoring a final token that did not verify: %s", exc)
        if self._mutual and not ctx.complete and response.status_code < 400:
            raise MutualAuthenticationError(
                f"{response.status_code} from {ctx.target} without a final token that proves "
                "the server's identity; do not trust this response (or pass mutual_auth=False "
                "for servers known to omit it)",
                request=request,
            )
        mechanism = ctx.mechanism or ctx.protocol
        if mechanism in self._forbidden:
            raise MechanismNotAllowedError(
                f"the server negotiated {mechanism} for {ctx.target}, which this auth object "
                "may not use: fix Kerberos for this host or allow NTLM",
                request=request,
            )
        persistent = persistent_auth(response.headers.get_list("persistent-auth"))
        if persistent is None:  # NTLM is connection-bound; Kerberos is only if the server says so
            persistent = mechanism == "ntlm"
        conn_id = response.extensions.get("conn_id")
        if conn_id is not None:
            _CONNS.put((conn_id, identity), _ConnInfo(mechanism, persistent))
            if response.status_code < 400 and persistent and not ctx.blocking:
                self._note_handshake(_origin(request.url), scheme, ctx.protocol)
        _set_response_ext(response, mechanism)
        fallback = self._kind == "negotiate" and mechanism == "ntlm" and KERBEROS_AVAILABLE
        log.debug(
            "authenticated %s with %s, SPN %s, conn %s (persistent %s)%s",
            identity, mechanism, ctx.target, conn_id, persistent,
            " (Negotiate fell back to NTLM)" if fallback else "",
        )  # fmt: skip

    def _note_handshake(self, origin: _Origin, scheme: str, protocol: str) -> None:
        """Remember that ``origin`` wants a connection-bound, non-blocking handshake."""
        handshaken = self._handshaken
        if len(handshaken) >= _CACHE_SIZE:
            handshaken.clear()
            self._fast.clear()
        if handshaken.get(origin) != (scheme, protocol):
            handshaken[origin] = (scheme, protocol)
            self._fast.pop(origin, None)

    def _preflight(
        self, origin: _Origin, request: httpx.Request, target: Target
    ) -> _OriginHook | None:
        """A first-token hook for this request if its origin wanted our handshake before:
        if the pool hands the request a connection not yet authenticated as us, the
        handshake starts right there."""
        if not self._pool_aware or self._proxy is not None:
            return None
        found = self._preflight_choice(origin, target)
        return None if found is None else _OriginHook(self, found[0], target)

    def _preflight_choice(
        self, origin: _Origin, target: Target
    ) -> tuple[tuple[str, str], float | None, Any, int] | None:
        """What a first-token hook sends to ``origin`` (header scheme, pyspnego protocol) and,
        for Negotiate, until when (``time.monotonic``) and while which revision of the
        Kerberos verdicts lasts: only while Kerberos is known not to work for ``target``
        (afterwards, or once a check finds it works, Negotiate tries Kerberos again).
        ``None``: no hook (no connection-bound NTLM handshake with this origin yet)."""
        known = self._handshaken.get(origin)
        if known is None:
            return None
        if self._kind == "negotiate" and KERBEROS_AVAILABLE:
            verdicts = self._credential.kerberos_verdicts()
            revision = verdicts.revision  # read first: a change after it is seen next time
            until = self._credential.kerberos_unusable_until(target)
            return None if until is None else (known, until, verdicts, revision)
        return known, None, None, 0

    def _may_scout(self, origin: _Origin) -> bool:
        """Whether flows to ``origin`` should wait for a first one (see :class:`_Scout`)."""
        if self._proxy is not None or self._pool_aware is False or origin in self._handshaken:
            return False
        if self._kind == "ntlm":
            return True
        # Negotiate: only a password may end in NTLM, whose first token a preflight sends.
        return self._kind == "negotiate" and not (
            KERBEROS_AVAILABLE and self._credential.current_user
        )

    def _end_scout(self, job: _Scout | None) -> None:
        raise NotImplementedError

    def _identity(self, target: str) -> AuthIdentity:
        """This auth object's identity for ``target``: one shared instance per target, so
        the pool's lookups by identity compare by ``is``."""
        identities = self._identities
        identity = identities.get(target)
        if identity is None:
            identity = AuthIdentity(
                self._kind,
                self._credential.principal,
                target,
                self._credential.fingerprint,
                self._proxy is not None,
            )
            if len(identities) >= _CACHE_SIZE:
                identities.clear()
            identities[target] = identity
        return identity

    def _note_reuse(self, response: httpx.Response, identity: AuthIdentity) -> None:
        ext = response.extensions
        if not ext.get("conn_tagged"):
            return
        # peek: every reused request passes here; the entry was refreshed by its handshake.
        info = _CONNS.peek((ext.get("conn_id"), identity))
        if info is not None:
            _set_response_ext(response, info.mechanism)

    def _reauth_in_place(self, conn_id: Any, identity: AuthIdentity) -> bool:
        """Whether a tagged connection that answered 401 may be re-authenticated in place."""
        info = _CONNS.get((conn_id, identity))
        return info is not None and not info.persistent


class _Fast(NamedTuple):
    """What the fast path knows of an origin (``FlowMixin._fast_entry``)."""

    target: Target
    identity: AuthIdentity
    choice: tuple[str, str]  # what the preflight sends: (header scheme, pyspnego protocol)
    until: float | None  # Negotiate: when Kerberos is to be tried again
    hook: _OriginHook  # the first-token hook shared by the fast path's requests
    verdicts: Any  # Negotiate: the credential's Kerberos verdicts (their ``revision``)...
    revision: int  # ...when this entry was made: a change means Kerberos was found to work


#: What a flow knows before its first leg (see ``FlowMixin._steady_start``): target,
#: identity, origin. A plain tuple: built for every request.
_Steady = tuple[Target, AuthIdentity, _Origin]


class _Scout:
    """Yielded by a flow on first contact with an origin; the async driver answers.

    ``True``: this flow is the scout; it calls ``_end_scout`` once its first token is out
    (the driver calls it too when the flow ends). ``False``: another flow was the scout and
    this one waited for it (at most :data:`SCOUT_WAIT_SECONDS`); it then looks again at
    what the scout learnt. The sync driver answers ``False`` at once.

    Why: 100 requests started at once on a new client would otherwise each send an
    anonymous request only to be told 401, on 100 connections. After the scout's first
    token, the others send their first token with their first request (``_OriginHook``).
    """

    __slots__ = ("event", "key", "origin")

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.event: Any = None  # the scout's, until it ends
        self.key: Any = None  # (event loop, origin)


class _OriginHook:
    """A ``before_send`` hook (docs/internals.md): the first token, on the chosen connection.

    Set (by :func:`_arm`) on the requests of a flow to an origin where this auth object
    completed a connection-bound, non-blocking (NTLM) handshake before. When the pool picks
    a connection not yet authenticated as this identity (a new one, typically), the hook
    creates the security context for *that* connection (its certificate for channel
    bindings) and adds the first token to the request: the anonymous round trip that would
    only fetch a 401 is saved.

    One per origin (the fast path's ``_Fast`` entry holds it), shared by its requests. The
    request it may act on carries a weak reference to itself under ``_ARMED``: a redirect's
    request is another object, a dead reference matches no new one, and the flow removes
    the key when it ends (a request sent again is not acted on). What the hook started
    goes into that request's extensions under ``_STARTED`` (security context, conn_id,
    choice), where the flow takes it from. ``untagged_only`` tells the transport not to
    call it on a connection authenticated as the request's identity, where it would add
    nothing: the common case, made free.
    """

    __slots__ = ("auth", "choice", "target")
    untagged_only = True

    def __init__(self, auth: FlowMixin, choice: tuple[str, str], target: Target) -> None:
        # Weakly: the auth object holds this hook (its fast-path entry); a strong reference
        # back would leave every auth object to the cyclic garbage collector.
        self.auth = weakref.ref(auth)
        self.choice = choice
        self.target = target

    def __call__(
        self, request: httpx.Request, facts: ConnectionFacts
    ) -> list[tuple[bytes, bytes]] | None:
        ext = request.extensions
        armed = ext.get(_ARMED)
        if facts.tagged or armed is None or armed() is not request:
            return None  # a connection authenticated as us, a redirect's or an old request
        auth = self.auth()
        if auth is None:  # pragma: no cover - the request's flow holds its auth object
            return None
        started = _start_handshake(auth, self.choice, self.target, request, facts)
        if started is None:
            return None
        ext[_STARTED] = (started[0], facts.conn_id, self.choice)
        return started[1]


#: Request extension keys of :class:`_OriginHook`: a weak reference to the one request it
#: may act on, and (security context, conn_id, choice) of the handshake it started there.
_ARMED = "_auth_hook_armed"
_STARTED = "_auth_hook_started"


class _Chained:
    """A ``before_send`` hook the caller put on a request, then our first-token hook: both
    are called, the caller's first, as it would have been, and both sets of headers sent."""

    __slots__ = ("inner", "hook", "untagged_only")

    def __init__(self, inner: Any, hook: _OriginHook) -> None:
        self.inner = inner
        self.hook = hook
        #: Ours adds nothing on a tagged connection: skip both only if the caller's may.
        self.untagged_only = bool(getattr(inner, "untagged_only", False))

    def __call__(
        self, request: httpx.Request, facts: ConnectionFacts
    ) -> list[tuple[bytes, bytes]] | None:
        extra = self.inner(request, facts)
        ours = self.hook(request, facts)
        return [*extra, *ours] if extra and ours else (ours or extra)


def _arm(request: httpx.Request, identity: AuthIdentity, hook: _OriginHook) -> None:
    """Tag ``request`` with ``identity`` and arm ``hook`` for it alone (a weak reference to
    it under ``_ARMED``). A ``before_send`` of the caller's is chained, called first; one of
    ours left by an earlier send of this request is replaced."""
    ext = request.extensions
    mine = ext.get("before_send")
    before_send: Any = hook
    if mine is not None and type(mine) is not _OriginHook:
        before_send = _Chained(mine.inner if type(mine) is _Chained else mine, hook)
    armed = weakref.ref(request)
    request.extensions = {**ext, "identity": identity, "before_send": before_send, _ARMED: armed}


def _disarm(request: httpx.Request) -> None:
    """End a flow's first-token hook: no request <-> context cycle is left. The flow's
    own leg pin goes too: sent again, the request is the caller's alone."""
    ext = request.extensions
    if _ARMED in ext:
        del ext[_ARMED]
    ext.pop(_STARTED, None)
    ext.pop("_auth_leg_pin", None)


def _start_handshake(
    auth: FlowMixin,
    choice: tuple[str, str],
    target: Target,
    request: httpx.Request,
    facts: ConnectionFacts,
) -> tuple[SecurityContext, list[tuple[bytes, bytes]]] | None:
    """Create the security context for ``facts``' connection and its first token's header;
    ``None`` when there is no token to send without blocking (the flow then goes the
    anonymous way)."""
    scheme, protocol = choice
    cert = peer_certificate(facts.network_stream) if auth._channel_binding else None
    try:
        ctx = auth._context(protocol, target, cert, request)
        if ctx.blocking:
            return None  # never block the event loop: the flow's own path runs it
        token = ctx.step(None)
    except AuthenticationError as exc:  # best effort: the flow goes the anonymous way
        log.debug("no first token for %s: %s", target, type(exc).__name__)
        return None
    if not token:
        return None
    log.debug(
        "starting %s handshake (%s) for %s, SPN %s, conn %s, channel binding %s, "
        "without an anonymous round trip",
        scheme, protocol, auth._credential.principal or "current user", target,
        facts.conn_id, cert is not None,
    )  # fmt: skip
    return ctx, [(auth._auth_header.encode(), _credentials(scheme, token).encode())]


def _unhooking(
    request: httpx.Request, legs: Generator[httpx.Request | Job, Any, None]
) -> Generator[httpx.Request | Job, Any, None]:
    """Run a flow's ``legs``; however they end (a failed send too), disarm the first-token
    hook, so no request <-> security context reference cycle is left."""
    try:
        yield from legs
    finally:
        _disarm(request)


def _credentials(scheme: str, token: bytes) -> str:
    """The value of an Authorization header carrying ``token``: never log it."""
    return f"{scheme} {base64.b64encode(token).decode()}"


def _origin(url: httpx.URL) -> _Origin:
    return (url.scheme, url.host, url.port)


def _set_ext(request: httpx.Request, **values: Any) -> None:
    """Set (or, with ``None``, remove) request extension keys."""
    ext = dict(request.extensions)
    for key, value in values.items():
        if value is None:
            ext.pop(key, None)
        else:
            ext[key] = value
    request.extensions = ext


def _set_response_ext(response: httpx.Response, mechanism: str) -> None:
    if type(response.extensions) is dict or isinstance(response.extensions, MutableMapping):
        response.extensions["auth_mechanism"] = mechanism
    else:  # pragma: no cover - httpx always uses a dict
        response.extensions = {**response.extensions, "auth_mechanism": mechanism}


def _token(challenge: Challenge | None, request: httpx.Request) -> bytes | None:
    if challenge is None or not (challenge.token or challenge.malformed):
        return None
    try:
        if challenge.malformed:
            raise ValueError("not a token68")
        return base64.b64decode(challenge.token or "", validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(
            f"the server sent a malformed {challenge.scheme} token (not base64)", request=request
        ) from None


def _replayable(request: httpx.Request) -> bool:
    if isinstance(request.stream, httpx.ByteStream):
        return True
    try:
        request.content  # noqa: B018 - raises RequestNotRead for an unread stream
    except httpx.RequestNotRead:
        return False
    return True


def _same_origin(request: httpx.Request, response: httpx.Response) -> bool:
    try:
        other_request = response.request
    except RuntimeError:
        return True
    if other_request is request:
        return True
    other, url = other_request.url, request.url
    return (other.scheme, other.host, other.port) == (url.scheme, url.host, url.port)
