//! The HTTP/1.1 side of a BOSH listener's connection: requests in, what to do with each out.
//! Sans-IO: the daemon feeds the bytes it read and writes what it is told.
//!
//! A connection carries requests one after the other (keep-alive). Each is one of: a BOSH
//! `POST` on the configured path ([`HttpEvent::Post`], its body for the session), a CORS
//! preflight `OPTIONS` (browsers send one before a cross-origin `POST` of `text/xml`), an
//! XEP-0156 host-meta `GET`, or a refusal with a status and a plain-text reason: a head over
//! [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields (431), an unknown path (404) or method (405), a
//! body without `Content-Length` or with `Transfer-Encoding` (411: the cap is checked before a
//! body byte is buffered, which a chunked body would not allow), a body over
//! `max_request_bytes` (413), an `Origin` the listener does not allow (403: a page on another
//! site must not drive a user's session, the same rule as the WebSocket listener's). A refusal
//! closes the connection; nothing here reads a clock or a socket.

use super::super::http::{
    head_end, host_meta_for, origin_allowed, Answer, HostMetaLink, MAX_HEAD, MAX_HEADERS, REL_XBOSH,
};
use super::BoshConfig;

/// What to do next on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    /// Write `response`; close the connection after it when `close`.
    Respond {
        /// The whole response.
        response: Vec<u8>,
        /// Close after writing.
        close: bool,
        /// The status, for logs.
        status: u16,
        /// Why, for logs.
        why: String,
    },
    /// A BOSH request: give `body` to the session, then write [`ok`] with its answer.
    Post {
        /// The request body.
        body: Vec<u8>,
        /// The allowed `Origin` to echo in `Access-Control-Allow-Origin`.
        cors: Option<String>,
        /// Keep the connection open after the answer.
        keep_alive: bool,
    },
}

#[derive(Debug)]
enum State {
    Head,
    Body {
        len: usize,
        cors: Option<String>,
        keep_alive: bool,
    },
    /// A refusal was given: nothing more is read.
    Closed,
}

/// Reads the requests of one connection.
#[derive(Debug)]
pub struct HttpReader {
    buf: Vec<u8>,
    state: State,
}

impl Default for HttpReader {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpReader {
    /// A reader at the start of a connection.
    pub fn new() -> Self {
        HttpReader { buf: Vec::new(), state: State::Head }
    }

    /// More bytes from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Closed) {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes buffered and not yet part of an event (the daemon stops reading past a bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next thing to do, once a request is complete.
    pub fn next_event(&mut self, cfg: &BoshConfig) -> Option<HttpEvent> {
        match &self.state {
            State::Closed => None,
            State::Head => {
                let Some(end) = head_end(&self.buf) else {
                    return (self.buf.len() > MAX_HEAD).then(|| self.refuse(431, "request head too large", None));
                };
                if end > MAX_HEAD {
                    return Some(self.refuse(431, "request head too large", None));
                }
                let head: Vec<u8> = self.buf.drain(..end).collect();
                let event = self.on_head(&head, cfg);
                match event {
                    Some(e) => Some(e),
                    // A POST head: its body follows.
                    None => self.next_event(cfg),
                }
            }
            State::Body { len, cors, keep_alive } => {
                if self.buf.len() < *len {
                    return None;
                }
                let (len, cors, keep_alive) = (*len, cors.clone(), *keep_alive);
                let body: Vec<u8> = self.buf.drain(..len).collect();
                self.state = State::Head;
                Some(HttpEvent::Post { body, cors, keep_alive })
            }
        }
    }

    fn refuse(&mut self, status: u16, why: &str, cors: Option<&str>) -> HttpEvent {
        self.state = State::Closed;
        self.buf = Vec::new();
        HttpEvent::Respond { response: refusal(status, why, cors), close: true, status, why: why.to_owned() }
    }

