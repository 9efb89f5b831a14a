//! The policy as configured: validated names and shapes, not yet compiled into matchers.
//!
//! [`crate::config`] builds a [`PolicyConfig`] from the TOML (main file and includes) and
//! [`super::Policy::compile`] turns it into matchers. Every value keeps its [`Origin`] so that
//! compile errors (a bad regex, a malformed JID pattern, an unknown list) name the file and line.
//! Comparing two `PolicyConfig`s is how a reload tells whether the policy changed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::limit::Rate;
pub use crate::origin::Located;
use crate::origin::Origin;
use crate::stanza::{Kind, StanzaCondition};
use crate::stream::Condition;

/// The chains a rule can sit in (README "Policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Client → server: what a local user sends.
    C2sIn,
    /// Server → client: what a local user receives.
    C2sOut,
    /// Remote server → our server: what federation delivers (inbound s2s).
    S2sIn,
    /// Our server → remote server: what federation carries out (outbound s2s).
    S2sOut,
}

impl Chain {
    /// Every chain, in index order.
    pub const ALL: [Chain; 4] = [Chain::C2sIn, Chain::C2sOut, Chain::S2sIn, Chain::S2sOut];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::C2sIn => "c2s-in",
            Chain::C2sOut => "c2s-out",
            Chain::S2sIn => "s2s-in",
            Chain::S2sOut => "s2s-out",
        }
    }

    /// Parse the config spelling.
    pub fn from_name(name: &str) -> Option<Chain> {
        Chain::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Index into per-chain arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `[list.NAME]`: entries inline or from a file (one a line, `#` comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListConfig {
    /// The file the entries came from (watched for changes), if any.
    pub file: Option<PathBuf>,
    /// The entries, each with the line it was written on (in the config or the list file).
    pub entries: Vec<Located<String>>,
    /// Where the list was declared.
    pub origin: Origin,
    /// `rtbl = { service, node }`: the entries come from this pubsub node, kept in `file` (in
    /// the state directory) between restarts.
    pub rtbl: Option<RtblSource>,
}

/// The pubsub node an RTBL list follows (XEP-0060).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RtblSource {
    /// The pubsub service's JID.
    pub service: String,
    /// The node.
    pub node: String,
}

/// What a limiter counts by (`key = "from.bare"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The sender's bare JID.
    FromBare,
    /// The sender's full JID.
    FromFull,
    /// The sender's domain.
    FromDomain,
    /// The recipient's bare JID.
    ToBare,
    /// The recipient's domain.
    ToDomain,
    /// The client connection's source address.
    SourceIp,
    /// The authenticated user of the session (bare JID).
    User,
}

impl RateKey {
    /// Every key, for error messages.
    pub const ALL: [RateKey; 7] = [
        RateKey::FromBare,
        RateKey::FromFull,
        RateKey::FromDomain,
        RateKey::ToBare,
        RateKey::ToDomain,
        RateKey::SourceIp,
        RateKey::User,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKey::FromBare => "from.bare",
            RateKey::FromFull => "from.full",
            RateKey::FromDomain => "from.domain",
            RateKey::ToBare => "to.bare",
            RateKey::ToDomain => "to.domain",
            RateKey::SourceIp => "source.ip",
            RateKey::User => "user",
        }
    }
}

/// `[rate.NAME]`: a limiter, one bucket per key value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateConfig {
    /// Sustained rate and burst.
    pub rate: Rate,
    /// What the buckets are keyed by.
    pub key: RateKey,
    /// Buckets one source of keys (a session's user) may create per chain
    /// (`max_keys_per_source`, default [`super::rate::DEFAULT_MAX_KEYS_PER_SOURCE`]).
    pub max_keys_per_source: usize,
    /// Where it was declared.
    pub origin: Origin,
}

