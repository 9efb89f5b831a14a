"""Several gateways sharing state in Redis (issue 16): two `stanzawall run` instances in front of
one Prosody, a real redis-server on 127.0.0.1:26379, HAProxy in TCP mode with PROXY v2.

- a ban made by failures counted across both gateways refuses the source at both;
- a per-sender rate limit holds across both (a client's two resources, one on each gateway);
- HAProxy round-robin with send-proxy-v2: the gateways see the real client address (the ban
  hits the client, not the balancer); a header from an untrusted address is refused;
- a sender's fan-out limit holds when its messages alternate between the gateways, and a
  spam wave seen half on each gateway is detected (both counted in Redis);
- a list edit through one gateway's admin API is made in the other's list file and enforced
  there within a second; a ban made through the API reaches the other gateway too; audit
  records of both carry sequence numbers from one counter in Redis;
- Redis stopped mid-test: rates fall back as configured ("local" on A, "closed" on B), a gateway
  with bans_on_error = "closed" refuses connections; Redis back: state is shared again.

The flooder uses its own loopback address (127.0.0.3), as in test_network_layer.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import time
import urllib.request

import pytest

from harness.client import Client, run
from harness.defaults import HOST
from harness.gateway import Gateway, Listener, binary
from harness.raw import RawStream, stream_header
from harness.redis import HaproxyInstance, RedisInstance

GW_A, GW_B, ADMIN_A, ADMIN_B, HAPROXY = 25540, 25541, 25542, 25543, 25545
FLOODER = "127.0.0.3"

POLICY = """
[rate.per_sender]
rate  = "30/minute"
burst = 10
key   = "from.bare"

[[rule]]
name   = "flood"
chain  = "c2s-in"
when   = { kind = "message", from = "carol@example.test", rate = "per_sender" }
action = "bounce"
error  = "resource-constraint"
"""


def store_toml(redis: RedisInstance, **extra: str) -> str:
    lines = ["[store]", 'backend = "redis"', f'url = "{redis.url}"',
             # Generous for a shared CI machine: the test is about sharing, not speed.
             'timeout = "500ms"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def gateway(tmp, pki, prosody, name: str, port: int, admin: int, redis: RedisInstance, *,
            ban: dict | None = None, proxied: bool = False, policy: str = "", tokens: bool = False,
            **store: str) -> Gateway:
    extra = {"accept_proxy": "v2", "trusted_proxies": [HOST]} if proxied else {}
    network = {"connection_rate_per_ip": "off", "max_connections_per_ip": 100_000,
               "ban": ban or {"auth_failures": 1000}}
    return Gateway(tmp / name, pki.cert, pki.key, [Listener("c2s", "c2s", port, prosody.port, extra)],
                   network=network,
                   extra_toml=(f'[admin]\nbind = "{HOST}:{admin}"\n'
                               + ('tokens = "admin-tokens"\n' if tokens else "")
                               + store_toml(redis, **store) + POLICY + policy))


@pytest.fixture
def redis(tmp):
    r = RedisInstance(tmp / "redis").start()
    yield r
    r.stop()


def proxy_v2_header(client: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A well-formed PROXY v2 header (TCP over IPv4), as a forger would send it."""
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    body = (socket.inet_aton(client[0]) + socket.inet_aton(dest[0])
            + client[1].to_bytes(2, "big") + dest[1].to_bytes(2, "big"))
    return sig + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


def connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    return s


def refused(source: str, port: int, header: bytes = b"") -> bool:
    """True if the gateway closes a connection from `source` without answering a stream header."""
    s = connect_from(source, port)
    try:
        s.sendall(header + stream_header())
        return s.recv(1) == b""
    except OSError:
        return True
    finally:
        s.close()


def until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def fail_auth(source: str, port: int, pki, *, header: bytes = b"", bans: bool = False) -> str:
    """One failed SASL PLAIN from `source`; returns what the gateway sent (with `bans`, until it
    closed the stream)."""
    s = connect_from(source, port)
    if header:
        s.sendall(header)
    rs = RawStream(s, ca_file=pki.ca_cert)
    try:
        rs.start_stream()
        rs.starttls()
        try:
            rs.auth_plain("alice", "wrong")
        except Exception as e:  # RawStreamError: <failure/>, or the close after the ban
            if bans:
                rs.read_until_closed(5)
            return str(e) + rs.received
        return rs.received
    finally:
        rs.close()


