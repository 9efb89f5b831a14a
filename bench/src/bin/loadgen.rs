//! bench-loadgen: N concurrent XMPP c2s sessions (direct TLS, STARTTLS or plaintext), each
//! logging in with SASL PLAIN and binding a resource, then sending a configurable mix of chat
//! messages (bodies with URLs), presence and iq — flat out with a window of outstanding stanzas,
//! or at a fixed rate. Every stanza is addressed to the session's own full JID and carries its
//! send time in its id; the echo (bench-sink reflects it, a real server routes it back) gives
//! the round-trip latency. Prints one JSON line with the figures.
//!
//! Modes besides the default throughput run: `--idle SECS` logs every session in, prints
//! `READY` and holds them (for RSS per idle session), and `--handshakes` repeats full
//! connect → TLS → SASL → bind → close cycles (no TLS resumption) and reports logins/s.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use stanzawall_bench::{attr, base64_encode, child_text, client_tls, next_event, Event, NS_BIND, NS_SASL, NS_TLS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    /// Direct TLS from the first byte (XEP-0368).
    Tls,
    /// Plaintext stream, then STARTTLS (RFC 6120 §5).
    Starttls,
    /// No TLS at all (against a plaintext backend).
    Plain,
}

#[derive(Parser, Debug)]
#[command(about = "XMPP c2s load generator for the stanzawall benchmark")]
struct Args {
    /// host:port to connect to.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "tls")]
    mode: Mode,
    /// Domain for the stream 'to', SNI and JIDs.
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Distinct accounts (session i logs in as PREFIX{i % users}); 0 = one per session.
    #[arg(long, default_value_t = 0)]
    users: usize,
    #[arg(long, default_value = "bench")]
    user_prefix: String,
    #[arg(long, default_value = "bench")]
    password: String,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (traffic flows, nothing is recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Flat out: stanzas in flight per session (sent, not yet echoed).
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Fixed rate in stanzas/s per session instead of flat out (0 = flat out).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stanza mix as kind:weight,… (message, presence, iq).
    #[arg(long, default_value = "message:8,presence:1,iq:1")]
    mix: String,
    /// Approximate message body size in bytes (each body holds one URL).
    #[arg(long, default_value_t = 200)]
    body: usize,
    /// Source addresses, comma-separated or a range like 127.0.0.1-127.0.0.16 (round robin;
    /// many sessions or handshakes need several to avoid exhausting ephemeral ports).
    #[arg(long, default_value = "127.0.0.1")]
    sources: String,
    /// Logins in progress at once while the sessions are being set up.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Log every session in, print READY, hold them this many seconds, exit.
    #[arg(long)]
    idle: Option<f64>,
    /// Measure full logins per second with --sessions concurrent workers.
    #[arg(long)]
    handshakes: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Log one session in, send one chat message with this body, and print ECHO (it came back),
    /// ERROR (a stanza error came back) or NONE (nothing within 3 s): checks that a policy is
    /// really enforced.
    #[arg(long)]
    probe: Option<String>,
    /// Free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

struct Cfg {
    args: Args,
    tls: tokio_rustls::TlsConnector,
    sources: Vec<Ipv4Addr>,
    mix: Vec<(Kind, u32)>,
    mix_total: u32,
    filler: String,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Message,
    Presence,
    Iq,
}

static T0: OnceLock<Instant> = OnceLock::new();
static STOP: AtomicBool = AtomicBool::new(false);
static WINDOW_START: AtomicU64 = AtomicU64::new(u64::MAX);
static WINDOW_END: AtomicU64 = AtomicU64::new(u64::MAX);
static SENT_W: AtomicU64 = AtomicU64::new(0);
static RECV_W: AtomicU64 = AtomicU64::new(0);
static BYTES_W: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static LOGINS_W: AtomicU64 = AtomicU64::new(0);
static ERRORS_SHOWN: AtomicUsize = AtomicUsize::new(0);

fn now_us() -> u64 {
    T0.get().expect("T0 set in main").elapsed().as_micros() as u64
}

fn in_window(t: u64) -> bool {
    t >= WINDOW_START.load(Ordering::Relaxed) && t < WINDOW_END.load(Ordering::Relaxed)
}

fn error(what: String) {
    ERRORS.fetch_add(1, Ordering::Relaxed);
    if ERRORS_SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("bench-loadgen: {what}");
    }
}

fn parse_sources(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.parse().map_err(|_| format!("bad address {a}"))?;
            let b: Ipv4Addr = b.parse().map_err(|_| format!("bad address {b}"))?;
            for x in u32::from(a)..=u32::from(b) {
                out.push(Ipv4Addr::from(x));
            }
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part}"))?);
        }
    }
    if out.is_empty() {
        return Err("no source address".to_owned());
    }
    Ok(out)
}

