//! The Redis store (`[store] backend = "redis"`): the state several gateways behind one load
//! balancer share (README "Running several gateways (Redis)").
//!
//! The core decides (which bucket a stanza is charged to, which limit applies, how many
//! failures ban, which recipients and texts are counted); this module only keeps the counters,
//! in Redis, through Lua scripts that each run atomically on the server, so two gateways can
//! never both admit the last event of a burst nor both miss the failure that bans:
//!
//! - **rates** ([`RATE_SCRIPT`]): GCRA as in `stanzawall_core::limit::Gcra`, one key per
//!   (limiter, chain, key value) holding the theoretical arrival time in µs of the Redis
//!   server's clock (one clock for all gateways), with a TTL until the bucket is full again;
//!   and per source a sorted set of the buckets it made, for `max_keys_per_source`.
//! - **bans** ([`FAILURE_SCRIPT`]): failures per source in a sorted set that expires with the
//!   window; at the threshold the ban goes into one sorted set of all bans (score = until, in
//!   Unix seconds) and is published on a channel. Every gateway subscribes, applies the ban to
//!   its own guard (the accept path never asks Redis) and to its nftables set.
//! - **fan-out** ([`FANOUT_SCRIPT`]) and **waves** ([`WAVE_SCRIPT`]): the `fanout` and `wave`
//!   conditions' tables, keyed by digests, capped per key, expiring with their windows.
//! - **list edits**: published on a channel by the gateway whose admin API made them, made in
//!   their own list files by the others; **audit order**: one counter numbers every record.
//!
//! Time budget: a decision is one EVALSHA on a pooled connection whose read and write
//! timeouts are `[store] timeout`; the session's task gives its worker thread up meanwhile
//! (`block_in_place`). On a timeout or an error the store counts as down until the watcher
//! thread reconnects (with backoff) and answers a ping; meanwhile decisions follow
//! `rates_on_error` / `bans_on_error` / `fanout_on_error` / `waves_on_error`, with a metric and
//! one log line a minute per kind.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stanzawall_core::antispam::{TextCopy, Wave, WaveMatch, WaveSpec};
use stanzawall_core::ban::BanConfig;
use stanzawall_core::config::{OnError, StoreBackend, StoreConfig};
use stanzawall_core::guard::Cidr;
use stanzawall_core::policy::rate::{Bucket, FanoutQuery, KeySource, Limit};
use stanzawall_core::policy::{RateStore, RateTable};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// GCRA over the Redis server's clock. KEYS: bucket, source's set of buckets. ARGV: emission
/// interval µs, tolerance µs (interval × (burst − 1)), the source's quota, the bucket's member
/// name in the source's set. Returns 1 when over the limit.
pub const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZSCORE', KEYS[2], ARGV[4]) == false and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
    return 1
  end
  tat = now
elseif tat < now then
  tat = now
end
if tat > now + tolerance then
  return 1
end
local new = tat + interval
local ttl = math.ceil((new - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', ttl)
redis.call('ZADD', KEYS[2], string.format('%.0f', new), ARGV[4])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 0
";

/// One authentication failure. KEYS: the source's failures, the ban set. ARGV: source, now ms,
/// window ms, threshold, until (Unix s), channel, a unique member. Returns 1 if this failure
/// banned the source (the ban is then in the set and published).
pub const FAILURE_SCRIPT: &str = r"
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], now, ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 'GT', ARGV[5], ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[2], last[2])
redis.call('PUBLISH', ARGV[6], 'ban ' .. ARGV[1] .. ' ' .. ARGV[5])
return 1
";

/// A ban pushed to the store without counting (a ban made locally while the store was down).
const BAN_SCRIPT: &str = r"
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], last[2])
redis.call('PUBLISH', ARGV[3], 'ban ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
";

/// Distinct recipients of one `fanout` key, atomically (as `antispam::distinct::Distinct::add`
/// counts them). KEYS: the key's recipients (sorted set: recipient digest → last seen, ms of
/// the server's clock), the source's set of keys. ARGV: recipient digest, window ms, the
/// condition's recipients, the source's quota of keys, the key's member name in the source's
/// set. Returns 1 when past the limit (or the source may not make another key: fail closed).
/// At most `recipients` members per key; every key expires with its window.
pub const FANOUT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZSCORE', KEYS[2], ARGV[5]) == false and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
    return 1
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 1
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now + window, ARGV[5])
if redis.call('PTTL', KEYS[2]) < window then
  redis.call('PEXPIRE', KEYS[2], window)
