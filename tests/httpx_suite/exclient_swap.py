"""Pytest plugin: run httpx's own test suite with ``httpx.AsyncClient`` swapped for ours.

``tests/httpx_suite/run.py`` loads it with ``-p exclient_swap`` (this folder on
``PYTHONPATH``, because the upstream suite owns the top-level ``tests`` package) into a
pytest session rooted at the unpacked httpx sdist. The same plugin serves both passes, the
stock baseline and the swapped run, so their records have one shape.

Theory of operation
-------------------
1. Swap. With ``--httpx-suite-swap module:Class`` the class is imported in
   ``pytest_configure`` (before collection, so before any upstream test module is imported)
   and bound as ``httpx.AsyncClient`` and ``httpx._client.AsyncClient``. Without the option
   nothing is swapped: that is the baseline pass. ``pytest_unconfigure`` restores httpx.
2. Count. The swapped class's ``__init__`` is wrapped so that every transport a new client
   holds (``_transport`` and each value of ``_mounts``, the two attributes httpx 0.28 routes
   through) gets its ``handle_async_request`` wrapped on the instance. A response whose
   ``extensions`` carry ``"conn_id"`` was served by our pool: it is counted against the
   node id of the running test. Counting by that extension, not by log lines or class
   names, means a count above zero proves our pool served the request.
3. Record. Each test's outcome (all phases folded into one word), its failure message and a
   bounded traceback, and its pool counts are written as JSON at session end
   (``--httpx-suite-report PATH``) and summed up in the terminal summary.

This plugin must not know anything about individual upstream tests: which of them may fail,
and why, is the runner's business.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
import sys
import typing
from pathlib import Path

import httpx
import httpx._client
import pytest

_WRAPPED = "_httpx_suite_counted"
_MAX_LONGREPR = 6000
_REPORT_VERSION = 1


@dataclasses.dataclass
class Record:
    """What one upstream test did: its outcome and how much of it went through our pool."""

    raw_nodeid: str
    outcome: str = "passed"
    message: str = ""
    longrepr: str = ""
    duration: float = 0.0
    clients: int = 0
    pool_requests: int = 0
    pool_responses: int = 0
    transport_errors: int = 0


class SuiteRecorder:
    """Holds the swap, the per-test records and the pool counters of one pytest session."""

    def __init__(self, swap_spec: str | None, report_path: Path | None) -> None:
        self.swap_spec = swap_spec
        self.report_path = report_path
        self.swapped: type[httpx.AsyncClient] | None = None
        self.original: type[httpx.AsyncClient] = httpx.AsyncClient
        self.original_init: typing.Callable[..., None] | None = None
        self.own_init = False
        self.tests: dict[str, Record] = {}
        self.collect_errors: dict[str, str] = {}
        self.current: str | None = None
        self.uninstrumented = 0
        self.package = ""
        self.alias: re.Pattern[str] | None = None
        self.outside_tests = 0

    # -- swap ---------------------------------------------------------------------------

    def install(self) -> None:
        """Import the class named by the swap spec and bind it where httpx code looks it up.

        Raises:
            pytest.UsageError: the spec is malformed, or names something that is not an
                ``httpx.AsyncClient`` subclass; fix ``--httpx-suite-swap``.
        """
        if self.swap_spec is None:
            return
        module_name, _, class_name = self.swap_spec.partition(":")
        if not module_name or not class_name:
            raise pytest.UsageError(
                f"--httpx-suite-swap wants module:Class, got {self.swap_spec!r}"
            )
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, httpx.AsyncClient)):
            raise pytest.UsageError(f"{self.swap_spec} is not a subclass of httpx.AsyncClient")
        self.swapped = cls
        # Taken now: upstream's test_httpcore_lazy_loading re-imports httpx, whose
        # ``__init__`` then rewrites ``__module__`` of every class it exports, ours included.
        self.package = cls.__module__.split(".")[0]
        self.alias = re.compile(rf"(?<![\w.]){re.escape(cls.__name__)}(?!\w)")
        self.own_init = "__init__" in vars(cls)
        original_init: typing.Callable[..., None] = cls.__init__
        self.original_init = original_init
        recorder = self

        @functools.wraps(original_init)
        def __init__(client: httpx.AsyncClient, *args: typing.Any, **kwargs: typing.Any) -> None:
            original_init(client, *args, **kwargs)
            recorder.instrument(client)

        # Assigned on the class itself (not a subclass), so type(client) is the real class.
        setattr(cls, "__init__", __init__)  # noqa: B010 (mypy rejects a direct assignment)
        httpx.AsyncClient = cls  # type: ignore[misc]
        httpx._client.AsyncClient = cls  # type: ignore[misc]

    def uninstall(self) -> None:
        """Undo :meth:`install`: httpx gets its own class back, ours its own ``__init__``."""
        if self.swapped is None:
            return
        if self.own_init:
            setattr(self.swapped, "__init__", self.original_init)  # noqa: B010
        else:
            delattr(self.swapped, "__init__")
        httpx.AsyncClient = self.original  # type: ignore[misc]
        httpx._client.AsyncClient = self.original  # type: ignore[misc]
        self.swapped = None

    # -- count --------------------------------------------------------------------------

    def _record(self) -> Record | None:
        """The record of the running test, or None outside any test."""
        if self.current is None:
            self.outside_tests += 1
            return None
        return self.tests.setdefault(self.nodeid(self.current), Record(self.current))

    def instrument(self, client: httpx.AsyncClient) -> None:
        """Wrap every transport ``client`` routes through so its responses are counted."""
        record = self._record()
        if record is not None:
            record.clients += 1
        mounts = getattr(client, "_mounts", {}) or {}
        transports = [getattr(client, "_transport", None), *mounts.values()]
        for transport in transports:
            if transport is not None:
                self._wrap(transport)

    def _wrap(self, transport: httpx.AsyncBaseTransport) -> None:
        """Wrap ``transport.handle_async_request`` on the instance, once."""
        if getattr(transport, _WRAPPED, False):
            return
        original = transport.handle_async_request
        ours = bool(self.package) and type(transport).__module__.startswith(self.package)
        recorder = self

        async def handle_async_request(request: httpx.Request) -> httpx.Response:
            record = recorder._record()
            if record is not None and ours:
                record.pool_requests += 1
            try:
                response = await original(request)
            except BaseException:
                if record is not None and ours:
                    record.transport_errors += 1
                raise
            if record is not None and "conn_id" in response.extensions:
                record.pool_responses += 1
            return response

        try:
            transport.handle_async_request = handle_async_request  # type: ignore[method-assign]
            setattr(transport, _WRAPPED, True)
        except (AttributeError, TypeError):
            self.uninstrumented += 1

    def nodeid(self, nodeid: str) -> str:
        """``nodeid`` as the baseline names it.

        Tests parametrized over ``[httpx.Client, httpx.AsyncClient]`` take their id from the
        class name, so the swapped pass would say ``[ExClient-...]`` where the baseline says
        ``[AsyncClient-...]``; only the parameter part is rewritten.
        """
        head, bracket, params = nodeid.partition("[")
        if self.alias is None or not bracket:
            return nodeid
        return head + bracket + self.alias.sub("AsyncClient", params)

    # -- record -------------------------------------------------------------------------

    def on_report(self, report: pytest.TestReport) -> None:
        """Fold one phase's report into the test's single outcome word.

        The outcome is one of passed, failed (the call failed), error (setup or teardown
        failed), skipped, xfailed, xpassed. A failure in any phase beats a pass.
        """
        record = self.tests.setdefault(self.nodeid(report.nodeid), Record(report.nodeid))
        record.duration += report.duration
        if report.when == "call":
            if hasattr(report, "wasxfail"):
                record.outcome = "xfailed" if report.skipped else "xpassed"
            elif report.failed:
                record.outcome = "failed"
            elif report.skipped:
                record.outcome = "skipped"
        elif report.failed and record.outcome not in ("failed", "error"):
            record.outcome = "error"
        elif report.skipped and report.when == "setup":
            record.outcome = "skipped"
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = getattr(crash, "message", "") if crash is not None else ""
            if not record.message:
                lines = str(message).strip().splitlines() or report.longreprtext.splitlines()
                record.message = f"{report.when}: {lines[0] if lines else '?'}"
            text = report.longreprtext
            if len(text) > _MAX_LONGREPR:
                text = text[: _MAX_LONGREPR // 3] + "\n[...]\n" + text[-2 * _MAX_LONGREPR // 3 :]
            record.longrepr = (record.longrepr + f"\n--- {report.when} ---\n" + text).strip()

    def summary(self) -> dict[str, int]:
        """Totals over the session: outcomes, and what went through our pool."""
        totals: dict[str, int] = {}
        for record in self.tests.values():
            totals[record.outcome] = totals.get(record.outcome, 0) + 1
        totals["pool_tests"] = sum(1 for r in self.tests.values() if r.pool_requests)
        totals["served_tests"] = sum(1 for r in self.tests.values() if r.pool_responses)
        totals["pool_responses"] = sum(r.pool_responses for r in self.tests.values())
        totals["pool_requests"] = sum(r.pool_requests for r in self.tests.values())
        totals["clients"] = sum(r.clients for r in self.tests.values())
        totals["collect_errors"] = len(self.collect_errors)
        totals["uninstrumented_transports"] = self.uninstrumented
        return totals

    def write(self, exitstatus: int) -> None:
        """Write the JSON report the runner compares, if a path was given."""
        if self.report_path is None:
            return
        swapped = self.swap_spec
        data = {
            "version": _REPORT_VERSION,
            "swap": swapped,
            "httpx_version": httpx.__version__,
            "python": sys.version.split()[0],
            "exitstatus": exitstatus,
            "summary": self.summary(),
            "collect_errors": self.collect_errors,
            "tests": {k: dataclasses.asdict(v) for k, v in sorted(self.tests.items())},
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(data, indent=1), encoding="utf-8")

    # -- hooks (this object is registered as a plugin) -----------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> typing.Generator[None, object, object]:
        """Attribute every counted request to the test that is running."""
        self.current = item.nodeid
        try:
            return (yield)
        finally:
            self.current = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record each phase of each test."""
        self.on_report(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """Record collection errors: a module that fails to import loses all its tests."""
        if report.failed:
            self.collect_errors[report.nodeid] = report.longreprtext[-_MAX_LONGREPR:]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the JSON report."""
        self.write(int(exitstatus))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Say what was swapped and how many tests and responses went through our pool."""
        totals = self.summary()
        terminalreporter.section("httpx suite")
        if self.swap_spec is None:
            terminalreporter.write_line("httpx.AsyncClient: stock (baseline pass)")
        else:
            terminalreporter.write_line(f"httpx.AsyncClient swapped for {self.swap_spec}")
            terminalreporter.write_line(
                f"pool: {totals['pool_tests']} tests sent {totals['pool_requests']} requests "
                f"to our transports; {totals['served_tests']} tests got "
                f"{totals['pool_responses']} responses with conn_id; "
                f"{totals['clients']} clients built"
            )
        if self.report_path is not None:
            terminalreporter.write_line(f"report: {self.report_path}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Give httpx its own ``AsyncClient`` back."""
        self.uninstall()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--httpx-suite-swap`` and ``--httpx-suite-report``."""
    group = parser.getgroup("httpx-suite", "httpx's own suite against httpx_extensions")
    group.addoption(
        "--httpx-suite-swap",
        metavar="MODULE:CLASS",
        default=None,
        help="bind this httpx.AsyncClient subclass as httpx.AsyncClient before collection",
    )
    group.addoption(
        "--httpx-suite-report",
        metavar="PATH",
        default=None,
        help="write per-test outcomes and pool counts to this JSON file",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Do the swap before any test module is collected, and register the recorder."""
    report = config.getoption("--httpx-suite-report")
    recorder = SuiteRecorder(
        config.getoption("--httpx-suite-swap"), Path(report) if report else None
    )
    recorder.install()
    config.pluginmanager.register(recorder, "httpx-suite-recorder")
