"""A PRIVATE Prosody 0.12 instance for the e2e tests (never the system one).

Owns: writing the instance's config into its own directory, registering the
test accounts, starting ``prosody -F --config FILE`` as a child process,
waiting until its c2s port accepts, and stopping exactly that process.

Two flavours, chosen by ``tls``:

* ``tls=False`` (default): plaintext c2s on 127.0.0.1:``port`` (15222); no
  certificate is configured at all, so STARTTLS is *not* offered;
  ``c2s_require_encryption = false`` and ``allow_unencrypted_plain_auth =
  true`` (SASL offers SCRAM-SHA-1 and PLAIN).  This is the backend behind
  the TLS-terminating gateway.
* ``tls=True``: the host has ``server.crt`` from the test CA; c2s on
  ``port`` (15225) offers STARTTLS (required by default), and XEP-0368
  direct TLS listens on ``direct_tls_port`` (15226).  Over TLS SASL offers
  SCRAM-SHA-1 and PLAIN (Prosody 0.12 offers no -PLUS over TLS 1.3).

Federation (``s2s_port`` + ``dns_forward``, used by sites.py): the config Includes
contrib/prosody/s2s-behind-stanzawall.cfg.lua with this instance's addresses (plaintext s2s
on ``host:s2s_port``, ``s2s_require_encryption = false``, ``s2s_secure_auth = false``,
lua-unbound forwarding every lookup to ``dns_forward``), and mod_dialback is loaded.

Pitfalls handled here (learned on this machine): never run ``prosody
--version`` (it starts a server from /etc/prosody; ``prosodyctl about`` is
the safe probe); ``run_as_root = true`` or prosody/prosodyctl refuse or
switch user; ``network_settings.nagle = false`` avoids ~40 ms stalls;
``unbound.hoststxt`` keeps name lookups local; s2s is disabled in
``modules_disabled`` (it is auto-loaded) and ``s2s_ports``/HTTP ports are
empty, so the only sockets are the c2s ones on 127.0.0.1 (unless s2s is asked for).  Accounts are
created with ``prosodyctl --config FILE register USER HOST PASS`` (writes
the data store directly; works non-interactively and with no server
running).
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from .contrib import contrib_text
from .defaults import (DOMAIN, HOST, PROSODY_DIRECT_TLS, PROSODY_PORT,
                       PROSODY_TLS_PORT, START_TIMEOUT, STOP_TIMEOUT, USERS)
from .proc import (ServerInstance, ServerStartError, Spawned, require_free_ports, run_checked, tail,
                   wait_for_port)

__all__ = ["ProsodyInstance", "start_prosody"]

MODULES = ["roster", "saslauth", "disco", "ping"]

def _lua_str(s: str | Path) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class ProsodyInstance(ServerInstance):
    """One private Prosody.  Attributes tests use:

    ``host`` ("127.0.0.1"), ``port`` (c2s: plaintext, or STARTTLS when
    ``tls``), ``direct_tls_port`` (None unless ``tls``), ``domain``
    ("example.test"), ``users`` (user -> password), ``tls`` (bool),
    ``require_encryption``, ``dir``, ``config_path``, ``log_path``
    (prosody's own log, debug level), ``console_path`` (stdout/stderr).
    """

    dir: Path
    port: int = PROSODY_PORT
    tls: bool = False
    cert: Path | None = None
    key: Path | None = None
    direct_tls_port: int | None = None
    require_encryption: bool | None = None
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    #: Modules loaded besides MODULES (e.g. ``["smacks"]`` for XEP-0198).
    extra_modules: list[str] = field(default_factory=list)
    #: Federation (sites.py): plaintext s2s on ``host:s2s_port`` with dialback, and
    #: ``dns_forward`` ("IP@PORT") as the only DNS server, so that outbound s2s goes where
    #: that server's SRV answers say: contrib/prosody/s2s-behind-stanzawall.cfg.lua with
    #: these addresses, Included.  None (default): s2s stays disabled.
    s2s_port: int | None = None
    dns_forward: str | None = None
    host: str = HOST
    domain: str = DOMAIN
    _proc: Spawned | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dir = Path(self.dir).resolve()
        if self.require_encryption is None:
            self.require_encryption = self.tls
        if self.tls and not (self.cert and self.key):
            raise ValueError("tls=True needs cert and key")
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.console_path = self.dir / "console.log"
        self.data_path = self.dir / "data"
        self.certs_path = self.dir / "certs"

    # -- helpers --------------------------------------------------------------
    # -- setup ----------------------------------------------------------------
    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(exist_ok=True)
        # An empty certificate dir means "no TLS": nothing to auto-discover.
        self.certs_path.mkdir(exist_ok=True)
        modules = list(MODULES) + [m for m in self.extra_modules if m not in MODULES]
        if self.tls:
            modules.append("tls")
            # certmanager indexes this dir by the certificates' SAN names; that
            # serves both STARTTLS and SNI-based direct TLS.
            shutil.copyfile(self.cert, self.certs_path / f"{self.domain}.crt")
            shutil.copyfile(self.key, self.certs_path / f"{self.domain}.key")
        direct = [self.direct_tls_port] if self.direct_tls_port else []
        s2s = [self.s2s_port] if self.s2s_port else []
        if s2s:
            modules.append("dialback")
        disabled = ["s2s_auth_certs"] if s2s else ["s2s", "s2s_auth_certs"]
        s2s_settings = ""
        if s2s:
            if not self.dns_forward:
                raise ValueError("s2s_port needs dns_forward")
            # The operator's snippet itself, with this instance's addresses.
            text = contrib_text("prosody/s2s-behind-stanzawall.cfg.lua",
                                ("127.0.0.1@5300", self.dns_forward),
                                ('"127.0.0.1"', _lua_str(self.host)),
                                ("15269", str(self.s2s_port)))
            snippet = self.dir / "s2s-behind-stanzawall.cfg.lua"
            snippet.write_text(text)
            s2s_settings = f"Include {_lua_str(snippet)}\n"
        lua_list = lambda xs: "{ " + ", ".join(str(x) for x in xs) + " }"
        self.config_path.write_text(f"""\
-- Generated by tests/e2e/harness/prosody.py: private test instance.
pidfile = {_lua_str(self.dir / "prosody.pid")}
data_path = {_lua_str(self.data_path)}
certificates = {_lua_str(self.certs_path)}
run_as_root = true
interfaces = {{ {_lua_str(self.host)} }}
local_interfaces = {{ {_lua_str(self.host)} }}
c2s_ports = {lua_list([self.port])}
c2s_direct_tls_ports = {lua_list(direct)}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
network_settings = {{ nagle = false }}
unbound = {{ hoststxt = "/etc/hosts" }}
log = {{ debug = {_lua_str(self.log_path)} }}
authentication = "internal_hashed"
storage = "internal"
modules_enabled = {{ {", ".join(_lua_str(m) for m in modules)} }}
modules_disabled = {{ {", ".join(_lua_str(m) for m in disabled)} }}
c2s_require_encryption = {str(self.require_encryption).lower()}
allow_unencrypted_plain_auth = true
{s2s_settings}
VirtualHost {_lua_str(self.domain)}
""")

    def register(self, user: str, password: str) -> None:
        """Create (or overwrite) an account; works with the server up or down."""
        run_checked(["prosodyctl", "--config", str(self.config_path),
                     "register", user, self.domain, password],
                    timeout=30, who="prosodyctl register")
        self.users[user] = password

    # -- lifecycle ------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> "ProsodyInstance":
        if self.running():
            return self
        require_free_ports(self.host, [self.port, self.direct_tls_port, self.s2s_port],
                           "prosody")
        if not self.config_path.exists():
            self.write_config()
            for user, password in self.users.items():
                self.register(user, password)
        self._proc = Spawned(
            ["prosody", "-F", "--config", str(self.config_path)],
            log=self.console_path, who="prosody", cwd=self.dir)
        try:
            for port in (self.port, self.direct_tls_port, self.s2s_port):
                if port:
                    wait_for_port(self.host, port, timeout, proc=self._proc,
                                  log=self.log_path, who="prosody")
        except Exception as e:
            self.stop()
            raise ServerStartError(f"{e}\n--- console:\n{tail(self.console_path)}") from None
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (clients get <system-shutdown/>), SIGKILL after timeout."""
        if self._proc is not None:
            self._proc.stop(timeout, sig=signal.SIGTERM)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_prosody(dir: Path, *, tls: bool = False, cert: Path | None = None,
                  key: Path | None = None, port: int | None = None,
                  direct_tls_port: int | None = None,
                  require_encryption: bool | None = None,
                  users: dict[str, str] | None = None,
                  extra_modules: list[str] | None = None) -> ProsodyInstance:
    """Write config into ``dir``, register ``users`` (default: USERS) and
    start.  Port defaults: 15222 plaintext, or 15225 + direct TLS 15226 when
    ``tls``.  ``extra_modules`` adds modules (e.g. ``["smacks"]``, Prosody
    0.12's XEP-0198).  Call ``.stop()`` to tear down."""
    if port is None:
        port = PROSODY_TLS_PORT if tls else PROSODY_PORT
    if tls and direct_tls_port is None:
        direct_tls_port = PROSODY_DIRECT_TLS
    inst = ProsodyInstance(dir=dir, port=port, tls=tls, cert=cert, key=key,
                           direct_tls_port=direct_tls_port,
                           require_encryption=require_encryption,
                           users=dict(USERS if users is None else users),
                           extra_modules=list(extra_modules or []))
    return inst.start()
