//! Federation in the daemon: what the s2s stream machines (`stanzawall_core::session::s2s`)
//! need besides moving bytes — the dialback secret, the resolver and trust roots of a config
//! generation ([`S2sRuntime`]), judging a remote's client certificate, the dialback verify
//! connection, and the outbound connect and TLS upgrade with DANE/PKIX. Every protocol decision
//! stays in the core; this module only does I/O and reports what it found.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::RootCertStore;
use stanzawall_core::config::{Config, ConfigError, ListenerConfig, ListenerKind};
use stanzawall_core::session::s2s::{DialbackSecret, DialbackVerify, Dnssec, PeerCert, S2sSettings, VerifyStep};
use stanzawall_core::session::Timeouts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::dns::{self, ConnectedTarget, DnsSettings, DnssecStatus, S2sResolver, StaticRoute, TargetSource};
use crate::io::{Rewind, Stream};
use crate::tls::TlsStore;

/// A dialback verification (resolve, connect, TLS, answer) must finish within this.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(20);

/// Federation state of one config generation.
pub struct S2sRuntime {
    local_domains: Arc<[String]>,
    cert_domains: Arc<[String]>,
    require_tls: bool,
    dialback: Arc<DialbackSecret>,
    resolver: S2sResolver,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for S2sRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2sRuntime").field("local_domains", &self.local_domains).finish_non_exhaustive()
    }
}

