"""stanzawall in front of real Prosody and ejabberd, driven by real clients.

Every test connects through the gateway (fixtures ``gateway`` and
``gateway_ejabberd`` in conftest.py); the servers' own ports are only used to
prove a precondition (e.g. that ejabberd really offers SCRAM-SHA-1-PLUS).
"""

from __future__ import annotations

import asyncio

import pytest

from harness.ca import cert_sha256, fingerprint_der
from harness.client import Client, ConnectFailed, run
from harness.defaults import GATEWAY_SCRATCH_PORT, HOST
from harness.gateway import Gateway, Listener
from harness.raw import RawStream, parse_stream_error
from harness.sendxmpp import send_message


def via(gw: Gateway, srv, user: str, pki, listener: str = "c2s", **kw) -> Client:
    return Client(srv.jid(user), srv.users[user], HOST, gw.port(listener),
                  direct_tls=gw.listeners[listener].kind == "c2s-tls", ca_file=pki.ca_cert, **kw)


# -- login and certificates ------------------------------------------------------

@pytest.mark.parametrize("listener", ["c2s", "c2s-direct"])
def test_login_with_verified_certificate(gateway, prosody, pki, listener):
    async def go():
        async with via(gateway, prosody, "alice", pki, listener) as alice:
            assert alice.jid.startswith("alice@example.test/")
            assert alice.tls_version in ("TLSv1.2", "TLSv1.3")
            # The client verified the gateway's certificate against the test CA.
            assert fingerprint_der(alice.peer_cert_der) == cert_sha256(pki.cert)
            # Prosody behind offers no STARTTLS; the gateway never relays it either.
            assert alice.sasl_mechanisms and "PLAIN" in alice.sasl_mechanisms
            roster = await alice.get_roster()
            assert isinstance(roster, dict)
    run(go())


def test_wrong_password_is_refused_by_the_server(gateway, prosody, pki):
    async def go():
        c = Client(prosody.jid("alice"), "wrong", HOST, gateway.port("c2s"), ca_file=pki.ca_cert)
        with pytest.raises(ConnectFailed) as e:
            await c.connect()
        assert e.value.reason == "auth failed"
    run(go())


# -- stanzas ----------------------------------------------------------------------

def test_presence_subscription_and_roster(gateway, prosody, pki):
    async def go():
        async with via(gateway, prosody, "carol", pki) as carol, \
                via(gateway, prosody, "dave", pki, "c2s-direct", auto_authorize=True) as dave:
            # Only "interested resources" (RFC 6121 §2.1.6: those that fetched the roster) get
            # subscription state changes pushed, so both fetch it first, as real clients do.
            assert "dave@example.test" not in await carol.get_roster()
            await dave.get_roster()
            await carol.subscribe(dave.jid.split("/")[0])
            roster = await carol.get_roster()
            assert roster["dave@example.test"]["subscription"] in ("to", "both")
            # dave now receives carol's presence and sees carol's subscription in his roster.
            roster = await dave.get_roster()
            assert roster["carol@example.test"]["subscription"] in ("from", "both")
    run(go())


def test_200_messages_each_way_arrive_complete_and_in_order(gateway, prosody, pki):
    async def go():
        async with via(gateway, prosody, "alice", pki) as alice, \
                via(gateway, prosody, "bob", pki, "c2s-direct") as bob:
            bodies = [f"msg {i} <&> caf\u00e9 \U0001F600 {'x' * (i % 50)}" for i in range(200)]
            for b in bodies:
                alice.send_message(bob.jid, b)
            got = [await bob.next_message(timeout=15) for _ in bodies]
            assert [m.body for m in got] == bodies
            # Every stanza carries alice's bound JID, stamped or checked by the gateway.
            assert {m.from_ for m in got} == {alice.jid}
            for b in bodies[:20]:
                bob.send_message(alice.jid, "re: " + b)
            back = [await alice.next_message(timeout=15) for _ in range(20)]
            assert [m.body for m in back] == ["re: " + b for b in bodies[:20]]
    run(go(), timeout=120)


