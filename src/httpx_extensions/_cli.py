"""The ``httpx-extensions`` command line: ``get``, ``fetch``, ``serve`` and ``demo``.

Theory of operation. This module parses options and builds the auth object and the
:class:`~httpx_extensions.ExClient`; the bulk engine is :mod:`._fetch`, the terminal side of
a run :mod:`._cli_run`, the demo :mod:`._demo`. Secrets: a password comes from ``-u
USER:PASSWORD`` or a hidden prompt and goes only into the auth object; every header or URL
printed passes through :mod:`._cli_output`.

Exit codes: 0 success; 1 a request failed (or a bad input line); 2 usage error; 22 ``get``
received an HTTP status of 400 or more; 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import functools
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
import httpx
from rich.console import Console

from ._auth import KerberosAuth, NegotiateAuth, NTLMAuth
from ._cli_output import mask_url, request_lines, response_lines
from ._cli_run import instrument, run_job
from ._client import ExClient
from ._fetch import FetchOptions, ResultWriter, load_done
from ._summary import RunStats, summary_table
from ._version import __version__

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])
_AUTH_CLASSES = {"negotiate": NegotiateAuth, "ntlm": NTLMAuth, "kerberos": KerberosAuth}


def request_options(func: F) -> F:
    """The options ``get`` and ``fetch`` share: auth, headers, method, body, proxy, TLS."""
    options = [
        click.option("--negotiate", "scheme", flag_value="negotiate", help="Negotiate auth."),
        click.option("--ntlm", "scheme", flag_value="ntlm", help="NTLM auth."),
        click.option("--kerberos", "scheme", flag_value="kerberos", help="Kerberos-only auth."),
        click.option(
            "-u",
            "--user",
            metavar="USER[:PASSWORD]",
            help="Credentials (DOMAIN\\user or user@REALM); the password is prompted for "
            "when left out; ':' (or no -u) means the current user's logon or ticket.",
        ),
        click.option("--domain", help="NTLM domain of a plain user name."),
        click.option("-H", "--header", "headers", multiple=True, help="'Name: value' header."),
        click.option("-X", "--request", "method", default=None, help="HTTP method."),
        click.option("-d", "--data", help="Request body ('@FILE' reads a file); implies POST."),
        click.option("--proxy", help="Proxy URL (http:// or https://)."),
        click.option("-k", "--insecure", is_flag=True, help="Do not verify TLS certificates."),
        click.option(
            "--cacert", type=click.Path(exists=True, dir_okay=False), help="CA bundle (PEM)."
        ),
        click.option("-L", "--location", is_flag=True, help="Follow redirects."),
        click.option(
            "--timeout", type=float, default=30.0, show_default=True, help="Seconds per phase."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_auth(scheme: str | None, user: str | None, domain: str | None) -> httpx.Auth | None:
    """The auth object for ``--negotiate/--ntlm/--kerberos`` and ``-u``; prompts if needed.

    Raises:
        click.UsageError: ``-u`` without a scheme; add ``--negotiate``, ``--ntlm`` or
            ``--kerberos``.
    """
    if scheme is None:
        if user is not None:
            raise click.UsageError("-u needs an auth scheme: --negotiate, --ntlm or --kerberos")
        return None
    username: str | None = None
    password: str | None = None
    if user is not None and user != ":":
        username, sep, rest = user.partition(":")
        if sep:
            password = rest
        else:
            password = click.prompt(
                f"Password for {username}", hide_input=True, err=True, default="",
                show_default=False,
            )  # fmt: skip
        username = username or None
        password = password or None
    auth_class: type[NegotiateAuth | NTLMAuth | KerberosAuth] = _AUTH_CLASSES[scheme]
    return auth_class(username, password, domain=domain)


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {value!r}", param_hint="-H")
        pairs.append((name.strip(), rest.strip()))
    return tuple(pairs)


def _data(value: str | None) -> bytes | None:
    if value is None:
        return None
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    return value.encode()


def make_client(
    kwargs: dict[str, Any], connections: int = 10, hooks: dict[str, list[Any]] | None = None
) -> ExClient:
    """An ExClient for the shared request options (auth built, password prompted)."""
    verify: ssl.SSLContext | bool = True
    if kwargs["insecure"]:
        verify = False
    elif kwargs["cacert"]:
        verify = ssl.create_default_context(cafile=kwargs["cacert"])
    return ExClient(
        auth=make_auth(kwargs["scheme"], kwargs["user"], kwargs["domain"]),
        proxy=kwargs["proxy"],
        verify=verify,
        timeout=httpx.Timeout(kwargs["timeout"]),
        follow_redirects=kwargs["location"],
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        event_hooks=hooks or {},
    )


def _method(kwargs: dict[str, Any]) -> str:
    method = kwargs["method"] or ("POST" if kwargs["data"] is not None else "GET")
    return str(method).upper()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="httpx-extensions")
def cli() -> None:
    """Windows Integrated Authentication (Negotiate, NTLM, Kerberos) for httpx, at volume."""


@cli.command()
@click.argument("url")
@request_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the body here.")
@click.option("-v", "--verbose", is_flag=True, help="Show headers (tokens redacted).")
def get(url: str, output: str | None, verbose: bool, **kwargs: Any) -> None:
    """Send one request, like curl: the body goes to stdout or -o FILE."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    async def on_request(request: httpx.Request) -> None:
        err.print(f"* {request.method} {mask_url(request.url)}", markup=False)
        err.print("\n".join(request_lines(request)), markup=False)

    async def on_response(response: httpx.Response) -> None:
        err.print("\n".join(response_lines(response)), markup=False)

    hooks: dict[str, list[Any]] = {}
    if verbose:
        hooks = {"request": [on_request], "response": [on_response]}
    client = make_client(kwargs, connections=1, hooks=hooks)
    try:
        code = anyio.run(_get, client, url, kwargs, output, err)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


