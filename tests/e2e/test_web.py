"""The web door (issue 17): XMPP over WebSocket (RFC 7395) through the gateway to Prosody.

Real parts only: a real ``stanzawall run`` with a ``websocket`` listener in front of the
private Prosody's plain c2s port, headless Chromium (Debian's chromium + chromedriver, driven
by python3-selenium) running Strophe.js from Debian's libjs-strophe in a small page served
over HTTP on loopback (its Origin is the one the listener allows), a slixmpp peer on the same
gateway's STARTTLS listener, and raw WebSocket clients (python3-websockets) for the framing
errors. The page shows what it receives in its DOM; the tests read the DOM.

Ports: 25500 (websocket), 25501 (the page), 25502 (the gateway's c2s listener).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from harness.client import Client, run
from harness.defaults import DOMAIN, GATEWAY_WEB_C2S_PORT, GATEWAY_WEB_PAGE_PORT, GATEWAY_WEB_PORT, HOST
from harness.gateway import Gateway, Listener
from harness.raw import make_client_context

websockets = pytest.importorskip("websockets", reason="python3-websockets is needed (scripts/install-test-deps.sh)")
import websockets.exceptions  # noqa: E402
import websockets.frames  # noqa: E402

STROPHE = Path("/usr/share/javascript/strophe/strophe.js")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_ORIGIN = f"http://{HOST}:{GATEWAY_WEB_PAGE_PORT}"
WS_URL = f"wss://{HOST}:{GATEWAY_WEB_PORT}/xmpp-websocket"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f"<open xmlns='{NS_FRAMING}' to='{DOMAIN}' version='1.0'/>"
MAX_FRAME = 4096

POLICY = """
[audit]
path = "audit.jsonl"

[list.bad_urls]
entries = ["evil.example"]

