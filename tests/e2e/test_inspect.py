"""Passive inspection (issue 15) end to end: ``stanzawall inspect`` over captures.

1. A real session: slixmpp talks to a real Prosody (plaintext c2s) while tcpdump captures
   loopback; the same session through a real gateway (STARTTLS on the client leg) with the same
   policy writes the inline audit. The passive audit records equal the inline ones field by
   field (time and listener aside), with the flow's 5-tuple and "would" verdicts added.
2. Captures built here with scapy (packets) and a small pcap/pcapng writer (files): reordered
   and duplicated segments, a conflicting overlap, a lost segment, a mid-stream pickup, IPv6,
   Linux SLL2, pcapng with two interfaces, STARTTLS, a truncated file.
3. s2s: two real Prosody sites (harness/sites.py) federating directly over plaintext dialback,
   captured on loopback: the initiating server's stanzas are decided in ``s2s-in`` when the
   receiving domain is one of ``[s2s] domains``, else ``s2s-out``.

Ports: 25520 (gateway), 25521 (Prosody), 25500-25502 on 127.0.1.1 / 127.0.2.1 (the sites);
tcpdump filters on them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.client import Client, run
from harness.defaults import HOST
from harness.gateway import Gateway, Listener, binary
from harness.proc import require_free_ports, wait_for_port
from harness.prosody import ProsodyInstance, start_prosody
from harness.sites import SITE_A, SITE_B, log_tails, running_sites
from test_attack_catalogue import recording  # noqa: F401  (fixture: the catalogue's inline gateway)

scapy = pytest.importorskip("scapy.all", reason="python3-scapy (scripts/install-test-deps.sh)")
from scapy.all import IP, IPv6, TCP, Ether  # noqa: E402

GATEWAY_PORT = 25520
PROSODY_PORT = 25521
RESOURCE = "inspect"

POLICY = """
[audit]
path = "audit.jsonl"

[[rule]]
name   = "no-secrets"
chain  = "c2s-in"
when   = { body_contains = "secret-word" }
action = "drop"

[[rule]]
name   = "bounce-links"
chain  = "c2s-in"
when   = { body_contains = "bounce-me" }
action = "bounce"

[[rule]]
name   = "no-spam-delivered"
chain  = "c2s-out"
when   = { body_contains = "spam-word" }
action = "drop"

[[rule]]
name     = "watch"
when     = { body_contains = "confidential" }
action   = "drop"
log_only = true

[[rule]]
name   = "note"
when   = { body_contains = "audit-me" }
action = "log"
"""

#: Fields of an inline audit record that depend on when and where, not on what was decided.
CONTEXT_FIELDS = {"time", "listener"}
PASSIVE_FIELDS = {"capture.ts", "flow.proto", "flow.src_ip", "flow.src_port", "flow.dest_ip",
                  "flow.dest_port", "verdict"}


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prosody_plain(tmp: Path) -> ProsodyInstance:
    inst = start_prosody(tmp / "prosody-inspect", port=PROSODY_PORT)
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody_plain) -> Gateway:
    g = Gateway(tmp / "gw-inspect", pki.cert, pki.key,
                [Listener("c2s", "c2s", GATEWAY_PORT, prosody_plain.port)], extra_toml=POLICY)
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


@pytest.fixture(scope="module")
def policy_file(tmp: Path) -> Path:
    """The same policy as a policy-only config (no listener, no certificate)."""
    p = tmp / "inspect-policy.toml"
    p.write_text(POLICY.replace('path = "audit.jsonl"', 'path = "unused.jsonl"'))
    return p


# -- helpers ------------------------------------------------------------------------------------

def inspect(policy: Path, *pcaps: Path, extra: tuple[str, ...] = ()) -> tuple[int, list[dict], list[dict], str]:
    """Run ``stanzawall inspect``: (exit code, audit records, EVE records, stderr summary)."""
    out = pcaps[0].with_suffix(".audit.jsonl")
    eve = pcaps[0].with_suffix(".eve.jsonl")
    args = [str(binary()), "inspect", "--config", str(policy), "--audit", str(out), "--eve", str(eve)]
    for p in pcaps:
        args += ["--pcap", str(p)]
    r = subprocess.run(args + list(extra), capture_output=True, text=True, timeout=60)
    audit = [json.loads(l) for l in out.read_text().splitlines()] if out.exists() else []
    alerts = [json.loads(l) for l in eve.read_text().splitlines()] if eve.exists() else []
    return r.returncode, audit, alerts, r.stderr


def decided(records: list[dict]) -> list[tuple]:
    """What was decided, independent of when and where: sorted, field by field."""
    keys = lambda r: tuple(sorted((k, json.dumps(v)) for k, v in r.items()
                                  if k not in CONTEXT_FIELDS | PASSIVE_FIELDS))
    return sorted(keys(r) for r in records)


async def scenario(c: Client) -> None:
    """The same stanzas, inline or direct: to the user's own account, so Prosody delivers each
    back to the session (c2s-out) — except what the gateway drops or bounces inline."""
    own = f"alice@example.test"
    for mid, body in [("m1", "hello"), ("m2", "top secret-word"), ("m3", "bounce-me please"),
                      ("m4", "outbound spam-word"), ("m5", "please audit-me"),
                      ("m6", "confidential plans"), ("m7", "sentinel")]:
        m = c.xmpp.make_message(mto=own, mbody=body, mtype="chat")
        m["id"] = mid
        m.send()
    # Each message comes back in order; once the sentinel is seen, every earlier one was seen
    # or withheld.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = await c.next_message(timeout=10)
        if m.body == "sentinel":
            break
    await c.disconnect()


def session(host_port: int, pki, *, tls: bool) -> None:
    async def go():
        c = Client(f"alice@example.test/{RESOURCE}", "alice-secret-1", HOST, host_port,
                   starttls=tls, ca_file=pki.ca_cert if tls else None)
        await c.connect()
        await scenario(c)
    run(go())


class Tcpdump:
    """tcpdump on loopback for the duration of a ``with`` block; stopped by its PID."""

    def __init__(self, path: Path, bpf: str):
        self.path, self.bpf = path, bpf

    def __enter__(self) -> "Tcpdump":
        # --immediate-mode: without it, on some kernels (this CI's among them) TPACKET_V3 blocks
        # are never handed over and the file stays empty.
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-n", "-w",
                                      str(self.path), self.bpf],
                                     stderr=subprocess.PIPE, text=True)
        # It prints "listening on lo" once the capture runs.
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)  # the last segments (FIN/ACK) reach the capture
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


# -- captures built here ------------------------------------------------------------------------

CLIENT, SERVER = ("192.0.2.10", 40000), ("192.0.2.1", 5222)
HDR_C = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
         b"xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")
HDR_S = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
         b"xmlns:stream='http://etherx.jabber.org/streams' from='example.test' id='s1' version='1.0'>")
FEATURES = (b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
# \0alice\0hunter2 — must never appear in any output.
AUTH = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGh1bnRlcjI=</auth>"
SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
BIND = (b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>r</resource></bind></iq>")
BOUND = (b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
         b"<jid>alice@example.test/r</jid></bind></iq>")
SECRET = b"<message to='bob@example.test' id='s1'><body>a secret-word here</body></message>"
LATER = b"<message to='bob@example.test' id='s2'><body>another secret-word</body></message>"


def login() -> list[tuple[int, bytes]]:
    """(direction, bytes) of a plaintext login: 0 client → server, 1 server → client."""
    return [(0, HDR_C), (1, HDR_S), (1, FEATURES), (0, AUTH), (1, SUCCESS), (0, HDR_C),
            (1, HDR_S), (1, b"<stream:features/>"), (0, BIND), (1, BOUND)]


class Conv:
    """Packets of one TCP connection, with real sequence numbers, built with scapy."""

    def __init__(self, client=CLIENT, server=SERVER, v6: bool = False):
        self.ends = (client, server)
        self.v6 = v6
        self.seq = [1000, 50000]
        self.packets: list[bytes] = []

    def ip(self, d: int):
        (sa, sp), (da, dp) = (self.ends if d == 0 else self.ends[::-1])
        l3 = IPv6(src=sa, dst=da) if self.v6 else IP(src=sa, dst=da)
        return l3, sp, dp

    def raw(self, d: int, seq: int, payload: bytes = b"", flags: str = "PA") -> bytes:
        l3, sp, dp = self.ip(d)
        return bytes(l3 / TCP(sport=sp, dport=dp, seq=seq % 2**32, ack=self.seq[1 - d] % 2**32,
                              flags=flags) / payload)

    def handshake(self) -> "Conv":
        self.packets.append(self.raw(0, self.seq[0] - 1, flags="S"))
        self.packets.append(self.raw(1, self.seq[1] - 1, flags="SA"))
        return self

    def seg(self, d: int, data: bytes) -> tuple[int, bytes]:
        seq = self.seq[d]
        self.seq[d] += len(data)
        return seq, data

    def send(self, d: int, data: bytes) -> "Conv":
        seq, data = self.seg(d, data)
        self.packets.append(self.raw(d, seq, data))
        return self

    def talk(self, items) -> "Conv":
        for d, data in items:
            self.send(d, data)
        return self

    def fin(self) -> "Conv":
        for d in (0, 1):
            self.packets.append(self.raw(d, self.seq[d], flags="FA"))
        return self


def write_pcap(path: Path, packets: list[bytes], linktype: int, t0: float = 1_800_000_000.0) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for i, p in enumerate(packets):
            t = t0 + i * 0.001
            f.write(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)), len(p), len(p)) + p)


def ether(ip_packet: bytes, v6: bool = False) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                       type=0x86DD if v6 else 0x0800)) + ip_packet


def sll2(ip_packet: bytes, v6: bool = False) -> bytes:
    # Linux cooked v2: protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr[8].
    return struct.pack(">HHIHBB8s", 0x86DD if v6 else 0x0800, 0, 1, 1, 0, 6, b"\x02" * 6) + ip_packet


def pcapng(path: Path, interfaces: list[tuple[int, int]], packets: list[tuple[int, int, bytes]]) -> None:
    """interfaces: (linktype, tsresol exponent); packets: (interface, timestamp in its units, data)."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for linktype, resol in interfaces:
        opts = struct.pack("<HHB3x", 9, 1, resol) + struct.pack("<HH", 0, 0)
        out += block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)
    for iface, ts, data in packets:
        out += block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)
    path.write_bytes(out)


