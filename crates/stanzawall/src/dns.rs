//! Where a remote XMPP server lives, and how sure we are: the s2s DNS layer.
//!
//! Owns turning a remote domain into an ordered list of connection targets for outbound s2s:
//! a static route first, else the `_xmpps-server._tcp` (direct TLS, XEP-0368 §2) and
//! `_xmpp-server._tcp` (STARTTLS, RFC 6120 §3.2.1) SRV records merged in RFC 2782 order, else
//! the domain's own A/AAAA on port 5269 (RFC 6120 §3.2.2). Every target carries the DNSSEC
//! status of the chain of answers that led to it, and — only when that chain is secure, as
//! RFC 7673 §3 requires — the TLSA records at `_PORT._tcp.TARGET`. A bogus answer is an error,
//! never a reason to fall back to the next step (RFC 4035 §5.5: bogus data must not be used).
//!
//! It must never read the core config: the daemon maps `[s2s]` into [`DnsSettings`]. Certificate
//! checks against what it returns live in [`dane`]; connecting to targets in [`connect`].

pub mod anchor;
pub mod cli;
pub mod connect;
pub mod dane;
pub mod srv;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use serde::Serialize;

#[allow(unused_imports)] // the s2s-out wiring (issue 11) uses these
pub use connect::{connect, tls_connect, ConnectedTarget};
#[allow(unused_imports)]
pub use dane::{verify_peer, DaneUsage, PeerCert};

/// Port of the fallback when a domain publishes no SRV records (RFC 6120 §3.2.2).
pub const DEFAULT_S2S_PORT: u16 = 5269;

/// How long one DNS question may take, retries included. A remote domain whose DNS does not
/// answer must not hold an outbound session (and the stanzas queued for it) forever.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most SRV targets used per domain: a hostile zone must not make us resolve thousands of names.
pub const MAX_TARGETS: usize = 16;

/// Settings of the s2s resolver, mapped by the daemon from `[s2s]` (plain values, no config types).
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// Upstream DNS server; `None` = the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Validate DNSSEC (`dnssec = "validate"`); off = every answer counts as unvalidated.
    pub dnssec: bool,
    /// File of DNSKEY records to trust; `None` = the IANA root keys compiled into hickory.
    pub trust_anchor: Option<PathBuf>,
    /// Static routes, consulted before any DNS.
    pub routes: Vec<StaticRoute>,
}

/// A remote domain reached at a fixed place (`[[s2s.route]]`): private federation and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// The XMPP domain this route is for (compared case-insensitively, no trailing dot).
    pub domain: String,
    /// `host:port` or `ip:port` (`[v6]:port`).
    pub connect: String,
    /// Direct TLS (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
}

/// What DNSSEC says about the chain of answers behind a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnssecStatus {
    /// Not validated: validation is off, or no DNS was used (static route to an address).
    Off,
    /// Validated as provably unsigned (or a part of the chain is): usable, but no DANE.
    Insecure,
    /// Every answer on the way validated up to the trust anchor.
    Secure,
}

impl DnssecStatus {
    fn of_proof(p: Proof) -> Self {
        match p {
            Proof::Secure => DnssecStatus::Secure,
            // Indeterminate never counts as secure: fail closed, no TLSA without a proven chain.
            _ => DnssecStatus::Insecure,
        }
    }

    /// The weaker of two statuses: a chain is only as secure as its weakest answer.
    pub fn and(self, other: DnssecStatus) -> DnssecStatus {
        self.min(other)
    }
}

/// How a target was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSource {
    /// `[[s2s.route]]`.
    Static,
    /// An `_xmpps-server` or `_xmpp-server` SRV record.
    Srv,
    /// No SRV: the domain itself on 5269.
    Fallback,
}

/// One TLSA record (RFC 6698 §2.1), kept raw; [`dane`] decides which are usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlsa {
    /// Certificate usage: 2 = DANE-TA, 3 = DANE-EE (0/1 are PKIX usages, unusable for s2s).
    pub usage: u8,
    /// 0 = full certificate, 1 = SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 = exact, 1 = SHA-256, 2 = SHA-512.
    pub matching: u8,
    /// Certificate association data.
    #[serde(serialize_with = "serialize_hex")]
    pub data: Vec<u8>,
}

fn serialize_hex<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(data))
}

