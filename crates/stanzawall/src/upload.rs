//! The inspecting reverse proxy in front of the server's XEP-0363 upload service
//! (`kind = "http-upload"`).
//!
//! Clients reach it because the c2s sessions rewrite the slot URLs to `[file_transfer]
//! upload_url` (core `transfer::upload`). One request per connection: the head is parsed in
//! the core (bounded; a PUT must declare its length, which is checked against the cap before a
//! byte moves); a PUT body streams through the same inspection pipeline and clamd as the
//! SOCKS5 relay, is forwarded to the upload service as it is released, and its held-back tail
//! only after the verdict. A refused upload is cut: the service's connection is reset before
//! the body is complete (the service stores nothing, its Content-Length was never met), and
//! the client gets `403 Forbidden` with the reason as text — the error a client shows. GET and
//! other methods pass through unchanged.
//!
//! `kind = "http-upload-tls"` terminates TLS first, with the `[[tls.certificate]]` the client's
//! SNI names (ALPN `http/1.1`), within `handshake_timeout` like every TLS listener; a failed
//! handshake ends the connection with a log line, and a client speaking plain HTTP to it gets
//! one plaintext `400` saying so. The leg to the upload service is plain HTTP, or HTTPS from the
//! first byte with `backend_tls = "tls"`, its certificate verified against `backend_ca` (else
//! the system roots) for `backend_server_name` (else the host of `backend`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::json;
use stanzawall_core::config::{BackendTls, FileTransferConfig, ListenerConfig, ListenerKind};
use stanzawall_core::policy::file::{normalize_type, Offer, Transport};
use stanzawall_core::transfer::upload::{parse_head, HeadError, RequestHead, MAX_HEAD};
use stanzawall_core::transfer::{InspectPolicy, Inspection, Refusal, ScanVerdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::io::{Rewind, Stream};
use crate::state::{Generation, Shared};
use crate::transfers::Ending;

/// Longest a body may stall (no byte either way) before the upload is abandoned.
const IDLE: Duration = Duration::from_secs(60);
/// Longest the connect (and TLS handshake) to the upload service may take.
const SERVICE_CONNECT: Duration = Duration::from_secs(10);
/// RFC 8446 §5.1 (and every TLS version before it): a connection starts with a handshake
/// record, content type 22.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serve one connection to the upload proxy.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    generation: Arc<Generation>,
    shared: Shared,
) {
    let Some(ft) = generation.config.file_transfer.clone() else { return };
    let deadline = generation.config.network.handshake_timeout;
    let mut client = Stream::Plain(Rewind::new(socket));
    if listener.kind == ListenerKind::HttpUploadTls {
        match timeout(deadline, accept_https(&mut client, &generation)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return info!(listener = %listener.name, client.ip = %peer.ip(), error = %e, "upload connection: TLS handshake failed")
            }
            Err(_) => {
                return info!(listener = %listener.name, client.ip = %peer.ip(), "upload connection: TLS handshake timed out")
            }
        }
    }
    let head = match timeout(deadline, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(Some(e))) => {
            let _ = respond(&mut client, e.status(), &e.to_string()).await;
            return info!(listener = %listener.name, client.ip = %peer.ip(), error = %e, "upload request refused");
        }
        Ok(Err(None)) | Err(_) => return,
    };
    let (head, early) = head;
    let mut backend = match connect_service(&listener, generation.tls.backend_config(&listener.name)).await {
        Ok(b) => b,
        Err(e) => {
            warn!(backend = %listener.backend.address, error = %e, "upload service unavailable");
            let _ = respond(&mut client, 502, "the upload service is unavailable").await;
            return;
        }
    };
    if head.method != "PUT" {
        // Downloads and the rest pass through (one request: the head says Connection: close).
        if backend.write_all(&head.to_bytes()).await.is_ok() && backend.write_all(&early).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        }
        return;
    }
    let started = Instant::now();
    // XEP-0363 §5: the slot's path ends with the file name the client asked for.
    let name =
        head.target.split('?').next().and_then(|p| p.rsplit('/').next()).filter(|n| !n.is_empty()).map(percent_decode);
    let offer = Offer {
        transport: Some(Transport::Upload),
        name,
        size: head.content_length,
        media_type: head.header("content-type").map(normalize_type),
        ..Offer::default()
    };
    // A copy for the quarantine, only where a `file` rule can quarantine (README "File
    // transfer"): kept on a quarantine verdict, removed on any other ending.
    let mut tee = match &generation.inspect {
        Some(p) if p.rules.quarantines() => Some(
            crate::quarantine::tee::Tee::start(&generation.config.state_dir, generation.config.quarantine.max_bytes)
                .await,
        ),
        _ => None,
    };
    let (facts, result) = match generation.inspect.clone() {
        Some(policy) => put(&ft, policy, offer.clone(), &head, early, &mut client, &mut backend, tee.as_mut()).await,
        None => (Default::default(), Err(End::Aborted("no file policy".into()))),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("path".into(), json!(head.target));
    if let Some(tee) = tee {
        match &result {
            Err(End::Refused(r)) if r.detector == stanzawall_core::transfer::Detector::Quarantine => {
                let held = crate::quarantine::tee::HeldTransfer {
                    listener: &listener.name,
                    transport: Transport::Upload,
                    offer: &offer,
                    facts: &facts,
                    refusal: r,
                };
                let (id, record) = tee.keep(shared.quarantine.as_deref(), held).await;
                extra.insert("quarantine_id".into(), json!(id));
                shared.audit.record(generation.policy.audit().path.clone(), vec![record]).await;
            }
            _ => tee.discard().await,
        }
    }
    let (verdict, detector) = match &result {
        Ok(()) => ("pass", "none"),
        Err(End::Refused(r)) => ("block", r.detector.as_str()),
        Err(End::Aborted(_)) => ("aborted", "none"),
    };
    match &result {
        Ok(()) => {
            // The service's answer (201 Created, or its own refusal) goes back as it is.
            if tokio::time::timeout(IDLE, tokio::io::copy(&mut backend, &mut client)).await.is_ok_and(|r| r.is_ok()) {
                // Over TLS: close_notify, so the client sees the answer end, not a truncation.
                let _ = tokio::time::timeout(IDLE, client.shutdown()).await;
            }
        }
        Err(End::Refused(r)) => {
            reset(&backend);
            drop(backend);
            let _ = respond(&mut client, 403, &format!("upload refused by the gateway: {r}")).await;
        }
        Err(End::Aborted(_)) => reset(&backend),
    }
    crate::relay::count(verdict, detector);
    let ending = match &result {
        Ok(()) => Ending::Pass,
        Err(End::Refused(r)) => Ending::Block(r),
        Err(End::Aborted(why)) => Ending::Aborted(why),
    };
    let report = crate::transfers::Report {
        listener: &listener.name,
        transport: Transport::Upload,
        client_ip: Some(peer.ip()),
        sender: None,
        recipient: None,
        offer: Some(&offer),
        facts: &facts,
        ending,
        duration: started.elapsed(),
        extra,
    };
    crate::transfers::report(&shared, generation.policy.audit().path.clone(), report).await;
}

