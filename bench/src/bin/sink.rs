//! bench-sink: the fastest XMPP c2s "server" that still completes a real login, so that the
//! proxy in front of it — not a server — is what the benchmark measures.
//!
//! It answers the stream header, offers SASL PLAIN (any password succeeds), restarts the
//! stream, offers and answers resource binding, then for every stanza: a message or presence
//! is written back to its sender byte for byte (the echo path the load generator times), an
//! iq get/set is answered with an empty result carrying its id, and an iq result/error is
//! swallowed. `--swallow` answers nothing after binding. With `--cert`/`--key` it terminates
//! direct TLS (XEP-0368) itself: row (a) of the benchmark, no proxy at all.
//!
//! Never point it at untrusted input: its splitter trusts the stream (see the library).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use stanzawall_bench::{attr, base64_decode, child_text, next_event, server_tls, Event, NS_BIND, NS_SASL};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "XMPP sink/echo backend for the stanzawall benchmark")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:25222")]
    listen: String,
    /// Domain announced in stream headers and bound JIDs.
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Answer nothing after binding (count only).
    #[arg(long)]
    swallow: bool,
    /// PEM certificate chain: terminate direct TLS here (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print received/echoed stanza counters every N seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
}

static STANZAS_IN: AtomicU64 = AtomicU64::new(0);
static SESSIONS: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(args)) {
        eprintln!("bench-sink: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(server_tls(c, k)?)),
        _ => None,
    };
    let listener = TcpListener::bind(&args.listen).await.map_err(|e| format!("bind {}: {e}", args.listen))?;
    eprintln!("bench-sink: listening on {} ({})", args.listen, if tls.is_some() { "direct TLS" } else { "plaintext" });
    if args.stats_every > 0 {
        let every = args.stats_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(every)).await;
                eprintln!(
                    "bench-sink: sessions={} stanzas_in={}",
                    SESSIONS.load(Ordering::Relaxed),
                    STANZAS_IN.load(Ordering::Relaxed)
                );
            }
        });
    }
    let cfg = Arc::new((args.domain.clone(), args.swallow));
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: keep serving the sessions we have.
                eprintln!("bench-sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let (cfg, tls, id) = (cfg.clone(), tls.clone(), next_id);
        tokio::spawn(async move {
            SESSIONS.fetch_add(1, Ordering::Relaxed);
            let r = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => session(s, &cfg.0, cfg.1, id).await,
                    Err(e) => Err(format!("tls: {e}")),
                },
                None => session(tcp, &cfg.0, cfg.1, id).await,
            };
            SESSIONS.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = r {
                if std::env::var_os("BENCH_SINK_DEBUG").is_some() {
                    eprintln!("bench-sink: session {id}: {e}");
                }
            }
        });
    }
}

#[derive(PartialEq)]
enum Phase {
    /// Waiting for the first header (before SASL).
    PreAuth,
    /// Header sent with SASL features; waiting for `<auth/>`.
    Auth,
    /// After `<success/>`: waiting for the restarted header.
    Restart,
    /// Bind offered; then the stanza loop.
    Open,
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    domain: &str,
    swallow: bool,
    id: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut phase = Phase::PreAuth;
    let mut user = String::from("user");
    let mut bound = false;
    loop {
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = s.read(&mut buf[end..]).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        let mut closed = false;
        let mut stanzas = 0u64;
        while start < end {
            let Some((ev, used)) = next_event(&buf[start..end]).map_err(|_| "not XML".to_owned())? else { break };
            match ev {
                Event::Skip => {}
                Event::Header(_) => {
                    let features = match phase {
                        Phase::PreAuth => {
                            phase = Phase::Auth;
                            format!("<stream:features><mechanisms xmlns='{NS_SASL}'><mechanism>PLAIN</mechanism></mechanisms></stream:features>")
                        }
                        Phase::Restart => {
                            phase = Phase::Open;
                            format!("<stream:features><bind xmlns='{NS_BIND}'/></stream:features>")
                        }
                        _ => return Err("unexpected stream header".to_owned()),
                    };
                    out.extend_from_slice(
                        format!(
                            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                             xmlns:stream='http://etherx.jabber.org/streams' id='s{id}' from='{domain}' \
                             version='1.0' xml:lang='en'>{features}"
                        )
                        .as_bytes(),
                    );
                }
                Event::Close => {
                    out.extend_from_slice(b"</stream:stream>");
                    closed = true;
                }
                Event::Element { name, head, bytes } => {
                    if phase == Phase::Auth {
                        if name != b"auth" {
                            return Err("expected <auth/>".to_owned());
                        }
                        // PLAIN: [authzid] NUL authcid NUL password (RFC 4616); any password passes.
                        let inner = bytes.splitn(2, |&c| c == b'>').nth(1).unwrap_or_default();
                        let inner = &inner[..inner.iter().position(|&c| c == b'<').unwrap_or(inner.len())];
                        let plain = base64_decode(inner).ok_or("bad base64 in <auth/>")?;
                        if let Some(authcid) = plain.split(|&c| c == 0).nth(1) {
                            user = String::from_utf8_lossy(authcid).into_owned();
                        }
                        out.extend_from_slice(format!("<success xmlns='{NS_SASL}'/>").as_bytes());
                        phase = Phase::Restart;
                    } else if phase != Phase::Open {
                        return Err(format!("unexpected <{}/>", String::from_utf8_lossy(name)));
                    } else if !bound {
                        if name != b"iq" {
                            return Err("expected the bind iq".to_owned());
                        }
                        let iq_id = String::from_utf8_lossy(attr(head, "id").unwrap_or_default()).into_owned();
                        let resource = child_text(bytes, "resource")
                            .map_or_else(|| format!("r{id}"), |r| String::from_utf8_lossy(r).into_owned());
                        out.extend_from_slice(
                            format!(
                                "<iq type='result' id='{iq_id}'><bind xmlns='{NS_BIND}'>\
                                 <jid>{user}@{domain}/{resource}</jid></bind></iq>"
                            )
                            .as_bytes(),
                        );
                        bound = true;
                    } else {
                        stanzas += 1;
                        if !swallow {
                            match name {
                                b"message" | b"presence" => out.extend_from_slice(bytes),
                                b"iq" => {
                                    let t = attr(head, "type").unwrap_or_default();
                                    if t == b"get" || t == b"set" {
                                        out.extend_from_slice(b"<iq type='result' id='");
                                        out.extend_from_slice(attr(head, "id").unwrap_or_default());
                                        out.extend_from_slice(b"'/>");
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            start += used;
        }
        if stanzas > 0 {
            STANZAS_IN.fetch_add(stanzas, Ordering::Relaxed);
        }
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            s.flush().await.map_err(|e| format!("flush: {e}"))?;
            out.clear();
        }
        if closed {
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}
