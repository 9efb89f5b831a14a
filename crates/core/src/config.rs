//! The configuration file: raw TOML structs → [`Config::parse`] → a validated [`Config`].
//!
//! Owns the file's schema and every check that can be made without I/O. Errors name the file, the
//! line and the dotted key (`listener[1].bind`), as `FILE:LINE: key: what is wrong`. Unknown keys
//! are errors. Relative paths are resolved against the config file's directory. Reading
//! certificate files is the daemon's job; it reports problems with the [`Origin`] kept here, so
//! they too point at the line that named the file.

mod contacts;
mod locate;
mod policy;
mod quarantine;
mod raw;
mod s2s;
mod store;
#[cfg(test)]
mod tests;
mod transfer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::origin::{ConfigError, Origin};
use crate::policy::spec::PolicyConfig;
pub use crate::policy::spec::{AuthLevel, S2sDomainsConfig};
use crate::xml::XmlLimits;
pub use contacts::ContactsConfig;
pub use quarantine::QuarantineConfig;
pub use s2s::{S2sConfig, S2sRoute};
pub use store::{DrainConfig, OnError, StoreBackend, StoreConfig};
pub use transfer::{ClamdAddress, FileTransferConfig};

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Client-to-server with STARTTLS (RFC 6120 §5).
    C2s,
    /// Client-to-server with direct TLS (XEP-0368), ALPN `xmpp-client`.
    C2sTls,
    /// Server-to-server inbound with STARTTLS (RFC 6120 §5), relayed to our server's s2s port.
    S2s,
    /// Server-to-server inbound with direct TLS (XEP-0368), ALPN `xmpp-server`.
    S2sTls,
    /// Our server's outbound s2s, relayed to the remote domain the stream header names.
    S2sOut,
    /// XMPP over WebSocket (RFC 7395) over TLS, in front of the server's c2s port.
    WebSocket,
    /// XMPP over BOSH (XEP-0124/0206) over TLS, in front of the server's c2s port.
    Bosh,
    /// The gateway's own XEP-0065 bytestream proxy (SOCKS5); it never dials anywhere.
    Socks5,
    /// An inspecting reverse proxy in front of the server's XEP-0363 upload service, plain
    /// HTTP (TLS terminated in front of it, or a trusted network).
    HttpUpload,
    /// The same proxy over TLS with the `[[tls.certificate]]`s (HTTPS, ALPN `http/1.1`).
    HttpUploadTls,
}

impl ListenerKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::C2s => "c2s",
            ListenerKind::C2sTls => "c2s-tls",
            ListenerKind::S2s => "s2s",
            ListenerKind::S2sTls => "s2s-tls",
            ListenerKind::S2sOut => "s2s-out",
            ListenerKind::WebSocket => "websocket",
            ListenerKind::Bosh => "bosh",
            ListenerKind::Socks5 => "socks5",
            ListenerKind::HttpUpload => "http-upload",
            ListenerKind::HttpUploadTls => "http-upload-tls",
        }
    }

    /// The XEP-0363 upload proxy, over plain HTTP or TLS.
    pub fn is_upload(self) -> bool {
        matches!(self, ListenerKind::HttpUpload | ListenerKind::HttpUploadTls)
    }

    /// A federation listener.
    pub fn is_s2s(self) -> bool {
        matches!(self, ListenerKind::S2s | ListenerKind::S2sTls | ListenerKind::S2sOut)
    }
}

/// One `[[tls.certificate]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// Names served: exact domains and `*.domain` wildcards, lowercase.
    pub domains: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// Where `cert` was configured.
    pub cert_origin: Origin,
    /// PEM private key.
    pub key: PathBuf,
    /// Where `key` was configured.
    pub key_origin: Origin,
}

/// How the backend leg is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendTls {
    /// Plaintext (loopback or a trusted network).
    #[default]
    Off,
    /// Plaintext connect, then STARTTLS negotiated by the session.
    StartTls,
    /// TLS from the first byte (the daemon wraps the socket before any stream byte).
    Direct,
}

