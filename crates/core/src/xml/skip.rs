//! Skip mode: step over the rest of one stanza without building it.
//!
//! Used on the backend leg only (see `StreamReader::skip_over_limits`): a stanza that breaks a
//! size, depth or namespace rule is scanned to its end at byte level — tags counted, text and
//! attribute values discarded as they pass — so skipping costs no memory however large the
//! stanza is. Comments, PIs and DTDs are still fatal (restricted XML is never skipped).

use memchr::{memchr, memchr3};

use super::{Element, XmlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Between tags.
    Text,
    /// Inside `<name …`, with the open quote (0 = none) and whether the last byte was `/`.
    Start { quote: u8, slash: bool },
    /// Inside `</name …`.
    End,
    /// Inside `<![CDATA[ … ]]>`, with how many of the closing `]]` were seen.
    Cdata { brackets: u8 },
}

/// The state of one stanza being skipped.
#[derive(Debug)]
pub(crate) struct Skip {
    /// Open elements of the stanza (0 before its root start tag was scanned).
    depth: usize,
    token: Token,
    pub(crate) reason: XmlError,
    pub(crate) root: Option<Element>,
}

const CDATA: &[u8] = b"<![CDATA[";

impl Skip {
    pub(crate) fn new(depth: usize, reason: XmlError, root: Option<Element>) -> Self {
        Skip { depth, token: Token::Text, reason, root }
    }

    /// Scan `data`; returns how many bytes were consumed and whether the stanza ended.
    pub(crate) fn scan(&mut self, data: &[u8]) -> Result<(usize, bool), XmlError> {
        let mut i = 0;
        while i < data.len() {
            match self.token {
                Token::Text => match memchr(b'<', &data[i..]) {
                    None => return Ok((data.len(), false)),
                    Some(j) => {
                        i += j;
                        let rest = &data[i..];
                        if rest.len() < 2 {
                            return Ok((i, false));
                        }
                        match rest[1] {
                            b'/' => {
                                self.token = Token::End;
                                i += 2;
                            }
                            b'!' => {
                                let n = rest.len().min(CDATA.len());
                                if !CDATA.starts_with(&rest[..n]) {
                                    return Err(XmlError::Restricted("comments and DTDs are not allowed"));
                                }
                                if n < CDATA.len() {
                                    return Ok((i, false));
                                }
                                self.token = Token::Cdata { brackets: 0 };
                                i += CDATA.len();
                            }
                            b'?' => return Err(XmlError::Restricted("processing instructions are not allowed")),
                            _ => {
                                self.token = Token::Start { quote: 0, slash: false };
                                i += 1;
                            }
                        }
                    }
                },
                Token::Start { quote: q, .. } if q != 0 => match memchr(q, &data[i..]) {
                    None => return Ok((data.len(), false)),
                    Some(j) => {
                        i += j + 1;
                        self.token = Token::Start { quote: 0, slash: false };
                    }
                },
                Token::Start { slash, .. } => match memchr3(b'>', b'\'', b'"', &data[i..]) {
                    None => {
                        let last = data.iter().rev().find(|b| !b.is_ascii_whitespace());
                        let slash = last.map_or(slash, |&b| b == b'/');
                        self.token = Token::Start { quote: 0, slash };
                        return Ok((data.len(), false));
                    }
                    Some(j) => {
                        let b = data[i + j];
                        let before = data[i..i + j].iter().rev().find(|b| !b.is_ascii_whitespace());
                        let slash = before.map_or(slash, |&c| c == b'/');
                        i += j + 1;
                        if b == b'>' {
                            self.token = Token::Text;
                            if !slash {
                                self.depth += 1;
                            } else if self.depth == 0 {
                                return Ok((i, true));
                            }
                        } else {
                            self.token = Token::Start { quote: b, slash: false };
                        }
                    }
                },
                Token::End => match memchr(b'>', &data[i..]) {
                    None => return Ok((data.len(), false)),
                    Some(j) => {
                        i += j + 1;
                        self.token = Token::Text;
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            return Ok((i, true));
                        }
                    }
                },
                Token::Cdata { brackets } => {
                    let b = data[i];
                    i += 1;
                    self.token = match (b, brackets) {
                        (b'>', 2) => Token::Text,
                        (b']', n) => Token::Cdata { brackets: (n + 1).min(2) },
                        _ => Token::Cdata { brackets: 0 },
                    };
                }
            }
        }
        Ok((i, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(depth: usize, input: &[u8], chunk: usize) -> Option<usize> {
        let mut s = Skip::new(depth, XmlError::TooDeep { limit: 1 }, None);
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0;
        for part in input.chunks(chunk) {
            buf.extend_from_slice(part);
            let (n, done) = s.scan(&buf).ok()?;
            buf.drain(..n);
            total += n;
            if done {
                return Some(total);
            }
        }
        None
    }

    #[test]
    fn finds_the_end_of_the_stanza_in_any_chunking() {
        let stanza = b"<message a='x>y' b=\"/>\"><body>t<![CDATA[</body>]]]>&amp;</body><x/><y z='1' /></message>";
        let tail = b"<presence/>";
        let mut input = stanza.to_vec();
        input.extend_from_slice(tail);
        for chunk in 1..input.len() {
            assert_eq!(skip_all(0, &input, chunk), Some(stanza.len()), "chunk {chunk}");
        }
        // Started inside the stanza, two elements deep (message and body open).
        let inner = b"more text</body><x/></message><presence/>";
        assert_eq!(skip_all(2, inner, 3), Some(inner.len() - 11));
        // A self-closing root ends at once.
        assert_eq!(skip_all(0, b"<iq a='1'/><next/>", 1), Some(11));
    }

    #[test]
    fn restricted_markup_is_still_fatal() {
        let mut s = Skip::new(1, XmlError::TooDeep { limit: 1 }, None);
        assert!(s.scan(b"<!-- c -->").is_err());
        let mut s = Skip::new(1, XmlError::TooDeep { limit: 1 }, None);
        assert!(s.scan(b"<?pi?>").is_err());
    }
}
