"""Plain-socket helpers shared by the fault server's own tests."""

from __future__ import annotations

import socket

from ._server import FaultServer


def request_bytes(path: str, **headers: str) -> bytes:
    """A GET for `path` with a Host header and `headers` (underscores become dashes)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(
    srv: FaultServer, data: bytes, timeout: float = 3.0
) -> tuple[bytes, BaseException | None]:
    """Send `data` on a new connection, read until EOF or an error; return both.

    Returns:
        Everything received, and the exception that ended reading (None for a clean EOF).
    """
    received = bytearray()
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            for _ in range(100_000):  # bounded: 100k reads of up to 64 KiB
                chunk = sock.recv(65536)
                if not chunk:
                    return bytes(received), None
                received += chunk
        except OSError as exc:
            return bytes(received), exc
    raise AssertionError("exchange: the server never stopped sending")
