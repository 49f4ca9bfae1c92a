"""Fail loudly when the httpx internals ExClient relies on change shape.

ExClient overrides ``AsyncClient._init_transport`` and ``AsyncClient._init_proxy_transport``
(to build our pool where httpx builds its own) and ``BaseClient._merge_url`` (to parse each
URL string once), wraps the ``_cookies`` attribute, and imports ``USE_CLIENT_DEFAULT`` from
``httpx._client``; the auth fast path keys a cache on ``URL._uri_reference``. These are
private to httpx; we pin ``httpx>=0.28.1,<0.29``. If a test here fails after an httpx
upgrade, re-read httpx's ``AsyncClient.__init__`` (or ``URL``) and adapt
``src/httpx_extensions/_client.py`` (or ``_flow.py``) before widening the pin.
"""

from __future__ import annotations

import inspect

import httpx
import httpx._client

from httpx_extensions import ExClient, ExTransport


def test_httpx_version_is_pinned_range() -> None:
    """The installed httpx is the minor version our overrides were written for."""
    assert httpx.__version__.startswith("0.28."), httpx.__version__


def test_init_transport_signature() -> None:
    """httpx still builds its default transport through _init_transport(**these)."""
    params = list(inspect.signature(httpx.AsyncClient._init_transport).parameters)
    assert params == [
        "self",
        "verify",
        "cert",
        "trust_env",
        "http1",
        "http2",
        "limits",
        "transport",
    ]


def test_init_proxy_transport_signature() -> None:
    """httpx still builds proxy transports through _init_proxy_transport(**these)."""
    params = list(inspect.signature(httpx.AsyncClient._init_proxy_transport).parameters)
    assert params == ["self", "proxy", "verify", "cert", "trust_env", "http1", "http2", "limits"]


def test_init_calls_our_hooks() -> None:
    """AsyncClient.__init__ really calls both hooks (else our pool would silently vanish)."""
    source = inspect.getsource(httpx.AsyncClient.__init__)
    assert "self._init_transport(" in source
    assert "self._init_proxy_transport(" in source
    client = ExClient(proxy="http://127.0.0.1:3128")
    assert isinstance(client._transport, ExTransport)
    assert all(isinstance(t, ExTransport) for t in client._mounts.values())


def test_use_client_default_importable() -> None:
    """The sentinel ExClient.send passes through is where we import it from."""
    assert isinstance(httpx._client.USE_CLIENT_DEFAULT, httpx._client.UseClientDefault)


def test_send_is_the_single_entry_point() -> None:
    """Every request method of AsyncClient goes through send(), where ExClient opens flows."""
    assert "self.send(" in inspect.getsource(httpx.AsyncClient.request)
    assert "self.send(" in inspect.getsource(httpx.AsyncClient.stream)


def test_cookies_property_stores_private_attribute() -> None:
    """httpx keeps client cookies in ``_cookies``, which ExClient's cookie fast path wraps."""
    client = ExClient(cookies={"a": "1"})
    assert client._cookies is client.cookies
    assert type(client.cookies).__name__ == "_Cookies"
    client.cookies = {"b": "2"}
    assert type(client.cookies).__name__ == "_Cookies" and client.cookies["b"] == "2"
    source = inspect.getsource(httpx._client.BaseClient)
    assert "self._cookies = Cookies(cookies)" in source
    assert "self.cookies.extract_cookies(response)" in inspect.getsource(
        httpx.AsyncClient._send_single_request
    )


def test_merge_url_is_where_build_request_parses() -> None:
    """ExClient caches parsed URL strings in its ``_merge_url`` override, keyed by the
    ``_base_url`` attribute that the ``base_url`` setter replaces."""
    params = list(inspect.signature(httpx.AsyncClient._merge_url).parameters)
    assert params == ["self", "url"]
    assert "self._merge_url(url)" in inspect.getsource(httpx._client.BaseClient.build_request)
    setter = inspect.getsource(httpx._client.BaseClient.base_url.fset)  # type: ignore[union-attr]
    assert "self._base_url = " in setter
    assert "URL(url)" in inspect.getsource(httpx._client.BaseClient._merge_url)


def test_transport_for_url_routes_requests() -> None:
    """ExClient.send asks ``_transport_for_url`` which transport a request will use (to hold
    it at that pool's admission), and httpx's own send path asks the same method."""
    assert "self._transport_for_url(request.url)" in inspect.getsource(
        httpx.AsyncClient._send_single_request
    )
    plain = httpx.AsyncHTTPTransport()
    client = ExClient(mounts={"http://mounted.invalid": plain})
    assert client._transport_for_url(httpx.URL("http://mounted.invalid/x")) is plain
    assert isinstance(client._transport_for_url(httpx.URL("http://other.invalid/")), ExTransport)


def test_request_urls_share_the_parsed_reference() -> None:
    """The auth fast path (``FlowMixin._steady_start``) caches a request's origin by
    ``URL._uri_reference``: a request's URL is a copy of the URL it was built from, and
    httpx shares the parsed reference (a named tuple) between such copies. If this changes,
    the cache only misses (the origin is recomputed per request), so the fast path is
    slower, not wrong: adapt the cache key."""
    url = httpx.URL("http://example.com:8080/x")
    request = httpx.Request("GET", url)
    assert request.url is not url  # hence no cache keyed by the URL object
    assert request.url._uri_reference is url._uri_reference
    ref = url._uri_reference
    assert (ref.scheme, ref.host, ref.port) == ("http", "example.com", 8080)
    client = ExClient()
    assert client.build_request("GET", "http://example.com/a").url._uri_reference is (
        client.build_request("GET", "http://example.com/a").url._uri_reference
    )
