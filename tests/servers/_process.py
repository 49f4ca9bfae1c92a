"""Start, watch and stop the server processes of the real-server tests.

Theory of operation: every server runs in its own session (``start_new_session``), so
stopping it means signalling the whole process group: the Apache parent and its
workers, nginx's master and workers go at once (squid's auth helpers, which squid puts
in sessions of their own, exit when squid closes their stdin).

Two nets catch what a finalizer misses:

1. an ``atexit`` hook stops every server still running when the interpreter exits;
2. ``setpriv --pdeathsig TERM`` makes the kernel signal a server when the process that
   started it dies, even by SIGKILL. The kernel forgets that request when a process
   changes its uid (squid becomes ``proxy``), so such a server runs under a small root
   shell that keeps it and kills the group (``watchdog=True``).

Each process writes stdout and stderr into a log file in its private directory; when it
dies during start-up, the tail of that file is put in the exception. This module knows
nothing about what the servers are.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ServerError",
    "ServerProcess",
    "ServerUnavailable",
    "chown",
    "free_port",
    "is_root",
    "require_binaries",
    "require_files",
    "wait_until",
]

#: Path searched for the servers' binaries (sbin is often missing from a user's PATH).
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Runs "$@" in the background; on SIGTERM kills (SIGKILL) its whole process group.
_WATCHDOG = 'trap "kill -KILL 0" TERM; "$@" & wait $!'
#: Servers started and not stopped yet; stopped at interpreter exit.
_RUNNING: set[ServerProcess] = set()


class ServerUnavailable(RuntimeError):
    """A server cannot be started here: a package is missing.

    Callers skip the tests that need it (or fail them in CI).
    """


class ServerError(RuntimeError):
    """A server that is installed failed to start or to answer: a real error to report."""


def is_root() -> bool:
    """Return True when running as root (servers then drop to www-data / proxy)."""
    return os.geteuid() == 0


def require_binaries(*names: str) -> dict[str, str]:
    """Find each binary by name or absolute path.

    Returns:
        A mapping of the name given to the absolute path found.

    Raises:
        ServerUnavailable: one is missing; run ``scripts/install-servers`` as root.
    """
    found: dict[str, str] = {}
    missing = []
    for name in names:
        path = shutil.which(name, path=SEARCH_PATH)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise ServerUnavailable(
            f"missing {', '.join(missing)}: run scripts/install-servers as root to enable"
        )
    return found


def require_files(*paths: str | Path, package: str) -> None:
    """Check that every file exists.

    Raises:
        ServerUnavailable: one is missing; ``package`` is named in the message.
    """
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:
        raise ServerUnavailable(
            f"missing {', '.join(missing)} ({package}): "
            "run scripts/install-servers as root to enable"
        )


def free_port(*hosts: str) -> int:
    """Return a TCP port that is free on every host given (127.0.0.1 by default).

    The port is released before returning, so another process may take it first:
    callers retry the start-up when a bind fails.
    """
    hosts = hosts or ("127.0.0.1",)
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        if all(_port_free(host, port) for host in hosts[1:]):
            return port
    raise ServerError(f"no port free on all of {hosts}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def chown(path: Path, user: str, mode: int) -> None:
    """Give ``path`` to ``user`` (only when root) and set its mode."""
    if is_root():
        shutil.chown(path, user, user)
    path.chmod(mode)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms until it is true.

    Raises:
        ServerError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass(eq=False)
class ServerProcess:
    """One server process (and its process group) started by :meth:`start`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: Seconds between SIGTERM and SIGKILL when stopping.
    grace: float = 5.0
    stopped: bool = field(default=False)

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
        grace: float = 5.0,
        watchdog: bool = False,
    ) -> ServerProcess:
        """Start ``argv`` in a new session with exactly ``env``, output into ``log``.

        ``grace`` is how long :meth:`stop` lets it shut down before killing it;
        ``watchdog`` runs it under a shell that outlives its change of uid.
        """
        setpriv = shutil.which("setpriv", path=SEARCH_PATH)
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        if watchdog:
            prefix += ["/bin/sh", "-c", _WATCHDOG, "watchdog"]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        process = cls(name, popen, log, grace)
        _RUNNING.add(process)
        return process

    def log_tail(self, lines: int = 15) -> str:
        """Return the last lines of the process's output."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise ServerError (with the log tail) when the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ServerError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def wait_port(self, host: str, port: int, timeout: float = 8.0) -> None:
        """Wait until ``host:port`` accepts TCP connections.

        Raises:
            ServerError: the process died or the port never opened.
        """

        def listening() -> bool:
            self.check_alive()
            try:
                socket.create_connection((host, port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, timeout, f"{self.name} on {host}:{port}")

    def stop(self) -> None:
        """Terminate the whole process group, then kill what is left after :attr:`grace`."""
        if self.stopped:
            return
        self.stopped = True
        _RUNNING.discard(self)
        pgid = self.popen.pid
        self._signal_group(pgid, signal.SIGTERM)
        try:
            self.popen.wait(self.grace)
        except subprocess.TimeoutExpired:
            self._signal_group(pgid, signal.SIGKILL)
            self.popen.wait(5.0)
        # Children that outlive their parent (helpers, workers) go too.
        self._signal_group(pgid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@atexit.register
def _stop_all() -> None:
    for process in list(_RUNNING):
        process.stop()
