"""A real, local DNSSEC-signed DNS for the s2s tests: knotd serving a signed
root zone on loopback, keys and signatures made with ldns (Debian packages
knot, knot-dnsutils, ldnsutils; scripts/install-test-deps.sh installs them).

Owns: generating the keys, writing and signing the zones, starting and
stopping one knotd (by PID, in a temp dir), the trust anchor file, and
helpers to add TLSA records for a certificate. Nothing here listens anywhere
but ``DNS_HOST:DNS_PORT``.

The root zone ``.`` is signed, so the trust anchor is the root KSK and every
test name is validated exactly as on the Internet (the resolver climbs to
``.``). Names (``DOMAINS``):

===================  =======================================================
``secure.test``      signed: ``_xmpps-server._tcp`` SRV prio 5 →
                     ``xmpps.secure.test:5270``, ``_xmpp-server._tcp`` SRV
                     prio 10 → ``xmpp.secure.test:5269``, A 127.0.0.1 for
                     both; TLSA added with :meth:`DnsZone.add_tlsa`
``mismatch.test``    signed: SRV → ``xmpp.mismatch.test:5269``, A, and a
                     TLSA 3 1 1 of random bytes (matches no certificate)
``fallback.test``    signed: no SRV, A 127.0.0.1 only (RFC 6120 §3.2.2)
``noservice.test``   signed: both SRV with target "." (service refused)
``unsigned.test``    a delegated zone with no DS: insecure; SRV, A and a
                     TLSA that a validator must not use
``bogus.test``       SRV and A whose RDATA was changed after signing:
                     the signature does not verify (bogus)
===================  =======================================================

Usage::

    zone = DnsZone(tmp / "dns")
    zone.add_tlsa("_5269._tcp.xmpp.secure.test", cert_pem)   # before or after start
    zone.start()
    ... stanzawall resolve secure.test --resolver zone.resolver
              --trust-anchor zone.trust_anchor ...
    zone.stop()
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.proc import ServerStartError, Spawned, require_free_ports, run_checked, tail

__all__ = ["DnsZone", "DNS_HOST", "DNS_PORT", "DOMAINS", "REQUIRED_DNS_TOOLS", "tlsa_rdata",
           "spki_der"]

#: knotd listens here (UDP and TCP). Not 127.0.0.53 (systemd-resolved's) and
#: not the gateway's 254xx ports.
DNS_HOST = "127.0.5.53"
DNS_PORT = 5353

DOMAINS = ("secure.test", "mismatch.test", "fallback.test", "noservice.test",
           "unsigned.test", "bogus.test")

REQUIRED_DNS_TOOLS = ["knotd", "knotc", "kdig", "ldns-keygen", "ldns-signzone", "openssl"]

ALGORITHM = "ECDSAP256SHA256"   # algorithm 13, what the root's successors and most TLDs use
TTL = 300


def spki_der(cert_pem: str | bytes) -> bytes:
    """DER SubjectPublicKeyInfo of a PEM certificate (TLSA selector 1)."""
    pem = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem,
                         capture_output=True, check=True, timeout=20).stdout
    return subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                          capture_output=True, check=True, timeout=20).stdout


def cert_der_of(cert_pem: str | bytes) -> bytes:
    pem = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return subprocess.run(["openssl", "x509", "-outform", "DER"], input=pem,
                          capture_output=True, check=True, timeout=20).stdout


def tlsa_rdata(cert_pem: str | bytes, usage: int = 3, selector: int = 1,
               matching: int = 1) -> str:
    """``"U S M HEX"`` for a certificate (RFC 6698 §2.1)."""
    data = spki_der(cert_pem) if selector == 1 else cert_der_of(cert_pem)
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return f"{usage} {selector} {matching} {data.hex()}"


@dataclass
class DnsZone:
    """The signed root zone plus the unsigned child, served by one knotd."""

    dir: Path
    host: str = DNS_HOST
    port: int = DNS_PORT
    extra: list[str] = field(default_factory=list)   # extra root-zone lines (signed)
    proc: Spawned | None = None
    serial: int = 1

    def __post_init__(self) -> None:
        missing = [t for t in REQUIRED_DNS_TOOLS if shutil.which(t) is None]
        if missing:
            raise ServerStartError(f"missing {missing}: run scripts/install-test-deps.sh as root")
        self.dir = Path(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ksk = self._keygen(ksk=True)
        self._zsk = self._keygen(ksk=False)

    # --- public API --------------------------------------------------------

    @property
    def resolver(self) -> str:
        """``IP:PORT`` for ``--resolver`` / ``[s2s] resolver``."""
        return f"{self.host}:{self.port}"

    @property
    def trust_anchor(self) -> Path:
        """File with the root KSK's DNSKEY, for ``--trust-anchor`` / ``[s2s] trust_anchor``."""
        return self.dir / "root.key"

    def add_record(self, line: str) -> None:
        """Adds a root-zone line (``owner TTL IN TYPE RDATA``, owner absolute); re-signs and
        reloads when running."""
        self.extra.append(line)
        if self.proc is not None:
            self._publish()

    def add_tlsa(self, owner: str, cert_pem: str | bytes, usage: int = 3, selector: int = 1,
                 matching: int = 1) -> str:
        """Publishes a TLSA for ``cert_pem`` at ``owner`` (e.g. ``_5269._tcp.xmpp.secure.test``)
        in the signed zone; returns the RDATA."""
        rdata = tlsa_rdata(cert_pem, usage, selector, matching)
        self.add_record(f"{owner.rstrip('.')}. {TTL} IN TLSA {rdata}")
        return rdata

    def start(self, timeout: float = 15.0) -> "DnsZone":
        require_free_ports(self.host, [self.port], "knotd")
        self._publish(reload=False)
        conf = self._write_conf()
        self.proc = Spawned(["knotd", "-c", str(conf)], log=self.dir / "knotd.log", who="knotd")
        deadline = time.monotonic() + timeout
        while not self._answers():
            if not self.proc.running():
                raise ServerStartError(f"knotd exited ({self.proc.popen.returncode}):\n"
                                       f"{tail(self.dir / 'knotd.log')}")
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerStartError(f"knotd not answering on {self.resolver} after"
                                       f" {timeout:.0f}s:\n{tail(self.dir / 'knotd.log')}")
            time.sleep(0.2)
        self.proc.snapshot_tree()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(10.0)
            self.proc = None

    def dig(self, name: str, rtype: str) -> str:
        """kdig's answer (with DNSSEC records) from the zone's server, for diagnostics."""
        return run_checked(["kdig", f"@{self.host}", "-p", str(self.port), "+dnssec", "+norec",
                            "+timeout=2", "+retry=1", name, rtype], timeout=20,
                           who="kdig").stdout

    def __enter__(self) -> "DnsZone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------

    def _keygen(self, ksk: bool) -> Path:
        argv = ["ldns-keygen", "-a", ALGORITHM] + (["-k"] if ksk else []) + ["."]
        out = run_checked(argv, timeout=30, who="ldns-keygen", cwd=self.dir).stdout.strip()
        base = self.dir / out
        if ksk:
            # The KSK's DNSKEY is the trust anchor (hickory anchors on keys, not DS).
            shutil.copy(base.with_name(out + ".key"), self.dir / "root.key")
        return base

    def _root_zone(self) -> str:
        h = f"{self.host}"
        never = secrets.token_hex(32)
        lines = [
            f". {TTL} IN SOA ns.test. hostmaster.test. {self.serial} 3600 600 86400 {TTL}",
            f". {TTL} IN NS ns.test.",
            f"ns.test. {TTL} IN A {h}",
            # secure.test: both services, direct TLS preferred by priority (XEP-0368).
            f"_xmpps-server._tcp.secure.test. {TTL} IN SRV 5 0 5270 xmpps.secure.test.",
            f"_xmpp-server._tcp.secure.test. {TTL} IN SRV 10 0 5269 xmpp.secure.test.",
            f"xmpps.secure.test. {TTL} IN A 127.0.0.1",
            f"xmpp.secure.test. {TTL} IN A 127.0.0.1",
            # mismatch.test: a TLSA no certificate can match.
            f"_xmpp-server._tcp.mismatch.test. {TTL} IN SRV 10 0 5269 xmpp.mismatch.test.",
            f"xmpp.mismatch.test. {TTL} IN A 127.0.0.1",
            f"_5269._tcp.xmpp.mismatch.test. {TTL} IN TLSA 3 1 1 {never}",
            # fallback.test: no SRV at all.
            f"fallback.test. {TTL} IN A 127.0.0.1",
            # noservice.test: "." targets, RFC 2782 "decidedly not available".
            f"_xmpps-server._tcp.noservice.test. {TTL} IN SRV 0 0 0 .",
            f"_xmpp-server._tcp.noservice.test. {TTL} IN SRV 0 0 0 .",
            f"noservice.test. {TTL} IN A 127.0.0.1",
            # unsigned.test: delegated, no DS -> provably insecure.
            f"unsigned.test. {TTL} IN NS ns.unsigned.test.",
            f"ns.unsigned.test. {TTL} IN A {h}",
            # bogus.test: tampered after signing (see _tamper).
            f"_xmpp-server._tcp.bogus.test. {TTL} IN SRV 10 0 5269 xmpp.bogus.test.",
            f"xmpp.bogus.test. {TTL} IN A 127.0.0.1",
        ]
        return "\n".join(lines + self.extra) + "\n"

    def _unsigned_zone(self) -> str:
        z = "unsigned.test."
        return "\n".join([
            f"{z} {TTL} IN SOA ns.unsigned.test. hostmaster.test. {self.serial} 3600 600 86400 {TTL}",
            f"{z} {TTL} IN NS ns.unsigned.test.",
            f"ns.{z} {TTL} IN A {self.host}",
            f"_xmpp-server._tcp.{z} {TTL} IN SRV 10 0 5269 xmpp.{z}",
            f"xmpp.{z} {TTL} IN A 127.0.0.1",
            f"_5269._tcp.xmpp.{z} {TTL} IN TLSA 3 1 1 {'ab' * 32}",
        ]) + "\n"

    @staticmethod
    def _tamper(signed: str) -> str:
        """Changes bogus.test's SRV port and A address, keeping their RRSIGs: the signatures
        no longer verify."""
        out = []
        for line in signed.splitlines():
            f = line.split()
            if len(f) >= 5 and f[0] == "_xmpp-server._tcp.bogus.test." and f[3] == "SRV":
                line = line.replace(" 5269 ", " 5299 ")
            if len(f) >= 5 and f[0] == "xmpp.bogus.test." and f[3] == "A":
                line = line.replace("127.0.0.1", "127.0.0.66")
            out.append(line)
        text = "\n".join(out) + "\n"
        if "5299" not in text or "127.0.0.66" not in text:
            raise RuntimeError("dnszone: bogus.test records not found to tamper with")
        return text

    def _publish(self, reload: bool = True) -> None:
        self.serial += 1
        zone = self.dir / "root.zone"
        zone.write_text(self._root_zone())
        (self.dir / "unsigned.test.zone").write_text(self._unsigned_zone())
        # Valid from an hour ago for 60 days (absolute UNIX times: ldns misreads far dates).
        now = int(time.time())
        run_checked(["ldns-signzone", "-i", str(now - 3600), "-e", str(now + 60 * 86400), "-f", str(self.dir / "root.zone.signed"),
                     str(zone), str(self._zsk), str(self._ksk)], timeout=60, who="ldns-signzone")
        signed = self.dir / "root.zone.signed"
        signed.write_text(self._tamper(signed.read_text()))
        if reload and self.proc is not None:
            run_checked(["knotc", "-c", str(self.dir / "knot.conf"), "reload"], timeout=30,
                        who="knotc")
            deadline = time.monotonic() + 15
            while f" {self.serial} " not in self.dig(".", "SOA"):
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"knotd did not load serial {self.serial}:\n"
                                       f"{tail(self.dir / 'knotd.log')}")
                time.sleep(0.2)

    def _write_conf(self) -> Path:
        d = self.dir
        conf = d / "knot.conf"
        conf.write_text(f"""server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: {self.host}@{self.port}
    user: root:root

control:
    listen: "{d}/knot.sock"

database:
    storage: "{d}/db"

log:
  - target: stderr
    any: info

template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    dnssec-signing: off
    semantic-checks: off

zone:
  - domain: .
    file: "{d}/root.zone.signed"
  - domain: unsigned.test.
    file: "{d}/unsigned.test.zone"
""")
        return conf

    def _answers(self) -> bool:
        try:
            out = subprocess.run(["kdig", f"@{self.host}", "-p", str(self.port), "+norec",
                                  "+timeout=1", "+retry=0", ".", "SOA"],
                                 capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "status: NOERROR" in out and "SOA" in out
