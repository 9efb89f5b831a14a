//! The one HTTP request a web listener's connection reads: the WebSocket opening handshake
//! (RFC 6455 §4.2) on the configured path, or an XEP-0156 host-meta document. Sans-IO: the
//! request head's bytes in, the response's bytes out.
//!
//! It refuses, with a status and a plain-text reason: a head over [`MAX_HEAD`] bytes or
//! [`MAX_HEADERS`] fields (431), anything but `GET` (405), a path it does not serve (404), a
//! request that is not a version-13 WebSocket upgrade (426, 400), an `Origin` the listener does
//! not allow (403: cross-site WebSocket hijacking, RFC 6455 §10.2), and a handshake that does not
//! offer the `xmpp` subprotocol (400: RFC 7395 §3.1 — a connection without it would not carry
//! XMPP framing). Nothing here reads a clock or a socket.

use base64::Engine;

use super::{Origins, WebConfig};

/// Longest request head accepted (request line and header fields).
pub const MAX_HEAD: usize = 8192;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 48;
/// RFC 6455 §1.3: the GUID appended to `Sec-WebSocket-Key`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// XEP-0156 §3: the link relation of a WebSocket endpoint.
pub const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Switch to WebSocket: `response` is the `101`; the rest of the connection is frames.
    Upgrade {
        /// The response head.
        response: Vec<u8>,
    },
    /// Answer and close: a host-meta document, or a refusal.
    Respond {
        /// The whole response.
        response: Vec<u8>,
        /// The status, for the close reason.
        status: u16,
        /// Why, for the close reason.
        why: String,
    },
}

/// Where the request head ends (`\r\n\r\n`), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Answer the request whose complete head is `head`.
pub fn answer(head: &[u8], cfg: &WebConfig) -> Answer {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return refuse(400, "incomplete request head"),
        Err(httparse::Error::TooManyHeaders) => return refuse(431, "too many header fields"),
        Err(e) => return refuse(400, &format!("malformed request: {e}")),
    }
    let header = |name: &str| -> Option<&str> {
        let mut found = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        let first = found.next()?;
        std::str::from_utf8(first.value).ok().map(str::trim)
    };
    // Every value of a list-valued field, split on commas (RFC 9110 §5.3: repeated fields are
    // one comma-separated list).
    let tokens = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    };
    if req.method != Some("GET") {
        return refuse(405, "only GET is served here");
    }
    let target = req.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(host) = header("host") else { return refuse(400, "a Host header is required (HTTP/1.1)") };
    match path {
        "/.well-known/host-meta" => return host_meta(host, cfg, false),
        "/.well-known/host-meta.json" => return host_meta(host, cfg, true),
        p if p == cfg.path => {}
        _ => return refuse(404, "no such resource"),
    }
    if req.version != Some(1)
        || !tokens("upgrade").iter().any(|t| t.eq_ignore_ascii_case("websocket"))
        || !tokens("connection").iter().any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return refuse(426, "this resource is an XMPP WebSocket endpoint (RFC 7395): send a WebSocket upgrade");
    }
    if header("sec-websocket-version") != Some("13") {
        return refuse(426, "WebSocket version 13 is required");
    }
    let key = header("sec-websocket-key").unwrap_or_default();
    // RFC 6455 §4.2.1 item 5: the key is 16 random bytes in base64.
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64"),
    }
    if let Some(origin) = header("origin") {
        if !origin_allowed(origin, host, &cfg.origins) {
            return refuse(403, "this Origin may not open XMPP sessions here (allowed_origins)");
        }
    }
    // Subprotocol names are case-sensitive tokens (RFC 6455 §4.1 item 10, §11.5).
    if !tokens("sec-websocket-protocol").iter().any(|t| t == "xmpp") {
        return refuse(400, "the WebSocket subprotocol 'xmpp' is required (RFC 7395 §3.1)");
    }
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
    );
    Answer::Upgrade { response: response.into_bytes() }
}

