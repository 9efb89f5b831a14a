"""The generated nftables ruleset and live ban sync (issue 4), with real nft in network namespaces.

Two namespaces joined by a veth pair: the gateway's (10.77.0.1, with its own Prosody listening
on every address, port 15222) and a peer's (10.77.0.2). Without the ruleset the peer reaches
both the gateway and Prosody directly; with `stanzawall nft` output loaded, only the gateway's
port answers. When the gateway bans the peer after wrong passwords (real Prosody rejects them),
sync puts the address in the kernel's ban set: the peer's SYNs are dropped before the gateway
sees them, until the ban's timeout expires in the kernel.

Over IPv6 (issue 18, finding 6) the peer holds several addresses of one /64: the kernel's
per-source meter counts them as one source, and a ban caused from one address drops the whole
/64 (an interval element with a timeout in `ban6`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.gateway import Gateway, binary
from harness.proc import Spawned, tail
from harness.prosody import ProsodyInstance

TAG = os.getpid() % 100_000
GW_NS, PEER_NS = f"swgw{TAG}", f"swpeer{TAG}"
VETH_GW, VETH_PEER = f"swv{TAG}g", f"swv{TAG}p"
GW_IP, PEER_IP = "10.77.0.1", "10.77.0.2"
GW_IP6, PEER_NET6 = "2001:db8:77::1", "2001:db8:77::"
PEER_IPS6 = [f"{PEER_NET6}{i:x}" for i in (2, 3, 4, 5, 0x99)]
GATEWAY_PORT, PROSODY_PORT = 25222, 15222
PEER_SCRIPT = Path(__file__).resolve().parent / "harness" / "netns_peer.py"
BAN_SECONDS = 8


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} → {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def in_ns(ns: str, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, input=input, check=check)


def peer(*args: str) -> dict:
    r = in_ns(PEER_NS, "/usr/bin/python3", str(PEER_SCRIPT), *args)
    return json.loads(r.stdout.strip().splitlines()[-1])


def probe(ns_cmd_host: str, port: int, seconds: float = 2.0) -> str:
    return peer("probe", ns_cmd_host, str(port), str(seconds))["result"]


def wait_listening(ns: str, host: str, port: int, proc: Spawned, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = in_ns(ns, "/usr/bin/python3", str(PEER_SCRIPT), "probe", host, str(port), "1")
        if json.loads(r.stdout.strip().splitlines()[-1])["result"] == "open":
            return
        if not proc.running():
            break
        time.sleep(0.2)
    raise AssertionError(f"{host}:{port} not listening in {ns}:\n{tail(log)}")


@pytest.fixture
def namespaces():
    r = sh("ip", "netns", "add", GW_NS, check=False)
    if r.returncode != 0:
        pytest.skip(f"the kernel refuses network namespaces here (`ip netns add`: {r.stderr.strip()})")
    try:
        sh("ip", "netns", "add", PEER_NS)
        sh("ip", "link", "add", VETH_GW, "netns", GW_NS, "type", "veth", "peer", "name", VETH_PEER,
           "netns", PEER_NS)
        for ns, dev, ip in ((GW_NS, VETH_GW, GW_IP), (PEER_NS, VETH_PEER, PEER_IP)):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
        # IPv6: the peer holds several addresses of one /64 (no duplicate address detection, so
        # they are usable at once).
        for ns, dev, ip in ((GW_NS, VETH_GW, GW_IP6), *((PEER_NS, VETH_PEER, a) for a in PEER_IPS6)):
            in_ns(ns, "ip", "-6", "addr", "add", f"{ip}/64", "dev", dev, "nodad")
        yield
    finally:
        # Deleting a namespace destroys its veth end (and with it the pair) and its ruleset.
        for ns in (GW_NS, PEER_NS):
            sh("ip", "netns", "del", ns, check=False)


def ban_rule_packets() -> int:
    chain = json.loads(in_ns(GW_NS, "nft", "-j", "list", "chain", "inet", "stanzawall", "input").stdout)
    total = 0
    for item in chain["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == "banned by stanzawall":
            total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return total


def banned_addresses() -> dict[str, int]:
    s = json.loads(in_ns(GW_NS, "nft", "-j", "list", "set", "inet", "stanzawall", "ban4").stdout)
    elems = next(i["set"] for i in s["nftables"] if "set" in i).get("elem", [])
    return {e["elem"]["val"]: e["elem"]["timeout"] for e in elems if isinstance(e, dict)}


def prosody_in_gateway_ns(base: Path) -> tuple[ProsodyInstance, Spawned]:
    """A private Prosody listening on all addresses inside the gateway's namespace, accounts
    registered; the caller stops the returned process."""
    prosody = ProsodyInstance(dir=base / "prosody", port=PROSODY_PORT, host="0.0.0.0")
    prosody.write_config()
    for user, password in prosody.users.items():
        prosody.register(user, password)
    proc = Spawned(["ip", "netns", "exec", GW_NS, "prosody", "-F", "--config", str(prosody.config_path)],
                   log=prosody.console_path, who="prosody (netns)", cwd=prosody.dir)
    return prosody, proc


def test_ruleset_opens_only_gateway_ports_and_sync_bans_in_the_kernel(tmp, pki, namespaces):
    base = tmp / f"nft-{TAG}"
    prosody, prosody_proc = prosody_in_gateway_ns(base)
    gw_proc = None
    gw = Gateway(base / "gateway", pki.cert, pki.key, [])
    gw.write_config(f"""\
