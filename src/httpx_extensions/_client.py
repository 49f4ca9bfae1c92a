"""ExClient: httpx.AsyncClient over our pool, with flows that keep their connection.

Theory of operation
-------------------
Each ``send()`` opens a *flow* (a context variable read by our transport). While the flow
lasts, the connection that served its last leg stays reserved for it, and the next leg (an
auth round trip of *any* ``httpx.Auth``, or a redirect) is pinned there. The flow ends when
``send()`` returns, or for ``stream=True`` when the response is closed; on any exception or
cancellation it ends at once. Beyond ``max_connections`` flows of one pool, a ``send()``
waits for its turn before going down httpx's call chain (``_admission``: FIFO, counted as
pool waiting), so a deep queue costs little memory and no garbage-collector time. Nothing
else of httpx's behaviour changes.

httpx internals touched, all here and checked by ``tests/test_httpx_private_api.py``:
``AsyncClient._init_transport`` and ``AsyncClient._init_proxy_transport`` (to build our
transport where httpx would build its own), ``BaseClient._merge_url`` (to parse each URL
string once, keyed by the ``_base_url`` attribute), ``BaseClient._transport_for_url`` (to
hold a flow at its pool's admission, see ``_admission``), and the ``_cookies`` attribute
behind the public ``cookies`` property (to skip the cookie jar for responses that set no
cookie).
"""

from __future__ import annotations

import logging
import ssl
import time
import typing

import httpx
from httpx._client import USE_CLIENT_DEFAULT, UseClientDefault  # re-exported names of httpx

from ._exceptions import HTTP2NotSupportedError
from ._pool import Flow, PoolState, current_flow
from ._transport import DEFAULT_LIMITS, ExTransport

__all__ = ["ExClient"]

logger = logging.getLogger("httpx_extensions")

_HTTP2_MESSAGE = (
    "ExClient speaks HTTP/1.1 only: NTLM and Negotiate authenticate one TCP connection "
    "carrying one request at a time, which HTTP/2 multiplexing breaks. Drop http2=True."
)


_URL_CACHE_SIZE = 256


class ExClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose connections can be pinned, reserved and identity-bound.

    Takes exactly the arguments of ``httpx.AsyncClient`` and behaves the same, except:

    * every response from its own pool carries ``response.extensions["conn_id"]``;
    * ``request.extensions["conn_id"]`` sends a request on that connection;
    * the legs of one ``send()`` (auth, redirects) stay on one reserved connection;
    * ``http2=True`` is refused;
    * the ``trace`` request extension is not called (``sni_hostname`` and ``timeout`` work).

    A ``transport=`` or ``mounts=`` you give is used as given (its responses have no
    ``conn_id`` unless it is an :class:`ExTransport`).

    Raises:
        HTTP2NotSupportedError: ``http2=True``; create the client without it.
        ValueError: ``Limits`` that disable keep-alive; raise ``keepalive_expiry`` and
            ``max_keepalive_connections`` above 0.
    """

    def __init__(self, **kwargs: typing.Any) -> None:
        if kwargs.get("http2"):
            raise HTTP2NotSupportedError(_HTTP2_MESSAGE)
        self._merged_urls: dict[str, tuple[httpx.URL, httpx.URL]] = {}
        super().__init__(**kwargs)
        self.cookies = self.cookies  # through our setter: see _Cookies

    @property
    def cookies(self) -> httpx.Cookies:
        """Cookie values to include when sending requests (as ``httpx.AsyncClient``)."""
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        self._cookies = _Cookies(cookies)

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        # httpx parses a URL string on every request (about a tenth of a request's CPU).
        # httpx.URL is immutable, so requests for the same string under the same base_url
        # share one parsed URL. Bounded; keyed by the base_url object, which the base_url
        # setter replaces.
        if not isinstance(url, str):
            return super()._merge_url(url)
        base = self._base_url
        hit = self._merged_urls.get(url)
        if hit is not None and hit[0] is base:
            return hit[1]
        merged = super()._merge_url(url)
        cache = self._merged_urls
        if len(cache) >= _URL_CACHE_SIZE:
            cache.pop(next(iter(cache)), None)
        cache[url] = (base, merged)
        return merged

    # -- where httpx builds its transports (private httpx API, pinned <0.29) ------------------
    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return ExTransport(
            verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2, limits=limits
        )

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> httpx.AsyncBaseTransport:
        if proxy.url.scheme not in ("http", "https"):
            logger.debug("SOCKS proxy: using httpx's own transport (no conn_id)")
            return super()._init_proxy_transport(
                proxy,
                verify=verify,
                cert=cert,
                trust_env=trust_env,
                http1=http1,
                http2=http2,
                limits=limits,
            )
        return ExTransport(
            verify=verify,
            cert=cert,
            trust_env=trust_env,
            http1=http1,
            http2=http2,
            limits=limits,
            proxy=proxy,
        )

    # -- flows ---------------------------------------------------------------------------------
    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: httpx._types.AuthTypes | UseClientDefault | None = USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send a request as httpx does, keeping every leg of its flow on one connection.

        See ``httpx.AsyncClient.send``; the connection reserved for the flow is released when
        this returns, or, with ``stream=True``, when the response is closed.
        """
        admission, waited = None, 0.0
        outer = current_flow.get()
        if (
            (outer is None or not outer.active)  # not nested in a send of this task
            and not self.is_closed  # (httpx raises for that)
            and "conn_id" not in request.extensions  # a pin needs no new capacity
        ):
            transport = self._transport_for_url(request.url)
            if isinstance(transport, ExTransport):
                admission, on_asyncio = transport.admission()
                if admission is not None and not admission.enter_nowait():
                    # httpx sets the client's timeout on the request only inside send().
                    timeouts = request.extensions.get("timeout") or self.timeout.as_dict()
                    started = time.monotonic()
                    await admission.enter(timeouts.get("pool"), on_asyncio, request)
                    waited = time.monotonic() - started
        flow = Flow(admission, waited)
        token = current_flow.set(flow)
        try:
            response = await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        except BaseException:
            flow.end()
            raise
        finally:
            current_flow.reset(token)
        if stream and not response.is_closed:
            response.stream = _FlowEndingStream(response.stream, flow)
        else:
            flow.end()
            _unlink_closed(response)
        return response

    # -- pool API ------------------------------------------------------------------------------
    def _ex_transports(self) -> list[ExTransport]:
        transports = [self._transport, *self._mounts.values()]
        return [t for t in transports if isinstance(t, ExTransport)]

    async def release(self, conn_id: str) -> bool:
        """End any reservation of the connection ``conn_id``.

        Returns:
            True if this client had that connection open, False if it is gone (then there
            is nothing to release).
        """
        return any(t.release(conn_id) for t in self._ex_transports())

    def pool_state(self) -> PoolState:
        """Counts of active, idle, reserved and connecting connections and queued requests,
        summed over this client's own pools."""
        states = [t.pool_state() for t in self._ex_transports()]
        return PoolState(
            active=sum(s.active for s in states),
            idle=sum(s.idle for s in states),
            reserved=sum(s.reserved for s in states),
            connecting=sum(s.connecting for s in states),
            queued=sum(s.queued for s in states),
            max_connections=sum(s.max_connections for s in states),
        )

    def __repr__(self) -> str:
        return f"<ExClient {self.pool_state()}>"


class _Cookies(httpx.Cookies):
    """``httpx.Cookies`` that skips the cookie jar when a response sets no cookie.

    ``http.cookiejar`` builds an ``email.message.Message`` of every response's headers just to
    look for ``Set-Cookie``: about 15 % of a request's CPU in our profile. The jar reads only
    ``Set-Cookie`` and ``Set-Cookie2``, so skipping responses without them changes nothing.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


#: What a closed response's ``stream`` becomes: httpx never reads it again (``aread`` returns
#: the content, ``aiter_raw`` raises ``StreamConsumed``, ``aclose`` does nothing).
_CLOSED_STREAM = httpx.ByteStream(b"")


def _unlink_closed(response: httpx.Response) -> None:
    """Break the reference cycle httpx leaves in a closed response.

    httpx wraps every response's stream as ``BoundAsyncStream(stream, response=response)``,
    so each response (with its request, headers and extensions: about 30 objects) is freed
    only by the garbage collector. At thousands of requests per second those cycles were
    most of our GC time. Closed responses never use their stream again, so we drop it.
    """
    for item in (response, *response.history):
        if item.is_closed:
            item.stream = _CLOSED_STREAM


class _FlowEndingStream(httpx.AsyncByteStream):
    """Ends a streamed response's flow when the response is closed (and drops the inner
    stream then: see :func:`_unlink_closed`)."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, flow: Flow) -> None:
        self._inner = typing.cast(httpx.AsyncByteStream, inner)
        self._flow = flow

    def __aiter__(self) -> typing.AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._inner = _CLOSED_STREAM
            self._flow.end()
