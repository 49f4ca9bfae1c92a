"""Soak: many identities and anonymous requests, interleaved, on one ExClient, under faults.

Theory of operation. One :class:`~httpx_extensions.ExClient` sends requests from
``concurrency`` tasks, each drawing (from a seeded RNG) a server and an identity:

* the embedded :class:`~httpx_extensions.testing.AuthServer` (connection-bound Negotiate);
* the :class:`~tests.faults.FaultServer`, whose connections get a fault at ``fault_rate``;
* optionally a real Apache (``/ntlm-cb/``, ``/anon/``), a smaller share.

An identity is one of three ``NTLMAuth`` objects with explicit passwords, or anonymous.
Anonymous requests go half to a path that needs no authentication (the server must report
no user) and half to a protected one (it must answer 401, never 200 as somebody).

Every request is wrapped in ``anyio.fail_after``: a request still running after its budget
is a *hang*. Every request must end in a response or an ``httpx.HTTPError``; anything else
is *unexpected*. A 200 whose server-reported user is not the request's identity is a
*wrong identity*. After the run: the pool must hold nothing active, reserved, connecting or
queued; after closing the client and ``gc``, open file descriptors and RSS must be back
to their baseline (taken after a warm-up) within a tolerance.

Run it for hours from the repository root::

    .venv/bin/python -m tests.soak --seconds 3600 --requests 0 --concurrency 200

The servers run in this process (threads), except Apache (``--apache``: root, and the
packages of ``scripts/install-servers``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import random
import sys
import tempfile
import time
import typing
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as ``python tests/soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import httpx

from httpx_extensions import ExClient, NTLMAuth
from httpx_extensions.testing import AuthServer
from tests.faults import FAULT_KINDS, FaultServer, write_user_file

DOMAIN = "EXAMPLE"
#: The three identities. alice and bob have the real KDC's passwords, so they log on to
#: Apache too; carol exists only on the embedded servers.
USERS = {"alice": "alice-Pa55w0rd", "bob": "bob-Pa55w0rd", "carol": "carol-Pa55w0rd"}
APACHE_USERS = ("alice", "bob")
ANONYMOUS = ""

#: How long the faults wait: ``stall`` outlasts the read timeout (a ReadTimeout), and
#: ``accept_no_answer`` holds the connection until the client gives up.
STALL_SECONDS = 3.0
HOLD_SECONDS = 3.0
HUGE_HEADER_BYTES = 256 * 1024
TIMEOUT = httpx.Timeout(connect=3.0, read=2.0, write=3.0, pool=15.0)
#: A request is hung when it runs longer than this: its pool wait, plus every leg of a
#: bounded handshake (NTLMAuth.max_legs, restarts included), each leg bounded by connect +
#: write + read, plus slack for a loaded 2-CPU machine running the servers in-process.
HANG_SLACK = 10.0


def hang_budget(timeout: httpx.Timeout = TIMEOUT, legs: int = NTLMAuth.max_legs) -> float:
    """Seconds after which a request counts as hung (see :data:`HANG_SLACK`)."""
    leg = (timeout.connect or 0) + (timeout.write or 0) + (timeout.read or 0)
    return (timeout.pool or 0) + legs * leg + HANG_SLACK


@dataclasses.dataclass(frozen=True)
class Target:
    """One server of the soak: where its paths are and how it names the user it served."""

    name: str
    protected: str  # URL of a path that needs authentication
    anonymous: str  # URL of a path that does not
    users: tuple[str, ...]  # identities it knows
    header: str | None  # response header naming the user (None: JSON body "user")
    weight: float


@dataclasses.dataclass
class Report:
    """What a soak run measured; :meth:`problems` lists every violated invariant."""

    backend: str = "asyncio"
    seconds: float = 0.0
    requests: int = 0
    ok: int = 0  # requests that ended with a response (any status)
    served: int = 0  # 200 responses served as the expected identity
    per_target: Counter[str] = dataclasses.field(default_factory=Counter)
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    fault_connections: int = 0
    hangs: int = 0
    wrong_identity: list[str] = dataclasses.field(default_factory=list)
    pool_after: str = ""
    pool_busy: int = 0  # active + reserved + connecting + queued after the run
    fd_before: int = 0
    fd_after: int = 0
    rss_before: int = 0  # bytes
    rss_after: int = 0
    fd_tolerance: int = 0
    rss_tolerance: int = 64 * 1024 * 1024

    def problems(self) -> list[str]:
        """Every invariant the run broke (empty when all held)."""
        out = []
        if self.hangs:
            out.append(f"{self.hangs} requests hung")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} untyped errors, e.g. {self.unexpected[:3]}")
        if self.wrong_identity:
            out.append(f"{len(self.wrong_identity)} wrong identity: {self.wrong_identity[:5]}")
        if self.pool_busy:
            out.append(f"pool not idle after the run: {self.pool_after}")
        if self.fd_after > self.fd_before + self.fd_tolerance:
            out.append(f"file descriptors leaked: {self.fd_before} -> {self.fd_after}")
        if self.rss_after > self.rss_before + self.rss_tolerance:
            out.append(f"memory grew: {self.rss_before >> 20} -> {self.rss_after >> 20} MiB")
        return out

    def table(self) -> str:
        """The summary table (Markdown), as printed by the runner and the test."""
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.most_common()) or "none"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        targets = ", ".join(f"{k} {v}" for k, v in sorted(self.per_target.items()))
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        rows = [
            ("backend", self.backend),
            ("duration", f"{self.seconds:.1f} s"),
            ("requests", f"{self.requests} ({targets})"),
            ("ok (a response)", f"{self.ok} (status {statuses})"),
            ("served as the right user", str(self.served)),
            ("errors by type", f"{sum(self.errors.values())}: {errors}"),
            ("untyped errors", str(len(self.unexpected))),
            ("faults injected", f"{sum(self.faults.values())}: {faults}"),
            ("fault server connections", str(self.fault_connections)),
            ("hangs", str(self.hangs)),
            ("wrong identity", str(len(self.wrong_identity))),
            ("pool after the run", self.pool_after),
            ("fd before / after", f"{self.fd_before} / {self.fd_after}"),
            ("RSS before / after", f"{self.rss_before >> 20} / {self.rss_after >> 20} MiB"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        return "\n".join(lines)


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _user_name(value: str | None) -> str:
    """``EXAMPLE\\alice``, ``alice@EXAMPLE``, ``alice`` -> ``alice``; empty or None -> ``""``."""
    if not value:
        return ANONYMOUS
    return value.rpartition("\\")[2].partition("@")[0].lower()


def _reported_user(target: Target, response: httpx.Response) -> str | None:
    """The user the server says it served (``""``: anonymous), None if it says nothing."""
    if target.header is not None:
        return _user_name(response.headers.get(target.header))
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return _user_name(body.get("user")) if isinstance(body, dict) else None


class Soak:
    """One soak run against the given targets; see the module docstring."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        requests: int,
        seconds: float,
        concurrency: int,
        seed: int = 0,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.targets = list(targets)
        self.requests = requests
        self.seconds = seconds
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.budget = hang_budget(timeout)
        self.auths = {u: NTLMAuth(f"{DOMAIN}\\{u}", p) for u, p in USERS.items()}
        self.report = Report()
        self._issued = 0
        self._deadline = 0.0

    def _draw(self) -> tuple[Target, str, str]:
        target = self.rng.choices(self.targets, [t.weight for t in self.targets])[0]
        user = self.rng.choice([*target.users, ANONYMOUS])
        protected = user != ANONYMOUS or self.rng.random() < 0.5
        url = target.protected if protected else target.anonymous
        return target, user, f"{url}{self.rng.randrange(1000)}"

    def _more(self) -> bool:
        if self.requests and self._issued >= self.requests:
            return False
        if self.seconds and time.monotonic() >= self._deadline:
            return False
        self._issued += 1
        return True

    async def _one(self, client: ExClient, target: Target, user: str, url: str) -> None:
        report = self.report
        report.requests += 1
        report.per_target[target.name] += 1
        auth = self.auths[user] if user else None
        try:
            with anyio.fail_after(self.budget):
                response = await client.get(url, auth=auth)
        except TimeoutError:
            report.hangs += 1
            return
        except httpx.HTTPError as exc:
            report.errors[type(exc).__name__] += 1
            return
        except Exception as exc:  # the invariant under test: nothing untyped escapes
            report.unexpected.append(f"{type(exc).__name__}: {exc}")
            return
        report.ok += 1
        report.statuses[response.status_code] += 1
        if response.status_code != 200:
            return
        got = _reported_user(target, response)
        if got == user:
            report.served += 1
        else:
            report.wrong_identity.append(
                f"{target.name} {url}: asked as {user or 'anonymous'}, served as {got!r}"
            )

    async def _worker(self, client: ExClient) -> None:
        while self._more():
            await self._one(client, *self._draw())

    async def run(self, backend: str) -> Report:
        """Send the requests, check the pool, close the client; fill and return the report."""
        report = self.report
        report.backend = backend
        began = time.monotonic()
        self._deadline = began + self.seconds
        async with ExClient(timeout=self.timeout) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(self._worker, client)
            state = client.pool_state()
            report.pool_after = (
                f"active {state.active}, reserved {state.reserved}, connecting "
                f"{state.connecting}, queued {state.queued}, idle {state.idle}"
            )
            report.pool_busy = state.active + state.reserved + state.connecting + state.queued
        report.seconds = time.monotonic() - began
        return report


