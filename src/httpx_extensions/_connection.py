"""One HTTP/1.1 connection: framing by h11 over an ``httpcore.AsyncNetworkStream``.

Theory of operation
-------------------
A :class:`Connection` carries one request at a time. ``send()`` writes the request and
reads the response head; the body is then read through ``read_body()`` (driven by the
transport's response stream), which calls
``Connection.on_response_done(reusable)`` exactly once: at the end of the body (reusable if
h11 says both sides are ready for another cycle), or when the body is closed early or fails
(not reusable). The pool sets ``on_response_done``; this module knows nothing of pools,
identities or authentication.

Everything here raises httpcore's exceptions; the transport maps them to httpx's.
"""

from __future__ import annotations

import time
import typing

import anyio
import h11
import httpcore

from ._backends import AsyncioStream, stream_is_alive

__all__ = ["Connection", "Origin", "ResponseHead"]

_READ_SIZE = 64 * 1024
_EVENT_CACHE_SIZE = 256
_SECRET_HEADERS = frozenset([b"authorization", b"proxy-authorization", b"cookie"])
_request_events: dict[tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]], h11.Request] = {}

Origin = tuple[bytes, bytes, int]  # (scheme, host, port)


class ResponseHead(typing.NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    reason: bytes
    http_version: bytes


class Connection:
    """An HTTP/1.1 connection. Its pool-facing fields are plain attributes for speed."""

    __slots__ = (
        "conn_id",
        "origin",
        "stream",
        "_h11",
        "state",
        "tag",
        "flow",
        "explicit_reserve",
        "requests",
        "idle_since",
        "pinned_waiters",
        "on_response_done",
        "_pending",
        "_closed",
        "received_response_bytes",
    )

    def __init__(self, conn_id: str, origin: Origin, stream: httpcore.AsyncNetworkStream) -> None:
        self.conn_id = conn_id
        self.origin = origin
        self.stream = stream
        self._h11 = h11.Connection(our_role=h11.CLIENT)
        # Fields owned by the pool (see _pool.py): state, identity tag, owning flow, ...
        self.state = 0
        self.tag: typing.Hashable | None = None
        self.flow: typing.Any = None
        self.explicit_reserve = False
        self.requests = 0
        self.idle_since = time.monotonic()
        self.pinned_waiters: typing.Any = None
        self.on_response_done: typing.Callable[[Connection, bool], None] | None = None
        self._pending: list[h11.Event] = []
        self._closed = False
        #: Whether any byte of the current response has arrived (a stale-connection check).
        self.received_response_bytes = False

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} {self.origin[1].decode('ascii', 'replace')}>"

    def is_alive(self) -> bool:
        """Whether this idle connection may carry another request."""
        if self._h11.our_state is not h11.IDLE:
            return False
        return stream_is_alive(self.stream)

    async def send(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | typing.AsyncIterable[bytes] | None,
        timeouts: typing.Mapping[str, float | None],
    ) -> ResponseHead:
        """Write one request and read the response head.

        Raises:
            httpcore.WriteError, httpcore.ReadError, httpcore.RemoteProtocolError and their
            timeouts: the connection is then unusable; the caller must close it.
        """
        self.requests += 1
        self.received_response_bytes = False
        conn = self._h11
        write_timeout = timeouts.get("write")
        data = conn.send(_request_event(method, target, headers))
        assert data is not None
        try:
            if body is None or isinstance(body, bytes):
                # Head, body and end in one write (the common case: no or in-memory body).
                if body:
                    data += conn.send(h11.Data(data=body)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                await self.stream.write(data, write_timeout)
            else:
                await self.stream.write(data, write_timeout)
                await self._send_stream(body, write_timeout)
        except httpcore.WriteError:
            # The server may have answered early (a 401 before the body was read) and
            # closed: read that answer if there is one, else report the write failure.
            try:
                return await self._receive_head(timeouts.get("read"))
            except httpcore.ReadError:
                pass
            except httpcore.RemoteProtocolError:
                pass
            raise
        return await self._receive_head(timeouts.get("read"))

    async def _send_stream(
        self, body: typing.AsyncIterable[bytes], write_timeout: float | None
    ) -> None:
        iterator = body.__aiter__()
        try:
            async for chunk in iterator:
                if chunk:
                    data = self._h11.send(h11.Data(data=chunk))
                    await self.stream.write(data or b"", write_timeout)
        finally:
            # An async generator left half-way (a write failed) must be closed here, not
            # by the garbage collector (trio warns, and its cleanup would run too late).
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.stream.write(self._h11.send(h11.EndOfMessage()) or b"", write_timeout)

    async def _next_event(self, read_timeout: float | None, read_first: bool = False) -> h11.Event:
        conn = self._h11
        while True:
            if read_first:
                read_first = False
            else:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return typing.cast(h11.Event, event)
            data = await self.stream.read(_READ_SIZE, read_timeout)
            if data:
                self.received_response_bytes = True
            elif conn.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            conn.receive_data(data)

    async def _receive_head(self, read_timeout: float | None) -> ResponseHead:
        # h11 holds no received bytes yet (a connection is reused only with none left over,
        # see _cycle), so asking it for an event before the first read would be wasted.
        read_first = True
        try:
            while True:
                event = await self._next_event(read_timeout, read_first)
                read_first = False
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    break
        except h11.RemoteProtocolError as exc:
            raise httpcore.RemoteProtocolError(str(exc)) from exc
        # Pull whatever of the body is already buffered, without I/O: a small response
        # usually arrives whole, and its connection can then be released at once.
        pending = self._pending
        try:
            while True:
                nxt = self._h11.next_event()
                if nxt is h11.NEED_DATA or nxt is h11.PAUSED:
                    break
                pending.append(typing.cast(h11.Event, nxt))
                if isinstance(nxt, h11.EndOfMessage):
                    break
        except h11.RemoteProtocolError:
            pass  # reported when the body is read
        version = b"HTTP/" + event.http_version
        return ResponseHead(event.status_code, event.headers.raw_items(), event.reason, version)

    async def read_body(self, read_timeout: float | None) -> bytes | None:
        """Return the next body chunk, or None at the end of the body.

        At the end, h11 starts the next cycle if both sides allow it, and the connection is
        reported done (reusable or not) before this returns.
        """
        pending = self._pending
        try:
            while True:
                if pending:
                    event = pending.pop(0)
                else:
                    event = await self._next_event(read_timeout)
                if isinstance(event, h11.Data):
                    if event.data:
                        return bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # pragma: no cover - h11 yields only Data/EndOfMessage here
                    raise httpcore.RemoteProtocolError(f"unexpected event {type(event)}")
        except h11.RemoteProtocolError as exc:
            raise httpcore.RemoteProtocolError(str(exc)) from exc
        reusable = self._cycle()
        if not reusable:
            await self.aclose()
        self.done(reusable)
        return None

    def _cycle(self) -> bool:
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            # Bytes the server sent after the response, unasked: never let them pass as the
            # answer to the next request.
            return not conn.trailing_data[0]
        return False

    def done(self, reusable: bool) -> None:
        """Report the current exchange finished; a second call is a no-op."""
        callback, self.on_response_done = self.on_response_done, None
        if callback is None:
            return
        if not reusable:
            self.close_nowait()
        callback(self, reusable)

    def close_nowait(self) -> None:
        """Mark unusable and close the socket if that can be done without awaiting."""
        self._h11 = _CLOSED
        stream = self.stream
        if isinstance(stream, AsyncioStream):
            stream.close_nowait()

    async def aclose(self) -> None:
        """Close the socket (bounded, never cancelled half-way); a second call is a no-op."""
        self._h11 = _CLOSED
        stream = self.stream
        if isinstance(stream, AsyncioStream):
            await stream.aclose()  # cheap and idempotent
            return
        if self._closed:
            return
        self._closed = True

        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await stream.aclose()
            except Exception:  # pragma: no cover - best effort on a dying socket
                pass


def _request_event(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> h11.Request:
    """The h11 ``Request`` event for this head, validated once per distinct head.

    Building the event validates every header by regular expression: about a twentieth of a
    request's CPU. Events are immutable, so the same head (a client polling one URL, a
    connection reused by one identity) shares one. Heads carrying credentials or cookies are
    never kept; the cache is bounded, oldest entry out first.
    """
    key = (method, target, tuple(headers))
    event = _request_events.get(key)
    if event is not None:
        return event
    event = h11.Request(method=method, target=target, headers=headers)
    for name, _ in headers:
        if name.lower() in _SECRET_HEADERS:
            return event
    if len(_request_events) >= _EVENT_CACHE_SIZE:
        try:
            del _request_events[next(iter(_request_events))]
        except (KeyError, RuntimeError, StopIteration):  # pragma: no cover - another thread
            pass
    _request_events[key] = event
    return event


class _ClosedH11:
    """Stands in for the h11 state machine of a closed connection: any I/O on it fails."""

    our_state = h11.CLOSED
    their_state = h11.CLOSED
    trailing_data = (b"", True)

    def next_event(self) -> typing.NoReturn:
        raise httpcore.ReadError("the connection was closed (the client or pool was closed)")

    def send(self, event: object) -> typing.NoReturn:
        raise httpcore.WriteError("the connection was closed (the client or pool was closed)")


_CLOSED: typing.Any = _ClosedH11()
