"""Test PKI, built with the ``openssl`` CLI (no Python crypto dependency).

Owns: the test certificate authority, the leaf certificates signed by it, and
certificate fingerprint helpers.  Nothing here touches the network.

``make_pki(dir)`` writes, all EC P-256, X.509 v3:

============================  ===============================================
``ca.crt`` / ``ca.key``       test CA (basicConstraints CA:TRUE, critical;
                              keyUsage keyCertSign+cRLSign)
``example.test.crt/.key``     gateway leaf #1, SAN DNS:example.test,
                              DNS:*.example.test
``example.test-2.crt/.key``   gateway leaf #2, same names, different key and
                              serial (for certificate-reload tests)
``server.crt/.key``           the XMPP servers' own TLS leaf (SAN
                              DNS:example.test, DNS:*.example.test; no IP
                              SAN: verify it against "example.test")
============================  ===============================================

Every leaf: basicConstraints CA:FALSE, keyUsage digitalSignature,
extendedKeyUsage serverAuth, subjectKeyIdentifier + authorityKeyIdentifier,
valid from one hour ago for ``LEAF_DAYS`` days; accepted by Python ``ssl``,
Go ``crypto/tls`` and rustls/webpki.

``issue_leaf()`` is public so tests can mint extra leaves (other names,
short validity, ...) from the same CA.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .defaults import DOMAIN

__all__ = [
    "Pki", "make_pki", "make_ca", "issue_leaf", "fingerprint_der", "cert_der",
    "cert_sha256", "cert_serial",
]

CA_DAYS = 365
LEAF_DAYS = 30
OPENSSL_TIMEOUT = 30  # seconds, per openssl invocation


@dataclass(frozen=True)
class Pki:
    """Paths of the files written by :func:`make_pki` (all absolute)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    cert: Path        # example.test.crt (gateway leaf #1)
    key: Path
    cert2: Path       # example.test-2.crt (gateway leaf #2, for reload)
    key2: Path
    server_cert: Path  # server.crt (prosody/ejabberd TLS)
    server_key: Path

    def issue(self, stem: str, dns_names: Sequence[str], **kw) -> tuple[Path, Path]:
        """Mint another leaf from this CA into ``self.dir``; see issue_leaf."""
        return issue_leaf(self.dir, self.ca_cert, self.ca_key, stem, dns_names, **kw)


def _openssl(*args: str) -> None:
    proc = subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )


def _genkey(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-pkeyopt", "ec_param_enc:named_curve", "-out", str(path))
    path.chmod(0o600)


def _make_ca(dir: Path) -> tuple[Path, Path]:
    crt, key = dir / "ca.crt", dir / "ca.key"
    _genkey(key)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(crt),
        "-days", str(CA_DAYS), "-sha256", "-set_serial", hex(secrets.randbits(62) | 1 << 62),
        "-subj", "/O=stanzawall tests/CN=stanzawall test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )
    return crt, key


def issue_leaf(dir: Path, ca_cert: Path, ca_key: Path, stem: str,
               dns_names: Sequence[str], *, ip_addresses: Sequence[str] = (),
               days: float = LEAF_DAYS,
               not_before: _dt.datetime | None = None,
               extended_key_usage: str = "serverAuth") -> tuple[Path, Path]:
    """Write ``<stem>.crt`` / ``<stem>.key`` in ``dir``, signed by the CA.

    Validity runs from ``not_before`` (default: one hour ago, UTC) for
    ``days`` days; pass a past ``not_before`` and small ``days`` to mint an
    expired certificate for negative tests.  ``extended_key_usage="clientAuth"``
    mints a client certificate (the subject CN is ``dns_names[0]``).
    Returns ``(cert, key)`` paths.
    """
    dir = Path(dir)
    crt, key, csr = (dir / f"{stem}{s}" for s in (".crt", ".key", ".csr"))
    _genkey(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr),
             "-subj", f"/O=stanzawall tests/CN={dns_names[0]}")
    start = not_before or (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1))
    end = start + _dt.timedelta(days=days)
    san = ",".join([f"DNS:{n}" for n in dns_names] + [f"IP:{a}" for a in ip_addresses])
    # `openssl x509 -req` (3.0) cannot set notBefore, `openssl ca` can; give
    # it a throwaway database next to the output.
    with tempfile.TemporaryDirectory(dir=dir, prefix=f".{stem}-ca-") as work:
        conf = Path(work) / "ca.cnf"
        (Path(work) / "index.txt").write_text("")
        (Path(work) / "serial").write_text("01\n")  # unused: -rand_serial
        conf.write_text(
            "[ca]\ndefault_ca = tca\n"
            "[tca]\n"
            f"database = {work}/index.txt\n"
            f"new_certs_dir = {work}\n"
            f"serial = {work}/serial\n"
            "default_md = sha256\n"
            "policy = pol\n"
            "unique_subject = no\n"
            "[pol]\norganizationName = optional\ncommonName = supplied\n"
            "[v3]\n"
            "basicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature\n"
            f"extendedKeyUsage = {extended_key_usage}\n"
            f"subjectAltName = {san}\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
        )
        _openssl("ca", "-batch", "-notext", "-config", str(conf),
                 "-cert", str(ca_cert), "-keyfile", str(ca_key),
                 "-in", str(csr), "-out", str(crt), "-extensions", "v3",
                 "-rand_serial",
                 "-startdate", start.strftime("%Y%m%d%H%M%SZ"),
                 "-enddate", end.strftime("%Y%m%d%H%M%SZ"))
    csr.unlink()
    return crt, key


def make_ca(dir: Path | str) -> tuple[Path, Path]:
    """A CA of its own in ``dir`` (``ca.crt``, ``ca.key``), e.g. one that issues client certificates."""
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    return _make_ca(dir)


def make_pki(dir: Path | str) -> Pki:
    """Create the full test PKI in ``dir`` (created if missing)."""
    dir = Path(dir).resolve()
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(dir)
    names = [DOMAIN, f"*.{DOMAIN}"]
    cert, key = issue_leaf(dir, ca_cert, ca_key, DOMAIN, names)
    cert2, key2 = issue_leaf(dir, ca_cert, ca_key, f"{DOMAIN}-2", names)
    server_cert, server_key = issue_leaf(dir, ca_cert, ca_key, "server", names)
    pki = Pki(dir, ca_cert, ca_key, cert, key, cert2, key2, server_cert, server_key)
    if cert_sha256(cert) == cert_sha256(cert2) or cert_serial(cert) == cert_serial(cert2):
        raise RuntimeError("example.test and example.test-2 certificates are not distinct")
    return pki


def cert_der(path: Path | str) -> bytes:
    """DER bytes of the first certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


def fingerprint_der(der: bytes) -> str:
    """Lower-case hex SHA-256 of DER bytes (e.g. ``SSLSocket.getpeercert(True)``)."""
    return hashlib.sha256(der).hexdigest()


def cert_sha256(path: Path | str) -> str:
    """Lower-case hex SHA-256 fingerprint of the certificate in a PEM file."""
    return fingerprint_der(cert_der(path))


def cert_serial(path: Path | str) -> str:
    """Serial number of the certificate in a PEM file, as openssl prints it (hex)."""
    proc = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(path)],
                          capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=True)
    return proc.stdout.strip().split("=", 1)[1]