def test_go_sendxmpp_through_the_gateway(gateway, prosody, pki):
    async def go():
        async with via(gateway, prosody, "bob", pki) as bob:
            result = await asyncio.to_thread(
                send_message, "alice", prosody.users["alice"], HOST, gateway.port("c2s"),
                "bob@example.test", "hello from go-sendxmpp", ca_file=pki.ca_cert)
            assert result.ok, f"go-sendxmpp failed: {result.stderr}"
            msg = await bob.next_message(timeout=15)
            assert msg.body.strip() == "hello from go-sendxmpp"
            assert msg.from_.startswith("alice@example.test/")
    run(go())


# -- hostile input ------------------------------------------------------------------

def raw_login(gw, srv, pki, user="alice") -> RawStream:
    s = RawStream.open(HOST, gw.port("c2s"), ca_file=pki.ca_cert)  # header + STARTTLS
    s.login(user, srv.users[user])
    return s


@pytest.mark.parametrize("payload, condition", [
    ("<message to='bob@example.test'><body>&xxe;</body></message>", "restricted-xml"),
    ("<!DOCTYPE m [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><message/>", "restricted-xml"),
    ("<message to='bob@example.test'><!-- c --><body>x</body></message>", "restricted-xml"),
    ("<message to='bob@example.test'><body>unclosed</message>", "not-well-formed"),
    ("<message to='bob@example.test' a='1' a='2'/>", "not-well-formed"),
    ("<message to='bob@example.test'><x:y/></message>", "not-well-formed"),
    ("<message from='bob@example.test/spoof' to='carol@example.test'><body>x</body></message>", "invalid-from"),
    (f"<message to='bob@example.test'><body>{'A' * 300_000}</body></message>", "policy-violation"),
])
def test_malformed_stanza_gets_stream_error_and_never_reaches_the_server(gateway, prosody, pki, payload, condition):
    async def go():
        async with via(gateway, prosody, "bob", pki) as bob:
            s = await asyncio.to_thread(raw_login, gateway, prosody, pki)
            marker = "delivered-before-the-bad-one"
            # One accepted stanza, then the bad one in the same write.
            s.send(f"<message to='{bob.jid}'><body>{marker}</body></message>{payload}")
            text = await asyncio.to_thread(s.read_until_closed, 10)
            assert parse_stream_error(text) == condition, text
            first = await bob.next_message(timeout=10)
            assert first.body == marker
            # Prosody would answer &xxe; with not-well-formed; restricted-xml is the gateway's.
            # Nothing of the bad stanza reaches bob.
            with pytest.raises(asyncio.TimeoutError):
                await bob.next_message(timeout=1.5)
    run(go())


# -- ejabberd -----------------------------------------------------------------------

