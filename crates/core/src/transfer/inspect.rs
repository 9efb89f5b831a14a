//! The one inspection pipeline every transfer path goes through (SOCKS5 relay today).
//!
//! Streaming and bounded: bytes are pushed as they arrive and released toward the receiver as
//! soon as the checks that can be made so far have passed, except for a held-back tail
//! ([`InspectPolicy::hold_back`] bytes, at least one). Checks that need the whole file — the
//! SHA-256 against the hash list and the antivirus verdict — are made when the sender's input
//! ends, and only then is the tail released. A refused file therefore never arrives complete,
//! and a receiver that verifies size or hash (XEP-0234 §6, XEP-0363) notices it is cut.
//!
//! Order of the checks: the declared size before any byte ([`Inspection::new`]); the running
//! size on every push (over the cap is cut at once); the media type from the first
//! [`SNIFF_BYTES`] bytes by magic number (nothing is released before it is known); DLP
//! (keywords, regular expressions, Luhn-valid card numbers) over the text of files with no
//! binary type, across chunk boundaries; then, at the end, the hash and the scanner's verdict.
//!
//! Every check is a decision of the `file` chain ([`crate::policy::file`]): the operator's
//! `[[rule]] chain = "file"` rules first, then the `[file_transfer]` checks above as its
//! implicit last rules (all `block`), then pass. The chain is asked again whenever a fact
//! arrives — the offer, each push, the end, the verdict — and a file is cut as soon as it is
//! decided `block`, or released whole as soon as a rule decides `pass`. A `quarantine` rule
//! refuses as `block` does toward the receiver (nothing more is released), but the sender's
//! input is still taken to its end, counted and hashed, so that the daemon's copy of it is the
//! whole file; [`Inspection::finish`] (or the verdict) then refuses with
//! [`Detector::Quarantine`], which tells the daemon to keep that copy.
//!
//! Never does I/O: the daemon feeds the same bytes to clamd's INSTREAM and reports its verdict
//! with [`Inspection::scanned`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::Regex;

use crate::policy::file::{FileDecision, FileRules, Observed, Offer};

/// Bytes looked at for the media type (infer's longest signatures are within this).
pub const SNIFF_BYTES: usize = 8192;
/// DLP overlap kept between chunks: a keyword or pattern match shorter than this is found even
/// when a chunk boundary splits it.
const DLP_OVERLAP: usize = 256;

/// What a transfer must satisfy (`[file_transfer]`, compiled).
#[derive(Debug, Clone)]
pub struct InspectPolicy {
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Media types allowed (exact MIME types from the content); empty: any.
    pub allow_types: Vec<String>,
    /// Media types refused (exact MIME types from the content).
    pub deny_types: Vec<String>,
    /// SHA-256 digests of files refused.
    pub hash_deny: HashSet<[u8; 32]>,
    /// Data-loss-prevention detectors over text content; `None`: no DLP.
    pub dlp: Option<Dlp>,
    /// Bytes held back until the verdict (at least 1).
    pub hold_back: usize,
    /// What a scanner failure (down, timed out, over its size limit) means.
    pub on_scanner_error: OnScannerError,
    /// The `file` chain's rules, walked before the checks above (which are its implicit
    /// last rules).
    pub rules: Arc<FileRules>,
}

impl Default for InspectPolicy {
    fn default() -> Self {
        InspectPolicy {
            max_bytes: 100 * 1024 * 1024,
            allow_types: Vec::new(),
            deny_types: Vec::new(),
            hash_deny: HashSet::new(),
            dlp: None,
            hold_back: 64 * 1024,
            on_scanner_error: OnScannerError::Block,
            rules: Arc::new(FileRules::default()),
        }
    }
}

/// `on_scanner_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnScannerError {
    /// Fail closed: the file is refused (the default).
    #[default]
    Block,
    /// Fail open: the file passes without an antivirus verdict (counted and audited).
    Pass,
}

/// DLP detectors.
#[derive(Debug, Clone)]
pub struct Dlp {
    keywords: Option<AhoCorasick>,
    keyword_names: Vec<String>,
    patterns: Vec<(String, Regex)>,
    card_numbers: Option<Regex>,
}

/// A DLP configuration that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum DlpError {
    /// A regular expression does not compile (or is too large).
    #[error("pattern '{pattern}': {error}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// Why it does not compile.
        error: String,
    },
    /// The keyword automaton cannot be built.
    #[error("keywords: {0}")]
    Keywords(String),
}

