"""Bounded HTTP/1.1 wire handling for the fault server: read requests, write raw bytes.

Theory of operation: a `Wire` owns one accepted socket. Every read has a deadline and a
size cap, every wait polls the server's stop event every `POLL_SECONDS`, so a connection
thread always ends within that poll once the server stops. Responses are built as plain
bytes so that faults can send any prefix of them, or bytes no real server would send.

This module knows nothing of faults, authentication or counters.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

POLL_SECONDS = 0.05
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
_RECV_SIZE = 64 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
}

Headers = list[tuple[str, str]]


class ConnectionDone(Exception):
    """The peer closed, a deadline passed or the server is stopping: close the connection."""


class PeerClosed(ConnectionDone):
    """The peer closed or reset the connection."""


class BadRequest(ConnectionDone):
    """The peer sent bytes that are not an HTTP/1.1 request: answer 400 and close."""


@dataclass(frozen=True)
class Request:
    """One parsed request; header names keep their case, lookups ignore it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """Return the first value of header `name`, or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        """Whether the client allows the connection to carry another request."""
        tokens = {t.strip().lower() for t in (self.header("Connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def build_response(status: int, headers: Headers, body: bytes = b"", reason: str = "") -> bytes:
    """Serialise a response; `Content-Length` is added unless `headers` already has one."""
    lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Wire:
    """One server-side socket: bounded reads of requests, bounded writes of raw bytes."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self._sock = sock
        self._stop = stop
        self._buf = bytearray()
        self._closed = False
        sock.settimeout(POLL_SECONDS)

    # -- reading --------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        """Append at least one received byte to the buffer, or raise ConnectionDone."""
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except socket.timeout:
                continue
            except OSError as exc:
                raise PeerClosed(f"recv failed: {exc!r}") from exc
            if not data:
                raise PeerClosed("peer closed")
            self._buf += data
            return
        raise ConnectionDone("server stopping" if self._stop.is_set() else "read timed out")

    def _take_until(self, sep: bytes, limit: int, deadline: float) -> bytes:
        while True:
            at = self._buf.find(sep)
            if at >= 0:
                data = bytes(self._buf[:at])
                del self._buf[: at + len(sep)]
                return data
            if len(self._buf) > limit:
                raise BadRequest("line or header block too long")
            self._fill(deadline)

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self._buf) < size:
            self._fill(deadline)
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read_request(self, timeout: float) -> Request:
        """Read one whole request (head and body) within `timeout` seconds.

        Raises:
            BadRequest: the bytes are not a request; answer 400 and close.
            ConnectionDone: peer gone, timeout or stop; close without answering.
        """
        deadline = time.monotonic() + timeout
        head = self._take_until(b"\r\n\r\n", MAX_HEADER_BYTES, deadline)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(f"bad request line {lines[0]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        request = Request(parts[0], parts[1], parts[2], tuple(headers), b"")
        if (request.header("Expect") or "").lower() == "100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n", 1.0)
        body = self._read_body(request, deadline)
        return Request(request.method, request.target, request.version, request.headers, body)

    def _read_body(self, request: Request, deadline: float) -> bytes:
        if "chunked" in (request.header("Transfer-Encoding") or "").lower():
            return self._read_chunked(deadline)
        length_text = request.header("Content-Length")
        if length_text is None:
            return b""
        if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
            raise BadRequest(f"bad Content-Length {length_text!r}")
        return self._take(int(length_text), deadline)

    def _read_chunked(self, deadline: float) -> bytes:
        body = bytearray()
        while len(body) <= MAX_BODY_BYTES:
            size_text = self._take_until(b"\r\n", 1024, deadline).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {size_text!r}") from None
            if size == 0:
                while self._take_until(b"\r\n", MAX_HEADER_BYTES, deadline):
                    pass  # trailer fields, bounded by the deadline
                return bytes(body)
            body += self._take(size, deadline)
            if self._take(2, deadline) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
        raise BadRequest("chunked body too large")

    def wait_for_peer_close(self, timeout: float) -> bool:
        """Discard input until the peer closes; True if it did within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._buf.clear()
                self._fill(deadline)
        except PeerClosed:
            return True
        except ConnectionDone:
            return False

    def sleep(self, seconds: float) -> bool:
        """Sleep without reading; False if the server began stopping meanwhile."""
        return not self._stop.wait(seconds)

    # -- writing and closing ----------------------------------------------------------

    def send(self, data: bytes, timeout: float) -> bool:
        """Send all of `data` within `timeout`; False if the peer or the deadline broke it."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view and not self._stop.is_set() and time.monotonic() < deadline:
            try:
                sent = self._sock.send(view)
            except socket.timeout:
                continue
            except OSError:
                return False
            view = view[sent:]
        return not view

    def reset(self) -> None:
        """Abort with a TCP RST: SO_LINGER on with a zero timeout, then close."""
        if self._closed:
            return
        time.sleep(0.01)  # let loopback deliver what was sent before the RST overtakes it
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._closed = True
        self._sock.close()

    def close(self) -> None:
        """Close gracefully: FIN after everything sent, then release the socket."""
        if self._closed:
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._closed = True
        self._sock.close()