def test_ejabberd_plus_mechanisms_are_not_relayed(gateway_ejabberd, ejabberd, pki):
    async def go():
        # Precondition: ejabberd itself offers channel binding over TLS.
        direct = await asyncio.to_thread(RawStream.open, HOST, ejabberd.tls_port, ca_file=pki.ca_cert)
        assert "SCRAM-SHA-1-PLUS" in direct.mechanisms
        direct.close()
        async with via(gateway_ejabberd, ejabberd, "alice", pki, "ejabberd") as alice, \
                via(gateway_ejabberd, ejabberd, "bob", pki, "ejabberd") as bob:
            assert alice.sasl_mechanisms, "no SASL mechanisms relayed"
            assert not [m for m in alice.sasl_mechanisms if m.endswith("-PLUS")], alice.sasl_mechanisms
            assert alice.sasl_mechanism_used in ("SCRAM-SHA-1", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
            alice.send_message(bob.jid, "via ejabberd")
            assert (await bob.next_message(timeout=10)).body == "via ejabberd"
    run(go())


def test_proxy_protocol_v2_to_ejabberd(gateway_ejabberd, ejabberd, pki):
    async def go():
        # ejabberd's proxy port drops connections without a PROXY header (harness smoke test),
        # so a login here proves the gateway sent a valid one.
        async with via(gateway_ejabberd, ejabberd, "carol", pki, "ejabberd-proxy") as carol:
            assert carol.jid.startswith("carol@example.test/")
            roster = await carol.get_roster()
            assert isinstance(roster, dict)
    run(go())


# -- reload and shutdown -------------------------------------------------------------

def scratch_gateway(tmp, pki, prosody, name, offset) -> Gateway:
    return Gateway(tmp / name, pki.cert, pki.key, [
        Listener("c2s", "c2s", GATEWAY_SCRATCH_PORT + offset, prosody.port),
    ])


def test_sighup_reloads_certificate_and_keeps_sessions(tmp, pki, prosody):
    gw = scratch_gateway(tmp, pki, prosody, "gw-reload", 0).start()
    try:
        async def go():
            async with via(gw, prosody, "alice", pki) as alice, via(gw, prosody, "bob", pki) as bob:
                assert fingerprint_der(alice.peer_cert_der) == cert_sha256(pki.cert)
                # An invalid config is refused and the old one keeps serving.
                mark = len(gw.log())
                gw.write_config(gw.config_text() + "\n[limits]\nbogus = 1\n")
                gw.reload()
                gw.wait_log("reload failed", after=mark)
                assert "unknown field `bogus`" in gw.log()[mark:]
                # Now a new certificate.
                gw.install_certificate(pki.cert2, pki.key2)
                gw.write_config()
                mark = len(gw.log())
                gw.reload()
                gw.wait_log("configuration reloaded", after=mark)
                async with via(gw, prosody, "carol", pki) as carol:
                    assert fingerprint_der(carol.peer_cert_der) == cert_sha256(pki.cert2)
                # The sessions opened before the reload still work both ways.
                alice.send_message(bob.jid, "after reload")
                assert (await bob.next_message(timeout=10)).body == "after reload"
                bob.send_message(alice.jid, "still here")
                assert (await alice.next_message(timeout=10)).body == "still here"
        run(go())
    finally:
        assert gw.terminate() == 0


def test_sigterm_sends_system_shutdown_and_exits_zero(tmp, pki, prosody):
    gw = scratch_gateway(tmp, pki, prosody, "gw-shutdown", 1).start()
    try:
        async def go():
            async with via(gw, prosody, "alice", pki) as alice, via(gw, prosody, "bob", pki) as bob:
                # terminate() SIGKILLs after the timeout, which would make the code -9: exit
                # code 0 means the gateway stopped by itself within a few seconds.
                code = await asyncio.to_thread(gw.terminate, 8.0)
                assert code == 0, f"exit code {code}"
                assert await alice.wait_stream_error(timeout=5) == "system-shutdown"
                assert await bob.wait_stream_error(timeout=5) == "system-shutdown"
        run(go())
        log = gw.log()
        assert log.count("reason=system shutdown") >= 2, log
    finally:
        gw.terminate()


def test_check_reports_file_line_and_key(tmp, pki, prosody):
    gw = scratch_gateway(tmp, pki, prosody, "gw-check", 2)
    ok = gw.check()
    assert ok.returncode == 0, ok.stderr
    text = gw.config_text().replace('kind = "c2s"', 'kind = "c2s"\nbakend_tls = "tls"')
    gw.write_config(text)
    bad = gw.check()
    line = text.splitlines().index('bakend_tls = "tls"') + 1
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"{gw.config_path}:{line}: listener[0].bakend_tls: unknown field"), bad.stderr


def test_reload_renaming_a_listener_keeps_its_port(tmp, pki, prosody):
    gw = scratch_gateway(tmp, pki, prosody, "gw-rename", 3).start()
    try:
        port = gw.port("c2s")
        for i in range(5):
            # Same address under a new name: the old listener must release it before the new
            # one binds, every time.
            (name,) = gw.listeners
            gw.listeners = {f"c2s-{i}": Listener(f"c2s-{i}", "c2s", port, prosody.port)}
            mark = len(gw.log())
            gw.write_config()
            gw.reload()
            gw.wait_log("configuration reloaded", after=mark)
            assert "cannot listen" not in gw.log()[mark:], gw.log()[mark:]
            s = RawStream.open(HOST, port, ca_file=pki.ca_cert)
            assert "SCRAM-SHA-1" in s.mechanisms
            s.close()
    finally:
        assert gw.terminate() == 0
