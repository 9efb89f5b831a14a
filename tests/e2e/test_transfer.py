"""File transfers through the gateway's own XEP-0065 relay (issue 13), end to end.

Real parts: a private Prosody (c2s 25576; HTTP 25577 with ``http_file_share`` as
``upload.example.test``) behind a stanzawall with a ``c2s`` listener (25570), a ``socks5`` relay
listener (25571), an ``http-upload`` listener (25574) in front of Prosody's HTTP port, and
``[file_transfer]`` (proxy JID ``proxy.example.test``,
12 MB cap, DLP keyword + card numbers, clamd); a private ``clamd`` (25572) whose only signature
is the one-line ``.hdb`` written here (EICAR's MD5 and size); two slixmpp clients with slixmpp's
own XEP-0065 plugin: the sender discovers the proxy through the server's disco#items (which
the gateway extends), offers it, the receiver connects, the sender activates through the proxy
JID (answered by the gateway) and writes the file.

Checked: a 10 MB file arrives intact (SHA-256); EICAR and EICAR inside a zip are cut (the
receiver's connection is reset with less than the whole file) and audited with the
antivirus detector; a file over the cap is cut; a DLP keyword file is cut; an offer naming a
direct streamhost reaches the receiver naming only the gateway's proxy (and nobody dials the
direct address); the relay refuses CONNECT to an address, and pairs nothing without
activation; HTTP upload (XEP-0363): the slot URLs point at the gateway, a clean file is stored
and downloadable intact, EICAR is refused with a 403 whose text names the detector and nothing
is stored; IBB (XEP-0047) in-stream: a clean file intact, a hash-listed file cut at its close
(the sender's close gets ``not-acceptable`` naming the hash), a DLP file cut mid-stream; clamd stopped → files blocked (``on_scanner_error = "block"``).

HTTPS upload: a second gateway (c2s 25650, ``http-upload-tls`` 25651, relay 25652) in front of
the same Prosody terminates TLS on its upload listener with its ``[[tls.certificate]]``s:
slixmpp's own XEP-0363 plugin (aiohttp, trusting only the test CA) uploads a clean file through
it and it downloads intact from the rewritten ``https://`` get URL; EICAR is refused and the
403's text reaches the plugin's error; SNI picks the second certificate, ALPN is ``http/1.1``
(``h2`` only is refused); plain HTTP gets a 400 and garbage a close, both logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from harness.ca import Pki
from harness.clamd import EICAR, ClamdInstance
from harness.client import Client, run
from harness.defaults import HOST, USERS
from harness.gateway import Gateway, Listener, binary
from harness.prosody import ProsodyInstance

GW_PORT = 25570
RELAY_PORT = 25571
CLAMD_PORT = 25572
ADMIN_PORT = 25573
UPLOAD_PORT = 25574
PROSODY_C2S = 25576
PROSODY_HTTP = 25577
DECOY_PORT = 25579
UPLOAD_JID = "upload.example.test"
#: A file on the hash list (IBB is checked in-stream without clamd: the hash list stands in).
KNOWN_BAD = b"known-bad-document-v1\n" * 100
NS_UPLOAD = "urn:xmpp:http:upload:0"
PROXY_JID = "proxy.example.test"
MAX_BYTES = 12_000_000
NS_BYTESTREAMS = "http://jabber.org/protocol/bytestreams"


@pytest.fixture(scope="module")
def clamd(tmp: Path) -> ClamdInstance:
    inst = ClamdInstance(tmp / "clamd", CLAMD_PORT, {"Local.EICAR": EICAR}).start()
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def prosody_ft(tmp: Path) -> ProsodyInstance:
    """Prosody with an HTTP upload service (mod_http_file_share) on its own HTTP port."""
    inst = ProsodyInstance(dir=tmp / "prosody-transfer", port=PROSODY_C2S, users=dict(USERS))
    inst.write_config()
    text = inst.config_path.read_text()
    text = text.replace("http_ports = { }", f"http_ports = {{ {PROSODY_HTTP} }}\n"
                        f'http_interfaces = {{ "{HOST}" }}\nhttp_default_host = "{UPLOAD_JID}"')
    text += f'\nComponent "{UPLOAD_JID}" "http_file_share"\nhttp_file_share_size_limit = 20*1024*1024\n'
    inst.config_path.write_text(text)
    for user, password in USERS.items():
        inst.register(user, password)
    inst.start()
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def gw(tmp: Path, pki: Pki, prosody_ft: ProsodyInstance, clamd: ClamdInstance) -> Gateway:
    extra = f"""
[[listener]]
name = "upload"
kind = "http-upload"
bind = "{HOST}:{UPLOAD_PORT}"
backend = "{HOST}:{PROSODY_HTTP}"
[[listener]]
name = "relay"
kind = "socks5"
bind = "{HOST}:{RELAY_PORT}"

