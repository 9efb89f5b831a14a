//! HTTP File Upload (XEP-0363) through the gateway: the slot URLs the server hands out are
//! rewritten to point at the gateway's `http-upload` listener, whose requests are parsed here.
//!
//! XEP-0363 §5: the client asks the upload service for a slot and receives a `<put url>` (with
//! headers to send) and a `<get url>`. On the `c2s-out` path [`rewrite_slot`] replaces their
//! scheme and authority with the gateway's public base URL, keeping path and query (the
//! service's token lives there or in the PUT's headers), so the only place a client can upload
//! to is the inspecting proxy. [`parse_head`] reads one HTTP/1.1 request head, bounded, and
//! tells the daemon what the body is: a PUT must declare its `Content-Length` (the declared
//! size is checked before a byte moves, and the body's end is known without chunked framing).

use crate::xml::{Element, Node};

/// XEP-0363 namespace.
pub const NS_HTTP_UPLOAD: &str = "urn:xmpp:http:upload:0";
/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted in a head.
const MAX_HEADERS: usize = 64;

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Headers in order, except hop-by-hop ones (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`,
    /// `Upgrade`, `Trailer`), which the proxy sets itself.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `Content-Length`, when present.
    pub content_length: Option<u64>,
    /// Bytes of the head (the body starts there).
    pub head_len: usize,
}

/// Why a request head is refused (the daemon answers with the status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or malformed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers.
    #[error("request head too large")]
    TooLarge,
    /// A PUT with `Transfer-Encoding` or without `Content-Length` (411).
    #[error("a PUT must declare its Content-Length")]
    LengthRequired,
}

impl HeadError {
    /// The HTTP status answering it.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::LengthRequired => 411,
        }
    }
}

fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Parse the head at the start of `buf`: `Ok(None)` needs more bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("the request target must be a path".into()));
    }
    let mut content_length = None;
    let mut chunked = false;
    let mut out = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok().and_then(|s| s.trim().parse::<u64>().ok());
            match (v, content_length) {
                (Some(n), None) => content_length = Some(n),
                // Two lengths, or one that is not a number: request smuggling material.
                _ => return Err(HeadError::Malformed("bad or repeated Content-Length".into())),
            }
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
        if !hop_by_hop(h.name) {
            out.push((h.name.to_owned(), h.value.to_vec()));
        }
    }
    if chunked && (method == "PUT" || content_length.is_some()) {
        return Err(HeadError::LengthRequired);
    }
    if method == "PUT" && content_length.is_none() {
        return Err(HeadError::LengthRequired);
    }
    Ok(Some(RequestHead { method, target, headers: out, content_length, head_len }))
}

impl RequestHead {
    /// The head as forwarded to the upload service: one request per connection.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// `http(s)://authority/path?query` → `base` + `/path?query`; `None` if `url` is not http(s).
fn rebase(url: &str, base: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    Some(format!("{}{}", base.trim_end_matches('/'), path))
}

/// XEP-0363 §5: in a slot (an iq result carrying `<slot xmlns='urn:xmpp:http:upload:0'>`),
/// point `<put url>` and `<get url>` at `base`. Returns true if the stanza was a slot.
pub fn rewrite_slot(el: &mut Element, base: &str) -> bool {
    if el.name != "iq" || el.attr("type") != Some("result") {
        return false;
    }
    let mut found = false;
    for node in &mut el.children {
        let Node::Element(slot) = node else { continue };
        if !slot.is(NS_HTTP_UPLOAD, "slot") {
            continue;
        }
        found = true;
        for node in &mut slot.children {
            let Node::Element(u) = node else { continue };
            if !(u.is(NS_HTTP_UPLOAD, "put") || u.is(NS_HTTP_UPLOAD, "get")) {
                continue;
            }
            // A URL that is not http(s) cannot be proxied: it is removed, never left pointing
            // past the gateway.
            match u.attr("url").and_then(|url| rebase(url, base)) {
                Some(new) => u.set_attr("url", new),
                None => {
                    u.remove_attr("url");
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_heads_must_declare_their_length() {
        let head = b"PUT /file_share/abc/x.txt HTTP/1.1\r\nHost: up.example.test\r\nContent-Length: 12\r\nConnection: keep-alive\r\nAuthorization: Bearer t\r\n\r\nhello";
        let h = parse_head(head).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.content_length),
            ("PUT", "/file_share/abc/x.txt", Some(12))
        );
        assert_eq!(&head[h.head_len..], b"hello");
        let out = String::from_utf8(h.to_bytes()).unwrap();
        assert!(out.contains("Authorization: Bearer t\r\n") && out.ends_with("Connection: close\r\n\r\n"));
        assert!(!out.contains("keep-alive"));
        assert_eq!(parse_head(b"PUT /x HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
        assert_eq!(parse_head(b"PUT /x HTTP/1.1\r\n\r\n").unwrap_err(), HeadError::LengthRequired);
        assert_eq!(
            parse_head(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").unwrap_err(),
            HeadError::LengthRequired
        );
        assert!(matches!(
            parse_head(b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(parse_head(b"GET http://evil.test/ HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD + 1]).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn slots_point_at_the_gateway() {
        let mut r = crate::xml::StreamReader::new(crate::xml::XmlLimits::default());
        r.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
            <iq type='result' id='s1' from='upload.example.test'><slot xmlns='urn:xmpp:http:upload:0'>\
            <put url='https://upload.example.test:5281/file_share/tok/a%20b.txt?v=1'><header name='Authorization'>x</header></put>\
            <get url='https://upload.example.test:5281/file_share/tok/a%20b.txt'/></slot></iq>");
        let mut el = loop {
            if let Ok(Some(crate::xml::XmlEvent::Stanza(e))) = r.next_event() {
                break e;
            }
        };
        assert!(rewrite_slot(&mut el, "https://gw.example.test:5443/"));
        let slot = el.child(NS_HTTP_UPLOAD, "slot").unwrap();
        assert_eq!(
            slot.child(NS_HTTP_UPLOAD, "put").unwrap().attr("url"),
            Some("https://gw.example.test:5443/file_share/tok/a%20b.txt?v=1")
        );
        assert_eq!(
            slot.child(NS_HTTP_UPLOAD, "get").unwrap().attr("url"),
            Some("https://gw.example.test:5443/file_share/tok/a%20b.txt")
        );
    }
}
