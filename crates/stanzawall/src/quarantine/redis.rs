//! The quarantine in Redis (`[store] backend = "redis"`): every gateway sharing the store sees
//! the same entries, so a stanza held by one can be released or deleted from another.
//!
//! Keys (all under `[store] prefix`): `q:entry:ID` a hash (`json` the entry, `state`, `by`,
//! `at`) expiring after `retention`; `q:index` a sorted set of the entries not yet released,
//! scored by the time they were held; `q:bytes` their total size and `q:size` each one's. Every
//! change is one Lua script, atomic on the server: the bounds check and the insert of a hold,
//! the held → releasing claim that makes a release happen once across gateways, the expiry
//! sweep that only one gateway can win per entry.
//!
//! Quarantine calls are operator actions and one write per held stanza, not the per-stanza
//! rate path: they get their own connections with a longer timeout than `[store] timeout`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stanzawall_core::config::QuarantineConfig;

use super::{Entry, QuarantineError, QuarantineStore, State};

/// Hold. KEYS: entry, index, bytes, size. ARGV: id, time ms, json, bytes, max entries, max
/// bytes, ttl ms.
const HOLD: &str = r"
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 'full-entries' end
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if total + tonumber(ARGV[4]) > tonumber(ARGV[6]) then return 'full-bytes' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'json', ARGV[3], 'state', 'held')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('INCRBY', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
return 'ok'
";

/// Move an entry from one state to another. KEYS: entry, index, bytes, size. ARGV: id, from
/// state, to state, by, at ms. Returns {'ok', json, by, at} or {state or 'missing', by}.
const TRANSITION: &str = r"
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {'missing', ''} end
if st ~= ARGV[2] then return {st, redis.call('HGET', KEYS[1], 'by') or ''} end
redis.call('HSET', KEYS[1], 'state', ARGV[3])
if ARGV[3] == 'releasing' then
  redis.call('HSET', KEYS[1], 'by', ARGV[4], 'at', ARGV[5])
elseif ARGV[3] == 'held' then
  redis.call('HDEL', KEYS[1], 'by', 'at')
elseif ARGV[3] == 'released' then
  if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
    redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0'))
    redis.call('HDEL', KEYS[4], ARGV[1])
  end
end
return {'ok', redis.call('HGET', KEYS[1], 'json'), redis.call('HGET', KEYS[1], 'by') or '', redis.call('HGET', KEYS[1], 'at') or ''}
";

/// Delete. KEYS: entry, index, bytes, size. ARGV: id. Returns {json, state} or {}.
const DELETE: &str = r"
local json = redis.call('HGET', KEYS[1], 'json')
local st = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0'))
  redis.call('HDEL', KEYS[4], ARGV[1])
end
if not json then return {} end
return {json, st}
";

/// Expire. KEYS: index, bytes, size. ARGV: cutoff ms, most per run. Returns the ids removed
/// from the index by this call (the entry hashes expire by their own TTL).
const EXPIRE: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DECRBY', KEYS[2], tonumber(redis.call('HGET', KEYS[3], id) or '0'))
    redis.call('HDEL', KEYS[3], id)
    table.insert(out, id)
  end
end
return out
";

/// Connections kept.
const POOL: usize = 4;
/// Timeout of one quarantine call.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis quarantine store.
pub struct RedisQuarantine {
    client: ::redis::Client,
    prefix: String,
    retention: Duration,
    pool: Mutex<Vec<::redis::Connection>>,
    hold: ::redis::Script,
    transition: ::redis::Script,
    delete: ::redis::Script,
    expire: ::redis::Script,
}

impl std::fmt::Debug for RedisQuarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        write!(f, "RedisQuarantine({})", self.prefix)
    }
}

fn err(e: ::redis::RedisError) -> QuarantineError {
    QuarantineError::Store(format!("redis: {e}"))
}

