"""A private redis-server (Debian's) for the shared-store tests, and HAProxy in TCP mode in
front of several gateways.

Owns one ``redis-server`` process on a fixed loopback port (no persistence, no config file of
the machine's) and one ``haproxy -db`` process with a generated config; both are started by the
test and stopped by PID (:class:`harness.proc.Spawned`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .defaults import HOST, START_TIMEOUT, STOP_TIMEOUT
from .proc import Spawned, require_free_ports, wait_for_port

REDIS_PORT = 26379


class RedisInstance:
    def __init__(self, workdir: Path, port: int = REDIS_PORT):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self.log_path = self.dir / "redis.log"
        self.proc: Spawned | None = None

    def start(self) -> "RedisInstance":
        if shutil.which("redis-server") is None:
            raise FileNotFoundError("redis-server missing: run scripts/install-test-deps.sh as root")
        require_free_ports(HOST, [self.port], "redis-server")
        self.proc = Spawned(["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
                            log=self.log_path, who="redis-server")
        wait_for_port(HOST, self.port, START_TIMEOUT, proc=self.proc, log=self.log_path, who="redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_TIMEOUT)
            self.proc = None

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-h", HOST, "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=10, check=True).stdout


class HaproxyInstance:
    """HAProxy in TCP mode: one frontend, round-robin over ``backends`` with PROXY v2.

    With ``health`` (one admin port per backend) each gateway is checked with ``GET /readyz`` on
    its admin listener every 200 ms (out after one failure, back after two successes), as the
    README's snippet does: a draining gateway answers 503 and is taken out of the rotation."""

    def __init__(self, workdir: Path, port: int, backends: list[int], health: list[int] | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.config_path = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        check = (lambda i: f" check port {health[i]} inter 200ms fall 1 rise 2") if health else (lambda i: "")
        servers = "\n".join(f"  server gw{i} {HOST}:{p} send-proxy-v2{check(i)}" for i, p in enumerate(backends))
        # A connection that reaches a gateway which stopped accepting before its check failed
        # is sent to another one.
        httpchk = "  option httpchk GET /readyz\n  retries 3\n  option redispatch\n" if health else ""
        self.config_path.write_text(f"""global
  maxconn 512
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend xmpp
  bind {HOST}:{port}
  default_backend gateways
backend gateways
  balance roundrobin
{httpchk}{servers}
""")
        self.proc: Spawned | None = None

    def start(self) -> "HaproxyInstance":
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise FileNotFoundError("haproxy missing: run scripts/install-test-deps.sh as root")
        require_free_ports(HOST, [self.port], "haproxy")
        self.proc = Spawned([binary, "-db", "-f", str(self.config_path)], log=self.log_path, who="haproxy")
        wait_for_port(HOST, self.port, START_TIMEOUT, proc=self.proc, log=self.log_path, who="haproxy")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_TIMEOUT)
            self.proc = None
