//! The `/api/v1` handlers. Each takes a [`Reader`] (any token) or an [`Operator`] (an `admin`
//! token) first, so an endpoint cannot be written without choosing its role; actions audit
//! what they did and with which result.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use stanzawall_core::guard::{source_key, Cidr};
use stanzawall_core::policy::Chain;
use stanzawall_core::stream::Condition;

use super::{fail, lists, reply, Operator, Reader, St};
use crate::audit::humantime_rfc3339;
use crate::metrics::{ChainLabels, ReasonLabels, VerdictLabels};
use crate::sessions::{Kick, KickError};

/// Longest ban the API sets (a year: beyond it, a deny list is the tool).
const MAX_BAN: Duration = Duration::from_secs(366 * 86_400);
/// Records `GET /api/v1/audit` returns at most.
const MAX_RECORDS: usize = 2_000;

/// The query string as key → value (last wins).
pub(super) fn query(q: Option<String>) -> BTreeMap<String, String> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// The JSON object of a request body (an empty body is an empty object).
#[allow(clippy::result_large_err)]
fn body(bytes: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(fail(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(fail(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}"))),
    }
}

fn string_field<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

pub async fn whoami(Reader(c): Reader) -> Response {
    reply(StatusCode::OK, json!({ "name": c.name, "role": c.role_str() }))
}

/// Sessions, stanzas per chain, refusals and verdicts: what the dashboard graphs.
pub async fn stats(State(st): State<St>, Reader(_): Reader) -> Response {
    let m = &st.shared.metrics;
    let stanzas: BTreeMap<&str, u64> = Chain::ALL
        .iter()
        .map(|c| (c.as_str(), m.stanzas.get_or_create(&ChainLabels { chain: c.as_str() }).get()))
        .collect();
    let refused: BTreeMap<&str, u64> = stanzawall_core::guard::Refusal::ALL
        .iter()
        .map(|r| (r.as_str(), m.refused.get_or_create(&ReasonLabels { reason: r.as_str() }).get()))
        .collect();
    let bans = crate::state::lock(&st.shared.guard).bans().entries(SystemTime::now()).len();
    reply(
        StatusCode::OK,
        json!({
            "time": humantime_rfc3339(SystemTime::now()),
            "sessions": st.shared.sessions.len(),
            "sessions_accepted": m.sessions_total.get(),
            "stanzas": stanzas,
            "refused": refused,
            "bans": bans,
            "audit_failures": m.audit_failures.get(),
        }),
    )
}

pub async fn sessions(State(st): State<St>, Reader(_): Reader) -> Response {
    reply(StatusCode::OK, json!({ "sessions": st.shared.sessions.list() }))
}

/// `DELETE /api/v1/sessions/{id}?condition=policy-violation|reset&text=…`
pub async fn kick(
    State(st): State<St>,
    Operator(c): Operator,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return fail(StatusCode::BAD_REQUEST, format!("'{id}' is not a session id"));
    };
    let q = query(q);
    let condition = match q.get("condition").map(String::as_str).unwrap_or("policy-violation") {
        "policy-violation" => Condition::PolicyViolation,
        "reset" => Condition::Reset,
        other => return fail(StatusCode::BAD_REQUEST, format!("condition '{other}': policy-violation or reset")),
    };
    let text = q.get("text").cloned().unwrap_or_else(|| "Disconnected by an administrator".to_owned());
    if text.len() > 512 || text.chars().any(char::is_control) {
        return fail(StatusCode::BAD_REQUEST, "text: at most 512 bytes, no control characters");
    }
    let result = st.shared.sessions.kick(id, Kick { condition, text: text.clone(), drain: None });
    let detail = |result: &str, session: Value| json!({ "result": result, "session": session, "condition": condition.as_str(), "text": text });
    match result {
        Ok(session) => {
            st.audit(&c, "kick", detail("ok", session.clone())).await;
            reply(StatusCode::OK, json!({ "kicked": session, "condition": condition.as_str() }))
        }
        Err(e) => {
            st.audit(&c, "kick", detail(&e.to_string(), json!({ "id": id }))).await;
            let status = match e {
                KickError::NotFound(_) => StatusCode::NOT_FOUND,
                KickError::Closing(_) => StatusCode::CONFLICT,
            };
            fail(status, e)
        }
    }
}

fn ban_json(source: Cidr, until: SystemTime, now: SystemTime) -> Value {
    json!({
        "source": source.to_string(),
        "until": humantime_rfc3339(until),
        "seconds_left": until.duration_since(now).map_or(0, |d| d.as_secs()),
    })
}

pub async fn bans(State(st): State<St>, Reader(_): Reader) -> Response {
    let now = SystemTime::now();
    let entries = crate::state::lock(&st.shared.guard).bans().entries(now);
    let list: Vec<Value> = entries.into_iter().map(|(s, u)| ban_json(s, u, now)).collect();
    reply(StatusCode::OK, json!({ "bans": list }))
}

/// An address or prefix as the guard keys it (an IPv6 address stands for its `ipv6_prefix`).
fn source_of(text: &str, ipv6_prefix: u8) -> Option<Cidr> {
    if text.contains('/') {
        Cidr::parse(text).map(|c| c.network())
    } else {
        text.trim().parse::<IpAddr>().ok().map(|ip| source_key(ip, ipv6_prefix))
    }
}

/// Write the guard's ban table to the state directory (as an automatic ban does).
async fn persist_bans(st: &St) -> Result<(), String> {
    let table = crate::state::lock(&st.shared.guard).bans().to_text(SystemTime::now());
    let dir = st.generation().config.state_dir.clone();
    match tokio::task::spawn_blocking(move || crate::state::write_bans(&dir, &table)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot write the ban file: {e}")),
        Err(e) => Err(format!("ban writer failed: {e}")),
    }
}

/// `POST /api/v1/bans` `{"address": "192.0.2.7" | "2001:db8::/64", "duration": "1h" | 3600, "kick": true}`
pub async fn ban(State(st): State<St>, Operator(c): Operator, bytes: Bytes) -> Response {
    let b = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let generation = st.generation();
    let prefix = generation.config.network.guard.ipv6_prefix;
    let Some(source) = string_field(&b, "address").and_then(|a| source_of(a, prefix)) else {
        return fail(StatusCode::BAD_REQUEST, "address: an IP address or ADDR/PREFIX is required");
    };
    let duration = match b.get("duration") {
        None => Duration::from_secs(3600),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) => Duration::from_secs(s),
            None => return fail(StatusCode::BAD_REQUEST, "duration: whole seconds or \"30m\", \"2h\", \"7d\""),
        },
        Some(Value::String(s)) => match stanzawall_core::limit::parse_duration(s) {
            Some(d) => d,
            None => return fail(StatusCode::BAD_REQUEST, format!("duration '{s}': e.g. \"30m\", \"2h\", \"7d\"")),
        },
        Some(_) => return fail(StatusCode::BAD_REQUEST, "duration: whole seconds or \"30m\", \"2h\", \"7d\""),
    };
    if duration.is_zero() || duration > MAX_BAN {
        return fail(StatusCode::BAD_REQUEST, "duration: from 1 second to 366 days");
    }
    let now = SystemTime::now();
    let until = now + duration;
    crate::state::lock(&st.shared.guard).bans().ban_until(source, until);
    let persisted = persist_bans(&st).await;
    if let Some(sync) = &generation.ban_sync {
        sync.ban_source(source, until).await;
    }
    // Shared with the other gateways (their guards, ban files and nftables sets) as a ban
    // made by failures is; when the store is down it gets there with the next snapshot.
    if let Some(store) = st.shared.store.clone().filter(|s| s.is_up()) {
        match tokio::task::spawn_blocking(move || store.push_bans(&[(source, until)])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ban not pushed to the shared store"),
            Err(e) => tracing::warn!(error = %e, "ban pusher failed"),
        }
    }
    // Sessions already open from the source end too when asked (a ban otherwise stops new
    // connections only).
    let mut kicked = Vec::new();
    if b.get("kick").and_then(Value::as_bool).unwrap_or(false) {
        for s in st.shared.sessions.list() {
            let addr = s["address"].as_str().and_then(|a| a.parse::<std::net::SocketAddr>().ok());
            let (Some(addr), Some(id)) = (addr, s["id"].as_u64()) else { continue };
            if source.contains(addr.ip()) {
                let kick = Kick {
                    condition: Condition::PolicyViolation,
                    text: "Banned by an administrator".into(),
                    drain: None,
                };
                if st.shared.sessions.kick(id, kick).is_ok() {
                    kicked.push(id);
                }
            }
        }
    }
    let ban = ban_json(source, until, now);
    let result = persisted.as_ref().err().map_or("ok", String::as_str);
    st.audit(&c, "ban", json!({ "result": result, "ban": ban, "kicked": kicked })).await;
    match persisted {
        Ok(()) => reply(StatusCode::CREATED, json!({ "ban": ban, "kicked": kicked })),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, format!("banned, but {e}")),
    }
}

