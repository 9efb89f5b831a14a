"""End-to-end test harness for stanzawall: everything around the gateway.

Modules (each owns one thing; import them directly, e.g.
``from harness.client import Client``):

* ``defaults``  — domain, loopback host, test accounts, default ports.
* ``proc``      — spawning/stopping our own processes by PID, port waits.
* ``ca``        — the test PKI (openssl CLI) and certificate fingerprints.
* ``prosody``   — a private Prosody 0.12 (plaintext or TLS flavour).
* ``ejabberd``  — a private ejabberd 23.01 (STARTTLS, plain, PROXY ports).
* ``client``    — slixmpp client wrapper with bounded waits.
* ``raw``       — byte-level XMPP over a socket for hostile-input tests.
* ``sendxmpp``  — go-sendxmpp as an independent (Go) client.
* ``sites``     — two-site s2s testbed: servers with plaintext dialback s2s, a private
  knotd per site routing its outbound s2s, a recording TCP relay.
* ``contrib``   — reads the repository's contrib/ files for the fixtures.

Runs on Debian's /usr/bin/python3 (needs python3-slixmpp, python3-pytest);
install system dependencies with scripts/install-test-deps.sh.  All traffic
stays on loopback (127.0.0.1; the s2s sites use 127.0.1.x and 127.0.2.x).
"""
