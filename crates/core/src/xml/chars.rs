//! Character classes of XML 1.0 (5th ed.) §2.2/§2.3 and the canonical escapes.
//!
//! Everything here works on already-UTF-8-validated text; it never allocates except into the
//! caller's buffer.

/// XML 1.0 `Char`: TAB, LF, CR, and U+0020.. except surrogates, U+FFFE and U+FFFF.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// True if every char of `s` is an XML `Char`. ASCII fast path: only C0 controls can fail there,
/// so eight bytes are checked at once (no byte with the high bit set, none below 0x20); a word
/// with a control byte is looked at byte by byte (TAB, LF and CR are allowed), and the first
/// non-ASCII byte sends the rest of the text through the per-char check.
pub(crate) fn all_xml_chars(s: &str) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let b = s.as_bytes();
    let mut chunks = b.chunks_exact(8);
    let mut done = 0;
    for c in chunks.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if w & HIGH != 0 {
            // `done` is a char boundary: everything before it is ASCII.
            return s[done..].chars().all(is_xml_char);
        }
        // For ASCII bytes, `(w - 0x20…) & !w & 0x80…` is non-zero exactly when a byte is < 0x20.
        if w.wrapping_sub(0x20 * LOW) & !w & HIGH != 0 && !c.iter().all(|&c| is_ascii_xml_char(c)) {
            return false;
        }
        done += 8;
    }
    let tail = chunks.remainder();
    if tail.is_ascii() {
        tail.iter().all(|&c| is_ascii_xml_char(c))
    } else {
        s[done..].chars().all(is_xml_char)
    }
}

fn is_ascii_xml_char(c: u8) -> bool {
    c >= 0x20 || c == b'\t' || c == b'\n' || c == b'\r'
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

const NAME_START: u8 = 1;
const NAME: u8 = 2;
const NON_ASCII: u8 = 4;

/// Per byte: an ASCII `NameStartChar` without `:` (`NAME_START | NAME`), another ASCII
/// `NameChar` (`NAME`), or a byte of a non-ASCII character (`NON_ASCII`).
const NAME_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() || c == b'_' {
            NAME_START | NAME
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            NAME
        } else if c >= 0x80 {
            NON_ASCII
        } else {
            0
        };
        i += 1;
    }
    t
};

/// XML Namespaces `NCName`: a `Name` without colons.
pub(crate) fn is_ncname(s: &str) -> bool {
    // ASCII names (all of XMPP's) in one pass over a byte-class table; the first non-ASCII byte
    // sends the whole name through the per-char check.
    let b = s.as_bytes();
    match b.first() {
        Some(&c) if NAME_CLASS[usize::from(c)] & NAME_START != 0 => {
            let mut ascii = true;
            for &c in &b[1..] {
                let class = NAME_CLASS[usize::from(c)];
                if class & NON_ASCII != 0 {
                    ascii = false;
                    break;
                }
                if class & NAME != 0 {
                    continue;
                }
                return false;
            }
            if ascii {
                return true;
            }
        }
        Some(&c) if c < 0x80 => return false,
        Some(_) => {}
        None => return false,
    }
    let mut it = s.chars();
    match it.next() {
        Some(c) if is_name_start(c) => it.all(is_name_char),
        _ => false,
    }
}

/// Where the next byte of a set occurs in a text, found with vectorized `memchr` scans: the set is
/// split into groups of at most three bytes, each group's next hit is cached and rescanned only
/// once it has been passed, so a text is scanned a bounded number of times however many bytes
/// need escaping (no quadratic rescans).
struct NextOf<'a, const G: usize> {
    hay: &'a [u8],
    groups: [&'static [u8]; G],
    /// Per group: the next hit at or after the last query (`hay.len()`: none).
    next: [usize; G],
}

