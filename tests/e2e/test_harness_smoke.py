"""Smoke tests of the e2e harness itself, WITHOUT the gateway: real Prosody,
real ejabberd, real slixmpp, real go-sendxmpp, talking to each other
directly on 127.0.0.1.

Plaintext logins to the private Prosody use ``starttls=False``: slixmpp
then authenticates with SCRAM-SHA-1 (allowed unencrypted by slixmpp's
default ``unencrypted_scram``); the PLAIN test additionally sets
``allow_plain_unencrypted=True`` (slixmpp's ``unencrypted_plain``).
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from harness.ca import cert_serial, cert_sha256, fingerprint_der, make_pki
from harness.client import Client, ConnectFailed, run
from harness.defaults import USERS
from harness.prosody import start_prosody
from harness.raw import (RawStream, RawStreamError, parse_mechanisms, parse_stream_error,
                         proxy_v2_header)
from harness.sendxmpp import send_message


def plain_client(srv, user, port=None, **kw) -> Client:
    return Client(srv.jid(user), srv.users[user], srv.host, port or srv.port,
                  starttls=False, **kw)


def tls_client(srv, user, pki, port=None, **kw) -> Client:
    return Client(srv.jid(user), srv.users[user], srv.host, port or srv.port,
                  ca_file=pki.ca_cert, **kw)


# -- PKI -----------------------------------------------------------------------

def test_pki_leaves_verify_and_differ(pki):
    for crt in (pki.cert, pki.cert2, pki.server_cert):
        out = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-purpose", "sslserver",
             "-CAfile", str(pki.ca_cert), str(crt)],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
    assert cert_sha256(pki.cert) != cert_sha256(pki.cert2)
    assert cert_serial(pki.cert) != cert_serial(pki.cert2)


# -- Prosody, plaintext backend ------------------------------------------------

def test_prosody_plain_message_alice_to_bob(prosody):
    async def scenario():
        async with plain_client(prosody, "bob") as bob, \
                plain_client(prosody, "alice") as alice:
            assert not alice.offered_starttls
            assert {"SCRAM-SHA-1", "PLAIN"} <= set(alice.sasl_mechanisms)
            assert alice.tls_version is None
            assert alice.jid.startswith("alice@example.test/")
            alice.send_message("bob@example.test", "hello bob")
            msg = await bob.next_message(timeout=5)
            assert msg.body == "hello bob"
            assert msg.from_ == alice.jid
    run(scenario())


def test_prosody_plain_login_with_sasl_plain(prosody):
    async def scenario():
        async with plain_client(prosody, "dave", mechanisms=["PLAIN"],
                                allow_plain_unencrypted=True) as dave:
            assert dave.sasl_mechanism_used == "PLAIN"
    run(scenario())


def test_prosody_wrong_password_fails(prosody):
    async def scenario():
        c = Client(prosody.jid("alice"), "wrong", prosody.host, prosody.port,
                   starttls=False)
        with pytest.raises(ConnectFailed) as e:
            await c.connect(timeout=5)
        assert e.value.reason == "auth failed"
    run(scenario())


def test_required_starttls_not_offered_is_refused(prosody, pki):
    async def scenario():
        c = tls_client(prosody, "alice", pki)
        with pytest.raises(ConnectFailed) as e:
            await c.connect(timeout=5)
        assert e.value.reason == "starttls not offered"
    run(scenario())


def test_roster_and_subscription(prosody):
    async def scenario():
        async with plain_client(prosody, "carol") as carol, \
                plain_client(prosody, "alice") as alice:
            assert "carol@example.test" not in await alice.get_roster()
            await alice.subscribe("carol@example.test", timeout=5)  # carol auto-accepts
            roster = await alice.get_roster()
            assert roster["carol@example.test"]["subscription"] in ("to", "both")
            assert "alice@example.test" in await carol.get_roster()
    run(scenario())


# -- Prosody with TLS ------------------------------------------------------------

def test_prosody_starttls_and_direct_tls_verified(prosody_tls, pki):
    async def scenario():
        async with tls_client(prosody_tls, "alice", pki) as a:
            assert a.offered_starttls and a.tls_version
            assert fingerprint_der(a.peer_cert_der) == cert_sha256(pki.server_cert)
        async with tls_client(prosody_tls, "alice", pki, direct_tls=True,
                              port=prosody_tls.direct_tls_port) as a:
            assert a.tls_version and not a.offered_starttls
        # Verification is really on: a name the certificate lacks is refused.
        bad = tls_client(prosody_tls, "alice", pki, direct_tls=True,
                         port=prosody_tls.direct_tls_port, server_name="other.test")
        with pytest.raises(ConnectFailed) as e:
            await bad.connect(timeout=5)
        assert e.value.reason == "tls failed"
    run(scenario())


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_go_sendxmpp_to_bob(prosody_tls, pki, direct_tls):
    port = prosody_tls.direct_tls_port if direct_tls else prosody_tls.port
    body = f"via go-sendxmpp ({'direct' if direct_tls else 'starttls'})"

    async def scenario():
        async with tls_client(prosody_tls, "bob", pki) as bob:
            res = await asyncio.to_thread(
                send_message, "alice", USERS["alice"], prosody_tls.host, port,
                "bob@example.test", body, ca_file=pki.ca_cert, direct_tls=direct_tls)
            assert res.ok, res
            msg = await bob.next_message(timeout=5)
            assert msg.body.strip() == body
            assert msg.from_.startswith("alice@example.test/")
    run(scenario())


def test_go_sendxmpp_rejects_unknown_ca(prosody_tls, tmp):
    other = make_pki(tmp / "other-pki")
    res = send_message("alice", USERS["alice"], prosody_tls.host, prosody_tls.port,
                       "bob@example.test", "must not arrive", ca_file=other.ca_cert)
    assert not res.ok
    assert "certificate" in res.stderr


def test_raw_login_then_undefined_entity_gets_stream_error(prosody_tls, pki):
    with RawStream.open(prosody_tls.host, prosody_tls.port, ca_file=pki.ca_cert) as rs:
        assert rs.tls_version and "PLAIN" in rs.mechanisms
        assert rs.login("alice", USERS["alice"]).startswith("alice@example.test/")
        rs.send("<message to='bob@example.test'><body>&xxe;</body></message>")
        text = rs.read_until_closed(timeout=5)
    assert parse_stream_error(text) == "not-well-formed", text


def test_prosody_shutdown_sends_system_shutdown(tmp, pki):
    # A throwaway instance on its own port, so the session ones stay up.
    srv = start_prosody(tmp / "prosody-shutdown", port=15229)
    try:
        async def scenario():
            async with plain_client(srv, "alice") as alice:
                await asyncio.to_thread(srv.stop)
                assert await alice.wait_stream_error(timeout=5) == "system-shutdown"
                await alice.wait_disconnected(timeout=5)
        run(scenario())
    finally:
        srv.stop()
    assert not srv.running()


# -- ejabberd -------------------------------------------------------------------

def test_ejabberd_offers_scram_plus_over_tls(ejabberd, pki):
    async def scenario():
        async with tls_client(ejabberd, "alice", pki) as a:
            assert a.tls_version
            assert "SCRAM-SHA-1-PLUS" in a.sasl_mechanisms
            assert fingerprint_der(a.peer_cert_der) == cert_sha256(pki.server_cert)
    run(scenario())
    # Same with raw bytes; before STARTTLS there is no -PLUS.
    rs = RawStream.connect(ejabberd.host, ejabberd.tls_port, ca_file=pki.ca_cert)
    with rs:
        rs.start_stream()
        assert "SCRAM-SHA-1-PLUS" not in rs.mechanisms
        rs.starttls()
        assert "SCRAM-SHA-1-PLUS" in rs.mechanisms


def test_ejabberd_plain_port_message(ejabberd):
    async def scenario():
        async with plain_client(ejabberd, "bob", port=ejabberd.plain_port) as bob, \
                plain_client(ejabberd, "alice", port=ejabberd.plain_port) as alice:
            assert not alice.offered_starttls
            alice.send_message("bob@example.test", "hi from ejabberd")
            assert (await bob.next_message(timeout=5)).body == "hi from ejabberd"
    run(scenario())


def test_ejabberd_proxy_port_requires_proxy_header(ejabberd):
    with RawStream.connect(ejabberd.host, ejabberd.proxy_port) as rs:
        with pytest.raises(RawStreamError):
            rs.start_stream()
        assert "<stream:features" not in rs.received
    with RawStream.connect(ejabberd.host, ejabberd.proxy_port) as rs:
        rs.send(proxy_v2_header(("127.0.0.9", 40001), (ejabberd.host, ejabberd.proxy_port)))
        assert "PLAIN" in parse_mechanisms(rs.start_stream())
        rs.login("carol", USERS["carol"])



def test_ejabberd_restart_sends_system_shutdown_and_keeps_accounts(ejabberd, pki):
    # Runs last: stops and restarts the session instance.
    async def shutdown():
        async with tls_client(ejabberd, "dave", pki) as dave:
            await asyncio.to_thread(ejabberd.stop)
            assert await dave.wait_stream_error(timeout=10) == "system-shutdown"
            await dave.wait_disconnected(timeout=5)
    run(shutdown())
    assert not ejabberd.running()
    ejabberd.start()

    async def login_again():
        async with tls_client(ejabberd, "dave", pki) as dave:
            assert dave.jid.startswith("dave@example.test/")
    run(login_again())
