//! `stanzawall quarantine list|show ID|release ID|delete ID --config FILE`: the running
//! gateway owns the quarantine store, so the command asks its admin API (`[admin] bind` of the
//! same config) with a token from `--token-file` or `STANZAWALL_TOKEN`, over HTTPS when the
//! admin listener has a certificate (`--ca` names the CA that issued it).
//!
//! A minimal HTTP/1.1 client (one request per connection, `Connection: close`): the API
//! answers small JSON bodies, and this avoids an HTTP client dependency for four calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// List held entries.
    List,
    /// Show one entry with its stanza.
    Show(String),
    /// Release one entry.
    Release(String),
    /// Delete one entry.
    Delete(String),
}

/// How the command reaches the gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway's configuration file.
    pub config: PathBuf,
    /// A file holding the admin token (else `STANZAWALL_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// The CA of the admin listener's certificate (HTTPS).
    pub ca: Option<PathBuf>,
}

/// Longest the whole call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_ANSWER: usize = 16 << 20;

fn token(opts: &Options) -> anyhow::Result<String> {
    let raw = match &opts.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?,
        None => std::env::var("STANZAWALL_TOKEN").map_err(|_| {
            anyhow!("no token: pass --token-file FILE or set STANZAWALL_TOKEN (stanzawall admin-token makes one)")
        })?,
    };
    let t = raw.trim().to_owned();
    if t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()) {
        bail!("the token is empty or not printable ASCII");
    }
    Ok(t)
}

/// Run the command against the gateway `config` (read from `opts.config`) describes; the
/// text to print on success.
pub fn run(config: &stanzawall_core::config::Config, opts: &Options, action: &Action) -> anyhow::Result<String> {
    let Some(bind) = config.admin.bind else {
        bail!("{}: no [admin] bind: the quarantine is managed through the gateway's admin API", opts.config.display());
    };
    let token = token(opts)?;
    let (method, path) = match action {
        Action::List => ("GET", "/api/v1/quarantine".to_owned()),
        Action::Show(id) => ("GET", format!("/api/v1/quarantine/{}", encode(id))),
        Action::Release(id) => ("POST", format!("/api/v1/quarantine/{}/release", encode(id))),
        Action::Delete(id) => ("DELETE", format!("/api/v1/quarantine/{}", encode(id))),
    };
    let tls = match (&config.admin.tls, &opts.ca) {
        (None, _) => None,
        (Some(_), Some(ca)) => Some(client_config(ca)?),
        (Some(_), None) => {
            bail!("the admin listener at {bind} speaks HTTPS: pass --ca FILE (the CA of its certificate)")
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = rt.block_on(async {
        tokio::time::timeout(CALL_TIMEOUT, call(bind, tls, method, &path, &token))
            .await
            .map_err(|_| anyhow!("{bind}: no answer within {}s", CALL_TIMEOUT.as_secs()))?
    })?;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let why = json["error"].as_str().map_or_else(|| String::from_utf8_lossy(&body).into_owned(), str::to_owned);
        bail!("{method} {path}: {status}: {why}");
    }
    Ok(render(action, &json))
}

/// Percent-encode an id for the path (ids are hex; anything else is refused by the gateway).
fn encode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn render(action: &Action, v: &Value) -> String {
    let line = |e: &Value| {
        format!(
            "{}  {}  {:<9}  {:<7}  {}  {} -> {}  rule {}",
            e["id"].as_str().unwrap_or("?"),
            e["time"].as_str().unwrap_or("?"),
            e["state"].as_str().unwrap_or("?"),
            e["chain"].as_str().unwrap_or("?"),
            e["kind"].as_str().unwrap_or("?"),
            e["from"].as_str().unwrap_or("-"),
            e["to"].as_str().unwrap_or("-"),
            e["rule"].as_str().unwrap_or("-"),
        )
    };
    match action {
        Action::List => {
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            let mut out = format!("{} held ({} bytes)\n", v["count"], v["bytes"]);
            for e in &entries {
                out.push_str(&line(e));
                out.push('\n');
            }
            out
        }
        Action::Show(_) => serde_json::to_string_pretty(v).map(|s| s + "\n").unwrap_or_default(),
        Action::Release(id) => format!("released {id}: delivered to {}\n", v["delivered"].as_str().unwrap_or("?")),
        Action::Delete(id) => format!("deleted {id}\n"),
    }
}

fn client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--ca {}", ca.display()))?;
    if roots.add_parsable_certificates(certs).0 == 0 {
        bail!("--ca {}: no usable CA certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

async fn call(
    bind: std::net::SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    // A wildcard bind is reached on loopback.
    let addr = match bind.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::SocketAddr::from(([127, 0, 0, 1], bind.port())),
        ip if ip.is_unspecified() => std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bind.port())),
        _ => bind,
    };
    let tcp =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect to the admin API at {addr}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    match tls {
        None => exchange(tcp, &request).await,
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::from(addr.ip());
            let stream = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.context("admin API TLS")?;
            exchange(stream, &request).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    s.write_all(request.as_bytes()).await?;
    s.flush().await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // A TLS peer that closes without close_notify still gave us its whole answer
        // (Connection: close, Content-Length): read errors after data end the read.
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            Err(_) if !raw.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_ANSWER {
            bail!("the answer is larger than {MAX_ANSWER} bytes");
        }
    }
    parse_response(&raw)
}

/// Status and body of an HTTP/1.1 response (Content-Length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("incomplete HTTP answer"))?;
    let head = std::str::from_utf8(&raw[..end]).context("HTTP head")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let body = &raw[end + 4..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
            let size_text = std::str::from_utf8(&rest[..line_end])?.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                bail!("truncated chunk");
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        return Ok((status, out));
    }
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if body.len() >= n => Ok((status, body[..n].to_vec())),
        Some(_) => bail!("truncated HTTP answer"),
        None => Ok((status, body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_length_chunks_or_to_the_end() {
        let (s, b) = parse_response(b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nabcdefg").unwrap();
        assert_eq!((s, b.as_slice()), (409, &b"abcde"[..]));
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n{}").unwrap().1, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
