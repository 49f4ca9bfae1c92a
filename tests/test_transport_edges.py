"""Edges of the transport, the asyncio stream and the pool that the main tests do not reach."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import ssl
import tempfile
import threading
import typing

import anyio
import httpx
import pytest
import trustme

from httpx_extensions import ExClient, ExTransport, HTTP2NotSupportedError
from tests._portserver import PortServer

pytestmark = pytest.mark.anyio


def _timeouts(read: float = 5.0) -> dict[str, typing.Any]:
    return {"timeout": {"connect": 5.0, "read": read, "write": 5.0, "pool": 5.0}}


def test_transport_refuses_http2_and_socks() -> None:
    """ExTransport itself refuses http2 and SOCKS proxies, saying what to use instead."""
    with pytest.raises(HTTP2NotSupportedError):
        ExTransport(http2=True)
    with pytest.raises(ValueError, match="SOCKS"):
        ExTransport(proxy="socks5://127.0.0.1:1080")


async def test_repr_and_connection_info(port_server: PortServer) -> None:
    """The transport's repr shows its pool; the pool lists each connection's state."""
    transport = ExTransport()
    async with ExClient(transport=transport) as client:
        r = await client.get(port_server.url + "/")
        assert "idle=1" in repr(transport)
        assert transport._pool.connection_info() == {r.extensions["conn_id"]: "idle"}


async def test_missing_host() -> None:
    """A URL without a host is an UnsupportedProtocol error."""
    transport = ExTransport()
    with pytest.raises(httpx.UnsupportedProtocol, match="host"):
        await transport.handle_async_request(httpx.Request("GET", "http:///x"))


async def test_closed_transport_refuses_requests(port_server: PortServer) -> None:
    """After aclose, a transport refuses new requests instead of reconnecting."""
    transport = ExTransport()
    r = await transport.handle_async_request(
        httpx.Request("GET", port_server.url + "/", extensions=_timeouts())
    )
    await r.aread()
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(
            httpx.Request("GET", port_server.url + "/", extensions=_timeouts())
        )


async def test_connect_retries() -> None:
    """retries= retries a refused connection with backoff, then raises ConnectError."""
    async with ExClient(transport=ExTransport(retries=1)) as client:
        with anyio.fail_after(5):
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:1/")


async def test_socket_options_and_extra_info(port_server: PortServer) -> None:
    """socket_options reach the socket; network_stream answers the usual extra-info keys."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    async with ExClient(transport=ExTransport(socket_options=options)) as client:
        r = await client.get(port_server.url + "/")
        stream = r.extensions["network_stream"]
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert stream.get_extra_info("server_addr")[1] == int(port_server.url.rsplit(":", 1)[1])
        assert stream.get_extra_info("client_addr")[1] == r.json()["port"]
        assert stream.get_extra_info("ssl_object") is None


async def test_tls_to_a_plain_server_is_connect_error(port_server: PortServer) -> None:
    """A TLS handshake with a server that does not speak TLS fails as httpx.ConnectError."""
    url = port_server.url.replace("http://", "https://") + "/"
    async with ExClient(verify=False, timeout=2.0) as client:
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
            await client.get(url)
        assert client.pool_state().connections == 0


async def test_large_bodies_both_ways(port_server: PortServer) -> None:
    """A 16 MB upload and a 3 MB download read late exercise flow control both ways."""
    async with ExClient() as client:
        r = await client.post(port_server.url + "/", content=b"x" * (16 << 20))
        assert r.status_code == 200
        async with client.stream("GET", port_server.url + "/big?n=3000000") as r:
            await anyio.sleep(0.3)  # let the socket buffer fill past the high-water mark
            total = 0
            async for chunk in r.aiter_raw():
                total += len(chunk)
        assert total == 3_000_000