def metric(admin: int, name: str) -> str:
    text = urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5).read().decode()
    return "\n".join(l for l in text.splitlines() if l.startswith(name))


async def burst(senders: list[Client], dave: Client, count: int, tag: str) -> tuple[list[str], list[str]]:
    """`count` messages from carol to dave, alternating over `senders` (one per gateway); the
    bodies dave received and the ids bounced back to carol, after everything settled."""
    for i in range(count):
        c = senders[i % len(senders)]
        m = c.xmpp.make_message(mto=dave.jid.split("/")[0], mbody=f"{tag} {i}", mtype="chat")
        m["id"] = f"{tag}{i}"
        m.send()
        await asyncio.sleep(0.02)
    delivered, bounced = [], []
    deadline = time.monotonic() + 10
    while len(delivered) + len(bounced) < count and time.monotonic() < deadline:
        for c in senders:
            while not c.messages.empty():
                m = c.messages.get_nowait()
                if m.type == "error" and m.id.startswith(tag):
                    assert "resource-constraint" in m.xml, m.xml
                    bounced.append(m.id)
        while not dave.messages.empty():
            m = dave.messages.get_nowait()
            if m.body.startswith(tag):
                delivered.append(m.body)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # nothing more may arrive
    delivered += [m.body for m in (dave.messages.get_nowait() for _ in range(dave.messages.qsize()))
                  if m.body.startswith(tag)]
    return delivered, bounced


def clients(prosody, pki, ports: list[int]) -> tuple[list[Client], Client]:
    carols = [Client(f"{prosody.jid('carol')}/gw{i}", prosody.users["carol"], HOST, p, ca_file=pki.ca_cert)
              for i, p in enumerate(ports)]
    dave = Client(prosody.jid("dave"), prosody.users["dave"], HOST, ports[0], ca_file=pki.ca_cert)
    return carols, dave


def test_a_ban_counted_on_both_gateways_refuses_the_source_at_both(tmp, pki, prosody, redis):
    ban = {"auth_failures": 3, "window": "10m", "duration": "1h"}
    a = gateway(tmp, pki, prosody, "redis-ban-a", GW_A, ADMIN_A, redis, ban=ban).start()
    b = gateway(tmp, pki, prosody, "redis-ban-b", GW_B, ADMIN_B, redis, ban=ban).start()
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")
        # Two failures at A, the third at B: only a shared count reaches the threshold.
        fail_auth(FLOODER, GW_A, pki)
        fail_auth(FLOODER, GW_A, pki)
        assert not refused(FLOODER, GW_B) and not refused(FLOODER, GW_A), "two failures ban nobody"
        third = fail_auth(FLOODER, GW_B, pki, bans=True)
        assert "too many authentication failures" in third, third
        banned_at = time.monotonic()
        assert until(lambda: refused(FLOODER, GW_A), 1.0), "the ban made at B refuses the source at A within a second"
        print(f"ban reached A after {time.monotonic() - banned_at:.3f}s")
        assert refused(FLOODER, GW_B)
        assert not refused(HOST, GW_A) and not refused(HOST, GW_B), "nobody else is banned"
        assert f"{FLOODER}/32" in redis.cli("ZRANGE", "stanzawall:bans", "0", "-1")
        assert "ban received from the shared store" in a.log()
        # Both keep it in their ban files (a restart without Redis still refuses the source).
        assert until(lambda: (a.dir / "state" / "bans").exists()
                     and (a.dir / "state" / "bans").read_text().startswith(f"{FLOODER} "), 2.0)
        assert 'stanzawall_store_up 1' in metric(ADMIN_A, "stanzawall_store_up")
    finally:
        assert a.terminate() == 0
        assert b.terminate() == 0