fn parse_mix(s: &str) -> Result<Vec<(Kind, u32)>, String> {
    s.split(',')
        .map(|p| {
            let (k, w) = p.split_once(':').unwrap_or((p, "1"));
            let kind = match k {
                "message" => Kind::Message,
                "presence" => Kind::Presence,
                "iq" => Kind::Iq,
                _ => return Err(format!("unknown stanza kind {k}")),
            };
            Ok((kind, w.parse().map_err(|_| format!("bad weight {w}"))?))
        })
        .collect()
}

fn main() {
    let args = Args::parse();
    T0.set(Instant::now()).ok();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    let sources = parse_sources(&args.sources).unwrap_or_else(|e| fail(&e));
    let mix = parse_mix(&args.mix).unwrap_or_else(|e| fail(&e));
    let mix_total = mix.iter().map(|m| m.1).sum::<u32>().max(1);
    let filler = "The quarterly numbers look fine; let us go through the slides tomorrow morning. ".repeat(1 + args.body / 80);
    let tls = tokio_rustls::TlsConnector::from(client_tls(true));
    let cfg = Arc::new(Cfg { args, tls, sources, mix, mix_total, filler });
    let code = rt.block_on(async move {
        if let Some(body) = cfg.args.probe.clone() {
            match establish(&cfg, 0, Probe(body)).await {
                Ok(()) => 0,
                Err(e) => {
                    println!("FAILED {e}");
                    1
                }
            }
        } else if cfg.args.handshakes {
            handshakes(cfg).await
        } else {
            sessions(cfg).await
        }
    });
    std::process::exit(code);
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-loadgen: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------------
// Connection and login

struct Conn<S> {
    s: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum Owned {
    Header,
    Element { name: String, bytes: Vec<u8> },
    Close,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(s: S) -> Self {
        Conn { s, buf: vec![0; 16 * 1024], start: 0, end: 0 }
    }

    async fn send(&mut self, data: &str) -> Result<(), String> {
        self.s.write_all(data.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        self.s.flush().await.map_err(|e| format!("flush: {e}"))
    }

    async fn event(&mut self) -> Result<Owned, String> {
        loop {
            while self.start < self.end {
                match next_event(&self.buf[self.start..self.end]).map_err(|_| "peer sent non-XML".to_owned())? {
                    None => break,
                    Some((ev, used)) => {
                        self.start += used;
                        match ev {
                            Event::Skip => {}
                            Event::Header(_) => return Ok(Owned::Header),
                            Event::Close => return Ok(Owned::Close),
                            Event::Element { name, bytes, .. } => {
                                return Ok(Owned::Element {
                                    name: String::from_utf8_lossy(name).into_owned(),
                                    bytes: bytes.to_vec(),
                                })
                            }
                        }
                    }
                }
            }
            self.compact();
            let n = self.s.read(&mut self.buf[self.end..]).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed during login".to_owned());
            }
            self.end += n;
        }
    }

    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Result<Vec<u8>, String> {
        match self.event().await? {
            Owned::Element { name, bytes } if name == what || name.ends_with(&format!(":{what}")) => Ok(bytes),
            Owned::Element { bytes, .. } => {
                Err(format!("expected <{what}/>, got {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)])))
            }
            Owned::Header => Err(format!("expected <{what}/>, got a stream header")),
            Owned::Close => Err(format!("expected <{what}/>, got the stream close")),
        }
    }

    async fn open_stream(&mut self, domain: &str) -> Result<Vec<u8>, String> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0' xml:lang='en'>"
        ))
        .await?;
        match self.event().await? {
            Owned::Header => {}
            _ => return Err("expected a stream header".to_owned()),
        }
        self.expect("features").await
    }

    /// SASL PLAIN and resource binding; returns the bound full JID.
    async fn login(&mut self, cfg: &Cfg, user: &str, resource: &str) -> Result<String, String> {
        let domain = &cfg.args.domain;
        let features = self.open_stream(domain).await?;
        if memchr::memmem::find(&features, b">PLAIN<").is_none() {
            return Err("server does not offer SASL PLAIN".to_owned());
        }
        let plain = base64_encode(format!("\0{user}\0{}", cfg.args.password).as_bytes());
        self.send(&format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain}</auth>")).await?;
        self.expect("success").await?;
        self.open_stream(domain).await?;
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        loop {
            let bytes = self.expect("iq").await?;
            let head_end = memchr::memchr(b'>', &bytes).unwrap_or(bytes.len());
            if attr(&bytes[..=head_end.min(bytes.len() - 1)], "id") != Some(b"bind1") {
                continue;
            }
            return child_text(&bytes, "jid")
                .map(|j| String::from_utf8_lossy(j).into_owned())
                .ok_or_else(|| "bind result without a JID".to_owned());
        }
    }
}

async fn connect(cfg: &Cfg, n: usize) -> Result<TcpStream, String> {
    let src = cfg.sources[n % cfg.sources.len()];
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).map_err(|e| format!("bind {src}: {e}"))?;
    let tcp = sock.connect(cfg.args.target).await.map_err(|e| format!("connect {}: {e}", cfg.args.target))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(tcp)
}