def baseline_conv() -> Conv:
    return Conv().handshake().talk(login())


def audit_of(records: list[dict]) -> list[tuple]:
    return [(r["chain"], r["rule"], r["outcome"], r["verdict"], r["id"], r["user"]) for r in records]


# -- tests --------------------------------------------------------------------------------------

def test_passive_verdicts_equal_inline_verdicts_for_the_same_session(tmp: Path, pki, gw, prosody_plain,
                                                                     policy_file):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump missing: scripts/install-test-deps.sh", pytrace=False)
    # Inline: TLS to the gateway, the gateway decides.
    session(GATEWAY_PORT, pki, tls=True)
    deadline = time.monotonic() + 5
    audit_file = gw.dir / "audit.jsonl"
    inline: list[dict] = []
    while time.monotonic() < deadline:
        inline = [json.loads(l) for l in audit_file.read_text().splitlines()] if audit_file.exists() else []
        if len(inline) >= 8:
            break
        time.sleep(0.1)
    # Passive: the same session straight to Prosody in plaintext, captured on loopback.
    cap = tmp / "real-session.pcap"
    with Tcpdump(cap, f"tcp port {PROSODY_PORT}"):
        session(PROSODY_PORT, pki, tls=False)
    code, passive, alerts, summary = inspect(policy_file, cap)
    assert code == 0, summary
    rules = sorted((r["chain"], r["rule"]) for r in inline)
    assert rules == sorted([("c2s-in", "no-secrets"), ("c2s-in", "bounce-links"),
                            ("c2s-in", "note"), ("c2s-out", "note"),
                            ("c2s-in", "watch"), ("c2s-out", "watch"),
                            ("c2s-out", "no-spam-delivered")]), inline
    assert decided(passive) == decided(inline), (passive, inline)
    for r in passive:
        assert r["verdict"] == f"would {r['outcome']}"
        assert r["user"] == "alice@example.test" and r["client.ip"] == HOST
        to_server = r["chain"] == "c2s-in"
        assert (r["flow.dest_port"] if to_server else r["flow.src_port"]) == PROSODY_PORT
        assert r["flow.proto"] == "tcp" and r["flow.src_ip"] == HOST
        assert r["time"].startswith(time.strftime("%Y-", time.gmtime()))
    assert "c2s 1" in summary and "encrypted: 0, plaintext: 1" in summary and "bound users: 1" in summary
    assert any(a["event_type"] == "alert" and a["xmpp"]["rule"] == "no-secrets" for a in alerts)
    assert any(a["event_type"] == "flow" and a["dest_port"] == PROSODY_PORT for a in alerts)


def test_reordered_and_duplicated_segments_decide_as_in_order(tmp: Path, policy_file):
    straight = baseline_conv().send(0, SECRET).send(0, LATER).fin()
    write_pcap(tmp / "straight.pcap", [ether(p) for p in straight.packets], 1)
    conv = baseline_conv()
    parts = [conv.seg(0, SECRET[i:i + 17]) for i in range(0, len(SECRET), 17)]
    parts.append(conv.seg(0, LATER))
    shuffled = parts[:]
    random.Random(15).shuffle(shuffled)
    for seq, data in shuffled + parts[::2]:
        conv.packets.append(conv.raw(0, seq, data))
    conv.fin()
    write_pcap(tmp / "shuffled.pcap", [ether(p) for p in conv.packets], 1)
    code, a, _, _ = inspect(policy_file, tmp / "straight.pcap")
    code2, b, _, summary = inspect(policy_file, tmp / "shuffled.pcap")
    assert code == code2 == 0
    assert [r["id"] for r in a] == ["s1", "s2"]
    assert audit_of(a) == audit_of(b)
    assert "conflicting overlaps 0" in summary and "gaps 0" in summary, summary
    assert "hunter2" not in json.dumps(b) and "AGFsaWNl" not in json.dumps(b) + summary