def test_a_per_sender_rate_limit_holds_across_both_gateways(tmp, pki, prosody, redis):
    a = gateway(tmp, pki, prosody, "redis-rate-a", GW_A, ADMIN_A, redis).start()
    b = gateway(tmp, pki, prosody, "redis-rate-b", GW_B, ADMIN_B, redis).start()
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")
        async def scenario():
            carols, dave = clients(prosody, pki, [GW_A, GW_B])
            async with carols[0], carols[1], dave:
                return await burst(carols, dave, 16, "shared")

        delivered, bounced = run(scenario())
        # burst 10 at 30/minute, one bucket for carol in Redis: 10 pass whichever gateway
        # carried them (each gateway alone would have passed 8 of its 8).
        assert len(delivered) == 10, (delivered, bounced)
        assert len(bounced) == 6, (delivered, bounced)
        assert {i % 2 for i in (int(x[len("shared"):]) for x in bounced)} == {0, 1}, \
            f"both gateways bounced: {bounced}"
    finally:
        assert a.terminate() == 0
        assert b.terminate() == 0


def test_haproxy_round_robin_with_proxy_v2_sees_the_client(tmp, pki, prosody, redis):
    ban = {"auth_failures": 3, "window": "10m", "duration": "1h"}
    a = gateway(tmp, pki, prosody, "redis-lb-a", GW_A, ADMIN_A, redis, ban=ban, proxied=True).start()
    b = gateway(tmp, pki, prosody, "redis-lb-b", GW_B, ADMIN_B, redis, ban=ban, proxied=True).start()
    lb = HaproxyInstance(tmp / "haproxy", HAPROXY, [GW_A, GW_B]).start()
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")
        # Logins through the balancer land on both gateways, each seeing the client's address.
        for _ in range(4):
            rs = RawStream(connect_from(HOST, HAPROXY), ca_file=pki.ca_cert)
            rs.start_stream()
            rs.starttls()
            rs.login("alice", prosody.users["alice"])
            rs.close()
        for gw in (a, b):
            assert until(lambda gw=gw: "client.ip=127.0.0.1" in gw.log(), 3.0), f"round robin reached {gw.dir.name}"
        # Three failures from 127.0.0.3 through the balancer (spread over both gateways) ban
        # 127.0.0.3, not the balancer (127.0.0.1, whose other clients still get in).
        for _ in range(3):
            fail_auth(FLOODER, HAPROXY, pki)
        assert until(lambda: all(refused(FLOODER, HAPROXY) for _ in range(2)), 2.0), \
            "the client behind the balancer is banned at both gateways"
        assert not refused(HOST, HAPROXY), "the balancer's address is not banned"
        assert f"{FLOODER}/32" in redis.cli("ZRANGE", "stanzawall:bans", "0", "-1")
        banned = [l for l in a.log().splitlines() + b.log().splitlines()
                  if "source banned after repeated authentication failures" in l]
        assert len(banned) == 1 and f"client.ip={FLOODER}" in banned[0], banned
        # Straight to a gateway: an untrusted address is refused even with a well-formed header
        # naming someone else; a trusted one without a header is refused too.
        forged = proxy_v2_header(("192.0.2.50", 4000), (HOST, GW_A))
        assert refused(FLOODER, GW_A, forged)
        assert "untrusted-proxy" in a.log()
        assert refused(HOST, GW_A, b"<?xml version='1.0'?>" + b" " * 40)
        assert until(lambda: "bad PROXY header" in a.log(), 2.0)
        assert 'reason="untrusted-proxy"' in metric(ADMIN_A, "stanzawall_connections_refused")
    finally:
        lb.stop()
        assert a.terminate() == 0
        assert b.terminate() == 0


