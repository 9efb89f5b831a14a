//! The two legs of a connection as byte streams: reading into adaptive buffers, bounded
//! writes, the client's TLS handshake, the backend connect and its TLS upgrade. Only I/O: every
//! protocol decision is the session's.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use stanzawall_core::config::ListenerConfig;
use stanzawall_core::session::{BackendTls, StreamMachine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use super::Totals;
use crate::io::{Rewind, Stream};
use crate::state::Generation;

/// Time allowed for connecting to a backend.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that makes no progress for this long ends the session (the peer stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive on both legs, so a peer that vanished without a FIN is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Read buffers grow from `READ_BUF_MIN` while reads fill them, up to `READ_BUF`, and drop back
/// once traffic is small again: an idle session holds 2 × 512 B instead of 2 × 16 KiB (most of
/// its memory, measured by bench/ with massif).
const READ_BUF: usize = 16 * 1024;
const READ_BUF_MIN: usize = 512;

/// A read buffer sized by recent reads (see `READ_BUF_MIN`).
pub(super) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    pub(super) fn new() -> Self {
        ReadBuf(vec![0; READ_BUF_MIN])
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub(super) fn filled(&self, n: usize) -> &[u8] {
        &self.0[..n.min(self.0.len())]
    }

    /// After a read of `n` bytes: a full buffer doubles (more is waiting), a small read returns
    /// it to the minimum.
    pub(super) fn adapt(&mut self, n: usize) {
        let len = self.0.len();
        if n == len && len < READ_BUF {
            self.0 = vec![0; (len * 2).min(READ_BUF)];
        } else if n < READ_BUF_MIN && len > READ_BUF_MIN {
            self.0 = vec![0; READ_BUF_MIN];
        }
    }
}

/// Which leg a write failed on.
#[derive(Debug)]
pub(super) enum WriteFailure {
    Client(std::io::Error),
    Backend(std::io::Error),
}

/// Write what the session queued, backend first. Each leg's write is bounded by
/// `WRITE_TIMEOUT`: a peer that stops reading gets backpressure, then a close — never an
/// unbounded queue and never a session stuck forever.
pub(super) async fn flush(
    session: &mut impl StreamMachine,
    client: &mut Stream,
    backend: &mut Option<Stream>,
    totals: &mut Totals,
) -> Result<(), WriteFailure> {
    let out = session.take_to_backend();
    if !out.is_empty() {
        // The session writes to the backend only once it is connected; bytes for a leg that
        // is not there are a fault, never silently dropped (invariant 4).
        let b = backend.as_mut().ok_or_else(|| {
            WriteFailure::Backend(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "bytes for a backend leg that is not connected",
            ))
        })?;
        write_bounded(b, &out).await.map_err(WriteFailure::Backend)?;
        totals.to_backend += out.len() as u64;
    }
    let out = session.take_to_client();
    if !out.is_empty() {
        write_bounded(client, &out).await.map_err(WriteFailure::Client)?;
        totals.to_client += out.len() as u64;
    }
    Ok(())
}

async fn write_bounded(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    let write = async {
        stream.write_all(data).await?;
        stream.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading")),
    }
}

pub(super) fn on_write_failure(session: &mut impl StreamMachine, failure: WriteFailure) {
    match failure {
        WriteFailure::Client(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            debug!(error = %e, "write to client timed out");
            session.client_not_reading();
        }
        WriteFailure::Client(e) => {
            debug!(error = %e, "write to client failed");
            session.client_disconnected();
        }
        WriteFailure::Backend(e) => session.backend_failed(&format!("write to backend failed: {e}")),
    }
}

pub(super) async fn read_backend(backend: &mut Option<Stream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match backend {
        Some(b) => b.read(buf).await,
        None => std::future::pending().await,
    }
}

