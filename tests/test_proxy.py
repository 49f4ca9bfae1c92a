"""Proxies through ExTransport: HTTP forwarding (absolute-form) and CONNECT tunnels for HTTPS."""

from __future__ import annotations

import base64
import select
import socket
import socketserver
import ssl
import threading
import typing

import httpx
import pytest
import trustme

from httpx_extensions import ExClient
from tests._portserver import PortServer

pytestmark = pytest.mark.anyio


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes or 5 s pass in silence."""
    while True:
        readable, _, _ = select.select([a, b], [], [], 5)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


class _ProxyHandler(socketserver.StreamRequestHandler):
    """Forward absolute-form requests to the origin; tunnel CONNECT; refuse port 1."""

    server: _Proxy

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            head = [line]
            while True:
                h = self.rfile.readline(65537)
                head.append(h)
                if h in (b"\r\n", b""):
                    break
            method, target, _ = line.decode().split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.decode().partition(":") for h in head[1:-1])
            }
            self.server.seen.append((method, target, headers.get("proxy-authorization")))
            if method == "CONNECT":
                self._tunnel(target)
                return
            self._forward(target, head)

    def _forward(self, target: str, head: list[bytes]) -> None:
        hostport = target.split("/", 3)[2]
        host, port = hostport.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as upstream:
            path = "/" + target.split("/", 3)[3]
            upstream.sendall(f"GET {path} HTTP/1.1\r\n".encode() + b"".join(head[1:]))
            data = b""
            while b"\r\n\r\n" not in data:
                data += upstream.recv(65536)
            header, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    h.split(b":")[1]
                    for h in header.split(b"\r\n")
                    if h.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += upstream.recv(65536)
        self.wfile.write(header + b"\r\n\r\n" + body)

    def _tunnel(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        if port == "1":
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection((host, int(port)))
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            _pipe(self.connection, upstream)
        finally:
            upstream.close()


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[tuple[str, str, str | None]] = []


@pytest.fixture
def proxy() -> typing.Iterator[_Proxy]:
    """A forwarding and tunnelling proxy on loopback."""
    server = _Proxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tls_origin() -> typing.Iterator[tuple[str, ssl.SSLContext]]:
    """A PortServer behind TLS (a trustme certificate for 127.0.0.1), and a client context."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with PortServer() as plain:
        port = int(plain.url.rsplit(":", 1)[1])
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def serve() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    raw, _ = listener.accept()
                except OSError:
                    continue
                threading.Thread(target=_relay, args=(raw, server_ctx, port), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", client_ctx
        stop.set()
        thread.join()
        listener.close()


def _relay(raw: socket.socket, ctx: ssl.SSLContext, port: int) -> None:
    try:
        tls = ctx.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    upstream = socket.create_connection(("127.0.0.1", port))
    try:
        _pipe(tls, upstream)
    except (OSError, ssl.SSLError):
        return
    finally:
        upstream.close()
        tls.close()


async def test_forward_proxy_absolute_form(proxy: _Proxy, port_server: PortServer) -> None:
    """http:// targets go to the proxy in absolute form, with Basic credentials from its URL."""
    proxy_url = f"http://user:pw@127.0.0.1:{proxy.server_address[1]}"
    async with ExClient(proxy=proxy_url) as client:
        r1 = await client.get(port_server.url + "/a?x=1")
        r2 = await client.get(port_server.url + "/b")
    assert r1.status_code == r2.status_code == 200
    assert r1.extensions["conn_id"] == r2.extensions["conn_id"]
    method, target, auth = proxy.seen[0]
    assert (method, target) == ("GET", port_server.url + "/a?x=1")
    assert auth == "Basic " + base64.b64encode(b"user:pw").decode()


async def test_connect_tunnel_for_https(
    proxy: _Proxy, tls_origin: tuple[str, ssl.SSLContext]
) -> None:
    """https:// targets go through a CONNECT tunnel; TLS is with the origin, end to end."""
    url, ctx = tls_origin
    async with ExClient(proxy=f"http://127.0.0.1:{proxy.server_address[1]}", verify=ctx) as client:
        r1 = await client.get(url + "/")
        r2 = await client.get(url + "/")
    assert r1.status_code == 200
    assert r1.extensions["conn_id"] == r2.extensions["conn_id"]
    assert r1.extensions["network_stream"].get_extra_info("ssl_object") is not None
    assert [s[:2] for s in proxy.seen] == [("CONNECT", url.removeprefix("https://"))]


async def test_connect_refused_is_proxy_error(proxy: _Proxy) -> None:
    """A proxy that refuses CONNECT gives httpx.ProxyError naming the status."""
    async with ExClient(proxy=f"http://127.0.0.1:{proxy.server_address[1]}") as client:
        with pytest.raises(httpx.ProxyError, match="403"):
            await client.get("https://127.0.0.1:1/")
        assert client.pool_state().connections == 0


def test_socks_proxy_uses_httpx_transport() -> None:
    """SOCKS proxies are left to httpx's own transport (no conn_id there)."""
    client = ExClient(proxy="socks5://127.0.0.1:1080")
    assert all(isinstance(t, httpx.AsyncHTTPTransport) for t in client._mounts.values())