def test_a_conflicting_overlap_is_flagged_and_the_first_copy_wins(tmp: Path, policy_file):
    conv = baseline_conv()
    harmless = b"<message to='bob@example.test' id='s1'><body>a harmless-wd here</body></message>"
    assert len(harmless) == len(SECRET)
    seq, _ = conv.seg(0, SECRET)
    conv.packets.append(conv.raw(0, seq, harmless))
    conv.packets.append(conv.raw(0, seq, SECRET))  # the "retransmission" says something else
    conv.send(0, LATER).fin()
    write_pcap(tmp / "conflict.pcap", [ether(p) for p in conv.packets], 1)
    code, audit, alerts, summary = inspect(policy_file, tmp / "conflict.pcap")
    assert code == 0
    assert "conflicting overlaps 1" in summary, summary
    evasion = [a for a in alerts if a["event_type"] == "alert" and a["alert"]["signature_id"] == 9_100_005]
    assert len(evasion) == 1 and evasion[0]["src_port"] == CLIENT[1], alerts
    assert [r["id"] for r in audit] == ["s2"], audit  # first copy (harmless) kept


def test_a_lost_segment_is_reported_and_later_stanzas_still_parse(tmp: Path, policy_file):
    conv = baseline_conv()
    conv.seg(0, SECRET[:40])  # never captured
    conv.send(0, SECRET[40:]).send(0, LATER)
    conv.packets.append(conv.raw(1, conv.seq[1], b"", flags="A"))  # the server acks it all
    conv.fin()
    write_pcap(tmp / "lost.pcap", [ether(p) for p in conv.packets], 1)
    code, audit, alerts, summary = inspect(policy_file, tmp / "lost.pcap")
    assert code == 0
    assert "gaps 1 (40 bytes)" in summary, summary
    assert [r["id"] for r in audit] == ["s2"], audit
    assert "parse errors: none" in summary, summary
    assert any(a["event_type"] == "anomaly" and a["anomaly"]["bytes"] == 40 for a in alerts)


def test_a_flow_picked_up_mid_stream(tmp: Path, policy_file):
    conv = baseline_conv()
    start = len(conv.packets)
    conv.send(0, b"ody>...</body></message>").send(0, SECRET).fin()
    write_pcap(tmp / "mid.pcap", [ether(p) for p in conv.packets[start:]], 1)
    code, audit, _, summary = inspect(policy_file, tmp / "mid.pcap")
    assert code == 0
    assert audit_of(audit) == [("c2s-in", "no-secrets", "drop", "would drop", "s1", None)], audit
    assert audit[0]["flow.dest_port"] == SERVER[1] and "c2s 1" in summary


def test_ipv6_and_sll2(tmp: Path, policy_file):
    conv = Conv(("2001:db8::10", 40000), ("2001:db8::1", 5222), v6=True).handshake().talk(login())
    conv.send(0, SECRET).fin()
    write_pcap(tmp / "v6.pcap", [ether(p, v6=True) for p in conv.packets], 1)
    write_pcap(tmp / "v6-sll2.pcap", [sll2(p, v6=True) for p in conv.packets], 276)
    for name in ("v6.pcap", "v6-sll2.pcap"):
        code, audit, _, summary = inspect(policy_file, tmp / name)
        assert code == 0, summary
        assert audit_of(audit) == [("c2s-in", "no-secrets", "drop", "would drop", "s1", "alice@example.test")]
        assert audit[0]["client.ip"] == "2001:db8::10" and audit[0]["flow.dest_ip"] == "2001:db8::1"
        assert audit[0]["from"] == "alice@example.test/r"


def test_pcapng_with_two_interfaces(tmp: Path, policy_file):
    a = baseline_conv().send(0, SECRET).fin()
    b = Conv(("198.51.100.7", 41000), ("198.51.100.1", 5222)).handshake().talk(login()).send(0, LATER).fin()
    t0 = 1_800_000_000
    packets = []
    # Interface 0: Ethernet, microseconds; interface 1: raw IP, nanoseconds. Interleaved.
    for i in range(max(len(a.packets), len(b.packets))):
        if i < len(a.packets):
            packets.append((0, (t0 * 10**6) + i * 1000, ether(a.packets[i])))
        if i < len(b.packets):
            packets.append((1, (t0 * 10**9) + i * 1_000_000 + 7, b.packets[i]))
    pcapng(tmp / "two.pcapng", [(1, 6), (101, 9)], packets)
    code, audit, _, summary = inspect(policy_file, tmp / "two.pcapng")
    assert code == 0, summary
    got = sorted((r["client.ip"], r["id"]) for r in audit)
    assert got == [("192.0.2.10", "s1"), ("198.51.100.7", "s2")], audit
    later = next(r for r in audit if r["id"] == "s2")
    # Its message was packet 12 of interface 1: 12 ms after t0, nanosecond units decoded.
    assert later["capture.ts"] == f"{t0}.012000", later
    assert later["time"].startswith("2027-01-15T08:00:00.012"), later