/// Close `leg` with a reset, not a FIN (nor a TLS close_notify): the service must see an
/// upload that broke off, never one that ended.
fn reset(leg: &Stream) {
    if let Some(socket) = leg.socket() {
        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    }
}

/// The TLS handshake of an `http-upload-tls` connection: the certificate by SNI (else the
/// first configured), ALPN `http/1.1`.
async fn accept_https(client: &mut Stream, generation: &Generation) -> std::io::Result<()> {
    let plain = client.take_plain()?;
    // A client sent to http:// by mistake: say so in its own protocol instead of a TLS alert
    // it would show as garbage. Nothing it sent goes anywhere.
    let mut first = [0u8; 1];
    let n = plain.socket().peek(&mut first).await?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the TLS handshake"));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let mut plain = Stream::Plain(plain);
        if first[0].is_ascii_uppercase() {
            let _ = read_head(&mut plain).await;
            let _ = respond(&mut plain, 400, "this upload endpoint speaks HTTPS only: use https://").await;
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "plain HTTP on the TLS port, refused"));
        }
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a TLS handshake"));
    }
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), plain);
    let start = acceptor.await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = generation
        .tls
        .https_server_config(sni.as_deref())
        .ok_or_else(|| std::io::Error::other("no certificate configured"))?;
    *client = Stream::Server(Box::new(start.into_stream(config).await?));
    Ok(())
}

