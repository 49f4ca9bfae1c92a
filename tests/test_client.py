"""ExClient as a drop-in httpx.AsyncClient: construction, conn_id, errors, custom transports."""

from __future__ import annotations

import typing

import httpx
import pytest

import httpx_extensions
from httpx_extensions import ExClient, ExTransport, HTTP2NotSupportedError
from tests._portserver import PortServer

pytestmark = pytest.mark.anyio


async def test_get_carries_conn_id(port_server: PortServer) -> None:
    """A response from our pool names its connection; reuse keeps the same id."""
    async with ExClient() as client:
        r1 = await client.get(port_server.url + "/")
        r2 = await client.get(port_server.url + "/")
    assert r1.status_code == 200
    assert r1.extensions["conn_id"] == r2.extensions["conn_id"]
    assert r1.json()["port"] == r2.json()["port"]
    assert r2.extensions["conn_requests"] == 2
    assert r1.extensions["http_version"] == b"HTTP/1.1"
    assert r1.extensions["reason_phrase"] == b"OK"


async def test_conn_ids_never_reused(port_server: PortServer) -> None:
    """A closed connection's id is not given to the next one."""
    seen = set()
    async with ExClient() as client:
        for _ in range(5):
            r = await client.get(port_server.url + "/close")
            seen.add(r.extensions["conn_id"])
    assert len(seen) == 5


def test_http2_refused() -> None:
    """http2=True fails at once, with an error httpx users catch as ValueError."""
    with pytest.raises(HTTP2NotSupportedError, match="HTTP/1.1"):
        ExClient(http2=True)
    assert issubclass(HTTP2NotSupportedError, ValueError)


@pytest.mark.parametrize(
    "limits",
    [httpx.Limits(keepalive_expiry=0), httpx.Limits(max_keepalive_connections=0)],
)
def test_limits_without_keepalive_refused(limits: httpx.Limits) -> None:
    """Limits that forbid keep-alive make pinning meaningless: refused with a reason."""
    with pytest.raises(ValueError, match="keep-alive"):
        ExClient(limits=limits)


async def test_custom_transport_used_as_given() -> None:
    """A caller's own transport is used unchanged (and its responses have no conn_id)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    async with ExClient(transport=transport) as client:
        r = await client.get("http://example.invalid/")
    assert r.status_code == 204
    assert "conn_id" not in r.extensions


async def test_explicit_extransport(port_server: PortServer) -> None:
    """An ExTransport given by the caller still tags responses and keeps flows."""
    async with ExClient(transport=ExTransport(retries=1)) as client:
        r = await client.get(port_server.url + "/")
    assert r.extensions["conn_id"].startswith("conn-")


async def test_unsupported_scheme() -> None:
    """Non-HTTP schemes fail as httpx's do."""
    async with ExClient() as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://example.invalid/")


async def test_connect_error_is_httpx_error() -> None:
    """A refused connection raises httpx.ConnectError and leaves the pool empty."""
    async with ExClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:1/")
        assert client.pool_state().connections == 0


async def test_pool_state_and_repr(port_server: PortServer) -> None:
    """pool_state counts connections by state; repr shows the counts."""
    async with ExClient() as client:
        await client.get(port_server.url + "/")
        state = client.pool_state()
        assert (state.active, state.idle, state.reserved, state.queued) == (0, 1, 0, 0)
        assert "idle=1" in repr(client)


async def test_post_body_and_stream(port_server: PortServer) -> None:
    """Request bodies (bytes and streams) are sent; streamed responses iterate."""

    async def gen() -> typing.AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async with ExClient() as client:
        r = await client.post(port_server.url + "/", content=b"hello")
        assert r.status_code == 200
        r = await client.post(port_server.url + "/", content=gen())
        assert r.status_code == 200
        async with client.stream("GET", port_server.url + "/big?n=300000") as r:
            total = 0
            async for chunk in r.aiter_bytes():
                total += len(chunk)
        assert total == 300000
        assert client.pool_state().active == 0


def test_public_api_is_all() -> None:
    """Every public name is exported from the package itself, nothing else."""
    for name in httpx_extensions.__all__:
        assert hasattr(httpx_extensions, name)
    public_modules = [n for n in dir(httpx_extensions) if not n.startswith("_")]
    assert set(public_modules) - set(httpx_extensions.__all__) <= {"testing"}


async def test_stale_keepalive_connection_is_retried(port_server: PortServer) -> None:
    """A GET on a keep-alive connection the server silently dropped is sent again, once."""
    async with ExClient() as client:
        for _ in range(20):
            first = await client.get(port_server.url + "/drop")
            second = await client.get(port_server.url + "/")
            assert second.status_code == 200
            assert second.extensions["conn_id"] != first.extensions["conn_id"]
        assert client.pool_state().active == 0


async def test_post_on_dropped_connection_is_not_replayed(port_server: PortServer) -> None:
    """A POST is never sent twice: a dropped connection fails it or it goes on a fresh one."""
    async with ExClient() as client:
        for _ in range(20):
            await client.get(port_server.url + "/drop")
            try:
                r = await client.post(port_server.url + "/", content=b"x")
            except httpx.TransportError:
                continue
            assert r.status_code == 200


async def test_cookies_still_extracted() -> None:
    """Responses that set cookies still fill the client's jar; others leave it alone."""

    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/set":
            return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"})
        return httpx.Response(200, json={"cookie": request.headers.get("cookie")})

    async with ExClient(transport=httpx.MockTransport(app)) as client:
        await client.get("http://example.test/other")
        assert not client.cookies
        await client.get("http://example.test/set")
        assert client.cookies["session"] == "abc"
        r = await client.get("http://example.test/echo")
        assert r.json()["cookie"] == "session=abc"


async def test_a_closed_response_is_freed_without_the_garbage_collector(
    port_server: PortServer,
) -> None:
    """httpx leaves each response in a reference cycle (response -> BoundAsyncStream ->
    response); ExClient breaks it once the response is closed, so a response, its request
    and its history are freed when the caller drops them, not at the next GC pass."""
    import gc
    import weakref

    async with ExClient() as client:
        gc.collect()
        gc.disable()
        try:
            response = await client.get(
                port_server.url + "/redirect", params={"to": "/"}, follow_redirects=True
            )
            assert response.history  # a redirect: the first response is closed as well
            refs = [weakref.ref(response), weakref.ref(response.request)]
            refs.append(weakref.ref(response.history[0]))
            content = response.content
            assert await response.aread() == content  # reading again: still the content
            with pytest.raises(httpx.StreamConsumed):  # as in httpx
                async for _ in response.aiter_raw():
                    pass
            del response
            assert [ref() for ref in refs] == [None, None, None]

            async with client.stream("GET", port_server.url + "/") as streamed:
                await streamed.aread()
            stream_ref = weakref.ref(streamed)
            del streamed
            assert stream_ref() is None
        finally:
            gc.enable()
