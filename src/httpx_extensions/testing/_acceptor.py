"""The server side of NTLM and Negotiate, on pyspnego: user file, contexts, principals.

Theory of operation. pyspnego's pure-Python NTLM acceptor finds passwords in the file named
by the environment variable ``NTLM_USER_FILE``, and it reads that variable *during* ``step()``
(on the type-3 message), not only when the context is created. The environment is global to
the process, while several servers may run in one process with different users. So:

1. every server writes its own private user file (:class:`UserFile`);
2. every context creation and every ``step()`` runs under one process-wide lock with
   ``NTLM_USER_FILE`` pointing at that server's file, and the previous value is put back
   before the lock is released.

Steps are short and CPU-bound (the GIL serialises them anyway), so the lock costs little.

The file holds, per user, the LM and NT hashes in smbpasswd form (pyspnego then skips its
~1 ms pure-Python LM hash per handshake) followed by ``DOMAIN:user:password`` lines for
gss-ntlmssp, which pyspnego's Negotiate may pick for NTLM on hosts where it is installed.
pyspnego matches the domain exactly, so each user is listed as ``DOMAIN\\user``, bare
``user`` and ``user@DOMAIN``.

This module must not know HTTP: tokens in, tokens out.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import spnego

try:  # Private to pyspnego but stable since its first release; only a speed-up.
    from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1

    _HASHES = True
except ImportError:  # pragma: no cover
    _HASHES = False

__all__ = ["Acceptor", "AuthFailed", "UserFile", "is_initial_token"]

_ENV = "NTLM_USER_FILE"
_ENV_LOCK = threading.Lock()
_FORBIDDEN = (":", "\\", "@", "\r", "\n", "\x00")
_FORBIDDEN_IN_PASSWORD = (":", "\r", "\n", "\x00")


class AuthFailed(Exception):
    """A token was rejected; the message never contains the token or a password."""


def is_initial_token(token: bytes) -> bool:
    """Whether ``token`` opens a handshake (NTLM type 1, SPNEGO or raw Kerberos initial token)."""
    if token.startswith(b"NTLMSSP\x00"):
        return token[8:12] == b"\x01\x00\x00\x00"
    return token[:1] == b"\x60"  # GSS-API InitialContextToken: [APPLICATION 0]


def _check(kind: str, value: str, allow_empty: bool = False) -> None:
    if not value and not allow_empty:
        raise ValueError(f"{kind} must not be empty")
    bad = [c for c in _FORBIDDEN if c in value]
    if bad:
        raise ValueError(
            f"{kind} {value!r} contains {bad[0]!r}; choose one without : \\ @ or newlines"
        )


class UserFile:
    """A private ``NTLM_USER_FILE`` with the server's users, removed by :meth:`close`.

    Raises:
        ValueError: a user name, password or the domain contains ``:``, ``\\``, ``@``, a
            newline or NUL (the file format cannot hold them; passwords may contain ``\\``
            and ``@``): pick other names.
    """

    def __init__(self, users: Mapping[str, str], domain: str) -> None:
        self.validate(users, domain)
        lines: list[str] = []
        plain: list[str] = []
        for user, password in users.items():
            names = [f"{domain}\\{user}", user, f"{user}@{domain}"] if domain else [user]
            if _HASHES:
                lm, nt = lmowfv1(password).hex(), ntowfv1(password).hex()
                lines += [f"{name}:0:{lm}:{nt}:[U]:LCT-00000000" for name in names]
            plain += [f"{domain}:{user}:{password}", f":{user}:{password}"]
        fd, self.path = tempfile.mkstemp(prefix="httpx-ext-users-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp creates it 0600
            f.write("\n".join(lines + plain) + "\n")

    @staticmethod
    def validate(users: Mapping[str, str], domain: str) -> None:
        """Raise ValueError (see the class) unless the file can hold ``users`` and ``domain``."""
        _check("domain", domain, allow_empty=True)
        for user, password in users.items():
            _check("user name", user)
            if any(c in password for c in _FORBIDDEN_IN_PASSWORD):
                raise ValueError(
                    f"the password of {user!r} contains ':' or a newline; choose another"
                )

    def close(self) -> None:
        """Delete the file; safe to call twice."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @contextmanager
    def active(self) -> Iterator[None]:
        """Hold the process-wide lock with ``NTLM_USER_FILE`` set to this file."""
        with _ENV_LOCK:
            previous = os.environ.get(_ENV)
            os.environ[_ENV] = self.path
            try:
                yield
            finally:
                if previous is None:
                    del os.environ[_ENV]
                else:
                    os.environ[_ENV] = previous


class Acceptor:
    """One server-side security context: one handshake on one connection.

    Args:
        protocol: ``"negotiate"`` (SPNEGO, also takes raw NTLM and raw Kerberos tokens) or
            ``"ntlm"`` (raw NTLM only).
        user_file: the server's users.
    """

    def __init__(self, protocol: str, user_file: UserFile) -> None:
        self._user_file = user_file
        options = (
            spnego.NegotiateOptions.use_negotiate
            if protocol == "negotiate"
            else spnego.NegotiateOptions.use_ntlm
        )
        with user_file.active():
            self._context = spnego.server(protocol=protocol, service="HTTP", options=options)

    def step(self, token: bytes) -> bytes | None:
        """Feed one client token; return the token to send back, if any.

        Raises:
            AuthFailed: the token is malformed, out of order, or the credentials are wrong.
                Answer 401 and drop this acceptor; the client must start a new handshake.
        """
        try:
            with self._user_file.active():
                return self._context.step(token)
        except Exception as exc:  # pyspnego raises many types; none carry the token
            raise AuthFailed(type(exc).__name__) from None

    @property
    def complete(self) -> bool:
        """Whether the handshake has finished successfully."""
        return bool(self._context.complete)

    @property
    def mech(self) -> str:
        """The mechanism actually used: ``"ntlm"`` or ``"kerberos"``."""
        return str(self._context.negotiated_protocol or "unknown")

    @property
    def principal(self) -> str:
        """The authenticated client as pyspnego reports it (``DOMAIN\\user`` for NTLM)."""
        return str(self._context.client_principal or "")