/// `DELETE /api/v1/bans/{address}` (a prefix with its `/` written `%2F`).
pub async fn unban(State(st): State<St>, Operator(c): Operator, Path(address): Path<String>) -> Response {
    let generation = st.generation();
    let Some(source) = source_of(&address, generation.config.network.guard.ipv6_prefix) else {
        return fail(StatusCode::BAD_REQUEST, format!("'{address}' is not an IP address or ADDR/PREFIX"));
    };
    let lifted = crate::state::lock(&st.shared.guard).bans().unban(source);
    if !lifted {
        st.audit(&c, "unban", json!({ "result": "not banned", "source": source.to_string() })).await;
        return fail(StatusCode::NOT_FOUND, format!("{source} is not banned"));
    }
    let persisted = persist_bans(&st).await;
    if let Some(sync) = &generation.ban_sync {
        sync.unban(source).await;
    }
    let result = persisted.as_ref().err().map_or("ok", String::as_str);
    st.audit(&c, "unban", json!({ "result": result, "source": source.to_string() })).await;
    match persisted {
        Ok(()) => reply(StatusCode::OK, json!({ "lifted": source.to_string() })),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, format!("lifted, but {e}")),
    }
}

pub async fn lists(State(st): State<St>, Reader(_): Reader) -> Response {
    let generation = st.generation();
    let out: Vec<Value> = generation
        .config
        .policy
        .lists
        .iter()
        .map(|(name, l)| {
            json!({
                "name": name,
                "entries": l.entries.len(),
                "file": l.file.as_ref().map(|f| f.display().to_string()),
                "editable": l.file.is_some(),
            })
        })
        .collect();
    reply(StatusCode::OK, json!({ "lists": out }))
}

