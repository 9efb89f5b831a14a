"""A PRIVATE ejabberd 23.01 instance for the e2e tests (never the system one).

Owns: the instance directory (config, ctl config, certificates, Mnesia
spool, logs), starting ``ejabberdctl ... foreground`` as a child process,
registering the test accounts with ``ejabberdctl ... register``, and
stopping exactly what it started.

Listeners (all 127.0.0.1), hosts ["example.test"]:

* ``tls_port`` (15322, also ``port``): ``starttls: true`` (offered, not
  required) with ``server.crt`` from the test CA.  After STARTTLS, SASL
  offers PLAIN, SCRAM-SHA-1-PLUS and SCRAM-SHA-1 (channel binding works
  because ejabberd itself terminates TLS).  Before STARTTLS it offers
  PLAIN, SCRAM-SHA-1 and starttls.
* ``plain_port`` (15323): ``starttls: false``; PLAIN and SCRAM-SHA-1.
* ``proxy_port`` (15324): plain, ``use_proxy_protocol: true``: a connection
  that does not start with a PROXY (v1/v2) header is reset.

Auth: ``auth_method: internal``, ``auth_password_format: scram``;
X-OAUTH2 and DIGEST-MD5 disabled.  Modules: roster, disco, ping, offline.
No s2s listener and ``s2s_access`` denies all; no HTTP/STUN/MQTT listener;
ACME off.

Federation (``s2s_port`` + ``dns``, used by sites.py): ``tls_port``/``proxy_port`` may be
None (no listener); the config includes contrib/ejabberd/s2s-behind-stanzawall.yml
(``include_config_file``; its ``listen`` and ``modules`` entries are appended:
``ejabberd_s2s_in`` on ``host:s2s_port``, ``s2s_use_starttls: false``, mod_s2s_dialback) and
the inetrc gets contrib/ejabberd/inetrc-s2s-behind-stanzawall (``dns`` as the only DNS
server of ``inet_res``), each with this instance's addresses.

How it is run (pitfalls learned here): as root, ejabberdctl always ``su``s
to the ``ejabberd`` user, so the instance dir is a fresh ``/tmp``
directory chowned to ejabberd (pytest's 0700 tmp dirs are not traversable
for it).  Our own ``--ctl-config`` sets a private node name
(``ejabberd-test@localhost``), a random cookie, its own spool/log/pid paths,
and ``ERL_DIST_PORT``: the node's Erlang distribution listens on
127.0.0.1:``dist_port`` and ejabberdctl connects there directly, so **no
epmd is started or used** and nothing else on the machine is touched.
``su -c`` puts beam in a new session, so teardown does not rely on process
groups: it runs ``ejabberdctl stop``, waits, then SIGKILLs only the
recorded (pid, start-time) tree of processes we spawned.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .contrib import contrib_text
from .defaults import (DOMAIN, EJABBERD_DIST_PORT, EJABBERD_PLAIN_PORT,
                       EJABBERD_PROXY_PORT, EJABBERD_TLS_PORT, HOST,
                       START_TIMEOUT, STOP_TIMEOUT, USERS)
from .proc import (ServerInstance, ServerStartError, Spawned, require_free_ports, run_checked,
                   tail, wait_for_port)

__all__ = ["EjabberdInstance", "start_ejabberd"]

EJABBERD_USER = "ejabberd"
NODE = "ejabberd-test@localhost"
CTL_TIMEOUT = 30.0

@dataclass
class EjabberdInstance(ServerInstance):
    """One private ejabberd.  Attributes tests use:

    ``host`` ("127.0.0.1"), ``port`` (== ``tls_port``, 15322),
    ``tls_port``, ``plain_port`` (15323), ``proxy_port`` (15324),
    ``dist_port`` (15399), ``domain``, ``users`` (user -> password),
    ``node``, ``dir``, ``log_path`` (ejabberd.log), ``console_path``.
    """

    cert: Path
    key: Path
    ca_cert: Path
    dir: Path | None = None
    tls_port: int = EJABBERD_TLS_PORT
    plain_port: int = EJABBERD_PLAIN_PORT
    proxy_port: int = EJABBERD_PROXY_PORT
    dist_port: int = EJABBERD_DIST_PORT
    #: Federation (sites.py): the operator's files contrib/ejabberd/s2s-behind-stanzawall.yml
    #: (``include_config_file``: ``ejabberd_s2s_in`` on ``host:s2s_port``, plaintext,
    #: mod_s2s_dialback) and inetrc-s2s-behind-stanzawall (``dns`` (ip, port) as the node's
    #: only DNS server), with these addresses.  None (default): no s2s at all.  A port set to
    #: None has no listener.
    s2s_port: int | None = None
    dns: tuple[str, int] | None = None
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    host: str = HOST
    domain: str = DOMAIN
    node: str = NODE
    _proc: Spawned | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)
    _registered: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dir is None:
            # /tmp is world-traversable; mkdtemp's 0700 is relaxed below.
            self.dir = Path(tempfile.mkdtemp(prefix="stanzawall-ejabberd-"))
            self._own_dir = True
        self.dir = Path(self.dir).resolve()
        self.conf_dir = self.dir / "conf"
        self.config_path = self.conf_dir / "ejabberd.yml"
        self.ctl_config_path = self.conf_dir / "ejabberdctl.cfg"
        self.spool_dir = self.dir / "spool"
        self.logs_dir = self.dir / "logs"
        self.log_path = self.logs_dir / "ejabberd.log"
        self.console_path = self.dir / "console.log"
        self.cookie = secrets.token_hex(16)

    @property
    def port(self) -> int:
        return self.tls_port

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.tls_port, self.plain_port, self.proxy_port, self.s2s_port)
                if p is not None]

    # -- setup ----------------------------------------------------------------
    def write_config(self) -> None:
        try:
            pw = pwd.getpwnam(EJABBERD_USER)
        except KeyError:
            raise ServerStartError("no 'ejabberd' system user: is the ejabberd"
                                   " package installed?") from None
        for d in (self.dir, self.conf_dir, self.spool_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        for parent in self.dir.parents:  # self.dir itself is chowned below
            if parent.stat().st_uid != pw.pw_uid and not parent.stat().st_mode & 0o001:
                raise ServerStartError(
                    f"ejabberd runs as user ejabberd and cannot traverse {parent};"
                    f" use an instance dir under /tmp")
        for src, name in ((self.cert, "server.crt"), (self.key, "server.key"),
                          (self.ca_cert, "ca.crt")):
            shutil.copyfile(src, self.conf_dir / name)
        inetrc = '{lookup,["file"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n'
        if self.s2s_port is not None:
            if self.dns is None:
                raise ValueError("s2s_port needs dns")
            ip = "{" + self.dns[0].replace(".", ",") + "}"
            inetrc += contrib_text("ejabberd/inetrc-s2s-behind-stanzawall",
                                   ("{127,0,0,1}, 5300", f"{ip}, {self.dns[1]}"))
            (self.conf_dir / "s2s.yml").write_text(contrib_text(
                "ejabberd/s2s-behind-stanzawall.yml", ('"127.0.0.1"', f'"{self.host}"'),
                ("15269", str(self.s2s_port))))
        (self.conf_dir / "inetrc").write_text(inetrc)
        q = shlex.quote
        ctl = {
            "ERLANG_NODE": self.node,
            # Fixed distribution port: no epmd at all (ejabberdctl passes
            # -erl_epmd_port PORT -start_epmd false to the node and its
            # ctl clients).
            "ERL_DIST_PORT": str(self.dist_port),
            "ERL_OPTIONS": (f"-setcookie {self.cookie} -env ERL_CRASH_DUMP_BYTES 0"
                            " -kernel inet_dist_use_interface {127,0,0,1}"),
            "SPOOL_DIR": str(self.spool_dir),
            "LOGS_DIR": str(self.logs_dir),
            "EJABBERD_PID_PATH": str(self.dir / "ejabberd.pid"),
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "CONTRIB_MODULES_PATH": str(self.dir / "contrib"),
            "CONTRIB_MODULES_CONF_DIR": str(self.dir / "contrib" / "conf"),
            "EJABBERD_BYPASS_WARNINGS": "true",
        }
        self.ctl_config_path.write_text(
            "# Generated by tests/e2e/harness/ejabberd.py: private test instance.\n"
            + "".join(f"{k}={q(v)}\n" for k, v in ctl.items()))
        c = self.conf_dir
        self.config_path.write_text(f"""\