[[rule]]
name   = "malicious-links"
when   = { kind = "message", url_in = "bad_urls" }
action = "bounce"
error  = "policy-violation"
text   = "Link blocked by policy"
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stanzawall web door</title>
<script src="strophe.js"></script>
<script>
window.statuses = [];
function show(id, text) {
  const li = document.createElement('li');
  li.textContent = text;
  document.getElementById(id).appendChild(li);
}
function start(url, jid, password) {
  const conn = new Strophe.Connection(url);
  window.conn = conn;
  conn.addHandler(function (m) {
    const type = m.getAttribute('type');
    const body = m.getElementsByTagName('body')[0];
    if (type === 'error') {
      const text = m.getElementsByTagName('text')[0];
      show('errors', m.getAttribute('id') + ': ' + (text ? Strophe.getText(text) : '(no text)'));
    } else if (body) {
      show('received', Strophe.getBareJidFromJid(m.getAttribute('from')) + ': ' + Strophe.getText(body));
    }
    return true;
  }, null, 'message');
  conn.connect(jid, password, function (status, condition) {
    window.statuses.push(status);
    if (status === Strophe.Status.CONNECTED) {
      document.getElementById('jid').textContent = conn.jid;
      conn.send($pres());
    } else if (status === Strophe.Status.DISCONNECTED) {
      document.getElementById('state').textContent = 'disconnected ' + (condition || '');
    } else if (status === Strophe.Status.AUTHFAIL || status === Strophe.Status.CONNFAIL) {
      document.getElementById('state').textContent = 'failed ' + status + ' ' + (condition || '');
    }
  });
}
function send(to, body, id) {
  window.conn.send($msg({to: to, type: 'chat', id: id}).c('body').t(body));
}
</script></head>
<body><p id="jid"></p><p id="state"></p><ul id="received"></ul><ul id="errors"></ul></body></html>
"""


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody) -> Gateway:
    g = Gateway(tmp / "gw-web", pki.cert, pki.key, [
        Listener("web", "websocket", GATEWAY_WEB_PORT, prosody.port,
                 {"allowed_origins": [PAGE_ORIGIN], "max_frame_bytes": MAX_FRAME}),
        Listener("c2s", "c2s", GATEWAY_WEB_C2S_PORT, prosody.port),
    ], extra_toml=POLICY)
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


@pytest.fixture(scope="module")
def page(tmp: Path):
    """The test page and strophe.js, served over HTTP on loopback (the Origin is this server's)."""
    if not STROPHE.is_file():
        pytest.skip("libjs-strophe is not installed (scripts/install-test-deps.sh)")
    root = tmp / "web-page"
    root.mkdir(exist_ok=True)
    shutil.copyfile(STROPHE, root / "strophe.js")
    (root / "index.html").write_text(PAGE)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((HOST, GATEWAY_WEB_PAGE_PORT),
                                             functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{PAGE_ORIGIN}/index.html"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-test-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                # The gateway's certificate is issued by the test CA, which this throwaway
                # profile does not trust; what is under test is the gateway, not PKI.
                "--ignore-certificate-errors", "--user-data-dir=/tmp/stanzawall-web-chromium"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(10)
    yield driver
    driver.quit()


def wait_until(pred, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def items(driver, list_id: str) -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{list_id} li')).map(e => e.textContent);")


def test_browser_client_over_websocket_meets_the_same_policy(gw, page, browser, prosody, pki):
    browser.get(page)
    browser.execute_script("start(arguments[0], arguments[1], arguments[2]);",
                           WS_URL, prosody.jid("alice"), prosody.users["alice"])
    jid = wait_until(lambda: browser.find_element("id", "jid").text, what="Strophe CONNECTED")
    assert jid.startswith(f"{prosody.jid('alice')}/"), jid

    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_WEB_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            # Browser -> slixmpp, through the WebSocket door and the policy.
            browser.execute_script("send(arguments[0], arguments[1], 'w1');", bob.jid, "hello from the browser")
            m = await bob.next_message(timeout=10)
            assert m.body == "hello from the browser" and m.from_.startswith(prosody.jid("alice") + "/")
            # A blocked link bounces back into the page with the rule's text; bob never sees it.
            browser.execute_script("send(arguments[0], arguments[1], 'w2');", bob.jid,
                                   "look at https://evil.example/payload")
            errors = await asyncio.to_thread(wait_until, lambda: items(browser, "errors"),
                                             10, "the bounce in the page")
            assert errors == ["w2: Link blocked by policy"], errors
            browser.execute_script("send(arguments[0], arguments[1], 'w3');", bob.jid, "sentinel")
            m = await bob.next_message(timeout=10)
            assert m.body == "sentinel", "the blocked message never reached bob"
            # slixmpp -> browser (c2s-out through the door).
            bob.send_message(jid, "hello from slixmpp")
            got = await asyncio.to_thread(wait_until, lambda: items(browser, "received"), 10, "bob's message")
            assert got == [f"{prosody.jid('bob')}: hello from slixmpp"], got
    run(go())
    audit = (gw.dir / "audit.jsonl").read_text()
    assert '"listener":"web"' in audit and '"rule":"malicious-links"' in audit, audit
    assert "session bound" in gw.log()


# -- raw WebSocket clients: the framing errors ---------------------------------------------------

#: The client TLS context trusting the test CA only (set per test by ``_client_tls``).
_CTX: list[ssl.SSLContext] = []


def _ctx() -> ssl.SSLContext:
    return _CTX[0]


@pytest.fixture(autouse=True)
def _client_tls(pki):
    _CTX[:] = [make_client_context(pki.ca_cert)]


def connect(**kw):
    kw.setdefault("subprotocols", ["xmpp"])
    kw.setdefault("origin", PAGE_ORIGIN)
    return websockets.connect(WS_URL, ssl=_ctx(), server_hostname=DOMAIN, open_timeout=10,
                              close_timeout=5, **kw)


async def recv(ws, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


async def login(ws, user: str, password: str) -> None:
    """SASL PLAIN and bind over the framed stream, by hand."""
    await ws.send(OPEN)
    assert (await recv(ws)).startswith(f"<open xmlns='{NS_FRAMING}' from='{DOMAIN}'")
    features = await recv(ws)
    assert features.startswith("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"), features
    assert "PLAIN" in features, features
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    await ws.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert (await recv(ws)).startswith("<success"), "SASL PLAIN through the door"
    await ws.send(OPEN)
    assert (await recv(ws)).startswith("<open ")
    assert "urn:ietf:params:xml:ns:xmpp-bind" in await recv(ws)
    await ws.send("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert "<jid>" in await recv(ws)


async def closed_with(ws) -> tuple[list[str], int | None]:
    """Everything received until the gateway closes, and the close code."""
    got = []
    try:
        for _ in range(20):
            got.append(await recv(ws))
    except websockets.exceptions.ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), 5)
    return got, ws.close_code


def test_two_elements_in_one_message_are_refused_and_never_delivered(gw, prosody, pki):
    async def go():
        bob = Client(prosody.jid("bob"), prosody.users["bob"], HOST, GATEWAY_WEB_C2S_PORT, ca_file=pki.ca_cert)
        async with bob:
            async with connect() as ws:
                await login(ws, "alice", prosody.users["alice"])
                one = f"<message xmlns='jabber:client' to='{bob.jid}' type='chat'><body>one</body></message>"
                await ws.send(one + one.replace(">one<", ">two<"))
                got, code = await closed_with(ws)
            assert got[0].startswith("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"), got
            assert "<not-well-formed" in got[0] and "exactly one XML element" in got[0], got
            assert got[1] == f"<close xmlns='{NS_FRAMING}'/>", got
            assert code == 1000
            with pytest.raises(asyncio.TimeoutError):
                await bob.next_message(timeout=1.5)
    run(go())


def test_invalid_utf8_in_a_text_frame_closes_with_1007(gw, prosody):
    async def go():
        async with connect() as ws:
            await login(ws, "alice", prosody.users["alice"])
            await ws.write_frame(True, websockets.frames.OP_TEXT,
                                 b"<message xmlns='jabber:client' to='bob@example.test'><body>\xff\xfe</body></message>")
            got, code = await closed_with(ws)
        assert code == 1007, (code, got)
        assert "<unsupported-encoding" in got[0], got
    run(go())


def test_a_frame_over_the_cap_closes_with_1009(gw, prosody):
    async def go():
        async with connect() as ws:
            await login(ws, "alice", prosody.users["alice"])
            await ws.send(f"<message xmlns='jabber:client' to='bob@example.test'><body>{'x' * MAX_FRAME}</body></message>")
            got, code = await closed_with(ws)
        assert code == 1009, (code, got)
        assert "<policy-violation" in got[0] and f"exceeds {MAX_FRAME} bytes" in got[0], got
    run(go())


def test_binary_frames_close_with_1003(gw):
    async def go():
        async with connect() as ws:
            await ws.send(OPEN.encode())
            got, code = await closed_with(ws)
        assert code == 1003, (code, got)
    run(go())


@pytest.mark.parametrize("kw,status", [
    ({"origin": "https://evil.example"}, 403),
    ({"subprotocols": None}, 400),
])
def test_handshakes_refused(gw, kw, status):
    async def go():
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            async with connect(**kw):
                pass
        assert e.value.status_code == status
    run(go())
    assert f"HTTP {status}" in gw.log()


def test_host_meta_points_at_the_websocket(gw):
    def get(path: str, host: str) -> str:
        with socket.create_connection((HOST, GATEWAY_WEB_PORT), timeout=5) as raw:
            with _ctx().wrap_socket(raw, server_hostname=DOMAIN) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                out = b""
                for _ in range(100):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
        return out.decode()
    xrd = get("/.well-known/host-meta", f"{DOMAIN}:{GATEWAY_WEB_PORT}")
    assert xrd.startswith("HTTP/1.1 200 OK\r\n"), xrd
    assert (f"<Link rel='urn:xmpp:alt-connections:websocket' "
            f"href='wss://{DOMAIN}:{GATEWAY_WEB_PORT}/xmpp-websocket'/>") in xrd, xrd
    js = get("/.well-known/host-meta.json", DOMAIN)
    assert '"href":"wss://example.test/xmpp-websocket"' in js, js
    assert get("/.well-known/host-meta", "evil.example").startswith("HTTP/1.1 404 ")


def test_failed_logins_over_websocket_ban_the_source_as_over_tcp(tmp: Path, pki, prosody):
    """The guard at accept and the ban after authentication failures are the c2s ones."""
    port = GATEWAY_WEB_PORT + 3
    g = Gateway(tmp / "gw-web-ban", pki.cert, pki.key, [
        Listener("web-ban", "websocket", port, prosody.port, {"allowed_origins": ["*"]}),
    ], network={"connection_rate_per_ip": "off", "max_connections_per_ip": 100,
                "ban": {"auth_failures": 2, "window": "10m", "duration": "10m"}})
    g.start()
    url = f"wss://{HOST}:{port}/xmpp-websocket"
    wrong = base64.b64encode(b"\0alice\0not-the-password").decode()

    async def attempt() -> list[str]:
        async with websockets.connect(url, ssl=_ctx(), server_hostname=DOMAIN, subprotocols=["xmpp"],
                                      open_timeout=10, close_timeout=5) as ws:
            await ws.send(OPEN)
            await recv(ws)
            await recv(ws)
            await ws.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{wrong}</auth>")
            return [await recv(ws)]

    async def go():
        assert "<not-authorized" in (await attempt())[0]
        # The second failure bans 127.0.0.1: the session is closed with a stream error ...
        async with websockets.connect(url, ssl=_ctx(), server_hostname=DOMAIN, subprotocols=["xmpp"],
                                      open_timeout=10, close_timeout=5) as ws:
            await ws.send(OPEN)
            await recv(ws)
            await recv(ws)
            await ws.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{wrong}</auth>")
            got, _ = await closed_with(ws)
        assert any("too many authentication failures" in m for m in got), got
        # ... and the next connection is refused at accept, before TLS.
        with pytest.raises((OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException)):
            async with websockets.connect(url, ssl=_ctx(), server_hostname=DOMAIN, subprotocols=["xmpp"],
                                          open_timeout=5, close_timeout=2):
                pass
    try:
        run(go())
        g.wait_log("connection refused")
    finally:
        assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"