impl Dlp {
    /// Keywords match ASCII case-insensitively; patterns are regular expressions over bytes;
    /// `card_numbers` adds a detector for 13–19 digit numbers passing the Luhn check.
    pub fn new(keywords: &[String], patterns: &[String], card_numbers: bool) -> Result<Dlp, DlpError> {
        let keywords_ac = if keywords.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(keywords)
                    .map_err(|e| DlpError::Keywords(e.to_string()))?,
            )
        };
        let mut compiled = Vec::new();
        for p in patterns {
            let re = regex::bytes::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| DlpError::Pattern { pattern: p.clone(), error: e.to_string() })?;
            compiled.push((p.clone(), re));
        }
        let card_numbers = card_numbers.then(|| {
            #[allow(clippy::expect_used)] // a constant pattern, covered by the tests
            Regex::new(r"(?-u)(?:^|[^0-9])((?:[0-9][ -]?){12,18}[0-9])(?:[^0-9]|$)").expect("card number pattern")
        });
        Ok(Dlp { keywords: keywords_ac, keyword_names: keywords.to_vec(), patterns: compiled, card_numbers })
    }

    /// The first detector matching in `text`, by name.
    fn scan(&self, text: &[u8]) -> Option<String> {
        if let Some(ac) = &self.keywords {
            if let Some(m) = ac.find(text) {
                return Some(format!("keyword '{}'", self.keyword_names[m.pattern().as_usize()]));
            }
        }
        for (name, re) in &self.patterns {
            if re.is_match(text) {
                return Some(format!("pattern '{name}'"));
            }
        }
        if let Some(re) = &self.card_numbers {
            for c in re.captures_iter(text) {
                if c.get(1).is_some_and(|m| luhn_valid(m.as_bytes())) {
                    return Some("card number (Luhn-valid)".to_owned());
                }
            }
        }
        None
    }
}

