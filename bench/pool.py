"""Pool benchmark: ExClient vs httpx.AsyncClient vs aiohttp.ClientSession.

A benchmark, not a test: it prints figures, ratios and PASS/FAIL against the targets of
issue 2, and never asserts on timing.

What it does, in one process run:

* starts a private nginx on 127.0.0.1 (temp dir, ``daemon off``, one worker, keep-alive
  for ever) serving a 1 KB JSON at ``/json`` (or uses ``--url``);
* *worker* scenario: for every (concurrency, pool size) pair, ``concurrency`` tasks pull
  from a shared counter of ``--requests`` GETs; rounds are interleaved (round r runs every
  client once per config, order rotated), each run on a fresh client, warmed up first;
* *gather* scenario: ``asyncio.gather`` of N GETs at once on a pool of 100;
* per run: wall time and this process's CPU (``getrusage(RUSAGE_SELF)`` user+sys delta),
  giving req/s and CPU microseconds per request; medians over rounds; ratios;
* ``--profile``: one client (ExClient by default) at concurrency 1,000 under cProfile (or
  pyinstrument), top 25 functions by cumulative and by self time.

Run ``scripts/bench --help``; ``scripts/bench --quick`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

Getter = Callable[[str], Awaitable[None]]
ClientOpener = Callable[[int], "contextlib.AbstractAsyncContextManager[Getter]"]

EX = "ExClient"
HTTPX = "httpx"
AIOHTTP = "aiohttp"
ALL_CLIENTS = (EX, HTTPX, AIOHTTP)

# Generous per-I/O timeouts, no pool timeout (queues are deep on purpose), same for all.
HTTPX_TIMEOUT = httpx.Timeout(connect=30.0, read=60.0, write=60.0, pool=None)
AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=30.0, sock_read=60.0)

BODY_SIZE = 1024


# --------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------


def json_body(size: int = BODY_SIZE) -> str:
    """A JSON document of exactly ``size`` bytes, safe inside an nginx '...' string."""
    items: list[dict[str, Any]] = []
    text = ""
    i = 0
    while True:
        items.append({"id": i, "name": f"item-{i:04d}", "price": 10 + i, "ok": True})
        candidate = json.dumps({"items": items, "pad": ""}, separators=(",", ":"))
        if len(candidate) > size:
            items.pop()
            break
        text = candidate
        i += 1
    pad = size - len(text)
    doc = json.dumps({"items": items, "pad": "x" * pad}, separators=(",", ":"))
    assert len(doc) == size and "'" not in doc and "\\" not in doc and "$" not in doc
    return doc


def find_nginx() -> str | None:
    """The nginx binary: $NGINX, then PATH, then /usr/sbin (not on PATH for non-root)."""
    env = os.environ.get("NGINX")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    for cand in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _temp_path_directives(nginx: str, tmp: Path) -> str:
    """Keep every temp dir in our temp dir (the compiled-in ones need root)."""
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10)
        configure = out.stderr + out.stdout
    except (OSError, subprocess.SubprocessError):
        configure = ""
    lines = [f"client_body_temp_path {tmp}/client_body;"]
    for mod in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{mod}_module" not in configure:
            lines.append(f"{mod}_temp_path {tmp}/{mod};")
    return "\n    ".join(lines)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    {temp_paths}
    keepalive_requests 1000000;
    keepalive_timeout 300;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name localhost;
        location = /json {{
            default_type application/json;
            return 200 '{body}';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def _http_get_status(port: int, path: str) -> tuple[int, int]:
    """(status, body length) of one HTTP/1.0 GET on a raw socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), len(body)