/// Is a browser page from `origin` allowed to open a session? `host` is the request's `Host`.
pub(crate) fn origin_allowed(origin: &str, host: &str, origins: &Origins) -> bool {
    match origins {
        Origins::Any => true,
        Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        // Same host name over https, any port: a page on https://example.org may use the
        // gateway at example.org:5443; a page on any other site may not.
        Origins::SameHost => origin
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("https://"))
            .and_then(|_| origin.get(8..))
            .is_some_and(|rest| host_name(rest).eq_ignore_ascii_case(host_name(host))),
    }
}

/// `host[:port]` without the port.
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Is `name` one of the gateway's domains (a certificate name, `*.domain` for one label)?
fn serves(name: &str, domains: &[String]) -> bool {
    domains.iter().any(|d| match d.strip_prefix("*.") {
        Some(parent) => {
            name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent))
        }
        None => d.eq_ignore_ascii_case(name),
    })
}

/// One endpoint host-meta advertises (XEP-0156 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMetaLink {
    /// The link relation ([`REL_WEBSOCKET`], [`REL_XBOSH`]).
    pub rel: &'static str,
    /// `wss` or `https`.
    pub scheme: &'static str,
    /// The listener's port; `None`: the port of the request's `Host` (the listener answering).
    pub port: Option<u16>,
    /// The endpoint's path.
    pub path: String,
    /// A configured URL that replaces the built one.
    pub public_url: Option<String>,
}

/// XEP-0156 §3: the link relation of a BOSH endpoint.
pub const REL_XBOSH: &str = "urn:xmpp:alt-connections:xbosh";

/// XEP-0156 §3: the host-meta document (XRD, or JSON with `json`) for a domain the gateway
/// serves, pointing at this listener's WebSocket endpoint and the other web listeners'.
fn host_meta(host: &str, cfg: &WebConfig, json: bool) -> Answer {
    let own = HostMetaLink {
        rel: REL_WEBSOCKET,
        scheme: "wss",
        port: None,
        path: cfg.path.clone(),
        public_url: cfg.public_url.clone(),
    };
    host_meta_for(host, &cfg.domains, &own, &cfg.links, json)
}

/// The host-meta document listing `own` (the answering listener) and `others`.
pub(crate) fn host_meta_for(
    host: &str,
    domains: &[String],
    own: &HostMetaLink,
    others: &[HostMetaLink],
    json: bool,
) -> Answer {
    let name = host_name(host);
    let request_port = &host[name.len()..];
    if !crate::jid::is_domain(name) || !serves(name, domains) {
        return refuse(404, "no host-meta for this host");
    }
    // Only a checked domain and digits go into the URL; a configured URL was checked by the
    // config (no quotes, angle brackets, ampersands or whitespace).
    let href = |l: &HostMetaLink| match &l.public_url {
        Some(u) => u.clone(),
        None => {
            let port = l.port.map_or_else(|| request_port.to_owned(), |p| format!(":{p}"));
            format!("{}://{}{port}{}", l.scheme, name.to_ascii_lowercase(), l.path)
        }
    };
    let links: Vec<(&str, String)> = std::iter::once(own).chain(others).map(|l| (l.rel, href(l))).collect();
    let (body, content_type) = if json {
        let items: Vec<String> =
            links.iter().map(|(rel, url)| format!("{{\"rel\":\"{rel}\",\"href\":\"{url}\"}}")).collect();
        (format!("{{\"links\":[{}]}}", items.join(",")), "application/json")
    } else {
        let items: String = links.iter().map(|(rel, url)| format!("  <Link rel='{rel}' href='{url}'/>\n")).collect();
        (
            format!(
                "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n{items}</XRD>\n"
            ),
            "application/xrd+xml; charset=utf-8",
        )
    };
    // XEP-0156 §3.2: web clients fetch it cross-origin, so it is served with CORS open.
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nCache-Control: max-age=3600\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Answer::Respond { response: response.into_bytes(), status: 200, why: "host-meta served".to_owned() }
}

/// A refusal with a plain-text reason; the connection closes after it.
pub fn refuse(status: u16, why: &str) -> Answer {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = match status {
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    };
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    Answer::Respond { response: response.into_bytes(), status, why: why.to_owned() }
}
