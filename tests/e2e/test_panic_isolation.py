"""A panic in one session must never take down the others (issue: hostile input, item 4).

Uses the debug binary built with the test-only `fault-injection` feature
(``$STANZAWALL_FAULT_BIN``, default target/debug/stanzawall, built by scripts/test.sh):
a client that sends the marker makes its own session task panic.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from harness.client import Client, run
from harness.defaults import GATEWAY_SCRATCH_PORT, HOST
from harness.gateway import REPO, Gateway, Listener
from harness.raw import RawStream

MARKER = "<stanzawall-fault-injection-panic/>"


def fault_binary() -> Path:
    path = Path(os.environ.get("STANZAWALL_FAULT_BIN", REPO / "target" / "debug" / "stanzawall"))
    if not path.is_file():
        pytest.fail(f"{path} missing: cargo build -p stanzawall --features fault-injection", pytrace=False)
    return path


def test_a_panicking_session_leaves_the_others_running(tmp, pki, prosody, monkeypatch):
    monkeypatch.setenv("STANZAWALL_BIN", str(fault_binary()))
    gw = Gateway(tmp / "gw-panic", pki.cert, pki.key, [
        Listener("c2s", "c2s", GATEWAY_SCRATCH_PORT + 5, prosody.port),
    ]).start()
    try:
        async def go():
            port = gw.port("c2s")
            async with Client(prosody.jid("alice"), prosody.users["alice"], HOST, port, ca_file=pki.ca_cert) as alice, \
                    Client(prosody.jid("bob"), prosody.users["bob"], HOST, port, ca_file=pki.ca_cert) as bob:
                victim = await asyncio.to_thread(RawStream.open, HOST, port, ca_file=pki.ca_cert)
                await asyncio.to_thread(victim.login, "carol", prosody.users["carol"])
                victim.send(MARKER)
                # The panicking session's connection is closed (no stream error: it unwound).
                await asyncio.to_thread(victim.read_until_closed, 10)
                gw.wait_log("fault injection: the client asked this session to panic")
                # The sessions opened before keep working both ways.
                alice.send_message(bob.jid, "still alive")
                assert (await bob.next_message(timeout=10)).body == "still alive"
                bob.send_message(alice.jid, "me too")
                assert (await alice.next_message(timeout=10)).body == "me too"
                # And new sessions are accepted.
                async with Client(prosody.jid("dave"), prosody.users["dave"], HOST, port, ca_file=pki.ca_cert) as dave:
                    assert dave.jid.startswith("dave@example.test/")
        run(go())
        assert gw.running(), "the gateway process died"
    finally:
        assert gw.terminate() == 0
