//! Spam waves: near-identical texts from many senders (or to many recipients) within a window.
//!
//! A wave's copies differ on purpose — a name, a tracking number, a URL path, spacing, a
//! look-alike letter — so copies are compared by a *fingerprint* of a normal form, not by their
//! bytes (Tigase's `MessageFilterSameLongBody` hashes bodies exactly and misses all of these):
//!
//! 1. the text as folded by the policy (NFKC, case folding, invisible characters removed);
//! 2. each link reduced to its host (`https://spam.example/t/8812?u=bob` → `spam.example`);
//! 3. common Cyrillic and Greek look-alikes mapped to the Latin letters they imitate
//!    (Unicode's confusables for the letters spam actually uses; NFKC does not map them);
//! 4. digits removed, every run of other non-letters made one space.
//!
//! The fingerprint is a 64-bit SimHash over character 4-grams of that normal form: texts that
//! share most 4-grams get fingerprints a few bits apart, so `similarity` is `1 − d/64` for a
//! Hamming distance `d`. SimHash is chosen over TLSH because chat spam is short (TLSH needs ~50
//! bytes of input at least) and over MinHash because one 64-bit word per text keeps the table
//! small; candidates are found by banding (eight 8-bit bands: two fingerprints within distance
//! 7 share at least one band exactly), so a lookup costs a few hash probes, not a scan.
//! Measured in the tests (`antispam::tests`): variants of one text and a corpus of ordinary
//! messages, with the rates printed.
//!
//! Texts whose normal form is shorter than the condition's `min_length` are not fingerprinted
//! ("ok", "hi" are not a wave). Once detected, a wave is flagged for every further copy until
//! it has been quiet for its window.
//!
//! Bounded: at most [`MAX_CLUSTERS`] texts tracked (the oldest forgotten first), each with at
//! most its condition's thresholds of sender and recipient digests and a sample of
//! [`SAMPLE_CHARS`] characters of its normal form. One lock; the work under it is a few probes.
//!
//! Pure: the caller passes `now`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most texts tracked at once.
pub const MAX_CLUSTERS: usize = 1 << 16;
/// Characters of the normal form kept as a wave's sample (audit log, `explain`).
pub const SAMPLE_CHARS: usize = 120;
/// Candidates kept per band value (the newest).
const BAND_BUCKET: usize = 16;
const BANDS: u32 = 8;

/// A text's normal form (see the module docs), from its folded form.
pub fn normalize(folded: &str) -> String {
    let mut out = String::with_capacity(folded.len());
    let mut space = true;
    let mut push = |c: char, out: &mut String| {
        if c.is_numeric() {
            // Numbers are what varies between copies (order numbers, amounts, phone numbers).
        } else if c.is_alphabetic() {
            out.push(c);
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    };
    for token in folded.split_whitespace() {
        match link_host(token) {
            Some(host) => host.chars().for_each(|c| push(c, &mut out)),
            None => token.chars().map(unconfuse).for_each(|c| push(c, &mut out)),
        }
        push(' ', &mut out);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// The host of a token that is a link (`scheme://host/…`, or `host.tld/path`), `www.` removed.
fn link_host(token: &str) -> Option<&str> {
    let token = token.trim_matches(|c: char| matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | ',' | '.'));
    let rest = match token.find("://") {
        Some(i) => &token[i + 3..],
        None => {
            let (host, path) = token.split_once('/')?;
            if !host.contains('.') || path.is_empty() {
                return None;
            }
            token
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..end].rsplit('@').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    Some(host.strip_prefix("www.").unwrap_or(host)).filter(|h| !h.is_empty())
}

/// The Latin letter a Cyrillic or Greek look-alike imitates (Unicode confusables, lowercase:
/// the text is case-folded already).
fn unconfuse(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ї' | 'ι' | 'ɩ' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'ɡ' => 'g',
        other => other,
    }
}

/// The 64-bit SimHash of `normal` over character 4-grams (a shorter text is one gram).
pub fn simhash(normal: &str) -> u64 {
    let chars: Vec<char> = normal.chars().collect();
    let mut weights = [0i32; 64];
    let mut add = |gram: &[char]| {
        let h = gram_hash(gram);
        for (bit, w) in weights.iter_mut().enumerate() {
            *w += if h >> bit & 1 == 1 { 1 } else { -1 };
        }
    };
    if chars.len() < 4 {
        add(&chars);
    } else {
        chars.windows(4).for_each(&mut add);
    }
    weights.iter().enumerate().fold(0u64, |acc, (bit, &w)| if w > 0 { acc | 1 << bit } else { acc })
}

/// A fixed, well-mixed hash of a gram (FNV-1a, then the SplitMix64 finalizer): fingerprints
/// must be the same in every process so that `explain` and the daemon agree.
fn gram_hash(gram: &[char]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in gram {
        for b in (c as u32).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Similarity of two fingerprints: 1 − Hamming distance / 64.
pub fn similarity(a: u64, b: u64) -> f64 {
    1.0 - f64::from((a ^ b).count_ones()) / 64.0
}

/// What a `wave` condition asks (validated by the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaveSpec {
    /// The condition's own namespace (waves of two rules are counted apart).
    pub ns: u64,
    /// Distinct senders that make a wave.
    pub senders: usize,
    /// Distinct recipients that make a wave (`None`: senders only).
    pub recipients: Option<usize>,
    /// How long copies count, and how long a detected wave stays flagged after its last copy.
    pub window: Duration,
    /// Least similarity of a copy (0.5 to 1.0).
    pub similarity: f64,
    /// Shortest normal form fingerprinted, in characters.
    pub min_length: usize,
}

impl WaveSpec {
    /// Most differing fingerprint bits of a copy: `similarity = 1 − d/64`; banding finds every
    /// distance up to 7.
    pub fn max_distance(&self) -> u32 {
        let d = (64.0 * (1.0 - self.similarity) + 1e-9).floor();
        if d <= 0.0 {
            0
        } else {
            (d as u32).min(BANDS - 1)
        }
    }
}

/// One copy of a text, as the condition sees it.
#[derive(Debug, Clone, Copy)]
pub struct Copy<'a> {
    /// The fingerprint.
    pub fingerprint: u64,
    /// The normal form (for the sample).
    pub normal: &'a str,
    /// Digest of the sender.
    pub sender: u64,
    /// Digest of the recipient.
    pub recipient: u64,
}

/// A wave, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Its identifier: the first copy's fingerprint, in hex.
    pub id: String,
    /// Distinct senders counted (up to the threshold).
    pub senders: usize,
    /// Distinct recipients counted (up to the threshold).
    pub recipients: usize,
    /// The start of the first copy's normal form.
    pub sample: String,
}

/// What one copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveMatch {
    /// The copy belongs to a detected wave.
    pub wave: Wave,
    /// This copy is the one that made the wave (report it once).
    pub new: bool,
}

