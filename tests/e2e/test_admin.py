"""Admin API (issue 19) end to end: a real stanzawall in front of the suite's Prosody, real
slixmpp clients, and the API called over HTTP with tokens made by ``stanzawall admin-token``.

Ports: the gateway's c2s listener on 25550, its admin listener on 25551 (see
harness/defaults.py). The brute-force test sends its failed attempts from 127.0.0.2, so the
lockout it provokes never touches the other tests' requests from 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.client import Client, ConnectFailed, run
from harness.defaults import GATEWAY_ADMIN_API_PORT, GATEWAY_ADMIN_PORT, HOST
from harness.gateway import Gateway, Listener, binary
from harness.proc import wait_for_port

BAD_URLS = "# links doing the rounds\nevil.example/payload\n\n# keep this comment\n"

POLICY = f"""
[audit]
path = "audit.jsonl"

[admin]
bind = "{HOST}:{GATEWAY_ADMIN_API_PORT}"
tokens = "admin-tokens"

[list.bad_urls]
file = "lists/bad-urls.txt"

[list.inline_domains]
entries = ["spam.example"]

[[rule]]
name   = "malicious-links"
when   = {{ kind = "message", url_in = "bad_urls" }}
action = "bounce"
text   = "Link blocked by policy"
"""


# -- fixtures -----------------------------------------------------------------------------------

def make_token(path: Path, role: str, name: str) -> str:
    out = subprocess.run([str(binary()), "admin-token", "--tokens", str(path), "--role", role,
                          "--name", name], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("swt_") and token not in path.read_text()
    return token


@pytest.fixture(scope="module")
def gw(tmp: Path, pki, prosody):
    g = Gateway(tmp / "gw-admin", pki.cert, pki.key,
                [Listener("c2s", "c2s", GATEWAY_ADMIN_PORT, prosody.port)], extra_toml=POLICY)
    (g.dir / "lists").mkdir(exist_ok=True)
    (g.dir / "lists" / "bad-urls.txt").write_text(BAD_URLS)
    g.tokens = {"admin": make_token(g.dir / "admin-tokens", "admin", "ops-admin"),
                "read": make_token(g.dir / "admin-tokens", "read", "viewer")}
    assert (g.dir / "admin-tokens").stat().st_mode & 0o777 == 0o600
    g.write_config()
    g.start()
    yield g
    assert g.terminate() == 0, f"stanzawall did not exit cleanly; log {g.log_path}"


# -- helpers ------------------------------------------------------------------------------------

def api(method: str, path: str, token: str | None = None, body: dict | None = None,
        source: str = HOST) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, GATEWAY_ADMIN_API_PORT, timeout=15,
                                      source_address=(source, 0))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        return r.status, (json.loads(text) if text and r.getheader("Content-Type", "").startswith("application/json") else {"text": text})
    finally:
        conn.close()


def client(gw: Gateway, prosody, user: str, pki) -> Client:
    return Client(prosody.jid(user), prosody.users[user], HOST, gw.port("c2s"), ca_file=pki.ca_cert)


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


async def next_error(c: Client, mid: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await c.next_message(timeout=max(0.1, deadline - time.monotonic()), with_body=False)
        if m.type == "error" and m.id == mid:
            return m
    raise AssertionError(f"no error for {mid}")


async def next_body(c: Client, body: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await c.next_message(timeout=max(0.1, deadline - time.monotonic()))
        if m.type != "error" and m.body == body:
            return m
    raise AssertionError(f"{body!r} never arrived")


def send(c: Client, to: str, body: str, mid: str) -> None:
    m = c.xmpp.make_message(mto=to, mbody=body, mtype="chat")
    m["id"] = mid
    m.send()


READ_ENDPOINTS = ["/api/v1/whoami", "/api/v1/stats", "/api/v1/sessions", "/api/v1/bans",
                  "/api/v1/lists", "/api/v1/lists/bad_urls", "/api/v1/rules", "/api/v1/audit"]
ACTIONS = [("DELETE", "/api/v1/sessions/1", None),
           ("POST", "/api/v1/bans", {"address": "192.0.2.9"}),
           ("DELETE", "/api/v1/bans/192.0.2.9", None),
           ("POST", "/api/v1/lists/bad_urls/entries", {"entry": "x.example"}),
           ("DELETE", "/api/v1/lists/bad_urls/entries", {"entry": "evil.example/payload"}),
           ("POST", "/api/v1/reload", None)]


# -- authentication -------------------------------------------------------------------------------

def test_public_endpoints_and_refusals(gw):
    assert api("GET", "/healthz")[0] == 200
    assert api("GET", "/readyz") == (200, {"ready": True})
    status, page = api("GET", "/")
    assert status == 200 and "<title>stanzawall" in page["text"]
    everything = [("GET", p, None) for p in READ_ENDPOINTS + ["/api/v1/audit/stream"]]
    everything += [("POST", "/api/v1/explain", {"stanza": "<presence/>"})] + ACTIONS
    # Each refused request from an address of its own: the lockout after 10 failures per
    # address (tested below) must not turn these 401s into 429s.
    for i, (method, path, body) in enumerate(everything):
        assert api(method, path, None, body, source=f"127.0.1.{i + 1}")[0] == 401, (method, path)
        assert api(method, path, "swt_" + "0" * 64, body, source=f"127.0.2.{i + 1}")[0] == 401, (method, path)
    for path in READ_ENDPOINTS:
        status, got = api("GET", path, gw.tokens["read"])
        assert status == 200, (path, got)
    assert api("GET", "/api/v1/whoami", gw.tokens["read"])[1] == {"name": "viewer", "role": "read"}
    for method, path, body in ACTIONS:
        status, got = api(method, path, gw.tokens["read"], body)
        assert status == 403, (method, path, got)
    # Nothing was done by the refused actions.
    assert "x.example" not in (gw.dir / "lists" / "bad-urls.txt").read_text()
    assert api("GET", "/api/v1/bans", gw.tokens["read"])[1] == {"bans": []}
    # Refusals are audited, with the token named when there was one.
    wait_audit(gw, lambda r: r.get("event") == "admin" and r.get("action") == "auth"
               and r.get("reason") == "unknown token")
    wait_audit(gw, lambda r: r.get("event") == "admin" and r.get("result") == "forbidden"
               and r.get("admin.token") == "viewer" and r.get("path") == "/api/v1/reload")


def test_failed_attempts_are_rate_limited(gw):
    other = "127.0.0.2"
    codes = [api("GET", "/api/v1/sessions", f"swt_guess{i}", source=other)[0] for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # Locked out: even the right token is refused from that address, for the window...
    assert api("GET", "/api/v1/sessions", gw.tokens["admin"], source=other)[0] == 429
    # ...while other addresses are served.
    assert api("GET", "/api/v1/sessions", gw.tokens["admin"])[0] == 200
    wait_audit(gw, lambda r: r.get("action") == "auth" and r.get("locked_out") is True
               and r.get("client.ip") == other)


# -- sessions ---------------------------------------------------------------------------------

def test_list_and_kick_a_real_session(gw, prosody, pki):
    async def go():
        async with client(gw, prosody, "alice", pki) as alice, client(gw, prosody, "bob", pki) as bob:
            _, got = api("GET", "/api/v1/sessions", gw.tokens["read"])
            mine = [s for s in got["sessions"] if s["jid"] == alice.jid]
            assert len(mine) == 1, got
            s = mine[0]
            assert s["listener"] == "c2s" and s["kind"] == "c2s" and s["address"].startswith("127.0.0.1:")
            assert s["stanzas"]["from_client"] >= 1 and s["bytes"]["from_client"] > 0
            status, kicked = api("DELETE", f"/api/v1/sessions/{s['id']}", gw.tokens["admin"])
            assert status == 200, kicked
            assert await alice.wait_stream_error() == "policy-violation"
            await alice.wait_disconnected()
            # bob with `reset`
            bob_id = next(x["id"] for x in api("GET", "/api/v1/sessions", gw.tokens["read"])[1]["sessions"]
                          if x["jid"] == bob.jid)
            status, _ = api("DELETE", f"/api/v1/sessions/{bob_id}?condition=reset", gw.tokens["admin"])
            assert status == 200
            assert await bob.wait_stream_error() == "reset"
            assert api("DELETE", f"/api/v1/sessions/{bob_id}", gw.tokens["admin"])[0] == 404
    run(go())
    rec = wait_audit(gw, lambda r: r.get("action") == "kick" and r.get("result") == "ok")
    assert rec["admin.token"] == "ops-admin" and rec["session"]["jid"]


# -- bans -------------------------------------------------------------------------------------

def test_ban_refuses_new_connections_until_lifted(gw, prosody, pki):
    status, got = api("POST", "/api/v1/bans", gw.tokens["admin"], {"address": HOST, "duration": "10m"})
    assert status == 201, got
    try:
        assert got["ban"]["source"] == "127.0.0.1/32"
        assert "127.0.0.1" in (gw.dir / "state" / "bans").read_text()
        listed = api("GET", "/api/v1/bans", gw.tokens["read"])[1]["bans"]
        assert [b["source"] for b in listed] == ["127.0.0.1/32"]

        async def refused():
            with pytest.raises(ConnectFailed):
                await client(gw, prosody, "carol", pki).connect(timeout=10)
        run(refused())
    finally:
        status, got = api("DELETE", "/api/v1/bans/127.0.0.1", gw.tokens["admin"])
    assert status == 200, got
    assert "127.0.0.1" not in (gw.dir / "state" / "bans").read_text()

    async def admitted():
        async with client(gw, prosody, "carol", pki):
            pass
    run(admitted())
    assert api("DELETE", "/api/v1/bans/127.0.0.1", gw.tokens["admin"])[0] == 404
    assert api("POST", "/api/v1/bans", gw.tokens["admin"], {"address": "not-an-ip"})[0] == 400
    wait_audit(gw, lambda r: r.get("action") == "ban" and r.get("result") == "ok")
    wait_audit(gw, lambda r: r.get("action") == "unban" and r.get("result") == "ok")


# -- lists ------------------------------------------------------------------------------------

def test_list_entry_added_through_the_api_blocks_the_next_stanza(gw, prosody, pki):
    url = "https://fresh.example/wave"
    list_file = gw.dir / "lists" / "bad-urls.txt"

    async def go():
        async with client(gw, prosody, "alice", pki) as alice, client(gw, prosody, "bob", pki) as bob:
            send(alice, bob.jid, f"look {url}", "before")
            await next_body(bob, f"look {url}")
            status, got = api("POST", "/api/v1/lists/bad_urls/entries", gw.tokens["admin"],
                              {"entry": "fresh.example/wave"})
            assert status == 200 and got["changed"] is True, got
            # The same open session, its next message:
            send(alice, bob.jid, f"again {url}", "after")
            err = await next_error(alice, "after")
            assert "Link blocked by policy" in err.xml
            send(alice, bob.jid, "sentinel", "sentinel")
            await next_body(bob, "sentinel")
            text = list_file.read_text()
            assert text.startswith(BAD_URLS) and text.endswith("fresh.example/wave\n"), text
            assert api("GET", "/api/v1/lists/bad_urls", gw.tokens["read"])[1]["entries"][-1]["value"] == "fresh.example/wave"
            status, got = api("DELETE", "/api/v1/lists/bad_urls/entries", gw.tokens["admin"],
                              {"entry": "fresh.example/wave"})
            assert status == 200 and got["changed"] is True, got
            send(alice, bob.jid, f"third {url}", "third")
            await next_body(bob, f"third {url}")
    run(go())
    assert list_file.read_text() == BAD_URLS
    status, got = api("POST", "/api/v1/lists/inline_domains/entries", gw.tokens["admin"], {"entry": "x.example"})
    assert status == 409 and "inline" in got["error"]
    assert api("POST", "/api/v1/lists/bad_urls/entries", gw.tokens["admin"], {"entry": "a\nb"})[0] == 400
    wait_audit(gw, lambda r: r.get("action") == "list-add" and r.get("entry") == "fresh.example/wave")


# -- rules, explain, reload, audit ---------------------------------------------------------------

def test_list_entry_added_through_the_api_survives_a_restart(gw, prosody, pki):
    entry, url = "kept.example/after-restart", "https://kept.example/after-restart"
    status, got = api("POST", "/api/v1/lists/bad_urls/entries", gw.tokens["admin"], {"entry": entry})
    assert status == 200 and got["changed"] is True, got
    # The list file is the source of truth: a new process reads the entry from it.
    assert gw.terminate() == 0
    gw.start()
    wait_for_port(HOST, GATEWAY_ADMIN_API_PORT, 10, proc=gw.proc, log=gw.log_path, who="stanzawall admin")
    try:
        values = [e["value"] for e in api("GET", "/api/v1/lists/bad_urls", gw.tokens["read"])[1]["entries"]]
        assert entry in values, values

        async def go():
            async with client(gw, prosody, "alice", pki) as alice, client(gw, prosody, "bob", pki) as bob:
                send(alice, bob.jid, f"still {url}", "kept")
                err = await next_error(alice, "kept")
                assert "Link blocked by policy" in err.xml
        run(go())
    finally:
        assert api("DELETE", "/api/v1/lists/bad_urls/entries", gw.tokens["admin"], {"entry": entry})[0] == 200


def test_rules_explain_and_reload_error(gw):
    status, got = api("GET", "/api/v1/rules", gw.tokens["read"])
    rule = next(r for r in got["rules"] if r["name"] == "malicious-links")
    lines = gw.config_path.read_text().splitlines()
    header = lines.index('name   = "malicious-links"')  # 0-based: the [[rule]] line's 1-based number
    assert rule["action"] == "bounce" and rule["hits"] >= 1
    assert rule["origin"] in {f"{gw.config_path}:{header}", f"{gw.config_path}:{header + 1}"}, rule
    status, got = api("POST", "/api/v1/explain", gw.tokens["read"],
                      {"stanza": "<message to='b@example.test'><body>see evil.example/payload</body></message>",
                       "user": "alice@example.test"})
    assert status == 200 and "rule: malicious-links" in got["report"], got
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "\n[[rule]]\nname = \"broken\"\nwhen = { kind = \"nonsense\" }\naction = \"drop\"\n")
    try:
        status, got = api("POST", "/api/v1/reload", gw.tokens["admin"])
        assert status == 422 and got["reloaded"] is False, got
        assert "stanzawall.toml:" in got["error"] and "kind" in got["error"], got
    finally:
        gw.config_path.write_text(good)
    status, got = api("POST", "/api/v1/reload", gw.tokens["admin"])
    assert status == 200 and got["reloaded"] is True, got
    wait_audit(gw, lambda r: r.get("action") == "reload" and r.get("result") == "failed")


def test_audit_stream_delivers_a_live_record(gw, prosody, pki):
    events: queue.Queue = queue.Queue()
    conn = http.client.HTTPConnection(HOST, GATEWAY_ADMIN_API_PORT, timeout=20)
    conn.request("GET", "/api/v1/audit/stream?rule=malicious-links",
                 headers={"Authorization": f"Bearer {gw.tokens['read']}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

    def reader():
        try:
            for _ in range(200):
                line = resp.readline().decode()
                if not line:
                    return
                if line.startswith("data:"):
                    events.put(json.loads(line[5:]))
        except (OSError, ValueError, AttributeError):
            pass  # the test closed the connection
    threading.Thread(target=reader, daemon=True).start()

    async def go():
        async with client(gw, prosody, "alice", pki) as alice, client(gw, prosody, "bob", pki) as bob:
            send(alice, bob.jid, "live https://evil.example/payload", "live1")
            await next_error(alice, "live1")
    run(go())
    try:
        rec = events.get(timeout=10)
        assert rec["rule"] == "malicious-links" and rec["id"] == "live1" and rec["seq"] > 0, rec
    finally:
        conn.close()
    status, got = api("GET", "/api/v1/audit?rule=malicious-links&limit=1", gw.tokens["read"])
    assert status == 200 and [r["id"] for r in got["records"]] == ["live1"], got


# -- the dashboard in a real browser ------------------------------------------------------------

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,1400",
              "--disable-dev-shm-usage", "--no-first-run"]:
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def wait_for(pred, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = pred()
            if got:
                return got
        except Exception as e:  # a row replaced while being read: try again
            last = e
        time.sleep(0.2)
    raise AssertionError(f"dashboard: {what} not seen within {timeout}s ({last})")


def sign_in(d, token: str) -> None:
    from selenium.webdriver.common.by import By
    d.get(f"http://{HOST}:{GATEWAY_ADMIN_API_PORT}/")
    d.execute_script("sessionStorage.clear()")
    d.get(f"http://{HOST}:{GATEWAY_ADMIN_API_PORT}/")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "login").click()
    wait_for(lambda: "Signed in as" in d.find_element(By.ID, "who").text, "sign-in")


def test_dashboard_in_chromium(gw, prosody, pki, browser):
    import asyncio
    from selenium.webdriver.common.by import By
    d = browser
    sign_in(d, gw.tokens["admin"])
    assert "ops-admin (admin)" in d.find_element(By.ID, "who").text

    def session_row(jid):
        return [r for r in d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")
                if r.get_attribute("data-jid") == jid]

    def hits(rule):
        rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#verdicts tbody tr")
                if r.get_attribute("data-rule") == rule]
        return int(rows[0].find_elements(By.TAG_NAME, "td")[2].text) if rows else None

    async def go():
        async with client(gw, prosody, "dave", pki) as dave, client(gw, prosody, "bob", pki) as bob:
            await asyncio.to_thread(wait_for, lambda: session_row(dave.jid), "dave's session row")
            before = await asyncio.to_thread(wait_for, lambda: hits("malicious-links") is not None and [hits("malicious-links")], "rule row")
            send(dave, bob.jid, "try https://evil.example/payload now", "dash1")
            await next_error(dave, "dash1")
            await asyncio.to_thread(wait_for, lambda: hits("malicious-links") > before[0], "the verdict counter rising")
            await asyncio.to_thread(wait_for, lambda: any(
                r.get_attribute("data-seq") and "malicious-links" in r.text
                for r in d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")), "the live audit row")
            # Ban 127.0.0.1 from the UI (open sessions kept: the box is unticked).
            d.find_element(By.ID, "ban-address").send_keys(HOST)
            dur = d.find_element(By.ID, "ban-duration")
            dur.clear()
            dur.send_keys("5m")
            d.find_element(By.ID, "ban-kick").click()
            d.find_element(By.ID, "ban-submit").click()
            try:
                await asyncio.to_thread(wait_for, lambda: d.find_elements(
                    By.CSS_SELECTOR, "#bans tbody tr[data-source='127.0.0.1/32']"), "the ban row")
                SCREENSHOT.parent.mkdir(exist_ok=True)
                d.save_screenshot(str(gw.dir / "dashboard.png"))
                with pytest.raises(ConnectFailed):
                    await client(gw, prosody, "carol", pki).connect(timeout=10)
                # Lift it from the UI.
                d.find_element(By.CSS_SELECTOR, "#bans tbody tr[data-source='127.0.0.1/32'] button").click()
                await asyncio.to_thread(wait_for, lambda: not d.find_elements(
                    By.CSS_SELECTOR, "#bans tbody tr[data-source='127.0.0.1/32']"), "the ban row gone")
            finally:
                api("DELETE", "/api/v1/bans/127.0.0.1", gw.tokens["admin"])
            async with client(gw, prosody, "carol", pki):
                pass
    run(go(), timeout=120)
    import os
    import shutil
    if os.environ.get("STANZAWALL_UPDATE_SCREENSHOT"):
        shutil.copyfile(gw.dir / "dashboard.png", SCREENSHOT)

    # A read token sees no action buttons.
    sign_in(d, gw.tokens["read"])
    assert "viewer (read)" in d.find_element(By.ID, "who").text
    wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#verdicts tbody tr"), "rules for the read token")
    assert not d.find_element(By.ID, "ban-form").is_displayed()
    assert not d.find_element(By.ID, "list-form").is_displayed()
    assert all(not b.is_displayed() for b in d.find_elements(By.CSS_SELECTOR, "#sessions button, #bans button"))