/// The leg to the upload service: plain HTTP, or HTTPS with its certificate verified by `tls`
/// (the listener's backend client configuration, built with the generation).
async fn connect_service(listener: &ListenerConfig, tls: Option<Arc<ClientConfig>>) -> Result<Stream, String> {
    let address = listener.backend.address.as_str();
    let socket = match timeout(SERVICE_CONNECT, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect to {address} failed: {e}")),
        Err(_) => return Err(format!("connect to {address} timed out")),
    };
    let plain = Rewind::new(socket);
    if listener.backend.tls != BackendTls::Direct {
        return Ok(Stream::Plain(plain));
    }
    let config = tls.ok_or("no TLS client configuration")?;
    let name = listener.backend.server_name.clone().unwrap_or_else(|| host_of(address).to_owned());
    let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("backend name {name}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match timeout(SERVICE_CONNECT, connector.connect(server_name, plain)).await {
        Ok(Ok(tls)) => Ok(Stream::Client(Box::new(tls))),
        Ok(Err(e)) => Err(format!("TLS handshake with {name} failed: {e}")),
        Err(_) => Err(format!("TLS handshake with {name} timed out")),
    }
}

/// The host of `HOST:PORT` (an IP address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// `%XX` escapes decoded (a file name in a URL path); invalid escapes are kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request head and the body bytes read with it; `Err(None)`: the client went away.
async fn read_head(client: &mut (impl AsyncRead + Unpin)) -> Result<(RequestHead, Vec<u8>), Option<HeadError>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf).map_err(Some)? {
            let early = buf.split_off(head.head_len);
            return Ok((head, early));
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(HeadError::TooLarge));
        }
    }
}

async fn respond(client: &mut Stream, status: u16, text: &str) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let body = format!("{text}\n");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

#[derive(Debug)]
enum End {
    Refused(Refusal),
    Aborted(String),
}

