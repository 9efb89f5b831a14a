"""Process and port plumbing shared by the server fixtures (prosody.py,
ejabberd.py) and usable by the gateway fixture.

Owns: bounded waits for a TCP port, checking a port is free before a server
is started on it, log tails for error messages, and :class:`Spawned`, a
started process whose whole process tree is remembered (PID + start time)
so that teardown signals exactly the processes we started, never anything
found by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "ServerInstance", "ServerStartError", "Spawned", "tail", "port_is_free", "require_free_ports",
    "wait_for_port", "run_checked",
]


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the log tail."""


def tail(path: Path | str | None, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file ("" if missing)."""
    if path is None:
        return ""
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(data[-lines:])


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port (bind with SO_REUSEADDR succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(host: str, ports: Iterable[int], who: str) -> None:
    busy = [p for p in ports if p is not None and not port_is_free(host, p)]
    if busy:
        raise ServerStartError(
            f"{who}: port(s) {busy} on {host} already in use (a leftover server?"
            f" see `ss -ltnp`); refusing to start")


def _connectable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, *,
                  proc: "Spawned | None" = None, log: Path | None = None,
                  who: str = "server") -> None:
    """Poll until host:port accepts a TCP connection, at most ``timeout`` s.

    Fails early if ``proc`` exits.  Errors include the tail of ``log``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _connectable(host, port):
            return
        if proc is not None and not proc.running():
            raise ServerStartError(
                f"{who} exited (code {proc.popen.returncode}) before listening on"
                f" {host}:{port}; log {log}:\n{tail(log)}")
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{who} not listening on {host}:{port} after {timeout:.0f}s;"
                f" log {log}:\n{tail(log)}")
        time.sleep(0.1)


def run_checked(argv: Sequence[str], *, timeout: float, who: str,
                **kw) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout, raising with stdout/stderr on failure."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{who}: {' '.join(argv)} timed out after {timeout}s:"
                           f"\n{e.stdout}\n{e.stderr}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{who}: {' '.join(argv)} failed ({proc.returncode}):"
                           f"\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- process identity -------------------------------------------------------

def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live, non-zombie pid, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                out.setdefault(st[0], []).append(int(entry))
    return out


class Spawned:
    """A process we started (``subprocess.Popen``, in its own session) plus the
    descendants it forked, each identified by (pid, start time) so a recycled
    PID is never signalled.

    Call :meth:`snapshot_tree` once the service is up (descendants that
    ``setsid``/re-parent are still recorded there); :meth:`stop` sends
    SIGTERM to the leader, waits, then SIGKILLs whatever of the recorded
    tree is still alive.
    """

    def __init__(self, argv: Sequence[str], *, log: Path, who: str,
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.who = who
        self.log = log
        self._logf = open(log, "ab")
        self.popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=self._logf,
            stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        self.tree: dict[int, int] = {}
        self.snapshot_tree()

    def running(self) -> bool:
        return self.popen.poll() is None

    def snapshot_tree(self) -> dict[int, int]:
        """Record (add to ``self.tree``) the leader and all live descendants."""
        kids = _children_map()
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            st = _stat(pid)
            if st is None:
                continue
            self.tree.setdefault(pid, st[1])
            todo.extend(kids.get(pid, ()))
        return self.tree

    def alive_tree(self) -> list[int]:
        """Recorded PIDs that are still the very same live process."""
        out = []
        for pid, start in self.tree.items():
            st = _stat(pid)
            if st is not None and st[1] == start:
                out.append(pid)
        return out

    def _signal_tree(self, sig: int) -> None:
        for pid in self.alive_tree():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait_tree(self, timeout: float) -> bool:
        """Wait (bounded) until the leader is reaped and the tree is gone."""
        deadline = time.monotonic() + timeout
        while True:
            self.popen.poll()
            if self.popen.returncode is not None and not self.alive_tree():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, timeout: float, *, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM the leader (unless already exiting), wait up to ``timeout``
        s for the whole recorded tree, then SIGKILL survivors.  Idempotent.
        Returns the leader's exit code."""
        self.snapshot_tree()
        if self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        if not self.wait_tree(timeout):
            self._signal_tree(signal.SIGKILL)
            self.wait_tree(5.0)
        try:
            self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        self._logf.close()
        return self.popen.returncode


class ServerInstance:
    """What every private server fixture offers; subclasses set ``domain``, ``log_path`` and
    ``_proc`` (a :class:`Spawned`, or None before start)."""

    domain: str
    log_path: Path
    _proc: "Spawned | None"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
