// stanzawall dashboard: calls /api/v1 with the pasted token (Authorization: Bearer), never a
// cookie. Everything shown comes from the network (JIDs, rule names, bodies) and is written with
// textContent only, never as HTML.
"use strict";

const POLL_MS = 2000;
const GRAPH_POINTS = 90;
const AUDIT_ROWS = 60;
const CHAINS = ["c2s-in", "c2s-out", "s2s-in", "s2s-out"];
const COLORS = { "c2s-in": "#0b57d0", "c2s-out": "#146c2e", "s2s-in": "#a50e0e", "s2s-out": "#7b3fa0" };

let token = sessionStorage.getItem("stanzawall-token") || "";
let role = null;
let lastStats = null;
const history = [];
const recent = [];
let streamAbort = null;
let pollTimer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = document.createElement("td"); td.appendChild(c); tr.appendChild(td); }
    else if (c && typeof c === "object") { tr.appendChild(el("td", c.text, c.cls)); }
    else tr.appendChild(el("td", c));
  }
  return tr;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token }, cache: "no-store" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  let data = {};
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) { signOut("The token was refused (401)."); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function say(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "status error" : "status";
}

async function signIn(t) {
  token = t.trim();
  $("login-error").textContent = "";
  try {
    const r = await fetch("/api/v1/whoami", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (!r.ok) {
      const d = await r.json().catch(() => ({}));
      $("login-error").textContent = "Sign-in failed: " + (d.error || r.status);
      return;
    }
    const me = await r.json();
    role = me.role;
    sessionStorage.setItem("stanzawall-token", token);
    $("who").textContent = "Signed in as " + me.name + " (" + me.role + ")";
    document.body.classList.toggle("read-only", role !== "admin");
    $("login-panel").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    await refresh();
    pollTimer = setInterval(refresh, POLL_MS);
    startStream();
    loadLists();
  } catch (e) {
    $("login-error").textContent = "Sign-in failed: " + e.message;
  }
}

function signOut(why) {
  token = "";
  role = null;
  sessionStorage.removeItem("stanzawall-token");
  if (pollTimer) clearInterval(pollTimer);
  if (streamAbort) streamAbort.abort();
  $("app").hidden = true;
  $("login-panel").hidden = false;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-error").textContent = why || "";
}

async function refresh() {
  try {
    const [stats, sessions, rules, bans] = await Promise.all([
      api("GET", "/api/v1/stats"), api("GET", "/api/v1/sessions"),
      api("GET", "/api/v1/rules"), api("GET", "/api/v1/bans"),
    ]);
    showStats(stats);
    showSessions(sessions.sessions);
    showRules(rules);
    showBans(bans.bans);
    say("Updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.message !== "unauthorized") say("Update failed: " + e.message, true);
  }
}

function showStats(s) {
  $("stat-sessions").textContent = s.sessions;
  $("stat-bans").textContent = s.bans;
  const now = Date.now();
  if (lastStats) {
    const dt = Math.max(0.001, (now - lastStats.at) / 1000);
    const point = {};
    for (const c of CHAINS) point[c] = Math.max(0, (s.stanzas[c] - lastStats.stanzas[c]) / dt);
    history.push(point);
    if (history.length > GRAPH_POINTS) history.shift();
    $("stat-rate-c2s-in").textContent = point["c2s-in"].toFixed(1);
    $("stat-rate-c2s-out").textContent = point["c2s-out"].toFixed(1);
    $("stat-rate-s2s").textContent = (point["s2s-in"] + point["s2s-out"]).toFixed(1);
    drawGraph();
  }
  lastStats = { at: now, stanzas: s.stanzas };
}

function drawGraph() {
  const canvas = $("graph");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  let max = 1;
  for (const p of history) for (const c of CHAINS) max = Math.max(max, p[c]);
  ctx.strokeStyle = "#c8c8c8";
  ctx.beginPath(); ctx.moveTo(0, h - 1); ctx.lineTo(w, h - 1); ctx.stroke();
  ctx.fillStyle = "#4a4a4a";
  ctx.font = "12px sans-serif";
  ctx.fillText(max.toFixed(1) + "/s", 4, 14);
  for (const c of CHAINS) {
    ctx.strokeStyle = COLORS[c];
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((p, i) => {
      const x = (i / (GRAPH_POINTS - 1)) * w;
      const y = h - 4 - (p[c] / max) * (h - 24);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const legend = $("graph-legend");
  legend.replaceChildren(...CHAINS.map((c) => {
    const s = el("span", "■ " + c);
    s.style.color = COLORS[c];
    return s;
  }));
}

function showSessions(list) {
  const rows = list.map((s) => {
    const kick = el("button", "Kick", "danger");
    kick.type = "button";
    kick.setAttribute("aria-label", "Kick " + (s.jid || s.address));
    kick.addEventListener("click", async () => {
      try {
        await api("DELETE", "/api/v1/sessions/" + encodeURIComponent(s.id));
        say("Session " + (s.jid || s.address) + " kicked");
        refresh();
      } catch (e) { say("Kick failed: " + e.message, true); }
    });
    const tr = row([s.jid || "(not bound)", s.listener, s.address, s.since.replace("T", " ").replace(/\.\d+Z$/, "Z"),
      { text: s.stanzas.from_client + " / " + s.stanzas.from_backend, cls: "num" },
      { text: s.bytes.from_client + " / " + s.bytes.to_client, cls: "num" }, kick]);
    tr.lastChild.className = "admin-only";
    tr.dataset.jid = s.jid || "";
    tr.dataset.id = s.id;
    return tr;
  });
  if (rows.length === 0) rows.push(row([{ text: "No sessions open", cls: "muted" }]));
  replaceRows($("sessions").tBodies[0], rows);
}

function showRules(r) {
  const rows = r.rules.map((x) => {
    const tr = row([x.name + (x.log_only ? " (log only)" : ""), x.action, { text: x.hits, cls: "num" }]);
    tr.dataset.rule = x.name;
    tr.title = x.origin;
    return tr;
  });
  for (const d of r.defaults) {
    if (d.action !== "pass") rows.push(row(["default " + d.chain, d.action, { text: d.hits, cls: "num" }]));
  }
  replaceRows($("verdicts").tBodies[0], rows);
}

function showBans(bans) {
  const rows = bans.map((b) => {
    const lift = el("button", "Lift");
    lift.type = "button";
    lift.setAttribute("aria-label", "Lift the ban of " + b.source);
    lift.addEventListener("click", async () => {
      try {
        await api("DELETE", "/api/v1/bans/" + encodeURIComponent(b.source));
        say("Ban of " + b.source + " lifted");
        refresh();
      } catch (e) { say("Lift failed: " + e.message, true); }
    });
    const tr = row([b.source, b.until.replace("T", " "), lift]);
    tr.lastChild.className = "admin-only";
    tr.dataset.source = b.source;
    return tr;
  });
  if (rows.length === 0) rows.push(row(["No active bans"]));
  replaceRows($("bans").tBodies[0], rows);
}

async function loadLists() {
  try {
    const d = await api("GET", "/api/v1/lists");
    const sel = $("list-select");
    const keep = sel.value;
    sel.replaceChildren(...d.lists.map((l) => {
      const o = el("option", l.name + " (" + l.entries + (l.editable ? "" : ", inline") + ")");
      o.value = l.name;
      return o;
    }));
    if (keep) sel.value = keep;
    showList();
  } catch (e) { say("Lists: " + e.message, true); }
}

async function showList() {
  const name = $("list-select").value;
  if (!name) return;
  const d = await api("GET", "/api/v1/lists/" + encodeURIComponent(name));
  $("list-form").dataset.editable = d.editable;
  $("list-entries").replaceChildren(...d.entries.map((e) => {
    const li = el("li", e.value);
    if (d.editable && role === "admin") {
      const rm = el("button", "Remove");
      rm.type = "button";
      rm.setAttribute("aria-label", "Remove " + e.value);
      rm.addEventListener("click", async () => {
        try { await api("DELETE", "/api/v1/lists/" + encodeURIComponent(name) + "/entries", { entry: e.value }); loadLists(); }
        catch (err) { say("Remove failed: " + err.message, true); }
      });
      li.appendChild(rm);
    }
    return li;
  }));
}

function addAudit(r) {
  recent.unshift(r);
  if (recent.length > 500) recent.pop();
  const tbody = $("audit").tBodies[0];
  const who = r["admin.token"] !== undefined ? (r["admin.token"] || "(no token)") + " @ " + r["client.ip"]
    : (r.user || r["client.ip"] || "");
  const what = r.event === "admin" ? r.action : (r.rule ? r.rule + " → " + r.action : (r.event || ""));
  const outcome = r.result || r.outcome || r.reason || "";
  const blocked = ["drop", "bounce", "close"].includes(r.outcome);
  const tr = row([(r.time || "").replace("T", " "), r.event || "policy", what, who,
    (r.from || "") + (r.to ? " → " + r.to : ""), { text: outcome, cls: blocked ? "blocked" : "" }]);
  tr.dataset.seq = r.seq;
  tbody.insertBefore(tr, tbody.firstChild);
  while (tbody.rows.length > AUDIT_ROWS) tbody.deleteRow(tbody.rows.length - 1);
  showTop();
}

function showTop() {
  const senders = new Map(), domains = new Map(), rules = new Map();
  let blocked = 0;
  for (const r of recent) {
    if (r.event || !["drop", "bounce", "close"].includes(r.outcome) || r.log_only) continue;
    blocked++;
    const from = (r.from || "").split("/")[0];
    if (from) senders.set(from, (senders.get(from) || 0) + 1);
    const dom = from.includes("@") ? from.split("@")[1] : from;
    if (dom) domains.set(dom, (domains.get(dom) || 0) + 1);
    if (r.rule) rules.set(r.rule, (rules.get(r.rule) || 0) + 1);
  }
  $("stat-blocked").textContent = blocked;
  const top = (m, id) => $(id).replaceChildren(...[...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5)
    .map(([k, n]) => el("li", k + " (" + n + ")")));
  top(senders, "top-senders");
  top(domains, "top-domains");
  top(rules, "top-rules");
}

// The live audit stream: fetch() with the bearer header (EventSource cannot send one), read as
// text/event-stream.
async function startStream() {
  try {
    const past = await api("GET", "/api/v1/audit?limit=" + AUDIT_ROWS);
    for (const r of past.records) addAudit(r);
  } catch (e) { say("Audit: " + e.message, true); }
  streamAbort = new AbortController();
  try {
    const r = await fetch("/api/v1/audit/stream", { headers: { Authorization: "Bearer " + token }, signal: streamAbort.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    $("audit-live").textContent = "● live";
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let ev = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) ev = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (ev === "audit" && data) {
          try { addAudit(JSON.parse(data)); } catch (_) { /* skip a malformed event */ }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  $("audit-live").textContent = "";
  if (token) setTimeout(startStream, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
  $("logout").addEventListener("click", () => signOut(""));
  $("list-select").addEventListener("change", showList);
  $("ban-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const d = await api("POST", "/api/v1/bans", { address: $("ban-address").value.trim(),
        duration: $("ban-duration").value.trim(), kick: $("ban-kick").checked });
      say("Banned " + d.ban.source + " until " + d.ban.until);
      refresh();
    } catch (err) { say("Ban failed: " + err.message, true); }
  });
  $("list-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("list-select").value;
    try {
      const d = await api("POST", "/api/v1/lists/" + encodeURIComponent(name) + "/entries", { entry: $("list-entry").value });
      say(d.changed ? "Added " + d.entry + " to " + name : d.entry + " was already listed");
      $("list-entry").value = "";
      loadLists();
    } catch (err) { say("Add failed: " + err.message, true); }
  });
  if (token) signIn(token);
});