# -- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_targets(
    fault_rate: float,
    seed: int = 0,
    weights: tuple[float, float] = (0.5, 0.5),
    stall_seconds: float = STALL_SECONDS,
) -> Iterator[tuple[list[Target], FaultServer]]:
    """Start the AuthServer and the FaultServer (same users, same domain) for a soak.

    Both run in this process. The FaultServer's acceptor reads ``NTLM_USER_FILE`` from the
    environment, which the AuthServer also sets (under its lock) while it steps: both
    files hold the same users, so whichever it reads, the passwords agree.
    """
    with tempfile.TemporaryDirectory(prefix="httpx-ext-soak-") as tmp:
        lines = [(d, u, p) for u, p in USERS.items() for d in (DOMAIN, "")]
        user_file = write_user_file(Path(tmp) / "users.txt", lines)
        saved = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(user_file)
        faults = FaultServer(
            rate=fault_rate,
            kinds=FAULT_KINDS,
            seed=seed,
            fault_on_request=(1, 8),
            stall_seconds=stall_seconds,
            hold_seconds=HOLD_SECONDS,
            huge_header_bytes=HUGE_HEADER_BYTES,
            idle_timeout=10.0,
            max_connections=512,
        )
        try:
            with AuthServer(users=USERS, domain=DOMAIN) as auth, faults:
                users = tuple(USERS)
                auth_target = Target(
                    "auth", auth.url + "/p/", auth.url + "/anon/", users, None, weights[0]
                )
                fault_target = Target(
                    "faults", faults.url + "/auth/", faults.url + "/plain/", users, None, weights[1]
                )
                yield [auth_target, fault_target], faults
        finally:
            if saved is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = saved


