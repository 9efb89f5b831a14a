"""The stanzawall daemon under test: config writing, start, reload, stop.

Owns one private ``stanzawall run`` process per :class:`Gateway`: its TOML
config (written into the instance dir, certificates copied beside it so a
test can replace them for reload tests), its log, and its lifecycle. The
binary is ``$STANZAWALL_BIN`` or ``target/release/stanzawall`` (built by the
test command before pytest runs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .defaults import HOST, START_TIMEOUT, STOP_TIMEOUT
from .proc import Spawned, require_free_ports, tail, wait_for_port

REPO = Path(__file__).resolve().parents[3]


def binary() -> Path:
    explicit = os.environ.get("STANZAWALL_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "release" / "stanzawall"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `cargo build --release` first")
    return path


@dataclass
class Listener:
    """One ``[[listener]]``: name, kind ("c2s"/"c2s-tls"/"websocket"), port, backend
    port, and extra TOML keys (``backend_tls``, ``proxy_protocol``, ``allowed_origins``, ...)."""
    name: str
    kind: str
    port: int
    backend_port: int
    extra: dict[str, object] = field(default_factory=dict)

    def toml(self) -> str:
        lines = ["[[listener]]", f'name = "{self.name}"', f'kind = "{self.kind}"',
                 f'bind = "{HOST}:{self.port}"', f'backend = "{HOST}:{self.backend_port}"']
        lines += [f'{k} = {toml_value(v)}' for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The suite opens many connections from 127.0.0.1 in quick succession; the per-source rate and
#: cap are off unless a test is about them (then it passes its own ``network``).
PERMISSIVE_NETWORK: dict[str, object] = {
    "connection_rate_per_ip": "off",
    "max_connections_per_ip": 100_000,
    # Brute-force tests would otherwise ban 127.0.0.1 for the rest of the suite.
    "ban": {"auth_failures": 1000},
}


class Gateway:
    def __init__(self, workdir: Path, cert: Path, key: Path, listeners: list[Listener],
                 limits: dict[str, int] | None = None, network: dict[str, object] | None = None,
                 extra_toml: str = ""):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.listeners = {l.name: l for l in listeners}
        self.limits = limits or {}
        self.network = PERMISSIVE_NETWORK if network is None else network
        #: Appended verbatim to the generated config (tables only: policy, [audit], [admin], ...).
        self.extra_toml = extra_toml
        self.config_path = self.dir / "stanzawall.toml"
        self.log_path = self.dir / "stanzawall.log"
        self.install_certificate(cert, key)
        self.write_config()
        self.proc: Spawned | None = None

    def port(self, name: str) -> int:
        return self.listeners[name].port

    def install_certificate(self, cert: Path, key: Path) -> None:
        """Copy a certificate/key pair to the paths the config names."""
        shutil.copyfile(cert, self.dir / "gateway.crt")
        shutil.copyfile(key, self.dir / "gateway.key")

    def config_text(self) -> str:
        parts = ['[[tls.certificate]]', 'domains = ["example.test", "*.example.test"]',
                 'cert = "gateway.crt"', 'key = "gateway.key"', ""]
        parts += [l.toml() for l in self.listeners.values()]
        if self.limits:
            parts.append("[limits]")
            parts += [f"{k} = {v}" for k, v in self.limits.items()]
        if self.network:
            parts.append("[network]")
            parts += [f"{k} = {toml_value(v)}" for k, v in self.network.items() if not isinstance(v, dict)]
            for name, table in self.network.items():
                if isinstance(table, dict):
                    parts.append(f"[network.{name}]")
                    parts += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        if self.extra_toml:
            parts.append(self.extra_toml)
        return "\n".join(parts) + "\n"

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else self.config_text())

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary()), "check", "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=30)

    def start(self) -> "Gateway":
        require_free_ports(HOST, [l.port for l in self.listeners.values()], "stanzawall")
        env = dict(os.environ, STANZAWALL_LOG=os.environ.get("STANZAWALL_LOG", "info"))
        self.proc = Spawned([str(binary()), "run", "--config", str(self.config_path)],
                            log=self.log_path, who="stanzawall", env=env)
        for l in self.listeners.values():
            wait_for_port(HOST, l.port, START_TIMEOUT, proc=self.proc, log=self.log_path,
                          who="stanzawall")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 10.0, after: int = 0) -> str:
        """Wait until ``needle`` appears in the log past offset ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()[after:]
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in stanzawall log within {timeout}s:\n{tail(self.log_path)}")

    def reload(self) -> None:
        assert self.proc is not None and self.proc.running()
        os.kill(self.proc.pid, signal.SIGHUP)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        code = self.proc.stop(timeout)
        return code

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()
