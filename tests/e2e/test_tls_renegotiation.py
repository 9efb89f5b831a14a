"""Catalogue entry: TLS renegotiation is refused (rustls implements none; a renegotiation
request gets a no_renegotiation alert), and the session cannot be moved to new keys or a new
identity mid-stream. Driven with openssl s_client's `R` command over TLS 1.2 (TLS 1.3 has no
renegotiation at all)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from harness.defaults import GATEWAY_SCRATCH_PORT, HOST
from harness.gateway import Gateway, Listener
from harness.raw import stream_header


def test_tls_renegotiation_is_refused(tmp, pki, prosody):
    if shutil.which("openssl") is None:
        pytest.fail("openssl missing: scripts/install-test-deps.sh", pytrace=False)
    gw = Gateway(tmp / "gw-reneg", pki.cert, pki.key, [
        Listener("c2s-direct", "c2s-tls", GATEWAY_SCRATCH_PORT + 6, prosody.port),
    ]).start()
    try:
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"{HOST}:{gw.port('c2s-direct')}", "-tls1_2",
             "-CAfile", str(pki.ca_cert), "-servername", "example.test", "-verify_return_error"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdin is not None
            time.sleep(1.0)
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            time.sleep(1.0)
            # Whatever the client does next, the gateway must not have renegotiated.
            proc.stdin.write(stream_header())
            proc.stdin.flush()
            gw.wait_log("NoRenegotiation", timeout=10)
        finally:
            proc.kill()
            out = proc.communicate(timeout=10)[0].decode(errors="replace")
        assert "RENEGOTIATING" in out, out
        # One handshake only: the certificate chain was verified once, never again.
        assert out.count("Verify return code: 0 (ok)") == 1, out
    finally:
        assert gw.terminate() == 0