impl RedisQuarantine {
    /// The store at `url` under `prefix`; connects on first use.
    pub fn new(url: &str, prefix: &str, retention: Duration) -> Result<RedisQuarantine, QuarantineError> {
        let client = ::redis::Client::open(url).map_err(|e| QuarantineError::Store(format!("[store] url: {e}")))?;
        Ok(RedisQuarantine {
            client,
            prefix: prefix.to_owned(),
            retention,
            pool: Mutex::new(Vec::new()),
            hold: ::redis::Script::new(HOLD),
            transition: ::redis::Script::new(TRANSITION),
            delete: ::redis::Script::new(DELETE),
            expire: ::redis::Script::new(EXPIRE),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, QuarantineError> {
        let pooled = self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(TIMEOUT).map_err(err)?;
                c.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
                c.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
                c
            }
        };
        // On an error the connection is dropped: a late reply must not answer the next call.
        let out = f(&mut con).map_err(err)?;
        let mut pool = self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL {
            pool.push(con);
        }
        Ok(out)
    }

    fn entry_key(&self, id: &str) -> String {
        format!("{}q:entry:{id}", self.prefix)
    }

    fn keys(&self, id: &str) -> [String; 4] {
        let p = &self.prefix;
        [self.entry_key(id), format!("{p}q:index"), format!("{p}q:bytes"), format!("{p}q:size")]
    }

    fn transition_to(&self, id: &str, from: State, to: State, by: &str, at_ms: u64) -> Result<Entry, QuarantineError> {
        if !super::valid_id(id) {
            return Err(QuarantineError::NotFound(id.to_owned()));
        }
        let [k1, k2, k3, k4] = self.keys(id);
        let reply: Vec<String> = self.with(|con| {
            self.transition
                .key(k1)
                .key(k2)
                .key(k3)
                .key(k4)
                .arg(id)
                .arg(from.as_str())
                .arg(to.as_str())
                .arg(by)
                .arg(at_ms)
                .invoke(con)
        })?;
        match reply.as_slice() {
            [ok, json, by, at] if ok == "ok" => {
                let mut e: Entry = serde_json::from_str(json).map_err(|e| QuarantineError::Store(e.to_string()))?;
                e.state = to;
                e.released_by = (!by.is_empty()).then(|| by.clone());
                e.released_ms = at.parse().ok();
                Ok(e)
            }
            [missing, ..] if missing == "missing" => Err(QuarantineError::NotFound(id.to_owned())),
            [state, by, ..] => Err(QuarantineError::NotHeld {
                id: id.to_owned(),
                state: State::parse(state).map_or("unknown", State::as_str),
                by: by.clone(),
            }),
            _ => Err(QuarantineError::Store("unexpected reply".into())),
        }
    }

    fn read(&self, con: &mut ::redis::Connection, id: &str) -> ::redis::RedisResult<Option<Entry>> {
        let (json, state, by, at): (Option<String>, Option<String>, Option<String>, Option<u64>) =
            ::redis::cmd("HMGET").arg(self.entry_key(id)).arg("json").arg("state").arg("by").arg("at").query(con)?;
        let Some(mut e) = json.and_then(|j| serde_json::from_str::<Entry>(&j).ok()) else { return Ok(None) };
        e.state = state.as_deref().and_then(State::parse).unwrap_or(State::Held);
        e.released_by = by;
        e.released_ms = at;
        Ok(Some(e))
    }
}

impl QuarantineStore for RedisQuarantine {
    fn hold(&self, entry: &Entry, bounds: &QuarantineConfig) -> Result<(), QuarantineError> {
        let json = serde_json::to_string(entry).map_err(|e| QuarantineError::Store(e.to_string()))?;
        let [k1, k2, k3, k4] = self.keys(&entry.id);
        let ttl = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: String = self.with(|con| {
            self.hold
                .key(k1)
                .key(k2)
                .key(k3)
                .key(k4)
                .arg(&entry.id)
                .arg(entry.time_ms)
                .arg(json)
                .arg(entry.bytes)
                .arg(bounds.max_entries)
                .arg(bounds.max_bytes)
                .arg(ttl)
                .invoke(con)
        })?;
        match reply.as_str() {
            "ok" => Ok(()),
            "full-entries" => Err(QuarantineError::FullEntries(bounds.max_entries)),
            "full-bytes" => Err(QuarantineError::FullBytes(bounds.max_bytes)),
            other => Err(QuarantineError::Store(format!("hold: {other}"))),
        }
    }