/// Stream the PUT body through the pipeline to the service (and into `tee`, when given).
#[allow(clippy::too_many_arguments)]
async fn put(
    ft: &FileTransferConfig,
    policy: Arc<InspectPolicy>,
    offer: Offer,
    head: &RequestHead,
    early: Vec<u8>,
    client: &mut Stream,
    backend: &mut Stream,
    mut tee: Option<&mut crate::quarantine::tee::Tee>,
) -> (stanzawall_core::transfer::Facts, Result<(), End>) {
    let length = head.content_length.unwrap_or(0);
    let mut ins = match Inspection::with_offer(policy, offer) {
        Ok(i) => i,
        Err(r) => return (Default::default(), Err(End::Refused(r))),
    };
    let mut scan = match &ft.clamd {
        Some(addr) => Some(crate::clamd::Scan::start(addr, ft.scan_timeout).await),
        None => None,
    };
    if let Err(e) = backend.write_all(&head.to_bytes()).await {
        return (ins.facts().clone(), Err(End::Aborted(format!("upload service: {e}"))));
    }
    let mut remaining = length;
    let mut pending = early;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !pending.is_empty() {
            // Bytes past the declared length belong to no request of ours.
            pending.truncate(usize::try_from(remaining).unwrap_or(usize::MAX));
            remaining -= pending.len() as u64;
            if let Some(t) = tee.as_deref_mut() {
                t.write(&pending).await;
            }
            let released = match ins.push(&pending) {
                Ok(r) => r,
                Err(r) => return (ins.facts().clone(), Err(End::Refused(r))),
            };
            if let Some(s) = scan.as_mut() {
                s.send(&pending).await;
            }
            if let Err(e) = backend.write_all(&released).await {
                return (ins.facts().clone(), Err(End::Aborted(format!("upload service: {e}"))));
            }
            pending.clear();
        }
        if remaining == 0 {
            break;
        }
        match tokio::time::timeout(IDLE, client.read(&mut buf)).await {
            Ok(Ok(0)) => return (ins.facts().clone(), Err(End::Aborted("the client closed before the end".into()))),
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (ins.facts().clone(), Err(End::Aborted(format!("client: {e}")))),
            Err(_) => return (ins.facts().clone(), Err(End::Aborted("the body stalled".into()))),
        }
    }
    if let Err(r) = ins.finish() {
        return (ins.facts().clone(), Err(End::Refused(r)));
    }
    let verdict = match scan {
        Some(s) => s.verdict(ft.scan_timeout).await,
        None => ScanVerdict::NotConfigured,
    };
    match ins.scanned(verdict) {
        // Flushed: over TLS the last record must leave rustls's buffer before we wait for the
        // service's answer.
        Ok(tail) => match async {
            backend.write_all(&tail).await?;
            backend.flush().await
        }
        .await
        {
            Ok(()) => (ins.facts().clone(), Ok(())),
            Err(e) => (ins.facts().clone(), Err(End::Aborted(format!("upload service: {e}")))),
        },
        Err(r) => (ins.facts().clone(), Err(End::Refused(r))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::RootCertStore;
    use stanzawall_core::config::Config;
    use tokio::net::TcpListener;

    use super::*;

    fn upload_listener(port: u16, keys: &str) -> ListenerConfig {
        let text = format!(
            "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [[listener]]\nname = \"up\"\nkind = \"http-upload-tls\"\nbind = \"127.0.0.1:1\"\n\
             backend = \"127.0.0.1:{port}\"\n{keys}\
             [[listener]]\nname = \"relay\"\nkind = \"socks5\"\nbind = \"127.0.0.1:2\"\n\
             [file_transfer]\nproxy_jid = \"p.example.test\"\nupload_url = \"https://up.example.test\"\n"
        );
        let config = Config::parse(&text, Path::new("/t/gw.toml")).expect("config");
        config.listeners.into_iter().find(|l| l.name == "up").expect("listener")
    }

    /// An HTTPS upload service on loopback whose certificate names 127.0.0.1 and
    /// upload.example.test; answers one request's first bytes with `pong`.
    async fn service() -> (u16, Arc<ClientConfig>, tokio::task::JoinHandle<Vec<u8>>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "upload.example.test".to_owned()])
            .expect("certificate");
        let der = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            // Two connections at most: one that verifies, one that must not.
            for _ in 0..2 {
                let Ok((socket, _)) = listener.accept().await else { break };
                let Ok(mut tls) = acceptor.accept(socket).await else { continue };
                let mut buf = [0u8; 4];
                if tls.read_exact(&mut buf).await.is_ok() {
                    got.extend_from_slice(&buf);
                    let _ = tls.write_all(b"pong").await;
                    let _ = tls.shutdown().await;
                }
            }
            got
        });
        (port, Arc::new(client), task)
    }

    #[tokio::test]
    async fn the_upload_service_is_reached_over_verified_https() {
        let (port, client, task) = service().await;
        // Default name: the backend's host, an address the certificate names.
        let mut leg = connect_service(&upload_listener(port, "backend_tls = \"tls\"\n"), Some(client.clone()))
            .await
            .expect("connected");
        assert!(matches!(leg, Stream::Client(_)));
        leg.write_all(b"ping").await.expect("write");
        let mut answer = Vec::new();
        leg.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"pong");
        // A name the certificate does not carry: refused, nothing sent.
        let wrong = upload_listener(port, "backend_tls = \"tls\"\nbackend_server_name = \"files.other.test\"\n");
        let e = connect_service(&wrong, Some(client)).await.expect_err("must not verify");
        assert!(e.contains("TLS handshake with files.other.test failed"), "{e}");
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), task).await.expect("service").expect("join"), b"ping");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:5281"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5281"), "::1");
        assert_eq!(host_of("upload.example.test:443"), "upload.example.test");
    }
}