@contextlib.contextmanager
def nginx_server(nginx: str) -> Iterator[str]:
    """Start a private nginx on loopback; yield the URL of the 1 KB JSON."""
    body = json_body()
    last_error = ""
    for _attempt in range(3):
        with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmpdir:
            tmp = Path(tmpdir)
            port = _free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    tmp=tmp, port=port, body=body, temp_paths=_temp_path_directives(nginx, tmp)
                )
            )
            # -e (nginx >= 1.19.5): the error log before the config is read.
            cmd = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                ready = False
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        status, length = _http_get_status(port, "/json")
                    except OSError:
                        time.sleep(0.05)
                        continue
                    if status != 200 or length != BODY_SIZE:
                        raise RuntimeError(f"nginx answered {status} with {length} bytes")
                    ready = True
                    break
                if ready:
                    yield f"http://127.0.0.1:{port}/json"
                    return
                log = tmp / "error.log"
                stderr = ""
                if proc.poll() is not None and proc.stderr is not None:
                    stderr = proc.stderr.read().decode(errors="replace")
                last_error = (log.read_text() if log.exists() else "") + stderr
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGQUIT)  # graceful stop
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
    raise RuntimeError(f"nginx did not start:\n{last_error}")


# --------------------------------------------------------------------------------------
# the clients
# --------------------------------------------------------------------------------------


def load_exclient() -> type[httpx.AsyncClient] | None:
    """ExClient from this checkout's src/ (falls back to an installed copy), or None."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    try:
        mod = importlib.import_module("httpx_extensions")
    except ImportError as exc:
        print(f"note: httpx_extensions not importable: {exc}", file=sys.stderr)
        return None
    cls = getattr(mod, "ExClient", None)
    if cls is None:
        return None
    assert issubclass(cls, httpx.AsyncClient)
    return cls  # type: ignore[no-any-return]


def httpx_opener(cls: type[httpx.AsyncClient]) -> ClientOpener:
    @contextlib.asynccontextmanager
    async def open_client(pool: int) -> AsyncIterator[Getter]:
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        # trust_env=False: no proxy from the environment (aiohttp's default too).
        async with cls(limits=limits, timeout=HTTPX_TIMEOUT, trust_env=False) as client:

            async def get(url: str) -> None:
                response = await client.get(url)
                if response.status_code != 200 or len(response.content) != BODY_SIZE:
                    raise RuntimeError(f"bad response {response.status_code}")

            yield get

    return open_client


@contextlib.asynccontextmanager
async def aiohttp_client(pool: int) -> AsyncIterator[Getter]:
    connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool)
    async with aiohttp.ClientSession(connector=connector, timeout=AIOHTTP_TIMEOUT) as session:

        async def get(url: str) -> None:
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200 or len(body) != BODY_SIZE:
                    raise RuntimeError(f"bad response {response.status}")

        yield get


def client_openers(names: Sequence[str]) -> dict[str, ClientOpener]:
    openers: dict[str, ClientOpener] = {}
    for name in names:
        if name == EX:
            ex = load_exclient()
            if ex is None:
                print("note: httpx_extensions.ExClient not available yet: skipped", file=sys.stderr)
                continue
            openers[EX] = httpx_opener(ex)
        elif name == HTTPX:
            openers[HTTPX] = httpx_opener(httpx.AsyncClient)
        elif name == AIOHTTP:
            openers[AIOHTTP] = aiohttp_client
        else:
            raise SystemExit(f"unknown client {name!r}; choose from {', '.join(ALL_CLIENTS)}")
    return openers


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    scenario: str  # "workers" or "gather"
    client: str
    concurrency: int  # workers; for gather: N
    pool: int
    round: int
    requests: int  # completed inside the measured window
    wall_s: float
    cpu_s: float
    capped: bool  # stopped at --max-seconds (figures are over the window)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rps"] = round(self.rps, 1)
        d["cpu_us_per_request"] = round(self.cpu_us, 1)
        return d


async def warm_up(get: Getter, url: str, pool: int, concurrency: int, requests: int) -> None:
    """Open the connections the measured run will use and run the code paths once."""
    width = max(1, min(pool, concurrency))
    count = max(requests, 2 * width)
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await get(url)

    await asyncio.gather(*(worker() for _ in range(width)))


async def measure_workers(
    get: Getter,
    url: str,
    requests: int,
    concurrency: int,
    max_seconds: float,
    on_window_end: Callable[[], None] | None = None,
) -> tuple[int, float, float, bool]:
    """``concurrency`` tasks pulling from a shared counter; (done, wall, cpu, capped).

    A run still going after ``max_seconds`` is measured over that window; its in-flight
    requests are then cancelled, outside the measurement (and after ``on_window_end``).
    """
    remaining = requests
    done = 0

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0:
            remaining -= 1
            await get(url)
            done += 1

    gc.collect()
    t0, c0 = time.perf_counter(), cpu_seconds()
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, requests))]
    finished, pending = await asyncio.wait(
        tasks,
        timeout=max_seconds if max_seconds > 0 else None,
        return_when=asyncio.FIRST_EXCEPTION,
    )
    t1, c1 = time.perf_counter(), cpu_seconds()
    completed = done
    if on_window_end is not None:
        on_window_end()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in finished:
        task.result()  # re-raise a failed request
    return completed, t1 - t0, c1 - c0, bool(pending)


async def measure_gather(get: Getter, url: str, n: int) -> tuple[int, float, float]:
    gc.collect()
    t0, c0 = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(get(url) for _ in range(n)))
    t1, c1 = time.perf_counter(), cpu_seconds()
    return n, t1 - t0, c1 - c0


def run_in_fresh_loop(coro_factory: Callable[[], Awaitable[Any]]) -> Any:
    """Each run gets its own default asyncio event loop, closed afterwards."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        if not type(loop).__module__.startswith("asyncio"):
            raise RuntimeError(f"not the default asyncio loop: {type(loop)!r}")
        return await coro_factory()

    result = asyncio.run(main())
    gc.collect()
    return result


