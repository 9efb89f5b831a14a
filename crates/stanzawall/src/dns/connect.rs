//! From a [`Resolution`] to a TCP connection, and from that to TLS with DANE/PKIX checked.
//!
//! Owns trying targets in order (RFC 6120 §3.2.1 step 6: on failure, the next target), each
//! connect bounded in time, and the outbound TLS client setup for s2s: SNI = the XMPP domain,
//! ALPN `xmpp-server` on direct TLS, the [`S2sServerVerifier`] deciding. Moves bytes only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::dane::{read_outcome, PeerCert, S2sServerVerifier};
use super::{DnsError, DnssecStatus, Resolution, Target, TargetSource, Tlsa};

/// ALPN protocol of direct-TLS server-to-server connections (XEP-0368 §3).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// How long one TCP connect may take before the next address is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the TLS handshake may take.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(15);

/// The target a connection reached, with what the TLS step needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedTarget {
    /// The target's host name (SRV target or the domain) or a static route's host.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    /// Secure TLSA records of the target (`None` = PKIX).
    pub tlsa: Option<Vec<Tlsa>>,
    /// DNSSEC status of the chain that led here.
    pub dnssec: DnssecStatus,
    /// How the target was found.
    pub source: TargetSource,
}

impl ConnectedTarget {
    fn new(t: &Target, addr: SocketAddr) -> Self {
        ConnectedTarget {
            host: t.host.clone(),
            addr,
            direct_tls: t.direct_tls,
            tlsa: t.tlsa.clone(),
            dnssec: t.dnssec,
            source: t.source,
        }
    }
}

/// Connects to the first target/address that accepts, in resolution order.
pub async fn connect(resolution: &Resolution) -> Result<(TcpStream, ConnectedTarget), DnsError> {
    connect_with_timeout(resolution, CONNECT_TIMEOUT).await
}

/// [`connect`] with a chosen per-address timeout.
pub async fn connect_with_timeout(
    resolution: &Resolution,
    timeout: Duration,
) -> Result<(TcpStream, ConnectedTarget), DnsError> {
    let mut failures = Vec::new();
    for target in &resolution.targets {
        for ip in &target.addrs {
            let addr = SocketAddr::new(*ip, target.port);
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok((stream, ConnectedTarget::new(target, addr))),
                Ok(Err(e)) => failures.push(format!("{}:{addr}: {e}", target.host)),
                Err(_) => failures.push(format!("{}:{addr}: timed out after {} s", target.host, timeout.as_secs())),
            }
        }
    }
    if failures.is_empty() {
        failures.push("no target has an address".to_owned());
    }
    Err(DnsError::Connect { domain: resolution.domain.clone(), reason: failures.join("; ") })
}

/// A fixed client certificate (our domain's, for SASL EXTERNAL, XEP-0178).
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS over `stream` to the remote XMPP `domain` reached at `target` (after `<proceed/>` for
/// STARTTLS, at once for direct TLS).
///
/// SNI is the XMPP domain, not the SRV target: the identity checked is the XMPP domain (RFC 6120
/// §13.7.2.1) and XEP-0368 §3 has direct-TLS initiators send it as SNI; it is what lets a server
/// hosting several domains pick the certificate for this one. The handshake fails only on a
/// DANE mismatch; any other certificate problem comes back as [`PeerCert::Invalid`] for the
/// session to decide (dialback fallback or refusal per policy).
pub async fn tls_connect<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    domain: &str,
    target: &ConnectedTarget,
    roots: Arc<RootCertStore>,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<(TlsStream<S>, PeerCert), DnsError> {
    let tls_err = |reason: String| DnsError::Tls { domain: domain.to_owned(), reason };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The SRV target is an acceptable name only when the SRV answer was secure (RFC 7673 §4.1);
    // verify_peer uses it for DANE-TA only.
    let mut names = vec![domain.to_owned()];
    if target.dnssec == DnssecStatus::Secure && target.source == TargetSource::Srv && target.host != domain {
        names.push(target.host.clone());
    }
    let verifier = Arc::new(S2sServerVerifier::new(names, target.tlsa.clone(), roots, provider.clone()));
    let outcome = verifier.outcome();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some(key) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(key))),
        None => builder.with_no_client_auth(),
    };
    if target.direct_tls {
        config.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
    }
    let server_name = ServerName::try_from(domain.to_owned()).map_err(|e| tls_err(format!("SNI {domain:?}: {e}")))?;
    let connector = TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(TLS_TIMEOUT, connector.connect(server_name, stream)).await;
    let verdict = read_outcome(&outcome);
    match handshake {
        Err(_) => Err(tls_err(format!("handshake timed out after {} s", TLS_TIMEOUT.as_secs()))),
        Ok(Err(e)) => {
            if verdict == Some(PeerCert::DaneMismatch) {
                Err(DnsError::DaneMismatch { domain: domain.to_owned() })
            } else {
                Err(tls_err(e.to_string()))
            }
        }
        Ok(Ok(tls)) => match verdict {
            Some(v) => Ok((tls, v)),
            // rustls always asks the verifier before finishing; a missing verdict is a bug, and
            // an unchecked peer must never count as anything but invalid.
            None => Ok((tls, PeerCert::Invalid("certificate was not checked".to_owned()))),
        },
    }
}