/// TLS server handshake on the client leg; the certificate is chosen by SNI, else `domain`.
pub(super) async fn accept_tls(
    client: &mut Stream,
    domain: Option<&str>,
    direct: bool,
    generation: &Generation,
    s2s: bool,
) -> std::io::Result<()> {
    let plain = client.take_plain()?;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), plain);
    let start = acceptor.await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let name = sni.as_deref().or(domain);
    let config = match s2s {
        true => generation.tls.s2s_server_config(name, direct),
        false => generation.tls.server_config(name, direct),
    };
    let config = config.ok_or_else(|| std::io::Error::other("no certificate configured"))?;
    let tls = start.into_stream(config).await?;
    *client = Stream::Server(Box::new(tls));
    // The client's first stream header must not wait for a delayed ACK (see `ack_now`).
    client.ack_now();
    Ok(())
}

/// Why the backend leg could not be opened or secured.
#[derive(Debug, thiserror::Error)]
pub(super) enum BackendError {
    /// The TCP connect failed.
    #[error("connect to {address} failed: {source}")]
    Connect {
        /// The backend's address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP connect did not complete in time.
    #[error("connect to {address} timed out")]
    ConnectTimeout {
        /// The backend's address.
        address: String,
    },
    /// Writing the PROXY protocol header failed.
    #[error("PROXY header to {address}: {source}")]
    ProxyHeader {
        /// The backend's address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// `backend_tls` is set but no client configuration was built for this listener.
    #[error("no TLS client configuration for backend")]
    NoTlsConfig,
    /// The name to verify the backend's certificate against is not a valid server name.
    #[error("backend name {name}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake did not complete in time.
    #[error("backend TLS handshake timed out")]
    TlsTimeout,
    /// The TLS handshake failed.
    #[error("backend TLS handshake with {name} failed: {source}")]
    Tls {
        /// The name verified.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// Bytes arrived after `<proceed/>`, before the TLS handshake (injection or a broken server).
    #[error("backend sent data after <proceed/>")]
    DataAfterProceed,
    /// A TLS upgrade of a leg that is not there or not plaintext.
    #[error("no plaintext backend connection to upgrade: {0}")]
    NotUpgradable(String),
}

pub(super) async fn connect_backend(
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Stream, BackendError> {
    let address = listener.backend.address.clone();
    let socket = match timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(address.as_str())).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(BackendError::Connect { address, source }),
        Err(_) => return Err(BackendError::ConnectTimeout { address }),
    };
    tune(&socket);
    let mut stream = Stream::Plain(Rewind::new(socket));
    if listener.backend.proxy_protocol {
        let header = stanzawall_core::proxy_protocol::v2_header(peer, local);
        stream.write_all(&header).await.map_err(|source| BackendError::ProxyHeader { address, source })?;
    }
    if listener.backend.tls == BackendTls::Direct {
        upgrade_backend_stream(&mut stream, listener, generation, domain).await?;
    }
    Ok(stream)
}

pub(super) async fn upgrade_backend(
    backend: &mut Option<Stream>,
    leftover: Vec<u8>,
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
) -> Result<(), BackendError> {
    if !leftover.is_empty() {
        return Err(BackendError::DataAfterProceed);
    }
    match backend.as_mut() {
        Some(stream) => upgrade_backend_stream(stream, listener, generation, domain).await,
        None => Err(BackendError::NotUpgradable("not connected".into())),
    }
}

async fn upgrade_backend_stream(
    stream: &mut Stream,
    listener: &ListenerConfig,
    generation: &Generation,
    domain: &str,
) -> Result<(), BackendError> {
    let config = generation.tls.backend_config(&listener.name).ok_or(BackendError::NoTlsConfig)?;
    let name = listener.backend.server_name.as_deref().unwrap_or(domain).to_owned();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| BackendError::ServerName { name: name.clone(), reason: e.to_string() })?;
    let plain = stream.take_plain().map_err(|e| BackendError::NotUpgradable(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = timeout(BACKEND_CONNECT_TIMEOUT, connector.connect(server_name, plain))
        .await
        .map_err(|_| BackendError::TlsTimeout)?
        .map_err(|source| BackendError::Tls { name, source })?;
    *stream = Stream::Client(Box::new(tls));
    Ok(())
}

/// No Nagle delay (stanzas are small and latency-bound), and TCP keepalive.
pub(super) fn tune(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE).with_interval(TCP_KEEPALIVE / 4);
    let _ = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive);
}

pub(super) fn random_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: ids only need to be unique per stream, not secret.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
