"""Apache httpd with mod_auth_gssapi (Kerberos) and gss-ntlmssp (NTLM), from a private config.

Theory of operation: ``apache2 -f CONF -DFOREGROUND`` under ``env -i`` semantics (the
environment is exactly :func:`_environment`), so neither ``/etc/apache2`` nor
``apache2ctl``'s envvars are read. gss-ntlmssp reads ``NTLM_USER_FILE`` from the
environment of the Apache *parent* (``SetEnv`` does not reach it), and the acceptor
finds its keytab through ``KRB5_KTNAME``: no ``GssapiCredStore`` at all, because one
without ``GssapiAcceptorName`` breaks NTLM. It listens on 127.0.0.1 and 127.0.0.2 (the
alias host with its own ``HTTP/127.0.0.2`` principal) on one free port.

Locations (the trailing slash matters: ``/krb`` would also match ``/krb-cb/``):

1. ``/krb/``: Kerberos, a token on every request (not connection-bound).
2. ``/krb-cb/``: Kerberos, connection-bound (``Persistent-Auth: true``): later requests on
   the same connection need no Authorization, a new connection gets 401.
3. ``/ntlm-cb/``: NTLM, connection-bound (NTLM's real semantics).
4. ``/negotiate-cb/``: Kerberos or NTLM, connection-bound (IIS "Negotiate, NTLM").
5. ``/anon/``: no authentication.

Every response carries ``X-Remote-User`` (REMOTE_USER, empty when anonymous) and
``X-GSS-Mech``; the body is a small text file naming the location. GET and POST work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ._accesslog import AccessLog
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

__all__ = ["LOCATIONS", "NTLM_DOMAIN", "Apache", "start_apache"]

NTLM_DOMAIN = "EXAMPLE"
#: Location name -> (path, mechanisms or None for anonymous, connection-bound).
LOCATIONS: dict[str, tuple[str, str | None, bool]] = {
    "krb": ("/krb/", "krb5", False),
    "krb_cb": ("/krb-cb/", "krb5", True),
    "ntlm_cb": ("/ntlm-cb/", "ntlmssp", True),
    "negotiate_cb": ("/negotiate-cb/", "krb5 ntlmssp", True),
    "anon": ("/anon/", None, False),
}
MODULES_DIR = Path("/usr/lib/apache2/modules")
MODULES = (
    "mpm_event authn_core authz_core authz_user auth_gssapi headers setenvif alias mime"
).split()


@dataclass
class Apache:
    """A running Apache and how to reach it.

    Attributes:
        port: the port, on both 127.0.0.1 and 127.0.0.2.
        url: ``http://localhost:PORT`` (service principal ``HTTP/localhost``).
        alias_url: ``http://127.0.0.2:PORT`` (service principal ``HTTP/127.0.0.2``).
        urls: location name (``krb``, ``krb_cb``, ``ntlm_cb``, ``negotiate_cb``,
            ``anon``) -> full URL on :attr:`url`, e.g. ``http://localhost:PORT/krb-cb/``.
        realm: the Kerberos realm.
        users: user name -> password (Kerberos ``user@REALM`` and NTLM).
        ntlm_domain: the NTLM domain (the users also match an empty domain).
        ntlm_user_file: the gss-ntlmssp user file (``DOMAIN:user:password``).
        access_log: the access log; see :mod:`tests.servers._accesslog`.
        error_log: Apache's error log.
        directory: the private directory (config, logs, documents).
    """

    port: int
    url: str
    alias_url: str
    urls: dict[str, str]
    realm: str
    users: dict[str, str]
    ntlm_domain: str
    ntlm_user_file: Path
    access_log: AccessLog
    error_log: Path
    directory: Path
    process: ServerProcess = field(repr=False)

    def location_url(self, name: str, host: str = "localhost") -> str:
        """Return the URL of location ``name`` on ``host`` (``localhost``, ``127.0.0.2``...)."""
        return f"http://{host}:{self.port}{LOCATIONS[name][0]}"

    def stop(self) -> None:
        """Stop Apache and its workers."""
        self.process.stop()


def _location_block(path: str, mechs: str | None, bound: bool) -> str:
    if mechs is None:
        return f"<Location {path}>\n  Require all granted\n</Location>\n"
    lines = [
        f"<Location {path}>",
        "  AuthType GSSAPI",
        '  AuthName "httpx-extensions tests"',
        f"  GssapiAllowedMech {mechs}",
        "  GssapiPublishMech On",
        "  GssapiBasicAuth Off",
        "  GssapiUseSessions Off",
    ]
    if bound:
        lines += ["  GssapiConnectionBound On", "  GssapiSignalPersistentAuth On"]
    lines += ["  Require valid-user", "</Location>", ""]
    return "\n".join(lines)


def _config(directory: Path, port: int) -> str:
    run = directory / "run"
    www = directory / "www"
    modules = "\n".join(f"LoadModule {m}_module {MODULES_DIR}/mod_{m}.so" for m in MODULES)
    user = "User www-data\nGroup www-data\n" if is_root() else ""
    names = "|".join(path.strip("/") for path, _, _ in LOCATIONS.values())
    locations = "\n".join(_location_block(*spec) for spec in LOCATIONS.values())
    return f"""\