def apache_target(apache: typing.Any, weight: float) -> Target:
    """The real Apache's connection-bound NTLM location and its anonymous one."""
    return Target(
        "apache",
        apache.urls["ntlm_cb"],
        apache.urls["anon"],
        APACHE_USERS,
        "X-Remote-User",
        weight,
    )


@contextlib.contextmanager
def started_apache() -> Iterator[typing.Any]:
    """Start a KDC and Apache of tests/servers in a temporary directory (root only)."""
    from tests.servers._apache import start_apache
    from tests.servers._kdc import start_kdc

    directory = Path(tempfile.mkdtemp(prefix="httpx-ext-soak-servers-"))
    directory.chmod(0o755)
    (directory / "kdc").mkdir()
    kdc = start_kdc(directory / "kdc")
    try:
        apache = start_apache(kdc, directory / "apache")
        try:
            yield apache
        finally:
            apache.stop()
    finally:
        kdc.stop()


def settle(report: Report, fd_before: int, wait: float = 5.0) -> None:
    """After the client closed: collect garbage, wait for the servers to drop their ends."""
    deadline = time.monotonic() + wait
    while True:
        gc.collect()
        report.fd_after = open_fds()
        if report.fd_after <= fd_before + report.fd_tolerance or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    report.rss_after = rss_bytes()


def soak(
    targets: Sequence[Target],
    faults: FaultServer,
    *,
    requests: int,
    seconds: float,
    concurrency: int,
    backend: str = "asyncio",
    seed: int = 0,
    warmup: int = 1000,
) -> Report:
    """Warm up, take the baseline, run the soak, settle, and return the report."""
    if warmup:
        anyio.run(
            Soak(targets, requests=warmup, seconds=0, concurrency=concurrency, seed=seed + 1).run,
            backend,
            backend=backend,
        )
    settle(Report(), open_fds(), wait=0.5)
    faults.reset()
    gc.collect()
    fd_before, rss_before = open_fds(), rss_bytes()
    run = Soak(targets, requests=requests, seconds=seconds, concurrency=concurrency, seed=seed)
    report = anyio.run(run.run, backend, backend=backend)
    report.fd_before, report.rss_before = fd_before, rss_before
    stats = faults.stats()
    report.faults, report.fault_connections = dict(stats.faults), stats.connections
    settle(report, fd_before)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run a soak from the command line; exit 1 if an invariant broke."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=20_000, help="0: no limit")
    parser.add_argument("--seconds", type=float, default=0, help="0: no limit")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apache", action="store_true", help="also a real Apache (root)")
    parser.add_argument("--apache-share", type=float, default=0.1)
    args = parser.parse_args(argv)
    if not args.requests and not args.seconds:
        parser.error("give --requests or --seconds (or both)")
    with contextlib.ExitStack() as stack:
        share = args.apache_share if args.apache else 0.0
        half = (1.0 - share) / 2
        targets, faults = stack.enter_context(
            embedded_targets(args.fault_rate, args.seed, (half, half))
        )
        if args.apache:
            targets.append(apache_target(stack.enter_context(started_apache()), share))
        report = soak(
            targets,
            faults,
            requests=args.requests,
            seconds=args.seconds,
            concurrency=args.concurrency,
            backend=args.backend,
            seed=args.seed,
        )
    print(report.table())
    for problem in report.problems():
        print("FAIL:", problem)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