/// How the gateway connects to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `host:port`.
    pub address: String,
    /// Plaintext, STARTTLS or direct TLS.
    pub tls: BackendTls,
    /// CA bundle to verify the backend's certificate; `None` = the system roots.
    pub ca: Option<PathBuf>,
    /// Name to verify the backend's certificate against; `None` = the client's domain (an
    /// upload listener: the host of `address`).
    pub server_name: Option<String>,
    /// Send a PROXY protocol v2 header first.
    pub proxy_protocol: bool,
    /// Where the backend was configured (for connect errors).
    pub origin: Origin,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// Protocol.
    pub kind: ListenerKind,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Where `bind` was configured (for bind errors).
    pub bind_origin: Origin,
    /// The XMPP server behind this listener.
    pub backend: BackendConfig,
    /// `kind = "websocket"` and `"bosh"`: path, origins, caps (defaults elsewhere).
    pub web: WebOptions,
    /// `accept_proxy = "v2"`: every connection starts with a PROXY v2 header from one of these
    /// load balancers, and the client address in it is the connection's source; `None`: no
    /// header is read.
    pub trusted_proxies: Option<Vec<crate::net::Cidr>>,
}

/// Which browser origins may open WebSocket sessions (`allowed_origins`). A handshake without
/// an `Origin` header comes from a non-browser client, which cross-site WebSocket hijacking
/// (RFC 6455 §10.2) cannot use, and is not checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origins {
    /// Unset: pages served over https from the host name the client connected to (any port).
    #[default]
    SameHost,
    /// `["*"]`: any origin.
    Any,
    /// Exactly these origins (`scheme://host[:port]`, compared case-insensitively).
    List(Vec<String>),
}

/// The options of a `websocket` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOptions {
    /// The request path of the WebSocket endpoint.
    pub path: String,
    /// Browser origins allowed.
    pub allowed_origins: Origins,
    /// Largest frame payload from a client; `None`: `limits.stanza_bytes`.
    pub max_frame_bytes: Option<usize>,
    /// Largest message (all its fragments) from a client; `None`: `limits.stanza_bytes`.
    pub max_message_bytes: Option<usize>,
    /// The URL XEP-0156 host-meta advertises; `None`: `wss://` (BOSH: `https://`) + the
    /// request's Host + path.
    pub public_url: Option<String>,
    /// BOSH: largest request body after authentication; `None`: `limits.stanza_bytes` plus
    /// room for the `<body/>` wrapper.
    pub max_request_bytes: Option<usize>,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            path: "/xmpp-websocket".to_owned(),
            allowed_origins: Origins::SameHost,
            max_frame_bytes: None,
            max_message_bytes: None,
            public_url: None,
            max_request_bytes: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza after authentication.
    pub stanza_bytes: usize,
    /// Largest stanza (and stream header) before authentication.
    pub preauth_stanza_bytes: usize,
    /// Largest stanza accepted from a backend.
    pub backend_stanza_bytes: usize,
    /// Deepest nesting.
    pub depth: usize,
    /// Most attributes per element.
    pub attributes: usize,
}

impl Limits {
    /// Parser limits after authentication.
    pub fn xml(&self) -> XmlLimits {
        XmlLimits { stanza_bytes: self.stanza_bytes, depth: self.depth, attributes: self.attributes }
    }

    /// Parser limits before authentication.
    pub fn xml_preauth(&self) -> XmlLimits {
        XmlLimits { stanza_bytes: self.preauth_stanza_bytes, ..self.xml() }
    }