async def _get(
    client: ExClient, url: str, kwargs: dict[str, Any], output: str | None, err: Console
) -> int:
    async with client:
        try:
            request = client.build_request(
                _method(kwargs),
                url,
                headers=list(_headers(kwargs["headers"])),
                content=_data(kwargs["data"]),
            )
            response = await client.send(request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            err.print(f"error: {type(exc).__name__}: {exc}", markup=False)
            return 1
        try:
            if output is not None:
                with open(output, "wb") as fh:
                    async for chunk in response.aiter_bytes():
                        fh.write(chunk)
            else:
                async for chunk in response.aiter_bytes():
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        except httpx.HTTPError as exc:
            err.print(f"error while reading the body: {type(exc).__name__}: {exc}", markup=False)
            return 1
        finally:
            await response.aclose()
    if response.status_code >= 400:
        err.print(f"HTTP {response.status_code} {response.reason_phrase}", markup=False)
        return 22
    return 0


@cli.command()
@click.argument("input_file", metavar="[FILE|-]", default="-", type=click.Path(allow_dash=True))
@request_options
@click.option("--concurrency", type=click.IntRange(1), default=10, show_default=True)
@click.option("--connections", type=click.IntRange(1), help="Pool size (default: --concurrency).")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True)
@click.option("--backoff", type=float, default=0.25, show_default=True, help="First retry delay.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Results (JSONL).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Bodies.")
@click.option(
    "--new-connection-per-request",
    is_flag=True,
    help="Open a fresh connection (and handshake) for every URL, for comparison.",
)
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
def fetch(
    input_file: str,
    concurrency: int,
    connections: int | None,
    retries: int,
    backoff: float,
    out: Path | None,
    out_dir: Path | None,
    new_connection_per_request: bool,
    no_progress: bool,
    **kwargs: Any,
) -> None:
    """Fetch many URLs (one a line, or JSON Lines with "url" and "name") concurrently.

    Re-running with the same --out skips the URLs it already fetched successfully.
    """
    out_console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    stats = RunStats()
    options = FetchOptions(
        concurrency=concurrency,
        retries=retries,
        backoff=backoff,
        method=_method(kwargs),
        headers=_headers(kwargs["headers"]),
        data=_data(kwargs["data"]),
        out_dir=out_dir,
        new_connection=new_connection_per_request,
    )
    client = make_client(kwargs, connections or concurrency, instrument(stats))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    done = load_done(out) if out is not None else set()

    def warn(message: str) -> None:
        err.print(f"warning: {message}", markup=False)

    with _open_input(input_file) as (lines, total):
        job = functools.partial(
            run_job,
            client,
            lines,
            options,
            stats,
            ResultWriter(out),
            console=err,
            total=total,
            done=done,
            progress=not no_progress,
            warn=warn,
        )
        anyio.run(job)
    out_console.print(summary_table(stats))
    if stats.interrupted:
        sys.exit(130)
    sys.exit(1 if stats.failed or stats.invalid else 0)