def test_redis_stopped_mid_test(tmp, pki, prosody, redis):
    # A degrades to its own buckets; B refuses rate-limited stanzas and new connections.
    a = gateway(tmp, pki, prosody, "redis-down-a", GW_A, ADMIN_A, redis, rates_on_error="local").start()
    b = gateway(tmp, pki, prosody, "redis-down-b", GW_B, ADMIN_B, redis,
                rates_on_error="closed", bans_on_error="closed").start()
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")
        async def scenario():
            carols, dave = clients(prosody, pki, [GW_A, GW_B])
            async with carols[0], carols[1], dave:
                shared = await burst([carols[0]], dave, 4, "before")
                redis.stop()
                # Redis gone mid-session: A counts alone (a fresh local bucket: 10 of 12 pass),
                # B bounces every rate-limited stanza; nobody panics, sessions stay up.
                local = await burst([carols[0]], dave, 12, "down-a")
                closed = await burst([carols[1]], dave, 3, "down-b")
                return shared, local, closed

        (shared, local, closed) = run(scenario(), timeout=120)
        assert len(shared[0]) == 4, shared
        assert (len(local[0]), len(local[1])) == (10, 2), local
        assert (len(closed[0]), len(closed[1])) == (0, 3), closed
        assert a.log().count("shared store unavailable") == 1, "one log line a minute, not one per stanza"
        assert 'stanzawall_store_up 0' in metric(ADMIN_A, "stanzawall_store_up")
        fallbacks = metric(ADMIN_A, 'stanzawall_store_fallbacks_total{kind="rates"}')
        assert int(fallbacks.split()[-1]) >= 12, fallbacks
        assert refused(HOST, GW_B), "bans_on_error = closed: no admission without the store"
        assert not refused(HOST, GW_A), "bans_on_error = local: A still admits"
        # Redis back (empty: no persistence): both reconnect and share again.
        redis.start()
        assert until(lambda: a.log().count("shared store connected") >= 2 and b.log().count("shared store connected") >= 2, 15.0), \
            a.log()[-2000:]
        assert until(lambda: not refused(HOST, GW_B), 3.0), "B admits again"
        ban = fail_auth(FLOODER, GW_A, pki)
        assert "failure" in ban, ban
        assert "fail:" in redis.cli("KEYS", "stanzawall:fail:*"), "failures are counted in Redis again"
        assert a.proc.running() and b.proc.running()
    finally:
        assert a.terminate() == 0
        assert b.terminate() == 0


# The wave rule first: carol's copy of the wave is refused as a wave, not as her fifth recipient.
ANTISPAM = """
[[rule]]
name   = "spam-waves"
chain  = "c2s-in"
when   = { kind = "message", wave = { senders = 3, window = "30m" } }
action = "bounce"
text   = "Part of a spam wave"

[[rule]]
name   = "fan-out"
chain  = "c2s-in"
when   = { kind = "message", from = "carol@example.test", fanout = { recipients = 4, window = "10m" } }
action = "bounce"
text   = "Too many recipients"
"""

WAVE = [  # (sender, gateway index, text): variants of one text, as in test_antispam.py
    ("alice", 0, "Hello Dave! Your parcel #4471 is waiting at the depot. Pay the customs fee at "
                 "https://parcel-depot.example/pay/4471 today"),
    ("bob", 1, "Hello  Marta!  Your parcel #88 is waiting at the depot.  Pay the customs fee at "
               "https://parcel-depot.example/pay/x88 today"),
    ("carol", 0, "Hello Sven! Your parcel #31337 is w\u0430iting at the depot. Pay the customs fee at "
                 "http://www.parcel-depot.example/pay/31337?src=sms today"),
    ("dave", 1, "Hello Bob! Your parcel #5 is waiting at the depot. Pay the customs fee at "
                "https://parcel-depot.example/pay/5 today"),
]


async def refusals(c: Client, text: str, ids: set[str], settle: float = 1.5) -> set[str]:
    """The ids among `ids` the gateway bounced to `c` with `text` (anything else, such as the
    server's own errors for unknown recipients, is ignored)."""
    out: set[str] = set()
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        while not c.messages.empty():
            m = c.messages.get_nowait()
            if m.type == "error" and m.id in ids and text in m.xml:
                out.add(m.id)
        await asyncio.sleep(0.05)
    return out


