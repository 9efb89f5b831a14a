"""The admin listener over TLS, and client certificates as credentials (issue 19), end to end.

A real stanzawall in front of the suite's Prosody, its admin listener on HTTPS with a
certificate of its own (``[admin] tls_cert``/``tls_key``) and ``client_ca`` naming an "ops" CA
that is not the suite's CA; ``[admin.client_roles]`` maps ``CN=ops`` to admin and
``CN=grafana`` to read. Python's ``ssl`` is the client.

Ports: the gateway's c2s listener on 25552, its admin listener on 25553 (harness/defaults.py).
Refused attempts come from 127.0.0.3, so the failure limiter they feed never locks out the
other tests' requests from 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from harness.ca import cert_der, cert_sha256, fingerprint_der, issue_leaf, make_ca
from harness.defaults import GATEWAY_ADMIN_HTTPS_PORT, GATEWAY_ADMIN_TLS_PORT, HOST
from harness.gateway import Gateway, Listener, binary
from harness.proc import wait_for_port

REFUSED_SOURCE = "127.0.0.3"


def admin_toml(tls: str) -> str:
    return f"""
[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{GATEWAY_ADMIN_HTTPS_PORT}"
tokens = "admin-tokens"
{tls}
client_ca = "ops-ca.crt"

[admin.client_roles]
"CN=ops" = "admin"
"CN=grafana" = "read"
"""


OWN_CERT = 'tls_cert = "admin.crt"\ntls_key = "admin.key"'


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody):
    d = tmp / "gw-admin-tls"
    d.mkdir(parents=True, exist_ok=True)
    # The admin listener's own server certificate, from the suite's CA.
    crt, key = issue_leaf(d, pki.ca_cert, pki.ca_key, "admin", ["admin.example.test"])
    # The CA that issues operators' client certificates, and one that has nothing to do with us.
    ops_dir, other_dir = d / "ops-ca", d / "other-ca"
    ops_ca, ops_key = make_ca(ops_dir)
    other_ca, other_key = make_ca(other_dir)
    (d / "ops-ca.crt").write_bytes(ops_ca.read_bytes())
    g = Gateway(d, pki.cert, pki.key, [Listener("c2s", "c2s", GATEWAY_ADMIN_TLS_PORT, prosody.port)],
                extra_toml=admin_toml(OWN_CERT))
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(d / "admin-tokens"), "--role",
                          "admin", "--name", "ops-token"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    g.token = out.stdout.strip()
    client = lambda ca, ca_key, cn: issue_leaf(d, ca, ca_key, f"client-{cn}-{ca.parent.name}", [cn],
                                               extended_key_usage="clientAuth")
    g.certs = {"ops": client(ops_ca, ops_key, "ops"), "grafana": client(ops_ca, ops_key, "grafana"),
               "stranger": client(ops_ca, ops_key, "stranger"),
               "ops-other-ca": client(other_ca, other_key, "ops")}
    g.admin_cert = crt
    g.start()
    wait_for_port(HOST, GATEWAY_ADMIN_HTTPS_PORT, 10, proc=g.proc, log=g.log_path, who="stanzawall admin")
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def context(pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    # The admin certificate names admin.example.test and the tests dial 127.0.0.1; the chain is
    # still verified against the suite's CA.
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def api(ctx: ssl.SSLContext, method: str, path: str, token: str | None = None,
        source: str = HOST) -> tuple[int, dict]:
    conn = http.client.HTTPSConnection(HOST, GATEWAY_ADMIN_HTTPS_PORT, timeout=15, context=ctx,
                                       source_address=(source, 0))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        return r.status, (json.loads(text) if text.startswith("{") else {"text": text})
    finally:
        conn.close()


def served_certificate(pki) -> bytes:
    ctx = context(pki)
    with socket.create_connection((HOST, GATEWAY_ADMIN_HTTPS_PORT), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="admin.example.test") as s:
            return s.getpeercert(True)


def audit_records(gw: Gateway) -> list[dict]:
    p = gw.dir / "audit.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def wait_audit(gw: Gateway, pred, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in audit_records(gw):
            if pred(r):
                return r
        time.sleep(0.05)
    raise AssertionError(f"no such audit record; have {audit_records(gw)[-10:]}")


def test_https_with_a_token(gw, pki):
    assert fingerprint_der(served_certificate(pki)) == cert_sha256(gw.admin_cert)
    ctx = context(pki)
    assert api(ctx, "GET", "/api/v1/whoami", gw.token) == (200, {"name": "ops-token", "role": "admin"})
    status, body = api(ctx, "GET", "/api/v1/whoami")
    assert status == 401 and "no token" in body["error"]
    assert api(ctx, "GET", "/healthz")[0] == 200
    # Plain HTTP on the TLS port gets no answer from the API.
    conn = http.client.HTTPConnection(HOST, GATEWAY_ADMIN_HTTPS_PORT, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {gw.token}"})
        conn.getresponse().read()
    conn.close()


def test_client_certificate_authenticates_without_a_token(gw, pki):
    ops = context(pki, gw.certs["ops"])
    assert api(ops, "GET", "/api/v1/whoami") == (200, {"name": "cert:CN=ops", "role": "admin"})
    status, body = api(ops, "POST", "/api/v1/reload")
    assert status == 200, body
    r = wait_audit(gw, lambda r: r.get("event") == "admin" and r.get("action") == "reload")
    assert r["admin.token"] == "cert:CN=ops" and r["admin.role"] == "admin", r
    # A read role from the same CA sees, and may not act.
    grafana = context(pki, gw.certs["grafana"])
    assert api(grafana, "GET", "/api/v1/whoami") == (200, {"name": "cert:CN=grafana", "role": "read"})
    assert api(grafana, "POST", "/api/v1/reload")[0] == 403
    # A token, when sent, is what counts: a bad one is refused even with a good certificate.
    assert api(ops, "GET", "/api/v1/whoami", "swt_not-a-token", source=REFUSED_SOURCE)[0] == 401
    # A valid certificate whose name has no role authenticates nobody.
    status, body = api(context(pki, gw.certs["stranger"]), "GET", "/api/v1/whoami", source=REFUSED_SOURCE)
    assert status == 401 and "no role" in body["error"], body


def test_certificate_from_another_ca_is_refused(gw, pki):
    ctx = context(pki, gw.certs["ops-other-ca"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3: the server judges the client certificate after the client's handshake ends,
        # so the refusal (an alert) arrives at the first read.
        api(ctx, "GET", "/api/v1/whoami", source=REFUSED_SOURCE)
    r = wait_audit(gw, lambda r: r.get("event") == "admin" and r.get("action") == "auth"
                   and r.get("reason", "").startswith("client certificate:"))
    assert r["result"] == "refused" and r["client.ip"] == REFUSED_SOURCE, r
    assert "client certificate refused" in gw.log()


def test_reload_switches_to_a_reused_certificate(gw, pki):
    before = len(gw.log())
    gw.write_config(gw.config_text().replace(OWN_CERT, 'tls_certificate = "admin.example.test"'))
    gw.reload()
    gw.wait_log("configuration reloaded", after=before)
    # The [[tls.certificate]] for *.example.test now serves the admin listener too.
    assert fingerprint_der(served_certificate(pki)) == fingerprint_der(cert_der(pki.cert))
    assert api(context(pki, gw.certs["ops"]), "GET", "/api/v1/whoami")[0] == 200
    # A broken CA file keeps the running configuration, with the line that named it.
    (gw.dir / "ops-ca.crt").write_text("not a certificate\n")
    before = len(gw.log())
    gw.reload()
    text = gw.wait_log("reload failed", after=before)
    assert "admin.client_ca" in text and "ops-ca.crt" in text, text
    assert api(context(pki, gw.certs["ops"]), "GET", "/api/v1/whoami")[0] == 200
