//! Spam waves: near-identical texts from many senders (or to many recipients) within a window.
//!
//! A wave's copies differ on purpose — a name, a tracking number, a URL path, spacing, case, a
//! look-alike letter — so copies are compared by a *fingerprint* of a normal form, not by their
//! bytes (Tigase's `MessageFilterSameLongBody` hashes bodies exactly and misses all of these):
//!
//! 1. names dropped: a capitalized word (`Anna`, `Dmitri`) that does not start a sentence;
//! 2. the text folded as the policy folds it (NFKC, case folding, invisible characters removed);
//! 3. each link reduced to its host (`https://spam.example/t/8812?u=bob` → `spam.example`);
//! 4. common Cyrillic and Greek look-alikes mapped to the Latin letters they imitate
//!    (Unicode's confusables for the letters spam uses; NFKC does not map them);
//! 5. digits removed, every run of other non-letters made one space.
//!
//! The fingerprint is a MinHash signature of [`SIGNATURE`] values over the character 4-grams of
//! that normal form ([`minhash`]); `similarity` is the fraction of equal values, an estimate of
//! the Jaccard similarity of the two texts' 4-gram sets. Chosen by measurement
//! (`antispam::tests`, numbers in the README): a 64-bit SimHash put only about a third of the
//! variants of a spam text within similarity 0.9 of each other (one changed name moves too many
//! bits); TLSH needs ~50 bytes of input at least, and chat spam is shorter. Candidates are found
//! by banding the signature (16 bands of 4 values: texts at similarity 0.8 share a band with
//! probability > 0.99, unrelated ones rarely), so a lookup costs 16 hash probes, not a scan.
//!
//! Texts whose normal form is shorter than the condition's `min_length` are not fingerprinted
//! ("ok", "hi" are not a wave). Once detected, a wave is flagged for every further copy until
//! it has been quiet for its window.
//!
//! Bounded: at most [`MAX_CLUSTERS`] texts tracked (the oldest forgotten first), each with its
//! signature, at most its condition's thresholds of sender and recipient digests and a sample
//! of [`SAMPLE_CHARS`] characters of its normal form. One lock; the work under it is a few
//! probes.
//!
//! Pure: the caller passes `now`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `wave.similarity` unless set: every variant in the tests' measurement, no ordinary pair.
pub const DEFAULT_SIMILARITY: f64 = 0.8;
/// Most texts tracked at once.
pub const MAX_CLUSTERS: usize = 1 << 16;
/// Characters of the normal form kept as a wave's sample (audit log, `explain`).
pub const SAMPLE_CHARS: usize = 120;
/// Candidates kept per band value (the newest).
const BAND_BUCKET: usize = 16;

