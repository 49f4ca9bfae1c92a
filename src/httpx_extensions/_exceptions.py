"""Errors raised by httpx-extensions.

Every error subclasses an exception an httpx user already catches, so existing
``except httpx.HTTPError`` (or ``ValueError`` for configuration) blocks keep working.
"""

from __future__ import annotations

import httpx

__all__ = ["HTTP2NotSupportedError", "AuthenticationError"]


class HTTP2NotSupportedError(ValueError):
    """``http2=True`` was asked of :class:`~httpx_extensions.ExClient`.

    Connection-bound authentication (NTLM, and Kerberos as IIS runs it) authenticates
    one TCP connection carrying one request at a time; HTTP/2 multiplexes many requests
    on one connection, and Windows servers answer them with ``HTTP_1_1_REQUIRED``.
    Create the client with ``http2=False`` (the default).
    """


class AuthenticationError(httpx.RequestError):
    """Base class of every authentication failure raised by this package.

    Subclasses say what failed and what to do; catch ``httpx.RequestError`` or
    ``httpx.HTTPError`` to handle it with the other transport errors.
    """
