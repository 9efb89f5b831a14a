"""A private clamd (Debian's clamav-daemon) for the file-transfer tests.

Owns one ``clamd`` process in the foreground on a fixed loopback TCP port, with a database
directory holding only the signature file the test writes: signature databases cannot be
downloaded here, and a one-line ``.hdb`` (``md5:size:name``) is a real signature — clamd
matches it on the file itself and inside the archives it unpacks (zip, 7z, tar.gz). Started by
the test, stopped by PID (:class:`harness.proc.Spawned`).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

from .defaults import HOST, START_TIMEOUT, STOP_TIMEOUT
from .proc import Spawned, require_free_ports, tail, wait_for_port

#: The EICAR anti-virus test file (68 bytes), detected by its MD5 line below.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def hdb_line(data: bytes, name: str) -> str:
    return f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}\n"


class ClamdInstance:
    def __init__(self, workdir: Path, port: int, signatures: dict[str, bytes]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.db = self.dir / "db"
        self.db.mkdir(exist_ok=True)
        (self.db / "local.hdb").write_text("".join(hdb_line(d, n) for n, d in signatures.items()))
        self.log_path = self.dir / "clamd.log"
        self.config_path = self.dir / "clamd.conf"
        self.config_path.write_text(
            "Foreground yes\n"
            f"DatabaseDirectory {self.db}\n"
            f"TCPSocket {port}\n"
            f"TCPAddr {HOST}\n"
            f"LogFile {self.dir / 'clamd-own.log'}\n"
            f"TemporaryDirectory {self.dir}\n"
            "StreamMaxLength 64M\n"
            "MaxThreads 4\n")
        self.proc: Spawned | None = None

    def start(self) -> "ClamdInstance":
        binary = shutil.which("clamd") or "/usr/sbin/clamd"
        if not Path(binary).exists():
            raise FileNotFoundError("clamd missing: apt-get install clamav-daemon")
        require_free_ports(HOST, [self.port], "clamd")
        self.proc = Spawned([binary, "--config-file", str(self.config_path)], log=self.log_path, who="clamd")
        wait_for_port(HOST, self.port, START_TIMEOUT, proc=self.proc, log=self.log_path, who="clamd")
        assert self.ping() == b"PONG", tail(self.log_path)
        return self

    def ping(self) -> bytes:
        with socket.create_connection((HOST, self.port), timeout=5) as s:
            s.sendall(b"zPING\0")
            return s.recv(64).rstrip(b"\0")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_TIMEOUT)
            self.proc = None
