"""Where an authenticated run's extra client CPU goes: the handshakes or the requests after.

A diagnostic, not a benchmark with targets (those are in ``bench/auth.py``). Each run sends
``--requests`` GETs with ``--concurrency`` workers on a fresh ExClient (pool = concurrency),
anonymously to ``/anon/`` or with NegotiateAuth / NTLMAuth to the connection-bound NTLM
location, and records this process's CPU (``getrusage``) and wall time, and how many
requests were done, when every worker has had its first answer (the phase that holds every
handshake: one per connection), and at the end, plus the garbage collector's time. Rounds
are interleaved; medians are printed, and each column's extra CPU over the anonymous one,
split into the handshake phase and a cost per later request.

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
#: CPU and wall at the end of the first phase, requests done then, CPU, wall, GC (seconds).
Phases = tuple[float, float, float, float, float, float]


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
            left, done, answered, first = requests, 0, 0, (0.0, 0.0, 0.0)
            gc0, c0, w0 = clock.total, cpu_seconds(), time.perf_counter()

            async def worker() -> None:
                nonlocal left, done, answered, first
                mine = 0
                while left > 0:
                    left -= 1
                    response = await client.get(url, auth=auth or httpx.USE_CLIENT_DEFAULT)
                    if response.status_code != 200:
                        raise RuntimeError(f"{column}: {response.status_code}")
                    done, mine = done + 1, mine + 1
                    if mine == 1:
                        answered += 1
                        if answered == concurrency:  # every worker had its first answer
                            first = (cpu_seconds() - c0, time.perf_counter() - w0, done)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            end = (cpu_seconds() - c0, time.perf_counter() - w0)
            return first[0], first[1], first[2], end[0], end[1], clock.total - gc0

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

    def med(name: str, i: int) -> float:  # a median; times in ms
        value = statistics.median(run[i] for run in runs[name])
        return value if i == 2 else value * 1e3

    n, c = args.requests, args.concurrency
    print(
        f"\n{n} GETs, concurrency = pool = {c}, {args.rounds} interleaved rounds, medians; "
        f"server: {args.server}"
    )
    header = (
        f"{'column':10} {'phase 1 reqs':>12} {'phase 1 ms':>10} {'wall':>5} {'later us/req':>12} "
        f"{'CPU ms':>7} {'wall ms':>8} {'GC ms':>6} {'extra phase 1 ms':>16} "
        f"{'extra later us/req':>18}"
    )
    print(header)
    print("-" * len(header))

    def later(name: str) -> float:  # CPU per request after phase 1, µs
        return (med(name, 3) - med(name, 0)) / (n - med(name, 2)) * 1e3

    for name in names:
        extra_later = later(name) - later("anon")
        extra_first = med(name, 3) - med("anon", 3) - extra_later * (n - med(name, 2)) / 1e3
        print(
            f"{name:10} {med(name, 2):12.0f} {med(name, 0):10.0f} {med(name, 1):5.0f} "
            f"{later(name):12.1f} "
            f"{med(name, 3):7.0f} {med(name, 4):8.0f} {med(name, 5):6.0f} {extra_first:16.0f} "
            f"{extra_later:18.1f}"
        )


if __name__ == "__main__":
    main()