    /// Parser limits for the backend leg: deeper than the client's, because the server wraps
    /// what clients sent (carbons, MAM results and offline delivery add three levels or more).
    pub fn xml_backend(&self) -> XmlLimits {
        XmlLimits { stanza_bytes: self.backend_stanza_bytes, depth: self.depth + 16, ..self.xml() }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stanza_bytes: 262_144,
            preauth_stanza_bytes: 10_000,
            // Servers re-escape what clients sent (`'` becomes `&apos;`, six bytes), so the
            // backend leg gets a multiple of the client cap.
            backend_stanza_bytes: 2_097_152,
            depth: 32,
            attributes: 64,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where state that survives restarts is kept (bans); `state_dir`, default `state/` beside
    /// the config file.
    pub state_dir: PathBuf,
    /// Certificates, in file order (the first is the default when nothing matches).
    pub certificates: Vec<CertificateConfig>,
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Parser limits.
    pub limits: Limits,
    /// `[network]`: admission control and timeouts.
    pub network: NetworkConfig,
    /// `[nftables]`: the generated packet-filter ruleset and live ban sync.
    pub nftables: NftablesConfig,
    /// Lists, limiters, rules, chain defaults and the audit log (compiled by
    /// [`crate::policy::Policy::compile`]).
    pub policy: PolicyConfig,
    /// `[admin]`: the HTTP endpoint for metrics.
    pub admin: AdminConfig,
    /// `[s2s]`: federation (present with s2s listeners).
    pub s2s: Option<S2sConfig>,
    /// `[store]`: where shared state (rate buckets, bans) is kept.
    pub store: StoreConfig,
    /// `[drain]`: leaving a pool of gateways (grace period, the peer named to clients).
    pub drain: DrainConfig,
    /// `[file_transfer]`: the bytestream proxy and the file checks (with a `socks5` listener).
    pub file_transfer: Option<FileTransferConfig>,
    /// `[contacts]`: the gateway's privileged component connection (rosters, RTBLs, reports).
    pub contacts: Option<ContactsConfig>,
    /// `[quarantine]`: where held stanzas are kept and how many.
    pub quarantine: QuarantineConfig,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin listener (API, dashboard, `GET /metrics`) is served; `None`: none.
    pub bind: Option<SocketAddr>,
    /// The file of hashed API tokens (`stanzawall admin-token` writes it); `None`: the API
    /// answers 401 to everything (only the public endpoints work).
    pub tokens: Option<PathBuf>,
    /// Where `tokens` was configured (errors reading the file point here).
    pub tokens_origin: Option<Origin>,
    /// `GET /metrics` answers without a token (`metrics_public`, default true: Prometheus
    /// scrapers usually carry no credentials).
    pub metrics_public: bool,
    /// TLS on the admin listener (`tls_cert`/`tls_key`, or `tls_certificate`); `None`: plain HTTP.
    pub tls: Option<AdminTls>,
    /// Client certificates that authenticate without a token (`client_ca`, `[admin.client_roles]`).
    pub client_auth: Option<AdminClientAuth>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: None,
            tokens: None,
            tokens_origin: None,
            metrics_public: true,
            tls: None,
            client_auth: None,
        }
    }
}

/// Where the admin listener's server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTls {
    /// `tls_cert` and `tls_key`: PEM files of its own.
    Files {
        /// PEM certificate chain.
        cert: PathBuf,
        /// Where `tls_cert` was configured.
        cert_origin: Origin,
        /// PEM private key.
        key: PathBuf,
        /// Where `tls_key` was configured.
        key_origin: Origin,
    },
    /// `tls_certificate = "DOMAIN"`: the `[[tls.certificate]]` that serves DOMAIN.
    Reuse {
        /// The domain (lowercase; a configured certificate covers it).
        domain: String,
        /// Where it was configured.
        origin: Origin,
    },
}

/// What an admin credential may do (the same two roles as API tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// See everything, change nothing.
    Read,
    /// Also act (kick, ban, edit lists, reload).
    Admin,
}

/// mTLS on the admin listener: certificates issued by `ca` authenticate by subject common name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClientAuth {
    /// PEM file of the CA certificate(s) that issue admin client certificates.
    pub ca: PathBuf,
    /// Where `client_ca` was configured.
    pub ca_origin: Origin,
    /// Subject common name → role (`"CN=ops" = "admin"`); other names get no role.
    pub roles: Vec<(String, AdminRole)>,
}

/// How the config reads the other files it names (includes and list files). The core does no
/// I/O itself: the daemon passes the file system, tests and fuzzers pass what they like.
pub trait Files {
    /// The text of a file.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The entries of a directory (for `include = ["policy.d/*.toml"]`).
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
}

/// No other files: a config that names one gets an error saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFiles;

impl Files for NoFiles {
    fn read(&self, _: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "other files cannot be read here"))
    }

    fn list_dir(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "directories cannot be listed here"))
    }
}