impl<'a, const G: usize> NextOf<'a, G> {
    fn new(hay: &'a [u8], groups: [&'static [u8]; G]) -> Self {
        let mut s = NextOf { hay, groups, next: [0; G] };
        for g in 0..G {
            s.next[g] = s.scan(g, 0);
        }
        s
    }

    fn scan(&self, g: usize, from: usize) -> usize {
        let rest = &self.hay[from..];
        let hit = match *self.groups[g] {
            [a] => memchr::memchr(a, rest),
            [a, b] => memchr::memchr2(a, b, rest),
            [a, b, c] => memchr::memchr3(a, b, c, rest),
            _ => None,
        };
        hit.map_or(self.hay.len(), |i| from + i)
    }

    /// The first position at or after `from` holding a byte of the set.
    fn at_or_after(&mut self, from: usize) -> Option<usize> {
        for g in 0..G {
            if self.next[g] < from {
                self.next[g] = self.scan(g, from);
            }
        }
        let first = self.next.iter().copied().min().unwrap_or(self.hay.len());
        (first < self.hay.len()).then_some(first)
    }
}

/// Copy `s` to `out` in runs, replacing the bytes `rep` names (all ASCII, so UTF-8 stays intact);
/// `set` holds exactly those bytes, grouped for the scan. Text without any of them, the common
/// case, is one vectorized scan per group and one copy. Used for long texts (see `LONG_RUN`).
fn escape_with<const G: usize>(
    s: &str,
    out: &mut Vec<u8>,
    set: [&'static [u8]; G],
    rep: impl Fn(u8) -> Option<&'static [u8]>,
) {
    let bytes = s.as_bytes();
    let mut finder = NextOf::new(bytes, set);
    let mut last = 0;
    while let Some(i) = finder.at_or_after(last) {
        out.extend_from_slice(&bytes[last..i]);
        out.extend_from_slice(rep(bytes[i]).unwrap_or(&bytes[i..=i]));
        last = i + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// From this length on a text or value is escaped with `memchr` scans (AVX2 where the CPU has
/// it, chosen at run time); below it a scan's set-up costs more than the text, and checking
/// eight bytes at a time in a `u64` (see `word_has`) is cheaper. Measured with `hotpath_profile
/// serialize` and `serialize4k` (docs/BENCHMARKS.md, issue 14).
const LONG_RUN: usize = 256;

/// The canonical replacement of a byte that must be escaped, `None` for a byte copied as is.
/// Text escapes `&`, `<` and `>` (the last so `]]>` can never appear) and CR, which the next
/// parser would otherwise normalize to LF (XML 1.0 §2.11); attribute values (`ATTR`), single-
/// quoted, also escape both quotes, and TAB and LF, which attribute-value normalization
/// (XML 1.0 §3.3.3) would otherwise turn into spaces.
#[inline(always)]
fn replacement<const ATTR: bool>(b: u8) -> Option<&'static [u8]> {
    match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\r' => Some(b"&#13;"),
        b'\'' if ATTR => Some(b"&apos;"),
        b'"' if ATTR => Some(b"&quot;"),
        b'\t' if ATTR => Some(b"&#9;"),
        b'\n' if ATTR => Some(b"&#10;"),
        _ => None,
    }
}

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Non-zero if some byte of `x` is below `n` (`n` ≤ 0x80); with `n` = 1, if some byte is zero.
/// The classic word-at-a-time test: exact about *whether*, not about *where*.
#[inline(always)]
fn has_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(LOW * u64::from(n)) & !x & HIGH
}

/// Non-zero if one of these eight bytes may need escaping: a prefilter, so it may say yes for a
/// byte that does not (any C0 control, which a parsed tree never holds), never no for one that
/// does. Merged tests: `<` 0x3C and `>` 0x3E differ in one bit, as do `&` 0x26 and `'` 0x27;
/// TAB, LF and CR are below 0x0E. About 1.5 instructions per byte for text, 2 for attributes.
#[inline(always)]
fn word_has<const ATTR: bool>(w: u64) -> u64 {
    let common = has_below(w, 0x0E) | has_below((w | (2 * LOW)) ^ (u64::from(b'>') * LOW), 1);
    if ATTR {
        common | has_below((w | LOW) ^ (u64::from(b'\'') * LOW), 1) | has_below(w ^ (u64::from(b'"') * LOW), 1)
    } else {
        common | has_below(w ^ (u64::from(b'&') * LOW), 1)
    }
}

