"""Graceful drain (issue 16): a rolling restart of two gateways behind HAProxy loses no message.

Two `stanzawall run` instances (A on 25601, B on 25602) behind real HAProxy (TCP mode,
send-proxy-v2, `option httpchk GET /readyz` on each gateway's admin listener) in front of one
Prosody with mod_smacks (XEP-0198) and mod_offline, on 25600. A steady flow of 200 messages at
20/s goes from alice to bob, each connected through HAProxy, while both gateways are restarted
in turn: drain A (SIGUSR2), start A', drain B (`POST /api/v1/drain`), start B'. Each drain has a
1 s grace and `[drain] peer` naming HAProxy, so the sessions still open then get
`<see-other-host>127.0.0.1:25605</see-other-host>`.

What the clients do, plainly: both enable Stream Management (slixmpp's XEP-0198 plugin; the
gateway offers no resumption). On any disconnection they connect again through HAProxy (to the
host `<see-other-host/>` named, which the test checks is HAProxy). The sender keeps every message
until the server acknowledged it (`<a h/>`, slixmpp's `stanza_acked`) and sends the
unacknowledged ones again after reconnecting. The receiver does nothing special: messages the
server sent it but that it did not acknowledge are kept by Prosody (mod_smacks hands them to
mod_offline when the session ends) and delivered when it is back. The receiver counts every
copy it gets, so a duplicate fails the test as surely as a loss.

Without the drain (before issue 16's item 5) SIGUSR2 kills the gateway (exit by signal), and
a gateway that simply closes its sessions loses what was in flight or delivers it twice.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from harness.client import _XMPP, run
from harness.defaults import DOMAIN, HOST, USERS
from harness.gateway import Gateway, Listener, binary
from harness.prosody import start_prosody
from harness.raw import make_client_context
from harness.redis import HaproxyInstance

PROSODY, GW_A, GW_B, ADMIN_A, ADMIN_B, HAPROXY = 25600, 25601, 25602, 25603, 25604, 25605
COUNT, RATE = 200, 20.0
PEER = f"{HOST}:{HAPROXY}"


@pytest.fixture(scope="module")
def prosody_sm(tmp):
    inst = start_prosody(tmp / "prosody-drain", port=PROSODY, extra_modules=["smacks", "offline"])
    yield inst
    inst.stop()


def make_token(path, role: str, name: str) -> str:
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(path), "--role", role,
                          "--name", name], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def gateway(tmp, pki, prosody, name: str, port: int, admin: int) -> Gateway:
    g = Gateway(tmp / name, pki.cert, pki.key,
                [Listener("c2s", "c2s", port, prosody.port,
                          {"accept_proxy": "v2", "trusted_proxies": [HOST]})],
                extra_toml=(f'[admin]\nbind = "{HOST}:{admin}"\ntokens = "admin-tokens"\n'
                            '[audit]\npath = "audit.jsonl"\n'
                            f'[drain]\ngrace = "1s"\npeer = "{PEER}"\n'))
    g.token = make_token(g.dir / "admin-tokens", "admin", "ops")
    g.read_token = make_token(g.dir / "admin-tokens", "read", "viewer")
    return g


def readyz(admin: int) -> int:
    try:
        return urllib.request.urlopen(f"http://{HOST}:{admin}/readyz", timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def post(admin: int, path: str, token: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, admin, timeout=10)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        return r.status, json.loads(r.read().decode() or "{}")
    finally:
        conn.close()


def until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def lb_state(lb: HaproxyInstance) -> str:
    return lb.log_path.read_text(errors="replace") if lb.log_path.exists() else ""


class Roamer(_XMPP):
    """A client that stays connected through HAProxy: on every disconnection it connects again
    (after `<see-other-host/>`, to the host named, which must be HAProxy)."""

    def __init__(self, user: str, ca_file):
        super().__init__(f"{user}@{DOMAIN}/roamer", USERS[user])
        self.ssl_context = make_client_context(ca_file)
        self.ca_certs = ca_file
        self.whitespace_keepalive = False
        self.register_plugin("xep_0198")
        self.live = asyncio.Event()
        self.done = False
        self.redirects: list[str] = []
        self.conditions: list[str] = []
        self.sessions = 0
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("disconnected", self._on_disconnected)

    def start(self) -> None:
        self.connect(address=(HOST, HAPROXY), force_starttls=True, disable_starttls=False)
        self.default_domain = DOMAIN  # SNI and the certificate's name, whatever the address

    def _handle_stream_error(self, error) -> None:  # type: ignore[override]
        # slixmpp's own handler would reconnect by itself, with the redirect's host as the TLS
        # name; this one records the redirect and lets `_on_disconnected` reconnect.
        self.conditions.append(error["condition"])
        if error["condition"] == "see-other-host":
            self.redirects.append(error["see_other_host"])
        self.event("stream_error", error)

    async def _on_start(self, _event) -> None:
        self.sessions += 1
        self.send_presence()
        self.live.set()

    async def _on_disconnected(self, _reason) -> None:
        self.live.clear()
        if self.done:
            return
        await asyncio.sleep(0.2)
        if not self.done and self.transport is None:
            self.start()


class Sender(Roamer):
    def __init__(self, ca_file, to: str):
        super().__init__("alice", ca_file)
        self.to = to
        #: Messages not yet acknowledged by the server, by id, in sending order.
        self.pending: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.resent = 0
        self.add_event_handler("stanza_acked", self._on_acked)

    def _on_acked(self, stanza) -> None:
        if stanza.name == "message":
            self.pending.pop(stanza["id"], None)

    async def _on_start(self, event) -> None:
        await super()._on_start(event)
        # A new stream: what the last one left unacknowledged is sent again, in order.
        for mid, body in list(self.pending.items()):
            self.resent += 1
            self._send(mid, body)

    def _send(self, mid: str, body: str) -> None:
        m = self.make_message(mto=self.to, mbody=body, mtype="chat")
        m["id"] = mid
        m.send()

    async def flow(self) -> None:
        for i in range(COUNT):
            # Never more than 10 s without a stream: the test would fail below anyway.
            await asyncio.wait_for(self.live.wait(), 10)
            mid, body = f"m{i}", f"drain {i}"
            self.pending[mid] = body
            self._send(mid, body)
            if i % 5 == 4:
                self.plugin["xep_0198"].request_ack()
            await asyncio.sleep(1 / RATE)


class Receiver(Roamer):
    def __init__(self, ca_file):
        super().__init__("bob", ca_file)
        self.got: collections.Counter[str] = collections.Counter()
        self.add_event_handler("message", self._on_message)

    def _on_message(self, msg) -> None:
        if msg["type"] != "error" and msg["body"].startswith("drain "):
            self.got[msg["body"]] += 1


def test_rolling_restart_behind_haproxy_loses_and_duplicates_nothing(tmp, pki, prosody_sm):
    gws = {"A": gateway(tmp, pki, prosody_sm, "drain-a", GW_A, ADMIN_A),
           "B": gateway(tmp, pki, prosody_sm, "drain-b", GW_B, ADMIN_B)}
    for g in gws.values():
        g.start()
    lb = HaproxyInstance(tmp / "haproxy-drain", HAPROXY, [GW_A, GW_B], health=[ADMIN_A, ADMIN_B]).start()
    started: list[Gateway] = list(gws.values())
    events: list[str] = []
    try:
        assert until(lambda: readyz(ADMIN_A) == 200 and readyz(ADMIN_B) == 200, 10)
        time.sleep(0.6)  # HAProxy's checks (rise 2 at 200 ms) see both up

        def restart(name: str, how: str) -> None:
            """Drain one gateway, check it leaves the pool and exits 0, start its successor."""
            g = gws[name]
            admin = ADMIN_A if name == "A" else ADMIN_B
            before = len(g.log())
            if how == "signal":
                os.kill(g.proc.pid, signal.SIGUSR2)
            else:
                status, body = post(admin, "/api/v1/drain", g.token)
                assert status == 202 and body["draining"] is True, (status, body)
                # Operators only: a read token is refused.
                assert post(admin, "/api/v1/drain", g.read_token)[0] == 403
            # Not ready at once; its listener is closed; its sessions go on meanwhile.
            assert until(lambda: readyz(admin) == 503, 1.0), f"{name}: /readyz did not fail"
            text = g.wait_log("draining: not accepting", 5, after=before)
            events.append(f"{name} draining")
            text = g.wait_log("drain grace over", 5, after=before)
            assert 'condition="see-other-host"' in text, text[-2000:]
            try:
                code = g.proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                code = "still running 20 s after the drain began"
            assert code == 0, f"{name} exited with {code}: {g.log()[-3000:]}"
            events.append(f"{name} exited 0")
            successor = gateway(tmp, pki, prosody_sm, f"drain-{name.lower()}2", GW_A if name == "A" else GW_B, admin)
            successor.start()
            started.append(successor)
            gws[name] = successor
            assert until(lambda: readyz(admin) == 200, 10)
            time.sleep(0.6)  # back in HAProxy's rotation
            events.append(f"{name}' up")

        async def scenario():
            bob = Receiver(pki.ca_cert)
            alice = Sender(pki.ca_cert, f"bob@{DOMAIN}")
            bob.start()
            await asyncio.wait_for(bob.live.wait(), 15)
            alice.start()
            await asyncio.wait_for(alice.live.wait(), 15)
            flow = asyncio.ensure_future(alice.flow())
            await asyncio.sleep(1.5)
            await asyncio.to_thread(restart, "A", "signal")
            await asyncio.to_thread(restart, "B", "api")
            await asyncio.wait_for(flow, 60)
            # Everything acknowledged by the server, everything arrived; then a while longer,
            # in which a duplicate would show.
            deadline = time.monotonic() + 30
            while (alice.pending or len(bob.got) < COUNT) and time.monotonic() < deadline:
                if alice.pending and alice.live.is_set():
                    alice.plugin["xep_0198"].request_ack()
                await asyncio.sleep(0.3)
            await asyncio.sleep(2)
            alice.done = bob.done = True
            for c in (alice, bob):
                c.disconnect()
            return alice, bob

        alice, bob = run(scenario(), timeout=150)
        print(events, f"alice: {alice.sessions} sessions, {alice.resent} resent, redirects {alice.redirects};"
              f" bob: {bob.sessions} sessions, redirects {bob.redirects}")
        expected = {f"drain {i}" for i in range(COUNT)}
        missing = sorted(expected - set(bob.got), key=lambda b: int(b.split()[1]))
        twice = {b: n for b, n in bob.got.items() if n != 1}
        assert not missing, f"lost: {missing}"
        assert not twice, f"delivered more than once: {twice}"
        assert not alice.pending, f"never acknowledged: {list(alice.pending)}"
        # Both clients were moved at least once, each time to the configured peer (HAProxy).
        assert alice.sessions >= 2 and bob.sessions >= 2, (alice.sessions, bob.sessions)
        redirects = alice.redirects + bob.redirects
        assert redirects and set(redirects) == {PEER}, redirects
        # The drain through the API was audited.
        audit = [json.loads(l) for l in (started[1].dir / "audit.jsonl").read_text().splitlines()]
        assert any(r.get("event") == "admin" and r.get("action") == "drain" and r.get("result") == "ok"
                   and r.get("admin.token") == "ops" for r in audit), audit
    finally:
        lb.stop()
        for g in started:
            if g.running():
                g.terminate()