end
return 0
";

/// One copy of a text toward a wave (as `antispam::wave::Waves::observe` counts it), atomically.
/// KEYS: the copy's band keys (band value → cluster number). ARGV: cluster key prefix, window
/// ms, least equal signature values, the signature (8 hex digits per value), sender digest,
/// recipient digest, senders that make a wave, recipients that make one (0: none), the
/// sample, the wave id (a new cluster's name is the id and the server's time). A cluster is a hash (signature, sample, id,
/// detected) with a set of sender and of recipient digests, each capped at its threshold;
/// everything expires one window after the cluster's last copy. Returns `0`, or
/// `1|NEW|ID|SENDERS|RECIPIENTS|SAMPLE` when the copy belongs to a detected wave.
pub const WAVE_SCRIPT: &str = r"
local window = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local sig = ARGV[4]
local best, bestsame = nil, -1
local seen = {}
for i = 1, #KEYS do
  local id = redis.call('GET', KEYS[i])
  if id and not seen[id] then
    seen[id] = true
    local other = redis.call('HGET', ARGV[1] .. id, 's')
    if other then
      local same = 0
      for j = 0, 63 do
        if string.sub(other, j * 8 + 1, j * 8 + 8) == string.sub(sig, j * 8 + 1, j * 8 + 8) then
          same = same + 1
        end
      end
      if same >= need and same > bestsame then
        best, bestsame = id, same
      end
    end
  end
end
if not best then
  local t = redis.call('TIME')
  best = ARGV[10] .. '.' .. t[1] .. '.' .. t[2]
  redis.call('HSET', ARGV[1] .. best, 's', sig, 'sample', ARGV[9], 'id', ARGV[10], 'd', '0')
end
local c = ARGV[1] .. best
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur == best then
    redis.call('PEXPIRE', KEYS[i], window)
  elseif not cur or redis.call('EXISTS', ARGV[1] .. cur) == 0 then
    redis.call('SET', KEYS[i], best, 'PX', window)
  end
end
local senders, recipients = c .. ':s', c .. ':r'
local ns, nr = tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('SCARD', senders) < ns then
  redis.call('SADD', senders, ARGV[5])
end
if nr > 0 and redis.call('SCARD', recipients) < nr then
  redis.call('SADD', recipients, ARGV[6])
end
local sc, rc = redis.call('SCARD', senders), redis.call('SCARD', recipients)
redis.call('PEXPIRE', c, window)
redis.call('PEXPIRE', senders, window)
if nr > 0 then
  redis.call('PEXPIRE', recipients, window)
end
local new = 0
if (sc >= ns or (nr > 0 and rc >= nr)) and redis.call('HGET', c, 'd') == '0' then
  redis.call('HSET', c, 'd', '1')
  new = 1
end
if redis.call('HGET', c, 'd') ~= '1' then
  return '0'
end
return '1|' .. new .. '|' .. redis.call('HGET', c, 'id') .. '|' .. sc .. '|' .. rc .. '|' .. redis.call('HGET', c, 'sample')
";

/// Connections kept ready for rate decisions.
const POOL: usize = 16;
/// How often the watcher wakes up to check the store when nothing is published.
const WATCH_TICK: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One "store is down" line per kind of state at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The store's own metric families.
#[derive(Debug, Default)]
struct StoreMetrics {
    /// 1 while the store answers.
    up: Gauge,
    /// Operations that failed or ran out of time, by kind of state.
    errors: Family<KindLabels, Counter>,
    /// Decisions taken without the store (`*_on_error`), by kind of state.
    fallbacks: Family<KindLabels, Counter>,
}

/// What the store's channels carry to this gateway: bans, and list edits made on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanEvent {
    /// `ban SOURCE UNTIL`.
    Ban(Cidr, SystemTime),
    /// Every active ban, read when the watcher (re)connects.
    Snapshot(Vec<(Cidr, SystemTime)>),
    /// A list entry added or removed through another gateway's admin API.
    List(ListEdit),
}

/// One list edit as the `PREFIX lists` channel carries it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListEdit {
    /// The gateway that made it (its own messages come back to it and are ignored).
    pub origin: String,
    /// `add` or `remove`.
    pub op: String,
    /// The list's name (`[list.NAME]`).
    pub list: String,
    /// The entry, as the admin API cleaned it.
    pub entry: String,
}

