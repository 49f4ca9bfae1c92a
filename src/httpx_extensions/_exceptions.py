"""Errors raised by httpx-extensions.

Every error subclasses an exception an httpx user already catches, so existing
``except httpx.HTTPError`` (or ``ValueError`` for configuration) blocks keep working.
"""

from __future__ import annotations

import httpx

__all__ = [
    "HTTP2NotSupportedError",
    "AuthenticationError",
    "NoCredentialsError",
    "SPNNotFoundError",
    "CredentialsRejectedError",
    "MutualAuthenticationError",
    "MechanismNotAllowedError",
    "HandshakeError",
    "RequestBodyNotReplayableError",
]


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


class NoCredentialsError(AuthenticationError):
    """No credential could be found to answer the server's challenge.

    Single sign-on found no Kerberos ticket (run ``kinit``, or check ``KRB5CCNAME``), no
    NTLM credential file (``NTLM_USER_FILE``), or Kerberos support is not installed
    (``pip install httpx-extensions[kerberos]``). Log on, or pass ``username=`` and
    ``password=``.
    """


class SPNNotFoundError(AuthenticationError):
    """The Kerberos KDC does not know the service principal (SPN) the client asked a ticket for.

    Check the SPN in the message: register it on the server's account (``setspn -S``),
    pass ``spn={"host": "HTTP/real.host"}``, or ``canonicalize_host=True`` when the URL
    names a DNS alias (CNAME). ``NegotiateAuth`` falls back to NTLM unless
    ``allow_ntlm=False``.
    """


class CredentialsRejectedError(AuthenticationError):
    """The server answered the final handshake token with a new challenge: it refused the logon.

    Usually a wrong password, an unknown, locked or expired account, a user the server
    does not allow, or a channel-binding mismatch (a TLS-intercepting proxy between
    client and server). Check the credentials and the server's security log; try
    ``channel_binding=False`` only if a trusted proxy terminates TLS.
    """


class MutualAuthenticationError(AuthenticationError):
    """The server's final token did not prove the server's identity.

    The response may not come from the server you meant to reach. Do not trust it;
    check the SPN and the network path. Pass ``mutual_auth=False`` only for servers known
    to omit the final token.
    """


class MechanismNotAllowedError(AuthenticationError):
    """The server offers (or negotiated) only a mechanism this auth object may not use.

    Typically NTLM with ``allow_ntlm=False`` or ``KerberosAuth``: fix Kerberos for this
    host (SPN, ticket, DNS name), or allow NTLM explicitly.
    """


class HandshakeError(AuthenticationError):
    """The authentication handshake did not complete.

    The message says why: too many legs; the server closed the handshake's connection
    between legs, unannounced until no whole handshake fits in ``max_legs`` any more, or
    announced (``Connection: close``) twice; a malformed token; or a failure of the
    security library. Retrying the request is safe; if it persists, check the server's
    configuration (keep-alive, and its load: a busy server may drop idle connections).
    """


class RequestBodyNotReplayableError(AuthenticationError):
    """The request body is a one-shot stream, but the handshake may need to send it again.

    Pass the body as ``content=bytes`` (or read it first with ``await request.aread()``),
    or keep the auth object's default ``buffer_body=True``.
    """