/// A text's normal form (see the module docs); `fold` is the policy's folding.
pub fn normalize(text: &str, fold: impl Fn(&str) -> std::borrow::Cow<'_, str>) -> String {
    let mut out = String::with_capacity(text.len());
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
    let mut sentence_start = true;
    for token in text.split_whitespace() {
        let name = !sentence_start && is_name(token);
        sentence_start = token.ends_with(['.', '!', '?', ':', ';']);
        if name {
            continue;
        }
        let folded = fold(token);
        match link_host(&folded) {
            Some(host) => host.chars().map(unconfuse).for_each(|c| push(c, &mut out)),
            None => folded.chars().map(unconfuse).for_each(|c| push(c, &mut out)),
        }
        push(' ', &mut out);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// A capitalized word (`Anna`, `Dmitri,`): an uppercase letter, then only lowercase letters;
/// not `I` or its contractions.
fn is_name(token: &str) -> bool {
    let word = token.trim_matches(|c: char| !c.is_alphabetic());
    let mut chars = word.chars();
    let Some(first) = chars.next() else { return false };
    let rest = chars.as_str();
    first.is_uppercase() && rest.chars().count() >= 2 && rest.chars().all(char::is_lowercase)
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

/// Values in a signature.
pub const SIGNATURE: usize = 64;
const ROWS: usize = 4;
/// Bands of a signature.
pub const BANDS: usize = SIGNATURE / ROWS;

/// A MinHash signature.
pub type Signature = [u32; SIGNATURE];

/// The MinHash signature of `normal` over its character 4-grams (a shorter text is one gram):
/// one-permutation hashing (Li, Owen, Zhang 2012) — one well-mixed 64-bit hash per gram, whose
/// top bits pick one of [`SIGNATURE`] bins and whose next 32 bits compete for that bin's
/// minimum — with empty bins filled from the next non-empty bin to the right (rotation
/// densification, Shrivastava and Li 2014), so that two texts' signatures agree in a bin with
/// probability their Jaccard similarity. One hash per gram instead of one per gram and value
/// (the first version cost 40 µs a message; this about 1 µs). Fixed, so `explain` and the
/// daemon agree.
pub fn minhash(normal: &str) -> Signature {
    const EMPTY: u64 = u64::MAX;
    let chars: Vec<char> = normal.chars().collect();
    let mut bins = [EMPTY; SIGNATURE];
    let mut add = |gram: &[char]| {
        let h = gram_hash(gram);
        let bin = (h >> (64 - SIGNATURE.trailing_zeros())) as usize;
        let value = (h >> 8) & 0xffff_ffff;
        bins[bin] = bins[bin].min(value);
    };
    if chars.len() < 4 {
        add(&chars);
    } else {
        chars.windows(4).for_each(&mut add);
    }
    let mut sig = [0u32; SIGNATURE];
    for (j, v) in sig.iter_mut().enumerate() {
        // The nearest filled bin to the right (there is one: a text has at least one gram);
        // the distance is mixed in so that a borrowed value differs from the lender's own.
        let (d, lender) =
            (0..SIGNATURE).map(|d| (d, bins[(j + d) % SIGNATURE])).find(|&(_, b)| b != EMPTY).unwrap_or((0, 0));
        *v = (lender as u32).wrapping_add((d as u32).wrapping_mul(0x9e37_79b9));
    }
    sig
}

const fn splitmix(mut h: u64) -> u64 {
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// FNV-1a over the gram, then the SplitMix64 finalizer.
fn gram_hash(gram: &[char]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in gram {
        for b in (c as u32).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    splitmix(h)
}

/// Similarity of two signatures: the fraction of equal values (estimated Jaccard similarity).
pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / SIGNATURE as f64
}

/// The band values of a signature: two texts that share one are candidates for each other.
pub fn bands(sig: &Signature) -> [u64; BANDS] {
    std::array::from_fn(|i| band(sig, i))
}

/// The identifier a wave gets from its first copy's fingerprint (the same on every gateway).
pub fn wave_id(sig: &Signature) -> String {
    format!("{:016x}", band(sig, 0) ^ band(sig, 1).rotate_left(32))
}

fn band(sig: &Signature, i: usize) -> u64 {
    let mut h: u64 = i as u64;
    for &v in &sig[i * ROWS..(i + 1) * ROWS] {
        h = splitmix(h ^ u64::from(v));
    }
    h
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

/// One copy of a text, as the condition sees it.
#[derive(Debug, Clone, Copy)]
pub struct Copy<'a> {
    /// The fingerprint.
    pub fingerprint: &'a Signature,
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
    /// Its identifier: a hash of the first copy's fingerprint, in hex.
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
    fingerprint: Box<Signature>,
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
    bands: HashMap<(u64, u64), VecDeque<u64>>,
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
        let mut best: Option<(usize, u64)> = None;
        let need = (spec.similarity * SIGNATURE as f64 - 1e-9).ceil() as usize;
        for i in 0..BANDS {
            let Some(ids) = st.bands.get(&(spec.ns, band(copy.fingerprint, i))) else { continue };
            for id in ids {
                let Some(c) = st.clusters.get(id) else { continue };
                let same = c.fingerprint.iter().zip(copy.fingerprint).filter(|(x, y)| x == y).count();
                let live = now.saturating_duration_since(c.last) < spec.window;
                if c.ns == spec.ns && live && same >= need && best.is_none_or(|(b, _)| same > b) {
                    best = Some((same, *id));
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
                id: wave_id(&c.fingerprint),
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
                    let key = (c.ns, band(&c.fingerprint, i));
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
            fingerprint: Box::new(*copy.fingerprint),
            senders: Vec::new(),
            recipients: Vec::new(),
            last: now,
            detected: false,
            sample,
        };
        for i in 0..BANDS {
            let b = st.bands.entry((ns, band(copy.fingerprint, i))).or_default();
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