impl ListEdit {
    /// Read a message; `None` for anything that is not a well-formed edit.
    pub fn parse(text: &str) -> Option<ListEdit> {
        let e: ListEdit = serde_json::from_str(text).ok()?;
        // The entry is checked again, as the admin API checks one, by whoever applies it.
        let ok = matches!(e.op.as_str(), "add" | "remove")
            && !e.list.is_empty()
            && e.list.len() <= 128
            && !e.entry.is_empty()
            && e.entry.len() <= 4096;
        ok.then_some(e)
    }
}

/// Parse one `ban ADDR/LEN UNTIL_UNIX_S` message (anything else: `None`, logged by the caller).
pub fn parse_ban_message(text: &str) -> Option<(Cidr, SystemTime)> {
    let mut parts = text.split_whitespace();
    if parts.next()? != "ban" {
        return None;
    }
    let source = Cidr::parse(parts.next()?)?.network();
    let until = UNIX_EPOCH.checked_add(Duration::from_secs(parts.next()?.parse().ok()?))?;
    parts.next().is_none().then_some((source, until))
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Connections ready for rate decisions.
#[derive(Default)]
struct Pool(Mutex<Vec<redis::Connection>>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.lock().len())
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<redis::Connection>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Redis store.
#[derive(Debug)]
pub struct RedisStore {
    client: redis::Client,
    config: StoreConfig,
    pool: Pool,
    up: AtomicBool,
    /// Rate decisions while the store is down with `rates_on_error = "local"`.
    local: RateTable,
    rate_script: redis::Script,
    failure_script: redis::Script,
    ban_script: redis::Script,
    fanout_script: redis::Script,
    wave_script: redis::Script,
    /// This gateway's name on the list channel (random, per process).
    instance: String,
    metrics: StoreMetrics,
    last_log: Mutex<[Option<Instant>; KINDS.len()]>,
}

/// The kinds of shared state, as metric labels (indexes: the `RATES`… constants).
const KINDS: [&str; 4] = ["rates", "bans", "fanout", "waves"];
const RATES: usize = 0;
const BANS: usize = 1;
const FANOUT: usize = 2;
const WAVES: usize = 3;

/// Errors making the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one the client understands.
    #[error("[store] url: {0}")]
    Url(redis::RedisError),
}

impl RedisStore {
    /// The store `config` describes, or `None` for the in-process one. Nothing is connected
    /// yet: [`RedisStore::start`] starts the watcher that connects.
    pub fn new(config: &StoreConfig) -> Result<Option<Arc<RedisStore>>, StoreError> {
        let StoreBackend::Redis { url } = &config.backend else { return Ok(None) };
        let client = redis::Client::open(url.as_str()).map_err(StoreError::Url)?;
        Ok(Some(Arc::new(RedisStore {
            client,
            config: config.clone(),
            pool: Pool::default(),
            up: AtomicBool::new(false),
            local: RateTable::new(),
            rate_script: redis::Script::new(RATE_SCRIPT),
            failure_script: redis::Script::new(FAILURE_SCRIPT),
            ban_script: redis::Script::new(BAN_SCRIPT),
            fanout_script: redis::Script::new(FANOUT_SCRIPT),
            wave_script: redis::Script::new(WAVE_SCRIPT),
            instance: {
                let mut b = [0u8; 8];
                let _ = getrandom::fill(&mut b);
                b.iter().map(|x| format!("{x:02x}")).collect()
            },
            metrics: StoreMetrics::default(),
            last_log: Mutex::new([None; KINDS.len()]),
        })))
    }

