"""An MIT Kerberos KDC for one throw-away realm, in a private directory.

Theory of operation: nothing global changes. ``krb5.conf`` and ``kdc.conf`` live in
the realm's directory and every process we start (and this Python process, through
:attr:`Kdc.env`) finds them through ``KRB5_CONFIG`` / ``KRB5_KDC_PROFILE``. The KDC
listens on 127.0.0.1 only (``kdc_listen`` / ``kdc_tcp_listen``; ``kdc_ports`` would
bind 0.0.0.0) and clients use TCP (``udp_preference_limit = 1``). Host names are taken
as typed (no DNS canonicalisation, no reverse lookups), so ``HTTP/localhost`` and
``HTTP/127.0.0.2`` are distinct services. Start-up: create the database, add the
principals with one ``kadmin.local``, write the keytab, start ``krb5kdc -n``, then
``kinit`` every user (retried until the KDC answers).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._process import ServerError, ServerProcess, chown, free_port, is_root, require_binaries

__all__ = ["REALM", "USERS", "Kdc", "start_kdc"]

REALM = "EXAMPLE.TEST"
#: User name -> password for the principals ``user@EXAMPLE.TEST`` (also the NTLM users).
USERS = {"alice": "alice-Pa55w0rd", "bob": "bob-Pa55w0rd"}
#: Host names that get an ``HTTP/<host>`` service principal in the keytab.
SERVICE_HOSTS = ("localhost", "127.0.0.1", "127.0.0.2")


@dataclass
class Kdc:
    """A running KDC and everything a client or server needs to use its realm.

    Attributes:
        realm: the realm, ``EXAMPLE.TEST``.
        port: the KDC's TCP (and UDP) port on 127.0.0.1.
        directory: the private directory holding configuration, database and logs.
        users: user name -> password; principal ``f"{user}@{realm}"``.
        ccaches: user name -> credential cache (``FILE:``) already holding a TGT.
        keytab: the service keytab (``HTTP/localhost``, ``HTTP/127.0.0.1``,
            ``HTTP/127.0.0.2``, ``HTTP/<hostname>``).
        services: the service principals in :attr:`keytab`.
        env: ``KRB5_CONFIG``, ``KRB5_KDC_PROFILE``, ``KRB5CCNAME`` (alice's cache),
            ``KRB5_KTNAME`` and ``KRB5RCACHEDIR`` to apply to a client process.
    """

    realm: str
    port: int
    directory: Path
    users: dict[str, str]
    ccaches: dict[str, Path]
    keytab: Path
    services: list[str]
    env: dict[str, str]
    process: ServerProcess = field(repr=False)
    kinit_path: str = field(repr=False, default="kinit")

    def principal(self, user: str) -> str:
        """Return ``user@REALM``."""
        return f"{user}@{self.realm}"

    def kinit(self, user: str, ccache: Path | None = None, *, timeout: float = 5.0) -> Path:
        """Get a TGT for ``user`` (with its password) into ``ccache``.

        Retries while the KDC does not answer yet.

        Args:
            user: a key of :attr:`users`.
            ccache: the cache file; by default ``ccache-<user>`` in :attr:`directory`.
            timeout: seconds to keep retrying.

        Returns:
            The cache file, to use as ``KRB5CCNAME=FILE:<path>``.

        Raises:
            ServerError: kinit kept failing; its last output is in the message.
        """
        ccache = ccache or self.directory / f"ccache-{user}"
        env = {**self.env, "KRB5CCNAME": f"FILE:{ccache}"}
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [self.kinit_path, "-c", f"FILE:{ccache}", self.principal(user)],
                input=self.users[user] + "\n",
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if done.returncode == 0:
                return ccache
            if time.monotonic() > deadline:
                raise ServerError(f"kinit {user} failed: {done.stderr.strip()}")
            time.sleep(0.05)

    def keytab_copy(self, owner: str, path: Path) -> Path:
        """Copy the keytab to ``path``, readable only by ``owner`` (when root)."""
        shutil.copyfile(self.keytab, path)
        chown(path, owner, 0o400)
        return path

    def stop(self) -> None:
        """Stop the KDC."""
        self.process.stop()


def _krb5_conf(realm: str, port: int) -> str:
    hosts = "\n".join(f" {host} = {realm}" for host in (*SERVICE_HOSTS, socket.gethostname()))
    return f"""\
[libdefaults]
 default_realm = {realm}
 dns_lookup_kdc = false
 dns_lookup_realm = false
 dns_canonicalize_hostname = false
 rdns = false
 udp_preference_limit = 1
 forwardable = true
[realms]
 {realm} = {{
  kdc = 127.0.0.1:{port}
  admin_server = 127.0.0.1:{port + 1}
 }}
[domain_realm]
{hosts}
"""


def _kdc_conf(realm: str, port: int, directory: Path) -> str:
    return f"""\
[kdcdefaults]
 kdc_listen = 127.0.0.1:{port}
 kdc_tcp_listen = 127.0.0.1:{port}
[realms]
 {realm} = {{
  database_name = {directory}/principal
  key_stash_file = {directory}/stash
  acl_file = {directory}/kadm5.acl
  kdc_listen = 127.0.0.1:{port}
  kdc_tcp_listen = 127.0.0.1:{port}
  kadmind_listen = 127.0.0.1:{port + 1}
  kpasswd_listen = 127.0.0.1:{port + 2}
  max_life = 10h
  max_renewable_life = 1d
 }}
[logging]
 kdc = FILE:{directory}/kdc.log
 admin_server = FILE:{directory}/kadmin.log
 default = FILE:{directory}/krb5lib.log
"""


def start_kdc(directory: Path, realm: str = REALM) -> Kdc:
    """Create a realm in ``directory`` (which must exist) and start its KDC.

    Returns:
        The running :class:`Kdc`, with a TGT for every user of :data:`USERS`.

    Raises:
        ServerUnavailable: the MIT KDC packages are missing.
        ServerError: a step failed; the message has its output.
    """
    bins = require_binaries("krb5kdc", "kdb5_util", "kadmin.local", "kinit")
    port = free_port()
    krb5_conf = directory / "krb5.conf"
    kdc_conf = directory / "kdc.conf"
    krb5_conf.write_text(_krb5_conf(realm, port))
    kdc_conf.write_text(_kdc_conf(realm, port, directory))
    (directory / "kadm5.acl").write_text("")
    rcache = directory / "rcache"
    rcache.mkdir()
    rcache.chmod(0o1777)
    keytab = directory / "http.keytab"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KRB5_CONFIG": str(krb5_conf),
        "KRB5_KDC_PROFILE": str(kdc_conf),
        "KRB5_KTNAME": f"FILE:{keytab}",
        "KRB5RCACHEDIR": str(rcache),
    }
    master_password = os.urandom(12).hex()
    _run([bins["kdb5_util"], "create", "-s", "-r", realm, "-P", master_password, "-W"], env)
    services = [f"HTTP/{host}" for host in (*SERVICE_HOSTS, socket.gethostname())]
    services = list(dict.fromkeys(services))
    commands = [f"addprinc -pw {password} {user}" for user, password in USERS.items()]
    commands += [f"addprinc -randkey {service}" for service in services]
    commands.append(f"ktadd -k {keytab} {' '.join(services)}")
    _run([bins["kadmin.local"], "-r", realm], env, stdin="\n".join(commands) + "\n")
    keytab.chmod(0o600)

    process = ServerProcess.start(
        "krb5kdc", [bins["krb5kdc"], "-n", "-r", realm], log=directory / "krb5kdc.out", env=env
    )
    kdc = Kdc(
        realm=realm,
        port=port,
        directory=directory,
        users=dict(USERS),
        ccaches={},
        keytab=keytab,
        services=[f"{service}@{realm}" for service in services],
        env=env,
        process=process,
        kinit_path=bins["kinit"],
    )
    try:
        process.wait_port("127.0.0.1", port)
        for user in USERS:
            kdc.ccaches[user] = kdc.kinit(user)
    except BaseException:
        process.stop()
        raise
    env["KRB5CCNAME"] = f"FILE:{kdc.ccaches['alice']}"
    if is_root():
        # Servers running as www-data / proxy read the configuration.
        for path in (krb5_conf, directory):
            path.chmod(0o755 if path.is_dir() else 0o644)
    return kdc


def _run(argv: list[str], env: dict[str, str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or "error" in done.stderr.lower():
        raise ServerError(f"{' '.join(argv[:2])} failed: {done.stdout}{done.stderr}")