def one_worker_run(
    opener: ClientOpener,
    url: str,
    requests: int,
    concurrency: int,
    pool: int,
    warmup: int,
    max_seconds: float,
) -> tuple[int, float, float, bool]:
    async def go() -> tuple[int, float, float, bool]:
        async with opener(pool) as get:
            await warm_up(get, url, pool, concurrency, warmup)
            return await measure_workers(get, url, requests, concurrency, max_seconds)

    result: tuple[int, float, float, bool] = run_in_fresh_loop(go)
    return result


def one_gather_run(
    opener: ClientOpener, url: str, n: int, pool: int, warmup: int
) -> tuple[int, float, float]:
    async def go() -> tuple[int, float, float]:
        async with opener(pool) as get:
            await warm_up(get, url, pool, pool, warmup)
            return await measure_gather(get, url, n)

    result: tuple[int, float, float] = run_in_fresh_loop(go)
    return result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rotated(seq: Sequence[str], k: int) -> list[str]:
    if not seq:
        return []
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)

    def select(self, scenario: str, client: str, concurrency: int, pool: int) -> list[Run]:
        key = (scenario, client, concurrency, pool)
        return [r for r in self.runs if (r.scenario, r.client, r.concurrency, r.pool) == key]

    def median(self, scenario: str, client: str, concurrency: int, pool: int) -> Stat | None:
        runs = self.select(scenario, client, concurrency, pool)
        if not runs:
            return None
        return Stat(
            rps=statistics.median(r.rps for r in runs),
            cpu_us=statistics.median(r.cpu_us for r in runs),
            cpu_min=min(r.cpu_us for r in runs),
            cpu_max=max(r.cpu_us for r in runs),
            cpu_s=statistics.median(r.cpu_s for r in runs),
            requests=int(statistics.median(r.requests for r in runs)),
            runs=len(runs),
            capped=any(r.capped for r in runs),
        )


@dataclass
class Stat:
    rps: float
    cpu_us: float
    cpu_min: float
    cpu_max: float
    cpu_s: float
    requests: int
    runs: int
    capped: bool


