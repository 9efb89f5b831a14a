"""Files the configuration names (issue 18, finding 7): the config itself, includes and list
files are read only if they are regular files of at most 64 MiB, off the control loop.

A FIFO named as a list file used to block `stanzawall check` forever and, named at reload, the
daemon's control loop inside open(2), so that neither SIGHUP nor SIGTERM was answered again; a
sparse 10 GB file was read into memory. Real gateway, real Prosody, real FIFOs and sparse files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness.defaults import GATEWAY_SCRATCH_PORT, HOST
from harness.gateway import Gateway, Listener, binary
from harness.raw import RawStream, stream_header

BLOCKED = "127.0.0.3"
HUGE = 10 << 30  # sparse: no disk used
HUGE_ERROR = f"is {HUGE} bytes; a file the configuration names may have at most 64 MiB"
FIFO_ERROR = "is not a regular file (a FIFO)"


def blocklist_gateway(tmp: Path, pki, prosody, name: str, offset: int) -> Gateway:
    """A gateway whose deny list comes from `blocked.txt` (holding BLOCKED)."""
    gw = Gateway(tmp / name, pki.cert, pki.key, [
        Listener("c2s", "c2s", GATEWAY_SCRATCH_PORT + offset, prosody.port),
    ], network={"deny": ["list:blocked"], "connection_rate_per_ip": "off"},
        extra_toml='[list.blocked]\nfile = "blocked.txt"\n')
    (gw.dir / "blocked.txt").write_text(f"{BLOCKED}\n")
    return gw


def file_line(gw: Gateway) -> int:
    """The config line of `file = "blocked.txt"` (errors must point at it)."""
    lines = gw.config_path.read_text().splitlines()
    return next(i for i, l in enumerate(lines, 1) if l.startswith('file = "blocked.txt"'))


def replace(path: Path, kind: str) -> None:
    """Replace `path` by a FIFO, a symlink to /dev/zero, or a sparse 10 GiB file."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(HUGE)
    else:
        raise ValueError(kind)


def refused_at_accept(source: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    try:
        s.sendall(stream_header())
        return s.recv(1) == b""
    except OSError:
        return True
    finally:
        s.close()


def run_briefly(config: Path) -> subprocess.CompletedProcess:
    """`stanzawall run` that must refuse to start (a hang fails the test at the timeout)."""
    return subprocess.run([str(binary()), "run", "--config", str(config)], capture_output=True, text=True,
                          timeout=30)


def test_check_and_run_refuse_fifos_devices_huge_files_and_say_where(tmp, pki, prosody):
    gw = blocklist_gateway(tmp, pki, prosody, "gw-files-check", 13)
    listed = gw.dir / "blocked.txt"
    where = f"{gw.config_path}:{file_line(gw)}: list.blocked.file: {listed}"
    ok = gw.check()
    assert ok.returncode == 0, ok.stderr

    # A FIFO: `check` used to block in open(2) until a writer came (the harness times out at 30 s).
    replace(listed, "fifo")
    r = gw.check()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{where}: {FIFO_ERROR}" in r.stderr, r.stderr
    r = run_briefly(gw.config_path)
    assert r.returncode == 1 and f"{where}: {FIFO_ERROR}" in r.stderr, (r.returncode, r.stderr)

    replace(listed, "device")
    r = gw.check()
    assert r.returncode == 1 and f"{where}: is not a regular file (a character device)" in r.stderr, r.stderr

    replace(listed, "huge")
    r = gw.check()
    assert r.returncode == 1 and f"{where}: {HUGE_ERROR}" in r.stderr, r.stderr
    r = run_briefly(gw.config_path)
    assert r.returncode == 1 and f"{where}: {HUGE_ERROR}" in r.stderr, (r.returncode, r.stderr)

    # An include that is a FIFO: the error names the include line.
    listed.unlink()
    listed.write_text(f"{BLOCKED}\n")
    (gw.dir / "policy.d").mkdir()
    os.mkfifo(gw.dir / "policy.d" / "rules.toml")
    gw.write_config('include = ["policy.d/*.toml"]\n' + gw.config_text())
    r = gw.check()
    assert r.returncode == 1, r.stderr
    assert f"{gw.config_path}:1: include: {gw.dir / 'policy.d' / 'rules.toml'}: {FIFO_ERROR}" in r.stderr, r.stderr

    # The config file itself.
    fifo_config = gw.dir / "fifo.toml"
    os.mkfifo(fifo_config)
    r = subprocess.run([str(binary()), "check", "--config", str(fifo_config)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and f"{fifo_config}: cannot read: {FIFO_ERROR}" in r.stderr, r.stderr


def test_a_list_file_turned_fifo_or_huge_keeps_the_running_policy_and_sigterm_works(tmp, pki, prosody):
    gw = blocklist_gateway(tmp, pki, prosody, "gw-files-reload", 14).start()
    port = gw.port("c2s")
    listed = gw.dir / "blocked.txt"
    where = f"{gw.config_path}:{file_line(gw)}: list.blocked.file: {listed}"
    try:
        assert refused_at_accept(BLOCKED, port), "the list file's address is denied"

        # The list file becomes a FIFO: the change is noticed by polling, the reload fails with
        # the file and config line, and the daemon stays responsive.
        before = len(gw.log())
        replace(listed, "fifo")
        text = gw.wait_log("reload failed", after=before)
        assert f"{where}: {FIFO_ERROR}" in text, text
        before = len(gw.log())
        gw.reload()  # SIGHUP
        text = gw.wait_log("reload failed", after=before)
        assert f"{where}: {FIFO_ERROR}" in text, text

        # A sparse 10 GiB file: refused by its size, not read.
        before = len(gw.log())
        replace(listed, "huge")
        text = gw.wait_log("reload failed", after=before)
        assert f"{where}: {HUGE_ERROR}" in text, text

        # The running policy is the old one: the listed address is still denied, others get in.
        assert refused_at_accept(BLOCKED, port)
        with RawStream.open(HOST, port, ca_file=pki.ca_cert) as ok:
            ok.login("alice", prosody.users["alice"])
        assert "configuration reloaded" not in gw.log()

        # And SIGTERM ends it at once (it used to sit in open(2) on the FIFO, deaf to signals).
        replace(listed, "fifo")
        before = len(gw.log())
        gw.wait_log("reload failed", after=before)
        assert gw.proc is not None
        started = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGTERM)
        code = gw.proc.popen.wait(timeout=15)
        assert code == 0, code
        print(f"stopped {time.monotonic() - started:.2f} s after SIGTERM")
        assert "stopped" in gw.log()
    finally:
        gw.terminate()
