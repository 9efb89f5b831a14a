//! The file as written: serde structs with spans, and their validation into [`Config`].

mod admin;
mod network;
mod web;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{BackendConfig, BackendTls, CertificateConfig, Config, ConfigError, Limits, ListenerConfig, ListenerKind};

use std::collections::BTreeMap;

use self::network::{network, nftables, resolve_network_lists, RawNetwork, RawNftables};
use super::locate::Locator;
use super::policy::{RawAudit, RawChain, RawList, RawPolicy, RawRate, RawRule};
use super::Files;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    nftables: RawNftables,
    include: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    list: BTreeMap<String, Spanned<RawList>>,
    #[serde(default)]
    rate: BTreeMap<String, Spanned<RawRate>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    chain: BTreeMap<String, Spanned<RawChain>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    admin: admin::RawAdmin,
    s2s: Option<super::s2s::RawS2s>,
    store: Option<super::store::RawStore>,
    drain: Option<super::store::RawDrain>,
    file_transfer: Option<super::transfer::RawFileTransfer>,
    contacts: Option<Spanned<super::contacts::RawContacts>>,
    antispam: Option<super::policy::RawAntispam>,
    quarantine: Option<super::quarantine::RawQuarantine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    domains: Spanned<Vec<Spanned<String>>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    kind: Spanned<String>,
    bind: Spanned<String>,
    backend: Option<Spanned<String>>,
    backend_tls: Option<Spanned<String>>,
    backend_ca: Option<Spanned<String>>,
    backend_server_name: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<String>>,
    // `kind = "websocket"` only (see `web`).
    path: Option<Spanned<String>>,
    allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    max_frame_bytes: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<i64>>,
    public_url: Option<Spanned<String>>,
    // `kind = "bosh"` only.
    max_request_bytes: Option<Spanned<i64>>,
    accept_proxy: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    stanza_bytes: Option<Spanned<i64>>,
    preauth_stanza_bytes: Option<Spanned<i64>>,
    backend_stanza_bytes: Option<Spanned<i64>>,
    depth: Option<Spanned<i64>>,
    attributes: Option<Spanned<i64>>,
}

pub(super) fn parse(text: &str, file: &Path, files: &dyn Files) -> Result<Config, ConfigError> {
    parse_for(text, file, files, true)
}

/// `serving`: the config runs a gateway (listeners and certificates required); passive
/// inspection needs only the policy and limits.
pub(super) fn parse_for(text: &str, file: &Path, files: &dyn Files, serving: bool) -> Result<Config, ConfigError> {
    let loc = Locator { text, file };
    let raw: RawConfig = toml::from_str(text).map_err(|e| loc.toml_error(&e))?;
    validate(raw, &loc, files, serving)
}

