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
//! Never does I/O: the daemon feeds the same bytes to clamd's INSTREAM and reports its verdict
//! with [`Inspection::scanned`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::Regex;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Streaming,
    AwaitingScan,
    Passed,
    Refused(Refusal),
}

/// One file crossing the gateway (see the module docs).
pub struct Inspection {
    policy: Arc<InspectPolicy>,
    facts: Facts,
    sniffed: bool,
    dlp_active: bool,
    dlp_tail: Vec<u8>,
    hasher: ring::digest::Context,
    held: Vec<u8>,
    state: State,
}

impl fmt::Debug for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspection").field("facts", &self.facts).field("state", &self.state).finish_non_exhaustive()
    }
}

impl Inspection {
    /// Start inspecting a file; `declared` is the size the offer announced (XEP-0234 `<size>`,
    /// XEP-0363 `size`), refused before any byte moves when over the cap.
    pub fn new(policy: Arc<InspectPolicy>, declared: Option<u64>) -> Result<Inspection, Refusal> {
        if let Some(size) = declared.filter(|&s| s > policy.max_bytes) {
            return Err(Refusal {
                detector: Detector::Size,
                detail: format!("declared size {size} bytes is over the limit of {} bytes", policy.max_bytes),
            });
        }
        let dlp_active = policy.dlp.is_some();
        Ok(Inspection {
            policy,
            facts: Facts::default(),
            sniffed: false,
            dlp_active,
            dlp_tail: Vec::new(),
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            held: Vec::new(),
            state: State::Streaming,
        })
    }

    /// What is known so far.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The refusal, once refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.state {
            State::Refused(r) => Some(r),
            _ => None,
        }
    }

    fn refuse(&mut self, detector: Detector, detail: String) -> Refusal {
        let r = Refusal { detector, detail };
        self.state = State::Refused(r.clone());
        // What was held is never released.
        self.held = Vec::new();
        r
    }

    /// Bytes from the sender. Returns the bytes that may be written to the receiver now.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, Refusal> {
        match &self.state {
            State::Streaming => {}
            State::Refused(r) => return Err(r.clone()),
            State::AwaitingScan | State::Passed => {
                return Err(self.refuse(Detector::Size, "data after the end of the file".to_owned()))
            }
        }
        self.facts.bytes = self.facts.bytes.saturating_add(data.len() as u64);
        if self.facts.bytes > self.policy.max_bytes {
            let detail = format!("more than {} bytes", self.policy.max_bytes);
            return Err(self.refuse(Detector::Size, detail));
        }
        self.hasher.update(data);
        self.held.extend_from_slice(data);
        if !self.sniffed && self.held.len() >= SNIFF_BYTES {
            self.sniff()?;
        }
        if self.sniffed && self.dlp_active {
            self.dlp(data)?;
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

    /// The media type check, once enough bytes (or the whole file) are in.
    fn sniff(&mut self) -> Result<(), Refusal> {
        self.sniffed = true;
        let head = &self.held[..self.held.len().min(SNIFF_BYTES)];
        let kind = infer::get(head);
        self.facts.media_type = kind.map(|k| k.mime_type());
        // DLP reads text; a file with a recognised binary type (an archive, an image) is not
        // text, and its compressed bytes would only produce false matches.
        self.dlp_active =
            self.policy.dlp.is_some() && kind.is_none_or(|k| k.matcher_type() == infer::MatcherType::Text);
        let mime = self.facts.media_type.unwrap_or("application/octet-stream");
        if self.policy.deny_types.iter().any(|t| t == mime) {
            return Err(self.refuse(Detector::Type, format!("media type {mime} is denied")));
        }
        if !self.policy.allow_types.is_empty() && !self.policy.allow_types.iter().any(|t| t == mime) {
            return Err(self.refuse(Detector::Type, format!("media type {mime} is not allowed")));
        }
        // Everything pushed before the type was known is scanned now.
        if self.dlp_active {
            let all = std::mem::take(&mut self.held);
            let r = self.dlp(&all);
            self.held = all;
            r?;
        }
        Ok(())
    }

    /// DLP over `data`, with the overlap of what came before it.
    fn dlp(&mut self, data: &[u8]) -> Result<(), Refusal> {
        let policy = self.policy.clone();
        let Some(dlp) = &policy.dlp else { return Ok(()) };
        let mut window = std::mem::take(&mut self.dlp_tail);
        window.extend_from_slice(data);
        if let Some(hit) = dlp.scan(&window) {
            return Err(self.refuse(Detector::Dlp, hit));
        }
        let keep = window.len().min(DLP_OVERLAP);
        window.drain(..window.len() - keep);
        self.dlp_tail = window;
        Ok(())
    }

    /// The sender's input ended. The checks over the whole file that need no scanner are made
    /// here; the tail stays held until [`Inspection::scanned`].
    pub fn finish(&mut self) -> Result<&Facts, Refusal> {
        match &self.state {
            State::Streaming => {}
            State::Refused(r) => return Err(r.clone()),
            State::AwaitingScan | State::Passed => return Ok(&self.facts),
        }
        if !self.sniffed {
            self.sniff()?;
        }
        let digest = std::mem::replace(&mut self.hasher, ring::digest::Context::new(&ring::digest::SHA256)).finish();
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.facts.sha256 = Some(hex(&hash));
        if self.policy.hash_deny.contains(&hash) {
            let detail = format!("SHA-256 {} is on the hash list", hex(&hash));
            return Err(self.refuse(Detector::Hash, detail));
        }
        self.state = State::AwaitingScan;
        Ok(&self.facts)
    }

    /// The scanner's verdict on the whole file: the held tail, or the refusal.
    pub fn scanned(&mut self, verdict: ScanVerdict) -> Result<Vec<u8>, Refusal> {
        match &self.state {
            State::AwaitingScan => {}
            State::Refused(r) => return Err(r.clone()),
            State::Streaming => return Err(self.refuse(Detector::Scanner, "verdict before the end of the file".into())),
            State::Passed => return Ok(Vec::new()),
        }
        match verdict {
            ScanVerdict::NotConfigured | ScanVerdict::Clean => {}
            ScanVerdict::Infected(name) => return Err(self.refuse(Detector::Antivirus, name)),
            ScanVerdict::Failed(why) => match self.policy.on_scanner_error {
                OnScannerError::Block => return Err(self.refuse(Detector::Scanner, why)),
                OnScannerError::Pass => self.facts.scanner_failed_open = true,
            },
        }
        self.state = State::Passed;
        Ok(std::mem::take(&mut self.held))
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

/// Parse a hex SHA-256 (64 hex digits, either case).
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