[file_transfer]
proxy_jid = "{PROXY_JID}"
upload_url = "http://{HOST}:{UPLOAD_PORT}"
max_bytes = {MAX_BYTES}
dlp_keywords = ["CONFIDENTIAL"]
dlp_card_numbers = true
hash_deny = ["{hashlib.sha256(KNOWN_BAD).hexdigest()}"]
clamd = "{HOST}:{CLAMD_PORT}"
scan_timeout = "20s"
pairing_timeout = "20s"

[[rule]]
name = "review-uploads"
chain = "file"
when = {{ name = ["*.review"], transport = ["upload"] }}
action = "quarantine"

[[rule]]
name = "no-executables"
chain = "file"
when = {{ name = ["*.exe", "*.scr"] }}
action = "block"
text = "executables are not accepted"

[[rule]]
name = "no-images-in-band"
chain = "file"
when = {{ media_type = ["image/*"], transport = ["ibb"] }}
action = "block"
text = "images go by HTTP upload"

[[rule]]
name = "carol-small-files"
chain = "file"
when = {{ to = ["carol@example.test"], size_over = 1000000 }}
action = "block"
text = "carol accepts files up to 1 MB"

# After the block rules: pending until the content's type is known, it must not hold back
# their decisions on offers.
[[rule]]
name = "review-pdfs-for-bob"
chain = "file"
when = {{ to = ["bob@example.test"], media_type = ["application/pdf"], transport = ["s5b"] }}
action = "quarantine"

[[rule]]
name = "log-every-ibb"
chain = "file"
when = {{ transport = "ibb" }}
action = "log"

[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{ADMIN_PORT}"
tokens = "admin-tokens"
"""
    g = Gateway(tmp / "gateway-transfer", pki.cert, pki.key,
                [Listener("c2s", "c2s", GW_PORT, prosody_ft.port)], extra_toml=extra)
    g.tokens = {role: make_token(g.dir / "admin-tokens", role, name)  # type: ignore[attr-defined]
                for role, name in [("admin", "ops"), ("read", "viewer")]}
    g.start()
    g.ca = pki.ca_cert  # type: ignore[attr-defined]
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def client(gw: Gateway, user: str) -> Client:
    c = Client(f"{user}@example.test/ft", USERS[user], HOST, GW_PORT, ca_file=gw.ca)  # type: ignore[attr-defined]
    c.xmpp.register_plugin("xep_0030")
    c.xmpp.register_plugin("xep_0065")
    c.xmpp["xep_0065"].auto_accept = True
    c.xmpp.register_plugin("xep_0047")
    c.xmpp["xep_0047"].auto_accept = True
    return c


async def transfer(sender: Client, receiver: Client, data: bytes, chunk: int = 65536) -> tuple[bytes, object]:
    """Send ``data`` through the proxy; returns what the receiver got and how its connection
    ended (None: a clean close; an exception: reset)."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    closed: asyncio.Future = loop.create_future()

    def on_data(d: bytes) -> None:
        received.extend(d)

    def on_closed(exc) -> None:
        if not closed.done():
            closed.set_result(exc)

    receiver.xmpp.add_event_handler("socks5_data", on_data)
    receiver.xmpp.add_event_handler("socks5_closed", on_closed)
    try:
        sock = await asyncio.wait_for(sender.xmpp["xep_0065"].handshake(receiver.jid, timeout=10), 20)
        assert sock is not None, "no bytestream established"
        for i in range(0, len(data), chunk):
            if sock.transport.is_closing():
                break
            await asyncio.wait_for(sock.write(data[i:i + chunk]), 20)
        sock.transport.close()
        how = await asyncio.wait_for(closed, 40)
    finally:
        receiver.xmpp.del_event_handler("socks5_data", on_data)
        receiver.xmpp.del_event_handler("socks5_closed", on_closed)
    return bytes(received), how


def audit(gw: Gateway) -> list[dict]:
    path = gw.dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if '"file-transfer"' in l]


def wait_audit(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = audit(gw)
        if len(records) >= count:
            return records
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} file-transfer audit records: {audit(gw)}")


def send(gw: Gateway, data: bytes, to: str = "bob", errors: list | None = None) -> tuple[bytes, object, dict]:
    """Send ``data`` from alice to ``to`` through the relay; the message errors alice receives
    (the gateway telling her of a refusal) are appended to ``errors``."""
    before = len(audit(gw))

    async def go():
        async with client(gw, "alice") as a, client(gw, to) as b:
            told: asyncio.Future = asyncio.get_running_loop().create_future()

            def on_error(msg) -> None:
                if errors is not None:
                    errors.append(msg)
                if not told.done():
                    told.set_result(msg)

            a.xmpp.add_event_handler("message_error", on_error)
            result = await transfer(a, b, data)
            if errors is not None:
                # The refusal notice follows the cut; wait for it (bounded).
                try:
                    await asyncio.wait_for(told, 10)
                except asyncio.TimeoutError:
                    pass
            return result

    got, how = run(go(), timeout=120)
    record = wait_audit(gw, before + 1)[before]
    return got, how, record