def test_fanout_and_waves_are_counted_across_both_gateways(tmp, pki, prosody, redis):
    a = gateway(tmp, pki, prosody, "redis-spam-a", GW_A, ADMIN_A, redis, policy=ANTISPAM,
                fanout_on_error="local").start()
    b = gateway(tmp, pki, prosody, "redis-spam-b", GW_B, ADMIN_B, redis, policy=ANTISPAM,
                fanout_on_error="closed").start()
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")

        async def scenario():
            ports = [GW_A, GW_B]
            carols, dave = clients(prosody, pki, ports)
            others = {u: Client(f"{prosody.jid(u)}/spam", prosody.users[u], HOST, ports[i], ca_file=pki.ca_cert)
                      for u, i in (("alice", 0), ("bob", 1))}
            async with carols[0], carols[1], dave, others["alice"], others["bob"]:
                # Fan-out: carol writes to six new recipients, alternating gateways; the limit
                # is four distinct ones, so the fifth (at A) and the sixth (at B) are refused:
                # each gateway alone has seen only three.
                for i in range(6):
                    c = carols[i % 2]
                    m = c.xmpp.make_message(mto=f"nobody{i}@{prosody.domain}", mbody="a short note", mtype="chat")
                    m["id"] = f"f{i}"
                    m.send()
                    await asyncio.sleep(0.1)
                fan = set()
                for c in carols:
                    fan |= await refusals(c, "Too many recipients", {f"f{i}" for i in range(6)})
                # A wave: three senders, two at A and one at B; the third copy is refused.
                senders = {"alice": others["alice"], "bob": others["bob"], "carol": carols[0], "dave": dave}
                for i, (who, _, text) in enumerate(WAVE):
                    to = "bob" if who == "dave" else "dave"
                    m = senders[who].xmpp.make_message(mto=f"{to}@{prosody.domain}", mbody=text, mtype="chat")
                    m["id"] = f"w{i}"
                    m.send()
                    await asyncio.sleep(0.1)
                wave = set()
                for c in senders.values():
                    wave |= await refusals(c, "Part of a spam wave", {f"w{i}" for i in range(len(WAVE))}, 0.5)
                # What Redis holds: digests only, every key with a TTL.
                keys = redis.cli("--scan", "--pattern", "stanzawall:*").split()
                ttls = {k: int(redis.cli("PTTL", k)) for k in keys if ":fan" in k or ":w" in k}
                # Redis stopped: A (fanout_on_error = "local") counts in its own, empty, table;
                # B ("closed") refuses every fan-out-counted message.
                redis.stop()
                for i, c in enumerate(carols):
                    m = c.xmpp.make_message(mto=f"later{i}@{prosody.domain}", mbody="a short note", mtype="chat")
                    m["id"] = f"d{i}"
                    m.send()
                down = set()
                for c in carols:
                    down |= await refusals(c, "Too many recipients", {"d0", "d1"})
                return fan, wave, down, keys, ttls

        fan, wave, down, keys, ttls = run(scenario(), timeout=120)
        assert fan == {"f4", "f5"}, f"the shared fan-out count refuses the 5th and 6th recipients: {fan}"
        assert wave == {"w2", "w3"}, f"the wave is detected at its third sender and stays flagged: {wave}"
        assert any(k.startswith("stanzawall:fan:") for k in keys) and any(k.startswith("stanzawall:wb:") for k in keys), keys
        assert not any("@" in k or "example" in k for k in keys), f"no raw JID in a key: {keys}"
        assert ttls and all(t > 0 for t in ttls.values()), f"every fan-out and wave key expires: {ttls}"
        assert down == {"d1"}, f"store down: A local (passes), B closed (refuses): {down}"
        assert "store.kind=\"fanout\"" in b.log() or "store.kind=fanout" in b.log(), b.log()[-2000:]
        fallbacks = metric(ADMIN_B, 'stanzawall_store_fallbacks_total{kind="fanout"}')
        assert int(fallbacks.split()[-1]) >= 1, fallbacks
        assert a.proc.running() and b.proc.running()
    finally:
        for g in (a, b):
            code = g.terminate()
            assert code == 0, f"{g.dir.name} exited with {code}: {g.log()[-3000:]}"


LISTS = """
[audit]
path = "audit.jsonl"

[list.bad_urls]
file = "lists/bad-urls.txt"

[[rule]]
name   = "bad-links"
chain  = "c2s-in"
when   = { kind = "message", url_in = "bad_urls" }
action = "bounce"
text   = "Link blocked by policy"
"""


def admin_token(gw: Gateway) -> str:
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(gw.dir / "admin-tokens"), "--role", "admin",
                          "--name", "ops"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def api(admin: int, method: str, path: str, token: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, admin, timeout=15)
    try:
        conn.request(method, path, body=json.dumps(body),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read().decode() or "{}")
    finally:
        conn.close()