# Generated by tests/e2e/harness/ejabberd.py: private test instance.
hosts:
  - "{self.domain}"
loglevel: info
log_rotate_count: 0
certfiles:
  - "{c / 'server.crt'}"
  - "{c / 'server.key'}"
ca_file: "{c / 'ca.crt'}"
acme:
  auto: false
listen:
{self._listen_yaml()}
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms:
  - "X-OAUTH2"
  - "DIGEST-MD5"
{self._s2s_yaml()}
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  nobody:
    deny: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_offline: {{}}
  mod_carboncopy: {{}}
  mod_mam:
    default: always
""")
        subprocess.run(["chown", "-R", f"{EJABBERD_USER}:{EJABBERD_USER}", str(self.dir)],
                       check=True, timeout=30)
        self.dir.chmod(0o755)

    def _listen_yaml(self) -> str:
        out = []
        for port, opts in ((self.tls_port, ["module: ejabberd_c2s", "starttls: true"]),
                           (self.plain_port, ["module: ejabberd_c2s", "starttls: false"]),
                           (self.proxy_port, ["module: ejabberd_c2s", "starttls: false",
                                              "use_proxy_protocol: true"])):
            if port is not None:
                out.append(f"  -\n    port: {port}\n    ip: \"{self.host}\"\n"
                           + "".join(f"    {o}\n" for o in opts))
        return "".join(out).rstrip("\n")

    def _s2s_yaml(self) -> str:
        if self.s2s_port is None:
            return "s2s_access: nobody"
        # ejabberd appends the included file's listen and modules entries to these.
        return f'include_config_file: "{self.conf_dir / "s2s.yml"}"'

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ejabberdctl --config-dir ... --ctl-config ... ARGS`` (bounded)."""
        argv = ["ejabberdctl", "--config-dir", str(self.conf_dir),
                "--ctl-config", str(self.ctl_config_path), *args]
        if check:
            return run_checked(argv, timeout=timeout, who="ejabberdctl")
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def register(self, user: str, password: str) -> None:
        """Create an account (server must be running)."""
        self.ctl("register", user, self.domain, password)
        self.users[user] = password
        self._registered.add(user)

    # -- lifecycle ------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> "EjabberdInstance":
        if self.running():
            return self
        require_free_ports(self.host, [*self.ports, self.dist_port], "ejabberd")
        if not self.config_path.exists():
            self.write_config()
        self._proc = Spawned(
            ["ejabberdctl", "--config-dir", str(self.conf_dir),
             "--ctl-config", str(self.ctl_config_path), "foreground"],
            log=self.console_path, who="ejabberd", cwd=self.dir)
        try:
            for port in self.ports:
                wait_for_port(self.host, port, timeout, proc=self._proc,
                              log=self.console_path, who="ejabberd")
            self._proc.snapshot_tree()  # su -> sh -> beam.smp -> helpers
            for user, password in self.users.items():
                if user not in self._registered:
                    self.register(user, password)
        except Exception as e:
            self.stop()
            raise ServerStartError(f"{e}\n--- {self.log_path}:\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """``ejabberdctl stop`` (clients get <system-shutdown/>), wait, then
        SIGTERM/SIGKILL the recorded process tree if anything is left."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.snapshot_tree()
        if proc.running():
            try:
                self.ctl("stop", timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                pass
            proc.wait_tree(timeout)
        proc.stop(5.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop, and remove the instance dir if we created it (kept when
        STANZAWALL_E2E_KEEP=1, for post-mortems)."""
        self.stop()
        if self._own_dir and os.environ.get("STANZAWALL_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def start_ejabberd(cert: Path, key: Path, ca_cert: Path, *, dir: Path | None = None,
                   users: dict[str, str] | None = None, **ports: int) -> EjabberdInstance:
    """Configure and start an instance; ``ports`` may override tls_port,
    plain_port, proxy_port, dist_port.  Tear down with ``.cleanup()``."""
    inst = EjabberdInstance(cert=cert, key=key, ca_cert=ca_cert, dir=dir,
                            users=dict(USERS if users is None else users), **ports)
    try:
        return inst.start()
    except Exception:
        if inst._own_dir and os.environ.get("STANZAWALL_E2E_KEEP") != "1":
            # keep the logs of a failed start for the error message only
            shutil.rmtree(inst.dir, ignore_errors=True)
        raise
