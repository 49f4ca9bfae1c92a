"""Network backends: a lean asyncio stream, and httpcore's anyio backend for everything else.

Theory of operation
-------------------
Our connections speak to the network through httpcore's *public* stream interface
(``httpcore.AsyncNetworkStream``: ``read`` / ``write`` / ``aclose`` / ``start_tls`` /
``get_extra_info``), so any httpcore backend (including its mock backend for scripted-bytes
tests) can carry them.

On asyncio we use our own stream, built on ``asyncio.Protocol``:

* no per-call cancel scopes or locks: a timeout is one ``loop.call_later`` handle;
* liveness comes from the transport itself. ``connection_lost`` and ``eof_received`` flip a
  flag and call ``on_lost``, so the pool learns that an idle connection died when it happens,
  instead of polling every socket on every pass (httpcore's ``has_expired``).

On any other event loop (trio) we use ``httpcore.AnyIOBackend``; liveness of an idle
connection there is a zero-timeout poll of its socket, done only when the connection is taken
from the idle set.

This module must not know about HTTP, pools or authentication.
"""

from __future__ import annotations

import asyncio
import ssl
import typing

import httpcore

__all__ = ["AsyncioBackend", "backend_for_current_loop", "stream_is_alive"]

_READ_HIGH_WATER = 1 << 20  # pause reading when this much is buffered and unread


class AsyncioStream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """A network stream over an asyncio transport, with liveness reported by the transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._lost: BaseException | None = None
        self._closed = False
        self._gone = False  # connection_lost has run: the socket is really closed
        self._gone_waiter: asyncio.Future[None] | None = None
        #: Called once, from the event loop, when the peer closes or the connection breaks.
        self.on_lost: typing.Callable[[], None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _READ_HIGH_WATER and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        self._notify_lost()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        if self._gone_waiter is not None and not self._gone_waiter.done():
            self._gone_waiter.set_result(None)
        self._eof = True
        self._lost = exc
        self._closed = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._notify_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _notify_lost(self) -> None:
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    # -- httpcore.AsyncNetworkStream ------------------------------------------------------
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._buffer:
            if self._eof:
                if self._lost is not None:
                    raise httpcore.ReadError(str(self._lost) or type(self._lost).__name__)
                return b""
            await self._wait("_waiter", timeout, httpcore.ReadTimeout)
            if not self._buffer:
                if self._lost is not None:
                    raise httpcore.ReadError(str(self._lost) or type(self._lost).__name__)
                return b""
        if len(self._buffer) <= max_bytes:
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise httpcore.WriteError("the connection was closed before the request was sent")
        transport.write(buffer)
        if self._write_paused:
            await self._wait("_drain_waiter", timeout, httpcore.WriteTimeout)
            if self._closed:
                raise httpcore.WriteError("the connection was closed while sending")

    async def _wait(self, slot: str, timeout: float | None, timeout_exc: type[Exception]) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        setattr(self, slot, future)
        handle = (
            self._loop.call_later(timeout, _expire, future, timeout_exc)
            if timeout is not None
            else None
        )
        try:
            await future
        finally:
            setattr(self, slot, None)
            if handle is not None:
                handle.cancel()

    async def aclose(self) -> None:
        """Close, and wait (at most a second) until the socket is really closed."""
        self.close_nowait()
        if self._gone or self._transport is None:
            return
        if self._gone_waiter is None:
            self._gone_waiter = self._loop.create_future()
        await asyncio.wait([self._gone_waiter], timeout=1.0)

    def close_nowait(self) -> None:
        """Close at once; never blocks, safe to call twice."""
        self.on_lost = None
        if not self._closed:
            self._closed = True
            if self._transport is not None:
                self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert self._transport is not None
        try:
            transport = await self._loop.start_tls(
                self._transport,
                self,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except (TimeoutError, asyncio.TimeoutError) as exc:
            self.close_nowait()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            self.close_nowait()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # pragma: no cover - only on a closed loop
            raise httpcore.ConnectError("TLS upgrade failed: the event loop is closing")
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        transport = self._transport
        if info == "is_readable":
            # True when the peer sent data or closed while we were not reading: the
            # connection must not carry another request.
            return bool(self._buffer) or self._eof or self._closed
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return transport.get_extra_info(info)


def _expire(future: asyncio.Future[None], exc_type: type[Exception]) -> None:
    if not future.done():
        future.set_exception(exc_type("timed out"))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """An ``httpcore.AsyncNetworkBackend`` on plain asyncio transports and protocols."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        local_addr = None if local_address is None else (local_address, 0)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: stream, host, port, local_addr=local_addr),
                timeout,
            )
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _apply_socket_options(stream.get_extra_info("socket"), socket_options)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = AsyncioStream(loop)
        try:
            await asyncio.wait_for(loop.create_unix_connection(lambda: stream, path), timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectTimeout(f"connecting to {path} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _apply_socket_options(stream.get_extra_info("socket"), socket_options)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _apply_socket_options(
    sock: typing.Any, options: typing.Iterable[httpcore.SOCKET_OPTION] | None
) -> None:
    if sock is None or not options:
        return
    for option in options:
        sock.setsockopt(*option)


def backend_for_current_loop() -> tuple[httpcore.AsyncNetworkBackend, bool]:
    """Return the backend for the running event loop, and whether it is our asyncio one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return httpcore.AnyIOBackend(), False
    return AsyncioBackend(), True


def stream_is_alive(stream: httpcore.AsyncNetworkStream) -> bool:
    """Whether an idle stream can carry another request (no EOF, no unexpected bytes).

    Every httpcore stream answers ``is_readable`` (anyio's by a zero-timeout socket poll);
    ours answers it from what the transport told us.
    """
    return not stream.get_extra_info("is_readable")
