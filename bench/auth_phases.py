"""Where an authenticated run's extra client CPU goes: the handshakes or the requests after.

A diagnostic, not a benchmark with targets (those are in ``bench/auth.py``). Each run sends
``--requests`` GETs with ``--concurrency`` workers on a fresh ExClient (pool = concurrency),
anonymously to ``/anon/`` or with NegotiateAuth / NTLMAuth to the connection-bound NTLM
location, and records this process's CPU (``getrusage``) and wall time when the first
``--concurrency`` requests are done (the phase holding every handshake) and at the end, plus
the garbage collector's time. Rounds are interleaved; medians are printed, and each
column's extra CPU over the anonymous one, split into the two phases.

    python bench/auth_phases.py                    # KDC + Apache (root), 5 rounds
    python bench/auth_phases.py --server embedded  # the pure-Python AuthServer
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from auth import Target, apache_target, cpu_seconds, embedded_target  # noqa: E402

from httpx_extensions import ExClient, NegotiateAuth, NTLMAuth  # noqa: E402

COLUMNS = {"anon": None, "negotiate": NegotiateAuth, "ntlm": NTLMAuth}
Phases = tuple[float, float, float, float, float]  # cpu1, wall1, cpu, wall, gc (seconds)


class _GcClock:
    """Process time spent in the garbage collector (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total += time.process_time() - self._start


def one_run(t: Target, column: str, requests: int, concurrency: int, clock: _GcClock) -> Phases:
    auth_class = COLUMNS[column]

    async def go() -> Phases:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        auth = auth_class(t.username, t.password) if auth_class else None
        url = t.auth_url if auth else t.anon_url
        async with ExClient(limits=limits, timeout=30) as client:
            left, done, first = requests, 0, (0.0, 0.0)
            gc0, c0, w0 = clock.total, cpu_seconds(), time.perf_counter()

            async def worker() -> None:
                nonlocal left, done, first
                while left > 0:
                    left -= 1
                    response = await client.get(url, auth=auth or httpx.USE_CLIENT_DEFAULT)
                    if response.status_code != 200:
                        raise RuntimeError(f"{column}: {response.status_code}")
                    done += 1
                    if done == concurrency:
                        first = (cpu_seconds() - c0, time.perf_counter() - w0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            end = (cpu_seconds() - c0, time.perf_counter() - w0)
            return first[0], first[1], end[0], end[1], clock.total - gc0

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server", choices=("apache", "embedded"), default="apache")
    args = parser.parse_args()
    clock = _GcClock()
    names = list(COLUMNS)
    target_cm = apache_target() if args.server == "apache" else embedded_target()
    with target_cm as target:
        for name in names:  # warm-up: imports, the server's first handshakes
            one_run(target, name, min(300, args.requests), args.concurrency, clock)
        runs: dict[str, list[Phases]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(
                    one_run(target, name, args.requests, args.concurrency, clock)
                )  # fmt: skip

    def med(name: str, i: int) -> float:
        return statistics.median(run[i] for run in runs[name]) * 1e3

    n, c = args.requests, args.concurrency
    print(
        f"\n{n} GETs, concurrency = pool = {c}, {args.rounds} interleaved rounds, medians "
        f"(ms); server: {args.server}"
    )
    header = (
        f"{'column':10} {'CPU first ' + str(c):>15} {'CPU rest':>9} {'CPU all':>8} "
        f"{'wall all':>9} {'GC':>6} {'extra first':>12} {'extra rest':>11}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        first, total = med(name, 0), med(name, 2)
        extra_first = first - med("anon", 0)
        extra_rest = (total - first) - (med("anon", 2) - med("anon", 0))
        print(
            f"{name:10} {first:15.0f} {total - first:9.0f} {total:8.0f} {med(name, 3):9.0f} "
            f"{med(name, 4):6.0f} {extra_first:12.0f} {extra_rest:11.0f}"
        )
    rest = n - c
    for name in names[1:]:
        per = ((med(name, 2) - med(name, 0)) - (med("anon", 2) - med("anon", 0))) / rest * 1e3
        print(f"{name}: {per:.1f} us extra CPU per request after the first {c}")


if __name__ == "__main__":
    main()
