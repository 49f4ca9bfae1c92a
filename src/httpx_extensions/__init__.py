"""httpx-extensions: Windows Integrated Authentication for httpx, at volume.

The public API is exactly ``__all__``; every other module is private.
"""

from ._auth import AuthIdentity, KerberosAuth, NegotiateAuth, NTLMAuth
from ._client import ExClient
from ._exceptions import (
    AuthenticationError,
    CredentialsRejectedError,
    HandshakeError,
    HTTP2NotSupportedError,
    MechanismNotAllowedError,
    MutualAuthenticationError,
    NoCredentialsError,
    RequestBodyNotReplayableError,
    SPNNotFoundError,
)
from ._pool import PoolState
from ._transport import ExTransport
from ._version import __version__

__all__ = [
    "__version__",
    "AuthenticationError",
    "AuthIdentity",
    "CredentialsRejectedError",
    "HandshakeError",
    "KerberosAuth",
    "MechanismNotAllowedError",
    "MutualAuthenticationError",
    "NegotiateAuth",
    "NoCredentialsError",
    "NTLMAuth",
    "RequestBodyNotReplayableError",
    "SPNNotFoundError",
    "ExClient",
    "ExTransport",
    "HTTP2NotSupportedError",
    "PoolState",
]

for _name in __all__[1:]:
    globals()[_name].__module__ = "httpx_extensions"
del _name