fn validate(raw: RawConfig, loc: &Locator<'_>, files: &dyn Files, serving: bool) -> Result<Config, ConfigError> {
    let mut certificates = Vec::new();
    for (i, c) in raw.tls.certificate.into_iter().enumerate() {
        let key = |k: &str| format!("tls.certificate[{i}].{k}");
        if c.domains.get_ref().is_empty() {
            return loc.err(c.domains.span(), &key("domains"), "at least one domain is required");
        }
        let mut domains = Vec::new();
        for d in c.domains.get_ref() {
            let lower = d.get_ref().to_ascii_lowercase();
            let name = lower.strip_prefix("*.").unwrap_or(&lower);
            if !crate::jid::is_domain(name) || name.contains('*') {
                return loc.err(d.span(), &key("domains"), format!("'{lower}' is not a domain or '*.domain'"));
            }
            domains.push(lower);
        }
        certificates.push(CertificateConfig {
            domains,
            cert: loc.path(c.cert.get_ref()),
            cert_origin: loc.origin(c.cert.span(), &key("cert")),
            key: loc.path(c.key.get_ref()),
            key_origin: loc.origin(c.key.span(), &key("key")),
        });
    }

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in raw.listener.into_iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        let name = l.name.get_ref().trim().to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return loc.err(l.name.span(), &key("name"), "use letters, digits, '-' and '_'");
        }
        if !names.insert(name.clone()) {
            return loc.err(l.name.span(), &key("name"), format!("duplicate listener name '{name}'"));
        }
        let kind = match l.kind.get_ref().as_str() {
            "c2s" => ListenerKind::C2s,
            "c2s-tls" => ListenerKind::C2sTls,
            "s2s" => ListenerKind::S2s,
            "s2s-tls" => ListenerKind::S2sTls,
            "s2s-out" => ListenerKind::S2sOut,
            "websocket" => ListenerKind::WebSocket,
            "bosh" => ListenerKind::Bosh,
            "socks5" => ListenerKind::Socks5,
            "http-upload" => ListenerKind::HttpUpload,
            "http-upload-tls" => ListenerKind::HttpUploadTls,
            other => {
                return loc.err(
                    l.kind.span(),
                    &key("kind"),
                    format!(
                        "unknown kind '{other}' (expected \"c2s\", \"c2s-tls\", \"s2s\", \"s2s-tls\", \"s2s-out\", \"websocket\", \"bosh\", \"socks5\", \"http-upload\" or \"http-upload-tls\")"
                    ),
                )
            }
        };
        let web = web::options(&l, kind, loc, &key)?;
        let bind: SocketAddr = match l.bind.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                return loc.err(l.bind.span(), &key("bind"), "expected IP:PORT, e.g. \"0.0.0.0:5222\" or \"[::]:5222\"")
            }
        };
        if let Some(other) = listeners.iter().find(|o: &&ListenerConfig| o.bind == bind) {
            return loc.err(
                l.bind.span(),
                &key("bind"),
                format!("{bind} is already used by listener '{}'", other.name),
            );
        }
        // An s2s-out listener has no fixed backend: each stream goes to the remote domain its
        // header names, resolved by the gateway.
        let (address, backend_span) = match (&l.backend, kind) {
            (Some(b), ListenerKind::S2sOut) => {
                return loc.err(
                    b.span(),
                    &key("backend"),
                    "an s2s-out listener resolves each remote domain; remove `backend`",
                )
            }
            (None, ListenerKind::S2sOut) => (String::new(), l.kind.span()),
            // The relay pairs two clients; it has nothing behind it to dial.
            (Some(b), ListenerKind::Socks5) => {
                return loc.err(b.span(), &key("backend"), "a socks5 relay never dials anywhere; remove `backend`")
            }
            (None, ListenerKind::Socks5) => (String::new(), l.kind.span()),
            (None, _) => return loc.err(l.name.span(), &key("backend"), "`backend = \"HOST:PORT\"` is required"),
            (Some(b), _) => (b.get_ref().clone(), b.span()),
        };
        if !matches!(kind, ListenerKind::S2sOut | ListenerKind::Socks5) && !valid_host_port(&address) {
            return loc.err(backend_span.clone(), &key("backend"), "expected HOST:PORT, e.g. \"127.0.0.1:15222\"");
        }
        let tls = match l.backend_tls.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("off", _)) => BackendTls::Off,
            Some(("starttls", _)) => BackendTls::StartTls,
            Some(("tls", _)) => BackendTls::Direct,
            Some((other, span)) => {
                return loc.err(
                    span,
                    &key("backend_tls"),
                    format!("unknown value '{other}' (expected \"off\", \"starttls\" or \"tls\")"),
                )
            }
        };
        let proxy_protocol = match l.proxy_protocol.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("off", _)) => false,
            Some(("v2", _)) => true,
            Some((other, span)) => {
                return loc.err(
                    span,
                    &key("proxy_protocol"),
                    format!("unknown value '{other}' (expected \"v2\" or \"off\")"),
                )
            }
        };
        if kind.is_s2s() && tls != BackendTls::Off {
            let span = l.backend_tls.as_ref().map_or(0..0, |s| s.span());
            return loc.err(
                span,
                &key("backend_tls"),
                "s2s listeners reach the backend in plaintext on loopback (dialback); use \"off\"",
            );
        }
        // HTTP has no STARTTLS: the upload service is reached over http, or https from the first
        // byte (`backend_tls = "tls"`, verified like any other TLS backend).
        if kind.is_upload() && tls == BackendTls::StartTls {
            let span = l.backend_tls.as_ref().map_or(0..0, |s| s.span());
            return loc.err(
                span,
                &key("backend_tls"),
                "an upload service speaks HTTP: use \"tls\" (https) or \"off\" (http)",
            );
        }
        if kind.is_upload() && proxy_protocol {
            let span = l.proxy_protocol.as_ref().map_or(0..0, |s| s.span());
            return loc.err(span, &key("proxy_protocol"), "not supported on upload listeners");
        }
        if kind.is_s2s() && proxy_protocol {
            let span = l.proxy_protocol.as_ref().map_or(0..0, |s| s.span());
            return loc.err(span, &key("proxy_protocol"), "not supported on s2s listeners");
        }
        for (opt, k) in [(&l.backend_ca, "backend_ca"), (&l.backend_server_name, "backend_server_name")] {
            if let (Some(v), BackendTls::Off) = (opt, tls) {
                return loc.err(v.span(), &key(k), "only meaningful with backend_tls = \"starttls\" or \"tls\"");
            }
        }
        let server_name = match &l.backend_server_name {
            Some(s) if !crate::jid::is_domain(s.get_ref()) => {
                return loc.err(s.span(), &key("backend_server_name"), "not a valid DNS name")
            }
            other => other.as_ref().map(|s| s.get_ref().clone()),
        };
        let trusted_proxies = super::store::accept_proxy(&l.accept_proxy, &l.trusted_proxies, kind, &key, loc)?;
        listeners.push(ListenerConfig {
            trusted_proxies,
            name,
            kind,
            bind,
            bind_origin: loc.origin(l.bind.span(), &key("bind")),
            web,
            backend: BackendConfig {
                address,
                tls,
                ca: l.backend_ca.as_ref().map(|p| loc.path(p.get_ref())),
                server_name,
                proxy_protocol,
                origin: loc.origin(backend_span, &key("backend")),
            },
        });
    }
    if listeners.is_empty() && serving {
        return loc.err(0..0, "listener", "at least one [[listener]] is required");
    }
    if certificates.is_empty() && serving {
        return loc.err(
            0..0,
            "tls.certificate",
            "at least one [[tls.certificate]] is required (clients are served over TLS)",
        );
    }

    let d = Limits::default();
    let r = &raw.limits;
    let limits = Limits {
        stanza_bytes: limit(loc, &r.stanza_bytes, "limits.stanza_bytes", d.stanza_bytes, 1024..=MAX_BYTES)?,
        preauth_stanza_bytes: limit(
            loc,
            &r.preauth_stanza_bytes,
            "limits.preauth_stanza_bytes",
            d.preauth_stanza_bytes,
            1024..=MAX_BYTES,
        )?,
        backend_stanza_bytes: limit(
            loc,
            &r.backend_stanza_bytes,
            "limits.backend_stanza_bytes",
            d.backend_stanza_bytes,
            1024..=MAX_BYTES,
        )?,
        // Bounded above: trees are built and dropped recursively, and duplicate-attribute checks
        // are quadratic in the attribute count.
        depth: limit(loc, &r.depth, "limits.depth", d.depth, 4..=256)?,
        attributes: limit(loc, &r.attributes, "limits.attributes", d.attributes, 8..=256)?,
    };
    if let Some(v) = &r.preauth_stanza_bytes {
        if limits.preauth_stanza_bytes > limits.stanza_bytes {
            return loc.err(v.span(), "limits.preauth_stanza_bytes", "must not exceed limits.stanza_bytes");
        }
    }
    let mut network = network(&raw.network, loc)?;
    // Bans and RTBL lists outlive the process here; relative to the config file.
    let state_dir = state_dir_of(&raw.state_dir, loc);
    let sections = RawPolicy { list: raw.list, rate: raw.rate, rule: raw.rule, chain: raw.chain };
    let mut policy = super::policy::policy(sections, &raw.include, &raw.audit, &state_dir, loc, files)?;
    let contacts = super::contacts::contacts(raw.contacts.as_ref(), loc)?;
    if contacts.is_none() {
        // An RTBL is followed over the component connection: without one it would stay empty.
        if let Some(l) = policy.lists.values().find(|l| l.rtbl.is_some()) {
            return Err(l.origin.error("rtbl needs [contacts] component (the node is followed over that connection)"));
        }
    }
    super::s2s::s2s_domains(raw.s2s.as_ref(), &mut policy, loc)?;
    super::policy::antispam(raw.antispam.as_ref(), &mut policy, loc)?;
    let quarantine = super::quarantine::quarantine(raw.quarantine.as_ref(), &state_dir, loc)?;
    resolve_network_lists(&mut network, &raw.network, &policy, loc)?;
    let admin = admin::admin(&raw.admin, &certificates, loc)?;
    let nftables = nftables(&raw.nftables, &listeners, loc)?;
    let needs_s2s = listeners.iter().any(|l| l.kind.is_s2s());
    let has_out = listeners.iter().any(|l| l.kind == ListenerKind::S2sOut);
    let s2s = super::s2s::s2s(raw.s2s.as_ref(), needs_s2s, has_out, &state_dir, loc)?;
    let store = super::store::store(raw.store.as_ref(), loc)?;
    let drain = super::store::drain(raw.drain.as_ref(), loc)?;
    let file_transfer = super::transfer::file_transfer(raw.file_transfer.as_ref(), &listeners, loc)?;
    Ok(Config {
        contacts,
        quarantine,
        file_transfer,
        s2s,
        store,
        drain,
        path: loc.file.to_path_buf(),
        state_dir,
        certificates,
        listeners,
        limits,
        network,
        nftables,
        policy,
        admin,
    })
}

/// Largest byte cap accepted (64 MiB): beyond it one connection could pin too much memory.
pub(super) const MAX_BYTES: usize = 64 << 20;

pub(super) fn limit(
    loc: &Locator<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match usize::try_from(*v.get_ref()) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => loc.err(v.span(), key, format!("must be an integer from {} to {}", range.start(), range.end())),
    }
}

pub(super) fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => crate::jid::is_domain(host) && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// `state_dir`, default `state/` beside the config file.
fn state_dir_of(state_dir: &Option<Spanned<String>>, loc: &Locator<'_>) -> std::path::PathBuf {
    state_dir.as_ref().map_or_else(|| loc.path("state"), |d| loc.path(d.get_ref()))
}
