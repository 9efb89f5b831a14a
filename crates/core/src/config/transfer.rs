//! `[file_transfer]`: the gateway's bytestream proxy and what every file must satisfy (README
//! "File transfer"). Present or not, a `socks5` listener needs it (the proxy JID) and it needs a
//! `socks5` listener (the address clients are sent to).
//!
//! The checks are the chain `file`: size, media type (allow/deny lists), SHA-256 hash list,
//! DLP keywords and patterns (and Luhn-valid card numbers), the clamd verdict, and what a
//! scanner failure means. Compiled into [`crate::transfer::InspectPolicy`] by
//! [`FileTransferConfig::inspect_policy`]; validated here so that a bad pattern is a config error
//! with its line, never a runtime one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::{ConfigError, ListenerConfig, ListenerKind};
use crate::limit::parse_duration;
use crate::transfer::{Dlp, InspectPolicy, OnScannerError};

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// A Unix socket path (`LocalSocket`).
    Unix(PathBuf),
    /// `TCPAddr:TCPSocket`.
    Tcp(SocketAddr),
}

/// `[file_transfer]` as the gateway uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTransferConfig {
    /// The proxy's JID, answered by the gateway on every c2s stream.
    pub proxy_jid: String,
    /// The host clients are told to connect to.
    pub proxy_host: String,
    /// The port clients are told to connect to.
    pub proxy_port: u16,
    /// Force mediation: offers rewritten to the gateway's proxy only, the proxy added to the
    /// server's disco#items.
    pub mediate: bool,
    /// Largest file in bytes.
    pub max_bytes: u64,
    /// Media types allowed (empty: any).
    pub allow_types: Vec<String>,
    /// Media types refused.
    pub deny_types: Vec<String>,
    /// SHA-256 digests refused.
    pub hash_deny: Vec<[u8; 32]>,
    /// DLP keywords (ASCII case-insensitive).
    pub dlp_keywords: Vec<String>,
    /// DLP regular expressions.
    pub dlp_patterns: Vec<String>,
    /// DLP: Luhn-valid card numbers.
    pub dlp_card_numbers: bool,
    /// clamd, if files are scanned for malware.
    pub clamd: Option<ClamdAddress>,
    /// Longest a clamd verdict may take after the last byte.
    pub scan_timeout: Duration,
    /// What a scanner failure means.
    pub on_scanner_error: OnScannerError,
    /// Bytes held back until the verdict.
    pub hold_back_bytes: usize,
    /// Longest a connection may wait for its partner and the activation.
    pub pairing_timeout: Duration,
    /// The public base URL of the upload listener (`https://` for `http-upload-tls`); XEP-0363
    /// slots are rewritten to it.
    pub upload_url: Option<String>,
}

impl FileTransferConfig {
    /// The inspection policy, with the `file` chain's `rules` before these checks (validated
    /// already: compiling cannot fail for a validated config, but a failure is reported, never
    /// a panic).
    pub fn inspect_policy(
        &self,
        rules: std::sync::Arc<crate::policy::file::FileRules>,
    ) -> Result<InspectPolicy, crate::transfer::inspect::DlpError> {
        let dlp = if self.dlp_keywords.is_empty() && self.dlp_patterns.is_empty() && !self.dlp_card_numbers {
            None
        } else {
            Some(Dlp::new(&self.dlp_keywords, &self.dlp_patterns, self.dlp_card_numbers)?)
        };
        Ok(InspectPolicy {
            max_bytes: self.max_bytes,
            allow_types: self.allow_types.clone(),
            deny_types: self.deny_types.clone(),
            hash_deny: self.hash_deny.iter().copied().collect(),
            dlp,
            hold_back: self.hold_back_bytes,
            on_scanner_error: self.on_scanner_error,
            rules,
        })
    }

