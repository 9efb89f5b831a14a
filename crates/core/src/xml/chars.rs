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
/// case, is one vectorized scan per group and one copy.
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

/// Escape character data: `&`, `<` and `>` (the last so `]]>` can never appear), and CR, which
/// would otherwise be normalized to LF by the next parser.
pub(crate) fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, [b"&<>", b"\r"], |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\r' => Some(b"&#13;"),
        _ => None,
    })
}

/// Escape a single-quoted attribute value; TAB, LF and CR become character references so that
/// attribute-value normalization on the next parse leaves them intact.
pub(crate) fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, [b"&<>", b"'\"\t", b"\n\r"], |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\'' => Some(b"&apos;"),
        b'"' => Some(b"&quot;"),
        b'\t' => Some(b"&#9;"),
        b'\n' => Some(b"&#10;"),
        b'\r' => Some(b"&#13;"),
        _ => None,
    })
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