/// Lower-case hex of bytes.
pub fn hex(data: &[u8]) -> String {
    use std::fmt::Write;
    data.iter().fold(String::with_capacity(data.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One place to connect to, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Host name (SRV target or the domain), or the address literal of a static route.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The host's addresses (AAAA first, then A, as answered).
    pub addrs: Vec<IpAddr>,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    /// Status of the chain SRV → A/AAAA (or A/AAAA alone) behind this target.
    pub dnssec: DnssecStatus,
    /// TLSA at `_PORT._tcp.HOST`: `Some` only when `dnssec` is secure and the TLSA answer is a
    /// secure, non-empty RRset (RFC 7673 §3); `None` means "use PKIX".
    pub tlsa: Option<Vec<Tlsa>>,
    /// How the target was found.
    pub source: TargetSource,
}

/// Where a domain's s2s service lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The XMPP domain resolved (lower case, no trailing dot).
    pub domain: String,
    /// Status of the SRV answers (the negative proof when there were none).
    pub srv_dnssec: DnssecStatus,
    /// Targets in the order to try.
    pub targets: Vec<Target>,
}

/// Why a domain could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The domain is not a valid DNS name.
    #[error("invalid domain {domain:?}: {reason}")]
    InvalidDomain {
        /// What was asked.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A static route's `connect` is not `host:port`.
    #[error("static route for {domain}: invalid connect {connect:?}: expected host:port or ip:port")]
    InvalidRoute {
        /// The route's domain.
        domain: String,
        /// The bad value.
        connect: String,
    },
    /// DNSSEC validation failed: the answer is forged, broken or stripped. Never fallen back from.
    #[error("DNSSEC validation failed (bogus) for {name} {rtype}: refusing to use this answer")]
    Bogus {
        /// The name asked.
        name: String,
        /// The record type asked.
        rtype: String,
    },
    /// The upstream did not answer in time.
    #[error("DNS lookup of {name} {rtype} timed out after {secs} s")]
    Timeout {
        /// The name asked.
        name: String,
        /// The record type asked.
        rtype: String,
        /// The limit.
        secs: u64,
    },
    /// The lookup failed (SERVFAIL, network error, …).
    #[error("DNS lookup of {name} {rtype} failed: {reason}")]
    Lookup {
        /// The name asked.
        name: String,
        /// The record type asked.
        rtype: String,
        /// The resolver's error.
        reason: String,
    },
    /// The domain says it offers no s2s service (SRV target "." for both services, RFC 2782).
    #[error("{domain} offers no XMPP server-to-server service (SRV target \".\")")]
    NoService {
        /// The domain.
        domain: String,
    },
    /// No target has an address.
    #[error("{domain}: no address for any target")]
    NoAddress {
        /// The domain.
        domain: String,
    },
    /// The trust anchor file cannot be used.
    #[error("trust anchor {path}: {reason}")]
    TrustAnchor {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The resolver could not be set up (e.g. unreadable resolv.conf).
    #[error("resolver setup: {0}")]
    Setup(String),
    /// Every target refused or timed out.
    #[error("{domain}: cannot connect to any target: {reason}")]
    Connect {
        /// The domain.
        domain: String,
        /// Each target's failure.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {domain}: {reason}")]
    Tls {
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// DNSSEC-secure TLSA records exist and the peer's certificate matches none: refuse (RFC 7671 §5).
    #[error("TLS with {domain}: certificate matches none of the DNSSEC-secure TLSA records (DANE), refused")]
    DaneMismatch {
        /// The domain.
        domain: String,
    },
}

/// Resolves XMPP server domains with SRV, A/AAAA, TLSA and DNSSEC.
#[derive(Clone)]
pub struct S2sResolver {
    resolver: Arc<TokioResolver>,
    dnssec: bool,
    routes: Vec<StaticRoute>,
    timeout: Duration,
}

impl std::fmt::Debug for S2sResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2sResolver")
            .field("dnssec", &self.dnssec)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl S2sResolver {
    /// A resolver for `settings`. Loads the trust anchor now, so a bad file fails at (re)load.
    pub fn new(settings: &DnsSettings) -> Result<Self, DnsError> {
        for r in &settings.routes {
            if split_host_port(&r.connect).is_none() {
                return Err(DnsError::InvalidRoute { domain: r.domain.clone(), connect: r.connect.clone() });
            }
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = match settings.resolver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| DnsError::Setup(e.to_string()))?,
        };
        {
            let opts = builder.options_mut();
            opts.timeout = Duration::from_secs(3);
            opts.attempts = 2;
            // Names are made absolute below; never let a search list or /etc/hosts (which has no
            // DNSSEC status) decide where a remote domain's server is.
            opts.ndots = 0;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.validate = settings.dnssec;
            // DNSSEC needs EDNS with room for signatures.
            opts.edns_payload_len = 1232;
        }
        if settings.dnssec {
            if let Some(path) = &settings.trust_anchor {
                builder = builder.with_trust_anchor(Arc::new(anchor::load(path)?));
            }
        }
        let resolver = builder.build().map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(S2sResolver {
            resolver: Arc::new(resolver),
            dnssec: settings.dnssec,
            routes: settings.routes.clone(),
            timeout: LOOKUP_TIMEOUT,
        })
    }

    /// Where `domain`'s s2s service is: static route, else SRV (both services), else A/AAAA.
    pub async fn resolve(&self, domain: &str) -> Result<Resolution, DnsError> {
        let domain = normalize_domain(domain)?;
        if let Some(route) = self.routes.iter().find(|r| r.domain.trim_end_matches('.').eq_ignore_ascii_case(&domain)) {
            return self.resolve_static(&domain, route).await;
        }
        let (xmpps, s1) = self.srv(&format!("_xmpps-server._tcp.{domain}.")).await?;
        let (xmpp, s2) = self.srv(&format!("_xmpp-server._tcp.{domain}.")).await?;
        let srv_dnssec = s1.and(s2);
        let (candidates, source) = match srv::merge(&domain, xmpps, xmpp, &mut random_u32)? {
            Some(c) => (c, TargetSource::Srv),
            None => (
                vec![srv::Candidate { host: domain.clone(), port: DEFAULT_S2S_PORT, direct_tls: false }],
                TargetSource::Fallback,
            ),
        };
        let mut targets = Vec::new();
        for c in candidates.into_iter().take(MAX_TARGETS) {
            let (addrs, addr_status) = self.addresses(&c.host).await?;
            let dnssec = if source == TargetSource::Srv { srv_dnssec.and(addr_status) } else { addr_status };
            let tlsa = if dnssec == DnssecStatus::Secure && !addrs.is_empty() {
                self.tlsa(c.port, &c.host).await?
            } else {
                None
            };
            targets.push(Target { host: c.host, port: c.port, addrs, direct_tls: c.direct_tls, dnssec, tlsa, source });
        }
        if targets.iter().all(|t| t.addrs.is_empty()) {
            return Err(DnsError::NoAddress { domain });
        }
        Ok(Resolution { domain, srv_dnssec, targets })
    }

    async fn resolve_static(&self, domain: &str, route: &StaticRoute) -> Result<Resolution, DnsError> {
        let Some((host, port)) = split_host_port(&route.connect) else {
            return Err(DnsError::InvalidRoute { domain: domain.to_owned(), connect: route.connect.clone() });
        };
        let (addrs, dnssec) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![ip], DnssecStatus::Off),
            Err(_) => {
                let host = normalize_domain(&host)?;
                self.addresses(&host).await?
            }
        };
        if addrs.is_empty() {
            return Err(DnsError::NoAddress { domain: domain.to_owned() });
        }
        // A route is the operator's word: no TLSA is looked up for it (its host may be an address).
        Ok(Resolution {
            domain: domain.to_owned(),
            srv_dnssec: DnssecStatus::Off,
            targets: vec![Target {
                host,
                port,
                addrs,
                direct_tls: route.direct_tls,
                dnssec,
                tlsa: None,
                source: TargetSource::Static,
            }],
        })
    }

    /// One question, bounded in time; `Ok(None)` = no such records, with the status of that proof.
    async fn ask(&self, name: &str, rtype: RecordType) -> Result<(Vec<RData>, DnssecStatus), DnsError> {
        let off = |s: DnssecStatus| if self.dnssec { s } else { DnssecStatus::Off };
        let answer = tokio::time::timeout(self.timeout, self.resolver.lookup(name, rtype)).await;
        let lookup = match answer {
            Err(_) => {
                return Err(DnsError::Timeout {
                    name: name.to_owned(),
                    rtype: rtype.to_string(),
                    secs: self.timeout.as_secs(),
                })
            }
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return classify_error(name, rtype, e).map(|(v, s)| (v, off(s))),
        };
        let mut status = DnssecStatus::Secure;
        let mut data = Vec::new();
        for r in lookup.answers() {
            if r.record_type() != rtype {
                continue;
            }
            if self.dnssec && r.proof == Proof::Bogus {
                return Err(DnsError::Bogus { name: name.to_owned(), rtype: rtype.to_string() });
            }
            status = status.and(DnssecStatus::of_proof(r.proof));
            data.push(r.data.clone());
        }
        if data.is_empty() {
            // Only a CNAME chain without the wanted type (or RRSIGs alone): treat as none.
            status = DnssecStatus::Insecure;
        }
        Ok((data, off(status)))
    }

    async fn srv(&self, name: &str) -> Result<(Vec<srv::SrvRecord>, DnssecStatus), DnsError> {
        let (data, status) = self.ask(name, RecordType::SRV).await?;
        let records = data
            .into_iter()
            .filter_map(|d| match d {
                RData::SRV(s) => Some(srv::SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
                }),
                _ => None,
            })
            .collect();
        Ok((records, status))
    }

    /// AAAA and A of `host`; the status is the weaker of the two answers that had records.
    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, DnssecStatus), DnsError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let mut addrs = Vec::new();
        let mut status: Option<DnssecStatus> = None;
        for rtype in [RecordType::AAAA, RecordType::A] {
            let (data, s) = self.ask(&fqdn, rtype).await?;
            if data.is_empty() {
                continue;
            }
            status = Some(status.map_or(s, |old| old.and(s)));
            addrs.extend(data.into_iter().filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        let off = if self.dnssec { DnssecStatus::Insecure } else { DnssecStatus::Off };
        Ok((addrs, status.unwrap_or(off)))
    }

    /// TLSA at `_PORT._tcp.HOST`, only used when that answer is itself secure (RFC 7673 §3).
    async fn tlsa(&self, port: u16, host: &str) -> Result<Option<Vec<Tlsa>>, DnsError> {
        let (data, status) = self.ask(&format!("_{port}._tcp.{host}."), RecordType::TLSA).await?;
        if status != DnssecStatus::Secure {
            return Ok(None);
        }
        let records: Vec<Tlsa> = data
            .into_iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data,
                }),
                _ => None,
            })
            .collect();
        Ok(if records.is_empty() { None } else { Some(records) })
    }
}