    /// The settings the c2s sessions use.
    pub fn proxy_settings(&self) -> crate::transfer::ProxySettings {
        crate::transfer::ProxySettings {
            jid: self.proxy_jid.clone(),
            host: self.proxy_host.clone(),
            port: self.proxy_port,
            mediate: self.mediate,
            upload_url: self.upload_url.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileTransfer {
    proxy_jid: Option<Spanned<String>>,
    proxy_host: Option<Spanned<String>>,
    mediate: Option<bool>,
    max_bytes: Option<Spanned<i64>>,
    allow_types: Option<Vec<String>>,
    deny_types: Option<Vec<String>>,
    hash_deny: Option<Vec<Spanned<String>>>,
    dlp_keywords: Option<Vec<String>>,
    dlp_patterns: Option<Vec<Spanned<String>>>,
    dlp_card_numbers: Option<bool>,
    clamd: Option<Spanned<String>>,
    scan_timeout: Option<Spanned<String>>,
    on_scanner_error: Option<Spanned<String>>,
    hold_back_bytes: Option<Spanned<i64>>,
    pairing_timeout: Option<Spanned<String>>,
    upload_url: Option<Spanned<String>>,
}

fn duration(
    v: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
    loc: &Locator<'_>,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => loc.err(s.span(), key, "expected a duration such as \"30s\" or \"2m\""),
        },
    }
}

/// `upload_url`: required with an upload listener; `http(s)://HOST[:PORT]`. When every upload
/// listener speaks TLS it must be `https://`: a client sent to `http://` would speak plain HTTP
/// to a TLS port and every upload would fail. A plain `http-upload` listener may be announced
/// as `https://` (TLS terminated in front of it).
fn upload_url(
    raw: Option<&Spanned<String>>,
    listeners: &[ListenerConfig],
    section: std::ops::Range<usize>,
    loc: &Locator<'_>,
) -> Result<Option<String>, ConfigError> {
    let key = "file_transfer.upload_url";
    let has_upload = listeners.iter().any(|l| l.kind.is_upload());
    let tls_only = has_upload && listeners.iter().all(|l| l.kind != ListenerKind::HttpUpload);
    let u = match (raw, has_upload) {
        (None, false) => return Ok(None),
        (None, true) => return loc.err(section, key, "an http-upload listener needs upload_url (its public base URL)"),
        (Some(u), _) => u,
    };
    let s = u.get_ref().trim().trim_end_matches('/');
    let parsed = url::Url::parse(s).ok().filter(|p| {
        matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.path() == "/" && p.query().is_none()
    });
    let Some(parsed) = parsed else {
        return loc.err(u.span(), key, "expected http(s)://HOST[:PORT] (no path)");
    };
    if tls_only && parsed.scheme() != "https" {
        return loc.err(
            u.span(),
            key,
            "the upload listener is kind = \"http-upload-tls\": announce it as https://HOST[:PORT]",
        );
    }
    Ok(Some(s.to_owned()))
}

/// Validate `[file_transfer]` against the listeners.
pub(super) fn file_transfer(
    raw: Option<&RawFileTransfer>,
    listeners: &[ListenerConfig],
    loc: &Locator<'_>,
) -> Result<Option<FileTransferConfig>, ConfigError> {
    let socks = listeners.iter().find(|l| l.kind == ListenerKind::Socks5);
    let Some(r) = raw else {
        if let Some(l) = listeners.iter().find(|l| l.kind == ListenerKind::Socks5 || l.kind.is_upload()) {
            return Err(l.bind_origin.error(format!(
                "listener '{}' is a {} listener: add [file_transfer] with proxy_jid",
                l.name,
                l.kind.as_str()
            )));
        }
        return Ok(None);
    };
    let Some(jid) = &r.proxy_jid else {
        return loc.err(0..0, "file_transfer.proxy_jid", "required: the JID the gateway's proxy answers as");
    };
    let proxy_jid = jid.get_ref().trim().to_ascii_lowercase();
    if !crate::jid::is_domain(&proxy_jid) {
        return loc.err(jid.span(), "file_transfer.proxy_jid", "must be a domain, e.g. \"proxy.example.org\"");
    }
    let Some(socks) = socks else {
        return loc.err(
            jid.span(),
            "file_transfer",
            "needs a [[listener]] with kind = \"socks5\" (the relay clients are sent to)",
        );
    };
    let proxy_host = match &r.proxy_host {
        Some(h) => {
            let h = h.get_ref().trim().to_owned();
            if h.parse::<std::net::IpAddr>().is_err() && !crate::jid::is_domain(&h) {
                return loc.err(
                    r.proxy_host.as_ref().map_or(0..0, |s| s.span()),
                    "file_transfer.proxy_host",
                    "expected an IP address or host name",
                );
            }
            h
        }
        None if socks.bind.ip().is_unspecified() => {
            return loc.err(
                jid.span(),
                "file_transfer.proxy_host",
                format!("listener '{}' binds every address: set proxy_host to the address clients reach", socks.name),
            );
        }
        None => socks.bind.ip().to_string(),
    };
    let max_bytes = match &r.max_bytes {
        None => 100 * 1024 * 1024,
        Some(v) => match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => return loc.err(v.span(), "file_transfer.max_bytes", "must be a positive integer"),
        },
    };
    let hold_back_bytes = match &r.hold_back_bytes {
        None => 64 * 1024,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if (1..=super::raw::MAX_BYTES).contains(&n) => n,
            _ => {
                return loc.err(
                    v.span(),
                    "file_transfer.hold_back_bytes",
                    format!("must be from 1 to {}", super::raw::MAX_BYTES),
                )
            }
        },
    };
    let mut hash_deny = Vec::new();
    for h in r.hash_deny.iter().flatten() {
        match crate::transfer::inspect::parse_sha256(h.get_ref()) {
            Some(d) => hash_deny.push(d),
            None => return loc.err(h.span(), "file_transfer.hash_deny", "expected 64 hex digits (a SHA-256)"),
        }
    }
    let mut dlp_patterns = Vec::new();
    for p in r.dlp_patterns.iter().flatten() {
        if let Err(e) = Dlp::new(&[], std::slice::from_ref(p.get_ref()), false) {
            return loc.err(p.span(), "file_transfer.dlp_patterns", e.to_string());
        }
        dlp_patterns.push(p.get_ref().clone());
    }
    let clamd = match &r.clamd {
        None => None,
        Some(c) => {
            let s = c.get_ref().trim();
            if s.starts_with('/') {
                Some(ClamdAddress::Unix(PathBuf::from(s)))
            } else if let Ok(a) = s.parse::<SocketAddr>() {
                Some(ClamdAddress::Tcp(a))
            } else {
                return loc.err(
                    c.span(),
                    "file_transfer.clamd",
                    "expected a socket path (/run/clamav/clamd.ctl) or IP:PORT",
                );
            }
        }
    };
    let on_scanner_error = match r.on_scanner_error.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("block", _)) => OnScannerError::Block,
        Some(("pass", _)) => OnScannerError::Pass,
        Some((other, span)) => {
            return loc.err(
                span,
                "file_transfer.on_scanner_error",
                format!("unknown value '{other}' (expected \"block\" or \"pass\")"),
            )
        }
    };
    let upload_url = upload_url(r.upload_url.as_ref(), listeners, jid.span(), loc)?;
    let types = |v: &Option<Vec<String>>| v.iter().flatten().map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>();
    Ok(Some(FileTransferConfig {
        proxy_jid,
        proxy_host,
        proxy_port: socks.bind.port(),
        mediate: r.mediate.unwrap_or(true),
        max_bytes,
        allow_types: types(&r.allow_types),
        deny_types: types(&r.deny_types),
        hash_deny,
        dlp_keywords: r.dlp_keywords.clone().unwrap_or_default().into_iter().filter(|k| !k.is_empty()).collect(),
        dlp_patterns,
        dlp_card_numbers: r.dlp_card_numbers.unwrap_or(false),
        clamd,
        scan_timeout: duration(&r.scan_timeout, "file_transfer.scan_timeout", Duration::from_secs(60), loc)?,
        on_scanner_error,
        hold_back_bytes,
        upload_url,
        pairing_timeout: duration(&r.pairing_timeout, "file_transfer.pairing_timeout", Duration::from_secs(60), loc)?,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    const BASE: &str = r#"
[[tls.certificate]]
domains = ["example.test"]
cert = "c.pem"
key = "k.pem"

[[listener]]
name = "c2s"
kind = "c2s"
bind = "127.0.0.1:5222"
backend = "127.0.0.1:15222"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("/etc/stanzawall/gw.toml")).map_err(|e| e.to_string())
    }

    const RELAY: &str = "[[listener]]\nname = \"relay\"\nkind = \"socks5\"\nbind = \"192.0.2.10:7777\"\n";

    #[test]
    fn relay_and_checks_are_validated_with_their_lines() {
        let c = parse(&format!(
            "{RELAY}[file_transfer]\nproxy_jid = \"Proxy.Example.Test\"\ndlp_keywords = [\"CONFIDENTIAL\"]\nclamd = \"127.0.0.1:3310\"\n"
        ))
        .unwrap();
        let ft = c.file_transfer.unwrap();
        assert_eq!(
            (ft.proxy_jid.as_str(), ft.proxy_host.as_str(), ft.proxy_port),
            ("proxy.example.test", "192.0.2.10", 7777)
        );
        assert!(ft.mediate);
        assert!(ft.inspect_policy(Default::default()).unwrap().dlp.is_some());
        let e = parse(RELAY).unwrap_err();
        assert!(e.contains("add [file_transfer]"), "{e}");
        let e = parse("[file_transfer]\nproxy_jid = \"proxy.example.test\"\n").unwrap_err();
        assert!(e.contains("socks5"), "{e}");
        let e = parse(&format!("{RELAY}backend = \"127.0.0.1:1\"\n[file_transfer]\nproxy_jid = \"p.example.test\"\n"))
            .unwrap_err();
        assert!(e.contains("never dials"), "{e}");
        let e = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\ndlp_patterns = [\"(\"]\n"))
            .unwrap_err();
        assert!(e.contains("gw.toml:") && e.contains("dlp_patterns"), "{e}");
        let e = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\nhash_deny = [\"abc\"]\n"))
            .unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        let e =
            parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\non_scanner_error = \"ignore\"\n"))
                .unwrap_err();
        assert!(e.contains("block"), "{e}");
        let up = "[[listener]]\nname = \"up\"\nkind = \"http-upload\"\nbind = \"127.0.0.1:5444\"\nbackend = \"127.0.0.1:5280\"\n";
        let e = parse(&format!("{RELAY}{up}[file_transfer]\nproxy_jid = \"p.example.test\"\n")).unwrap_err();
        assert!(e.contains("upload_url"), "{e}");
        let e =
            parse(&format!("{RELAY}{up}[file_transfer]\nproxy_jid = \"p.example.test\"\nupload_url = \"ftp://x\"\n"))
                .unwrap_err();
        assert!(e.contains("upload_url"), "{e}");
        let ok = parse(&format!("{RELAY}{up}[file_transfer]\nproxy_jid = \"p.example.test\"\nupload_url = \"https://up.example.test:5444/\"\n")).unwrap();
        assert_eq!(ok.file_transfer.unwrap().upload_url.as_deref(), Some("https://up.example.test:5444"));
        // Over TLS: announced as https (http would send clients plaintext to a TLS port); the
        // service behind it over http or verified https, never STARTTLS.
        let tls = up.replace("\"http-upload\"", "\"http-upload-tls\"");
        let ft = "[file_transfer]\nproxy_jid = \"p.example.test\"\n";
        let e = parse(&format!("{RELAY}{tls}{ft}upload_url = \"http://up.example.test:5444\"\n")).unwrap_err();
        assert!(e.contains("upload_url") && e.contains("https://"), "{e}");
        let ok = parse(&format!("{RELAY}{tls}backend_tls = \"tls\"\nbackend_ca = \"ca.pem\"\n{ft}upload_url = \"https://up.example.test:5444\"\n"))
            .unwrap();
        let l = ok.listeners.iter().find(|l| l.name == "up").unwrap();
        assert_eq!(
            (l.kind, l.backend.tls),
            (crate::config::ListenerKind::HttpUploadTls, crate::config::BackendTls::Direct)
        );
        let e =
            parse(&format!("{RELAY}{tls}backend_tls = \"starttls\"\n{ft}upload_url = \"https://up.example.test\"\n"))
                .unwrap_err();
        assert!(e.contains("backend_tls") && e.contains("HTTP"), "{e}");
        // A plain listener behind a TLS terminator may be announced as https.
        parse(&format!("{RELAY}{up}{ft}upload_url = \"https://up.example.test\"\n")).unwrap();
    }

    #[test]
    fn file_rules_parse_judge_by_stage_and_check_quarantine() {
        use std::sync::Arc;

        use crate::policy::file::{Offer, Transport};
        use crate::transfer::{Detector, Inspection, ScanVerdict};
        let rules = "[[rule]]\nname = \"no-exe\"\nchain = \"file\"\nwhen = { name = \"*.exe\" }\naction = \"block\"\ntext = \"no executables\"\n\
            [[rule]]\nname = \"legal-may\"\nchain = \"file\"\nwhen = { from = \"legal@example.test\", dlp = true }\naction = \"pass\"\n\
            [[rule]]\nname = \"big-to-carol\"\nchain = \"file\"\nwhen = { to = \"carol@example.test\", size_over = 100 }\naction = \"block\"\n";
        let c = parse(&format!(
            "{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\ndlp_keywords = [\"SECRET\"]\n{rules}"
        ))
        .unwrap();
        let compiled = crate::policy::Policy::compile(&c.policy).unwrap();
        assert_eq!(compiled.file_rules().len(), 3);
        let p = Arc::new(c.file_transfer.unwrap().inspect_policy(compiled.file_rules().clone()).unwrap());
        let offer = |from: &str, to: &str, name: Option<&str>, size: Option<u64>| Offer {
            sender: crate::jid::parse(from),
            recipient: crate::jid::parse(to),
            transport: Some(Transport::S5b),
            name: name.map(str::to_owned),
            size,
            ..Offer::default()
        };
        // Before any byte: the name, and a declared size over a rule's limit.
        let r =
            Inspection::with_offer(p.clone(), offer("a@example.test/x", "b@example.test/y", Some("SETUP.EXE"), None));
        let r = r.unwrap_err();
        assert_eq!(
            (r.detector, r.rule.as_deref(), r.detail.as_str()),
            (Detector::Rule, Some("no-exe"), "no executables")
        );
        let r = Inspection::with_offer(p.clone(), offer("a@example.test/x", "carol@example.test/y", None, Some(500)));
        assert_eq!(r.unwrap_err().rule.as_deref(), Some("big-to-carol"));
        // A declared size under the limit proves nothing: the count decides.
        let mut ins =
            Inspection::with_offer(p.clone(), offer("a@example.test/x", "carol@example.test/y", None, Some(10)))
                .unwrap();
        assert_eq!(ins.push(&[b'x'; 150]).unwrap_err().rule.as_deref(), Some("big-to-carol"));
        // DLP blocks by the implicit [file_transfer] rule, except where a rule passes it first.
        let secret = b"the SECRET plan".repeat(10);
        let mut ins =
            Inspection::with_offer(p.clone(), offer("a@example.test/x", "b@example.test/y", None, None)).unwrap();
        ins.push(&secret).unwrap();
        assert_eq!(ins.finish().unwrap_err().detector, Detector::Dlp);
        let mut ins =
            Inspection::with_offer(p.clone(), offer("legal@example.test/x", "b@example.test/y", None, None)).unwrap();
        let mut out = ins.push(&secret).unwrap();
        ins.finish().unwrap();
        out.extend(ins.scanned(ScanVerdict::NotConfigured).unwrap());
        assert_eq!(out, secret);
        assert_eq!(ins.facts().rule.as_deref(), Some("legal-may"));
        // Quarantine is accepted on the transports whose files can be kept, refused (with the
        // line) where they cannot; file rules take no stanza conditions.
        let q = "[[rule]]\nname = \"q\"\nchain = \"file\"\nwhen = { malware = true, transport = [\"s5b\", \"upload\"] }\naction = \"quarantine\"\n";
        let c = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{q}")).unwrap();
        assert_eq!(c.policy.file_rules[0].action, crate::policy::file::FileActionConfig::Quarantine);
        // A quarantine decided on the offer: nothing is released, the input is read to its end
        // (counted, hashed), then refused with the quarantine detector.
        let q = "[[rule]]\nname = \"keep-bin\"\nchain = \"file\"\nwhen = { name = \"*.bin\", transport = \"upload\" }\naction = \"quarantine\"\n";
        let c = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{q}")).unwrap();
        let compiled = crate::policy::Policy::compile(&c.policy).unwrap();
        assert!(compiled.file_rules().quarantines());
        let qp = Arc::new(c.file_transfer.unwrap().inspect_policy(compiled.file_rules().clone()).unwrap());
        let up =
            |name: &str| Offer { transport: Some(Transport::Upload), name: Some(name.to_owned()), ..Offer::default() };
        let mut ins = Inspection::with_offer(qp.clone(), up("x.bin")).unwrap();
        assert!(ins.push(&[b'a'; 100_000]).unwrap().is_empty());
        assert!(ins.push(&[b'b'; 10]).unwrap().is_empty());
        let r = ins.finish().unwrap_err();
        assert_eq!((r.detector, r.rule.as_deref()), (Detector::Quarantine, Some("keep-bin")));
        assert_eq!(ins.facts().bytes, 100_010);
        assert_eq!(ins.facts().sha256.as_deref().map(str::len), Some(64));
        // Another name passes whole.
        let mut ins = Inspection::with_offer(qp, up("x.txt")).unwrap();
        let mut out = ins.push(b"hello").unwrap();
        ins.finish().unwrap();
        out.extend(ins.scanned(ScanVerdict::NotConfigured).unwrap());
        assert_eq!(out, b"hello");
        for when in ["{ malware = true }", "{ transport = [\"s5b\", \"ibb\"] }"] {
            let q = format!("[[rule]]\nname = \"q\"\nchain = \"file\"\nwhen = {when}\naction = \"quarantine\"\n");
            let e = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{q}")).unwrap_err();
            assert!(e.contains("ibb cannot be kept") && e.contains("gw.toml:"), "{e}");
        }
        let k = "[[rule]]\nname = \"k\"\nchain = \"file\"\nwhen = { kind = \"message\" }\naction = \"block\"\n";
        let e = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{k}")).unwrap_err();
        assert!(e.contains("unknown condition 'kind' on chain file"), "{e}");
        let m = "[[rule]]\nname = \"m\"\nchain = [\"file\", \"c2s-in\"]\naction = \"drop\"\n";
        let e = parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{m}")).unwrap_err();
        assert!(e.contains("rule of its own"), "{e}");
        let t = "[[rule]]\nname = \"t\"\nchain = \"file\"\nwhen = { transport = \"ftp\" }\naction = \"block\"\n";
        assert!(parse(&format!("{RELAY}[file_transfer]\nproxy_jid = \"p.example.test\"\n{t}"))
            .unwrap_err()
            .contains("s5b, ibb or upload"));
    }
}
