"""The client's work per request, counted in CPU instructions: anonymous vs authenticated.

A diagnostic beside ``bench/auth.py``, whose 90 % target (NegotiateAuth's rate against our
anonymous rate) is a wall-clock ratio on a shared 2-core machine where the client and
Apache compete: one run drifts by several per cent. Instructions do not drift. This runs
each column's client in its own process under ``valgrind --tool=callgrind`` (which counts
the instructions the client executes, whatever else the machine does; the server runs
outside it, in this process) and prints instructions per request and their ratio.

Each column is run twice, with the same warm-up (imports, a first batch of ``--warmup``
requests that pays the first handshakes and, for Negotiate, the Kerberos probe) and then
with and without the measured run of ``--requests`` GETs at ``--concurrency`` (a fresh
client and auth object, as in ``bench/auth.py``); the difference is the measured run.
Under callgrind the client is ~50x slower, so the server looks faster to it than it is:
the figure is the client's own work, not a rate.

    python bench/auth_instructions.py                    # KDC + Apache (root), ~5 min
    python bench/auth_instructions.py --server embedded  # the pure-Python AuthServer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT)]

from auth import apache_target, embedded_target  # noqa: E402

from httpx_extensions import ExClient, NegotiateAuth, NTLMAuth  # noqa: E402

COLUMNS = {"anon": None, "negotiate": NegotiateAuth, "ntlm": NTLMAuth}


def client(spec: dict[str, str], column: str, warmup: int, requests: int, concurrency: int) -> None:
    """The process under callgrind: the warm-up, then (if ``requests``) the measured run."""
    from httpx_extensions import _spnego

    # Under callgrind a run lasts minutes: Negotiate's once-a-minute Kerberos check (a
    # thread, its instructions counted) would land at random in one process and not the
    # other. What the warm-up found out about Kerberos holds for the whole count.
    _spnego.KERBEROS_RETRY_SECONDS = 24 * 3600
    auth_class = COLUMNS[column]

    async def run(n: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        auth = auth_class(spec["username"], spec["password"]) if auth_class else None
        url = spec["auth_url"] if auth else spec["anon_url"]
        left = n
        async with ExClient(limits=limits, timeout=120) as c:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    response = await c.get(url, auth=auth or httpx.USE_CLIENT_DEFAULT)
                    if response.status_code != 200:
                        raise RuntimeError(f"{column}: {response.status_code}")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(run(warmup))
    if requests:
        asyncio.run(run(requests))


def instructions(spec_file: Path, column: str, args: argparse.Namespace, n: int) -> int:
    """Instructions the client process executed (callgrind's total)."""
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--client", str(spec_file), column,
            "--warmup", str(args.warmup), "--requests", str(n),
            "--concurrency", str(args.concurrency),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{column}: the client failed under callgrind:\n{proc.stderr[-3000:]}")
        match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"{column}: no 'summary:' line in callgrind's output")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="GETs measured (5000)")
    parser.add_argument("--concurrency", type=int, default=100, help="workers = pool (100)")
    parser.add_argument("--warmup", type=int, default=200, help="GETs before (200)")
    parser.add_argument("--server", choices=("apache", "embedded"), default="apache")
    parser.add_argument(
        "--columns", nargs="*", default=list(COLUMNS), choices=list(COLUMNS),
        help="columns to count (default: all)",
    )  # fmt: skip
    parser.add_argument("--client", nargs=2, metavar=("SPEC", "COLUMN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        spec = json.loads(Path(args.client[0]).read_text())
        client(spec, args.client[1], args.warmup, args.requests, args.concurrency)
        return
    if args.requests <= 0 or args.concurrency <= 0:
        parser.error("--requests and --concurrency must be positive")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    target_cm = apache_target() if args.server == "apache" else embedded_target()
    with target_cm as t, tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        spec_file = Path(tmp) / "target.json"
        spec = {"auth_url": t.auth_url, "anon_url": t.anon_url}
        spec_file.write_text(json.dumps({**spec, "username": t.username, "password": t.password}))
        per_request: dict[str, float] = {}
        for column in args.columns:
            base = instructions(spec_file, column, args, 0)
            total = instructions(spec_file, column, args, args.requests)
            per_request[column] = (total - base) / args.requests
    print(
        f"\n{args.requests} GETs, concurrency = pool = {args.concurrency}, after {args.warmup} "
        f"warm-up GETs; server: {args.server}; client instructions (callgrind)"
    )
    header = f"{'column':10} {'instr/request':>14} {'anon / column':>14}"
    print(header)
    print("-" * len(header))
    anon = per_request.get("anon")
    for column, value in per_request.items():
        share = f"{anon / value:14.1%}" if anon else f"{'':>14}"
        print(f"{column:10} {value:14,.0f} {share}")


if __name__ == "__main__":
    main()
