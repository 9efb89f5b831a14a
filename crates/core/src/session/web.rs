//! The web door: XMPP over WebSocket (RFC 7395), a stream kind built on the c2s machine rather
//! than beside it.
//!
//! A [`WebSocketSession`] owns a [`super::C2sSession`] and converts at its edge only: the HTTP
//! opening handshake and XEP-0156 host-meta ([`http`]), RFC 6455 frames ([`frame`]), and RFC 7395
//! framing to and from the stream form the c2s machine reads and writes ([`framing`]). Each
//! client message is parsed with the gateway's restricted reader and re-serialized; no client
//! byte reaches the c2s machine, let alone the server, unparsed (invariant 1). Every stanza then
//! takes the c2s path — checks, the `c2s-in`/`c2s-out` chains, audit, XEP-0198 counters —
//! exactly as from a TCP client. Sans-IO like the rest of `session`: no sockets, no clock.
//!
//! BOSH (XEP-0124/0206), whose sessions span HTTP connections, is [`bosh::BoshSession`]: the
//! same c2s machine, fed from request bodies instead of frames.

pub mod bosh;
pub mod frame;
pub mod framing;
pub mod http;
#[cfg(test)]
mod tests;
mod websocket;

pub use crate::config::Origins;
pub use websocket::WebSocketSession;

/// One WebSocket listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The request path of the WebSocket endpoint (`/xmpp-websocket`).
    pub path: String,
    /// Browser origins allowed.
    pub origins: Origins,
    /// Largest frame payload accepted from a client.
    pub max_frame_bytes: usize,
    /// Largest message (all fragments) accepted from a client.
    pub max_message_bytes: usize,
    /// The URL host-meta advertises; `None`: `wss://` + the request's `Host` + `path`.
    pub public_url: Option<String>,
    /// The domains host-meta is served for (the certificates' names, `*.domain` allowed).
    pub domains: Vec<String>,
    /// The other web listeners' endpoints (BOSH), for host-meta.
    pub links: Vec<http::HostMetaLink>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            path: "/xmpp-websocket".to_owned(),
            origins: Origins::SameHost,
            max_frame_bytes: 262_144,
            max_message_bytes: 262_144,
            public_url: None,
            domains: Vec::new(),
            links: Vec::new(),
        }
    }
}
