"""Connection-bound NTLM/Negotiate acceptor for the fault server, built on pyspnego.

Theory of operation: like IIS with Windows Authentication, the identity belongs to the TCP
connection. `ConnAuth` holds one in-progress acceptor and, once the handshake completes,
the user; later requests on that connection need no header. A new connection starts with
no user. Users come from the file named by `NTLM_USER_FILE` (pyspnego reads it), with lines
`DOMAIN:user:password` or `:user:password`; `write_user_file` writes one.

This module knows nothing of sockets, faults or paths.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import spnego

SCHEMES = ("Negotiate", "NTLM")
OFFERS: list[tuple[str, str]] = [("WWW-Authenticate", scheme) for scheme in SCHEMES]
_NTLM_SIGNATURE = b"NTLMSSP\x00"


def write_user_file(path: Path, users: Iterable[tuple[str, str, str]]) -> Path:
    """Write `(domain, user, password)` triples in the form pyspnego's acceptor reads.

    Args:
        path: the file to (over)write; point `NTLM_USER_FILE` at it.
        users: an empty domain gives a `:user:password` line that matches any domain.

    Returns:
        `path`, for chaining into `monkeypatch.setenv("NTLM_USER_FILE", ...)`.
    """
    path.write_text("".join(f"{d}:{u}:{p}\n" for d, u, p in users), encoding="utf-8")
    return path


def parse_authorization(value: str | None) -> tuple[str, bytes] | None:
    """Split `Negotiate <b64>` / `NTLM <b64>` into scheme and token; None if not one of those."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    canonical = {s.lower(): s for s in SCHEMES}.get(scheme.lower())
    if canonical is None or not token.strip():
        return None
    try:
        return canonical, base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _new_acceptor(scheme: str, token: bytes) -> Any:
    # A raw NTLMSSP token goes to the NTLM acceptor whatever the scheme says; SPNEGO-wrapped
    # tokens (Negotiate from a pyspnego/SSPI client) need the negotiate acceptor.
    raw_ntlm = scheme == "NTLM" or token.startswith(_NTLM_SIGNATURE)
    return spnego.server(protocol="ntlm" if raw_ntlm else "negotiate")


def _challenge_header(scheme: str, token: bytes | None) -> list[tuple[str, str]]:
    if not token:
        return []
    return [("WWW-Authenticate", f"{scheme} {base64.b64encode(token).decode('ascii')}")]


def fresh_challenge(authorization: str | None) -> list[tuple[str, str]]:
    """Answer `authorization` from a brand-new acceptor, for faults that never authenticate.

    Returns:
        `WWW-Authenticate: <scheme> <type 2>` for a type 1 token, else the plain offers.
    """
    parsed = parse_authorization(authorization)
    if parsed is None:
        return list(OFFERS)
    scheme, token = parsed
    try:
        acceptor = _new_acceptor(scheme, token)
        out = acceptor.step(token)
    except Exception:  # pyspnego raises SpnegoError, KeyError, ... on a token out of turn
        return list(OFFERS)
    if acceptor.complete or not out:
        return list(OFFERS)
    return _challenge_header(scheme, out)


class ConnAuth:
    """The authentication state of one TCP connection."""

    def __init__(self) -> None:
        self.user: str | None = None
        self._acceptor: Any = None

    def __repr__(self) -> str:
        state = "authenticated" if self.user else "handshake" if self._acceptor else "anonymous"
        return f"<ConnAuth {state} user={self.user!r}>"

    def step(self, authorization: str | None) -> tuple[bool, list[tuple[str, str]]]:
        """Advance the handshake with the request's `Authorization` header.

        There are four cases:
        1. No usable header: authenticated if the connection already is, else offer schemes.
        2. A token the acceptor rejects: drop the handshake and the user, offer schemes.
        3. A token that completes the handshake: the connection now belongs to that user.
        4. A token that needs another leg: 401 with the acceptor's challenge.

        Returns:
            `(authenticated, headers)`: serve the request as `self.user` if authenticated,
            else answer 401; in both cases add `headers`.
        """
        parsed = parse_authorization(authorization)
        if parsed is None:  # case 1
            return (True, []) if self.user else (False, list(OFFERS))
        scheme, token = parsed
        try:
            if self._acceptor is None:
                self.user = None  # a new handshake replaces the connection's identity
                self._acceptor = _new_acceptor(scheme, token)
            out = self._acceptor.step(token)
        except Exception:  # case 2: pyspnego raises SpnegoError, KeyError, ... on bad input
            self._acceptor = None
            self.user = None
            return False, list(OFFERS)
        if self._acceptor.complete:  # case 3
            self.user = str(self._acceptor.client_principal)
            self._acceptor = None
            return True, _challenge_header(scheme, out)
        return False, _challenge_header(scheme, out) or list(OFFERS)  # case 4
