"""``httpx-extensions demo``: the same job twice against the embedded server, side by side.

Run 1 is what the library is for: ``ExClient`` + ``NegotiateAuth`` keeps each connection
authenticated, so a pool of N connections costs N handshakes however many requests it
carries. Run 2 asks for a fresh connection per request (``new_connection``), so every
request pays a full handshake, as a client that drops connections would. The demo passes
(exit 0) when run 1 had no failure and as many handshakes as connections.

Only the package and its dependencies are needed. The demo credentials are the public
:data:`~httpx_extensions.testing.DEMO_USERS`, valid only for this loopback server.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator

import anyio
import httpx
from rich.console import Console

from ._auth import NegotiateAuth
from ._cli_run import instrument, run_job
from ._client import ExClient
from ._fetch import FetchOptions, ResultWriter
from ._spnego import KERBEROS_AVAILABLE
from ._summary import RunStats, side_by_side, summary_table
from .testing import DEMO_USERS, AuthServer

__all__ = ["run_demo"]

_USER = "alice"
# libdefaults only: no realm, no DNS lookups. The demo server has no Kerberos realm, and
# with the system krb5.conf GSSAPI may spend seconds looking up a KDC for "EXAMPLE" in DNS
# before Negotiate falls back to NTLM.
_NO_REALM_KRB5_CONF = "[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"


def _urls(base: str, count: int) -> Iterator[str]:
    for i in range(count):
        yield f"{base}/demo/{i}"


async def _one_run(
    server: AuthServer, count: int, concurrency: int, fresh: bool, title: str, progress: bool
) -> RunStats:
    stats = RunStats()
    auth = NegotiateAuth(_USER, DEMO_USERS[_USER], domain=server.domain)
    client = ExClient(
        auth=auth,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=httpx.Timeout(30.0),
        event_hooks=instrument(stats),
    )
    options = FetchOptions(concurrency=concurrency, retries=2, new_connection=fresh)
    await run_job(
        client,
        _urls(server.url, count),
        options,
        stats,
        ResultWriter(None),
        console=Console(stderr=True),
        title=title,
        total=count,
        progress=progress,
    )
    return stats


def run_demo(count: int, concurrency: int, *, progress: bool = True) -> int:
    """Run both jobs, print their summaries and the comparison; return the exit code."""
    out = Console(highlight=False)
    with tempfile.TemporaryDirectory(prefix="httpx-ext-demo-") as tmp:
        if KERBEROS_AVAILABLE and "KRB5_CONFIG" not in os.environ:
            conf = os.path.join(tmp, "krb5.conf")
            with open(conf, "w", encoding="utf-8") as fh:
                fh.write(_NO_REALM_KRB5_CONF)
            os.environ["KRB5_CONFIG"] = conf
        with AuthServer() as server:
            out.print(
                f"Embedded NTLM/Negotiate server on {server.url}; "
                f"user {server.domain}\\{_USER} (demo password); "
                f"{count} requests, concurrency {concurrency}"
            )
            pooled = anyio.run(
                functools.partial(
                    _one_run, server, count, concurrency, False, "kept connections", progress
                )
            )
            out.print(summary_table(pooled, "1. ExClient + NegotiateAuth, connections kept"))
            out.print(f"   server saw {server.connections} connections, {server.requests} requests")
            if pooled.interrupted:
                return 130
            server.reset_counters()
            fresh = anyio.run(
                functools.partial(
                    _one_run, server, count, concurrency, True, "handshake per request", progress
                )
            )
            out.print(summary_table(fresh, "2. A fresh connection (and handshake) per request"))
            out.print(f"   server saw {server.connections} connections, {server.requests} requests")
    out.print(
        side_by_side(
            [("kept connections", pooled), ("handshake per request", fresh)],
            "Side by side",
        )
    )
    if fresh.interrupted:
        return 130
    passed = pooled.failed == 0 and pooled.handshakes == pooled.connections
    verdict = "[green]PASS[/]" if passed else "[red]FAIL[/]"
    out.print(
        f"{verdict}: run 1 had {pooled.failed} failures and handshakes == connections: "
        f"{pooled.handshakes} == {pooled.connections}"
        + (f"; {pooled.rate / fresh.rate:.1f}x the req/s of run 2" if fresh.rate else "")
    )
    return 0 if passed else 1