/// `[nftables]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftablesConfig {
    /// Add bans to (and lift them from) the kernel's ban sets as they happen.
    pub sync: bool,
    /// The `inet` table the ruleset defines and sync writes to.
    pub table: String,
    /// The `nft` binary sync runs (with fixed arguments, JSON on stdin).
    pub nft: PathBuf,
    /// TCP ports opened besides the listeners' (e.g. 22 for SSH): the generated input chain
    /// drops everything else.
    pub extra_tcp_ports: Vec<u16>,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            sync: false,
            table: "stanzawall".to_owned(),
            nft: PathBuf::from("/usr/sbin/nft"),
            extra_tcp_ports: Vec::new(),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Allow/deny lists, connection caps and rates, checked at accept.
    pub guard: crate::guard::GuardConfig,
    /// From accept to SASL success (TLS, stream open and authentication included).
    pub handshake_timeout: std::time::Duration,
    /// No traffic either way after authentication (whitespace keepalives count).
    pub idle_timeout: std::time::Duration,
    /// Read shaping of the client leg after authentication (`None`: not shaped).
    pub bandwidth_per_connection: Option<crate::limit::Bandwidth>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            guard: crate::guard::GuardConfig::default(),
            handshake_timeout: std::time::Duration::from_secs(30),
            // Longer than Prosody's 840 s read timeout, after which it probes silent clients with
            // a whitespace keepalive (which counts as traffic here).
            idle_timeout: std::time::Duration::from_secs(20 * 60),
            bandwidth_per_connection: None,
        }
    }
}

impl Config {
    /// Parse and validate the text of the config file at `path` (used for messages and for
    /// resolving relative paths; not read here).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        raw::parse(text, path, &NoFiles)
    }

    /// Parse and validate, reading includes and list files through `files`.
    pub fn parse_with(text: &str, path: &Path, files: &dyn Files) -> Result<Config, ConfigError> {
        raw::parse(text, path, files)
    }

    /// Parse and validate a config for passive inspection (`stanzawall inspect`): listeners
    /// and certificates may be absent, everything present is validated as for a gateway.
    pub fn parse_for_inspection(text: &str, path: &Path, files: &dyn Files) -> Result<Config, ConfigError> {
        raw::parse_for(text, path, files, false)
    }

    /// Every file besides the main one that this config was built from (list files), for
    /// change detection.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let lists = self.policy.lists.values().filter_map(|l| l.file.clone());
        // A token added with `stanzawall admin-token` works without a signal.
        lists.chain(self.admin.tokens.clone()).collect()
    }

    /// Human-readable differences from `old`, for the reload log.
    pub fn diff(&self, old: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.contacts != old.contacts {
            // The component connection is made once, at start (README "Anti-spam").
            out.push("[contacts] changed (takes effect after a restart)".to_owned());
        }
        for l in &self.listeners {
            match old.listeners.iter().find(|o| o.name == l.name) {
                None => out.push(format!("listener {} added", l.name)),
                Some(o) if o != l => out.push(format!("listener {} changed", l.name)),
                Some(_) => {}
            }
        }
        for o in &old.listeners {
            if !self.listeners.iter().any(|l| l.name == o.name) {
                out.push(format!("listener {} removed", o.name));
            }
        }
        if self.certificates != old.certificates {
            out.push("certificates changed".to_owned());
        }
        if self.limits != old.limits {
            out.push("limits changed".to_owned());
        }
        if self.network != old.network {
            out.push("network changed".to_owned());
        }
        if self.nftables != old.nftables {
            out.push("nftables changed".to_owned());
        }
        if self.admin != old.admin {
            out.push("admin changed".to_owned());
        }
        if self.drain != old.drain {
            out.push("drain changed".to_owned());
        }
        let (new, old) = (&self.policy, &old.policy);
        for (name, l) in &new.lists {
            match old.lists.get(name) {
                None => out.push(format!("list {name} added ({} entries)", l.entries.len())),
                Some(o) if o.entries.iter().map(|e| &e.value).ne(l.entries.iter().map(|e| &e.value)) => {
                    out.push(format!("list {name} changed ({} → {} entries)", o.entries.len(), l.entries.len()))
                }
                Some(_) => {}
            }
        }
        for name in old.lists.keys().filter(|n| !new.lists.contains_key(*n)) {
            out.push(format!("list {name} removed"));
        }
        let rules = |p: &PolicyConfig| {
            p.rules
                .iter()
                .map(|r| (r.name.clone(), r.chains.clone(), r.when.clone(), r.action.clone(), r.log_only))
                .collect::<Vec<_>>()
        };
        if rules(new) != rules(old) || new.rates != old.rates || new.defaults != old.defaults {
            out.push(format!("rules changed ({} → {} rules)", old.rules.len(), new.rules.len()));
        }
        if new.audit != old.audit {
            out.push("audit changed".to_owned());
        }
        out
    }
}