def run_worker_scenario(
    args: argparse.Namespace, openers: dict[str, ClientOpener], url: str, results: Results
) -> None:
    names = list(openers)
    configs = [(c, p) for c in args.concurrency for p in args.pools]
    for rnd in range(args.rounds):
        for idx, (conc, pool) in enumerate(configs):
            for name in rotated(names, rnd + idx):
                done, wall, cpu, capped = one_worker_run(
                    openers[name], url, args.requests, conc, pool, args.warmup, args.max_seconds
                )
                run = Run("workers", name, conc, pool, rnd, done, wall, cpu, capped)
                results.runs.append(run)
                log(
                    f"[round {rnd + 1}/{args.rounds}] c={conc:<5} pool={pool:<4} {name:<9}"
                    f"{done:>7} req {wall:7.2f} s {run.rps:8.0f} req/s "
                    f"{run.cpu_us:8.0f} us CPU/req{'  (capped)' if capped else ''}"
                )


def run_gather_scenario(
    args: argparse.Namespace, openers: dict[str, ClientOpener], url: str, results: Results
) -> None:
    names = list(openers)
    sizes = sorted(set(args.gather) | set(args.httpx_gather))
    for rnd in range(args.gather_rounds):
        for idx, n in enumerate(sizes):
            for name in rotated(names, rnd + idx):
                wanted = args.httpx_gather if name == HTTPX else args.gather
                if n not in wanted:
                    continue
                done, wall, cpu = one_gather_run(
                    openers[name], url, n, args.gather_pool, args.warmup
                )
                run = Run("gather", name, n, args.gather_pool, rnd, done, wall, cpu, False)
                results.runs.append(run)
                log(
                    f"[gather {rnd + 1}/{args.gather_rounds}] N={n:<6} pool={args.gather_pool:<4}"
                    f" {name:<9} {wall:7.2f} s wall {cpu:7.2f} s CPU {run.cpu_us:8.0f} us CPU/req"
                )


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    if v is None or v != v:  # None or NaN
        return "-"
    return format(v, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _pair(stats: dict[str, Stat | None], a: str, b: str) -> list[str]:
    """[CPU advantage of a over b (b's CPU / a's), req/s of a over b]."""
    sa, sb = stats.get(a), stats.get(b)
    cpu = _ratio(sb.cpu_us if sb else None, sa.cpu_us if sa else None)
    rps = _ratio(sa.rps if sa else None, sb.rps if sb else None)
    return [_fmt(cpu, ".2f") + "x", _fmt(rps, ".2f") + "x"]


def worker_table(args: argparse.Namespace, names: list[str], results: Results) -> str:
    headers = ["conc", "pool"]
    for n in names:
        headers += [f"{n} req/s", f"{n} CPU us/req"]
    has_ex = EX in names
    if has_ex and HTTPX in names:
        headers += ["httpx/Ex CPU", "Ex/httpx req/s"]
    if has_ex and AIOHTTP in names:
        headers += ["aiohttp/Ex CPU", "Ex/aiohttp req/s"]
    if not has_ex and HTTPX in names and AIOHTTP in names:
        headers += ["httpx/aiohttp CPU", "aiohttp/httpx req/s"]
    rows: list[list[str]] = []
    for conc in args.concurrency:
        for pool in args.pools:
            row = [str(conc), str(pool)]
            stats = {n: results.median("workers", n, conc, pool) for n in names}
            for n in names:
                s = stats[n]
                mark = "*" if s is not None and s.capped else ""
                row += [
                    _fmt(s.rps if s else None, ",.0f") + mark,
                    _fmt(s.cpu_us if s else None, ",.0f")
                    + (f" ({s.cpu_min:,.0f}-{s.cpu_max:,.0f})" if s and s.runs > 1 else ""),
                ]
            if has_ex and HTTPX in names:
                row += _pair(stats, EX, HTTPX)
            if has_ex and AIOHTTP in names:
                row += _pair(stats, EX, AIOHTTP)
            if not has_ex and HTTPX in names and AIOHTTP in names:
                row += _pair(stats, AIOHTTP, HTTPX)
            rows.append(row)
    return render_table(headers, rows)


def gather_table(args: argparse.Namespace, names: list[str], results: Results) -> str:
    sizes = sorted(set(args.gather) | set(args.httpx_gather))
    headers = ["N", "pool"]
    for n in names:
        headers += [f"{n} CPU s", f"{n} CPU us/req", f"{n} vs first N", f"{n} wall s"]
    rows = []
    first: dict[str, float] = {}
    for size in sizes:
        row = [str(size), str(args.gather_pool)]
        for n in names:
            s = results.median("gather", n, size, args.gather_pool)
            if s is not None:
                first.setdefault(n, s.cpu_us)
            wall = None
            if s:
                walls = [r.wall_s for r in results.select("gather", n, size, args.gather_pool)]
                wall = statistics.median(walls)
            row += [
                _fmt(s.cpu_s if s else None, ".2f"),
                _fmt(s.cpu_us if s else None, ",.0f"),
                _fmt(_ratio(s.cpu_us, first[n]) if s else None, ".2f") + ("x" if s else ""),
                _fmt(wall, ".2f"),
            ]
        rows.append(row)
    return render_table(headers, rows)


@dataclass
class Target:
    text: str
    value: float | None  # the measured ratio / figure
    limit: str
    ok: bool | None  # None: not measurable in this run

    @property
    def verdict(self) -> str:
        return "N/A " if self.ok is None else ("PASS" if self.ok else "FAIL")


def evaluate_targets(args: argparse.Namespace, results: Results) -> list[Target]:
    def w(client: str, conc: int, pool: int) -> Stat | None:
        return results.median("workers", client, conc, pool)

    def check(text: str, value: float | None, limit: str, op: str, bound: float) -> Target:
        ok = (
            {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
            if value is not None
            else None
        )
        return Target(text, value, limit, ok)

    targets: list[Target] = []
    for pool in args.pools:
        for conc, need in ((100, 4.0), (1000, 15.0)):
            ex, hx = w(EX, conc, pool), w(HTTPX, conc, pool)
            v = _ratio(hx.cpu_us if hx else None, ex.cpu_us if ex else None)
            targets.append(
                check(
                    f"CPU/req ExClient vs httpx, c={conc}, pool={pool}",
                    v,
                    f">= {need:g}x better",
                    ">=",
                    need,
                )
            )
    base = w(EX, 10, 10)
    for conc, pool in ((1000, 10), (1000, 100), (100, 100)):
        s = w(EX, conc, pool)
        v = _ratio(s.cpu_us if s else None, base.cpu_us if base else None)
        targets.append(
            check(
                f"ExClient CPU/req c={conc},pool={pool} vs c=10,pool=10",
                v,
                "<= 1.2x",
                "<=",
                1.2,
            )
        )
    for pool in args.pools:
        ex, aio = w(EX, 100, pool), w(AIOHTTP, 100, pool)
        v = _ratio(ex.rps if ex else None, aio.rps if aio else None)
        targets.append(
            check(
                f"ExClient req/s vs aiohttp, c=100, pool={pool}",
                v,
                ">= 0.35x",
                ">=",
                0.35,
            )
        )
    gp = args.gather_pool
    big = results.median("gather", EX, 20000, gp)
    small = results.median("gather", EX, 1000, gp)
    targets.append(
        check(
            f"ExClient gather N=20000 total CPU (pool {gp})",
            big.cpu_s if big else None,
            "< 15 s",
            "<",
            15.0,
        )
    )
    v = _ratio(big.cpu_us if big else None, small.cpu_us if small else None)
    targets.append(
        check(
            "ExClient gather CPU/req N=20000 vs N=1000 (flat)",
            v,
            "<= 1.2x",
            "<=",
            1.2,
        )
    )
    return targets


def targets_text(targets: list[Target]) -> str:
    out = []
    for t in targets:
        val = "not measured" if t.value is None else f"{t.value:.2f}"
        out.append(f"  {t.verdict}  {t.text}: {val} (target {t.limit})")
    return "\n".join(out)


def environment() -> dict[str, Any]:
    commit = dirty = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
        "httpcore": importlib.import_module("httpcore").__version__,
        "commit": commit + ("+dirty-src" if dirty else ""),
        "event_loop": "asyncio default policy (no uvloop)",
    }


# --------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------


def run_profile(args: argparse.Namespace, opener: ClientOpener, url: str) -> None:
    conc, pool = args.profile_concurrency, args.profile_pool
    log(
        f"profiling {args.profile_client} c={conc} pool={pool} requests={args.requests} "
        f"with {args.profiler}"
    )

    if args.profiler == "pyinstrument":
        try:
            pyinstrument = importlib.import_module("pyinstrument")
        except ImportError:
            raise SystemExit("pyinstrument is not installed (pip install pyinstrument)") from None
        profiler: Any = pyinstrument.Profiler(async_mode="disabled")
    else:
        import cProfile

        # The default (wall) timer: a CPU-time timer is a syscall here and triples the
        # overhead. On a loaded machine, preemption shows up as time of whatever ran.
        profiler = cProfile.Profile()

    async def go() -> tuple[int, float, float, bool]:
        async with opener(pool) as get:
            await warm_up(get, url, pool, conc, args.warmup)
            stopped = False

            def stop() -> None:
                nonlocal stopped
                if not stopped:
                    stopped = True
                    if args.profiler == "cprofile":
                        profiler.disable()
                    else:
                        profiler.stop()

            if args.profiler == "cprofile":
                profiler.enable()
            else:
                profiler.start()
            try:
                return await measure_workers(
                    get, url, args.requests, conc, args.max_seconds, on_window_end=stop
                )
            finally:
                stop()

    done, wall, cpu, capped = run_in_fresh_loop(go)
    print(
        f"\n{args.profile_client} c={conc} pool={pool}: {done} requests, {wall:.2f} s wall, "
        f"{cpu / max(done, 1) * 1e6:.0f} us CPU/req under the profiler"
        f"{' (capped)' if capped else ''}\n"
    )
    if args.profiler == "pyinstrument":
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    import pstats
    import sysconfig

    print(
        "note: cProfile counts every resumption of a coroutine as a call, so ncalls of\n"
        "async functions exceed the request count; times are wall-clock seconds.\n"
    )
    paths = sysconfig.get_paths()
    prefixes = sorted(
        {p.rstrip("/") + "/" for p in (paths["purelib"], paths["platlib"], str(SRC))}
        | {paths["stdlib"].rstrip("/") + "/"}
        | {str(ROOT) + "/"},
        key=len,
        reverse=True,
    )

    for key, title in (("cumulative", "cumulative time"), ("tottime", "self time")):
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.sort_stats(key).print_stats(args.profile_top)
        print(f"=== top {args.profile_top} by {title} (seconds) ===")
        text = buf.getvalue()
        start = text.find("   ncalls")
        text = text[start:] if start >= 0 else text
        for prefix in prefixes:  # httpx/_client.py vs httpx_extensions/_client.py stay apart
            text = text.replace(prefix, "")
        print(text)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="ExClient vs httpx.AsyncClient vs aiohttp against a private nginx.",
    )
    p.add_argument("--requests", type=int, default=20_000, help="GETs per worker run")
    p.add_argument(
        "--concurrency",
        type=int_list,
        default=[10, 100, 1000],
        help="worker counts (comma-separated)",
    )
    p.add_argument("--pools", type=int_list, default=[10, 100], help="pool sizes")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="cap on one measured worker run; a capped run counts the requests done "
        "in the window and is marked '*' (0: no cap)",
    )
    p.add_argument("--warmup", type=int, default=200, help="warm-up GETs before each run")
    p.add_argument(
        "--clients",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(ALL_CLIENTS),
        help=f"subset of {','.join(ALL_CLIENTS)}",
    )
    p.add_argument(
        "--gather",
        type=int_list,
        default=[1000, 5000, 20000],
        help="gather sizes N for ExClient and aiohttp",
    )
    p.add_argument(
        "--httpx-gather",
        type=int_list,
        default=[1000, 2000],
        help="gather sizes for stock httpx (quadratic: 20000 is ~an hour of CPU)",
    )
    p.add_argument("--gather-pool", type=int, default=100, help="pool size for gather")
    p.add_argument("--gather-rounds", type=int, default=1, help="rounds of the gather scenario")
    p.add_argument("--no-workers", action="store_true", help="skip the worker scenario")
    p.add_argument("--no-gather", action="store_true", help="skip the gather scenario")
    p.add_argument("--json", type=Path, help="write all runs, medians and targets here")
    p.add_argument("--url", help="use this server (…/json, 1 KB body) instead of starting nginx")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: few hundred requests, 1 round, small gathers",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="only profile one client (default ExClient) at concurrency 1000",
    )
    p.add_argument("--profile-client", default=EX, choices=ALL_CLIENTS)
    p.add_argument("--profile-concurrency", type=int, default=1000)
    p.add_argument("--profile-pool", type=int, default=100)
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    args = p.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 300)
        args.rounds = 1
        args.warmup = min(args.warmup, 20)
        args.gather = [100, 300]
        args.httpx_gather = [100]
        args.max_seconds = min(args.max_seconds or 10.0, 10.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.profile:
        openers = client_openers([args.profile_client])
        if args.profile_client not in openers:
            print(f"{args.profile_client} is not available: nothing to profile", file=sys.stderr)
            return 2
    else:
        openers = client_openers(args.clients)
    names = list(openers)

    with contextlib.ExitStack() as stack:
        url = args.url
        if not url:
            nginx = find_nginx()
            if nginx is None:
                print(
                    "nginx not found (install nginx-light, or pass --url / NGINX=)", file=sys.stderr
                )
                return 2
            url = stack.enter_context(nginx_server(nginx))
        log(f"server: {url}; clients: {', '.join(names)}; loop: asyncio (default policy)")

        if args.profile:
            run_profile(args, openers[args.profile_client], url)
            return 0

        results = Results()
        if not args.no_workers:
            run_worker_scenario(args, openers, url, results)
        if not args.no_gather:
            run_gather_scenario(args, openers, url, results)

    env = environment()
    elapsed = time.perf_counter() - started
    print()
    print(
        f"Pool benchmark: {args.requests} GETs of a {BODY_SIZE}-byte JSON from nginx on "
        f"loopback; median of {args.rounds} interleaved round(s); CPU = this process's "
        f"user+sys (getrusage); python {env['python']}, httpx {env['httpx']}, "
        f"httpcore {env['httpcore']}, aiohttp {env['aiohttp']}, {env['cpus']} CPUs, "
        f"commit {env['commit'] or '?'}"
    )
    if EX not in names and not args.profile:
        print("ExClient: not available in this checkout (httpx and aiohttp only)")
    if not args.no_workers:
        print(
            "\nWorker scenario (concurrency = worker tasks; CPU us/req median (min-max); "
            "ratios > 1 favour ExClient; '*' = run capped at --max-seconds):"
        )
        print(worker_table(args, names, results))
    if not args.no_gather:
        print(
            f"\nGather scenario (asyncio.gather of N GETs at once, pool {args.gather_pool}; "
            f"httpx only at N in {args.httpx_gather}):"
        )
        print(gather_table(args, names, results))
    targets = evaluate_targets(args, results)
    print("\nTargets (client CPU per request unless stated):")
    print(targets_text(targets))
    print(f"\ntotal benchmark time {elapsed:.0f} s")

    if args.json:
        medians = []
        for key in sorted({(r.scenario, r.client, r.concurrency, r.pool) for r in results.runs}):
            s = results.median(*key)
            if s is not None:
                medians.append(
                    {
                        "scenario": key[0],
                        "client": key[1],
                        "concurrency_or_n": key[2],
                        "pool": key[3],
                        **asdict(s),
                    }
                )
        payload = {
            "environment": env,
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [r.to_json() for r in results.runs],
            "medians": medians,
            "targets": [
                {"target": t.text, "value": t.value, "limit": t.limit, "verdict": t.verdict.strip()}
                for t in targets
            ],
            "elapsed_s": round(elapsed, 1),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