#[derive(Debug)]
struct Cluster {
    ns: u64,
    fingerprint: u64,
    senders: Vec<u64>,
    recipients: Vec<u64>,
    last: Instant,
    detected: bool,
    sample: String,
}

#[derive(Debug, Default)]
struct State {
    clusters: HashMap<u64, Cluster>,
    order: VecDeque<u64>,
    bands: HashMap<(u64, u32, u8), VecDeque<u64>>,
    next: u64,
}

/// The wave table shared by every session.
#[derive(Debug)]
pub struct Waves {
    state: Mutex<State>,
    capacity: usize,
}

impl Default for Waves {
    fn default() -> Self {
        Self::with_capacity(MAX_CLUSTERS)
    }
}

fn band(fp: u64, i: u32) -> u8 {
    (fp >> (i * 8)) as u8
}

impl Waves {
    /// A table tracking at most `capacity` texts.
    pub fn with_capacity(capacity: usize) -> Self {
        Waves { state: Mutex::new(State::default()), capacity: capacity.max(1) }
    }

    /// Texts tracked now.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clusters.len()
    }

    /// True when no text is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count `copy` under `spec` at `now`: `Some` when it belongs to a detected wave.
    pub fn observe(&self, spec: &WaveSpec, copy: Copy<'_>, now: Instant) -> Option<WaveMatch> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let max = spec.max_distance();
        let mut best: Option<(u32, u64)> = None;
        for i in 0..BANDS {
            let Some(ids) = st.bands.get(&(spec.ns, i, band(copy.fingerprint, i))) else { continue };
            for id in ids {
                let Some(c) = st.clusters.get(id) else { continue };
                let d = (c.fingerprint ^ copy.fingerprint).count_ones();
                let live = now.saturating_duration_since(c.last) < spec.window;
                if c.ns == spec.ns && live && d <= max && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, *id));
                }
            }
        }
        let id = match best {
            Some((_, id)) => id,
            None => self.insert(&mut st, spec.ns, copy, now),
        };
        let c = st.clusters.get_mut(&id)?;
        c.last = c.last.max(now);
        if !c.senders.contains(&copy.sender) && c.senders.len() < spec.senders {
            c.senders.push(copy.sender);
        }
        if !c.recipients.contains(&copy.recipient) && c.recipients.len() < spec.recipients.unwrap_or(0) {
            c.recipients.push(copy.recipient);
        }
        let reached = c.senders.len() >= spec.senders || spec.recipients.is_some_and(|r| c.recipients.len() >= r);
        let new = reached && !c.detected;
        c.detected |= reached;
        c.detected.then(|| WaveMatch {
            wave: Wave {
                id: format!("{:016x}", c.fingerprint),
                senders: c.senders.len(),
                recipients: c.recipients.len(),
                sample: c.sample.clone(),
            },
            new,
        })
    }

    fn insert(&self, st: &mut State, ns: u64, copy: Copy<'_>, now: Instant) -> u64 {
        while st.clusters.len() >= self.capacity {
            let Some(old) = st.order.pop_front() else { break };
            if let Some(c) = st.clusters.remove(&old) {
                for i in 0..BANDS {
                    let key = (c.ns, i, band(c.fingerprint, i));
                    if let Some(b) = st.bands.get_mut(&key) {
                        b.retain(|&x| x != old);
                        if b.is_empty() {
                            st.bands.remove(&key);
                        }
                    }
                }
            }
        }
        let id = st.next;
        st.next += 1;
        let sample: String = copy.normal.chars().take(SAMPLE_CHARS).collect();
        let c = Cluster {
            ns,
            fingerprint: copy.fingerprint,
            senders: Vec::new(),
            recipients: Vec::new(),
            last: now,
            detected: false,
            sample,
        };
        for i in 0..BANDS {
            let b = st.bands.entry((ns, i, band(copy.fingerprint, i))).or_default();
            if b.len() >= BAND_BUCKET {
                b.pop_front();
            }
            b.push_back(id);
        }
        st.clusters.insert(id, c);
        st.order.push_back(id);
        id
    }
}
