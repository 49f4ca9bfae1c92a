"""Real servers for integration tests: an MIT KDC, Apache (Kerberos, NTLM), squid, nginx.

Everything listens on 127.0.0.1 (Apache also on 127.0.0.2) on free ports, lives in a
private temporary directory and stops with its fixture. Use the session fixtures of
:mod:`tests.servers.fixtures` (``kdc``, ``apache``, ``squid``, ``nginx``); install the
servers with ``scripts/install-servers`` (as root).
"""

from __future__ import annotations

from ._accesslog import AccessLog, LogEntry, LogSummary
from ._apache import LOCATIONS, NTLM_DOMAIN, Apache
from ._kdc import REALM, USERS, Kdc
from ._nginx import Nginx
from ._process import ServerError, ServerUnavailable
from ._squid import Squid

__all__ = [
    "LOCATIONS",
    "NTLM_DOMAIN",
    "REALM",
    "USERS",
    "AccessLog",
    "Apache",
    "Kdc",
    "LogEntry",
    "LogSummary",
    "Nginx",
    "ServerError",
    "ServerUnavailable",
    "Squid",
]
