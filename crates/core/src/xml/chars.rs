//! Character classes of XML 1.0 (5th ed.) §2.2/§2.3 and the canonical escapes.
//!
//! Everything here works on already-UTF-8-validated text; it never allocates except into the
//! caller's buffer.

/// XML 1.0 `Char`: TAB, LF, CR, and U+0020.. except surrogates, U+FFFE and U+FFFF.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// True if every char of `s` is an XML `Char`. ASCII fast path: only C0 controls can fail there.
pub(crate) fn all_xml_chars(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_ascii() {
        return b.iter().all(|&c| c >= 0x20 || c == b'\t' || c == b'\n' || c == b'\r');
    }
    s.chars().all(is_xml_char)
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

/// XML Namespaces `NCName`: a `Name` without colons.
pub(crate) fn is_ncname(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_ascii() {
        return match b.first() {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            }
            _ => false,
        };
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
