"""An httpx transport over our pool: models in, models out, errors mapped.

Theory of operation
-------------------
``ExTransport.handle_async_request`` turns an ``httpx.Request`` into an origin, an identity
tag and an optional pin (explicit ``conn_id``, or the connection its flow reserved), asks the
pool for a connection, writes the request through h11 and returns an ``httpx.Response`` whose
stream releases the connection when the body ends or is closed. Every httpcore or h11 error
becomes the httpx error a user already catches.

Proxies: ``http://`` targets are forwarded through a plain HTTP proxy (absolute-form
request targets, one shared set of connections to the proxy); ``https://`` targets go through
a ``CONNECT`` tunnel, one connection per target origin.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import ssl
import typing

import h11
import httpcore
import httpx

from ._admission import Admission
from ._backends import AsyncioStream, backend_for_current_loop
from ._connection import Connection, Origin
from ._exceptions import HTTP2NotSupportedError
from ._pool import Pool, PoolState, current_flow

__all__ = ["ConnectionFacts", "ExTransport"]

logger = logging.getLogger("httpx_extensions")

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_FORWARD = b"forward+"  # origin scheme prefix of connections to a forwarding proxy
#: Request extension an auth flow sets next to the ``conn_id`` of its own legs.
AUTH_LEG_PIN = "_auth_leg_pin"

_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    h11.RemoteProtocolError: httpx.RemoteProtocolError,
    h11.LocalProtocolError: httpx.LocalProtocolError,
}


_MAPPED = tuple(_ERRORS)


def _map_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an httpcore or h11 one (raise it ``from exc``)."""
    for exc_type in type(exc).__mro__:
        target = _ERRORS.get(exc_type)
        if target is not None:
            return target(str(exc) or type(exc).__name__, request=request)
    raise AssertionError(f"unmapped {exc!r}")  # pragma: no cover


def check_limits(limits: httpx.Limits) -> None:
    """Refuse limits under which no connection could stay pinned or reserved.

    Raises:
        ValueError: ``keepalive_expiry=0`` or ``max_keepalive_connections=0``; leave them
            at httpx's defaults or raise them.
    """
    if limits.keepalive_expiry == 0 or limits.max_keepalive_connections == 0:
        raise ValueError(
            "ExClient needs keep-alive connections: connection-bound authentication and "
            "conn_id pinning reuse a connection after its response. Use "
            "Limits(keepalive_expiry=...) and Limits(max_keepalive_connections=...) above 0."
        )


class ExTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 transport whose connections can be pinned, reserved and identity-tagged.

    ``ExClient`` builds one for you; build one yourself only to pass transport options httpx's
    client does not take (``uds``, ``local_address``, ``retries``, ``socket_options``).
    Arguments are those of ``httpx.AsyncHTTPTransport``.

    Raises:
        HTTP2NotSupportedError: ``http2=True``; connection-bound auth needs HTTP/1.1.
        ValueError: keep-alive disabled by ``limits`` (see :func:`check_limits`).
    """

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        proxy: httpx.Proxy | str | httpx.URL | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> None:
        if http2:
            raise HTTP2NotSupportedError(
                "ExClient speaks HTTP/1.1 only: NTLM and Negotiate authenticate one TCP "
                "connection carrying one request at a time. Drop http2=True."
            )
        check_limits(limits)
        self._ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._limits = limits
        self._proxy = httpx.Proxy(url=proxy) if isinstance(proxy, (str, httpx.URL)) else proxy
        if self._proxy is not None and self._proxy.url.scheme not in ("http", "https"):
            raise ValueError(
                "ExTransport supports http:// and https:// proxies; for SOCKS use "
                "httpx.AsyncHTTPTransport via mounts= (its requests carry no conn_id)"
            )
        self._uds = uds
        self._local_address = local_address
        self._retries = retries
        self._socket_options = socket_options
        self._pool = Pool(
            self._open,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._admission = (
            Admission(limits.max_connections) if limits.max_connections is not None else None
        )
        if self._proxy is not None:
            # Drop-in compatibility: code (httpx's own tests among it) reads the proxy URL
            # of a transport as ``transport._pool._proxy_url``, as httpcore names it.
            purl = self._proxy.url
            self._pool._proxy_url = httpcore.URL(  # type: ignore[attr-defined]
                scheme=purl.raw_scheme, host=purl.raw_host, port=purl.port, target=purl.raw_path
            )
        self._backend: httpcore.AsyncNetworkBackend | None = None

    # -- public helpers used by ExClient -----------------------------------------------------
    def pool_state(self) -> PoolState:
        """Counts of connections by state and of queued requests."""
        state = self._pool.state()
        if self._admission is not None:
            state = dataclasses.replace(state, queued=state.queued + self._admission.queued)
        return state

    def admission(self) -> tuple[Admission | None, bool]:
        """The admission of this transport's pool (None: unlimited), and whether the running
        loop is asyncio. ExClient.send holds flows there; see ``_admission``."""
        return self._admission, self._get_pool().on_asyncio

    def release(self, conn_id: str) -> bool:
        """End any reservation of ``conn_id``; False if this transport has no such connection."""
        return self._pool.release(conn_id)

    def __repr__(self) -> str:
        return f"<ExTransport {self._pool!r}>"

    # -- httpx.AsyncBaseTransport --------------------------------------------------------------
    def _get_pool(self) -> Pool:
        if self._backend is None:  # bind to the event loop of the first request
            self._backend, self._pool.on_asyncio = backend_for_current_loop()
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            if not scheme:
                raise httpx.UnsupportedProtocol(
                    "Request URL is missing an 'http://' or 'https://' protocol.",
                    request=request,
                )
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
        origin: Origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        headers = request.headers.raw
        target = url.raw_path
        proxy = self._proxy
        if proxy is not None and scheme == b"http":
            purl = proxy.url
            origin = (_FORWARD + purl.raw_scheme, purl.raw_host, purl.port or 80)
            target = _absolute_target(url)
            headers = headers + self._proxy_headers()

        ext = request.extensions
        timeouts = ext.get("timeout") or {}
        flow = current_flow.get()
        new = bool(ext.get("new_connection"))
        pin = None if new else ext.get("conn_id")
        explicit = pin is not None
        # An auth flow pins its own legs (AUTH_LEG_PIN): the caller asked for no connection,
        # so one that is gone is no news for WARNING (the flow restarts, or says why not).
        level = logging.DEBUG if explicit and ext.get(AUTH_LEG_PIN) else logging.WARNING
        if not explicit and not new and flow is not None and flow.reserved is not None:
            if flow.reserved.origin == origin:
                pin = flow.reserved.conn_id
        identity = ext.get("identity")
        sni = ext.get("sni_hostname") if scheme == b"https" else None
        pool = self._get_pool()
        body: bytes | typing.AsyncIterable[bytes] | None = None
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):  # in memory: sent with the head, one write
            body = b"".join(stream) or None
        elif request.headers.get("content-length", "0") != "0" or (
            "transfer-encoding" in request.headers
        ):
            body = typing.cast(typing.AsyncIterable[bytes], stream)

        method = request.method.encode()
        retry = True
        while True:
            try:
                conn, tagged = await pool.acquire(
                    origin, identity, pin, explicit, new, flow, timeouts, level, sni
                )
            except _MAPPED as exc:
                raise _map_error(exc, request) from exc
            if ext.get("reserve"):
                pool.reserve(conn)
            reused = conn.requests > 0
            send_headers = headers
            added: tuple[str, ...] = ()
            before_send = ext.get("before_send")
            # A hook that acts only on connections not yet tagged with the request's
            # identity says so (``untagged_only``): on the others it is not even called.
            if before_send is not None and not (
                tagged and getattr(before_send, "untagged_only", False)
            ):
                try:
                    extra = before_send(request, ConnectionFacts(conn.conn_id, tagged, conn.stream))
                except BaseException:
                    conn.done(True)  # nothing was sent: the connection is as it was
                    raise
                if extra:
                    send_headers = headers + extra
                    added = tuple(name.decode("latin-1").lower() for name, _ in extra)
            try:
                try:
                    head = await conn.send(method, target, send_headers, body, timeouts)
                except _MAPPED as exc:
                    raise _map_error(exc, request) from exc
            except BaseException as exc:
                conn.done(False)
                await conn.aclose()
                if retry and reused and _is_stale(exc, conn, method) and _replayable(request, body):
                    # An idle keep-alive connection the server closed as we reused it:
                    # nothing was processed, so send once more on another connection. For a
                    # pinned request that connection is gone, as if closed before we chose it.
                    if explicit:
                        logger.log(
                            level,
                            "conn_id %s was requested but it was closed by the server; "
                            "sending on another connection",
                            conn.conn_id,
                        )
                    else:
                        logger.debug("connection %s was stale; retrying once", conn.conn_id)
                    retry = explicit = False
                    pin = None
                    continue
                raise
            break
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_ResponseStream(conn, request, timeouts.get("read")),
            extensions={
                "http_version": head.http_version,
                "reason_phrase": head.reason,
                "network_stream": conn.stream,
                "conn_id": conn.conn_id,
                "conn_tagged": tagged,
                "conn_requests": conn.requests,
                "before_send_headers": added,
            },
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    # -- connections ---------------------------------------------------------------------------
    def _proxy_headers(self) -> list[tuple[bytes, bytes]]:
        assert self._proxy is not None
        headers = list(self._proxy.headers.raw)
        auth = self._proxy.raw_auth
        if auth is not None and "proxy-authorization" not in self._proxy.headers:
            token = base64.b64encode(auth[0] + b":" + auth[1])
            headers.append((b"Proxy-Authorization", b"Basic " + token))
        return headers

    async def _connect(
        self, host: str, port: int, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        assert self._backend is not None
        delays = [0.5 * 2**n for n in range(self._retries)]
        while True:
            try:
                if self._uds is not None:
                    return await self._backend.connect_unix_socket(
                        self._uds, timeout, self._socket_options
                    )
                return await self._backend.connect_tcp(
                    host, port, timeout, self._local_address, self._socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if not delays:
                    raise
                await self._backend.sleep(delays.pop(0))

    async def _open(
        self, conn_id: str, origin: Origin, timeout: float | None, sni: str | None = None
    ) -> Connection:
        scheme, raw_host, port = origin
        server_name = sni or raw_host.decode("ascii")  # httpx's sni_hostname extension
        proxy = self._proxy
        if proxy is not None:
            purl = proxy.url
            stream = await self._connect(purl.host, purl.port or 80, timeout)
            if purl.scheme == "https":
                ctx = proxy.ssl_context or self._ssl_context
                stream = await stream.start_tls(ctx, purl.host, timeout)
            if scheme == b"https":
                stream = await self._tunnel(stream, raw_host, port, timeout)
        else:
            stream = await self._connect(raw_host.decode("ascii"), port, timeout)
        if scheme == b"https":
            stream = await stream.start_tls(self._ssl_context, server_name, timeout)
        conn = Connection(conn_id, origin, stream)
        if isinstance(stream, AsyncioStream):
            pool = self._pool
            stream.on_lost = lambda: pool.on_lost(conn)
        return conn

    async def _tunnel(
        self, stream: httpcore.AsyncNetworkStream, host: bytes, port: int, timeout: float | None
    ) -> httpcore.AsyncNetworkStream:
        authority = b"%s:%d" % (host, port)
        conn = h11.Connection(our_role=h11.CLIENT)
        headers = [(b"Host", authority), *self._proxy_headers()]
        data = conn.send(h11.Request(method=b"CONNECT", target=authority, headers=headers))
        try:
            await stream.write((data or b"") + (conn.send(h11.EndOfMessage()) or b""), timeout)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.read(65536, timeout))
                    continue
                if isinstance(event, h11.Response):
                    break
        except h11.RemoteProtocolError as exc:
            await stream.aclose()
            raise httpcore.ProxyError(f"the proxy answered CONNECT badly: {exc}") from exc
        if not 200 <= event.status_code < 300:
            await stream.aclose()
            raise httpcore.ProxyError(
                f"the proxy refused CONNECT {authority.decode()}: {event.status_code} "
                f"{event.reason.decode('latin-1')}"
            )
        return stream


class ConnectionFacts(typing.NamedTuple):
    """What a ``before_send`` hook learns of the connection chosen for its request."""

    #: The connection's id (as ``response.extensions["conn_id"]`` will be).
    conn_id: str
    #: The connection already carried this request's ``identity`` (see docs/internals.md).
    tagged: bool
    #: The connection's ``httpcore.AsyncNetworkStream`` (TLS details for channel bindings).
    network_stream: httpcore.AsyncNetworkStream


def _absolute_target(url: httpx.URL) -> bytes:
    """The absolute-form request target a forwarding proxy needs (no userinfo, no fragment)."""
    return url.raw_scheme + b"://" + url.netloc + url.raw_path


_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])


def _is_stale(exc: BaseException, conn: Connection, method: bytes) -> bool:
    """A reused connection failed before a single byte of the response arrived.

    That is the signature of a keep-alive connection the server closed as we reused it
    (the request was not processed); only idempotent requests are sent again.
    """
    return (
        isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
        and not conn.received_response_bytes
        and method in _IDEMPOTENT
    )


def _replayable(request: httpx.Request, body: object) -> bool:
    return body is None or isinstance(body, bytes)


class _ResponseStream(httpx.AsyncByteStream):
    """A response body that gives its connection back when read to the end or closed."""

    __slots__ = ("_conn", "_request", "_timeout", "_finished")

    def __init__(self, conn: Connection, request: httpx.Request, timeout: float | None) -> None:
        self._conn = conn
        self._request = request
        self._timeout = timeout
        self._finished = False

    def __aiter__(self) -> typing.AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        try:
            chunk = await self._conn.read_body(self._timeout)
        except BaseException as exc:
            self._finished = True
            self._conn.done(False)
            await self._conn.aclose()
            if isinstance(exc, _MAPPED):
                raise _map_error(exc, self._request) from exc
            raise
        if chunk is None:
            self._finished = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            self._conn.done(False)
            await self._conn.aclose()