async def test_read_timeout_mid_body(port_server: PortServer) -> None:
    """A body that stops arriving raises httpx.ReadTimeout and frees the connection."""
    async with ExClient(timeout=httpx.Timeout(5.0, read=0.01)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(port_server.url + "/trickle?n=5")
        assert client.pool_state().active == 0


async def test_cancel_mid_body(port_server: PortServer) -> None:
    """Cancelling while a body trickles in closes the connection and leaves nothing busy."""
    async with ExClient() as client:
        async with client.stream("GET", port_server.url + "/trickle?n=40") as r:
            with anyio.move_on_after(0.2):
                async for _ in r.aiter_raw():
                    pass
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)
        assert (await client.get(port_server.url + "/")).status_code == 200


async def test_client_closed_mid_stream(port_server: PortServer) -> None:
    """Closing the client under an open stream makes the stream fail, not hang."""
    client = ExClient()
    async with client.stream("GET", port_server.url + "/trickle?n=40") as r:
        await client.aclose()
        with pytest.raises(httpx.TransportError):
            async for _ in r.aiter_raw():
                pass


async def test_pin_rejections_warn(
    port_server: PortServer, port_server2: PortServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pin to another origin's or another identity's connection warns and goes elsewhere."""
    async with ExClient() as client:
        a = await client.get(port_server.url + "/", extensions={"identity": "alice"})
        cid = a.extensions["conn_id"]
        with caplog.at_level(logging.WARNING, logger="httpx_extensions"):
            other_origin = await client.get(port_server2.url + "/", extensions={"conn_id": cid})
            other_identity = await client.get(
                port_server.url + "/", extensions={"conn_id": cid, "identity": "bob"}
            )
        assert cid not in (
            other_origin.extensions["conn_id"],
            other_identity.extensions["conn_id"],
        )
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("another origin" in m for m in messages)
        assert any("another identity" in m for m in messages)


@pytest.mark.parametrize("close", ["close=1", "drop=1"])
async def test_pinned_waiter_sees_connection_close(port_server: PortServer, close: str) -> None:
    """A request waiting for a busy pinned connection that then closes goes elsewhere,
    whether the closing was announced (``Connection: close``: the pool wakes the waiter)
    or not (handed the connection, the write fails and the transport sends elsewhere)."""
    async with ExClient() as client:
        cid = (await client.get(port_server.url + "/")).extensions["conn_id"]
        results: list[httpx.Response] = []

        async def busy() -> None:
            url = port_server.url + "/slow?s=0.2&" + close
            results.append(await client.get(url, extensions={"conn_id": cid}))

        async def pinned() -> None:
            await anyio.sleep(0.05)
            results.append(await client.get(port_server.url + "/", extensions={"conn_id": cid}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            tg.start_soon(pinned)
        assert results[0].extensions["conn_id"] == cid
        assert results[1].extensions["conn_id"] != cid
        assert results[1].status_code == 200


async def test_release_of_a_flow_reservation(port_server: PortServer) -> None:
    """client.release() ends a reservation even while its flow is still going."""

    class ReleasesMidFlow(httpx.Auth):
        def __init__(self, client: ExClient) -> None:
            self.client = client
            self.released: list[bool] = []

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
            response = yield request
            await response.aread()
            self.released.append(await self.client.release(response.extensions["conn_id"]))
            yield request

    async with ExClient() as client:
        auth = ReleasesMidFlow(client)
        r = await client.get(port_server.url + "/", auth=auth)
        assert r.status_code == 200 and auth.released == [True]
        assert client.pool_state().reserved == 0


async def test_pool_timeout_of_pinned_waiter(port_server: PortServer) -> None:
    """A request pinned to a connection that stays busy hits the pool timeout, cleanly."""
    async with ExClient(timeout=httpx.Timeout(5.0, pool=0.1)) as client:
        cid = (await client.get(port_server.url + "/")).extensions["conn_id"]
        async with anyio.create_task_group() as tg:
            url = port_server.url + "/slow?s=0.4"
            tg.start_soon(lambda: client.get(url, extensions={"conn_id": cid}))
            await anyio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await client.get(port_server.url + "/", extensions={"conn_id": cid})
        assert client.pool_state().queued == 0


class _UnixHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nunix")


async def test_unix_domain_socket() -> None:
    """uds= sends requests over a Unix domain socket."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "http.sock")
        server = socketserver.ThreadingUnixStreamServer(path, _UnixHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            async with ExClient(transport=ExTransport(uds=path)) as client:
                r = await client.get("http://localhost/")
            assert r.text == "unix"
        finally:
            server.shutdown()
            server.server_close()


async def test_unix_socket_missing_is_connect_error() -> None:
    """A missing Unix socket path is httpx.ConnectError."""
    async with ExClient(transport=ExTransport(uds="/nonexistent/http.sock")) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://localhost/")


async def test_parsed_url_cache_follows_base_url(
    port_server: PortServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeated URL strings are parsed once, and a new base_url is never served stale."""
    import httpx._urls

    parses: list[str] = []
    real_urlparse = httpx._urls.urlparse

    def counting_urlparse(url: str = "", **kwargs: typing.Any) -> typing.Any:
        parses.append(url)
        return real_urlparse(url, **kwargs)

    monkeypatch.setattr(httpx._urls, "urlparse", counting_urlparse)
    async with ExClient(base_url=port_server.url + "/one/") as client:
        first = await client.get("x")
        again = await client.get("x")
        assert parses.count("x") == 1  # parsed once
        assert first.request.url == again.request.url
        assert first.json()["path"] == "/one/x"
        client.base_url = port_server.url + "/two/"
        moved = await client.get("x")
        assert moved.json()["path"] == "/two/x"
        assert str(moved.request.url) == port_server.url + "/two/x"
        # Params and URL objects bypass the cache and still merge as httpx does.
        r = await client.get("x", params={"a": "1"})
        assert r.request.url.query == b"a=1"
        assert (await client.get(httpx.URL(port_server.url + "/u"))).json()["path"] == "/u"
        for n in range(300):  # bounded: older entries are dropped
            client.build_request("GET", f"/p{n}")
        assert len(client._merged_urls) <= 256


async def test_request_event_cache_skips_credentials(port_server: PortServer) -> None:
    """Validated request heads are reused, but never kept when they carry credentials."""
    from httpx_extensions import _connection

    _connection._request_events.clear()
    async with ExClient() as client:
        await client.get(port_server.url + "/cached")
        await client.get(port_server.url + "/cached")
        await client.get(port_server.url + "/secret", headers={"Authorization": "Basic eA=="})
        await client.get(port_server.url + "/secret", headers={"Cookie": "c=v"})
    targets = [key[1] for key in _connection._request_events]
    assert targets == [b"/cached"]
    assert all(
        name.lower() not in (b"authorization", b"cookie")
        for key in _connection._request_events
        for name, _ in key[2]
    )
    for n in range(300):
        _connection._request_event(b"GET", b"/%d" % n, [(b"Host", b"h")])
    assert len(_connection._request_events) == 256
    assert (b"GET", b"/299", ((b"Host", b"h"),)) in _connection._request_events


class _SniServer:
    """An HTTPS server on 127.0.0.1 whose certificate names ``sni.test`` only; it records the
    server name (SNI) each TLS handshake asked for."""

    def __init__(self, ca: typing.Any) -> None:
        self.names: list[str | None] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("sni.test").configure_cert(context)
        names = self.names

        def record(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            names.append(name)

        context.sni_callback = record  # type: ignore[assignment]

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    with context.wrap_socket(self.request, server_side=True) as tls:
                        head = tls.makefile("rb")
                        while head.readline() not in (b"\r\n", b""):  # the request head
                            pass
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except (OSError, ssl.SSLError):
                    names.append("<handshake failed>")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def test_sni_hostname_extension_names_the_tls_server() -> None:
    """``extensions={"sni_hostname": ...}`` (httpx/httpcore's) sets the TLS server name of the
    connection opened for the request, and the certificate is checked against that name: a
    server reached by IP whose certificate names a host. Without it, the IP is checked, and
    fails, as in httpx."""
    ca = trustme.CA()
    server = _SniServer(ca)
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    try:
        async with ExClient(verify=verify, timeout=5.0) as client:
            response = await client.get(server.url, extensions={"sni_hostname": "sni.test"})
            assert response.status_code == 200 and response.text == "ok"
            assert server.names == ["sni.test"]
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.get(server.url, extensions={"new_connection": True})
    finally:
        server.close()
