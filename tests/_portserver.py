"""A tiny loopback HTTP/1.1 server that answers each request with the client port it came from.

Paths:
  ``/``              200, JSON ``{"port", "index", "path", "auth"}``
  ``/leg``           like ``/``; a test auth flow uses it
  ``/redirect?to=U`` 302 to U
  ``/close``         200 with ``Connection: close``
  ``/drop``          200 that claims keep-alive, then the server closes the connection
  ``/slow?s=SECS``   sleeps, then 200
  ``/big?n=BYTES``   200 with an n-byte body
  ``/trickle?n=K``   200 with a K-chunk body, one chunk every 50 ms
  any path ``?close=1``: answer with ``Connection: close``
  any path ``?drop=1``: claim keep-alive, then close (as ``/drop``)
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
import typing
import urllib.parse


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        index = 0
        while not self.server.stopping:
            try:
                line = self.rfile.readline(65537)
            except OSError:
                return
            if not line:
                return
            headers: dict[str, str] = {}
            while True:
                h = self.rfile.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                self.rfile.read(length)
            index += 1
            parts = line.decode("latin-1").split(" ", 2)
            if len(parts) != 3:  # not HTTP (a TLS ClientHello, say): hang up, as servers do
                return
            method, target, _ = parts
            url = urllib.parse.urlsplit(target)
            query = dict(urllib.parse.parse_qsl(url.query))
            self.server.requests += 1
            status, extra, close = 200, [], False
            body = json.dumps(
                {
                    "port": self.client_address[1],
                    "index": index,
                    "path": url.path,
                    "auth": headers.get("authorization"),
                }
            ).encode()
            if url.path == "/redirect":
                status, extra = 302, [("Location", query["to"])]
            elif url.path in ("/close", "/drop"):
                close = True
            elif url.path == "/slow":
                time.sleep(float(query.get("s", "1")))
            elif url.path == "/big":
                body = b"x" * int(query.get("n", "1000000"))
            head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Found'}"]
            head += [f"{k}: {v}" for k, v in extra]
            head += [f"Content-Length: {len(body)}", "Content-Type: application/json"]
            close = close or query.get("close") == "1"
            if close and url.path != "/drop":  # ?close=1 included, as the module doc says
                head.append("Connection: close")
            close = close or query.get("drop") == "1"
            if url.path == "/trickle":
                if self._trickle(head, int(query.get("n", "20"))):
                    continue
                return
            payload = ("\r\n".join(head) + "\r\n\r\n").encode() + (
                b"" if method == "HEAD" else body
            )
            try:
                self.wfile.write(payload)
                self.wfile.flush()
            except OSError:
                return
            if close:
                return

    def _trickle(self, head: list[str], chunks: int) -> bool:
        head = [h for h in head if not h.startswith("Content-Length")]
        head.append("Transfer-Encoding: chunked")
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for _ in range(chunks):
                self.wfile.write(b"1\r\nx\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            return False
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    stopping = False
    requests = 0


class PortServer:
    """Run the server on 127.0.0.1, port 0, in a background thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://{host}:{self._server.server_address[1]}"

    @property
    def requests(self) -> int:
        return self._server.requests

    def __enter__(self) -> PortServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: typing.Any) -> None:
        self._server.stopping = True
        self._server.shutdown()
        self._server.server_close()
