"""pytest fixtures for the stanzawall end-to-end tests.

Run with Debian's interpreter (the pyenv ``python3`` on PATH lacks
slixmpp)::

    /usr/bin/python3 -m pytest -v tests/e2e

System packages: ``sudo scripts/install-test-deps.sh``.

Fixtures (all session-scoped; servers are private instances on 127.0.0.1,
started once, stopped by PID at the end of the session):

``tmp`` -> ``pathlib.Path``
    Session scratch dir (pytest's tmp_path_factory; kept for the last 3
    runs under /tmp/pytest-of-root/).
``pki`` -> ``harness.ca.Pki``
    ``.ca_cert``/``.ca_key``, ``.cert``/``.key`` (example.test leaf #1),
    ``.cert2``/``.key2`` (leaf #2, different serial and fingerprint, for
    reload tests), ``.server_cert``/``.server_key`` (servers' own TLS),
    ``.dir``, ``.issue(stem, dns_names, days=..., not_before=...)``.
``prosody`` -> ``harness.prosody.ProsodyInstance``
    Plaintext backend: ``.host`` "127.0.0.1", ``.port`` 15222 (no STARTTLS
    offered; SCRAM-SHA-1 and PLAIN), ``.domain`` "example.test",
    ``.users`` {"alice": "alice-secret-1", "bob": "bob-secret-2",
    "carol": "carol-secret-3", "dave": "dave-secret-4"}, ``.jid(user)``,
    ``.log_path``, ``.stop()``, ``.start()``, ``.restart()``, ``.pid``.
``prosody_tls`` -> ``harness.prosody.ProsodyInstance``
    Same accounts, TLS with ``pki.server_cert``: ``.port`` 15225 (STARTTLS
    offered and required), ``.direct_tls_port`` 15226 (XEP-0368).
``ejabberd`` -> ``harness.ejabberd.EjabberdInstance``
    ``.host``, ``.domain``, ``.users`` (same accounts), ``.port`` ==
    ``.tls_port`` 15322 (STARTTLS offered; after it SASL offers
    SCRAM-SHA-1-PLUS), ``.plain_port`` 15323 (no STARTTLS), ``.proxy_port``
    15324 (PROXY protocol header required), ``.dist_port`` 15399, ``.jid()``,
    ``.log_path``, ``.ctl(*args)``, ``.stop()``, ``.start()``, ``.restart()``.

``gateway`` -> ``harness.gateway.Gateway``
    ``stanzawall run`` in front of ``prosody``: listener "c2s" (STARTTLS) on
    25222 and "c2s-direct" (XEP-0368) on 25223, certificate ``pki.cert``.
``gateway_ejabberd`` -> ``harness.gateway.Gateway``
    ``stanzawall run`` in front of ``ejabberd``: "ejabberd" on 25322 with
    ``backend_tls = "starttls"`` to ejabberd's TLS port (verified against the
    test CA), "ejabberd-proxy" on 25324 with ``proxy_protocol = "v2"`` to
    ejabberd's PROXY-only port.

Port numbers and accounts live in ``harness/defaults.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - wrong interpreter
    raise ImportError(
        f"slixmpp not importable from {sys.executable}: run the e2e tests with"
        " Debian's /usr/bin/python3 (python3-slixmpp), after"
        " scripts/install-test-deps.sh") from None

from harness.ca import Pki, make_pki
from harness.defaults import (GATEWAY_C2S_PORT, GATEWAY_DIRECT_PORT, GATEWAY_EJABBERD_PORT,
                              GATEWAY_EJABBERD_PROXY_PORT)
from harness.ejabberd import EjabberdInstance, start_ejabberd
from harness.gateway import Gateway, Listener
from harness.proc import port_is_free
from harness.prosody import ProsodyInstance, start_prosody

REQUIRED_TOOLS = ["prosody", "prosodyctl", "ejabberdctl", "go-sendxmpp", "openssl"]


def _check_tools() -> None:
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/install-test-deps.sh as root",
                    pytrace=False)


def _assert_ports_released(host: str, ports: list[int | None], who: str) -> None:
    busy = [p for p in ports if p and not port_is_free(host, p)]
    assert not busy, f"{who} teardown left port(s) {busy} listening"


@pytest.fixture(scope="session")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def pki(tmp: Path) -> Pki:
    return make_pki(tmp / "pki")


@pytest.fixture(scope="session")
def prosody(tmp: Path) -> ProsodyInstance:
    _check_tools()
    inst = start_prosody(tmp / "prosody")
    yield inst
    inst.stop()
    _assert_ports_released(inst.host, [inst.port], "prosody")


@pytest.fixture(scope="session")
def prosody_tls(tmp: Path, pki: Pki) -> ProsodyInstance:
    _check_tools()
    inst = start_prosody(tmp / "prosody-tls", tls=True, cert=pki.server_cert,
                         key=pki.server_key)
    yield inst
    inst.stop()
    _assert_ports_released(inst.host, [inst.port, inst.direct_tls_port], "prosody_tls")


@pytest.fixture(scope="session")
def ejabberd(pki: Pki) -> EjabberdInstance:
    _check_tools()
    inst = start_ejabberd(pki.server_cert, pki.server_key, pki.ca_cert)
    yield inst
    inst.cleanup()
    _assert_ports_released(inst.host, [*inst.ports, inst.dist_port], "ejabberd")


@pytest.fixture(scope="session")
def gateway(tmp: Path, pki: Pki, prosody: ProsodyInstance) -> Gateway:
    gw = Gateway(tmp / "gateway", pki.cert, pki.key, [
        Listener("c2s", "c2s", GATEWAY_C2S_PORT, prosody.port),
        Listener("c2s-direct", "c2s-tls", GATEWAY_DIRECT_PORT, prosody.port),
    ]).start()
    yield gw
    assert gw.terminate() == 0, f"stanzawall did not exit cleanly; log {gw.log_path}"
    _assert_ports_released("127.0.0.1", [GATEWAY_C2S_PORT, GATEWAY_DIRECT_PORT], "stanzawall")


@pytest.fixture(scope="session")
def gateway_ejabberd(tmp: Path, pki: Pki, ejabberd: EjabberdInstance) -> Gateway:
    gw = Gateway(tmp / "gateway-ejabberd", pki.cert, pki.key, [
        Listener("ejabberd", "c2s", GATEWAY_EJABBERD_PORT, ejabberd.tls_port, {
            "backend_tls": "starttls", "backend_ca": str(pki.ca_cert),
            "backend_server_name": "example.test"}),
        Listener("ejabberd-proxy", "c2s", GATEWAY_EJABBERD_PROXY_PORT, ejabberd.proxy_port,
                 {"proxy_protocol": "v2"}),
    ]).start()
    yield gw
    assert gw.terminate() == 0, f"stanzawall did not exit cleanly; log {gw.log_path}"
