#!/usr/bin/python3
"""Relay throughput (issue 13): MB/s of one file through the gateway's XEP-0065 relay, with and
without clamd, against a direct loopback copy, side by side.

    cargo build --release
    flock /tmp/stanzawall-e2e.lock /usr/bin/python3 bench/transfer/run.py [--mb 50] [--rounds 3]

Rows, alternated per round so that noise on a shared machine hits each alike:
  direct        asyncio sender → asyncio receiver on loopback (the same Python I/O as the clients)
  relay         slixmpp XEP-0065 through stanzawall's relay (size/type/hash/DLP pipeline)
  relay+clamd   the same with clamd INSTREAM (a private clamd with a one-line .hdb)
Reuses the e2e harness (private Prosody, gateway, clamd on the test_transfer ports 25570-25579).
Writes bench/results/transfer.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness.ca import make_pki  # noqa: E402
from harness.clamd import EICAR, ClamdInstance  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.defaults import HOST, USERS  # noqa: E402
from harness.gateway import Gateway, Listener  # noqa: E402
from harness.prosody import ProsodyInstance  # noqa: E402

GW, RELAY, CLAMD, PROSODY, DIRECT = 25570, 25571, 25572, 25576, 25578


def gateway(dir: Path, pki, clamd: bool) -> Gateway:
    extra = f"""
[[listener]]
name = "relay"
kind = "socks5"
bind = "{HOST}:{RELAY}"

[file_transfer]
proxy_jid = "proxy.example.test"
max_bytes = 1000000000
dlp_keywords = ["CONFIDENTIAL"]
hold_back_bytes = 65536
{f'clamd = "{HOST}:{CLAMD}"' if clamd else ""}
"""
    return Gateway(dir, pki.cert, pki.key, [Listener("c2s", "c2s", GW, PROSODY)], extra_toml=extra).start()


def client(ca, user: str) -> Client:
    c = Client(f"{user}@example.test/bench", USERS[user], HOST, GW, ca_file=ca)
    c.xmpp.register_plugin("xep_0030")
    c.xmpp.register_plugin("xep_0065")
    c.xmpp["xep_0065"].auto_accept = True
    return c


async def through_relay(ca, data: bytes) -> float:
    async with client(ca, "alice") as a, client(ca, "bob") as b:
        got = bytearray()
        done = asyncio.get_running_loop().create_future()
        b.xmpp.add_event_handler("socks5_data", got.extend)
        b.xmpp.add_event_handler("socks5_closed", lambda exc: done.done() or done.set_result(exc))
        sock = await a.xmpp["xep_0065"].handshake(b.jid, timeout=10)
        start = time.perf_counter()
        for i in range(0, len(data), 65536):
            await sock.write(data[i:i + 65536])
        sock.transport.close()
        exc = await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - start
        assert exc is None and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "transfer failed"
        return elapsed


async def direct(data: bytes) -> float:
    got = bytearray()
    done = asyncio.get_running_loop().create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, d):
            got.extend(d)

        def connection_lost(self, exc):
            done.set_result(exc)

    server = await asyncio.get_running_loop().create_server(Sink, HOST, DIRECT)
    _, w = await asyncio.open_connection(HOST, DIRECT)
    start = time.perf_counter()
    for i in range(0, len(data), 65536):
        w.write(data[i:i + 65536])
        await w.drain()
    w.close()
    await asyncio.wait_for(done, 300)
    elapsed = time.perf_counter() - start
    server.close()
    assert bytes(got) == data
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = os.urandom(args.mb * 1024 * 1024)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    pki = make_pki(work / "pki")
    prosody = ProsodyInstance(dir=work / "prosody", port=PROSODY, users=dict(USERS)).start()
    clamd = ClamdInstance(work / "clamd", CLAMD, {"Local.EICAR": EICAR}).start()
    times: dict[str, list[float]] = {"direct": [], "relay": [], "relay+clamd": []}
    try:
        for _ in range(args.rounds):
            times["direct"].append(asyncio.run(direct(data)))
            for row, with_clamd in (("relay", False), ("relay+clamd", True)):
                gw = gateway(work / f"gw-{row}", pki, with_clamd)
                try:
                    times[row].append(asyncio.run(asyncio.wait_for(through_relay(pki.ca_cert, data), 600)))
                finally:
                    gw.terminate()
    finally:
        clamd.stop()
        prosody.stop()
    mb = len(data) / 1e6
    lines = [f"# Relay throughput ({args.mb} MiB of random bytes, {args.rounds} rounds, median MB/s [min–max])", "",
             "| row | MB/s | vs direct |", "|---|---|---|"]
    base = mb / statistics.median(times["direct"])
    for row, ts in times.items():
        rates = [mb / t for t in ts]
        med = statistics.median(rates)
        lines.append(f"| {row} | {med:.0f} [{min(rates):.0f}–{max(rates):.0f}] | {med / base:.2f} |")
    lines += ["", f"Machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end; "
              "every row moves the bytes through Python asyncio on both ends (slixmpp for the relay rows)."]
    out = ROOT / "bench" / "results" / "transfer.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
