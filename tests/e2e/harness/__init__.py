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

Runs on Debian's /usr/bin/python3 (needs python3-slixmpp, python3-pytest);
install system dependencies with scripts/install-test-deps.sh.  All traffic
stays on 127.0.0.1.
"""