/// One condition of a rule's `when` (all of a rule's conditions must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionConfig {
    /// `kind`: message, presence, iq.
    Kind(Vec<Kind>),
    /// `type`: the stanza's type attribute (absent: `normal` for messages, `available` for presence).
    Type(Vec<String>),
    /// `from`: JID patterns.
    From(Vec<Located<String>>),
    /// `to`: JID patterns.
    To(Vec<Located<String>>),
    /// `user`: patterns for the session's authenticated JID.
    User(Vec<Located<String>>),
    /// `from_in`: a list of JID patterns.
    FromIn(Located<String>),
    /// `to_in`.
    ToIn(Located<String>),
    /// `from_domain_in`: a list of domains.
    FromDomainIn(Located<String>),
    /// `to_domain_in`.
    ToDomainIn(Located<String>),
    /// `source_ip`: CIDRs or `list:NAME`.
    SourceIp(Vec<Located<String>>),
    /// `payload`: namespaces of child elements.
    Payload(Vec<String>),
    /// `path`: element paths below the stanza, `{ns}name/{ns}name`.
    Path(Vec<Located<String>>),
    /// `body_contains`: keywords or `list:NAME`, matched in the folded text.
    BodyContains(Vec<Located<String>>),
    /// `body_regex`: regular expressions over the folded text (or the raw one, `regex_raw`).
    BodyRegex(Vec<Located<String>>),
    /// `url_in`: a list of URLs and hosts.
    UrlIn(Located<String>),
    /// `rate`: a named limiter; holds when the stanza is over the limit.
    Rate(Located<String>),
    /// `stranger = true|false`: the sender is (not) a contact of the recipient, whose roster
    /// is known ([`crate::antispam::contacts`]).
    Stranger(bool),
    /// `stranger_domain = true|false`: the same, and the recipient has no contact at the
    /// sender's domain either.
    StrangerDomain(bool),
    /// `roster_known = true|false`: the recipient's roster is (not) known to the gateway.
    RosterKnown(bool),
    /// `fanout = { recipients, window, key }`: the sender addressed more distinct recipients.
    Fanout(FanoutConfig),
    /// `wave = { senders, recipients, window, similarity, min_length }`: the text belongs to a
    /// wave of near-identical texts.
    Wave(WaveConfig),
    /// `reported = { reporters, window }`: that many distinct users reported the sender
    /// (XEP-0377).
    Reported(ReportedConfig),
    /// `from_sha256_in`: a list of hex SHA-256 digests of bare JIDs (the RTBL
    /// `spam_source_jids_sha256` format); holds when the sender's is listed.
    FromSha256In(Located<String>),
    /// `any = [ {...}, {...} ]`: at least one group holds.
    Any(Vec<Vec<ConditionConfig>>),
    /// `not = {...}`: the group does not hold.
    Not(Vec<ConditionConfig>),
}

/// `fanout = { recipients = 20, window = "10m", key = "from.bare" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutConfig {
    /// Distinct recipients allowed within the window; the next new one holds.
    pub recipients: usize,
    /// The sliding window.
    pub window: std::time::Duration,
    /// Whose recipients are counted.
    pub key: RateKey,
}

/// `wave = { senders = 5, window = "30m", similarity = 0.9 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveConfig {
    /// Distinct senders of near-identical texts that make a wave.
    pub senders: usize,
    /// Distinct recipients that make a wave too (optional).
    pub recipients: Option<usize>,
    /// How long copies count, and how long a wave stays flagged after its last copy.
    pub window: std::time::Duration,
    /// Least similarity (0.5 to 1.0) of two copies.
    pub similarity: f64,
    /// Shortest normalized text considered, in characters.
    pub min_length: usize,
}

impl Eq for WaveConfig {}

/// `reported = { reporters = 3, window = "1h" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedConfig {
    /// Distinct reporters.
    pub reporters: usize,
    /// Within this long.
    pub window: std::time::Duration,
}

/// `[antispam] report_threshold`, with where it was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportThresholdConfig {
    /// The threshold.
    pub threshold: crate::antispam::ReportThreshold,
    /// Where it was configured.
    pub origin: Origin,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionConfig {
    /// Forward unchanged; stop evaluating.
    Pass,
    /// Discard, audited.
    Drop,
    /// Answer the sender with a stanza error (never to an error or an iq result: those are dropped).
    Bounce {
        /// The condition (default `policy-violation`).
        condition: StanzaCondition,
        /// Human-readable text.
        text: Option<String>,
    },
    /// Close the client's stream with a stream error.
    Close {
        /// The condition (default `policy-violation`).
        condition: Condition,
        /// Human-readable text.
        text: Option<String>,
    },
    /// Remove the child elements the rule's `payload`/`path` conditions matched; forward the rest.
    Strip,
    /// Replace the text the rule's `body_contains`/`body_regex` matched.
    Mask {
        /// Replacement for each matched character (default `*`).
        with: String,
    },
    /// Audit and continue with the next rule.
    Log,
    /// Hold the stanza undelivered in the quarantine, silently (released or deleted by an
    /// operator).
    Quarantine,
}