pub async fn list(State(st): State<St>, Reader(_): Reader, Path(name): Path<String>) -> Response {
    let generation = st.generation();
    let Some(l) = generation.config.policy.lists.get(&name) else {
        return fail(StatusCode::NOT_FOUND, format!("no list '{name}'"));
    };
    let entries: Vec<Value> = l
        .entries
        .iter()
        .map(|e| json!({ "value": e.value, "file": e.origin.file.display().to_string(), "line": e.origin.line }))
        .collect();
    reply(
        StatusCode::OK,
        json!({
            "name": name,
            "file": l.file.as_ref().map(|f| f.display().to_string()),
            "declared": format!("{}:{}", l.origin.file.display(), l.origin.line),
            "editable": l.file.is_some(),
            "entries": entries,
        }),
    )
}

pub async fn add_entry(
    State(st): State<St>,
    Operator(c): Operator,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    bytes: Bytes,
) -> Response {
    edit_list(st, c, name, q, bytes, true).await
}

pub async fn remove_entry(
    State(st): State<St>,
    Operator(c): Operator,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    bytes: Bytes,
) -> Response {
    edit_list(st, c, name, q, bytes, false).await
}

/// Rewrite a list file with one entry added or removed, then reload; undo if the reload fails.
/// A change is then published to the other gateways when the store is shared.
async fn edit_list(st: St, c: super::Caller, name: String, q: Option<String>, bytes: Bytes, add: bool) -> Response {
    let action = if add { "list-add" } else { "list-remove" };
    let b = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let q = query(q);
    let Some(raw) = string_field(&b, "entry").or(q.get("entry").map(String::as_str)) else {
        return fail(StatusCode::BAD_REQUEST, "entry: required (in the JSON body, or ?entry=)");
    };
    let entry = match lists::clean(raw) {
        Ok(e) => e.to_owned(),
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("entry: {e}")),
    };
    let file = |st: &St| {
        st.generation().config.policy.lists.get(&name).and_then(|l| l.file.clone()).map(|f| f.display().to_string())
    };
    let detail =
        |result: &str, file: Option<String>| json!({ "result": result, "list": name, "entry": entry, "file": file });
    match edit_list_file(&st, &name, &entry, add).await {
        Ok(Edited::Unchanged(why)) => {
            reply(StatusCode::OK, json!({ "changed": false, "list": name, "entry": entry, "why": why }))
        }
        Ok(Edited::Changed(entries)) => {
            let mut published = None;
            if let Some(store) = st.shared.store.clone() {
                let (list, e) = (name.clone(), entry.clone());
                let sent = tokio::task::spawn_blocking(move || store.publish_list_edit(add, &list, &e)).await;
                published = Some(match sent {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(e)) => format!("not published to the other gateways: {e}"),
                    Err(e) => format!("not published to the other gateways: {e}"),
                });
            }
            let mut d = detail("ok", file(&st));
            d["published"] = json!(published);
            st.audit(&c, action, d).await;
            reply(
                StatusCode::OK,
                json!({ "changed": true, "list": name, "entry": entry, "entries": entries, "published": published }),
            )
        }
        Err((status, why)) => {
            if status != StatusCode::NOT_FOUND && status != StatusCode::CONFLICT {
                st.audit(&c, action, detail(&why, file(&st))).await;
            }
            fail(status, why)
        }
    }
}