[[tls.certificate]]
domains = ["example.test"]
cert = "gateway.crt"
key = "gateway.key"

[[listener]]
name = "c2s"
kind = "c2s"
bind = "{GW_IP}:{GATEWAY_PORT}"
backend = "127.0.0.1:{PROSODY_PORT}"

[network]
connection_rate_per_ip = "30/minute"
connection_burst_per_ip = 20

[network.ban]
auth_failures = 3
window = "10m"
duration = "{BAN_SECONDS}s"

[nftables]
sync = true

[admin]
bind = "127.0.0.1:{ADMIN_PORT}"
tokens = "admin-tokens"
""")
    token = sh(str(binary()), "admin-token", "--tokens", str(gw.dir / "admin-tokens"), "--role", "admin",
               "--name", "nft-test").stdout.strip()
    try:
        wait_listening(GW_NS, "127.0.0.1", PROSODY_PORT, prosody_proc, prosody.console_path)
        gw_proc = Spawned(["ip", "netns", "exec", GW_NS, str(binary()), "run", "--config", str(gw.config_path)],
                          log=gw.log_path, who="stanzawall (netns)", env=dict(os.environ, STANZAWALL_LOG="info"))
        wait_listening(GW_NS, GW_IP, GATEWAY_PORT, gw_proc, gw.log_path)
        # No table yet: sync reports that it cannot add (the startup had no bans to add, so
        # nothing yet); the peer reaches Prosody directly, past the gateway.
        assert probe(GW_IP, PROSODY_PORT) == "open"
        assert probe(GW_IP, GATEWAY_PORT) == "open"

        ruleset = sh(str(binary()), "nft", "--config", str(gw.config_path)).stdout
        assert "table inet stanzawall {" in ruleset
        in_ns(GW_NS, "nft", "-c", "-f", "-", input=ruleset)   # check mode accepts it
        in_ns(GW_NS, "nft", "-f", "-", input=ruleset)
        in_ns(GW_NS, "nft", "-f", "-", input=ruleset)         # and loading it again replaces it

        # Only the gateway's port is open now; Prosody's is dropped (a timeout, not a reset).
        assert probe(GW_IP, PROSODY_PORT) == "timeout"
        assert peer("login", GW_IP, str(GATEWAY_PORT), "alice", prosody.users["alice"], str(pki.ca_cert)).get("jid", "") \
            .startswith("alice@example.test/")

        # Three wrong passwords: the gateway bans the peer and syncs the ban to the kernel.
        result = peer("badauth", GW_IP, str(GATEWAY_PORT), "alice", "3", str(pki.ca_cert))
        banned_at = time.monotonic()
        assert result == {"failures": 3, "stream_error": "policy-violation", "closed": True}, result
        deadline = time.monotonic() + 5
        while PEER_IP not in banned_addresses() and time.monotonic() < deadline:
            time.sleep(0.1)
        bans = banned_addresses()
        assert bans.get(PEER_IP) in (BAN_SECONDS, BAN_SECONDS + 1), bans
        assert "ban added to nftables" in gw.log()

        log_before = len(gw.log())
        packets_before = ban_rule_packets()
        assert probe(GW_IP, GATEWAY_PORT) == "timeout", "the banned peer's SYN is dropped by the kernel"
        assert ban_rule_packets() > packets_before
        # The gateway never saw that connection: no accept, no refusal line.
        assert PEER_IP not in gw.log()[log_before:], gw.log()[log_before:]

        # The kernel's timeout lifts the ban with the gateway's.
        time.sleep(max(0.0, BAN_SECONDS + 1.5 - (time.monotonic() - banned_at)))
        assert PEER_IP not in banned_addresses()
        assert probe(GW_IP, GATEWAY_PORT) == "open"
        assert peer("login", GW_IP, str(GATEWAY_PORT), "alice", prosody.users["alice"], str(pki.ca_cert)).get("jid", "") \
            .startswith("alice@example.test/")
        assert probe(GW_IP, PROSODY_PORT) == "timeout"

        # Banned again; the operator lifts it by removing the line from the ban file and
        # sending SIGHUP: the kernel's set loses the address long before its timeout.
        assert peer("badauth", GW_IP, str(GATEWAY_PORT), "alice", "3", str(pki.ca_cert))["closed"]
        deadline = time.monotonic() + 5
        while PEER_IP not in banned_addresses() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert PEER_IP in banned_addresses()
        bans_file = gw.config_path.parent / "state" / "bans"
        assert PEER_IP in bans_file.read_text()
        bans_file.write_text("".join(l for l in bans_file.read_text().splitlines(True) if PEER_IP not in l))
        log_before = len(gw.log())
        os.kill(gw_proc.pid, signal.SIGHUP)
        gw.wait_log("ban removed from nftables", after=log_before)
        assert PEER_IP not in banned_addresses()
        assert peer("login", GW_IP, str(GATEWAY_PORT), "alice", prosody.users["alice"], str(pki.ca_cert)).get("jid", "") \
            .startswith("alice@example.test/")

        # An operator's ban through the admin API (issue 19) reaches the kernel set the same way,
        # and lifting it through the API takes it out again.
        status, got = admin_api(token, "POST", "/api/v1/bans", {"address": PEER_IP, "duration": "1m"})
        assert status == 201, got
        deadline = time.monotonic() + 5
        while PEER_IP not in banned_addresses() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert banned_addresses().get(PEER_IP, 0) > BAN_SECONDS, banned_addresses()
        assert probe(GW_IP, GATEWAY_PORT) == "timeout", "the API's ban drops the peer's SYN in the kernel"
        status, got = admin_api(token, "DELETE", f"/api/v1/bans/{PEER_IP}")
        assert status == 200, got
        deadline = time.monotonic() + 5
        while PEER_IP in banned_addresses() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert PEER_IP not in banned_addresses()
        assert probe(GW_IP, GATEWAY_PORT) == "open"
    finally:
        code = gw_proc.stop(15) if gw_proc else 0
        prosody_proc.stop(15)
        print(tail(gw.log_path, 30), file=sys.stderr)
    assert code == 0


ADMIN_PORT = 25554

_ADMIN_CLIENT = """
import json, sys, urllib.request, urllib.error
token, method, path, body = sys.argv[1:5]
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                             data=body.encode() if body else None,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps([r.status, json.loads(r.read() or b"{}")]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def admin_api(token: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """Call the gateway's admin API from inside its namespace (it listens on its loopback)."""
    code = _ADMIN_CLIENT.replace("{port}", str(ADMIN_PORT))
    r = in_ns(GW_NS, "/usr/bin/python3", "-c", code, token, method, path, json.dumps(body) if body else "")
    status, got = json.loads(r.stdout.strip().splitlines()[-1])
    return status, got


def banned_prefixes() -> dict[str, int]:
    s = json.loads(in_ns(GW_NS, "nft", "-j", "list", "set", "inet", "stanzawall", "ban6").stdout)
    elems = next(i["set"] for i in s["nftables"] if "set" in i).get("elem", [])
    out = {}
    for e in elems:
        if isinstance(e, dict) and isinstance(e["elem"]["val"], dict):
            p = e["elem"]["val"]["prefix"]
            out[f"{p['addr']}/{p['len']}"] = e["elem"]["timeout"]
    return out


def test_ipv6_meters_and_bans_count_the_peers_64_as_one_source(tmp, pki, namespaces):
    base = tmp / f"nft6-{TAG}"
    prosody, prosody_proc = prosody_in_gateway_ns(base)
    gw_proc = None
    gw = Gateway(base / "gateway", pki.cert, pki.key, [])
    gw.write_config(f"""\
[[tls.certificate]]
domains = ["example.test"]
cert = "gateway.crt"
key = "gateway.key"

[[listener]]
name = "c2s6"
kind = "c2s"
bind = "[{GW_IP6}]:{GATEWAY_PORT}"
backend = "127.0.0.1:{PROSODY_PORT}"

[network]
max_connections_per_ip = 3
connection_rate_per_ip = "30/minute"
connection_burst_per_ip = 20

[network.ban]
auth_failures = 2
window = "10m"
duration = "{BAN_SECONDS}s"

[nftables]
sync = true
""")
    try:
        wait_listening(GW_NS, "127.0.0.1", PROSODY_PORT, prosody_proc, prosody.console_path)
        gw_proc = Spawned(["ip", "netns", "exec", GW_NS, str(binary()), "run", "--config", str(gw.config_path)],
                          log=gw.log_path, who="stanzawall (netns)", env=dict(os.environ, STANZAWALL_LOG="info"))
        wait_listening(GW_NS, GW_IP6, GATEWAY_PORT, gw_proc, gw.log_path)
        ruleset = sh(str(binary()), "nft", "--config", str(gw.config_path)).stdout
        assert "add @conn6 { ip6 saddr and ffff:ffff:ffff:ffff:: ct count over 3 }" in ruleset, ruleset
        in_ns(GW_NS, "nft", "-c", "-f", "-", input=ruleset)
        in_ns(GW_NS, "nft", "-f", "-", input=ruleset)

        # Three connections held from three addresses of the peer's /64: a fourth from a fourth
        # address is dropped by the kernel (a timeout, not a close by the gateway).
        held = peer("hold", GW_IP6, str(GATEWAY_PORT), "2", ",".join(PEER_IPS6[:3]), PEER_IPS6[3])
        assert held == {"held": ["open"] * 3, "probe": "timeout"}, held
        time.sleep(0.5)  # the held connections' conntrack entries close
        assert peer("probe", GW_IP6, str(GATEWAY_PORT), "2", PEER_IPS6[3])["result"] == "open"

        # Two wrong passwords from ::2 ban the /64; sync puts the prefix in the kernel's ban6.
        result = peer("badauth", GW_IP6, str(GATEWAY_PORT), "alice", "2", str(pki.ca_cert))
        assert result == {"failures": 2, "stream_error": "policy-violation", "closed": True}, result
        deadline = time.monotonic() + 5
        while f"{PEER_NET6}/64" not in banned_prefixes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert banned_prefixes().get(f"{PEER_NET6}/64") in (BAN_SECONDS, BAN_SECONDS + 1), banned_prefixes()
        assert f"client.source={PEER_NET6}/64" in gw.log()
        # Another address of the /64, which never failed anything: dropped by the kernel, unseen
        # by the gateway.
        log_before = len(gw.log())
        assert peer("probe", GW_IP6, str(GATEWAY_PORT), "2", PEER_IPS6[4])["result"] == "timeout"
        assert PEER_IPS6[4] not in gw.log()[log_before:]
        assert (gw.config_path.parent / "state" / "bans").read_text().startswith(f"{PEER_NET6}/64 ")

        # Lifted by hand: the line removed from the ban file and SIGHUP remove the prefix element.
        (gw.config_path.parent / "state" / "bans").write_text("")
        log_before = len(gw.log())
        os.kill(gw_proc.pid, signal.SIGHUP)
        gw.wait_log("ban removed from nftables", after=log_before)
        assert f"{PEER_NET6}/64" not in banned_prefixes()
        assert peer("probe", GW_IP6, str(GATEWAY_PORT), "2", PEER_IPS6[4])["result"] == "open"
    finally:
        code = gw_proc.stop(15) if gw_proc else 0
        prosody_proc.stop(15)
        print(tail(gw.log_path, 30), file=sys.stderr)
    assert code == 0