    fn list(&self, limit: usize) -> Result<Vec<Entry>, QuarantineError> {
        let index = format!("{}q:index", self.prefix);
        self.with(|con| {
            let ids: Vec<String> = ::redis::cmd("ZRANGE").arg(&index).arg(0).arg(limit.max(1) - 1).query(con)?;
            let mut out = Vec::new();
            for id in ids {
                // An entry whose hash expired before the sweep saw it is not listed.
                if let Some(e) = self.read(con, &id)? {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }

    fn get(&self, id: &str) -> Result<Option<Entry>, QuarantineError> {
        if !super::valid_id(id) {
            return Ok(None);
        }
        self.with(|con| self.read(con, id))
    }

    fn claim(&self, id: &str, who: &str, now_ms: u64) -> Result<Entry, QuarantineError> {
        self.transition_to(id, State::Held, State::Releasing, who, now_ms)
    }

    fn finish(&self, id: &str) -> Result<(), QuarantineError> {
        self.transition_to(id, State::Releasing, State::Released, "", 0).map(drop)
    }

    fn unclaim(&self, id: &str) -> Result<(), QuarantineError> {
        self.transition_to(id, State::Releasing, State::Held, "", 0).map(drop)
    }

    fn delete(&self, id: &str) -> Result<Entry, QuarantineError> {
        if !super::valid_id(id) {
            return Err(QuarantineError::NotFound(id.to_owned()));
        }
        let [k1, k2, k3, k4] = self.keys(id);
        let reply: Vec<String> = self.with(|con| self.delete.key(k1).key(k2).key(k3).key(k4).arg(id).invoke(con))?;
        match reply.as_slice() {
            [json, state] => {
                let mut e: Entry = serde_json::from_str(json).map_err(|e| QuarantineError::Store(e.to_string()))?;
                e.state = State::parse(state).unwrap_or(State::Held);
                Ok(e)
            }
            _ => Err(QuarantineError::NotFound(id.to_owned())),
        }
    }

    fn expire(&self, cutoff_ms: u64) -> Result<Vec<Entry>, QuarantineError> {
        let p = &self.prefix;
        let ids: Vec<String> = self.with(|con| {
            self.expire
                .key(format!("{p}q:index"))
                .key(format!("{p}q:bytes"))
                .key(format!("{p}q:size"))
                .arg(cutoff_ms)
                .arg(1000)
                .invoke(con)
        })?;
        // The hashes expire by their TTL (possibly already gone): the ids are what is reported.
        let mut out = Vec::new();
        for id in ids {
            let e = self.with(|con| self.read(con, &id))?;
            out.push(e.unwrap_or_else(|| Entry {
                id: id.clone(),
                time_ms: 0,
                chain: String::new(),
                rule: None,
                listener: String::new(),
                session: 0,
                gateway: String::new(),
                from: None,
                to: None,
                user: None,
                kind: String::new(),
                stanza: None,
                file: None,
                bytes: 0,
                state: State::Held,
                released_by: None,
                released_ms: None,
            }));
            let _: i64 = self.with(|con| ::redis::cmd("DEL").arg(self.entry_key(&id)).query(con))?;
        }
        Ok(out)
    }

    fn stats(&self) -> Result<(u64, u64), QuarantineError> {
        let p = &self.prefix;
        self.with(|con| {
            let n: u64 = ::redis::cmd("ZCARD").arg(format!("{p}q:index")).query(con)?;
            let b: Option<i64> = ::redis::cmd("GET").arg(format!("{p}q:bytes")).query(con)?;
            Ok((n, u64::try_from(b.unwrap_or(0)).unwrap_or(0)))
        })
    }
}

/// How long a release waits for another gateway to say it took the delivery.
const REMOTE_WAIT: Duration = Duration::from_secs(3);
/// How long it then waits for the outcome of a delivery another gateway took (longer than a
/// session's own delivery timeout).
const REMOTE_OUTCOME_WAIT: Duration = Duration::from_secs(8);

/// A request on the delivery channel: "whoever has a session that can take this, deliver it".
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RemoteRequest {
    /// The gateway asking (it does not answer itself).
    origin: String,
    /// The key the one that delivers sets first (`SET NX`): one taker at most.
    token: String,
    /// The list the outcome is pushed to.
    reply: String,
    /// The entry, as claimed by the asker.
    entry: Entry,
}

impl RedisQuarantine {
    fn channel(&self) -> String {
        format!("{}q:deliver", self.prefix)
    }

    /// Follow the delivery channel on a thread of its own (reconnecting with backoff) and
    /// answer requests from other gateways that this gateway's sessions can take.
    pub fn start_delivery(self: &Arc<Self>, sessions: Arc<crate::sessions::Sessions>, handle: tokio::runtime::Handle) {
        let store = self.clone();
        let spawned = std::thread::Builder::new().name("quarantine-deliver".into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Err(e) = store.follow(&sessions, &handle) {
                    tracing::warn!(error = %e, "quarantine delivery channel lost; reconnecting");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the quarantine delivery channel");
        }
    }

    fn follow(
        self: &Arc<Self>,
        sessions: &Arc<crate::sessions::Sessions>,
        handle: &tokio::runtime::Handle,
    ) -> ::redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(TIMEOUT)?;
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(self.channel())?;
        pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    let Ok(req) = serde_json::from_str::<RemoteRequest>(&payload) else {
                        tracing::warn!("unreadable message on the quarantine delivery channel");
                        continue;
                    };
                    if req.origin == *super::GATEWAY {
                        continue;
                    }
                    let (store, sessions) = (self.clone(), sessions.clone());
                    handle.spawn(async move { store.answer(req, sessions).await });
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Take and carry out a delivery another gateway asked for, if a session here can take it.
    async fn answer(self: Arc<Self>, req: RemoteRequest, sessions: Arc<crate::sessions::Sessions>) {
        let Ok((chain, stanza)) = super::parse_entry(&req.entry) else { return };
        let bare = super::account(&req.entry, chain).unwrap_or_default();
        let preferred = (req.entry.gateway == *super::GATEWAY).then_some(req.entry.session);
        if sessions.candidates(chain, preferred, &bare).is_empty() {
            return;
        }
        let (store, token) = (self.clone(), req.token.clone());
        let took = tokio::task::spawn_blocking(move || store.take(&token)).await;
        if !matches!(took, Ok(Ok(true))) {
            return;
        }
        let local = super::SessionDeliver { sessions };
        let outcome = match super::Deliver::deliver(&local, &req.entry, chain, stanza).await {
            Ok(via) => format!("ok {via} on gateway {}", *super::GATEWAY),
            Err(e) => format!("fail on gateway {}: {e}", *super::GATEWAY),
        };
        tracing::info!(quarantine.id = %req.entry.id, outcome = %outcome, "delivery asked by another gateway");
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.with(|con| {
                let _: i64 = ::redis::cmd("LPUSH").arg(&req.reply).arg(&outcome).query(con)?;
                ::redis::cmd("PEXPIRE").arg(&req.reply).arg(60_000).query::<i64>(con)
            })
        })
        .await;
    }

    /// Set the token of a delivery: true for the first taker only.
    fn take(&self, token: &str) -> Result<bool, QuarantineError> {
        let key = format!("{}q:token:{token}", self.prefix);
        self.with(|con| {
            let set: Option<String> =
                ::redis::cmd("SET").arg(key).arg("1").arg("NX").arg("PX").arg(60_000).query(con)?;
            Ok(set.is_some())
        })
    }

    /// Ask the other gateways to deliver `entry`; the outcome (blocking, up to
    /// [`REMOTE_WAIT`] + [`REMOTE_OUTCOME_WAIT`]).
    fn ask(&self, entry: &Entry) -> Result<String, super::DeliverError> {
        use super::DeliverError;
        let token = super::new_id();
        let req = RemoteRequest {
            origin: super::GATEWAY.clone(),
            token: token.clone(),
            reply: format!("{}q:reply:{token}", self.prefix),
            entry: entry.clone(),
        };
        let payload = serde_json::to_string(&req).map_err(|e| DeliverError::Undeliverable(e.to_string()))?;
        let store_err = |e: QuarantineError| DeliverError::SessionGone(format!("other gateways not asked ({e})"));
        self.with(|con| ::redis::cmd("PUBLISH").arg(self.channel()).arg(&payload).query::<i64>(con))
            .map_err(store_err)?;
        // A blocking pop needs a connection of its own with a read timeout past its wait.
        let wait = |con: &mut ::redis::Connection, secs: Duration| -> ::redis::RedisResult<Option<String>> {
            con.set_read_timeout(Some(secs + TIMEOUT))?;
            let got: Option<(String, String)> =
                ::redis::cmd("BLPOP").arg(&req.reply).arg(secs.as_secs_f64()).query(con)?;
            Ok(got.map(|(_, v)| v))
        };
        let mut con = self.client.get_connection_with_timeout(TIMEOUT).map_err(|e| store_err(err(e)))?;
        let outcome = |v: String| match v.strip_prefix("ok ") {
            Some(via) => Ok(via.to_owned()),
            None => Err(DeliverError::SessionGone(v.trim_start_matches("fail ").to_owned())),
        };
        if let Some(v) = wait(&mut con, REMOTE_WAIT).map_err(|e| store_err(err(e)))? {
            return outcome(v);
        }
        // Nobody answered: take the token ourselves, so that nobody can deliver from now on.
        if self.take(&token).map_err(store_err)? {
            return Err(DeliverError::SessionGone("no other gateway has a session that can take it".into()));
        }
        // A gateway took it and has not said how it went yet.
        match wait(&mut con, REMOTE_OUTCOME_WAIT) {
            Ok(Some(v)) => outcome(v),
            _ => Err(DeliverError::Uncertain(
                "another gateway took the delivery and did not report its outcome; the entry stays \
                 releasing (it may have been delivered: check, then delete it)"
                    .into(),
            )),
        }
    }
}

/// Delivery through the other gateways sharing the store: the one with a session that can take
/// the stanza delivers it (one taker at most: a token set with `SET NX`), and says how it went.
#[derive(Debug)]
pub struct RemoteDeliver {
    /// The store (its connection and the channel's name).
    pub store: Arc<RedisQuarantine>,
}

impl super::Deliver for RemoteDeliver {
    fn deliver<'a>(
        &'a self,
        entry: &'a Entry,
        _chain: stanzawall_core::policy::Chain,
        _stanza: stanzawall_core::xml::Element,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, super::DeliverError>> + Send + 'a>> {
        Box::pin(async move {
            let (store, entry) = (self.store.clone(), entry.clone());
            tokio::task::spawn_blocking(move || store.ask(&entry))
                .await
                .unwrap_or_else(|e| Err(super::DeliverError::SessionGone(format!("other gateways not asked ({e})"))))
        })
    }
}