/// What one list edit did.
pub(crate) enum Edited {
    /// The file was rewritten and the configuration reloaded: the list has this many entries.
    Changed(usize),
    /// Nothing to do (already listed, or not listed).
    Unchanged(&'static str),
}

/// Add or remove `entry` in list `name`'s file and reload (undone if the reload fails). The
/// file stays the source of truth of what this gateway runs.
pub(crate) async fn edit_list_file(
    st: &super::Admin,
    name: &str,
    entry: &str,
    add: bool,
) -> Result<Edited, (StatusCode, String)> {
    let _one_at_a_time = st.list_edit.lock().await;
    let generation = st.generation();
    let Some(list) = generation.config.policy.lists.get(name) else {
        return Err((StatusCode::NOT_FOUND, format!("no list '{name}'")));
    };
    let Some(file) = list.file.clone() else {
        let at = format!("{}:{}", list.origin.file.display(), list.origin.line);
        return Err((StatusCode::CONFLICT, format!("list '{name}' is written inline ({at}); edit the config file")));
    };
    let old = read_file(file.clone()).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let new = if add { lists::add(&old, entry) } else { lists::remove(&old, entry) };
    let Some(new) = new else {
        return Ok(Edited::Unchanged(if add { "already listed" } else { "not listed" }));
    };
    write_file(file.clone(), new).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    match st.reload_now().await {
        Ok(_) => Ok(Edited::Changed(st.generation().config.policy.lists.get(name).map_or(0, |l| l.entries.len()))),
        Err(e) => {
            // The file is the source of truth: put it back so it says what is running.
            let restored = write_file(file.clone(), old).await;
            let why = format!("the list with this change does not load: {e}");
            if let Err(r) = restored {
                return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{why}; and restoring the file failed: {r}")));
            }
            Err((StatusCode::UNPROCESSABLE_ENTITY, why))
        }
    }
}

/// A list edit another gateway published: made here too, in this gateway's own file (an edit
/// that is already true here changes nothing), and logged.
pub(crate) async fn apply_remote_list_edit(st: &super::Admin, edit: &crate::store::ListEdit) {
    let add = edit.op == "add";
    // Checked as an entry given to this API is: a peer's bug must not write two lines.
    if lists::clean(&edit.entry).ok() != Some(edit.entry.as_str()) {
        return tracing::warn!(list = %edit.list, from = %edit.origin, "list edit from the shared store refused: not a clean entry");
    }
    match edit_list_file(st, &edit.list, &edit.entry, add).await {
        Ok(Edited::Changed(entries)) => {
            tracing::info!(list = %edit.list, op = %edit.op, entries, from = %edit.origin, "list edit received from the shared store")
        }
        Ok(Edited::Unchanged(why)) => {
            tracing::info!(list = %edit.list, op = %edit.op, why, from = %edit.origin, "list edit received from the shared store: nothing to change")
        }
        Err((_, why)) => {
            tracing::warn!(list = %edit.list, op = %edit.op, error = %why, from = %edit.origin, "list edit from the shared store not applied")
        }
    }
}

async fn read_file(path: PathBuf) -> Result<String, String> {
    let shown = path.display().to_string();
    crate::files::off_loop(crate::files::LOAD_DEADLINE, move || crate::files::read_to_string(&path))
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .map_err(|e| format!("{shown}: {e}"))
}

async fn write_file(path: PathBuf, text: String) -> Result<(), String> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || crate::files::replace_atomically(&path, &text, None))
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .map_err(|e| format!("{shown}: {e}"))
}

