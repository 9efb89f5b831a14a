//! Character data and references (XML 1.0 §2.4, §4.1): where text may safely end in a partial
//! buffer, newline normalization (§2.11), and decoding the five predefined entities and
//! character references into text. Anything else after `&` is refused: RFC 6120 §11.1 forbids
//! entity declarations, so no other entity can be defined.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use crate::xml::chars::all_xml_chars;
use crate::xml::XmlError;

/// How much of an unterminated text run can be decoded now: stop before a partial UTF-8
/// sequence, an unterminated reference, or a trailing CR (which may start a CRLF pair).
pub(super) fn safe_text_end(rest: &[u8]) -> Result<usize, XmlError> {
    let mut end = rest.len();
    if let Some(amp) = memchr::memrchr(b'&', rest) {
        if memchr(b';', &rest[amp..]).is_none() {
            if rest.len() - amp > 12 {
                return Err(XmlError::Restricted("entity references are not allowed"));
            }
            end = amp;
        }
    }
    // Back off over a partial multi-byte UTF-8 sequence.
    let mut start = end;
    while start > 0 && end - start < 4 && (rest[start - 1] & 0xC0) == 0x80 {
        start -= 1;
    }
    if start > 0 && rest[start - 1] >= 0xC0 {
        let lead = rest[start - 1];
        let need = if lead >= 0xF0 {
            4
        } else if lead >= 0xE0 {
            3
        } else {
            2
        };
        if end - (start - 1) < need {
            end = start - 1;
        }
    }
    // A trailing CR may start a CRLF pair, and `]]>` split across reads must still be seen:
    // hold back one CR, or at most two `]`. Never more: a peer trickling `]` or CR one byte at a
    // time would otherwise make every read rescan all of them (quadratic time).
    if end > 0 && rest[end - 1] == b'\r' {
        end -= 1;
    } else {
        let mut held = 0;
        while held < 2 && end > 0 && rest[end - 1] == b']' {
            end -= 1;
            held += 1;
        }
    }
    Ok(end)
}

pub(super) fn normalize_newlines(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\r') {
        std::borrow::Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Decode character data: UTF-8, XML `Char`s, no `]]>`, predefined entities and character
/// references only (RFC 6120 §11.1), CRLF normalized.
pub(super) fn decode_text(raw: &[u8]) -> Result<Cow<'_, str>, XmlError> {
    let s = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
    if !all_xml_chars(s) {
        return Err(XmlError::InvalidChar);
    }
    if memchr::memmem::find(s.as_bytes(), b"]]>").is_some() {
        return Err(XmlError::NotWellFormed("']]>' in character data"));
    }
    resolve_refs(s, false)
}

/// Decode an attribute value: like text, plus `<` is forbidden and whitespace is normalized to
/// spaces (XML 1.0 §3.3.3).
pub(super) fn decode_attr(raw: &str) -> Result<Cow<'_, str>, XmlError> {
    if !all_xml_chars(raw) {
        return Err(XmlError::InvalidChar);
    }
    if memchr(b'<', raw.as_bytes()).is_some() {
        return Err(XmlError::NotWellFormed("'<' in attribute value"));
    }
    resolve_refs(raw, true)
}

/// Borrowed when there is nothing to resolve or normalize (the common case): the caller decides
/// whether it needs an owned copy at all.
fn resolve_refs(s: &str, attr: bool) -> Result<Cow<'_, str>, XmlError> {
    // Vectorized scans for the bytes that change anything; the common value or text has none
    // and is copied as it is.
    let b = s.as_bytes();
    let plain = memchr2(b'&', b'\r', b).is_none() && !(attr && memchr2(b'\t', b'\n', b).is_some());
    if plain {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let (lit, tail) = match memchr(b'&', rest.as_bytes()) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let lit = normalize_newlines(lit);
        if attr {
            out.extend(lit.chars().map(|c| if matches!(c, '\t' | '\n') { ' ' } else { c }));
        } else {
            out.push_str(&lit);
        }
        let Some(tail) = tail else { break };
        let semi = memchr(b';', tail.as_bytes()).ok_or(XmlError::NotWellFormed("unterminated reference"))?;
        let name = &tail[..semi];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ if name.starts_with("#x") => char_ref(&name[2..], 16)?,
            _ if name.starts_with('#') => char_ref(&name[1..], 10)?,
            _ => return Err(XmlError::Restricted("entity references are not allowed")),
        };
        out.push(c);
        rest = &tail[semi + 1..];
    }
    Ok(Cow::Owned(out))
}

fn char_ref(digits: &str, radix: u32) -> Result<char, XmlError> {
    if digits.is_empty() || digits.len() > 8 || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(XmlError::NotWellFormed("invalid character reference"));
    }
    let v = u32::from_str_radix(digits, radix).map_err(|_| XmlError::InvalidChar)?;
    match char::from_u32(v) {
        Some(c) if crate::xml::chars::is_xml_char(c) => Ok(c),
        _ => Err(XmlError::InvalidChar),
    }
}
