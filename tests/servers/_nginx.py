"""nginx serving a fixed 1 KB JSON document, the baseline server of the benchmarks.

Theory of operation: ``nginx -p DIR -c DIR/nginx.conf -e stderr`` in the
foreground with one worker, listening on 127.0.0.1 only; keep-alive connections are
never closed by the server (``keepalive_requests`` huge, long ``keepalive_timeout``) so
a benchmark measures the client, not reconnects. No access log: it would cost more than
the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ._process import ServerError, ServerProcess, chown, free_port, is_root, require_binaries

__all__ = ["Nginx", "json_document", "start_nginx"]


@dataclass
class Nginx:
    """A running nginx.

    Attributes:
        port: its port on 127.0.0.1.
        url: ``http://127.0.0.1:PORT``.
        json_url: ``http://127.0.0.1:PORT/json``, a 1024-byte ``application/json``.
        directory: the private directory (config, ``nginx.out`` with the error log).
        body: the exact bytes served at :attr:`json_url`.
    """

    port: int
    url: str
    json_url: str
    directory: Path
    body: bytes = field(repr=False)
    process: ServerProcess = field(repr=False)

    def stop(self) -> None:
        """Stop nginx (master and worker)."""
        self.process.stop()


def json_document(size: int = 1024) -> bytes:
    """Return a JSON object of exactly ``size`` bytes."""
    doc = {"service": "httpx-extensions benchmark", "items": list(range(40)), "pad": ""}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    doc["pad"] = "x" * (size - len(raw))
    raw = json.dumps(doc, separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


def _config(directory: Path, port: int) -> str:
    user = "user www-data;\n" if is_root() else ""
    temps = "\n".join(
        f"    {kind}_temp_path {directory}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{user}daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 1000000000;
    keepalive_timeout 3600s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location = /json {{
            default_type application/json;
            alias {directory}/www/data.json;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def start_nginx(directory: Path, attempts: int = 3) -> Nginx:
    """Configure and start nginx in ``directory`` (created here).

    Raises:
        ServerUnavailable: nginx is missing.
        ServerError: nginx did not start; the message has its error log.
    """
    bins = require_binaries("nginx")
    directory.mkdir(mode=0o755)
    (directory / "tmp").mkdir()
    chown(directory / "tmp", "www-data", 0o700)
    (directory / "www").mkdir()
    body = json_document()
    (directory / "www" / "data.json").write_bytes(body)
    conf = directory / "nginx.conf"
    error: ServerError | None = None
    for _ in range(attempts):
        port = free_port()
        conf.write_text(_config(directory, port))
        process = ServerProcess.start(
            "nginx",
            [bins["nginx"], "-p", str(directory), "-c", str(conf), "-e", "stderr"],
            log=directory / "nginx.out",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
        )
        try:
            process.wait_port("127.0.0.1", port)
        except ServerError as exc:
            process.stop()
            error = exc
            if "Address already in use" in str(exc):
                continue
            raise
        url = f"http://127.0.0.1:{port}"
        return Nginx(port, url, f"{url}/json", directory, body, process)
    assert error is not None
    raise error
