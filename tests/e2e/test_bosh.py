"""The web door, BOSH part (issue 17): XMPP over BOSH (XEP-0124/0206) through the gateway to Prosody.

Real parts only: a real ``stanzawall run`` with a ``bosh`` listener in front of the private
Prosody's plain c2s port, headless Chromium (Debian's chromium + chromedriver, driven by
python3-selenium) running Strophe.js from Debian's libjs-strophe over BOSH in a small page
served over HTTP on loopback (its Origin is the one the listener allows, so every request is
a CORS request with a preflight), a slixmpp peer on the same gateway's STARTTLS listener, and
a raw BOSH client (python3 http.client over TLS) for retransmitted and out-of-order requests
and a dropped HTTP connection.

Ports: 25560 (bosh), 25561 (the page), 25562 (the gateway's c2s listener).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import http.server
import random
import shutil
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.client import Client, run
from harness.defaults import DOMAIN, GATEWAY_BOSH_C2S_PORT, GATEWAY_BOSH_PAGE_PORT, GATEWAY_BOSH_PORT, HOST
from harness.gateway import Gateway, Listener
from harness.raw import make_client_context

import test_web
from test_web import PAGE, POLICY, STROPHE, items, wait_until

PAGE_ORIGIN = f"http://{HOST}:{GATEWAY_BOSH_PAGE_PORT}"
BOSH_URL = f"https://{HOST}:{GATEWAY_BOSH_PORT}/http-bind"
NS_BIND = "http://jabber.org/protocol/httpbind"
NS = f"xmlns='{NS_BIND}'"
XBOSH = "xmlns:xmpp='urn:xmpp:xbosh'"
MAX_REQUEST = 8192
#: The `wait` the raw client asks for: a request with nothing to carry back is answered after it.
WAIT = 2


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody) -> Gateway:
    g = Gateway(tmp / "gw-bosh", pki.cert, pki.key, [
        Listener("bosh", "bosh", GATEWAY_BOSH_PORT, prosody.port,
                 {"allowed_origins": [PAGE_ORIGIN], "max_request_bytes": MAX_REQUEST}),
        Listener("c2s", "c2s", GATEWAY_BOSH_C2S_PORT, prosody.port),
    ], extra_toml=POLICY)
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


@pytest.fixture(scope="module")
def page(tmp: Path):
    """The WebSocket test's page (Strophe picks BOSH for an https:// URL), served on its own port."""
    if not STROPHE.is_file():
        pytest.skip("libjs-strophe is not installed (scripts/install-test-deps.sh)")
    root = tmp / "bosh-page"
    root.mkdir(exist_ok=True)
    shutil.copyfile(STROPHE, root / "strophe.js")
    (root / "index.html").write_text(PAGE)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((HOST, GATEWAY_BOSH_PAGE_PORT),
                                             functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{PAGE_ORIGIN}/index.html"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


#: Headless Chromium, as in the WebSocket test.
browser = test_web.browser


def test_browser_client_over_bosh_meets_the_same_policy(gw, page, browser, prosody, pki):
    browser.get(page)
    browser.execute_script("start(arguments[0], arguments[1], arguments[2]);",
                           BOSH_URL, prosody.jid("alice"), prosody.users["alice"])
    jid = wait_until(lambda: browser.find_element("id", "jid").text, 20, "Strophe CONNECTED over BOSH")
    assert jid.startswith(f"{prosody.jid('alice')}/"), jid

    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_BOSH_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            browser.execute_script("send(arguments[0], arguments[1], 'b1');", bob.jid, "hello over BOSH")
            m = await bob.next_message(timeout=10)
            assert m.body == "hello over BOSH" and m.from_.startswith(prosody.jid("alice") + "/")
            # A blocked link bounces back into the page with the rule's text; bob never sees it.
            browser.execute_script("send(arguments[0], arguments[1], 'b2');", bob.jid,
                                   "look at https://evil.example/payload")
            errors = await asyncio.to_thread(wait_until, lambda: items(browser, "errors"),
                                             10, "the bounce in the page")
            assert errors == ["b2: Link blocked by policy"], errors
            browser.execute_script("send(arguments[0], arguments[1], 'b3');", bob.jid, "sentinel")
            m = await bob.next_message(timeout=10)
            assert m.body == "sentinel", "the blocked message never reached bob"
            # slixmpp -> browser (c2s-out through the door, carried by a held request).
            bob.send_message(jid, "hello from slixmpp")
            got = await asyncio.to_thread(wait_until, lambda: items(browser, "received"), 10, "bob's message")
            assert got == [f"{prosody.jid('bob')}: hello from slixmpp"], got
    run(go())
    audit = (gw.dir / "audit.jsonl").read_text()
    assert '"listener":"bosh"' in audit and '"rule":"malicious-links"' in audit, audit
    assert "session bound" in gw.log()


# -- a raw BOSH client ----------------------------------------------------------------------------

class Bosh:
    """A BOSH client by hand: each request on the HTTP connection it is given, so a test can
    retransmit, reorder and drop connections at will."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.rid = random.randrange(1 << 40, 1 << 41)
        self.sid: str | None = None
        self.jid: str | None = None

    def conn(self) -> http.client.HTTPSConnection:
        c = http.client.HTTPSConnection(HOST, GATEWAY_BOSH_PORT, timeout=WAIT + 15)
        # Verify the certificate for the XMPP domain (the socket is ours; http.client uses it).
        raw = socket.create_connection((HOST, GATEWAY_BOSH_PORT), timeout=WAIT + 15)
        c.sock = self.ctx.wrap_socket(raw, server_hostname=DOMAIN)
        return c

    def body(self, rid: int, payload: str = "", attrs: str = "") -> str:
        return f"<body {NS} rid='{rid}' sid='{self.sid}'{attrs}>{payload}</body>"

    def next(self, payload: str = "", attrs: str = "") -> tuple[int, str]:
        rid = self.rid
        self.rid += 1
        return rid, self.body(rid, payload, attrs)

    @staticmethod
    def post(conn: http.client.HTTPSConnection, body: str, headers: dict[str, str] | None = None) -> str:
        conn.request("POST", "/http-bind", body=body.encode(),
                     headers={"Content-Type": "text/xml; charset=utf-8", **(headers or {})})
        r = conn.getresponse()
        text = r.read().decode()
        assert r.status == 200, (r.status, text)
        return text

    def send(self, conn, payload: str = "", attrs: str = "") -> ET.Element:
        _, body = self.next(payload, attrs)
        return ET.fromstring(self.post(conn, body))

    def until(self, conn, pred, what: str, tries: int = 8) -> ET.Element:
        """Poll with empty requests until an answer satisfies ``pred`` (each waits ``WAIT`` at most)."""
        for _ in range(tries):
            b = self.send(conn)
            assert b.get("type") != "terminate", ET.tostring(b)
            if pred(b):
                return b
        raise AssertionError(f"{what}: not within {tries} requests")

    def login(self, user: str, password: str) -> http.client.HTTPSConnection:
        c = self.conn()
        rid = self.rid
        self.rid += 1
        created = ET.fromstring(self.post(c, f"<body {NS} {XBOSH} rid='{rid}' to='{DOMAIN}' xml:lang='en' "
                                             f"wait='{WAIT}' hold='1' ver='1.6' xmpp:version='1.0'/>"))
        self.sid = created.get("sid")
        assert self.sid and created.get("requests") == "2" and created.get("wait") == str(WAIT), ET.tostring(created)
        if created.find("{http://etherx.jabber.org/streams}features") is None:
            self.until(c, lambda b: b.find("{http://etherx.jabber.org/streams}features") is not None, "features")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        b = self.send(c, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        if b.find("{urn:ietf:params:xml:ns:xmpp-sasl}success") is None:
            self.until(c, lambda b: b.find("{urn:ietf:params:xml:ns:xmpp-sasl}success") is not None, "SASL success")
        b = self.send(c, "", f" to='{DOMAIN}' xml:lang='en' {XBOSH} xmpp:restart='true'")
        if "urn:ietf:params:xml:ns:xmpp-bind" not in ET.tostring(b, encoding="unicode"):
            self.until(c, lambda b: "xmpp-bind" in ET.tostring(b, encoding="unicode"), "bind feature")
        b = self.send(c, "<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                         "<resource>raw</resource></bind></iq>")
        jid = b.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        if jid is None:
            b = self.until(c, lambda b: b.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") is not None, "bound JID")
            jid = b.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        self.jid = jid.text
        return c


def message(to: str, text: str, mid: str) -> str:
    return f"<message xmlns='jabber:client' to='{to}' type='chat' id='{mid}'><body>{text}</body></message>"


def bodies(b: ET.Element) -> list[str]:
    return [e.text or "" for e in b.iter("{jabber:client}body")]


class Background:
    """One request on its own connection in a thread (a held request blocks until answered)."""

    def __init__(self, bosh: Bosh, conn, body: str):
        self.result: str | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(bosh, conn, body), daemon=True)
        self.thread.start()

    def _run(self, bosh, conn, body):
        try:
            self.result = bosh.post(conn, body)
        except BaseException as e:  # noqa: BLE001 - reported by get()
            self.result = e

    def get(self, timeout: float = WAIT + 15) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request was never answered"
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture
def ctx(pki) -> ssl.SSLContext:
    return make_client_context(pki.ca_cert)


def test_a_retransmitted_rid_gets_the_identical_answer_and_reaches_the_server_once(gw, prosody, pki, ctx):
    bosh = Bosh(ctx)

    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_BOSH_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            bosh.login("alice", prosody.users["alice"])
            rid, body = bosh.next(message(bob.jid, "only once", "r1"))
            first = Background(bosh, bosh.conn(), body)
            m = await bob.next_message(timeout=10)
            assert m.body == "only once"
            # Held (hold = 1) until something comes back: bob's reply rides on it.
            bob.send_message(bosh.jid, "reply to r1")
            answer = await asyncio.to_thread(first.get)
            assert bodies(ET.fromstring(answer)) == ["reply to r1"], answer
            # The client lost that answer and sends the same rid on a new connection.
            again = await asyncio.to_thread(bosh.post, bosh.conn(), body)
            assert again == answer, "the identical response (XEP-0124 §14.3)"
            with pytest.raises(asyncio.TimeoutError):
                await bob.next_message(timeout=1.5)
            # The session goes on.
            c = bosh.conn()
            b = await asyncio.to_thread(bosh.send, c, message(bob.jid, "after", "r2"))
            assert (await bob.next_message(timeout=10)).body == "after"
            assert b.get("type") != "terminate"
    run(go())


def test_out_of_order_requests_are_processed_in_rid_order(gw, prosody, pki, ctx):
    bosh = Bosh(ctx)

    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_BOSH_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            bosh.login("alice", prosody.users["alice"])
            rid1, first = bosh.next(message(bob.jid, "first", "o1"))
            rid2, second = bosh.next(message(bob.jid, "second", "o2"))
            late = Background(bosh, bosh.conn(), second)
            # rid2 came before rid1: held back, nothing reaches the server.
            with pytest.raises(asyncio.TimeoutError):
                await bob.next_message(timeout=1.5)
            early = Background(bosh, bosh.conn(), first)
            got = [(await bob.next_message(timeout=10)).body, (await bob.next_message(timeout=10)).body]
            assert got == ["first", "second"]
            for r in (early, late):
                assert ET.fromstring(await asyncio.to_thread(r.get)).get("type") != "terminate"
    run(go())


def test_a_session_survives_a_dropped_http_connection_without_loss_or_duplication(gw, prosody, pki, ctx):
    bosh = Bosh(ctx)

    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_BOSH_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            bosh.login("alice", prosody.users["alice"])
            rid, body = bosh.next(message(bob.jid, "sent before the drop", "d1"))
            # Send, then drop the connection without reading the answer.
            c = bosh.conn()
            c.request("POST", "/http-bind", body=body.encode(), headers={"Content-Type": "text/xml"})
            assert (await bob.next_message(timeout=10)).body == "sent before the drop"
            c.sock.close()
            await asyncio.sleep(0.5)
            # What the server sends meanwhile is kept for the client.
            bob.send_message(bosh.jid, "while you were away")
            await asyncio.sleep(0.5)
            # The client retransmits the request whose answer it lost.
            again = ET.fromstring(await asyncio.to_thread(bosh.post, bosh.conn(), body))
            assert bodies(again) == ["while you were away"], ET.tostring(again)
            with pytest.raises(asyncio.TimeoutError):
                await bob.next_message(timeout=1.5)
            # Nothing is delivered twice afterwards either.
            after = await asyncio.to_thread(bosh.send, bosh.conn())
            assert bodies(after) == [] and after.get("type") != "terminate", ET.tostring(after)
    run(go())


def test_refusals_over_http(gw, ctx):
    bosh = Bosh(ctx)
    create = f"<body {NS} {XBOSH} rid='1' to='{DOMAIN}' wait='{WAIT}' hold='1' xmpp:version='1.0'/>"
    # A foreign page's Origin.
    c = bosh.conn()
    c.request("POST", "/http-bind", body=create.encode(), headers={"Origin": "https://evil.example"})
    r = c.getresponse()
    assert r.status == 403 and "allowed_origins" in r.read().decode()
    # Over the cap: refused from the Content-Length, before the body is read.
    c = bosh.conn()
    c.request("POST", "/http-bind", body=b"x" * (MAX_REQUEST + 1))
    r = c.getresponse()
    assert r.status == 413
    # An unknown session, a body that is not XML.
    assert "condition='item-not-found'" in Bosh.post(bosh.conn(), f"<body {NS} rid='5' sid='nosuchsession'/>")
    assert "condition='bad-request'" in Bosh.post(bosh.conn(), "<body><unclosed></body>")
    # The CORS preflight of the page's origin.
    c = bosh.conn()
    c.request("OPTIONS", "/http-bind", headers={"Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST"})
    r = c.getresponse()
    r.read()
    assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == PAGE_ORIGIN
    # host-meta lists the BOSH endpoint.
    c = bosh.conn()
    c.request("GET", "/.well-known/host-meta.json", headers={"Host": DOMAIN})
    r = c.getresponse()
    assert r.status == 200
    assert '"rel":"urn:xmpp:alt-connections:xbosh","href":"https://example.test/http-bind"' in r.read().decode()
