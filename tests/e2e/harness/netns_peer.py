"""Client actions run inside a network namespace (``ip netns exec NS python3 netns_peer.py …``).

The test process lives in the root namespace; sockets created here belong to the namespace
this script was started in. Each command prints one JSON line and exits 0.

  probe HOST PORT SECONDS            TCP connect: {"result": "open" | "timeout" | "refused"}
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


def probe(host: str, port: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(seconds)
    try:
        s.connect((host, port))
        return {"result": "open"}
    except (socket.timeout, TimeoutError):
        return {"result": "timeout"}
    except ConnectionRefusedError:
        return {"result": "refused"}
    finally:
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
        out = probe(args[0], int(args[1]), float(args[2]))
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