impl S2sRuntime {
    /// Build from `[s2s]` (`None` without it): read or create the dialback secret, load the
    /// trust roots, set up the resolver.
    pub fn load(config: &Config, tls: &TlsStore) -> Result<Option<S2sRuntime>, ConfigError> {
        let Some(c) = &config.s2s else { return Ok(None) };
        let origin =
            |key: &str| stanzawall_core::config::Origin { file: config.path.clone(), line: 1, key: key.to_owned() };
        let secret = dialback_secret(&c.dialback_secret_file).map_err(|e| {
            origin("s2s.dialback_secret_file").error(format!("{}: {e}", c.dialback_secret_file.display()))
        })?;
        let mut roots = RootCertStore::empty();
        match &c.trust_roots {
            Some(path) => {
                let pem = crate::files::read(path)
                    .map_err(|e| origin("s2s.trust_roots").error(format!("cannot read {}: {e}", path.display())))?;
                use rustls::pki_types::pem::PemObject;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| origin("s2s.trust_roots").error(format!("cannot read {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(
                        origin("s2s.trust_roots").error(format!("no usable CA certificate in {}", path.display()))
                    );
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let settings = DnsSettings {
            resolver: c.resolver,
            dnssec: c.dnssec,
            trust_anchor: c.trust_anchor.clone(),
            routes: c
                .routes
                .iter()
                .map(|r| StaticRoute { domain: r.domain.clone(), connect: r.connect.clone(), direct_tls: r.direct_tls })
                .collect(),
        };
        let resolver = S2sResolver::new(&settings).map_err(|e| origin("s2s").error(e.to_string()))?;
        let cert_domains: Vec<String> =
            c.local_domains.iter().filter(|d| tls.client_cert(d).is_some()).cloned().collect();
        Ok(Some(S2sRuntime {
            local_domains: c.local_domains.clone().into(),
            cert_domains: cert_domains.into(),
            require_tls: c.require_tls,
            dialback: Arc::new(DialbackSecret::new(&secret)),
            resolver,
            roots: Arc::new(roots),
        }))
    }

    /// Settings of one s2s session on `listener`.
    pub fn settings(
        &self,
        listener: &ListenerConfig,
        config: &Config,
        stream_id: String,
        timeouts: Timeouts,
    ) -> S2sSettings {
        S2sSettings {
            local_domains: self.local_domains.clone(),
            cert_domains: self.cert_domains.clone(),
            require_tls: self.require_tls,
            direct_tls: listener.kind == ListenerKind::S2sTls,
            limits: config.limits.xml(),
            backend_limits: config.limits.xml_backend(),
            stream_id,
            timeouts,
            dialback: self.dialback.clone(),
        }
    }

    /// Judge the certificate the remote presented on `client` (inbound) for `domain`: DANE
    /// when `domain`'s s2s targets publish DNSSEC-secure TLSA records (a match authenticates,
    /// no match refuses), else PKIX with the trust roots (RFC 7673 §3, as Prosody's
    /// `mod_s2s_auth_dane_in` does for inbound streams).
    pub async fn check_peer(&self, client: &Stream, domain: &str) -> PeerCert {
        let Stream::Server(tls) = client else { return PeerCert::None };
        let Some(chain) = tls.get_ref().1.peer_certificates() else { return PeerCert::None };
        if chain.is_empty() {
            return PeerCert::None;
        }
        let chain: Vec<CertificateDer<'static>> = chain.iter().map(|c| c.clone().into_owned()).collect();
        // Whatever DNS says (or fails to say), PKIX still applies; a bogus answer is no reason
        // to trust TLSA, and no reason to refuse a certificate that is valid by PKIX either.
        let tlsa: Vec<dns::Tlsa> = match timeout(VERIFY_TIMEOUT, self.resolver.resolve(domain)).await {
            Ok(Ok(resolution)) => resolution.targets.into_iter().filter_map(|t| t.tlsa).flatten().collect(),
            _ => Vec::new(),
        };
        let tlsa = (!tlsa.is_empty()).then_some(tlsa.as_slice());
        core_cert(dns::verify_peer(&chain, domain, tlsa, &self.roots, UnixTime::now()))
    }

    /// Ask `remote`'s authoritative server whether `key` is valid (XEP-0220 §2.3).
    pub async fn verify_dialback(&self, remote: &str, local: &str, id: &str, key: &str) -> Result<bool, String> {
        match timeout(VERIFY_TIMEOUT, Box::pin(self.verify_inner(remote, local, id, key))).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", VERIFY_TIMEOUT.as_secs())),
        }
    }

    async fn verify_inner(&self, remote: &str, local: &str, id: &str, key: &str) -> Result<bool, String> {
        let (mut stream, target) = self.connect(remote).await?;
        if target.direct_tls {
            self.upgrade(&mut stream, remote, &target, None).await?;
        }
        let mut v = DialbackVerify::new(local, remote, id, key, self.require_tls, target.direct_tls);
        let mut buf = vec![0u8; 8192];
        loop {
            let out = v.take_output();
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the authoritative server closed the connection".into());
            }
            match v.feed(&buf[..n]) {
                VerifyStep::Continue => {}
                VerifyStep::StartTls => {
                    if !v.take_buffered().is_empty() {
                        return Err("data after <proceed/>".into());
                    }
                    self.upgrade(&mut stream, remote, &target, None).await?;
                    v.tls_established();
                }
                VerifyStep::Done(result) => {
                    let _ = stream.write_all(&v.take_output()).await;
                    let _ = stream.shutdown().await;
                    return result;
                }
            }
        }
    }

    /// Resolve and connect to `domain`'s s2s service.
    pub async fn connect(&self, domain: &str) -> Result<(Stream, ConnectedTarget), String> {
        let resolution = self.resolver.resolve(domain).await.map_err(|e| e.to_string())?;
        let (tcp, target) = dns::connect(&resolution).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        Ok((Stream::Plain(Rewind::new(tcp)), target))
    }

    /// TLS client handshake with the remote over `stream` (after `<proceed/>`, or at once for
    /// direct TLS), presenting our certificate for `local` when we have one. A DANE mismatch
    /// fails; any other certificate problem is reported for the session to judge.
    pub async fn upgrade(
        &self,
        stream: &mut Stream,
        domain: &str,
        target: &ConnectedTarget,
        client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    ) -> Result<PeerCert, String> {
        let plain = stream.take_plain().map_err(|e| e.to_string())?;
        let (tls, cert) = dns::tls_connect(plain, domain, target, self.roots.clone(), client_cert)
            .await
            .map_err(|e| e.to_string())?;
        *stream = Stream::Client(Box::new(tls));
        Ok(core_cert(cert))
    }
}

/// DNSSEC status of a connected target, as the core reports it.
pub fn dnssec_of(target: &ConnectedTarget) -> Dnssec {
    match (target.source, target.dnssec) {
        (TargetSource::Static, _) => Dnssec::Route,
        (_, DnssecStatus::Secure) => Dnssec::Secure,
        (_, DnssecStatus::Insecure) => Dnssec::Insecure,
        (_, DnssecStatus::Off) => Dnssec::Off,
    }
}

fn core_cert(cert: dns::PeerCert) -> PeerCert {
    match cert {
        dns::PeerCert::Dane(_) => PeerCert::Dane,
        dns::PeerCert::Pkix => PeerCert::Pkix,
        dns::PeerCert::DaneMismatch => PeerCert::Invalid("matches none of the DNSSEC-secure TLSA records".into()),
        dns::PeerCert::Invalid(why) => PeerCert::Invalid(why),
    }
}

/// The dialback secret: read from `path`, or created there (32 random bytes, hex, mode 0600).
/// Gateways that share federation behind a load balancer must share this file.
fn dialback_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match crate::files::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            if text.len() < 32 {
                return Err(std::io::Error::other("the secret is shorter than 32 characters"));
            }
            Ok(text.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(hex.as_bytes())?;
            Ok(hex.into_bytes())
        }
        Err(e) => Err(e),
    }
}