/// What a session does once logged in.
trait Work {
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(self, conn: Conn<S>, jid: String) -> Result<(), String>;
}

/// Connect, (STARTTLS,) TLS, log in, then hand the stream to `work`.
async fn establish<W: Work>(cfg: &Cfg, n: usize, work: W) -> Result<(), String> {
    let mut tcp = connect(cfg, n).await?;
    let user = if cfg.args.users == 0 {
        format!("{}{n}", cfg.args.user_prefix)
    } else {
        format!("{}{}", cfg.args.user_prefix, n % cfg.args.users)
    };
    let resource = format!("r{n}");
    let sni = rustls::pki_types::ServerName::try_from(cfg.args.domain.clone()).map_err(|e| e.to_string())?;
    match cfg.args.mode {
        Mode::Plain => {
            let mut c = Conn::new(tcp);
            let jid = c.login(cfg, &user, &resource).await?;
            work.run(c, jid).await
        }
        Mode::Tls => {
            let tls = cfg.tls.connect(sni, tcp).await.map_err(|e| format!("tls: {e}"))?;
            let mut c = Conn::new(tls);
            let jid = c.login(cfg, &user, &resource).await?;
            work.run(c, jid).await
        }
        Mode::Starttls => {
            {
                let mut c = Conn::new(&mut tcp);
                let features = c.open_stream(&cfg.args.domain).await?;
                if memchr::memmem::find(&features, b"starttls").is_none() {
                    return Err("server does not offer STARTTLS".to_owned());
                }
                c.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await?;
                c.expect("proceed").await?;
            }
            let tls = cfg.tls.connect(sni, tcp).await.map_err(|e| format!("tls: {e}"))?;
            let mut c = Conn::new(tls);
            let jid = c.login(cfg, &user, &resource).await?;
            work.run(c, jid).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput and idle sessions

struct Session {
    n: usize,
    cfg: Arc<Cfg>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    go: watch::Receiver<bool>,
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    login_permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Per-session flow control between the writer and the reader half.
struct Flow {
    sent: AtomicU64,
    recv: AtomicU64,
    more: Notify,
}

impl Work for Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(mut self, conn: Conn<S>, jid: String) -> Result<(), String> {
        drop(self.login_permit.take());
        let _ = self.ready.send(Ok(()));
        while !*self.go.borrow() {
            if self.go.changed().await.is_err() {
                return Ok(());
            }
        }
        if self.cfg.args.idle.is_some() {
            // Hold the session until the process exits.
            std::future::pending::<()>().await;
        }
        let Conn { s, buf, start, end } = conn;
        let (r, w) = tokio::io::split(s);
        let flow = Flow { sent: AtomicU64::new(0), recv: AtomicU64::new(0), more: Notify::new() };
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
        let (wr, rr) = tokio::join!(
            writer(w, &self.cfg, &jid, self.n, &flow),
            reader(r, buf, start, end, &flow, &mut hist)
        );
        self.hist.lock().expect("histogram lock").add(&hist).expect("same bounds");
        let (mut w, r) = (wr?, rr?);
        if let Some(r) = r {
            let mut s = r.unsplit(w);
            let _ = s.write_all(b"</stream:stream>").await;
            let _ = s.flush().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        } else {
            let _ = w.shutdown().await;
        }
        Ok(())
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: cheap, deterministic per session.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn push_stanza(out: &mut Vec<u8>, cfg: &Cfg, jid: &str, n: usize, seq: u64, rng: &mut Rng) {
    use std::io::Write;
    let pick = (rng.next() % u64::from(cfg.mix_total)) as u32;
    let mut acc = 0;
    let mut kind = cfg.mix[0].0;
    for &(k, w) in &cfg.mix {
        acc += w;
        if pick < acc {
            kind = k;
            break;
        }
    }
    let t = now_us();
    let r = rng.next();
    let _ = match kind {
        Kind::Message => {
            let filler = &cfg.filler[..cfg.args.body.saturating_sub(60).min(cfg.filler.len())];
            write!(
                out,
                "<message to='{jid}' type='chat' id='b{n}.{seq}-{t}'><body>Have a look at \
                 https://news{}.example.org/articles/{}?ref=chat before we meet. {filler}</body></message>",
                r % 997,
                r % 100_003
            )
        }
        Kind::Presence => write!(out, "<presence to='{jid}' id='b{n}.{seq}-{t}'><show>away</show><status>In a meeting</status></presence>"),
        Kind::Iq => write!(out, "<iq type='get' to='{jid}' id='b{n}.{seq}-{t}'><ping xmlns='urn:xmpp:ping'/></iq>"),
    };
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, cfg: &Cfg, jid: &str, n: usize, flow: &Flow) -> Result<W, String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut out = Vec::with_capacity(64 * 1024);
    let mut seq = 0u64;
    let rate = cfg.args.rate;
    let mut tick = (rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    loop {
        if STOP.load(Ordering::Relaxed) {
            return Ok(w);
        }
        let outstanding = flow.sent.load(Ordering::Relaxed) - flow.recv.load(Ordering::Acquire);
        let batch = if let Some(tick) = tick.as_mut() {
            tokio::time::timeout(Duration::from_millis(100), tick.tick()).await.ok();
            u64::from(outstanding < 100_000)
        } else if outstanding >= cfg.args.window {
            let _ = tokio::time::timeout(Duration::from_millis(100), flow.more.notified()).await;
            continue;
        } else {
            cfg.args.window - outstanding
        };
        for _ in 0..batch {
            push_stanza(&mut out, cfg, jid, n, seq, &mut rng);
            seq += 1;
        }
        if out.is_empty() {
            continue;
        }
        flow.sent.fetch_add(batch, Ordering::Release);
        if in_window(now_us()) {
            SENT_W.fetch_add(batch, Ordering::Relaxed);
        }
        w.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
        w.flush().await.map_err(|e| format!("flush: {e}"))?;
        out.clear();
    }
}

/// Reads echoes until the stop flag is set and everything sent came back (or a grace period
/// passed). Returns the read half unless the peer closed the stream.
async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    mut buf: Vec<u8>,
    mut start: usize,
    mut end: usize,
    flow: &Flow,
    hist: &mut Histogram<u64>,
) -> Result<Option<R>, String> {
    let mut grace_until: Option<Instant> = None;
    if buf.len() < 64 * 1024 {
        buf.resize(64 * 1024, 0);
    }
    loop {
        let mut got = 0u64;
        let (mut in_w, mut bytes_w) = (0u64, 0u64);
        let t = now_us();
        let measuring = in_window(t);
        while start < end {
            let Some((ev, used)) = next_event(&buf[start..end]).map_err(|_| "peer sent non-XML".to_owned())? else {
                break;
            };
            match ev {
                Event::Element { name, head, bytes } => {
                    if let Some(sent_at) = attr(head, "id").and_then(parse_stamp) {
                        got += 1;
                        if measuring {
                            in_w += 1;
                            bytes_w += bytes.len() as u64;
                            let _ = hist.record(t.saturating_sub(sent_at).max(1));
                        }
                    } else if name == b"message" || name == b"iq" {
                        // A bounce or error without our stamp: count it, it is not an echo.
                        if memchr::memmem::find(head, b"type='error'").is_some() {
                            error("stanza error from the server".to_owned());
                            got += 1;
                        }
                    }
                }
                Event::Close => return Err("server closed the stream".to_owned()),
                Event::Header(_) => return Err("unexpected stream header".to_owned()),
                Event::Skip => {}
            }
            start += used;
        }
        if got > 0 {
            flow.recv.fetch_add(got, Ordering::Release);
            flow.more.notify_one();
            if in_w > 0 {
                RECV_W.fetch_add(in_w, Ordering::Relaxed);
                BYTES_W.fetch_add(bytes_w, Ordering::Relaxed);
            }
        }
        if STOP.load(Ordering::Relaxed) {
            if flow.recv.load(Ordering::Acquire) >= flow.sent.load(Ordering::Acquire) {
                return Ok(Some(r));
            }
            let g = *grace_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
            if Instant::now() > g {
                return Ok(Some(r));
            }
        }
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                let n = buf.len() * 2;
                buf.resize(n, 0);
            }
        }
        match tokio::time::timeout(Duration::from_millis(100), r.read(&mut buf[end..])).await {
            Err(_) => {}
            Ok(Ok(0)) => return Err("connection closed".to_owned()),
            Ok(Ok(n)) => end += n,
            Ok(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

/// `b{session}.{seq}-{micros}` → micros.
fn parse_stamp(id: &[u8]) -> Option<u64> {
    if id.first() != Some(&b'b') {
        return None;
    }
    let dash = memchr::memrchr(b'-', id)?;
    std::str::from_utf8(&id[dash + 1..]).ok()?.parse().ok()
}

async fn sessions(cfg: Arc<Cfg>) -> i32 {
    let a = &cfg.args;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (go_tx, go_rx) = watch::channel(false);
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds")));
    let logins = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let t_login = Instant::now();
    let mut tasks = Vec::with_capacity(a.sessions);
    for n in 0..a.sessions {
        let permit = logins.clone().acquire_owned().await.expect("semaphore open");
        let s = Session {
            n,
            cfg: cfg.clone(),
            ready: ready_tx.clone(),
            go: go_rx.clone(),
            hist: hist.clone(),
            login_permit: Some(permit),
        };
        let cfg2 = cfg.clone();
        let failed = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let r = establish(&cfg2, n, s).await;
            if let Err(e) = &r {
                let _ = failed.send(Err(e.clone()));
            }
            r
        }));
    }
    drop(ready_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    while ok + failed < a.sessions {
        match ready_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                error(format!("login: {e}"));
            }
            None => break,
        }
    }
    let login_s = t_login.elapsed().as_secs_f64();
    if let Some(hold) = a.idle {
        println!("READY ok={ok} failed={failed} login_s={login_s:.2}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = go_tx.send(true);
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
        std::process::exit(0);
    }
    let start = now_us() + (a.warmup * 1e6) as u64;
    let end = start + (a.duration * 1e6) as u64;
    WINDOW_START.store(start, Ordering::Relaxed);
    WINDOW_END.store(end, Ordering::Relaxed);
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_micros(end - now_us())).await;
    STOP.store(true, Ordering::Relaxed);
    let mut late = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(6), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                // Login failures were already counted.
                if !e.starts_with("login") && ok > 0 {
                    error(format!("session: {e}"));
                }
            }
            _ => late += 1,
        }
    }
    let h = hist.lock().expect("histogram lock");
    let secs = a.duration;
    let recv = RECV_W.load(Ordering::Relaxed) as f64;
    let q = |p: f64| if h.len() == 0 { 0 } else { h.value_at_quantile(p) };
    println!(
        "{{\"label\":\"{}\",\"sessions\":{},\"ok\":{ok},\"failed\":{failed},\"login_s\":{login_s:.3},\
         \"logins_per_s\":{:.1},\"duration_s\":{secs},\"stanzas_per_s\":{:.0},\"sent_per_s\":{:.0},\
         \"mb_per_s\":{:.2},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"errors\":{},\"late\":{late}}}",
        a.label,
        a.sessions,
        ok as f64 / login_s.max(1e-9),
        recv / secs,
        SENT_W.load(Ordering::Relaxed) as f64 / secs,
        BYTES_W.load(Ordering::Relaxed) as f64 / secs / 1e6,
        q(0.5),
        q(0.99),
        q(0.999),
        h.max(),
        ERRORS.load(Ordering::Relaxed),
    );
    i32::from(ok == 0)
}

