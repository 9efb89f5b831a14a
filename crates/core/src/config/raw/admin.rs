//! `[admin]`: where the admin listener binds, its tokens, and its TLS and client certificates.
//!
//! Validation only (no file is read here): the daemon loads the certificate, key and CA the
//! paths name and reports unreadable files at the line recorded in each [`Origin`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::super::locate::Locator;
use super::super::{AdminClientAuth, AdminConfig, AdminRole, AdminTls, CertificateConfig, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    bind: Option<Spanned<String>>,
    tokens: Option<Spanned<String>>,
    metrics_public: Option<bool>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_certificate: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
    client_roles: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
}

pub(super) fn admin(
    raw: &RawAdmin,
    certificates: &[CertificateConfig],
    loc: &Locator<'_>,
) -> Result<AdminConfig, ConfigError> {
    let bind = match &raw.bind {
        None => None,
        Some(b) => match b.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => return loc.err(b.span(), "admin.bind", "expected IP:PORT, e.g. \"127.0.0.1:5380\""),
        },
    };
    let tls = match (&raw.tls_cert, &raw.tls_key, &raw.tls_certificate) {
        (None, None, None) => None,
        (Some(c), Some(k), None) => Some(AdminTls::Files {
            cert: loc.path(c.get_ref()),
            cert_origin: loc.origin(c.span(), "admin.tls_cert"),
            key: loc.path(k.get_ref()),
            key_origin: loc.origin(k.span(), "admin.tls_key"),
        }),
        (Some(c), None, None) => return loc.err(c.span(), "admin.tls_cert", "needs admin.tls_key as well"),
        (None, Some(k), None) => return loc.err(k.span(), "admin.tls_key", "needs admin.tls_cert as well"),
        (_, _, Some(d)) if raw.tls_cert.is_some() || raw.tls_key.is_some() => {
            return loc.err(
                d.span(),
                "admin.tls_certificate",
                "give either tls_certificate (reuse a [[tls.certificate]]) or tls_cert and tls_key, not both",
            )
        }
        (_, _, Some(d)) => {
            let name = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
            let wildcard = name.split_once('.').map(|(_, parent)| format!("*.{parent}"));
            let covered = certificates
                .iter()
                .any(|c| c.domains.contains(&name) || wildcard.as_ref().is_some_and(|w| c.domains.contains(w)));
            if !covered {
                return loc.err(
                    d.span(),
                    "admin.tls_certificate",
                    format!("no [[tls.certificate]] serves '{name}' (name one of its domains)"),
                );
            }
            Some(AdminTls::Reuse { domain: name, origin: loc.origin(d.span(), "admin.tls_certificate") })
        }
    };
    if let (Some(t), None) = (&tls, &bind) {
        let origin = match t {
            AdminTls::Files { cert_origin, .. } => cert_origin,
            AdminTls::Reuse { origin, .. } => origin,
        };
        return Err(origin.error("TLS for the admin listener needs admin.bind"));
    }
    let client_auth = match (&raw.client_ca, &raw.client_roles) {
        (None, None) => None,
        (None, Some(r)) => {
            return loc.err(r.span(), "admin.client_roles", "client certificate roles need admin.client_ca")
        }
        (Some(ca), roles) => {
            if tls.is_none() {
                return loc.err(
                    ca.span(),
                    "admin.client_ca",
                    "client certificates need TLS on the admin listener (admin.tls_cert and admin.tls_key, or admin.tls_certificate)",
                );
            }
            let Some(roles) = roles.as_ref().filter(|r| !r.get_ref().is_empty()) else {
                return loc.err(
                    ca.span(),
                    "admin.client_ca",
                    "map at least one certificate to a role in [admin.client_roles], e.g. \"CN=ops\" = \"admin\"",
                );
            };
            let mut mapped = Vec::new();
            for (subject, role) in roles.get_ref() {
                let key = format!("admin.client_roles.\"{subject}\"");
                let cn = subject.strip_prefix("CN=").filter(|cn| !cn.is_empty() && cn.trim() == *cn);
                let Some(cn) = cn else {
                    return loc.err(
                        role.span(),
                        &key,
                        "the key must be \"CN=<common name>\" (the client certificate's subject common name)",
                    );
                };
                let role = match role.get_ref().as_str() {
                    "read" => AdminRole::Read,
                    "admin" => AdminRole::Admin,
                    other => {
                        return loc.err(
                            role.span(),
                            &key,
                            format!("unknown role '{other}' (expected \"read\" or \"admin\")"),
                        )
                    }
                };
                mapped.push((cn.to_owned(), role));
            }
            Some(AdminClientAuth {
                ca: loc.path(ca.get_ref()),
                ca_origin: loc.origin(ca.span(), "admin.client_ca"),
                roles: mapped,
            })
        }
    };
    Ok(AdminConfig {
        bind,
        tokens: raw.tokens.as_ref().map(|t| loc.path(t.get_ref())),
        tokens_origin: raw.tokens.as_ref().map(|t| loc.origin(t.span(), "admin.tokens")),
        metrics_public: raw.metrics_public.unwrap_or(true),
        tls,
        client_auth,
    })
}