/// Copy `s` to `out` in runs between the bytes that need escaping, with their replacements in
/// between: each 8-byte word without such a byte (nearly all of them) is passed over with one
/// word test, and a run is copied with one `extend_from_slice`.
fn escape_short<const ATTR: bool>(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let len = bytes.len();
    out.reserve(len);
    // Start of the run not yet copied.
    let mut run = 0;
    if len < 8 {
        // One word, padded with a byte that never needs escaping.
        let mut w = u64::from_le_bytes([b'a'; 8]);
        for (k, &b) in bytes.iter().enumerate() {
            w = (w & !(0xFF << (8 * k))) | (u64::from(b) << (8 * k));
        }
        if word_has::<ATTR>(w) != 0 {
            escape_bytes::<ATTR>(bytes, 0, len, &mut run, out);
        }
    } else {
        let mut words = bytes.chunks_exact(8);
        let mut i = 0;
        for word in words.by_ref() {
            if word_has::<ATTR>(u64::from_le_bytes(word.try_into().unwrap_or_default())) != 0 {
                escape_bytes::<ATTR>(bytes, i, i + 8, &mut run, out);
            }
            i += 8;
        }
        // The rest, as the last eight bytes: those before `i` were handled already.
        if i < len && word_has::<ATTR>(u64::from_le_bytes(bytes[len - 8..].try_into().unwrap_or_default())) != 0 {
            escape_bytes::<ATTR>(bytes, i, len, &mut run, out);
        }
    }
    out.extend_from_slice(&bytes[run..]);
}

/// The byte-by-byte part of [`escape_short`]: `bytes[from..to]`, where a word test fired.
#[inline(always)]
fn escape_bytes<const ATTR: bool>(bytes: &[u8], from: usize, to: usize, run: &mut usize, out: &mut Vec<u8>) {
    for j in from..to {
        if let Some(rep) = replacement::<ATTR>(bytes[j]) {
            out.extend_from_slice(&bytes[*run..j]);
            out.extend_from_slice(rep);
            *run = j + 1;
        }
    }
}

/// Escape character data (see [`replacement`] for which bytes and why).
pub(crate) fn escape_text(s: &str, out: &mut Vec<u8>) {
    if s.len() >= LONG_RUN {
        escape_with(s, out, [b"&<>", b"\r"], replacement::<false>)
    } else {
        escape_short::<false>(s, out)
    }
}