    /// `None` when the head was a POST whose body is now awaited.
    fn on_head(&mut self, head: &[u8], cfg: &BoshConfig) -> Option<HttpEvent> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Some(self.refuse(400, "incomplete request head", None)),
            Err(httparse::Error::TooManyHeaders) => return Some(self.refuse(431, "too many header fields", None)),
            Err(e) => return Some(self.refuse(400, &format!("malformed request: {e}"), None)),
        }
        let values = |name: &str| -> Vec<&str> {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).map(str::trim).unwrap_or("\u{fffd}"))
                .collect()
        };
        let Some(host) = values("host").first().copied() else {
            return Some(self.refuse(400, "a Host header is required (HTTP/1.1)", None));
        };
        let origin = values("origin").first().map(|o| o.to_string());
        if let Some(o) = &origin {
            if !origin_allowed(o, host, &cfg.origins) {
                return Some(self.refuse(403, "this Origin may not open XMPP sessions here (allowed_origins)", None));
            }
        }
        let cors = origin.as_deref();
        let close_asked =
            values("connection").iter().flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case("close"));
        let keep_alive = req.version == Some(1) && !close_asked;
        let target = req.path.unwrap_or_default();
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let method = req.method.unwrap_or_default();
        match (method, path) {
            ("GET", "/.well-known/host-meta" | "/.well-known/host-meta.json") => {
                let own = HostMetaLink {
                    rel: REL_XBOSH,
                    scheme: "https",
                    port: None,
                    path: cfg.path.clone(),
                    public_url: cfg.public_url.clone(),
                };
                let json = path.ends_with(".json");
                let Answer::Respond { response, status, why } =
                    host_meta_for(host, &cfg.domains, &own, &cfg.links, json)
                else {
                    return Some(self.refuse(500, "host-meta", None));
                };
                self.state = State::Closed;
                Some(HttpEvent::Respond { response, close: true, status, why })
            }
            ("OPTIONS", p) if p == cfg.path => {
                // The CORS preflight (Fetch standard §4.8): allowed origins may POST text/xml.
                let mut response = b"HTTP/1.1 204 No Content\r\n".to_vec();
                cors_headers(cors, &mut response);
                response.extend_from_slice(
                    b"Access-Control-Allow-Methods: POST, OPTIONS\r\nAccess-Control-Allow-Headers: Content-Type\r\n\
                      Access-Control-Max-Age: 86400\r\nContent-Length: 0\r\n",
                );
                finish(&mut response, keep_alive);
                if !keep_alive {
                    self.state = State::Closed;
                }
                Some(HttpEvent::Respond { response, close: !keep_alive, status: 204, why: "CORS preflight".into() })
            }
            ("POST", p) if p == cfg.path => {
                if !values("transfer-encoding").is_empty() {
                    return Some(self.refuse(411, "send the body with a Content-Length (no Transfer-Encoding)", cors));
                }
                let lengths = values("content-length");
                let len = match lengths.as_slice() {
                    [one] if !one.is_empty() && one.len() <= 12 && one.bytes().all(|b| b.is_ascii_digit()) => {
                        one.parse::<usize>().unwrap_or(usize::MAX)
                    }
                    [] => return Some(self.refuse(411, "a Content-Length is required", cors)),
                    _ => return Some(self.refuse(400, "one numeric Content-Length is required", cors)),
                };
                if len > cfg.max_request_bytes {
                    let why = format!("the request body exceeds {} bytes", cfg.max_request_bytes);
                    return Some(self.refuse(413, &why, cors));
                }
                self.state = State::Body { len, cors: origin, keep_alive };
                None
            }
            (_, p) if p == cfg.path => Some(self.refuse(405, "this is a BOSH endpoint (XEP-0124): POST only", cors)),
            _ => Some(self.refuse(404, "no such resource", cors)),
        }
    }
}

fn cors_headers(origin: Option<&str>, out: &mut Vec<u8>) {
    if let Some(o) = origin {
        // Only an origin the listener allowed gets here, and it is echoed (not `*`): the
        // browser then lets that page, and only that page, read the answer.
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(b"\r\nVary: Origin\r\n");
    }
}

fn finish(out: &mut Vec<u8>, keep_alive: bool) {
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
}

/// The `200` carrying a session's `<body/>`.
pub fn ok(body: &[u8], cors: Option<&str>, keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    )
    .into_bytes();
    cors_headers(cors, &mut out);
    finish(&mut out, keep_alive);
    out.extend_from_slice(body);
    out
}

/// A refusal with a plain-text reason; the connection closes after it.
pub fn refusal(status: u16, why: &str, cors: Option<&str>) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = format!("{why}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if status == 405 {
        out.extend_from_slice(b"Allow: POST, OPTIONS\r\n");
    }
    cors_headers(cors, &mut out);
    finish(&mut out, false);
    out.extend_from_slice(body.as_bytes());
    out
}