def test_list_edits_and_api_bans_reach_the_other_gateway(tmp, pki, prosody, redis):
    gws = []
    for name, port, admin in (("redis-lists-a", GW_A, ADMIN_A), ("redis-lists-b", GW_B, ADMIN_B)):
        g = gateway(tmp, pki, prosody, name, port, admin, redis, policy=LISTS, tokens=True)
        (g.dir / "lists").mkdir(exist_ok=True)
        (g.dir / "lists" / "bad-urls.txt").write_text("# links doing the rounds\n")
        g.token = admin_token(g)
        gws.append(g.start())
    a, b = gws
    try:
        assert a.wait_log("shared store connected") and b.wait_log("shared store connected")
        status, got = api(ADMIN_A, "POST", "/api/v1/lists/bad_urls/entries", a.token, {"entry": "evil.example"})
        assert status == 200 and got["changed"] and got["published"] == "ok", got
        edited = time.monotonic()
        b_file = b.dir / "lists" / "bad-urls.txt"
        assert until(lambda: "evil.example" in b_file.read_text().splitlines(), 1.0), \
            "the edit made at A is in B's list file within a second"
        b.wait_log("list edit received from the shared store", 2)
        print(f"list edit reached B after {time.monotonic() - edited:.3f}s")
        assert b_file.read_text() == "# links doing the rounds\nevil.example\n", "B's other lines are kept"

        async def send_link(port: int, tag: str) -> bool:
            """True if carol's message with the listed link is refused at the gateway on `port`."""
            c = Client(f"{prosody.jid('carol')}/{tag}", prosody.users["carol"], HOST, port, ca_file=pki.ca_cert)
            async with c:
                m = c.xmpp.make_message(mto=prosody.jid("dave"), mbody="see https://evil.example/x", mtype="chat")
                m["id"] = tag
                m.send()
                return tag in await refusals(c, "Link blocked by policy", {tag}, 2.0)

        assert run(send_link(GW_B, "atb")), "B enforces the entry added at A"
        # And back: removed at B, gone from A's file and no longer enforced there.
        status, got = api(ADMIN_B, "DELETE", "/api/v1/lists/bad_urls/entries", b.token, {"entry": "evil.example"})
        assert status == 200 and got["changed"], got
        a_file = a.dir / "lists" / "bad-urls.txt"
        assert until(lambda: "evil.example" not in a_file.read_text(), 1.0)
        assert until(lambda: "list edit received from the shared store" in a.log(), 2.0)
        assert not run(send_link(GW_A, "bta")), "A no longer refuses the link"
        # Audit records of both gateways carry numbers from one counter in Redis: the edit made
        # at A comes before the one made at B, whatever the two clocks say.
        def audit(g: Gateway) -> list[dict]:
            path = g.dir / "audit.jsonl"
            return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        assert until(lambda: any(r.get("action") == "list-remove" for r in audit(b)), 2.0)
        added = next(r for r in audit(a) if r.get("action") == "list-add")
        removed = next(r for r in audit(b) if r.get("action") == "list-remove")
        assert isinstance(added.get("seq"), int) and isinstance(removed.get("seq"), int), (added, removed)
        assert removed["seq"] > added["seq"], (added, removed)
        assert added["gateway"] != removed["gateway"], (added, removed)
        assert int(redis.cli("GET", "stanzawall:audit:seq")) >= removed["seq"]
        # A ban made through A's API refuses the source at B within a second (its guard and its
        # ban file; the nftables set follows the same path as a ban made by failures).
        status, got = api(ADMIN_A, "POST", "/api/v1/bans", a.token, {"address": FLOODER})
        assert status == 201, got
        assert until(lambda: refused(FLOODER, GW_B), 1.0), "the API ban made at A refuses the source at B"
        assert until(lambda: (b.dir / "state" / "bans").exists()
                     and (b.dir / "state" / "bans").read_text().startswith(f"{FLOODER} "), 2.0)
    finally:
        for g in gws:
            code = g.terminate()
            assert code == 0, f"{g.dir.name} exited with {code}: {g.log()[-3000:]}"