ServerRoot /usr/lib/apache2
ServerName localhost
Listen 127.0.0.1:{port}
Listen 127.0.0.2:{port}
DefaultRuntimeDir {run}
PidFile {run}/apache2.pid
Mutex file:{run} default
{user}{modules}
TypesConfig /etc/mime.types
ErrorLog {directory}/error.log
LogLevel warn
Timeout 30
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
StartServers 4
MinSpareThreads 32
ServerLimit 4
ThreadsPerChild 32
MaxRequestWorkers 128
DocumentRoot {www}
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory {www}>
  Require all granted
</Directory>
AliasMatch "^/({names})/" "{www}/$1.txt"
# Log only whether a request carried Authorization, never the header itself.
SetEnvIf Authorization "." HAS_AUTH=1
LogFormat "%{{remote}}p %k %>s %{{HAS_AUTH}}e %u \\"%r\\"" ours
CustomLog {directory}/access.log ours
Header always set X-Remote-User "expr=%{{REMOTE_USER}}"
Header always set X-GSS-Mech "expr=%{{reqenv:GSS_MECH}}"
{locations}"""


def _environment(kdc: Kdc, directory: Path, user_file: Path) -> dict[str, str]:
    keytab = kdc.keytab_copy("www-data", directory / "http.keytab")
    rcache = directory / "rcache"
    rcache.mkdir()
    chown(rcache, "www-data", 0o700)
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C",
        "KRB5_CONFIG": kdc.env["KRB5_CONFIG"],
        "KRB5_KTNAME": f"FILE:{keytab}",
        "KRB5RCACHEDIR": str(rcache),
        "NTLM_USER_FILE": str(user_file),
    }


def write_ntlm_user_file(path: Path, users: dict[str, str], owner: str) -> Path:
    """Write ``DOMAIN:user:password`` and ``:user:password`` lines, readable by ``owner``."""
    lines = [f"{NTLM_DOMAIN}:{u}:{p}\n:{u}:{p}\n" for u, p in users.items()]
    path.write_text("".join(lines))
    chown(path, owner, 0o400)
    return path


def start_apache(kdc: Kdc, directory: Path, attempts: int = 3) -> Apache:
    """Configure and start Apache in ``directory`` (created here) for ``kdc``'s realm.

    Raises:
        ServerUnavailable: apache2, mod_auth_gssapi or gss-ntlmssp is missing.
        ServerError: Apache did not start; the message has its error log.
    """
    bins = require_binaries("apache2")
    require_files(
        *(MODULES_DIR / f"mod_{m}.so" for m in MODULES),
        package="apache2, libapache2-mod-auth-gssapi",
    )
    if not any(Path(p).exists() for p in _NTLMSSP_PATHS):
        require_files(_NTLMSSP_PATHS[0], package="gss-ntlmssp")
    directory.mkdir(mode=0o755)
    (directory / "run").mkdir()
    www = directory / "www"
    www.mkdir()
    for name, (path, mechs, bound) in LOCATIONS.items():
        kind = "anonymous" if mechs is None else f"{mechs}{' connection-bound' if bound else ''}"
        (www / f"{path.strip('/')}.txt").write_text(f"{name}: {kind}\n")
    user_file = write_ntlm_user_file(directory / "ntlm_users", kdc.users, "www-data")
    env = _environment(kdc, directory, user_file)
    conf = directory / "apache2.conf"
    error = None
    for _ in range(attempts):
        port = free_port("127.0.0.1", "127.0.0.2")
        conf.write_text(_config(directory, port))
        process = ServerProcess.start(
            "apache2",
            [bins["apache2"], "-f", str(conf), "-DFOREGROUND"],
            log=directory / "apache2.out",
            env=env,
        )
        try:
            process.wait_port("127.0.0.1", port)
            process.wait_port("127.0.0.2", port)
        except ServerError as exc:
            process.stop()
            error_log = directory / "error.log"
            tail = error_log.read_text()[-2000:] if error_log.exists() else ""
            error = ServerError(f"{exc}\n{tail}")
            if "Address already in use" in str(error):
                continue
            raise error from None
        url = f"http://localhost:{port}"
        return Apache(
            port=port,
            url=url,
            alias_url=f"http://127.0.0.2:{port}",
            urls={name: url + path for name, (path, _, _) in LOCATIONS.items()},
            realm=kdc.realm,
            users=dict(kdc.users),
            ntlm_domain=NTLM_DOMAIN,
            ntlm_user_file=user_file,
            access_log=AccessLog(directory / "access.log"),
            error_log=directory / "error.log",
            directory=directory,
            process=process,
        )
    assert error is not None
    raise error


_NTLMSSP_PATHS = (
    "/usr/lib/x86_64-linux-gnu/gssntlmssp/gssntlmssp.so",
    "/usr/lib/aarch64-linux-gnu/gssntlmssp/gssntlmssp.so",
    "/usr/lib64/gssntlmssp/gssntlmssp.so",
)
