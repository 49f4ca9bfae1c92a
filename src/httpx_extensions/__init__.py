"""httpx-extensions: Windows Integrated Authentication for httpx, at volume.

The public API is exactly ``__all__``; every other module is private.
"""

from ._client import ExClient
from ._exceptions import AuthenticationError, HTTP2NotSupportedError
from ._pool import PoolState
from ._transport import ExTransport
from ._version import __version__

__all__ = [
    "__version__",
    "AuthenticationError",
    "ExClient",
    "ExTransport",
    "HTTP2NotSupportedError",
    "PoolState",
]

for _name in __all__[1:]:
    globals()[_name].__module__ = "httpx_extensions"
del _name