// ---------------------------------------------------------------------------------------------
// Policy probe

struct Probe(String);

impl Work for Probe {
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(self, mut conn: Conn<S>, jid: String) -> Result<(), String> {
        let body = self.0.replace('&', "&amp;").replace('<', "&lt;");
        conn.send(&format!("<message to='{jid}' type='chat' id='probe1'><body>{body}</body></message>")).await?;
        let verdict = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match conn.event().await {
                    Ok(Owned::Element { bytes, .. }) => {
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        if text.contains("probe1") {
                            return if text.contains("type='error'") || text.contains("type=\"error\"") { "ERROR" } else { "ECHO" };
                        }
                    }
                    _ => return "CLOSED",
                }
            }
        })
        .await
        .unwrap_or("NONE");
        println!("{verdict}");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Handshakes

struct LoginOnly;

impl Work for LoginOnly {
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(self, mut conn: Conn<S>, _jid: String) -> Result<(), String> {
        conn.send("</stream:stream>").await?;
        // Wait for the peer's close so the server side closes first (no TIME_WAIT pile-up here).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(conn.event().await, Ok(Owned::Element { .. } | Owned::Header)) {}
        })
        .await;
        Ok(())
    }
}

async fn handshakes(cfg: Arc<Cfg>) -> i32 {
    let a = &cfg.args;
    let start = now_us() + (a.warmup * 1e6) as u64;
    let end = start + (a.duration * 1e6) as u64;
    WINDOW_START.store(start, Ordering::Relaxed);
    WINDOW_END.store(end, Ordering::Relaxed);
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds")));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.sessions {
        let (cfg, hist, counter) = (cfg.clone(), hist.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
            while now_us() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = now_us();
                match tokio::time::timeout(Duration::from_secs(10), establish(&cfg, n, LoginOnly)).await {
                    Ok(Ok(())) => {
                        if in_window(t) {
                            LOGINS_W.fetch_add(1, Ordering::Relaxed);
                            let _ = h.record(now_us() - t);
                        }
                    }
                    Ok(Err(e)) => error(format!("login: {e}")),
                    Err(_) => error("login: timed out".to_owned()),
                }
            }
            hist.lock().expect("lock").add(&h).expect("same bounds");
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().expect("lock");
    let q = |p: f64| if h.len() == 0 { 0 } else { h.value_at_quantile(p) };
    println!(
        "{{\"label\":\"{}\",\"workers\":{},\"duration_s\":{},\"handshakes_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{}}}",
        a.label,
        a.sessions,
        a.duration,
        LOGINS_W.load(Ordering::Relaxed) as f64 / a.duration,
        q(0.5),
        q(0.99),
        ERRORS.load(Ordering::Relaxed)
    );
    i32::from(LOGINS_W.load(Ordering::Relaxed) == 0)
}
