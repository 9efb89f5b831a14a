"""Client actions run inside a network namespace (``ip netns exec NS python3 netns_peer.py …``).

The test process lives in the root namespace; sockets created here belong to the namespace
this script was started in. Each command prints one JSON line and exits 0.

  probe HOST PORT SECONDS [SOURCE]   TCP connect (from SOURCE if given; IPv4 or IPv6):
                                     {"result": "open" | "timeout" | "refused"}
  hold HOST PORT SECONDS SOURCES PROBE_SOURCE
                                     connect from each comma-separated SOURCE and keep those
                                     open while probing from PROBE_SOURCE:
                                     {"held": [result, ...], "probe": result}
  login HOST PORT USER PASSWORD CA   STARTTLS + PLAIN + bind: {"jid": ...} or {"error": ...}
  badauth HOST PORT USER N CA        N wrong passwords on one stream: {"failures": k,
                                     "stream_error": condition or null, "closed": bool}
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.raw import RawStream, RawStreamError, parse_stream_error  # noqa: E402


def connect(host: str, port: int, seconds: float, source: str | None = None) -> tuple[str, socket.socket]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(seconds)
    try:
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        return "open", s
    except (socket.timeout, TimeoutError):
        return "timeout", s
    except ConnectionRefusedError:
        return "refused", s


def probe(host: str, port: int, seconds: float, source: str | None = None) -> dict:
    result, s = connect(host, port, seconds, source)
    s.close()
    return {"result": result}


def hold(host: str, port: int, seconds: float, sources: list[str], probe_source: str) -> dict:
    held = [connect(host, port, seconds, src) for src in sources]
    try:
        return {"held": [r for r, _ in held], "probe": probe(host, port, seconds, probe_source)["result"]}
    finally:
        for _, s in held:
            s.close()


def login(host: str, port: int, user: str, password: str, ca: str) -> dict:
    try:
        rs = RawStream.open(host, port, ca_file=ca, timeout=10)
        try:
            return {"jid": rs.login(user, password)}
        finally:
            rs.close()
    except (OSError, RawStreamError) as e:
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def badauth(host: str, port: int, user: str, n: int, ca: str) -> dict:
    rs = RawStream.open(host, port, ca_file=ca, timeout=10)
    failures = 0
    try:
        for i in range(n):
            try:
                rs.auth_plain(user, f"wrong-password-{i}")
            except RawStreamError as e:
                if "<failure" in str(e):
                    failures += 1
                    continue
                break
        try:
            rs.read_until_closed(5)
        except RawStreamError:
            pass
        return {"failures": failures, "stream_error": parse_stream_error(rs.received), "closed": rs.closed}
    finally:
        rs.close()


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "probe":
        out = probe(args[0], int(args[1]), float(args[2]), args[3] if len(args) > 3 else None)
    elif cmd == "hold":
        out = hold(args[0], int(args[1]), float(args[2]), args[3].split(","), args[4])
    elif cmd == "login":
        out = login(args[0], int(args[1]), args[2], args[3], args[4])
    elif cmd == "badauth":
        out = badauth(args[0], int(args[1]), args[2], int(args[3]), args[4])
    else:
        print(json.dumps({"error": f"unknown command {cmd}"}))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