def test_starttls_flow_is_reported_encrypted_and_not_parsed_after_proceed(tmp: Path, policy_file):
    conv = Conv().handshake().talk([
        (0, HDR_C), (1, HDR_S),
        (1, b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"),
        (0, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        (1, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        (0, b"\x16\x03\x01\x00\x2a" + os.urandom(42)),
        (0, SECRET),  # would be dropped if anything after <proceed/> were parsed
    ]).fin()
    write_pcap(tmp / "starttls.pcap", [ether(p) for p in conv.packets], 1)
    code, audit, alerts, summary = inspect(policy_file, tmp / "starttls.pcap")
    assert code == 0
    assert audit == []
    assert "encrypted: 1, plaintext: 0" in summary, summary
    flow = [a for a in alerts if a["event_type"] == "flow"]
    assert len(flow) == 1 and flow[0]["flow"]["bytes_toserver"] > len(SECRET)


def test_a_truncated_file_is_a_clear_error_and_what_was_read_is_reported(tmp: Path, policy_file):
    conv = baseline_conv().send(0, SECRET).send(0, LATER)
    write_pcap(tmp / "full.pcap", [ether(p) for p in conv.packets], 1)
    data = (tmp / "full.pcap").read_bytes()
    cut = tmp / "truncated.pcap"
    cut.write_bytes(data[:-30])  # inside the last record (LATER)
    code, audit, _, summary = inspect(policy_file, cut)
    assert code == 1
    assert "truncated" in summary and f"read {len(conv.packets) - 1} packets" in summary, summary
    assert [r["id"] for r in audit] == ["s1"], audit
    assert f"source {cut}: {len(conv.packets) - 1} packets" in summary
    # Not a capture at all.
    junk = tmp / "junk.pcap"
    junk.write_bytes(b"hello, this is not a capture" * 4)
    code, _, _, err = inspect(policy_file, junk)
    assert code == 1 and "not a pcap or pcapng file" in err, err


# -- s2s: a real federation capture -------------------------------------------------------------

S2S_POLICY = """
[s2s]
domains = ["b.example"]

[[rule]]
name   = "s2s-in-word"
chain  = "s2s-in"
when   = { body_contains = "inbound-word" }
action = "drop"

[[rule]]
name   = "s2s-out-word"
chain  = "s2s-out"
when   = { body_contains = "outbound-word" }
action = "bounce"

[[rule]]
name   = "c2s-only"
chain  = "c2s-in"
when   = { body_contains = "word" }
action = "drop"
"""


def test_s2s_flows_are_decided_in_s2s_in_or_s2s_out_by_the_receiving_domain(tmp: Path):
    """Prosody a.example and b.example federate directly (each site's DNS routes its outbound
    s2s to the other's plaintext s2s port); the capture is read as seen from b.example's side:
    what a.example sends to b.example is s2s-in, what b.example sends out is s2s-out."""
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump missing: scripts/install-test-deps.sh", pytrace=False)
    cap = tmp / "s2s.pcap"
    with running_sites(tmp / "s2s-inspect", (SITE_A, {"outbound": SITE_B.s2s}),
                       (SITE_B, {"outbound": SITE_A.s2s})) as (a, b):
        async def scenario():
            async with a.client("alice") as alice, b.client("bob") as bob:
                for body in ("hello b", "an inbound-word", "an outbound-word"):
                    alice.send_message(b.jid("bob"), body)
                    assert (await bob.next_message(20)).body == body
                for body in ("hello a", "an outbound-word", "an inbound-word"):
                    bob.send_message(a.jid("alice"), body)
                    assert (await alice.next_message(20)).body == body

        with Tcpdump(cap, f"tcp port {SITE_A.s2s_port} and (host {SITE_A.host} or host {SITE_B.host})"):
            try:
                run(scenario(), 90)
            except BaseException as e:
                raise AssertionError(f"{e!r}\n{log_tails(a, b)}") from e
    policy = tmp / "s2s-policy.toml"
    policy.write_text(S2S_POLICY)
    code, audit, alerts, summary = inspect(policy, cap)
    assert code == 0, summary
    got = sorted((r["chain"], r["rule"], r["outcome"], r["from"].split("/")[0], r["to"], r["verdict"])
                 for r in audit)
    assert got == [
        ("s2s-in", "s2s-in-word", "drop", "alice@a.example", "bob@b.example", "would drop"),
        ("s2s-out", "s2s-out-word", "bounce", "bob@b.example", "alice@a.example", "would bounce"),
    ], (audit, summary)
    for r in audit:
        # Reported from the initiating server toward the receiving one, on the s2s port.
        assert r["flow.dest_port"] == SITE_A.s2s_port, r
        assert r["flow.dest_ip"] == (SITE_B.host if r["chain"] == "s2s-in" else SITE_A.host), r
        assert r["client.ip"] == r["flow.src_ip"], r
    m = [l for l in summary.splitlines() if "xmpp streams" in l]
    assert m and "c2s 0" in m[0] and "s2s 0" not in m[0], summary
    assert "s2s-in-word (drop): 1" in summary and "s2s-out-word (bounce): 1" in summary, summary
    assert any(x["event_type"] == "alert" and x.get("xmpp", {}).get("rule") == "s2s-out-word"
               for x in alerts)
    # Without [s2s] every initiating direction is inbound.
    open_policy = tmp / "s2s-open-policy.toml"
    open_policy.write_text(S2S_POLICY.replace('[s2s]\ndomains = ["b.example"]\n', ""))
    code, audit, _, summary = inspect(open_policy, cap)
    assert code == 0, summary
    got = sorted((r["chain"], r["rule"], r["from"].split("/")[0]) for r in audit)
    assert got == [("s2s-in", "s2s-in-word", "alice@a.example"), ("s2s-in", "s2s-in-word", "bob@b.example")], audit


# -- hostile captures: the attack catalogue, inline and passive ---------------------------------

#: Catalogue entries not compared, and why: what the inline gateway refuses there does not
#: exist in a plaintext flow, or passive mode reads it differently by design.
EXCLUDED = {
    "header_jabber_server": "passive mode tells c2s from s2s by this content namespace on any port "
                            "(detection by content): a jabber:server header is an s2s stream there; inline it "
                            "is refused only because it reached a c2s listener",
    "stanza_before_starttls": "refused inline because the gateway requires STARTTLS (RFC 6120 §5.3.1); "
                              "a plaintext capture is plaintext by premise",
    "auth_before_starttls": "refused inline because the gateway requires STARTTLS; a plaintext capture is "
                            "plaintext by premise",
    "plaintext_after_starttls": "TLS layer: the injected bytes belong to the TLS handshake; passively nothing "
                                "after <proceed/> is parsed (test_starttls_flow_is_reported_encrypted_...)",
    "sasl_scram_plus": "TLS layer: -PLUS mechanisms bind to a TLS channel (RFC 5802 §6), which a plaintext "
                       "flow does not have",
    "sasl_authzid_other_user": "answered inside SASL by the gateway itself (<invalid-authzid/> from the PLAIN "
                               "payload, RFC 6120 §6.5.6); passive mode never decodes SASL payloads (they hold "
                               "credentials), so it has no counterpart",
}


def _hostile_entries():
    from test_attack_catalogue import CATALOGUE
    return [e for e in CATALOGUE if e.id not in EXCLUDED]


#: Bytes of one hostile payload put in a capture (the inline gateway stops every entry well
#: before this; the 100 MB stanza is cut here, past the 256 KiB stanza cap).
PASSIVE_PAYLOAD_CAP = 2 << 20
#: Largest TCP payload per captured segment.
SEGMENT = 32_000

_ALERT_CONDITION = re.compile(r"^stanzawall (?:XML refused from the client: ([a-z-]+) "
                              r"|would close the stream \((?:c2s|s2s)-(?:in|out), ([a-z-]+)\))")

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def _failure(condition: str) -> bytes:
    return f"<failure xmlns='{SASL}'><{condition}/></failure>".encode()


def _auth(mechanism: str, payload: str) -> bytes:
    return f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{payload}</auth>".encode()


def login_as(jid: str) -> list[tuple[int, bytes]]:
    """``login()`` binding ``jid`` instead of alice@example.test/r."""
    bound = BOUND.replace(b"alice@example.test/r", jid.encode())
    return [(d, bound if data == BOUND else data) for d, data in login()]


def _inline_outcome(e) -> tuple[str, str | None]:
    """What the inline gateway does with entry ``e``, as the catalogue's own runner asserts it
    (the runner has just run it through the real gateway and passed)."""
    import test_attack_catalogue as cat
    runner = e.runner
    if runner in (cat.after_login, cat.after_tls, cat.header_level):
        return ("stream-error", e.expect)
    if runner is cat.stanza_error:
        return ("stanza-error", e.expect)
    if runner is cat.hidden_text:
        return ("drop", "c2s-in")          # dropped by the policy, the session goes on
    if runner is cat.to_client:
        return ("drop", "c2s-out")         # never handed to the recipient, its stream goes on
    if runner is cat.sasl_huge_auth:
        return ("stream-error", "policy-violation")
    # Accepted (CDATA, BOM, fullwidth JID, pipelining) or answered by the server (SASL).
    return ("none", None)


def _passive_flows(e, m: str, data: bytes, prosody_out: dict[str, tuple[str, str]]) -> list[list[tuple[int, bytes]]]:
    """The plaintext flow(s) that carry entry ``e``'s bytes as the inline gateway saw them."""
    import test_attack_catalogue as cat
    r = e.runner
    if r in (cat.header_level, cat.header_accepted):
        flow = [(0, data)] + ([(1, HDR_S), (1, FEATURES)] if r is cat.header_accepted else [])
    elif r is cat.after_tls:
        flow = [(0, HDR_C), (1, HDR_S), (1, FEATURES), (0, data)]
    elif r is cat.pipelined:
        flow = [(0, HDR_C + AUTH), (1, HDR_S + FEATURES), (1, SUCCESS), (0, HDR_C + BIND),
                (1, HDR_S + b"<stream:features/>"), (1, BOUND),
                (0, f"<message to='bob@example.test' id='{m}'><body>{m}</body></message>".encode())]
    elif r is cat.sasl_unoffered:
        flow = [(0, HDR_C), (1, HDR_S), (1, FEATURES), (0, _auth("X-FOO", cat.b64(m))),
                (1, _failure("invalid-mechanism"))] + login()[3:]
    elif r is cat.sasl_bad_base64:
        flow = [(0, HDR_C), (1, HDR_S), (1, FEATURES), (0, _auth("PLAIN", f"!!!{m}===*")),
                (1, _failure("incorrect-encoding"))]
    elif r is cat.sasl_huge_auth:
        head = _auth("PLAIN", m)[:-len("</auth>")]
        flow = [(0, HDR_C), (1, HDR_S), (1, FEATURES), (0, head + b"A" * (1 << 20) + b"</auth>")]
    elif r is cat.sasl_bruteforce:
        attempts = [[(0, _auth("PLAIN", cat.b64(f"\0alice\0wrong-{i}"))), (1, _failure("not-authorized"))]
                    for i in range(20)]
        opening = [(0, HDR_C), (1, HDR_S), (1, FEATURES)]
        if e.opts["conns"] == 1:
            return [opening + [x for a in attempts for x in a]]
        return [opening + a for a in attempts]
    elif r is cat.to_client:
        # What Prosody itself delivered to bob (its own serialization), on bob's session.
        bob_jid, stanza = prosody_out[e.id]
        flow = login_as(bob_jid) + [(1, stanza.encode())]
    else:
        # after_login, stanza_error, hidden_text, cdata, jid_canonical: after a plaintext login.
        flow = login() + [(0, data)]
    return [flow]


def _whole_element(text: str, kind: str, stanza_id: str) -> str | None:
    """The whole top-level ``<kind id=stanza_id>`` element in ``text`` (nested elements of the
    same name counted: a carbon wraps a message), once it is complete."""
    start = re.search(rf"<{kind}\b(?=[^>]*\bid=['\"]{re.escape(stanza_id)}['\"])", text)
    if start is None:
        return None
    depth = 0
    for tag in re.finditer(rf"<{kind}\b[^>]*?/>|<{kind}\b[^>]*>|</{kind}>", text[start.start():]):
        if tag.group(0).startswith("</"):
            depth -= 1
        elif not tag.group(0).endswith("/>"):
            depth += 1
        if depth == 0:
            return text[start.start():start.start() + tag.end()]
    return None


def _prosody_deliveries(prosody_plain, entries) -> dict[str, tuple[str, str]]:
    """For the entries about what a server sends a client: carol sends the payload through the
    real (plaintext) Prosody to bob; what Prosody writes to bob's stream is kept, exactly."""
    import test_attack_catalogue as cat
    from harness.raw import RawStream
    out: dict[str, tuple[str, str]] = {}
    for e in entries:
        if e.runner is not cat.to_client:
            continue
        m = cat.marker()
        with RawStream.open(HOST, PROSODY_PORT, starttls=False, timeout=cat.WAIT) as bob, \
                RawStream.open(HOST, PROSODY_PORT, starttls=False, timeout=cat.WAIT) as carol:
            bob.login("bob", prosody_plain.users["bob"], resource=f"r{m[-6:]}")
            carol.login("carol", prosody_plain.users["carol"], resource="c")
            data, _ = e.build(m)
            carol.send(data.replace(b"{bob}", bob.bound_jid.encode()).decode())
            kind = "iq" if data.startswith(b"<iq") else "message"
            deadline = time.monotonic() + cat.WAIT
            stanza = None
            while stanza is None and time.monotonic() < deadline:
                bob.read_for(0.1)
                stanza = _whole_element(bob.received, kind, m)
            assert stanza is not None, f"{e.id}: Prosody did not deliver it to bob: {bob.received[-800:]!r}"
            out[e.id] = (bob.bound_jid, stanza)
    return out


def _passive_outcome(alerts: list[dict], audit: list[dict], ports: set[int]) -> tuple[str, str | None]:
    for a in alerts:  # in capture order: the first refusal is what inline answers
        if a["event_type"] == "alert" and (a["src_port"] in ports or a["dest_port"] in ports):
            mm = _ALERT_CONDITION.match(a["alert"]["signature"])
            if mm:
                return ("stream-error", mm.group(1) or mm.group(2))
    for r in audit:
        if r["flow.src_port"] in ports or r["flow.dest_port"] in ports:
            if r["outcome"] == "bounce":
                return ("stanza-error", r["condition"])
            if r["outcome"] == "drop":
                return ("drop", r["chain"])
    return ("none", None)


def test_attack_catalogue_payloads_are_refused_passively_with_the_inline_condition(tmp: Path, request, pki,
                                                                                    prosody_plain):
    """Every catalogue entry whose bytes fit a plaintext flow (all but ``EXCLUDED``): run
    inline through the real gateway by the catalogue's own runner (the after-login ones also
    measured here, as before), then its bytes in a plaintext flow of one capture, read with the
    recording gateway's policy. The passive outcome — first stream error condition, else the
    stanza error of a bounce, else the chain of a drop, else nothing — equals the inline one."""
    import test_attack_catalogue as cat
    from test_attack_catalogue import CATALOGUE
    entries = _hostile_entries()
    assert len(entries) + len(EXCLUDED) == len(CATALOGUE) and len(entries) >= 80, len(entries)
    ctx = cat.Ctx(request, pki)
    inline: dict[str, tuple[str, str | None]] = {}
    payloads: dict[str, tuple[str, bytes]] = {}
    for e in entries:
        m = cat.marker()
        data, _ = e.build(m) if e.payload is not None else (b"", m)
        chunks = [data] if isinstance(data, (bytes, bytearray)) else list(data)
        if e.runner is cat.after_login:
            # Measured here: each payload after a login through the recording gateway.
            with cat.rec_login(ctx) as rs:
                cat.control(rs)
                _, start = cat.write(rs, chunks, "whole", pause=e.opts.get("pause", 0.0))
                text, _ = cat.read_closed(rs, start)
            inline[e.id] = ("stream-error", cat.parse_stream_error(text))
            assert inline[e.id] == _inline_outcome(e), (e.id, inline[e.id])
        else:
            e.runner(ctx, e, "whole")  # asserts the inline behaviour _inline_outcome names
            inline[e.id] = _inline_outcome(e)
        blob = bytearray()
        for ch in chunks:
            if len(blob) >= PASSIVE_PAYLOAD_CAP:
                break
            blob += ch
        payloads[e.id] = (m, bytes(blob[:PASSIVE_PAYLOAD_CAP]))
    delivered = _prosody_deliveries(prosody_plain, entries)
    # Passive: one capture, each entry's flow(s) on ports of its own.
    packets: list[bytes] = []
    ports: dict[str, set[int]] = {}
    port = 42000
    for e in entries:
        m, blob = payloads[e.id]
        for flow in _passive_flows(e, m, blob, delivered):
            conv = Conv(("192.0.2.10", port), SERVER).handshake()
            ports.setdefault(e.id, set()).add(port)
            port += 1
            for d, data in flow:
                for off in range(0, len(data), SEGMENT):
                    conv.send(d, data[off:off + SEGMENT])
            packets += conv.fin().packets
    cap = tmp / "catalogue.pcap"
    write_pcap(cap, packets, 101)
    policy = tmp / "catalogue-policy.toml"
    policy.write_text(cat.CATALOGUE_POLICY)
    code, audit, alerts, summary = inspect(policy, cap)
    assert code == 0, summary
    passive = {e.id: _passive_outcome(alerts, audit, ports[e.id]) for e in entries}
    differ = {k: (inline[k], passive[k]) for k in inline if inline[k] != passive[k]}
    assert not differ, f"(inline, passive) differ: {differ}\nProsody delivered: {delivered}\n{summary}"
    # Not vacuous: most entries are refusals, and every kind of outcome occurs.
    kinds = {v[0] for v in inline.values()}
    assert kinds == {"stream-error", "stanza-error", "drop", "none"}, kinds
    assert sum(v[0] == "stream-error" for v in inline.values()) >= 40


# -- a capture of 1,000,000 tiny flows stays within the memory cap ------------------------------

MANY_FLOWS = 1_000_000
#: A start of a c2s header: each flow is kept probing (no SYN: picked up mid-stream) with bytes
#: buffered, the most a one-packet flow can hold.
TINY = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' to='example.test'"


def write_many_flows(path: Path, n: int) -> None:
    """``n`` one-packet flows, raw IPv4 (link type 101), written with struct (scapy is far too
    slow for a million packets); bounded by ``n``."""
    tcp_len = 20 + len(TINY)
    with path.open("wb", buffering=1 << 20) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101))
        t0 = 1_800_000_000
        for i in range(n):
            src = bytes((10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, i & 0xFFFF, 0, 64, 6, 0, src,
                             b"\xc0\x00\x02\x01")
            tcp = struct.pack(">HHIIBBHHH", 40000 + (i % 20000), 5222, 1000, 1, 0x50, 0x18, 65535, 0, 0)
            pkt = ip + tcp + TINY
            us = i  # one flow per microsecond: the whole capture spans one second, nothing idles
            f.write(struct.pack("<IIII", t0 + us // 1_000_000, us % 1_000_000, len(pkt), len(pkt)) + pkt)


def _run_measured(args: list[str], timeout: float) -> tuple[int, str, int]:
    """Run ``args``; (exit code, stderr, peak RSS in KiB of that process alone, from wait4)."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{args[:2]} did not finish within {timeout} s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    return proc.returncode, err.read().decode(errors="replace"), usage.ru_maxrss


def test_a_million_tiny_flows_stay_within_the_flow_table_cap(tmp: Path, policy_file):
    cap, few = tmp / "million.pcap", tmp / "ten.pcap"
    write_many_flows(cap, MANY_FLOWS)
    write_many_flows(few, 10)

    def run_inspect(pcap: Path, max_flows: int) -> tuple[str, int]:
        code, summary, rss = _run_measured(
            [str(binary()), "inspect", "--config", str(policy_file), "--pcap", str(pcap),
             "--audit", str(tmp / "million.audit.jsonl"), "--max-flows", str(max_flows)], 600)
        assert code == 0, summary
        return summary, rss

    # The process's own floor (binary, policy, the 4 MiB read buffer): ten flows.
    _, rss_floor = run_inspect(few, 1000)
    summary, rss_small = run_inspect(cap, 1000)
    assert f"source {cap}: {MANY_FLOWS} packets" in summary, summary
    # Every flow was created; all but the last 1000 were evicted to make room (none idled: the
    # capture spans one second); never more than 1000 at once.
    assert f"flows: {MANY_FLOWS} (evicted {MANY_FLOWS - 1000}, idle 0, most at once 1000)" in summary, summary
    # Correctness cap, not speed: a million flows through a 1000-flow table cost no more memory
    # than ten flows (slack for the allocator), where holding them all would take gigabytes.
    assert rss_small < rss_floor + 16 * 1024, f"peak RSS {rss_small} KiB vs {rss_floor} KiB for ten flows"
    # The cap is what bounds it: a 50x larger table holds more and takes more memory.
    summary, rss_large = run_inspect(cap, 50_000)
    assert f"evicted {MANY_FLOWS - 50_000}, idle 0, most at once 50000" in summary, summary
    assert rss_large > rss_small + 64 * 1024, (rss_floor, rss_small, rss_large)


# -- live capture: SIGINT prints the summary ----------------------------------------------------

LIVE_PORT = 25522


def test_sigint_on_a_live_capture_prints_the_summary(tmp: Path, policy_file):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump missing: scripts/install-test-deps.sh", pytrace=False)
    audit = tmp / "live.audit.jsonl"
    proc = subprocess.Popen([str(binary()), "inspect", "--config", str(policy_file), "--interface", "lo",
                             "--bpf", f"tcp port {LIVE_PORT}", "--audit", str(audit)],
                            stderr=subprocess.PIPE, text=True)
    try:
        # tcpdump (its stderr is inherited) says when it captures.
        lines = [proc.stderr.readline() for _ in range(1)]
        while "listening on" not in lines[-1] and len(lines) < 5 and lines[-1]:
            lines.append(proc.stderr.readline())
        assert "listening on" in lines[-1], lines
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((HOST, LIVE_PORT))
        srv.listen(1)
        with srv, socket.create_connection((HOST, LIVE_PORT), timeout=5) as c:
            peer, _ = srv.accept()
            with peer:
                # No Nagle delay: each write is on the wire (and in the capture) in this order.
                for sock in (c, peer):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for d, data in login() + [(0, SECRET)]:
                    (c if d == 0 else peer).sendall(data)
                    time.sleep(0.02)
        time.sleep(0.5)  # the FINs reach the capture
        proc.send_signal(signal.SIGINT)  # to stanzawall alone, not its tcpdump
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted, live capture stopped" in err and "stanzawall inspect summary" in err, err
    assert "source interface lo:" in err and "c2s 1" in err and "bound users: 1" in err, err
    assert "no-secrets (drop): 1" in err, err
    assert [json.loads(l)["id"] for l in audit.read_text().splitlines()] == ["s1"]


# -- live capture: libpcap's AF_PACKET ring, BPF in the kernel, metrics on [admin] -------------

LIVE_ADMIN_PORT = 25610
#: A flow the live captures' BPF filter must leave out.
FILTERED_PORT = 25613


class LiveInspect:
    """``stanzawall inspect --interface IFACE --bpf FILTER`` for a ``with`` block; SIGINT (to its
    PID) ends it, and its audit/EVE records and summary are read then."""

    def __init__(self, name: str, config: Path, iface: str, bpf: str, workdir: Path):
        self.audit, self.eve = workdir / f"{name}.audit.jsonl", workdir / f"{name}.eve.jsonl"
        self.args = [str(binary()), "inspect", "--config", str(config), "--interface", iface, "--bpf", bpf,
                     "--audit", str(self.audit), "--eve", str(self.eve)]
        self.records: list[dict] = []
        self.summary = ""

    def __enter__(self) -> "LiveInspect":
        import queue
        import threading
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        # stderr is read by a thread so that waiting for the first lines is bounded in time.
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stderr], daemon=True)
        self.reader.start()
        # Its first lines: the admin listener's log line (with [admin]), then the capture's.
        self.header = ""
        deadline = time.monotonic() + 10
        while "stanzawall inspect: listening on" not in self.header and time.monotonic() < deadline:
            try:
                self.header += self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        if "stanzawall inspect: listening on" not in self.header:
            self.__exit__()
            pytest.fail(f"live inspection did not start: {self.summary}")
        return self

    def children(self) -> list[str]:
        """Names of the processes it started (tcpdump, if capture still went through one)."""
        names = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        return names

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=10)
        err = "".join(iter_queue(self.lines))
        self.summary = self.header + err
        self.code = self.proc.returncode
        self.records = [json.loads(l) for l in self.audit.read_text().splitlines()] if self.audit.exists() else []


def iter_queue(q):
    import queue
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def scrape(token: str | None) -> tuple[int, str]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://{HOST}:{LIVE_ADMIN_PORT}/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of series ``name`` with exactly these labels in Prometheus text, if present."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and got == labels:
            return float(value)
    return None


def raw_session(port: int, items) -> None:
    """A plaintext conversation between two sockets of ours on ``port`` (no XMPP server)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(1)
    with srv, socket.create_connection((HOST, port), timeout=5) as c:
        peer, _ = srv.accept()
        with peer:
            for sock in (c, peer):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for d, data in items:
                (c if d == 0 else peer).sendall(data)
                time.sleep(0.02)


def make_read_token(path: Path) -> str:
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(path), "--role", "read",
                          "--name", "scraper"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_live_capture_of_a_real_session_equals_the_pcap_path_and_serves_metrics(tmp: Path, pki, prosody_plain):
    """A real slixmpp session through Prosody (plaintext c2s), captured three ways at once:
    ``inspect --interface lo`` (with [admin]), ``inspect --interface any`` (Linux cooked
    headers) and tcpdump to a file. The live audit records equal those of ``inspect --pcap`` on
    tcpdump's file field by field (timestamps to within 1 ms: each socket reads the kernel
    clock itself for a loopback packet). /metrics answers during the capture with the gateway's auth
    rules; the BPF filter leaves another flow out; no tcpdump runs under stanzawall."""
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump missing: scripts/install-test-deps.sh", pytrace=False)
    require_free_ports(HOST, [LIVE_ADMIN_PORT, FILTERED_PORT], "live inspection test")
    work = tmp / "live-session"
    work.mkdir(exist_ok=True)
    token = make_read_token(work / "tokens")
    base = POLICY.replace('path = "audit.jsonl"', 'path = "admin-audit.jsonl"')
    with_admin = work / "live-admin.toml"
    with_admin.write_text(base + f'\n[admin]\nbind = "{HOST}:{LIVE_ADMIN_PORT}"\ntokens = "tokens"\n'
                                 'metrics_public = false\n')
    plain = work / "live.toml"
    plain.write_text(base)
    bpf = f"tcp port {PROSODY_PORT}"
    cap = work / "tcpdump.pcap"
    with LiveInspect("lo", with_admin, "lo", bpf, work) as lo, \
            LiveInspect("any", plain, "any", bpf, work) as anyif, Tcpdump(cap, bpf):
        assert lo.children() == [] and anyif.children() == [], (lo.children(), anyif.children())
        wait_for_port(HOST, LIVE_ADMIN_PORT, 10, who="inspect admin")
        # The gateway's rules: metrics_public = false → a token is needed, a read token is enough.
        assert scrape(None)[0] == 401
        assert scrape("not-a-token")[0] == 401
        status, before = scrape(token)
        assert status == 200 and metric(before, "stanzawall_inspect_stanzas_total") == 0, before
        session(PROSODY_PORT, pki, tls=False)
        raw_session(FILTERED_PORT, login() + [(0, SECRET)])
        # Scraped while the capture runs (bounded wait for the loop's next sync).
        deadline = time.monotonic() + 10
        while True:
            status, text = scrape(token)
            drops = metric(text, "stanzawall_inspect_policy_verdicts_total", rule="no-secrets", action="drop",
                           log_only="false")
            # Event counters move at once, the inspector's totals at the loop's next sync.
            synced = (metric(text, "stanzawall_inspect_stanzas_total") or 0) >= 18
            if (drops == 1 and synced and metric(text, "stanzawall_inspect_xmpp_streams_total", kind="c2s") == 1) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert status == 200, text
    assert drops == 1, text
    assert metric(text, "stanzawall_inspect_xmpp_streams_total", kind="c2s") == 1, text
    assert metric(text, "stanzawall_inspect_stanzas_total") >= 18, text
    assert metric(text, "stanzawall_inspect_policy_verdicts_total", rule="watch", action="drop", log_only="true") == 2
    assert metric(text, "stanzawall_inspect_flows_total") == 1, text  # the filtered flow never arrived
    assert metric(text, "stanzawall_inspect_kernel_dropped_packets_total", kind="ring") == 0, text
    assert metric(text, "stanzawall_inspect_reassembly_events_total", event="gaps") == 0, text
    assert metric(text, "stanzawall_inspect_packets_total") > 20, text

    for live in (lo, anyif):
        assert live.code == 0, live.summary
        assert "interrupted, live capture stopped" in live.summary, live.summary
        assert re.search(r"kernel: \d+ packets received by the socket, 0 dropped", live.summary), live.summary
        assert all(r["flow.dest_port"] != FILTERED_PORT and r["flow.src_port"] != FILTERED_PORT
                   for r in live.records), live.records
    assert "link-type EN10MB" in lo.header and "link-type LINUX_SLL" in anyif.header, (lo.header, anyif.header)
    code, from_file, _, summary = inspect(plain, cap)
    assert code == 0, summary
    assert len(from_file) >= 7 and any(r["rule"] == "no-secrets" for r in from_file), from_file
    # Field by field; the timestamps are each socket's own reading of the kernel clock for the
    # same packet (loopback packets carry none of their own), so they agree to within 1 ms.
    stamps = {"capture.ts", "time"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in stamps} for r in rs]
    for live in (lo, anyif):
        assert strip(live.records) == strip(from_file), (live.records, from_file)
        for a, b in zip(live.records, from_file):
            assert abs(float(a["capture.ts"]) - float(b["capture.ts"])) < 0.001, (a, b)
    for line in ("xmpp streams: 1 (c2s 1", "bound users: 1", "no-secrets (drop): 1"):
        assert line in lo.summary and line in anyif.summary and line in summary, (lo.summary, anyif.summary)


def test_bpf_on_a_capture_file_leaves_out_what_it_does_not_match(tmp: Path, policy_file):
    """Two flows with the same secret, one on 5222 and one on 5223: ``--bpf 'tcp port 5222'``
    keeps the first only, for Ethernet and raw-IP files alike (one program per link type)."""
    one = baseline_conv().send(0, SECRET).fin()
    other = Conv(("192.0.2.11", 40001), ("192.0.2.1", 5223)).handshake().talk(login()).send(0, LATER).fin()
    for name, linktype, wrap in (("bpf-ether.pcap", 1, ether), ("bpf-raw.pcap", 101, lambda p: p)):
        path = tmp / name
        write_pcap(path, [wrap(p) for p in one.packets + other.packets], linktype)
        code, audit, _, summary = inspect(policy_file, path)
        assert code == 0 and sorted(r["id"] for r in audit) == ["s1", "s2"], (audit, summary)
        code, audit, _, summary = inspect(policy_file, path, extra=("--bpf", "tcp port 5222"))
        assert code == 0, summary
        assert [r["id"] for r in audit] == ["s1"], (audit, summary)
        assert f"{len(other.packets)} left out by --bpf" in summary, summary
        assert "flows: 1 " in summary, summary
    code, _, _, err = inspect(policy_file, tmp / "bpf-ether.pcap", extra=("--bpf", "tcp prot 5222"))
    assert code == 1 and "--bpf 'tcp prot 5222': " in err, err


def test_live_capture_errors_name_the_problem(tmp: Path, policy_file):
    def run_inspect(*args: str, user: list[str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run((user or []) + [str(binary()), "inspect", "--config", str(policy_file), *args],
                              capture_output=True, text=True, timeout=30)

    r = run_inspect("--interface", "nosuch0")
    assert r.returncode == 1, r
    assert "--interface nosuch0: no such interface (interfaces here: " in r.stderr, r.stderr
    assert re.search(r"interfaces here: .*\blo\b", r.stderr), r.stderr
    r = run_inspect("--interface", "lo", "--bpf", "tcp prot 5222")
    assert r.returncode == 1 and "--bpf 'tcp prot 5222': " in r.stderr, r.stderr
    # Without CAP_NET_RAW (an unprivileged user; the config readable by it).
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.fail("needs root and setpriv (util-linux) to drop the privilege", pytrace=False)
    world = Path(tempfile.mkdtemp(prefix="sw-inspect-perm-"))
    try:
        world.chmod(0o755)
        cfg = world / "policy.toml"
        cfg.write_text(policy_file.read_text())
        cfg.chmod(0o644)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary()),
                            "inspect", "--config", str(cfg), "--interface", "lo"],
                           capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(world, ignore_errors=True)
    assert r.returncode == 1, r
    assert "--interface lo: no permission to capture" in r.stderr and "CAP_NET_RAW" in r.stderr, r.stderr


# -- in-band bytestreams (XEP-0047) -------------------------------------------------------------

IBB_POLICY = """
[[listener]]
name = "relay"
kind = "socks5"
bind = "127.0.0.1:25680"

[file_transfer]
proxy_jid = "proxy.example.test"
dlp_keywords = ["CONFIDENTIAL"]
deny_types = ["application/pdf"]

[[rule]]
name   = "nothing-to-carol"
chain  = "file"
when   = { to = "carol@example.test" }
action = "block"
"""


def ibb_stanzas(to: str, sid: str, data: bytes, block: int = 512) -> list[tuple[int, bytes]]:
    """A XEP-0047 transfer from the client: open, data iqs (seq from 0, base64), close."""
    import base64
    ns = "http://jabber.org/protocol/ibb"
    out = [(0, f"<iq type='set' id='{sid}-o' to='{to}'><open xmlns='{ns}' sid='{sid}' block-size='{block}' "
               f"stanza='iq'/></iq>".encode())]
    for seq, i in enumerate(range(0, len(data), block)):
        chunk = base64.b64encode(data[i:i + block]).decode()
        out.append((0, f"<iq type='set' id='{sid}-{seq}' to='{to}'><data xmlns='{ns}' sid='{sid}' "
                       f"seq='{seq}'>{chunk}</data></iq>".encode()))
        out.append((1, f"<iq type='result' id='{sid}-{seq}' from='{to}'/>".encode()))
    out.append((0, f"<iq type='set' id='{sid}-c' to='{to}'><close xmlns='{ns}' sid='{sid}'/></iq>".encode()))
    return out


def test_in_band_transfers_are_judged_by_the_file_chain(tmp: Path):
    policy = tmp / "inspect-ibb.toml"
    policy.write_text(IBB_POLICY)
    clean = b"quarterly numbers, all fine\n" * 100
    leak = clean + b"this is CONFIDENTIAL\n"
    pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 40
    conv = baseline_conv()
    conv.talk(ibb_stanzas("bob@example.test/b", "clean", clean))
    conv.talk(ibb_stanzas("bob@example.test/b", "leak", leak))
    conv.talk(ibb_stanzas("bob@example.test/b", "pdf", pdf, block=256))
    conv.talk(ibb_stanzas("carol@example.test/c", "carol", b"hello"))
    conv.fin()
    write_pcap(tmp / "ibb.pcap", [ether(p) for p in conv.packets], 1)
    code, audit, alerts, summary = inspect(policy, tmp / "ibb.pcap")
    assert code == 0, summary
    files = [r for r in audit if r.get("event") == "file-transfer"]
    got = [(r["sid"], r["sender"], r["recipient"], r["transport"], r["bytes"], r["detector"], r["verdict"])
           for r in files]
    assert got == [
        ("clean", "alice@example.test/r", "bob@example.test/b", "ibb", len(clean), "none", "would pass"),
        ("leak", "alice@example.test/r", "bob@example.test/b", "ibb", len(leak), "dlp", "would block"),
        ("pdf", "alice@example.test/r", "bob@example.test/b", "ibb", len(pdf), "type", "would block"),
        ("carol", "alice@example.test/r", "carol@example.test/c", "ibb", 0, "rule", "would block"),
    ], files
    import hashlib
    assert files[0]["sha256"] == hashlib.sha256(clean).hexdigest()
    assert files[2]["media_type"] == "application/pdf" and files[3]["rule"] == "nothing-to-carol"
    # The inline record's fields, plus the flow and the capture time.
    for r in files:
        assert (r["flow.src_ip"], r["flow.src_port"], r["flow.dest_ip"], r["flow.dest_port"]) == \
            (CLIENT[0], CLIENT[1], SERVER[0], SERVER[1]), r
        assert r["capture.ts"].startswith("1800000000.") and r["client.ip"] == CLIENT[0], r
        assert {"name", "declared_size", "media_type", "logged", "scanner_failed_open", "duration_ms"} <= r.keys()
    blocked = [a for a in alerts if a.get("event_type") == "alert" and "in-band file" in a["alert"]["signature"]]
    assert [a["xmpp"]["sid"] for a in blocked] == ["leak", "pdf", "carol"], blocked
    assert all(a["alert"]["action"] == "allowed" for a in blocked)
    assert "in-band transfers: 4 (would pass 1, would block 3)" in summary, summary
    # The carol data after its refused open would be refused as an unknown stream.
    assert "refused in-band stanzas 1" in summary, summary