def metric(name: str) -> float:
    body = urllib.request.urlopen(f"http://{HOST}:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_clean_10mb_file_arrives_intact(gw: Gateway) -> None:
    data = os.urandom(10 * 1024 * 1024)
    bytes_before = metric("stanzawall_relay_bytes_out")
    got, how, record = send(gw, data)
    assert how is None, f"the receiver's connection was not closed cleanly: {how!r}"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert record["verdict"] == "pass", record
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["bytes"] == len(data)
    assert record["requester"].startswith("alice@example.test/") and record["target"].startswith("bob@example.test/")
    assert metric("stanzawall_relay_bytes_out") - bytes_before >= len(data)


def test_eicar_is_cut_and_audited(gw: Gateway) -> None:
    got, how, record = send(gw, EICAR)
    assert how is not None, "a refused file must not end like a complete one"
    assert got != EICAR and len(got) < len(EICAR)
    assert (record["verdict"], record["detector"]) == ("block", "antivirus"), record
    assert "Local.EICAR" in record["detail"]


def test_eicar_inside_a_zip_is_cut(gw: Gateway) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("padding.bin", os.urandom(500_000), compress_type=zipfile.ZIP_STORED)
        z.writestr("readme/eicar.com", EICAR, compress_type=zipfile.ZIP_DEFLATED)
    data = buf.getvalue()
    got, how, record = send(gw, data)
    assert how is not None
    assert len(got) < len(data), "the receiver got the whole archive"
    assert data.startswith(got), "what was released is the file's beginning"
    assert (record["verdict"], record["detector"], record["media_type"]) == ("block", "antivirus", "application/zip"), record


def test_a_file_over_the_cap_is_cut(gw: Gateway) -> None:
    data = os.urandom(MAX_BYTES + 1_000_000)
    got, how, record = send(gw, data)
    assert how is not None
    assert len(got) <= MAX_BYTES
    assert (record["verdict"], record["detector"]) == ("block", "size"), record


def test_a_dlp_keyword_file_is_cut(gw: Gateway) -> None:
    text = (b"Minutes of the board meeting.\n" * 20_000) + b"CONFIDENTIAL: card 4111 1111 1111 1111\n" + (b"end\n" * 50_000)
    got, how, record = send(gw, text)
    assert how is not None
    assert b"CONFIDENTIAL" not in got
    assert (record["verdict"], record["detector"]) == ("block", "dlp"), record


def test_direct_streamhosts_are_removed_from_offers(gw: Gateway) -> None:
    decoy = socket.socket()
    decoy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    decoy.bind((HOST, DECOY_PORT))
    decoy.listen(4)
    decoy.settimeout(0.2)
    seen: list[list[tuple[str, str, str]]] = []

    async def go():
        async with client(gw, "alice") as a, client(gw, "bob") as b:
            def watch(stanza):
                q = stanza.xml.find(f"{{{NS_BYTESTREAMS}}}query")
                if stanza.name == "iq" and q is not None and q.find(f"{{{NS_BYTESTREAMS}}}streamhost") is not None:
                    seen.append([(h.get("jid"), h.get("host"), h.get("port"))
                                 for h in q.findall(f"{{{NS_BYTESTREAMS}}}streamhost")])
                return stanza
            b.xmpp.add_filter("in", watch)
            iq = a.xmpp.Iq(sto=b.jid, stype="set")
            iq["socks"]["sid"] = "direct-offer-1"
            iq["socks"].add_streamhost(a.jid, HOST, str(DECOY_PORT))
            iq["socks"].add_streamhost("proxy.elsewhere.test", "192.0.2.1", "7777")
            used = await iq.send(timeout=15)
            return used["socks"]["streamhost_used"]["jid"]

    try:
        used = run(go(), timeout=60)
        dialed = 0
        for _ in range(3):
            try:
                decoy.accept()[0].close()
                dialed += 1
            except socket.timeout:
                pass
    finally:
        decoy.close()
    assert seen == [[(PROXY_JID, HOST, str(RELAY_PORT))]], seen
    assert str(used) == PROXY_JID
    assert dialed == 0, "the receiver dialed the sender's direct address"


def socks_connect(atyp_addr: bytes) -> bytes:
    with socket.create_connection((HOST, RELAY_PORT), timeout=5) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00" + atyp_addr)
        return s.recv(64)


def test_the_relay_never_dials_and_pairs_nothing_unactivated(gw: Gateway) -> None:
    # CONNECT to 127.0.0.1:22 and to a host name: refused (address type / not allowed).
    assert socks_connect(b"\x01\x7f\x00\x00\x01\x00\x16")[1] == 0x08
    assert socks_connect(b"\x03\x0bexample.com\x00\x50")[1] == 0x02
    digest = hashlib.sha1(os.urandom(8)).hexdigest().encode()
    req = b"\x05\x01\x00\x03" + bytes([len(digest)]) + digest + b"\x00\x00"
    with socket.create_connection((HOST, RELAY_PORT), timeout=5) as t, \
            socket.create_connection((HOST, RELAY_PORT), timeout=5) as r:
        for s in (t, r):
            s.sendall(b"\x05\x01\x00")
            assert s.recv(2) == b"\x05\x00"
            s.sendall(req)
            assert s.recv(64)[1] == 0x00
            time.sleep(0.2)
        r.sendall(b"not activated: must never reach the target")
        t.settimeout(1.0)
        with pytest.raises(socket.timeout):
            t.recv(64)


def upload(gw: Gateway, name: str, data: bytes, ctype: str = "application/octet-stream") -> tuple[str, int, bytes, dict]:
    """Request a slot through the gateway, PUT ``data`` to it; returns the get URL, the PUT's
    status and body, and the audit record."""
    import http.client
    import urllib.parse
    import xml.etree.ElementTree as ET
    before = len(audit(gw))

    async def slot():
        async with client(gw, "alice") as a:
            iq = a.xmpp.Iq(sto=UPLOAD_JID, stype="get")
            iq.xml.append(ET.fromstring(
                f"<request xmlns='{NS_UPLOAD}' filename='{name}' size='{len(data)}' content-type='{ctype}'/>"))
            resp = await iq.send(timeout=10)
            s = resp.xml.find(f"{{{NS_UPLOAD}}}slot")
            put = s.find(f"{{{NS_UPLOAD}}}put")
            headers = {h.get("name"): (h.text or "") for h in put.findall(f"{{{NS_UPLOAD}}}header")}
            return put.get("url"), headers, s.find(f"{{{NS_UPLOAD}}}get").get("url")

    put_url, headers, get_url = run(slot(), timeout=60)
    base = f"http://{HOST}:{UPLOAD_PORT}/"
    assert put_url.startswith(base) and get_url.startswith(base), (put_url, get_url)
    u = urllib.parse.urlsplit(put_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("PUT", u.path + (f"?{u.query}" if u.query else ""), body=data,
                 headers={**headers, "Content-Type": ctype, "Content-Length": str(len(data))})
    r = conn.getresponse()
    status, body = r.status, r.read()
    conn.close()
    record = wait_audit(gw, before + 1)[before]
    return get_url, status, body, record


def download(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_upload_clean_file_is_stored_and_downloadable(gw: Gateway) -> None:
    data = os.urandom(3 * 1024 * 1024)
    get_url, status, body, record = upload(gw, "clean.bin", data)
    assert status == 201, (status, body)
    assert (record["transport"], record["verdict"]) == ("upload", "pass"), record
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    status, got = download(get_url)
    assert status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_http_upload_of_eicar_is_refused_and_not_stored(gw: Gateway) -> None:
    get_url, status, body, record = upload(gw, "eicar.txt", EICAR, "text/plain")
    assert status == 403, (status, body)
    assert b"antivirus" in body and b"Local.EICAR" in body, body
    assert (record["transport"], record["verdict"], record["detector"]) == ("upload", "block", "antivirus"), record
    status, got = download(get_url)
    assert status != 200 and EICAR not in got, (status, got)


# --- the upload listener over TLS (kind = "http-upload-tls") ---------------------------------

TLS_GW_PORT = 25650
TLS_UPLOAD_PORT = 25651
TLS_RELAY_PORT = 25652
#: A second certificate, served only to clients whose SNI names it.
SNI_NAME = "files.sni.test"


@pytest.fixture(scope="module")
def gw_tls(tmp: Path, pki: Pki, prosody_ft: ProsodyInstance, clamd: ClamdInstance) -> Gateway:
    """A second gateway in front of the same Prosody whose upload listener terminates TLS:
    slots point at ``https://127.0.0.1:25651`` (the first certificate also names the address),
    a second ``[[tls.certificate]]`` answers SNI ``files.sni.test``."""
    d = tmp / "gateway-upload-tls"
    d.mkdir(parents=True, exist_ok=True)
    cert, key = pki.issue("gw-upload-ip", ["example.test", "*.example.test"], ip_addresses=[HOST])
    sni_cert, sni_key = pki.issue("gw-upload-sni", [SNI_NAME])
    extra = f"""
[[tls.certificate]]
domains = ["{SNI_NAME}"]
cert = "{sni_cert}"
key = "{sni_key}"

[[listener]]
name = "upload-tls"
kind = "http-upload-tls"
bind = "{HOST}:{TLS_UPLOAD_PORT}"
backend = "{HOST}:{PROSODY_HTTP}"
[[listener]]
name = "relay"
kind = "socks5"
bind = "{HOST}:{TLS_RELAY_PORT}"

[file_transfer]
proxy_jid = "{PROXY_JID}"
upload_url = "https://{HOST}:{TLS_UPLOAD_PORT}"
max_bytes = {MAX_BYTES}
clamd = "{HOST}:{CLAMD_PORT}"
scan_timeout = "20s"

[audit]
path = "audit.jsonl"
"""
    g = Gateway(d, cert, key, [Listener("c2s", "c2s", TLS_GW_PORT, prosody_ft.port)], extra_toml=extra).start()
    g.ca = pki.ca_cert  # type: ignore[attr-defined]
    g.certs = {"default": cert, "sni": sni_cert}  # type: ignore[attr-defined]
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


def tls_context(gw: Gateway) -> "ssl.SSLContext":
    import ssl
    return ssl.create_default_context(cafile=str(gw.ca))  # type: ignore[attr-defined]


def slix_upload(gw: Gateway, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes,
                ctype: str) -> tuple[str | None, Exception | None, dict]:
    """Upload ``data`` with slixmpp's own XEP-0363 plugin (slot request, PUT with aiohttp)
    through ``gw``; returns the get URL or the plugin's exception, and the audit
    record."""
    import aiohttp.connector
    # aiohttp verifies with ssl.create_default_context(), which reads SSL_CERT_FILE: trust the
    # test CA only, as the XMPP clients do (the context is cached per process: rebuild it).
    monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca))  # type: ignore[attr-defined]
    aiohttp.connector.TCPConnector._make_ssl_context.cache_clear()
    before = len(audit(gw))

    async def go():
        c = Client("alice@example.test/up", USERS["alice"], HOST, gw.port("c2s"), ca_file=gw.ca)  # type: ignore[attr-defined]
        c.xmpp.register_plugin("xep_0030")
        c.xmpp.register_plugin("xep_0363")
        # slixmpp 1.8.3's service discovery (get_info_from_domain) hands coroutines to
        # asyncio.wait, which Python 3.11 refuses: name the service, as a client that
        # discovered it earlier would. The slot request and the PUT are the plugin's own.
        c.xmpp["xep_0363"].upload_service = UPLOAD_JID
        async with c:
            try:
                url = await c.xmpp["xep_0363"].upload_file(
                    name, size=len(data), content_type=ctype, input_file=io.BytesIO(data),
                    domain="example.test", timeout=30)
                return url, None
            except Exception as e:  # the plugin's HTTPError carries the gateway's answer
                return None, e

    try:
        url, err = run(go(), timeout=90)
    finally:
        aiohttp.connector.TCPConnector._make_ssl_context.cache_clear()
    try:
        record = wait_audit(gw, before + 1)[before]
    except AssertionError as e:
        raise AssertionError(f"{e}; the upload ended with {err!r}") from None
    return url, err, record


def download_tls(gw: Gateway, url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30, context=tls_context(gw)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_https_upload_with_slixmpp_is_stored_and_downloadable_over_https(
        gw_tls: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(2 * 1024 * 1024)
    url, err, record = slix_upload(gw_tls, monkeypatch, "report.bin", data, "application/octet-stream")
    assert err is None, f"upload failed: {err!r}"
    assert url is not None and url.startswith(f"https://{HOST}:{TLS_UPLOAD_PORT}/"), url
    assert (record["transport"], record["verdict"]) == ("upload", "pass"), record
    assert record["sha256"] == hashlib.sha256(data).hexdigest(), record
    status, got = download_tls(gw_tls, url)
    assert status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_https_upload_of_eicar_is_refused_with_the_reason_reaching_the_client(
        gw_tls: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    url, err, record = slix_upload(gw_tls, monkeypatch, "eicar.txt", EICAR, "text/plain")
    assert url is None and err is not None, "the upload was accepted"
    assert type(err).__name__ == "HTTPError" and err.args[0] == 403, repr(err)
    assert "antivirus" in err.args[1] and "Local.EICAR" in err.args[1], err.args
    assert (record["transport"], record["verdict"], record["detector"]) == ("upload", "block", "antivirus"), record


def test_https_upload_listener_picks_the_certificate_by_sni_and_speaks_http11(gw_tls: Gateway) -> None:
    import ssl

    from harness.ca import cert_der

    def handshake(server_name: str | None, alpn: list[str]) -> tuple[bytes, str | None]:
        ctx = tls_context(gw_tls)
        ctx.check_hostname = server_name is not None
        ctx.set_alpn_protocols(alpn)
        with socket.create_connection((HOST, TLS_UPLOAD_PORT), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as t:
                return t.getpeercert(binary_form=True), t.selected_alpn_protocol()

    sni_der, alpn = handshake(SNI_NAME, ["h2", "http/1.1"])
    certs = gw_tls.certs  # type: ignore[attr-defined]
    assert sni_der == cert_der(certs["sni"]) and alpn == "http/1.1"
    default_der, _ = handshake(None, ["http/1.1"])
    assert default_der == cert_der(certs["default"])
    # A client that speaks only h2 is refused in the handshake (no_application_protocol).
    with pytest.raises(ssl.SSLError):
        handshake(SNI_NAME, ["h2"])
    gw_tls.wait_log("upload connection: TLS handshake failed")


def test_plain_http_to_the_tls_upload_listener_is_refused(gw_tls: Gateway) -> None:
    import http.client
    mark = len(gw_tls.log())
    before = len(audit(gw_tls))
    conn = http.client.HTTPConnection(HOST, TLS_UPLOAD_PORT, timeout=10)
    conn.request("GET", "/file_share/anything/x.txt")
    r = conn.getresponse()
    status, body = r.status, r.read()
    conn.close()
    assert status == 400 and b"https://" in body, (status, body)
    gw_tls.wait_log("plain HTTP on the TLS port", after=mark)
    # Raw garbage instead of a ClientHello: closed, logged, nothing answered.
    with socket.create_connection((HOST, TLS_UPLOAD_PORT), timeout=10) as s:
        s.sendall(b"\x00\x01\x02 not tls")
        try:
            assert s.recv(64) == b""
        except ConnectionResetError:
            pass  # closed with our bytes unread: the kernel resets
    gw_tls.wait_log("not a TLS handshake", after=mark)
    assert len(audit(gw_tls)) == before, "a refused connection reached the upload service"


def send_ibb(gw: Gateway, data: bytes) -> tuple[bytes, object]:
    """Send ``data`` in-band (XEP-0047, 4 KiB blocks); returns what the receiver gathered and
    the error the sender's close got (None: accepted)."""
    from slixmpp.exceptions import IqError

    async def go():
        async with client(gw, "alice") as a, client(gw, "bob") as b:
            started: asyncio.Future = asyncio.get_running_loop().create_future()
            b.xmpp.add_event_handler("ibb_stream_start", lambda st: started.done() or started.set_result(st))
            stream = await a.xmpp["xep_0047"].open_stream(b.jid, timeout=10)
            incoming = await asyncio.wait_for(started, 10)
            gathering = asyncio.ensure_future(incoming.gather(timeout=60))
            error = None
            try:
                await stream.sendall(data, timeout=10)
                await stream.close(timeout=10)
            except IqError as e:
                error = e.iq["error"]
            got = await asyncio.wait_for(gathering, 60)
            return got, error

    return run(go(), timeout=120)


def test_ibb_clean_file_arrives_intact(gw: Gateway) -> None:
    data = os.urandom(200_000)
    got, error = send_ibb(gw, data)
    assert error is None, error
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_ibb_hash_listed_file_is_cut_at_close(gw: Gateway) -> None:
    got, error = send_ibb(gw, KNOWN_BAD)
    assert error is not None and error["condition"] == "not-acceptable", error
    assert "hash" in error["text"], error["text"]
    assert len(got) < len(KNOWN_BAD), "the receiver got the whole file"


def test_ibb_dlp_file_is_cut_mid_stream(gw: Gateway) -> None:
    text = (b"Minutes of the board meeting.\n" * 2000) + b"CONFIDENTIAL\n" + (b"end\n" * 5000)
    got, error = send_ibb(gw, text)
    assert error is not None and error["condition"] == "not-acceptable", error
    assert b"CONFIDENTIAL" not in got


def test_file_chain_blocks_a_relay_transfer_by_size_and_tells_the_sender(gw: Gateway) -> None:
    data = os.urandom(2_000_000)
    errors: list = []
    got, how, record = send(gw, data, to="carol", errors=errors)
    assert how is not None, "a refused file must not end like a complete one"
    assert len(got) < len(data)
    assert (record["transport"], record["verdict"], record["detector"], record["rule"]) == \
        ("s5b", "block", "rule", "carol-small-files"), record
    assert errors, "the sender was not told"
    raw = str(errors[0])
    assert errors[0]["from"] == PROXY_JID and "not-acceptable" in raw, raw
    assert "carol accepts files up to 1 MB" in raw, raw


def test_an_upload_slot_for_an_executable_is_refused_with_the_rules_text(gw: Gateway) -> None:
    import xml.etree.ElementTree as ET
    from slixmpp.exceptions import IqError

    async def go():
        async with client(gw, "alice") as a:
            iq = a.xmpp.Iq(sto=UPLOAD_JID, stype="get")
            iq.xml.append(ET.fromstring(
                f"<request xmlns='{NS_UPLOAD}' filename='setup.exe' size='1000' content-type='application/octet-stream'/>"))
            try:
                await iq.send(timeout=10)
            except IqError as e:
                return str(e.iq)
            return None

    raw = run(go(), timeout=60)
    assert raw is not None, "the slot was granted"
    assert "not-acceptable" in raw and "executables are not accepted" in raw, raw


def jingle_offer(a: Client, to: str, name: str, size: int) -> "object":
    import xml.etree.ElementTree as ET
    iq = a.xmpp.Iq(sto=to, stype="set")
    iq.xml.append(ET.fromstring(
        "<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='ft-offer-1' "
        f"initiator='{a.jid}'><content creator='initiator' name='file' senders='initiator'>"
        "<description xmlns='urn:xmpp:jingle:apps:file-transfer:5'><file>"
        f"<media-type>application/octet-stream</media-type><name>{name}</name><size>{size}</size>"
        "</file></description>"
        "<transport xmlns='urn:xmpp:jingle:transports:s5b:1' sid='s5b-1' mode='tcp'>"
        f"<candidate cid='c1' host='{HOST}' jid='{a.jid}' port='{DECOY_PORT}' priority='8257636' type='direct'/>"
        "</transport></content></jingle>"))
    return iq


@pytest.mark.parametrize("to,name,size,text", [
    ("carol", "holiday.bin", 5_000_000, "carol accepts files up to 1 MB"),
    ("bob", "setup.exe", 1000, "executables are not accepted"),
])
def test_a_jingle_offer_is_refused_before_any_byte(gw: Gateway, to: str, name: str, size: int, text: str) -> None:
    from slixmpp.exceptions import IqError

    async def go():
        async with client(gw, "alice") as a, client(gw, to) as b:
            seen: list = []
            b.xmpp.add_filter("in", lambda st: (seen.append(str(st)) if "urn:xmpp:jingle:1" in str(st) else None) or st)
            try:
                await jingle_offer(a, b.jid, name, size).send(timeout=10)
                raw = None
            except IqError as e:
                raw = str(e.iq)
            await asyncio.sleep(0.5)
            return raw, seen

    raw, seen = run(go(), timeout=60)
    assert raw is not None, "the offer was accepted"
    assert "not-acceptable" in raw and text in raw, raw
    assert seen == [], f"the offer reached the receiver: {seen}"


def test_ibb_image_is_refused_by_the_file_chain(gw: Gateway) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(20_000)
    got, error = send_ibb(gw, png)
    assert error is not None and error["condition"] == "not-acceptable", error
    assert "images go by HTTP upload" in error["text"], error["text"]
    assert len(got) < len(png)


def test_ibb_eicar_is_blocked_by_clamd_and_audited(gw: Gateway) -> None:
    before = len(audit(gw))
    blocked_before = metric('stanzawall_file_transfers_total{transport="ibb",verdict="block",detector="antivirus"}')
    got, error = send_ibb(gw, EICAR)
    assert error is not None and error["condition"] == "not-acceptable", error
    assert "antivirus" in error["text"] and "Local.EICAR" in error["text"], error["text"]
    assert got != EICAR and len(got) < len(EICAR), got
    record = wait_audit(gw, before + 1)[before]
    assert (record["transport"], record["verdict"], record["detector"]) == ("ibb", "block", "antivirus"), record
    assert record["sender"].startswith("alice@example.test/") and record["recipient"].startswith("bob@example.test/")
    assert "log-every-ibb" in record["logged"], record
    after = metric('stanzawall_file_transfers_total{transport="ibb",verdict="block",detector="antivirus"}')
    assert after == blocked_before + 1


def test_ibb_clean_file_is_scanned_delivered_and_audited(gw: Gateway) -> None:
    before = len(audit(gw))
    bytes_before = metric('stanzawall_file_bytes_total{transport="ibb"}')
    data = os.urandom(150_000)
    got, error = send_ibb(gw, data)
    assert error is None, error
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    record = wait_audit(gw, before + 1)[before]
    assert (record["transport"], record["verdict"]) == ("ibb", "pass"), record
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data), record
    assert metric('stanzawall_file_bytes_total{transport="ibb"}') - bytes_before == len(data)


def test_scanner_down_blocks(gw: Gateway, clamd: ClamdInstance) -> None:
    clamd.stop()
    got, how, record = send(gw, b"harmless text, but nobody can scan it\n" * 100)
    assert how is not None
    assert (record["verdict"], record["detector"]) == ("block", "scanner-error"), record


# --- file quarantine (issue 13 item 5): refused toward the receiver, kept for review ----------

def make_token(path: Path, role: str, name: str) -> str:
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(path), "--role", role, "--name", name],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def api(gw: Gateway, method: str, path: str, role: str = "admin") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{HOST}:{ADMIN_PORT}{path}", method=method,
                                 headers={"Authorization": f"Bearer {gw.tokens[role]}"})  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def held_file(gw: Gateway, sha: str) -> dict:
    """The quarantine entry (kind file) of the content with SHA-256 ``sha``, as listed."""
    status, body = api(gw, "GET", "/api/v1/quarantine", "read")
    assert status == 200, body
    found = [e for e in body.get("entries", []) if e.get("kind") == "file" and (e.get("file") or {}).get("sha256") == sha]
    assert len(found) == 1, body
    return found[0]


def quarantine_metric(event: str, kind: str) -> float:
    body = urllib.request.urlopen(f"http://{HOST}:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    m = re.search(r'^stanzawall_quarantine_events_total\{event="%s",kind="%s"\} (\S+)$' % (event, kind), body, re.M)
    return float(m.group(1)) if m else 0.0


def review_and_delete(gw: Gateway, entry: dict, data: bytes) -> None:
    """The kept bytes are the file; release is refused (files are not delivered); delete
    removes the entry and its bytes."""
    stored = gw.dir / "state" / entry["file"]["path"]
    assert stored.is_file(), entry
    kept = stored.read_bytes()
    assert len(kept) == len(data) == entry["file"]["size"] and hashlib.sha256(kept).hexdigest() == entry["file"]["sha256"]
    status, body = api(gw, "POST", f"/api/v1/quarantine/{entry['id']}/release")
    assert status == 409 and "files are kept for review, not delivered" in json.dumps(body), (status, body)
    assert api(gw, "GET", f"/api/v1/quarantine/{entry['id']}", "read")[1]["state"] == "held"
    deleted = quarantine_metric("deleted", "file")
    status, body = api(gw, "DELETE", f"/api/v1/quarantine/{entry['id']}")
    assert status == 200, body
    assert not stored.exists(), "delete must remove the kept file"
    assert api(gw, "GET", f"/api/v1/quarantine/{entry['id']}", "read")[0] == 404
    assert quarantine_metric("deleted", "file") == deleted + 1
    # Copies of transfers that were not quarantined (every other test's) were removed at once.
    left = sorted(p.name for p in (gw.dir / "state" / "quarantine" / "files").iterdir())
    assert left == [], left


def quarantine_audit(gw: Gateway, qid: str) -> dict:
    path = gw.dir / "audit.jsonl"
    for _ in range(100):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("event") == "quarantine" and r.get("id") == qid:
                return r
        time.sleep(0.1)
    raise AssertionError(f"no quarantine audit record for {qid}")


def test_a_quarantined_upload_is_refused_and_kept_for_review(gw: Gateway) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    held = quarantine_metric("held", "file")
    get_url, status, body, record = upload(gw, "minutes.review", data)
    assert status == 403 and b"quarantine" in body, (status, body)
    assert (record["transport"], record["verdict"], record["detector"], record["rule"]) == \
        ("upload", "block", "quarantine", "review-uploads"), record
    assert record["sha256"] == sha and record["quarantine_id"], record
    status, got = download(get_url)
    assert status != 200 and got != data, "the upload service must not have the file"
    entry = held_file(gw, sha)
    assert entry["id"] == record["quarantine_id"] and entry["rule"] == "review-uploads" and entry["state"] == "held"
    assert (entry["file"]["name"], entry["file"]["transport"], entry["chain"]) == ("minutes.review", "upload", "file")
    assert quarantine_metric("held", "file") == held + 1
    a = quarantine_audit(gw, entry["id"])
    assert (a["outcome"], a["kind"], a["transport"], a["file"]["sha256"]) == ("held", "file", "upload", sha), a
    review_and_delete(gw, entry, data)


def test_a_quarantined_relay_transfer_is_cut_and_kept_for_review(gw: Gateway) -> None:
    data = b"%PDF-1.4\n" + os.urandom(600_000)
    sha = hashlib.sha256(data).hexdigest()
    errors: list = []
    got, how, record = send(gw, data, to="bob", errors=errors)
    assert how is not None, "a quarantined file must not end like a complete one"
    # Decided once the type is known: nothing at all reached bob.
    assert got == b"", len(got)
    assert (record["transport"], record["verdict"], record["detector"], record["rule"]) == \
        ("s5b", "block", "quarantine", "review-pdfs-for-bob"), record
    assert errors and "held for review" in str(errors[0]), errors
    entry = held_file(gw, sha)
    assert entry["file"]["media_type"] == "application/pdf" and entry["file"]["transport"] == "s5b", entry
    assert entry["from"].startswith("alice@example.test") and entry["to"].startswith("bob@example.test"), entry
    review_and_delete(gw, entry, data)
