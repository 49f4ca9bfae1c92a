"""What the CLI may show of a request: redacted headers, masked URLs, handshake counting.

Theory of operation. Every header or URL the CLI prints goes through this module first:
token values of ``Authorization``, ``Proxy-Authorization``, ``WWW-Authenticate`` and
``Proxy-Authenticate`` are replaced by their length, cookies by ``[redacted]``, and a
password in a URL by ``***``. :class:`AuthCounter` is a request event hook that counts
auth round trips and handshakes (a handshake is a request carrying a token that *opens*
one: NTLM type 1, or a GSS-API initial token) without keeping any token.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable

import httpx

__all__ = [
    "AuthCounter",
    "is_initial_token",
    "mask_url",
    "redact_header",
    "request_lines",
    "response_lines",
]

_TOKEN_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"}
)
_SECRET_HEADERS = frozenset({"cookie", "set-cookie"})
_AUTH_HEADERS = ("authorization", "proxy-authorization")


def redact_header(name: str, value: str) -> str:
    """The value of header ``name`` as it may be printed: scheme kept, token replaced.

    ``Negotiate YIIB...`` becomes ``Negotiate [redacted 1234 chars]``; a bare challenge
    (``NTLM``) is shown as is; Basic credentials and cookies are always redacted.
    """
    lower = name.lower()
    if lower in _SECRET_HEADERS:
        return "[redacted]"
    if lower not in _TOKEN_HEADERS:
        return value
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return scheme
    if lower.endswith("authenticate") and "=" in rest and "," in rest:
        return f"{scheme} [parameters redacted]"
    return f"{scheme} [redacted {len(rest)} chars]"


def mask_url(url: str | httpx.URL) -> str:
    """``url`` with any password in its userinfo replaced by ``***``."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    if parsed.password:
        return str(parsed.copy_with(username=parsed.username, password="***"))
    return str(parsed)


def request_lines(request: httpx.Request) -> list[str]:
    """``> `` lines of a request line and its (redacted) headers, as ``curl -v`` prints."""
    target = request.url.raw_path.decode("ascii", "replace")
    lines = [f"> {request.method} {target} HTTP/1.1"]
    for name, value in request.headers.multi_items():
        lines.append(f"> {name}: {redact_header(name, value)}")
    return [*lines, ">"]


def response_lines(response: httpx.Response) -> list[str]:
    """``< `` lines of a status line and its (redacted) headers."""
    conn = response.extensions.get("conn_id")
    lines = [f"< {response.http_version} {response.status_code} {response.reason_phrase}"]
    for name, value in response.headers.multi_items():
        lines.append(f"< {name}: {redact_header(name, value)}")
    if conn is not None:
        lines.append(f"< (connection {conn})")
    return [*lines, "<"]


def is_initial_token(token: bytes) -> bool:
    """Whether ``token`` opens a handshake (NTLM type 1, SPNEGO or raw Kerberos initial token)."""
    if token.startswith(b"NTLMSSP\x00"):
        return token[8:12] == b"\x01\x00\x00\x00"
    return token[:1] == b"\x60"  # GSS-API InitialContextToken: [APPLICATION 0]


class AuthCounter:
    """A request event hook counting auth round trips and handshakes; keeps no token.

    Args:
        on_leg: called with ``True`` for a request opening a handshake, ``False`` for a
            later leg of one.
    """

    def __init__(self, on_leg: Callable[[bool], None]) -> None:
        self._on_leg = on_leg

    async def __call__(self, request: httpx.Request) -> None:
        for header in _AUTH_HEADERS:
            value = request.headers.get(header)
            if value:
                self._on_leg(_opens_handshake(value))
                return


def _opens_handshake(value: str) -> bool:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() not in ("negotiate", "ntlm", "kerberos"):
        return True  # Basic, Digest...: one round trip is the whole handshake
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return is_initial_token(raw)