impl ActionConfig {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionConfig::Pass => "pass",
            ActionConfig::Drop => "drop",
            ActionConfig::Bounce { .. } => "bounce",
            ActionConfig::Close { .. } => "close",
            ActionConfig::Strip => "strip",
            ActionConfig::Mask { .. } => "mask",
            ActionConfig::Log => "log",
            ActionConfig::Quarantine => "quarantine",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// Unique name (audit, metrics, `explain`).
    pub name: String,
    /// The chains it applies to (default: every chain, c2s and s2s).
    pub chains: Vec<Chain>,
    /// All must hold.
    pub when: Vec<ConditionConfig>,
    /// What it does.
    pub action: ActionConfig,
    /// Shadow mode: audited as "would …", the stanza goes on to the next rule.
    pub log_only: bool,
    /// `regex_raw = true`: the rule's `body_regex` reads the text as written (case-sensitive,
    /// not normalized) instead of its folded form.
    pub regex_raw: bool,
    /// Where the rule starts.
    pub origin: Origin,
}

/// `[audit]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// JSON-lines file; `None`: audit records go to the log only.
    pub path: Option<PathBuf>,
    /// Put message bodies in audit records.
    pub include_body: bool,
}

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Named lists.
    pub lists: BTreeMap<String, ListConfig>,
    /// Named limiters.
    pub rates: BTreeMap<String, RateConfig>,
    /// Rules in evaluation order (main file first, then includes in order).
    pub rules: Vec<RuleConfig>,
    /// `chain = "file"` rules, in order ([`super::file`]).
    pub file_rules: Vec<super::file::FileRuleConfig>,
    /// Default action per chain when no terminal rule matches (`[chain.c2s-in] default = …`).
    pub defaults: BTreeMap<Chain, ActionConfig>,
    /// Audit log.
    pub audit: AuditConfig,
    /// `[s2s]` domain policy.
    pub s2s: S2sDomainsConfig,
    /// `[antispam] report_threshold`: reported JIDs listed for a while.
    pub report_threshold: Option<ReportThresholdConfig>,
}

/// How strongly a remote server must be authenticated (`require_authenticated`), weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthLevel {
    /// Dialback (XEP-0220) is enough; a valid certificate is better and also accepted.
    Dialback,
    /// A certificate valid for the domain: PKIX with the configured roots, or DANE.
    Pkix,
    /// A certificate matched by DNSSEC-secure TLSA records (RFC 7673).
    Dane,
}

impl AuthLevel {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthLevel::Dialback => "dialback",
            AuthLevel::Pkix => "pkix",
            AuthLevel::Dane => "dane",
        }
    }

    /// Parse the config spelling.
    pub fn parse(s: &str) -> Option<AuthLevel> {
        [AuthLevel::Dialback, AuthLevel::Pkix, AuthLevel::Dane].into_iter().find(|l| l.as_str() == s)
    }
}

/// The domain policy of `[s2s]`, compiled into [`crate::policy::Policy`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S2sDomainsConfig {
    /// `allow`: when not empty, only these remote domains (patterns, `list:NAME` expanded).
    pub allow: Vec<Located<String>>,
    /// `deny`: never these remote domains.
    pub deny: Vec<Located<String>>,
    /// `require_authenticated` per domain pattern, in file order (first match wins).
    pub require: Vec<(Located<String>, AuthLevel)>,
    /// `require_authenticated` for every other domain (default `dialback`).
    pub default_require: Option<AuthLevel>,
    /// `stanza_rate_per_domain`: stanzas per remote domain and direction.
    pub stanza_rate: Option<Rate>,
    /// `connection_rate_per_domain`: new streams per remote domain and direction.
    pub connection_rate: Option<Rate>,
}
