//! TLS on the admin listener (`[admin] tls_cert`/`tls_key` or `tls_certificate`) and client
//! certificates that authenticate by themselves (`[admin] client_ca`, `[admin.client_roles]`).
//!
//! Built once per config generation, so a reload rotates the certificate and the CA and a bad
//! file keeps the old generation, with the config line that named it. The listener takes the
//! current generation's [`AdminTls`] at each accept; a TLS handshake runs on a task of its own
//! (bounded in time and number) so a slow client never holds up the others.
//!
//! Client certificates are optional at the TLS layer: a browser with only a token still
//! connects. A certificate that is presented must chain to `client_ca` (rustls/webpki path
//! validation with the clientAuth purpose, RFC 5280 §4.2.1.12), else the handshake fails. A
//! valid certificate authenticates with the role its subject common name maps to; an unmapped
//! name authenticates nobody (the request then needs a token, fail closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use stanzawall_core::config::{AdminRole, AdminTls as TlsSource, Config, ConfigError, Origin};

use crate::tls::TlsStore;
use crate::tokens::Role;

/// A TLS handshake on the admin listener must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 64;

/// The admin listener's TLS settings of one generation.
#[derive(Debug)]
pub struct AdminTls {
    /// The server configuration (asks for an optional client certificate with `client_ca`).
    pub server: Arc<ServerConfig>,
    /// Subject common name → role.
    roles: HashMap<String, Role>,
}

/// Who a verified client certificate says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject common name (`None`: the certificate has none).
    pub common_name: Option<String>,
    /// Its role in `[admin.client_roles]` (`None`: not mapped, authenticates nobody).
    pub role: Option<Role>,
}

impl CertIdentity {
    /// The caller's name in audit records: `cert:CN=ops`.
    pub fn audit_name(&self) -> String {
        format!("cert:CN={}", self.common_name.as_deref().unwrap_or(""))
    }
}

/// The connection's peer: address and, over mTLS, the certificate's identity.
#[derive(Debug, Clone)]
pub struct AdminPeer {
    /// The client's address.
    pub addr: SocketAddr,
    /// A client certificate that chained to `client_ca`.
    pub cert: Option<CertIdentity>,
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Build the admin listener's TLS settings from `config` (`None`: plain HTTP).
pub fn load(config: &Config, store: &TlsStore) -> Result<Option<Arc<AdminTls>>, ConfigError> {
    let admin = &config.admin;
    let Some(source) = &admin.tls else { return Ok(None) };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certified, origin) = match source {
        TlsSource::Files { cert, cert_origin, key, key_origin } => {
            (certified_key(cert, cert_origin, key, key_origin, &provider)?, cert_origin)
        }
        TlsSource::Reuse { domain, origin } => {
            let c =
                store.client_cert(domain).ok_or_else(|| origin.error(format!("no certificate serves '{domain}'")))?;
            (c, origin)
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| origin.error(e.to_string()))?;
    let mut roles = HashMap::new();
    let builder = match &admin.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = read_roots(&auth.ca, &auth.ca_origin)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                // Optional at the TLS layer: token-only clients (the dashboard) still connect.
                .allow_unauthenticated()
                .build()
                .map_err(|e| auth.ca_origin.error(format!("cannot use client_ca {}: {e}", auth.ca.display())))?;
            for (cn, role) in &auth.roles {
                roles.insert(
                    cn.clone(),
                    match role {
                        AdminRole::Read => Role::Read,
                        AdminRole::Admin => Role::Admin,
                    },
                );
            }
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(FixedCert(certified)));
    // axum serves HTTP/1.1 only here.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(AdminTls { server: Arc::new(server), roles })))
}

impl AdminTls {
    /// The identity of a verified client certificate chain (leaf first), if one was presented.
    pub fn identify(&self, chain: Option<&[CertificateDer<'_>]>) -> Option<CertIdentity> {
        let leaf = chain?.first()?;
        let common_name = common_name(leaf.as_ref());
        let role = common_name.as_ref().and_then(|cn| self.roles.get(cn).copied());
        Some(CertIdentity { common_name, role })
    }
}

/// The first subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

fn read_pem(path: &Path, origin: &Origin, what: &str) -> Result<Vec<u8>, ConfigError> {
    crate::files::read(path).map_err(|e| origin.error(format!("cannot read {what} {}: {e}", path.display())))
}

fn certified_key(
    cert: &Path,
    cert_origin: &Origin,
    key: &Path,
    key_origin: &Origin,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read_pem(cert, cert_origin, "certificate chain")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_origin.error(format!("cannot read certificate chain {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(cert_origin.error(format!("no certificate in {}", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_slice(&read_pem(key, key_origin, "private key")?)
        .map_err(|e| key_origin.error(format!("cannot read private key {}: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| key_origin.error(format!("key does not fit certificate {}: {e}", cert.display())))?;
    Ok(Arc::new(certified))
}

fn read_roots(ca: &Path, origin: &Origin) -> Result<RootCertStore, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(&read_pem(ca, origin, "client_ca")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| origin.error(format!("cannot read client_ca {}: {e}", ca.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(origin.error(format!("no usable CA certificate in {}", ca.display())));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["ops.example".to_owned()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "ops");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), Some("ops".to_owned()));
        assert_eq!(common_name(b"not a certificate"), None);
        let tls = AdminTls {
            server: Arc::new(
                ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())),
            ),
            roles: HashMap::from([("ops".to_owned(), Role::Admin)]),
        };
        let chain = [cert.der().clone()];
        assert_eq!(
            tls.identify(Some(&chain)),
            Some(CertIdentity { common_name: Some("ops".to_owned()), role: Some(Role::Admin) })
        );
        assert_eq!(tls.identify(None), None);
        let mut other = rcgen::CertificateParams::new(vec!["x.example".to_owned()]).expect("params");
        other.distinguished_name.push(rcgen::DnType::CommonName, "intruder");
        let other = other.self_signed(&key).expect("cert");
        let id = tls.identify(Some(std::slice::from_ref(other.der()))).expect("identity");
        assert_eq!(id.role, None, "an unmapped name gets no role");
        assert_eq!(id.audit_name(), "cert:CN=intruder");
    }
}