/// Maps a resolver error: "no records" (with its proof) is an empty answer, bogus is an error.
fn classify_error(name: &str, rtype: RecordType, e: NetError) -> Result<(Vec<RData>, DnssecStatus), DnsError> {
    match e {
        NetError::Dns(HickoryDnsError::DnssecBogus) => {
            Err(DnsError::Bogus { name: name.to_owned(), rtype: rtype.to_string() })
        }
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) => match proof {
            Proof::Bogus => Err(DnsError::Bogus { name: name.to_owned(), rtype: rtype.to_string() }),
            p => Ok((Vec::new(), DnssecStatus::of_proof(p))),
        },
        // A validated negative answer whose NSEC proof was secure comes back as plain "no
        // records" (the validator only wraps non-secure proofs in `Nsec`).
        NetError::Dns(HickoryDnsError::NoRecordsFound(_)) => Ok((Vec::new(), DnssecStatus::Secure)),
        other => Err(DnsError::Lookup { name: name.to_owned(), rtype: rtype.to_string(), reason: other.to_string() }),
    }
}

/// Lower case, no trailing dot, a syntactically valid DNS name (RFC 1035 §2.3.4 lengths).
pub fn normalize_domain(domain: &str) -> Result<String, DnsError> {
    let bad = |reason: &str| DnsError::InvalidDomain { domain: domain.to_owned(), reason: reason.to_owned() };
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err(bad("empty"));
    }
    if d.len() > 253 {
        return Err(bad("longer than 253 octets"));
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("empty label or label longer than 63 octets"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad("only letters, digits, '-' and '_' (use the A-label form of IDNs)"));
        }
    }
    Ok(d)
}

/// `host:port`, `ip:port` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host.to_owned(), port))
}

/// Randomness for RFC 2782 weighted selection; a failed read degrades to "first by weight".
fn random_u32(bound: u32) -> u32 {
    let mut b = [0u8; 4];
    if bound == 0 || getrandom::fill(&mut b).is_err() {
        return 0;
    }
    u32::from_le_bytes(b) % bound
}
