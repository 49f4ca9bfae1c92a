"""A fault-injecting loopback HTTP/1.1 server for reliability tests (not the library).

`FaultServer` answers 200 JSON, runs connection-bound NTLM/Negotiate under `/auth/`, and
injects the faults in `FAULT_KINDS`: drawn per connection at `rate` from a seeded RNG, or
forced on every request whose path contains `fault/<kind>` (e.g. `/fault/stall`,
`/auth/fault/close_after_401`).
"""

from __future__ import annotations

from ._auth import write_user_file
from ._faults import FAULT_KINDS, FaultKind
from ._server import FaultServer, ServerStats

__all__ = ["FAULT_KINDS", "FaultKind", "FaultServer", "ServerStats", "write_user_file"]
