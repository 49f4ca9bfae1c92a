"""A squid forward proxy on 127.0.0.1 that demands Negotiate (Kerberos) or NTLM: 407s.

Theory of operation: ``squid -N -f CONF`` (foreground, no daemon) with everything bound
to 127.0.0.1 and no cache. Proxy authentication:

1. Negotiate: ``negotiate_kerberos_auth`` with its own copy of the keytab, accepting any
   service principal in it; clients ask for ``HTTP/localhost`` (the proxy URL's host).
2. NTLM: :mod:`tests.servers._squid_ntlm_helper`, pyspnego's acceptor checking the
   passwords of the NTLM user file, run by the system ``python3`` as user ``proxy``. When
   that user cannot import pyspnego from this interpreter's site-packages, squid falls
   back to ``ntlm_fake_auth`` (any password is accepted) and
   :attr:`Squid.ntlm_checks_password` is False.
   (``setpriv`` runs one ``--check`` of the helper as ``proxy`` at start-up to tell.)

The access log has the format of :mod:`tests.servers._accesslog`; the auth field says
whether a request carried ``Proxy-Authorization`` (an ACL on the header sets a note, the
header itself is never logged). Squid resolves nothing (its DNS points at 127.0.0.1):
address origins by IP, e.g. the nginx fixture.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ._accesslog import AccessLog
from ._apache import write_ntlm_user_file
from ._kdc import Kdc
from ._process import (
    ServerError,
    ServerProcess,
    chown,
    free_port,
    is_root,
    require_binaries,
    require_files,
)

__all__ = ["Squid", "start_squid"]

HELPERS = Path("/usr/lib/squid")
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class Squid:
    """A running squid.

    Attributes:
        port: its port on 127.0.0.1.
        proxy_url: ``http://localhost:PORT`` (Negotiate service ``HTTP/localhost``).
        origin_url: a URL the proxy can fetch (by IP), for example nginx's ``/json``.
        realm: the Kerberos realm.
        users: user name -> password (Kerberos and NTLM).
        ntlm_checks_password: True when the NTLM helper verifies passwords (pyspnego),
            False when it is ``ntlm_fake_auth``.
        access_log: the access log; handshake legs are entries with ``has_auth``.
        directory: the private directory (config, ``cache.log``).
    """

    port: int
    proxy_url: str
    origin_url: str
    realm: str
    users: dict[str, str]
    ntlm_checks_password: bool
    access_log: AccessLog
    directory: Path
    process: ServerProcess = field(repr=False)

    def stop(self) -> None:
        """Stop squid and its helpers."""
        self.process.stop()


def _ntlm_helper(directory: Path, users: dict[str, str]) -> tuple[str, bool]:
    """Return squid's NTLM ``program`` line, and whether it checks passwords.

    The pyspnego helper is used when the helper's user can import pyspnego (and
    cryptography) from this interpreter's site-packages with the system python: one
    ``--check`` run as that user tells.
    """
    fake = f"{HELPERS}/ntlm_fake_auth"
    try:
        import cryptography
        import spnego
    except ImportError:
        return fake, False
    paths = sorted({str(Path(m.__file__ or "").parent.parent) for m in (spnego, cryptography)})
    helper = str(Path(__file__).resolve().with_name("_squid_ntlm_helper.py"))
    as_proxy = ["setpriv", "--reuid=proxy", "--regid=proxy", "--clear-groups", "--"]
    check = [*(as_proxy if is_root() else []), SYSTEM_PYTHON, helper, "--check", *paths]
    try:
        usable = subprocess.run(check, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return fake, False
    if usable.returncode != 0:
        return fake, False
    user_file = write_ntlm_user_file(directory / "ntlm_users", users, "proxy")
    return " ".join([SYSTEM_PYTHON, helper, str(user_file), *paths]), True


def _config(directory: Path, port: int, keytab: Path, ntlm_program: str) -> str:
    return f"""\
http_port 127.0.0.1:{port}
udp_incoming_address 127.0.0.1
udp_outgoing_address 127.0.0.1
tcp_outgoing_address 127.0.0.1
dns_nameservers 127.0.0.1
icp_port 0
htcp_port 0
pinger_enable off
cache deny all
cache_mem 8 MB
pid_filename {directory}/squid.pid
cache_log stdio:{directory}/cache.log
cache_store_log none
netdb_filename none
coredump_dir {directory}
visible_hostname localhost
shutdown_lifetime 0 seconds
client_persistent_connections on
server_persistent_connections on
buffered_logs off
auth_param negotiate program {HELPERS}/negotiate_kerberos_auth -k {keytab} -s GSS_C_NO_NAME
auth_param negotiate children 16 startup=1 idle=1
auth_param negotiate keep_alive on
auth_param ntlm program {ntlm_program}
auth_param ntlm children 16 startup=1 idle=1
auth_param ntlm keep_alive on
acl authenticated proxy_auth REQUIRED
acl has_auth req_header Proxy-Authorization .
note has_auth 1 has_auth
logformat ours %>p - %>Hs %{{has_auth}}note %un "%rm %ru HTTP/%rv"
access_log stdio:{directory}/access.log ours
http_access allow authenticated
http_access deny all
"""


def start_squid(kdc: Kdc, directory: Path, origin_url: str, attempts: int = 3) -> Squid:
    """Configure and start squid in ``directory`` (created here).

    Args:
        kdc: the realm whose keytab squid accepts tickets from.
        directory: the private directory, created here.
        origin_url: recorded in :attr:`Squid.origin_url` for the tests.

    Raises:
        ServerUnavailable: squid or its helpers are missing.
        ServerError: squid did not start; the message has its log.
    """
    bins = require_binaries("squid")
    require_files(HELPERS / "negotiate_kerberos_auth", HELPERS / "ntlm_fake_auth", package="squid")
    directory.mkdir(mode=0o755)
    chown(directory, "proxy", 0o755)
    keytab = kdc.keytab_copy("proxy", directory / "http.keytab")
    rcache = directory / "rcache"
    rcache.mkdir()
    chown(rcache, "proxy", 0o700)
    ntlm_program, checks_password = _ntlm_helper(directory, kdc.users)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C",
        "KRB5_CONFIG": kdc.env["KRB5_CONFIG"],
        "KRB5_KTNAME": f"FILE:{keytab}",
        "KRB5RCACHEDIR": str(rcache),
    }
    conf = directory / "squid.conf"
    error: ServerError | None = None
    for _ in range(attempts):
        port = free_port()
        conf.write_text(_config(directory, port, keytab, ntlm_program))
        process = ServerProcess.start(
            "squid",
            [bins["squid"], "-N", "-f", str(conf)],
            log=directory / "squid.out",
            env=env,
            cwd=directory,
            grace=0.3,  # squid takes 2 s to shut down even with shutdown_lifetime 0
            watchdog=True,
        )
        try:
            process.wait_port("127.0.0.1", port)
        except ServerError as exc:
            process.stop()
            cache_log = directory / "cache.log"
            tail = cache_log.read_text()[-2000:] if cache_log.exists() else ""
            error = ServerError(f"{exc}\n{tail}")
            if "Address already in use" in str(error):
                continue
            raise error from None
        return Squid(
            port=port,
            proxy_url=f"http://localhost:{port}",
            origin_url=origin_url,
            realm=kdc.realm,
            users=dict(kdc.users),
            ntlm_checks_password=checks_password,
            access_log=AccessLog(directory / "access.log"),
            directory=directory,
            process=process,
        )
    assert error is not None
    raise error