/// The rules in evaluation order with their hit counts, and each chain's default.
pub async fn rules(State(st): State<St>, Reader(_): Reader) -> Response {
    let generation = st.generation();
    let m = &st.shared.metrics;
    let policy = &generation.config.policy;
    let rules: Vec<Value> = policy
        .rules
        .iter()
        .map(|r| {
            let labels = VerdictLabels {
                rule: r.name.clone(),
                action: r.action.as_str(),
                log_only: if r.log_only { "true" } else { "false" },
            };
            json!({
                "name": r.name,
                "chains": r.chains.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "action": r.action.as_str(),
                "log_only": r.log_only,
                "origin": format!("{}:{}", r.origin.file.display(), r.origin.line),
                "hits": m.verdicts.get_or_create(&labels).get(),
            })
        })
        .collect();
    let defaults: Vec<Value> = Chain::ALL
        .iter()
        .map(|c| {
            let action = policy.defaults.get(c).map_or("pass", |a| a.as_str());
            let labels = VerdictLabels {
                rule: format!("default:{}", c.as_str()),
                action: outcome_label(action),
                log_only: "false",
            };
            let hits = if action == "pass" { 0 } else { m.defaults.get_or_create(&labels).get() };
            json!({ "chain": c.as_str(), "action": action, "hits": hits })
        })
        .collect();
    reply(StatusCode::OK, json!({ "rules": rules, "defaults": defaults }))
}

/// The outcome label a chain default's action is counted under (`Outcome::as_str`).
fn outcome_label(action: &str) -> &'static str {
    match action {
        "drop" => "drop",
        "bounce" => "bounce",
        "close" => "close",
        _ => "pass",
    }
}

/// `POST /api/v1/explain` `{"stanza": "<message …/>", "chain": "c2s-in", "user": "…", "source_ip": "…"}`
pub async fn explain(State(st): State<St>, Reader(_): Reader, bytes: Bytes) -> Response {
    let b = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(stanza) = string_field(&b, "stanza") else {
        return fail(StatusCode::BAD_REQUEST, "stanza: required (the XML a client would send)");
    };
    let chain = string_field(&b, "chain").unwrap_or("c2s-in");
    let source_ip = match string_field(&b, "source_ip").map(str::parse::<IpAddr>) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(Ok(ip)) => ip,
        Some(Err(_)) => return fail(StatusCode::BAD_REQUEST, "source_ip: not an IP address"),
    };
    let generation = st.generation();
    let user = string_field(&b, "user");
    match crate::explain::explain_with(&generation.config, &generation.policy, chain, source_ip, user, stanza) {
        Ok(report) => reply(StatusCode::OK, json!({ "report": report })),
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// Which audit records a query selects.
#[derive(Debug, Default, Clone)]
struct Filter {
    /// `policy` (decisions), `admin`, `s2s-authenticated`, … (the record's `event`).
    event: Option<String>,
    rule: Option<String>,
    action: Option<String>,
    user: Option<String>,
    ip: Option<String>,
    /// Substring of the record's JSON text.
    q: Option<String>,
    since: u64,
}

impl Filter {
    fn parse(q: &BTreeMap<String, String>) -> Filter {
        let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        Filter {
            event: get("event"),
            rule: get("rule"),
            action: get("action"),
            user: get("user"),
            ip: get("ip"),
            q: get("q"),
            since: q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0),
        }
    }

    fn matches(&self, seq: u64, r: &Value) -> bool {
        let field = |k: &str| r.get(k).and_then(Value::as_str);
        let eq = |want: &Option<String>, got: Option<&str>| want.as_ref().is_none_or(|w| got == Some(w.as_str()));
        seq > self.since
            && eq(&self.event, Some(field("event").unwrap_or("policy")))
            && eq(&self.rule, field("rule"))
            && eq(&self.action, field("action"))
            && eq(&self.ip, field("client.ip"))
            && self
                .user
                .as_ref()
                .is_none_or(|u| field("user").is_some_and(|x| x == u || x.starts_with(&format!("{u}/"))))
            && self.q.as_ref().is_none_or(|q| r.to_string().contains(q.as_str()))
    }
}

