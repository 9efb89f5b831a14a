//! Certificates and TLS configurations, built once per (re)load.
//!
//! Owns reading PEM files named in the config and choosing a certificate for a connection: by
//! SNI, else by the stream's `to` (STARTTLS clients that send no SNI), else the first configured.
//! A load either succeeds whole or fails with the config line that named the bad file, so a
//! reload never leaves a half-updated store.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use stanzawall_core::config::{Config, ConfigError, ListenerConfig};
use stanzawall_core::session::BackendTls;

/// ALPN protocol of direct-TLS client connections (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";
/// ALPN protocol of direct-TLS server-to-server connections (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";
/// ALPN protocol of the HTTPS upload listener: it speaks HTTP/1.1 only, so a client offering
/// only `h2` is refused in the handshake (RFC 7301 §3.2) instead of failing on the first frame.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct Entry {
    domains: Vec<String>,
    starttls: Arc<ServerConfig>,
    direct: Arc<ServerConfig>,
    /// s2s: the same certificate, asking remote servers for theirs (XEP-0178).
    s2s_starttls: Arc<ServerConfig>,
    s2s_direct: Arc<ServerConfig>,
    /// HTTPS (the upload listener): ALPN `http/1.1`.
    https: Arc<ServerConfig>,
    /// The certificate as a client certificate (outbound s2s, SASL EXTERNAL).
    certified: Arc<CertifiedKey>,
    fingerprint: String,
}

/// All server certificates, and the backend client configurations, of one config generation.
#[derive(Debug)]
pub struct TlsStore {
    entries: Vec<Entry>,
    backends: HashMap<String, Arc<ClientConfig>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsStore {
    /// Read every certificate and key named in `config`.
    pub fn load(config: &Config) -> Result<TlsStore, ConfigError> {
        let provider = provider();
        let mut entries = Vec::new();
        for c in &config.certificates {
            let read = |path: &std::path::Path, origin: &stanzawall_core::config::Origin, what: &str| {
                crate::files::read(path)
                    .map_err(|e| origin.error(format!("cannot read {what} {}: {e}", path.display())))
            };
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read(&c.cert, &c.cert_origin, "certificate chain")?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        c.cert_origin.error(format!("cannot read certificate chain {}: {e}", c.cert.display()))
                    })?;
            if chain.is_empty() {
                return Err(c.cert_origin.error(format!("no certificate in {}", c.cert.display())));
            }
            let key = PrivateKeyDer::from_pem_slice(&read(&c.key, &c.key_origin, "private key")?)
                .map_err(|e| c.key_origin.error(format!("cannot read private key {}: {e}", c.key.display())))?;
            let fingerprint = sha256_hex(&chain[0]);
            let certified = CertifiedKey::from_der(chain, key, &provider)
                .map_err(|e| c.key_origin.error(format!("key does not fit certificate {}: {e}", c.cert.display())))?;
            let certified = Arc::new(certified);
            let build_with = |alpn: Option<&[u8]>, s2s: bool| -> Result<Arc<ServerConfig>, ConfigError> {
                let builder = ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| c.cert_origin.error(e.to_string()))?;
                let builder = match s2s {
                    // Remote servers may prove their domain with a certificate; it is judged
                    // once the stream header names the domain (crate::s2s).
                    true => builder.with_client_cert_verifier(Arc::new(crate::dns::dane::S2sClientCertVerifier::new(
                        provider.clone(),
                    ))),
                    false => builder.with_no_client_auth(),
                };
                let mut cfg = builder.with_cert_resolver(Arc::new(FixedCert(certified.clone())));
                if let Some(p) = alpn {
                    cfg.alpn_protocols = vec![p.to_vec()];
                }
                Ok(Arc::new(cfg))
            };
            let build = |alpn: Option<&[u8]>| build_with(alpn, false);
            entries.push(Entry {
                domains: c.domains.clone(),
                starttls: build(None)?,
                direct: build(Some(ALPN_XMPP_CLIENT))?,
                s2s_starttls: build_with(None, true)?,
                s2s_direct: build_with(Some(ALPN_XMPP_SERVER), true)?,
                https: build(Some(ALPN_HTTP_1_1))?,
                certified: certified.clone(),
                fingerprint,
            });
        }
        let mut backends = HashMap::new();
        for l in &config.listeners {
            if l.backend.tls != BackendTls::Off {
                backends.insert(l.name.clone(), backend_client_config(l, &provider)?);
            }
        }
        Ok(TlsStore { entries, backends })
    }

    /// Server config for a connection that asked for `name` (SNI or stream `to`).
    pub fn server_config(&self, name: Option<&str>, direct_tls: bool) -> Option<Arc<ServerConfig>> {
        let e = self.select(name)?;
        Some(if direct_tls { e.direct.clone() } else { e.starttls.clone() })
    }

    /// Server config for an HTTPS connection (the upload listener) that asked for `name` (SNI).
    pub fn https_server_config(&self, name: Option<&str>) -> Option<Arc<ServerConfig>> {
        self.select(name).map(|e| e.https.clone())
    }

    /// Server config for an s2s connection (asks for the remote's certificate).
    pub fn s2s_server_config(&self, name: Option<&str>, direct_tls: bool) -> Option<Arc<ServerConfig>> {
        let e = self.select(name)?;
        Some(if direct_tls { e.s2s_direct.clone() } else { e.s2s_starttls.clone() })
    }

    /// The certificate configured for exactly `domain` (or a `*.` wildcard over it), as a client
    /// certificate; `None` when only the default certificate would match.
    pub fn client_cert(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let e = self.select(Some(domain))?;
        let name = domain.to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, p)| format!("*.{p}"));
        let covers = e.domains.contains(&name) || wildcard.is_some_and(|w| e.domains.contains(&w));
        covers.then(|| e.certified.clone())
    }

    /// SHA-256 of the leaf certificate served for `name`, hex (for the reload log).
    pub fn fingerprint(&self, name: Option<&str>) -> Option<&str> {
        self.select(name).map(|e| e.fingerprint.as_str())
    }

    /// Client config for the backend of listener `listener`, if it uses TLS.
    pub fn backend_config(&self, listener: &str) -> Option<Arc<ClientConfig>> {
        self.backends.get(listener).cloned()
    }

    fn select(&self, name: Option<&str>) -> Option<&Entry> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(e) = self.entries.iter().find(|e| e.domains.contains(&name)) {
                return Some(e);
            }
            if let Some((_, parent)) = name.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some(e) = self.entries.iter().find(|e| e.domains.contains(&wildcard)) {
                    return Some(e);
                }
            }
        }
        self.entries.first()
    }
}

fn backend_client_config(l: &ListenerConfig, provider: &Arc<CryptoProvider>) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &l.backend.ca {
        Some(ca) => {
            let pem = crate::files::read(ca)
                .map_err(|e| l.backend.origin.error(format!("cannot read backend_ca {}: {e}", ca.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| l.backend.origin.error(format!("cannot read backend_ca {}: {e}", ca.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(l.backend.origin.error(format!("no usable CA certificate in {}", ca.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| l.backend.origin.error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn sha256_hex(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