/// The Luhn checksum (ISO/IEC 7812-1 Annex B) over the digits of `s`, separators ignored.
pub fn luhn_valid(s: &[u8]) -> bool {
    let digits: Vec<u32> = s.iter().filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0')).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Which check refused a file (the audit's `detector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    /// Over the size cap (declared or counted).
    Size,
    /// Its media type is denied or not allowed.
    Type,
    /// Its SHA-256 is on the hash list.
    Hash,
    /// A DLP detector matched.
    Dlp,
    /// The antivirus found something.
    Antivirus,
    /// The antivirus could not decide and `on_scanner_error = "block"`.
    Scanner,
    /// A `[[rule]] chain = "file"` with `action = "block"`.
    Rule,
    /// A `[[rule]] chain = "file"` with `action = "quarantine"`: refused as by `block`, and
    /// the whole file kept for review (the daemon stores what it teed).
    Quarantine,
    /// The transport broke its own protocol (an XEP-0047 seq gap, a chunk over its block size).
    Protocol,
}

impl Detector {
    /// Label for metrics and audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Size => "size",
            Detector::Type => "type",
            Detector::Hash => "hash",
            Detector::Dlp => "dlp",
            Detector::Antivirus => "antivirus",
            Detector::Scanner => "scanner-error",
            Detector::Rule => "rule",
            Detector::Quarantine => "quarantine",
            Detector::Protocol => "protocol",
        }
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The check that refused it.
    pub detector: Detector,
    /// What it found, for the audit and the error text.
    pub detail: String,
    /// The `file` rule that refused it (`detector` is then [`Detector::Rule`]).
    pub rule: Option<String>,
}

impl Refusal {
    fn check(detector: Detector, detail: String) -> Refusal {
        Refusal { detector, detail, rule: None }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.detector.as_str(), self.detail)
    }
}

/// The antivirus's answer for the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanVerdict {
    /// No antivirus configured.
    NotConfigured,
    /// Scanned, nothing found.
    Clean,
    /// Scanned, found this signature.
    Infected(String),
    /// The scanner failed (down, timed out, over its stream limit).
    Failed(String),
}

/// What is known about a transfer (audit and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Bytes received from the sender.
    pub bytes: u64,
    /// Media type from the content; `None`: unknown (treated as text for DLP).
    pub media_type: Option<&'static str>,
    /// Hex SHA-256, once the input ended.
    pub sha256: Option<String>,
    /// The scanner failed and `on_scanner_error = "pass"` let the file through.
    pub scanner_failed_open: bool,
    /// The `file` rule that decided `pass`, if one did.
    pub rule: Option<String>,
    /// `log` (and `log_only`) rules of the `file` chain that matched.
    pub logged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Streaming,
    /// A `pass` rule decided before the end: bytes flow unheld (still counted and hashed).
    PassedEarly,
    AwaitingScan,
    Passed,
    /// A `quarantine` rule decided before the end: nothing more is released, but the input is
    /// still read (counted, hashed, its type sniffed) to its end, so that the daemon's copy is
    /// the whole file; [`Inspection::finish`] then refuses.
    Quarantining(Refusal),
    Refused(Refusal),
}

/// What the chain says now.
enum Decision {
    Pass,
    Block(Refusal),
    Quarantine(Refusal),
    Pending,
}

/// One file crossing the gateway (see the module docs).
pub struct Inspection {
    policy: Arc<InspectPolicy>,
    offer: Offer,
    seen: Observed,
    facts: Facts,
    sniffed: bool,
    dlp_active: bool,
    dlp_tail: Vec<u8>,
    /// What the DLP detector found.
    dlp_hit: Option<String>,
    /// The antivirus's verdict, once given.
    verdict: Option<ScanVerdict>,
    hasher: ring::digest::Context,
    held: Vec<u8>,
    state: State,
    /// Per `file` rule: its log record is made.
    logged: Vec<bool>,
}

impl fmt::Debug for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspection").field("facts", &self.facts).field("state", &self.state).finish_non_exhaustive()
    }
}

impl Inspection {
    /// Start inspecting a file of which only the size may be known (`declared`: XEP-0234
    /// `<size>`, XEP-0363 `size`); see [`Inspection::with_offer`].
    pub fn new(policy: Arc<InspectPolicy>, declared: Option<u64>) -> Result<Inspection, Refusal> {
        Inspection::with_offer(policy, Offer { size: declared, ..Offer::default() })
    }

    /// Start inspecting a file: the `file` chain judges the offer before any byte moves (a
    /// declared size over the cap, a blocked name, sender or declared type is refused here).
    pub fn with_offer(policy: Arc<InspectPolicy>, offer: Offer) -> Result<Inspection, Refusal> {
        let dlp_active = policy.dlp.is_some();
        let mut ins = Inspection {
            policy,
            offer,
            seen: Observed { dlp: (!dlp_active).then_some(false), ..Observed::default() },
            facts: Facts::default(),
            sniffed: false,
            dlp_active,
            dlp_tail: Vec::new(),
            dlp_hit: None,
            verdict: None,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            held: Vec::new(),
            state: State::Streaming,
            logged: Vec::new(),
        };
        match ins.decide() {
            Decision::Block(r) => Err(r),
            Decision::Pass => {
                ins.state = State::PassedEarly;
                Ok(ins)
            }
            Decision::Quarantine(r) => {
                ins.state = State::Quarantining(r);
                Ok(ins)
            }
            Decision::Pending => Ok(ins),
        }
    }

    /// What is known so far.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// What the offer declared.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The refusal, once refused (or decided to be quarantined).
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.state {
            State::Refused(r) | State::Quarantining(r) => Some(r),
            _ => None,
        }
    }

    fn refuse(&mut self, r: Refusal) -> Refusal {
        self.state = State::Refused(r.clone());
        // What was held is never released.
        self.held = Vec::new();
        r
    }

    /// Walk the `file` chain: the operator's rules, then the `[file_transfer]` checks.
    fn decide(&mut self) -> Decision {
        let rules = self.policy.rules.clone();
        match rules.decide(&self.offer, &self.seen, &mut self.logged, &mut self.facts.logged) {
            FileDecision::Pass(rule) => {
                self.facts.rule = Some(rule.to_string());
                Decision::Pass
            }
            FileDecision::Block { rule, text } => Decision::Block(Refusal {
                detector: Detector::Rule,
                detail: text.unwrap_or_else(|| format!("refused by rule '{rule}'")),
                rule: Some(rule.to_string()),
            }),
            FileDecision::Quarantine(rule) => Decision::Quarantine(Refusal {
                detector: Detector::Quarantine,
                detail: format!("held for review by rule '{rule}'"),
                rule: Some(rule.to_string()),
            }),
            FileDecision::Pending => Decision::Pending,
            FileDecision::Fallthrough => self.checks(),
        }
    }

    /// The `[file_transfer]` checks as the chain's last rules: any that holds blocks (in this
    /// order: size, type, hash, DLP, antivirus, scanner); none pending: pass.
    fn checks(&self) -> Decision {
        let p = &*self.policy;
        let mut pending = false;
        if let Some(size) = self.offer.size.filter(|&s| s > p.max_bytes) {
            let detail = format!("declared size {size} bytes is over the limit of {} bytes", p.max_bytes);
            return Decision::Block(Refusal::check(Detector::Size, detail));
        }
        if let Some(hash) = self.offer.sha256.filter(|h| p.hash_deny.contains(h)) {
            let detail = format!("declared SHA-256 {} is on the hash list", hex(&hash));
            return Decision::Block(Refusal::check(Detector::Hash, detail));
        }
        if self.seen.bytes > p.max_bytes {
            return Decision::Block(Refusal::check(Detector::Size, format!("more than {} bytes", p.max_bytes)));
        }
        pending |= !self.seen.ended;
        match self.seen.media_type {
            None => pending = true,
            Some(mime) => {
                if p.deny_types.iter().any(|t| t == mime) {
                    return Decision::Block(Refusal::check(Detector::Type, format!("media type {mime} is denied")));
                }
                if !p.allow_types.is_empty() && !p.allow_types.iter().any(|t| t == mime) {
                    return Decision::Block(Refusal::check(
                        Detector::Type,
                        format!("media type {mime} is not allowed"),
                    ));
                }
            }
        }
        match self.seen.sha256 {
            Some(hash) if p.hash_deny.contains(&hash) => {
                let detail = format!("SHA-256 {} is on the hash list", hex(&hash));
                return Decision::Block(Refusal::check(Detector::Hash, detail));
            }
            Some(_) => {}
            None => pending = true,
        }
        if let Some(hit) = &self.dlp_hit {
            return Decision::Block(Refusal::check(Detector::Dlp, hit.clone()));
        }
        pending |= self.seen.dlp.is_none();
        match &self.verdict {
            None => pending = true,
            Some(ScanVerdict::Infected(name)) => {
                return Decision::Block(Refusal::check(Detector::Antivirus, name.clone()));
            }
            Some(ScanVerdict::Failed(why)) if p.on_scanner_error == OnScannerError::Block => {
                return Decision::Block(Refusal::check(Detector::Scanner, why.clone()));
            }
            Some(_) => {}
        }
        if pending {
            Decision::Pending
        } else {
            Decision::Pass
        }
    }

    /// Bytes from the sender. Returns the bytes that may be written to the receiver now
    /// (none, once a `quarantine` rule decided: the input is still taken to its end).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, Refusal> {
        match &self.state {
            State::Streaming | State::PassedEarly | State::Quarantining(_) => {}
            State::Refused(r) => return Err(r.clone()),
            State::AwaitingScan | State::Passed => {
                return Err(self.refuse(Refusal::check(Detector::Size, "data after the end of the file".to_owned())))
            }
        }
        self.facts.bytes = self.facts.bytes.saturating_add(data.len() as u64);
        self.seen.bytes = self.facts.bytes;
        self.hasher.update(data);
        if self.state == State::PassedEarly {
            return Ok(data.to_vec());
        }
        if let State::Quarantining(_) = self.state {
            // Kept only up to the size cap (invariant 6): beyond it the file is refused and
            // not kept (a plain size refusal).
            if self.seen.bytes > self.policy.max_bytes {
                let detail = format!("more than {} bytes (not kept for review)", self.policy.max_bytes);
                return Err(self.refuse(Refusal::check(Detector::Size, detail)));
            }
            // Only the media type is still wanted (for the record); nothing is released.
            if !self.sniffed {
                self.held.extend_from_slice(data);
                if self.held.len() >= SNIFF_BYTES {
                    self.sniff();
                    self.held = Vec::new();
                }
            }
            return Ok(Vec::new());
        }
        self.held.extend_from_slice(data);
        if !self.sniffed && self.held.len() >= SNIFF_BYTES {
            self.sniff();
        }
        if self.sniffed && self.dlp_active && self.dlp_hit.is_none() {
            self.dlp(data);
        }
        match self.decide() {
            Decision::Block(r) => return Err(self.refuse(r)),
            Decision::Pass => {
                self.state = State::PassedEarly;
                return Ok(std::mem::take(&mut self.held));
            }
            Decision::Quarantine(r) => {
                // What is held is never released; the rest is read to the end.
                self.held = Vec::new();
                self.state = State::Quarantining(r);
                return Ok(Vec::new());
            }
            Decision::Pending => {}
        }
        if !self.sniffed {
            return Ok(Vec::new());
        }
        let keep = self.policy.hold_back.max(1);
        if self.held.len() <= keep {
            return Ok(Vec::new());
        }
        let release = self.held.len() - keep;
        Ok(self.held.drain(..release).collect())
    }

    /// The media type, once enough bytes (or the whole file) are in.
    fn sniff(&mut self) {
        self.sniffed = true;
        let head = &self.held[..self.held.len().min(SNIFF_BYTES)];
        let kind = infer::get(head);
        self.facts.media_type = kind.map(|k| k.mime_type());
        self.seen.media_type = Some(self.facts.media_type.unwrap_or("application/octet-stream"));
        // DLP reads text; a file with a recognised binary type (an archive, an image) is not
        // text, and its compressed bytes would only produce false matches.
        self.dlp_active =
            self.policy.dlp.is_some() && kind.is_none_or(|k| k.matcher_type() == infer::MatcherType::Text);
        if !self.dlp_active {
            self.seen.dlp = Some(false);
        }
        // Everything pushed before the type was known is scanned now.
        if self.dlp_active {
            let all = std::mem::take(&mut self.held);
            self.dlp(&all);
            self.held = all;
        }
    }

    /// DLP over `data`, with the overlap of what came before it.
    fn dlp(&mut self, data: &[u8]) {
        let policy = self.policy.clone();
        let Some(dlp) = &policy.dlp else { return };
        let mut window = std::mem::take(&mut self.dlp_tail);
        window.extend_from_slice(data);
        if let Some(hit) = dlp.scan(&window) {
            self.dlp_hit = Some(hit);
            self.seen.dlp = Some(true);
            return;
        }
        let keep = window.len().min(DLP_OVERLAP);
        window.drain(..window.len() - keep);
        self.dlp_tail = window;
    }

    /// The sender's input ended. The checks over the whole file that need no scanner are made
    /// here; the tail stays held until [`Inspection::scanned`].
    pub fn finish(&mut self) -> Result<&Facts, Refusal> {
        match &self.state {
            State::Streaming | State::PassedEarly | State::Quarantining(_) => {}
            State::Refused(r) => return Err(r.clone()),
            State::AwaitingScan | State::Passed => return Ok(&self.facts),
        }
        if !self.sniffed {
            self.sniff();
        }
        let digest = std::mem::replace(&mut self.hasher, ring::digest::Context::new(&ring::digest::SHA256)).finish();
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.facts.sha256 = Some(hex(&hash));
        self.seen.sha256 = Some(hash);
        self.seen.ended = true;
        if self.seen.dlp.is_none() {
            self.seen.dlp = Some(false);
        }
        if self.state == State::PassedEarly {
            self.state = State::Passed;
            return Ok(&self.facts);
        }
        if let State::Quarantining(r) = &self.state {
            let r = r.clone();
            return Err(self.refuse(r));
        }
        match self.decide() {
            Decision::Block(r) | Decision::Quarantine(r) => return Err(self.refuse(r)),
            Decision::Pass => self.state = State::Passed,
            Decision::Pending => self.state = State::AwaitingScan,
        }
        Ok(&self.facts)
    }

    /// The scanner's verdict on the whole file: the held tail, or the refusal.
    pub fn scanned(&mut self, verdict: ScanVerdict) -> Result<Vec<u8>, Refusal> {
        match &self.state {
            State::AwaitingScan => {}
            State::Refused(r) => return Err(r.clone()),
            State::Streaming | State::PassedEarly | State::Quarantining(_) => {
                return Err(self.refuse(Refusal::check(Detector::Scanner, "verdict before the end of the file".into())))
            }
            State::Passed => return Ok(std::mem::take(&mut self.held)),
        }
        self.seen.malware = Some(matches!(verdict, ScanVerdict::Infected(_)));
        self.seen.scanner_error = Some(matches!(verdict, ScanVerdict::Failed(_)));
        let failed = matches!(verdict, ScanVerdict::Failed(_));
        self.verdict = Some(verdict);
        match self.decide() {
            Decision::Block(r) | Decision::Quarantine(r) => Err(self.refuse(r)),
            Decision::Pass => {
                self.facts.scanner_failed_open = failed;
                self.state = State::Passed;
                Ok(std::mem::take(&mut self.held))
            }
            // Every fact is known: nothing can be pending. Fail closed if it ever were.
            Decision::Pending => {
                Err(self.refuse(Refusal::check(Detector::Rule, "the file chain reached no decision".into())))
            }
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub use crate::policy::file::parse_sha256;