fn with_seq(seq: u64, r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(m) = r.as_object_mut() {
        m.insert("seq".to_owned(), json!(seq));
    }
    r
}

/// `GET /api/v1/audit?limit=&since=&event=&rule=&action=&user=&ip=&q=`: the newest matching
/// records held in memory, oldest first.
pub async fn audit(State(st): State<St>, Reader(_): Reader, RawQuery(q): RawQuery) -> Response {
    let q = query(q);
    let filter = Filter::parse(&q);
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).min(MAX_RECORDS);
    let recent = st.shared.audit.feed.recent();
    let mut out: Vec<Value> = recent
        .iter()
        .rev()
        .filter(|(seq, r)| filter.matches(*seq, r))
        .take(limit)
        .map(|(s, r)| with_seq(*s, r))
        .collect();
    out.reverse();
    reply(StatusCode::OK, json!({ "records": out }))
}

/// `GET /api/v1/audit/stream` (same filters): Server-Sent Events, one `audit` event per record
/// as it is written; `lagged` says how many a slow reader missed.
pub async fn audit_stream(State(st): State<St>, Reader(_): Reader, RawQuery(q): RawQuery) -> Response {
    let filter = Filter::parse(&query(q));
    let rx = st.shared.audit.feed.subscribe();
    let stream = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok((seq, r)) if filter.matches(seq, &r) => {
                    let event = Event::default().event("audit").id(seq.to_string()).data(with_seq(seq, &r).to_string());
                    return Some((Ok::<Event, Infallible>(event), (rx, filter)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let event = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(event), (rx, filter)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// `POST /api/v1/reload`: as SIGHUP; the answer is the changes, or the error that kept the
/// running configuration.
pub async fn reload(State(st): State<St>, Operator(c): Operator) -> Response {
    match st.reload_now().await {
        Ok(changes) => {
            st.audit(&c, "reload", json!({ "result": "ok", "changes": changes })).await;
            reply(StatusCode::OK, json!({ "reloaded": true, "changes": changes }))
        }
        Err(e) => {
            st.audit(&c, "reload", json!({ "result": "failed", "error": e })).await;
            reply(StatusCode::UNPROCESSABLE_ENTITY, json!({ "reloaded": false, "error": e }))
        }
    }
}

/// `POST /api/v1/drain`: as SIGUSR2. The gateway stops accepting at once and `/readyz` answers
/// 503 (so the balancer's health check takes it out); open sessions go on for `[drain] grace`,
/// then end with `<see-other-host/>` naming `[drain] peer` (or `<system-shutdown/>`); the
/// process exits when the last one has ended. Asking again changes nothing.
pub async fn drain(State(st): State<St>, Operator(c): Operator) -> Response {
    // Not ready from this answer on, before the supervisor has even seen the request.
    st.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let already = st.drain.send_replace(true);
    let d = st.generation().config.drain.clone();
    let detail = json!({
        "result": if already { "already draining" } else { "ok" },
        "grace_seconds": d.grace.as_secs_f64(),
        "peer": d.peer,
        "sessions": st.shared.sessions.len(),
    });
    st.audit(&c, "drain", detail.clone()).await;
    reply(StatusCode::ACCEPTED, json!({ "draining": true, "drain": detail }))
}
