"""httpx-extensions: Windows Integrated Authentication for httpx, at volume.

The public API is exactly ``__all__``; every other module is private.
"""

from __future__ import annotations

from ._exceptions import AuthenticationError, HTTP2NotSupportedError
from ._version import __version__

__all__ = [
    "__version__",
    "AuthenticationError",
    "HTTP2NotSupportedError",
]