class _open_input:
    """Open the URL list (``-`` is stdin) and, for a regular file, count its URL lines."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._fh: Any = None

    def __enter__(self) -> tuple[Iterator[str], int | None]:
        if self._name == "-":
            return iter(sys.stdin), None
        path = Path(self._name)
        if not path.is_file():
            raise click.BadParameter(f"{self._name}: no such file", param_hint="FILE")
        with path.open(encoding="utf-8", errors="replace") as fh:
            total = sum(1 for line in fh if line.strip() and not line.lstrip().startswith("#"))
        self._fh = path.open(encoding="utf-8", errors="replace")
        return iter(self._fh), total

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (0: a free one).")
@click.option(
    "--users", type=click.Path(exists=True, dir_okay=False), help="'user:password' lines."
)
@click.option("--scheme", type=click.Choice(["negotiate", "ntlm"]), default="negotiate")
@click.option("--domain", default="EXAMPLE", show_default=True)
def serve(host: str, port: int, users: str | None, scheme: str, domain: str) -> None:
    """Run the embedded NTLM/Negotiate test server until Ctrl-C."""
    from .testing import DEMO_USERS, AuthServer

    table = _read_users(Path(users)) if users else None
    server = AuthServer(users=table, domain=domain, scheme=scheme, host=host, port=port)
    server.start()
    click.echo(f"Serving {scheme} auth on {server.url}  (domain {domain}; Ctrl-C to stop)")
    if table is None:
        for name, password in DEMO_USERS.items():
            click.echo(f"  demo user {domain}\\{name}  password {password}")
    else:
        click.echo(f"  users from {users}: {', '.join(table)} (passwords not shown)")
    first = next(iter(table or DEMO_USERS))
    flag = "--ntlm" if scheme == "ntlm" else "--negotiate"
    click.echo(f"  try: httpx-extensions get {flag} -u '{domain}\\{first}' {server.url}/ -v")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    click.echo(f"stopped ({server.connections} connections, {server.requests} requests)")


def _read_users(path: Path) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"line {number}: expected user:password", param_hint="--users")
        users[name.strip()] = password
    if not users:
        raise click.BadParameter(f"{path}: no users", param_hint="--users")
    return users


@cli.command()
@click.option("--requests", "count", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=10, show_default=True)
@click.option("--no-progress", is_flag=True, help="No live progress bar.")
def demo(count: int, concurrency: int, no_progress: bool) -> None:
    """Start the embedded server and show handshakes kept per connection vs per request."""
    from ._demo import run_demo

    sys.exit(run_demo(count, concurrency, progress=not no_progress))


def main() -> None:
    """Entry point of the ``httpx-extensions`` console script."""
    cli(prog_name="httpx-extensions")
