"""The faults: what the server puts on the wire instead of a well-behaved answer.

Theory of operation: a fault replaces the answer to one request (the request itself has
been read in full). Each fault function gets the `Wire`, the request and a callable that
builds the normal answer, writes its bytes, and returns whether the connection may carry
another request. The server closes the connection when it returns False; faults that
reset or close do it themselves first.

This module does not choose faults nor count them: that is the server's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

from ._auth import fresh_challenge
from ._http import Request, Wire, build_response

FaultKind = Literal[
    "reset_headers",
    "reset_body",
    "close_after_401",
    "challenge_conn_close",
    "stall",
    "truncate_body",
    "bad_status_line",
    "bad_header",
    "endless_401",
    "accept_no_answer",
    "huge_header",
    "garbage_token",
    "empty_token",
    "unknown_scheme",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

UNAUTHORIZED_BODY = b'{"error": "unauthorized"}'
BAD_STATUS_LINE = b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\n{}"
BAD_HEADER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nthis line has no colon\r\n\r\n{}"


@dataclass(frozen=True)
class FaultSettings:
    """Tunables of the faults that wait or send a lot; all waits are bounded by these."""

    stall_seconds: float = 2.0
    hold_seconds: float = 5.0
    huge_header_bytes: int = 1024 * 1024
    send_timeout: float = 5.0


@dataclass(frozen=True)
class FaultContext:
    """Everything a fault needs: the wire, the request and the normal answer."""

    wire: Wire
    request: Request
    normal: Callable[[], tuple[bytes, bool]]  # (response bytes, keep-alive)
    settings: FaultSettings

    def send(self, data: bytes) -> bool:
        """Send `data` within the configured send timeout."""
        return self.wire.send(data, self.settings.send_timeout)


_BY_NAME: dict[str, FaultKind] = {kind: kind for kind in FAULT_KINDS}


def fault_kind(name: str) -> FaultKind | None:
    """Return `name` as a `FaultKind`, or None if no fault has that name."""
    return _BY_NAME.get(name)


def forced_name(path: str) -> str | None:
    """Return `<name>` from a `.../fault/<name>/...` path, or None if the path has no such pair."""
    segments = path.split("/")
    for at, segment in enumerate(segments[:-1]):
        if segment == "fault":
            return segments[at + 1]
    return None


def unauthorized(headers: list[tuple[str, str]], close: bool = False) -> bytes:
    """A 401 with a small JSON body, the given challenge headers, optionally `Connection: close`."""
    extra = [("Connection", "close")] if close else []
    return build_response(
        401, [("Content-Type", "application/json"), *headers, *extra], UNAUTHORIZED_BODY
    )


def _split(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _reset_headers(ctx: FaultContext) -> bool:
    head, _ = _split(ctx.normal()[0])
    ctx.send(head[: len(head) // 2])
    ctx.wire.reset()
    return False


def _reset_body(ctx: FaultContext) -> bool:
    head, body = _split(ctx.normal()[0])
    ctx.send(head + body[: len(body) // 2])
    ctx.wire.reset()
    return False


def _truncate_body(ctx: FaultContext) -> bool:
    head, body = _split(ctx.normal()[0])
    ctx.send(head + body[: len(body) // 2])
    ctx.wire.close()
    return False


def _challenge_then_close(ctx: FaultContext, close_header: bool) -> bool:
    ctx.send(unauthorized(fresh_challenge(ctx.request.header("Authorization")), close_header))
    ctx.wire.close()
    return False


def _stall(ctx: FaultContext) -> bool:
    if not ctx.wire.sleep(ctx.settings.stall_seconds):
        return False
    data, keep_alive = ctx.normal()
    return ctx.send(data) and keep_alive


def _accept_no_answer(ctx: FaultContext) -> bool:
    ctx.wire.wait_for_peer_close(ctx.settings.hold_seconds)
    return False


def _send_then_close(data: bytes) -> Callable[[FaultContext], bool]:
    def fault(ctx: FaultContext) -> bool:
        ctx.send(data)
        ctx.wire.close()
        return False

    return fault


def _huge_header(ctx: FaultContext) -> bool:
    data, keep_alive = ctx.normal()
    status_end = data.index(b"\r\n") + 2
    huge = b"X-Huge: " + b"a" * ctx.settings.huge_header_bytes + b"\r\n"
    return ctx.send(data[:status_end] + huge + data[status_end:]) and keep_alive


def _challenge(value: str | None) -> Callable[[FaultContext], bool]:
    """A keep-alive 401 whose only challenge is `WWW-Authenticate: value` (None: fresh type 2)."""

    def fault(ctx: FaultContext) -> bool:
        if value is None:
            headers = fresh_challenge(ctx.request.header("Authorization"))
        else:
            headers = [("WWW-Authenticate", value)]
        return ctx.send(unauthorized(headers)) and ctx.request.keep_alive

    return fault


FAULTS: dict[FaultKind, Callable[[FaultContext], bool]] = {
    "reset_headers": _reset_headers,
    "reset_body": _reset_body,
    "close_after_401": lambda ctx: _challenge_then_close(ctx, close_header=False),
    "challenge_conn_close": lambda ctx: _challenge_then_close(ctx, close_header=True),
    "stall": _stall,
    "truncate_body": _truncate_body,
    "bad_status_line": _send_then_close(BAD_STATUS_LINE),
    "bad_header": _send_then_close(BAD_HEADER),
    "endless_401": _challenge(None),
    "accept_no_answer": _accept_no_answer,
    "huge_header": _huge_header,
    "garbage_token": _challenge("NTLM !!!notbase64"),
    "empty_token": _challenge("NTLM "),
    "unknown_scheme": _challenge('Bearer realm="x"'),
}


def inject(kind: FaultKind, ctx: FaultContext) -> bool:
    """Answer `ctx.request` with fault `kind`; return whether the connection stays usable."""
    return FAULTS[kind](ctx)