/// Escape a single-quoted attribute value (see [`replacement`] for which bytes and why).
pub(crate) fn escape_attr(s: &str, out: &mut Vec<u8>) {
    if s.len() >= LONG_RUN {
        escape_with(s, out, [b"&<>", b"'\"\t", b"\n\r"], replacement::<true>)
    } else {
        escape_short::<true>(s, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-char definition, as the reference for the table-driven ASCII path.
    fn is_ncname_reference(s: &str) -> bool {
        let mut it = s.chars();
        match it.next() {
            Some(c) if is_name_start(c) => it.all(is_name_char),
            _ => false,
        }
    }

    proptest::proptest! {
        #[test]
        fn table_name_check_is_the_per_char_one(s in "[a-zA-Z0-9_.:\\- é·\u{300}\u{2070}\u{D7}]{0,12}") {
            proptest::prop_assert_eq!(is_ncname(&s), is_ncname_reference(&s), "{:?}", s);
        }
    }

    #[test]
    fn names() {
        assert!(is_ncname("message"));
        assert!(is_ncname("_a-b.c9"));
        assert!(is_ncname("ñame"));
        assert!(!is_ncname("9lives"));
        assert!(!is_ncname("a:b"));
        assert!(!is_ncname(""));
        assert!(!is_ncname("-x"));
    }

    /// The per-char definition, as the reference for the word-at-a-time check.
    fn all_xml_chars_reference(s: &str) -> bool {
        s.chars().all(is_xml_char)
    }

    proptest::proptest! {
        #[test]
        fn word_at_a_time_char_check_is_the_per_char_one(s in "[ -~\t\n\r\u{0}-\u{1f}é😀\u{FFFE}\u{FFFF}\u{D7FF}\u{E000}]{0,40}") {
            proptest::prop_assert_eq!(all_xml_chars(&s), all_xml_chars_reference(&s), "{:?}", s);
        }
    }

    #[test]
    fn xml_chars_at_every_offset() {
        // A bad byte at every position of a word and of the tail, after ASCII and after
        // non-ASCII text.
        for bad in ["\u{0}", "\u{1f}", "\u{FFFE}", "\u{7}"] {
            for prefix in ["", "é", "abcdefgh"] {
                for i in 0..20 {
                    let s = format!("{prefix}{}{bad}{}", "a".repeat(i), "b".repeat(20 - i));
                    assert!(!all_xml_chars(&s), "{s:?}");
                    assert!(all_xml_chars(&s.replace(bad, "\t")), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn xml_chars() {
        assert!(all_xml_chars("hello\tworld\r\n"));
        assert!(!all_xml_chars("nul\u{0}"));
        assert!(!all_xml_chars("bell\u{7}"));
        assert!(!all_xml_chars("nonchar\u{FFFE}"));
        assert!(all_xml_chars("emoji \u{1F600}"));
    }

    /// The byte-by-byte escaping the run-copying one replaced, as the reference.
    fn reference(s: &str, attr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in s.as_bytes() {
            match (b, attr) {
                (b'&', _) => out.extend_from_slice(b"&amp;"),
                (b'<', _) => out.extend_from_slice(b"&lt;"),
                (b'>', _) => out.extend_from_slice(b"&gt;"),
                (b'\r', _) => out.extend_from_slice(b"&#13;"),
                (b'\'', true) => out.extend_from_slice(b"&apos;"),
                (b'"', true) => out.extend_from_slice(b"&quot;"),
                (b'\t', true) => out.extend_from_slice(b"&#9;"),
                (b'\n', true) => out.extend_from_slice(b"&#10;"),
                _ => out.push(b),
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn run_copying_escapes_like_the_byte_loop(s in "[a<>&'\"\t\n\r é😀]{0,64}") {
            let (mut text, mut attr) = (Vec::new(), Vec::new());
            escape_text(&s, &mut text);
            escape_attr(&s, &mut attr);
            proptest::prop_assert_eq!(text, reference(&s, false));
            proptest::prop_assert_eq!(attr, reference(&s, true));
        }

        /// Mostly plain text with a few special bytes, at lengths on both sides of `LONG_RUN`
        /// and of every word boundary: the word scan, its padded and overlapping tails, and
        /// the `memchr` path all escape like the byte loop.
        #[test]
        fn word_and_long_scans_escape_like_the_byte_loop(
            s in "([a-z é😀]{0,40}[<>&'\"\t\n\r]?){0,12}",
            pad in 0usize..300,
        ) {
            let s = format!("{}{s}", "x".repeat(pad));
            let (mut text, mut attr) = (Vec::new(), Vec::new());
            escape_text(&s, &mut text);
            escape_attr(&s, &mut attr);
            proptest::prop_assert_eq!(text, reference(&s, false));
            proptest::prop_assert_eq!(attr, reference(&s, true));
        }
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        escape_text("a<b&c>]]>\r", &mut out);
        assert_eq!(out, b"a&lt;b&amp;c&gt;]]&gt;&#13;");
        out.clear();
        escape_attr("it's \"x\"\n", &mut out);
        assert_eq!(out, b"it&apos;s &quot;x&quot;&#10;");
    }
}
