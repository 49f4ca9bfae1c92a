"""An embeddable HTTP/1.1 server that demands NTLM or Negotiate, for demos and tests.

``with AuthServer() as server:`` runs a real pyspnego acceptor on loopback, in a thread;
no domain or Kerberos realm is needed. The pytest plugin
``httpx_extensions.testing.pytest_plugin`` provides it as the ``auth_server`` fixture.
"""

from __future__ import annotations

from ._server import DEMO_USERS, AuthServer

__all__ = ["DEMO_USERS", "AuthServer"]

AuthServer.__module__ = __name__