    /// Register the store's metric families.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register("stanzawall_store_up", "1 while the shared store (Redis) answers", m.up.clone());
        registry.register(
            "stanzawall_store_errors",
            "Shared-store operations that failed or ran out of time, by kind of state",
            m.errors.clone(),
        );
        registry.register(
            "stanzawall_store_fallbacks",
            "Decisions taken without the shared store (rates_on_error, bans_on_error, fanout_on_error, waves_on_error), by kind of state",
            m.fallbacks.clone(),
        );
        for kind in KINDS {
            let _ = m.errors.get_or_create(&KindLabels { kind });
            let _ = m.fallbacks.get_or_create(&KindLabels { kind });
        }
    }

    /// True while the store answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn key(&self, parts: &[&[u8]]) -> String {
        // Keys and sources are chosen by the traffic: kept as digests, so every key has the
        // same size however long the JID (invariant 6, bounded memory, docs/DESIGN.md).
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        ctx.finish().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn channel(&self) -> String {
        format!("{}bans", self.config.prefix)
    }

    fn lists_channel(&self) -> String {
        format!("{}lists", self.config.prefix)
    }

    /// Tell the other gateways about a list edit made here (blocking). Pub/sub: a gateway not
    /// connected at this moment does not see it (README "Running several gateways").
    pub fn publish_list_edit(&self, add: bool, list: &str, entry: &str) -> redis::RedisResult<()> {
        let edit = ListEdit {
            origin: self.instance.clone(),
            op: if add { "add" } else { "remove" }.to_owned(),
            list: list.to_owned(),
            entry: entry.to_owned(),
        };
        let text = serde_json::to_string(&edit).unwrap_or_default();
        self.with_connection(|con| redis::cmd("PUBLISH").arg(self.lists_channel()).arg(text).query::<i64>(con))
            .map(drop)
    }

    /// This gateway's name in the store (random, per process): the `gateway` of its audit
    /// records and the origin of its list edits.
    pub fn instance_name(&self) -> &str {
        &self.instance
    }

    /// Take `n` audit sequence numbers from the store's counter; the last one (blocking).
    pub fn next_audit_seq(&self, n: u64) -> redis::RedisResult<u64> {
        let key = format!("{}audit:seq", self.config.prefix);
        self.with_connection(|con| redis::cmd("INCRBY").arg(key).arg(n).query(con))
    }

    fn bans_key(&self) -> String {
        format!("{}bans", self.config.prefix)
    }

    fn connect(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let con = self.client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(self.config.timeout))?;
        con.set_write_timeout(Some(self.config.timeout))?;
        Ok(con)
    }

    /// Run `f` on a pooled connection; the connection is dropped on any error (a reply that
    /// arrives after a timeout would otherwise answer the next question).
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.pool.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect(self.config.timeout)?,
        };
        let out = f(&mut con)?;
        let mut pool = self.pool.lock();
        if pool.len() < POOL {
            pool.push(con);
        }
        Ok(out)
    }

    /// Note a failure: down until the watcher sees the store answer again.
    fn failed(&self, kind: usize, e: &redis::RedisError) {
        let label = KINDS[kind];
        self.metrics.errors.get_or_create(&KindLabels { kind: label }).inc();
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.up.set(0);
            self.pool.lock().clear();
            warn!(store.kind = label, error = %e, "shared store call failed; down until it answers again");
        }
    }

    /// A decision taken without the store: counted, and logged once a minute per kind.
    fn fell_back(&self, kind: usize) {
        let label = KINDS[kind];
        self.metrics.fallbacks.get_or_create(&KindLabels { kind: label }).inc();
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last[kind].is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            last[kind] = Some(now);
            let c = &self.config;
            let on_error = [c.rates_on_error, c.bans_on_error, c.fanout_on_error, c.waves_on_error][kind];
            warn!(
                store.kind = label,
                on_error = on_error.as_str(),
                "shared store unavailable; deciding without it (logged once a minute)"
            );
        }
    }

    fn fallback_rate(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit, now: Instant) -> bool {
        self.fell_back(RATES);
        match self.config.rates_on_error {
            OnError::Local => self.local.over_limit(bucket, source, limit, now),
            OnError::Closed => true,
            OnError::Open => false,
        }
    }

    fn redis_over_limit(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit) -> redis::RedisResult<bool> {
        let chain = bucket.chain.as_str().as_bytes();
        let bucket_id = self.key(&[bucket.limiter.as_bytes(), chain, bucket.key.as_bytes()]);
        let source_text = match source {
            KeySource::User(u) => format!("u:{u}"),
            KeySource::Address(ip) => format!("a:{ip}"),
        };
        let source_id = self.key(&[bucket.limiter.as_bytes(), chain, source_text.as_bytes()]);
        let interval = limit.rate.emission_interval();
        let tolerance = interval * limit.rate.burst.saturating_sub(1);
        let p = &self.config.prefix;
        let over: i64 = self.with_connection(|con| {
            self.rate_script
                .key(format!("{p}rate:{bucket_id}"))
                .key(format!("{p}src:{source_id}"))
                .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
                .arg(u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX))
                .arg(limit.max_keys_per_source)
                .arg(&bucket_id)
                .invoke(con)
        })?;
        Ok(over != 0)
    }

    fn source_text(source: &KeySource) -> String {
        match source {
            KeySource::User(u) => format!("u:{u}"),
            KeySource::Address(ip) => format!("a:{ip}"),
        }
    }

    fn redis_fanout(&self, q: &FanoutQuery<'_>) -> redis::RedisResult<bool> {
        let ns = q.ns.to_be_bytes();
        let key_id = self.key(&[b"fanout", &ns, q.key.as_bytes()]);
        let source_id = self.key(&[b"fanout", &ns, Self::source_text(q.source).as_bytes()]);
        let recipient = &self.key(&[b"who", q.recipient.as_bytes()])[..16];
        let p = &self.config.prefix;
        let over: i64 = self.with_connection(|con| {
            self.fanout_script
                .key(format!("{p}fan:{key_id}"))
                .key(format!("{p}fansrc:{source_id}"))
                .arg(recipient)
                .arg(u64::try_from(q.window.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg(q.recipients)
                .arg(q.quota)
                .arg(&key_id)
                .invoke(con)
        })?;
        Ok(over != 0)
    }

    fn redis_wave(&self, spec: &WaveSpec, copy: &TextCopy<'_>) -> redis::RedisResult<Option<WaveMatch>> {
        use stanzawall_core::antispam::wave;
        let ns = spec.ns.to_be_bytes();
        let p = &self.config.prefix;
        let mut invocation = self.wave_script.prepare_invoke();
        for b in wave::bands(copy.fingerprint) {
            invocation.key(format!("{p}wb:{}", self.key(&[b"band", &ns, &b.to_be_bytes()])));
        }
        let need = (spec.similarity * wave::SIGNATURE as f64 - 1e-9).ceil() as usize;
        let signature: String = copy.fingerprint.iter().map(|v| format!("{v:08x}")).collect();
        let sample: String = copy.normal.chars().take(wave::SAMPLE_CHARS).collect();
        invocation
            .arg(format!("{p}wc:{}:", self.key(&[b"wave", &ns])))
            .arg(u64::try_from(spec.window.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(need)
            .arg(signature)
            .arg(&self.key(&[b"who", copy.sender.as_bytes()])[..16])
            .arg(&self.key(&[b"who", copy.recipient.as_bytes()])[..16])
            .arg(spec.senders)
            .arg(spec.recipients.unwrap_or(0))
            .arg(sample)
            .arg(wave::wave_id(copy.fingerprint));
        let answer: String = self.with_connection(|con| invocation.invoke(con))?;
        Ok(parse_wave_answer(&answer))
    }

    /// Count an authentication failure of `source` in the store; `Some(until)` if it banned.
    /// Blocking: call off the async threads.
    pub fn record_failure(
        &self,
        source: Cidr,
        now: SystemTime,
        ban: &BanConfig,
    ) -> redis::RedisResult<Option<SystemTime>> {
        let until = now.checked_add(ban.duration).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let member = format!("{now_ms}-{}", u64::from_be_bytes(nonce));
        let p = &self.config.prefix;
        let source_text = source.to_string();
        let banned: i64 = self.with_connection(|con| {
            self.failure_script
                .key(format!("{p}fail:{}", self.key(&[source_text.as_bytes()])))
                .key(self.bans_key())
                .arg(&source_text)
                .arg(now_ms)
                .arg(u64::try_from(ban.window.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg(ban.auth_failures.max(1))
                .arg(unix_secs(until))
                .arg(self.channel())
                .arg(member)
                .invoke(con)
        })?;
        // The store keeps whole seconds: the local table gets the same expiry as the others.
        Ok((banned != 0).then(|| UNIX_EPOCH + Duration::from_secs(unix_secs(until))))
    }

    /// Put bans made here while the store was down into it (blocking).
    pub fn push_bans(&self, bans: &[(Cidr, SystemTime)]) -> redis::RedisResult<()> {
        self.with_connection(|con| {
            for (source, until) in bans {
                let _: i64 = self
                    .ban_script
                    .key(self.bans_key())
                    .arg(source.to_string())
                    .arg(unix_secs(*until))
                    .arg(self.channel())
                    .invoke(con)?;
            }
            Ok(())
        })
    }

    /// What a failed authentication does: counted in the store, or (store down, or the call
    /// failing) in `local`, this gateway's own table. Blocking.
    pub fn auth_failed(
        &self,
        source: Cidr,
        now: SystemTime,
        ban: &BanConfig,
        local: impl FnOnce() -> Option<SystemTime>,
    ) -> Option<SystemTime> {
        if self.is_up() {
            match self.record_failure(source, now, ban) {
                Ok(until) => return until,
                Err(e) => self.failed(BANS, &e),
            }
        }
        self.fell_back(BANS);
        local()
    }

    /// Refuse new connections now? (`bans_on_error = "closed"` while the store is down.)
    pub fn refuse_admission(&self) -> bool {
        let refuse = self.config.bans_on_error == OnError::Closed && !self.is_up();
        if refuse {
            self.fell_back(BANS);
        }
        refuse
    }

    /// Start the watcher thread: it (re)connects with backoff, keeps the pool filled, reads
    /// every ban when it connects and then follows the ban channel; bans reach `events`.
    pub fn start(self: &Arc<Self>, events: mpsc::Sender<BanEvent>) {
        let store = self.clone();
        let spawned = std::thread::Builder::new().name("store-watch".into()).spawn(move || store.watch(&events));
        if let Err(e) = spawned {
            error!(error = %e, "cannot start the shared-store watcher");
        }
    }

    fn watch(&self, events: &mpsc::Sender<BanEvent>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow(events) {
                Ok(()) => return, // the daemon is gone (nobody receives events)
                Err(e) => {
                    if self.up.swap(false, Ordering::AcqRel) {
                        self.metrics.up.set(0);
                        warn!(error = %e, "shared store connection lost; reconnecting");
                    }
                    self.pool.lock().clear();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connected period: `Err` when the connection is lost.
    fn follow(&self, events: &mpsc::Sender<BanEvent>) -> redis::RedisResult<()> {
        let mut con = self.connect(self.config.connect_timeout)?;
        con.set_read_timeout(Some(WATCH_TICK))?;
        let now = unix_secs(SystemTime::now());
        let _: i64 = redis::cmd("ZREMRANGEBYSCORE").arg(self.bans_key()).arg("-inf").arg(now).query(&mut con)?;
        let all: Vec<(String, u64)> =
            redis::cmd("ZRANGE").arg(self.bans_key()).arg(0).arg(-1).arg("WITHSCORES").query(&mut con)?;
        let snapshot = all
            .iter()
            .filter_map(|(s, until)| {
                Some((Cidr::parse(s)?.network(), UNIX_EPOCH.checked_add(Duration::from_secs(*until))?))
            })
            .collect();
        if events.blocking_send(BanEvent::Snapshot(snapshot)).is_err() {
            return Ok(());
        }
        let mut spare = Vec::new();
        for _ in 0..4 {
            spare.push(self.connect(self.config.connect_timeout)?);
        }
        self.pool.lock().extend(spare);
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(self.channel())?;
        pubsub.subscribe(self.lists_channel())?;
        pubsub.set_read_timeout(Some(WATCH_TICK))?;
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.up.set(1);
            info!("shared store connected");
        }
        loop {
            match pubsub.get_message() {
                Ok(msg) if msg.get_channel_name() == self.lists_channel() => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    match ListEdit::parse(&payload) {
                        Some(edit) if edit.origin == self.instance => {}
                        Some(edit) => {
                            if events.blocking_send(BanEvent::List(edit)).is_err() {
                                return Ok(());
                            }
                        }
                        None => warn!(message = %payload.escape_debug(), "unreadable message on the list channel"),
                    }
                }
                Ok(msg) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    match parse_ban_message(&payload) {
                        Some((source, until)) => {
                            if events.blocking_send(BanEvent::Ban(source, until)).is_err() {
                                return Ok(());
                            }
                        }
                        None => warn!(message = %payload.escape_debug(), "unreadable message on the ban channel"),
                    }
                }
                Err(e) if e.is_timeout() => {
                    // A rate call failed meanwhile: the store is believed down until it
                    // answers here again (the subscription itself may still be fine).
                    if !self.is_up() {
                        let mut probe = self.connect(self.config.connect_timeout)?;
                        let _: String = redis::cmd("PING").query(&mut probe)?;
                        self.pool.lock().push(probe);
                        self.up.store(true, Ordering::Release);
                        self.metrics.up.set(1);
                        info!("shared store answers again");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RateStore for RedisStore {
    fn over_limit(&self, bucket: Bucket<'_>, source: &KeySource, limit: &Limit, now: Instant) -> bool {
        if !self.is_up() {
            return self.fallback_rate(bucket, source, limit, now);
        }
        match blocking(|| self.redis_over_limit(bucket, source, limit)) {
            Ok(over) => over,
            Err(e) => {
                self.failed(RATES, &e);
                self.fallback_rate(bucket, source, limit, now)
            }
        }
    }

    fn antispam(&self) -> &stanzawall_core::antispam::AntiSpam {
        // Contacts, reports and the event queue stay per gateway; fan-out and waves are shared
        // below, and this table's are their fallback.
        self.local.antispam()
    }

    fn fanout(&self, q: &FanoutQuery<'_>, now: Instant) -> bool {
        if self.is_up() {
            match blocking(|| self.redis_fanout(q)) {
                Ok(over) => return over,
                Err(e) => self.failed(FANOUT, &e),
            }
        }
        self.fell_back(FANOUT);
        match self.config.fanout_on_error {
            OnError::Local => {
                self.local.antispam().fanout(q.ns, q.key, q.source, q.quota, q.recipient, q.recipients, q.window, now)
            }
            OnError::Closed => true,
            OnError::Open => false,
        }
    }

    fn wave(&self, spec: &WaveSpec, copy: &TextCopy<'_>, now: Instant) -> Option<WaveMatch> {
        if self.is_up() {
            match blocking(|| self.redis_wave(spec, copy)) {
                Ok(found) => return found,
                Err(e) => self.failed(WAVES, &e),
            }
        }
        self.fell_back(WAVES);
        match self.config.waves_on_error {
            OnError::Local => self.local.antispam().wave_local(spec, copy, now),
            // Fail closed: the condition holds (its rule's action applies), flagged as such.
            OnError::Closed => Some(WaveMatch {
                wave: Wave { id: "store-down".into(), senders: 0, recipients: 0, sample: String::new() },
                new: false,
            }),
            OnError::Open => None,
        }
    }
}

/// The wave script's answer: `0`, or `1|NEW|ID|SENDERS|RECIPIENTS|SAMPLE`.
fn parse_wave_answer(answer: &str) -> Option<WaveMatch> {
    let mut parts = answer.splitn(6, '|');
    if parts.next()? != "1" {
        return None;
    }
    let new = parts.next()? == "1";
    let id = parts.next()?.to_owned();
    let senders = parts.next()?.parse().ok()?;
    let recipients = parts.next()?.parse().ok()?;
    let sample = parts.next()?.to_owned();
    Some(WaveMatch { wave: Wave { id, senders, recipients, sample }, new })
}

impl crate::audit::Sequencer for RedisStore {
    fn name(&self) -> &str {
        self.instance_name()
    }

    fn is_up(&self) -> bool {
        RedisStore::is_up(self)
    }

    fn take(&self, n: u64) -> Result<u64, String> {
        self.next_audit_seq(n).map_err(|e| e.to_string())
    }
}

/// Run a blocking store call from a session's task: on the multi-threaded runtime the worker
/// hands its other tasks to another thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Is `ip` one of `trusted`?
pub fn trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    let ip = stanzawall_core::guard::unmap(ip);
    trusted.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_messages() {
        let (s, u) = parse_ban_message("ban 192.0.2.7/32 1700000000").unwrap();
        assert_eq!(s, Cidr::parse("192.0.2.7/32").unwrap());
        assert_eq!(u, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(parse_ban_message("ban 2001:db8::9/64 5").unwrap().0, Cidr::parse("2001:db8::/64").unwrap());
        for bad in [
            "",
            "ban",
            "ban x 1",
            "ban 192.0.2.7/32",
            "ban 192.0.2.7/32 -1",
            "unban 192.0.2.7/32 1",
            "ban 192.0.2.7/32 1 extra",
            "ban 192.0.2.7/32 99999999999999999999",
        ] {
            assert_eq!(parse_ban_message(bad), None, "{bad}");
        }
    }

    #[test]
    fn wave_answers() {
        assert_eq!(parse_wave_answer("0"), None);
        let m = parse_wave_answer("1|1|00ff00ff00ff00ff|3|0|your parcel | is waiting").unwrap();
        assert!(m.new);
        assert_eq!((m.wave.id.as_str(), m.wave.senders, m.wave.recipients), ("00ff00ff00ff00ff", 3, 0));
        assert_eq!(m.wave.sample, "your parcel | is waiting", "the sample keeps its own bars");
        for bad in ["", "1", "1|1|id", "1|1|id|x|0|s", "2|0|id|1|1|s"] {
            assert_eq!(parse_wave_answer(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_edit_messages() {
        let ok = r#"{"origin":"ab","op":"add","list":"bad_urls","entry":"evil.example"}"#;
        assert_eq!(ListEdit::parse(ok).unwrap().entry, "evil.example");
        for bad in [
            r#"{"origin":"ab","op":"drop","list":"bad_urls","entry":"evil.example"}"#,
            r#"{"origin":"ab","op":"add","list":"","entry":"evil.example"}"#,
            r#"{"origin":"ab","op":"add","list":"l","entry":""}"#,
            r#"{"origin":"ab","op":"add","list":"l"}"#,
            "ban 192.0.2.7/32 1",
            "",
        ] {
            assert_eq!(ListEdit::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn down_store_decides_fanout_and_waves_as_configured() {
        let source = KeySource::Address("192.0.2.1".parse().unwrap());
        let q = FanoutQuery {
            ns: 1,
            key: "carol@example.test",
            source: &source,
            quota: 10,
            recipient: "a@example.test",
            recipients: 1,
            window: Duration::from_secs(60),
        };
        let sig = [7u32; stanzawall_core::antispam::wave::SIGNATURE];
        let copy = TextCopy { fingerprint: &sig, normal: "a wave of text", sender: "s@x.test", recipient: "r@x.test" };
        let spec = WaveSpec {
            ns: 1,
            senders: 1,
            recipients: None,
            window: Duration::from_secs(60),
            similarity: 0.8,
            min_length: 1,
        };
        let now = Instant::now();
        for (mode, fanout_second, wave) in
            [(OnError::Local, true, true), (OnError::Closed, true, true), (OnError::Open, false, false)]
        {
            let store = RedisStore::new(&StoreConfig {
                backend: StoreBackend::Redis { url: "redis://127.0.0.1:1".into() },
                fanout_on_error: mode,
                waves_on_error: mode,
                ..StoreConfig::default()
            })
            .unwrap()
            .unwrap();
            let first = store.fanout(&q, now);
            assert_eq!(first, mode == OnError::Closed, "{mode:?}");
            let other = FanoutQuery { recipient: "b@example.test", ..q };
            assert_eq!(store.fanout(&other, now), fanout_second, "{mode:?}");
            assert_eq!(store.wave(&spec, &copy, now).is_some(), wave, "{mode:?}");
        }
    }

    #[test]
    fn keys_are_fixed_size_digests() {
        let store = RedisStore::new(&StoreConfig {
            backend: StoreBackend::Redis { url: "redis://127.0.0.1:1".into() },
            ..StoreConfig::default()
        })
        .unwrap()
        .unwrap();
        let long = "x".repeat(3000);
        let a = store.key(&[b"l", b"c2s-in", long.as_bytes()]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, store.key(&[b"l", b"c2s-in", b"y"]));
        // Parts are length-framed: moving a byte between them makes another key.
        assert_ne!(store.key(&[b"ab", b"c"]), store.key(&[b"a", b"bc"]));
        assert!(!store.is_up(), "nothing is connected before the watcher runs");
    }

    #[test]
    fn down_store_answers_as_configured() {
        let limit =
            Limit { rate: stanzawall_core::limit::Rate::parse("1/minute", 1).unwrap(), max_keys_per_source: 10 };
        let source = KeySource::Address("192.0.2.1".parse().unwrap());
        let bucket = Bucket { limiter: "l", chain: stanzawall_core::policy::Chain::C2sIn, key: "k" };
        let now = Instant::now();
        for (mode, first, second) in
            [(OnError::Local, false, true), (OnError::Closed, true, true), (OnError::Open, false, false)]
        {
            let store = RedisStore::new(&StoreConfig {
                backend: StoreBackend::Redis { url: "redis://127.0.0.1:1".into() },
                rates_on_error: mode,
                ..StoreConfig::default()
            })
            .unwrap()
            .unwrap();
            assert_eq!(store.over_limit(bucket, &source, &limit, now), first, "{mode:?}");
            assert_eq!(store.over_limit(bucket, &source, &limit, now), second, "{mode:?}");
        }
    }
}
