//! The gateway's own connection to the XMPP server as an external component (XEP-0114), with
//! the privileges XEP-0356 grants it: a sans-IO state machine.
//!
//! What it owns: the component stream (header, `<handshake/>` = hex SHA-1 of the server's
//! stream id and the shared secret, XEP-0114 §3), the XEP-0356 `<privilege/>` advertisements
//! (`urn:xmpp:privilege:2`, and `:1` as ejabberd 23.01 sends), the iqs the gateway asks through
//! it (roster gets on behalf of a local user, XEP-0356 §4; pubsub subscribe/items for RTBLs,
//! XEP-0060 §6.1, §6.5) with their ids and deadlines, the roster pushes and pubsub
//! notifications the server sends, and the wrapping of stanzas sent on a user's or the
//! server's behalf (XEP-0356 §5, message permission). What it must never do: touch a socket or
//! a clock (the daemon feeds bytes and `now`, as for sessions), trust what the server did not
//! grant (a roster push is applied only from a domain that advertised roster access; a pubsub
//! event only from a service we subscribed to), or hold unbounded state (pending iqs, domains,
//! events and output are capped; the reader has the stanza limits).
//!
//! The daemon drives it like a session: [`Component::feed`] bytes, write
//! [`Component::take_output`], carry out [`Component::poll_event`], and call
//! [`Component::handle_timeout`] at [`Component::poll_timeout`].

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::antispam::contacts::{roster_items, RosterItem, NS_ROSTER};
pub use crate::antispam::rtbl::NodeChange;
use crate::jid::BareJid;
use crate::stream::{StreamError, STREAM_CLOSE};
use crate::xml::{Element, Node, StreamReader, XmlEvent, XmlLimits, NS_CLIENT, NS_STREAMS};

/// The component protocol's content namespace (XEP-0114 §3).
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// XEP-0356 privileges, the namespace of version 0.4 and later (Prosody's `mod_privilege`).
pub const NS_PRIVILEGE: &str = "urn:xmpp:privilege:2";
/// XEP-0356 before version 0.4 (ejabberd up to at least 23.01).
pub const NS_PRIVILEGE_1: &str = "urn:xmpp:privilege:1";
/// Stanza forwarding (XEP-0297), which carries a privileged message.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// Publish-subscribe (XEP-0060).
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// Publish-subscribe notifications (XEP-0060 §7.1.2).
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";

/// Most iqs in flight at once (roster fetches and pubsub requests).
pub const MAX_PENDING: usize = 1024;
/// Most server domains whose privileges are remembered.
pub const MAX_DOMAINS: usize = 256;
/// Most events waiting for the daemon; past this, new events are dropped and counted.
pub const MAX_EVENTS: usize = 4096;
/// Most item ids read from one pubsub answer or notification (an RTBL is not a database).
pub const MAX_ITEMS_PER_STANZA: usize = 100_000;
/// Most bytes of output queued while the daemon has not written it.
pub const MAX_OUTPUT: usize = 4 << 20;

/// Settings of the component connection.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// The component's address (a domain the server is configured to accept).
    pub jid: String,
    /// The shared secret.
    pub secret: String,
    /// Caps on what the server sends.
    pub limits: XmlLimits,
    /// How long the server has to answer the handshake.
    pub handshake_timeout: Duration,
    /// How long an iq may stay unanswered.
    pub iq_timeout: Duration,
}

/// What the server granted for one of its domains (XEP-0356 §4.2, §5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Roster `get` (or `both`): the gateway may fetch the rosters of this domain's users.
    pub roster_get: bool,
    /// Roster pushes will come (XEP-0356 0.4 §4.3: with `get`/`both` unless `push='false'`).
    pub roster_push: bool,
    /// Message `outgoing`: the gateway may send messages on behalf of this domain's users.
    pub message_outgoing: bool,
}

/// A pubsub node the gateway follows (`rtbl = { service, node }`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PubsubNode {
    /// The pubsub service's JID.
    pub service: String,
    /// The node's name.
    pub node: String,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// The server refused the handshake (wrong secret, unknown component name).
    #[error("handshake refused: {0}")]
    NotAuthorized(String),
    /// The server sent a stream error.
    #[error("stream error from the server: {0}")]
    Stream(String),
    /// The server's XML broke the protocol or a limit.
    #[error("invalid XML from the server: {0}")]
    Xml(String),
    /// The server broke the component protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server did not answer in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server closed the stream.
    #[error("the server closed the stream")]
    Closed,
}

/// Something the daemon acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentEvent {
    /// The handshake succeeded: the component is connected.
    Connected,
    /// The server (`server` domain) advertised what the component may do there.
    Privileges {
        /// The granting domain (the advertisement's `from`).
        server: String,
        /// What it granted.
        privileges: Privileges,
    },
    /// A roster fetched for `owner` (a result to [`Component::fetch_roster`]).
    Roster {
        /// Whose roster.
        owner: BareJid,
        /// Its items.
        items: Vec<RosterItem>,
    },
    /// A roster fetch failed (error reply or timeout).
    RosterFailed {
        /// Whose roster.
        owner: BareJid,
        /// Why (the error condition, or `timeout`).
        reason: String,
    },
    /// The server pushed a change to `owner`'s roster (XEP-0356 0.4 §4.3).
    RosterPush {
        /// Whose roster.
        owner: BareJid,
        /// The changed items.
        items: Vec<RosterItem>,
    },
    /// A followed node's items changed.
    Node {
        /// Which node.
        node: PubsubNode,
        /// How.
        change: NodeChange,
    },
    /// Following a node failed at `step` (`subscribe` or `items`).
    NodeFailed {
        /// Which node.
        node: PubsubNode,
        /// `subscribe` or `items`.
        step: &'static str,
        /// The error condition, or `timeout`.
        reason: String,
    },
    /// The server answered a stanza we sent with an error (a report or privileged message).
    SendFailed {
        /// The error condition and text.
        reason: String,
    },
    /// The connection is over; the daemon reconnects after a backoff.
    Closed(ComponentError),
}

/// Why a stanza could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The component is not connected.
    #[error("the component is not connected")]
    NotConnected,
    /// Not a `<message/>`, or its `from` is not a bare JID (or domain) the server granted
    /// message permission for.
    #[error("{0}")]
    NotPermitted(String),
    /// The output queue is full (the server is not reading).
    #[error("the component's output queue is full")]
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHeader,
    AwaitHandshake,
    Open,
    Closed,
}

#[derive(Debug)]
enum Pending {
    Roster(BareJid),
    Subscribe(PubsubNode),
    Items(PubsubNode),
}

/// One component connection (see the module docs).
#[derive(Debug)]
pub struct Component {
    cfg: ComponentConfig,
    reader: StreamReader,
    phase: Phase,
    out: Vec<u8>,
    events: VecDeque<ComponentEvent>,
    dropped_events: u64,
    pending: HashMap<String, (Pending, Instant)>,
    next_id: u64,
    privileges: HashMap<String, Privileges>,
    followed: Vec<PubsubNode>,
    handshake_deadline: Instant,
}

/// The handshake value: lower-case hex SHA-1 of the stream id followed by the secret
/// (XEP-0114 §3, as RFC 6120 would not: the component protocol predates SASL).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut input = Vec::with_capacity(stream_id.len() + secret.len());
    input.extend_from_slice(stream_id.as_bytes());
    input.extend_from_slice(secret.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Read a `<privilege/>` element (either namespace) into privileges; `None` if `el` is not one.
/// Unknown permission names and types are ignored (they grant nothing).
pub fn parse_privilege(el: &Element) -> Option<Privileges> {
    if el.name != "privilege" || !(*el.ns == *NS_PRIVILEGE || *el.ns == *NS_PRIVILEGE_1) {
        return None;
    }
    let mut p = Privileges::default();
    for perm in el.elements().filter(|c| c.name == "perm" && c.ns == el.ns).take(64) {
        match (perm.attr("access"), perm.attr("type")) {
            (Some("roster"), Some("get" | "both")) => {
                p.roster_get = true;
                // XEP-0356 0.4 §4.1: pushes default to on for get/both, off with push='false'.
                // The `:1` namespace predates pushes: none are sent there.
                p.roster_push = *el.ns == *NS_PRIVILEGE && !matches!(perm.attr("push"), Some("false" | "0"));
            }
            (Some("message"), Some("outgoing")) => p.message_outgoing = true,
            _ => {}
        }
    }
    Some(p)
}

/// The text of a stanza error: its condition (and text), for logs.
fn error_reason(el: &Element) -> String {
    let Some(err) = el.elements().find(|c| c.name == "error") else { return "error".to_owned() };
    let cond = err
        .elements()
        .find(|c| c.name != "text" && &*c.ns == crate::stanza::NS_STANZA_ERRORS)
        .map_or("undefined-condition", |c| c.name.as_str());
    let text: String = err.elements().find(|c| c.name == "text").map(|t| t.text()).unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    if text.is_empty() {
        cond.to_owned()
    } else {
        format!("{cond}: {text}")
    }
}

impl Component {
    /// A new connection's machine; the stream header is queued at once (the component opens,
    /// XEP-0114 §3: `to` is the component's name, no `version`).
    pub fn new(cfg: ComponentConfig, now: Instant) -> Self {
        let mut out = Vec::new();
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' ");
        out.extend_from_slice(b"xmlns:stream='http://etherx.jabber.org/streams' to='");
        // The name was validated as a domain by the config: no quote or '<' can be in it.
        out.extend_from_slice(cfg.jid.as_bytes());
        out.extend_from_slice(b"'>");
        let reader = StreamReader::new(cfg.limits);
        let handshake_deadline = now + cfg.handshake_timeout;
        Component {
            cfg,
            reader,
            phase: Phase::AwaitHeader,
            out,
            events: VecDeque::new(),
            dropped_events: 0,
            pending: HashMap::new(),
            next_id: 0,
            privileges: HashMap::new(),
            followed: Vec::new(),
            handshake_deadline,
        }
    }

    /// True once the handshake succeeded and until the connection ends.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True once the connection is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// What `domain` granted (nothing if it advertised nothing).
    pub fn privileges(&self, domain: &str) -> Privileges {
        self.privileges.get(domain).copied().unwrap_or_default()
    }

    /// The domains that granted roster `get`.
    pub fn roster_domains(&self) -> Vec<String> {
        self.privileges.iter().filter(|(_, p)| p.roster_get).map(|(d, _)| d.clone()).collect()
    }

    /// Events dropped because the queue was full (a flood from the server).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Bytes to write to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<ComponentEvent> {
        self.events.pop_front()
    }

    fn event(&mut self, e: ComponentEvent) {
        if self.events.len() >= MAX_EVENTS && !matches!(e, ComponentEvent::Closed(_)) {
            self.dropped_events += 1;
            return;
        }
        self.events.push_back(e);
    }

    /// When [`Component::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::AwaitHeader | Phase::AwaitHandshake => Some(self.handshake_deadline),
            Phase::Open => self.pending.values().map(|(_, d)| *d).min(),
        }
    }

    /// The time is `now`: the handshake or iqs whose deadline passed fail.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitHeader | Phase::AwaitHandshake => {
                if now >= self.handshake_deadline {
                    self.close(ComponentError::Timeout("handshake"));
                }
            }
            Phase::Open => {
                let expired: Vec<String> =
                    self.pending.iter().filter(|(_, (_, d))| *d <= now).map(|(id, _)| id.clone()).collect();
                for id in expired {
                    if let Some((p, _)) = self.pending.remove(&id) {
                        self.failed(p, "timeout".to_owned());
                    }
                }
            }
        }
    }

    /// The TCP connection broke (no stream close).
    pub fn disconnected(&mut self, why: &str) {
        if self.phase != Phase::Closed {
            self.close(ComponentError::Protocol(format!("connection lost: {why}")));
        }
    }

    fn close(&mut self, e: ComponentError) {
        if self.phase == Phase::Closed {
            return;
        }
        if matches!(e, ComponentError::Xml(_) | ComponentError::Protocol(_) | ComponentError::Timeout(_)) {
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        self.phase = Phase::Closed;
        // Everything in flight is lost with the stream: tell its askers now.
        let pending: Vec<Pending> = self.pending.drain().map(|(_, (p, _))| p).collect();
        for p in pending {
            self.failed(p, "disconnected".to_owned());
        }
        self.privileges.clear();
        self.event(ComponentEvent::Closed(e));
    }

    fn failed(&mut self, p: Pending, reason: String) {
        let e = match p {
            Pending::Roster(owner) => ComponentEvent::RosterFailed { owner, reason },
            Pending::Subscribe(node) => ComponentEvent::NodeFailed { node, step: "subscribe", reason },
            Pending::Items(node) => ComponentEvent::NodeFailed { node, step: "items", reason },
        };
        self.event(e);
    }

    /// Bytes from the server at `now`.
    pub fn feed(&mut self, data: &[u8], now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.reader.feed(data);
        while self.phase != Phase::Closed {
            match self.reader.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => self.on_event(ev, now),
                Err(e) => self.close(ComponentError::Xml(e.to_string())),
            }
        }
    }

    fn on_event(&mut self, ev: XmlEvent, now: Instant) {
        match (self.phase, ev) {
            (Phase::AwaitHeader, XmlEvent::StreamOpen { header, default_ns }) => {
                if !header.is(NS_STREAMS, "stream") || default_ns.as_deref() != Some(NS_COMPONENT) {
                    return self.close(ComponentError::Protocol("not a component stream header".to_owned()));
                }
                let Some(id) = header.attr("id").filter(|i| !i.is_empty()) else {
                    return self.close(ComponentError::Protocol("the stream header has no id".to_owned()));
                };
                let digest = handshake_digest(id, &self.cfg.secret);
                Element::new(NS_COMPONENT, "handshake").with_text(digest).write_to(&mut self.out, NS_COMPONENT);
                self.phase = Phase::AwaitHandshake;
            }
            (_, XmlEvent::StreamClose) => self.close(ComponentError::Closed),
            (_, XmlEvent::Whitespace) => {}
            (_, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "error") => {
                let err = StreamError::from_element(&el);
                let text = match &err.text {
                    Some(t) => format!("{}: {}", err.condition.as_str(), t.chars().take(200).collect::<String>()),
                    None => err.condition.as_str().to_owned(),
                };
                let e = if self.phase == Phase::AwaitHandshake && err.condition.as_str() == "not-authorized" {
                    ComponentError::NotAuthorized(text)
                } else {
                    ComponentError::Stream(text)
                };
                self.close(e);
            }
            (Phase::AwaitHandshake, XmlEvent::Stanza(el)) if el.is(NS_COMPONENT, "handshake") => {
                self.phase = Phase::Open;
                self.event(ComponentEvent::Connected);
                // Nodes followed before a reconnect are followed again.
                for node in self.followed.clone() {
                    self.request_node(node, now);
                }
            }
            (Phase::Open, XmlEvent::Stanza(el)) => self.on_stanza(el, now),
            (phase, XmlEvent::Stanza(el)) => {
                self.close(ComponentError::Protocol(format!("unexpected <{}/> in phase {phase:?}", el.name)))
            }
            (_, XmlEvent::StreamOpen { .. }) => self.close(ComponentError::Protocol("second stream header".to_owned())),
            (_, XmlEvent::Skipped { .. }) => {}
        }
    }

    /// A stanza from the server once open.
    fn on_stanza(&mut self, el: Element, now: Instant) {
        if *el.ns != *NS_COMPONENT {
            return;
        }
        match el.name.as_str() {
            "iq" => self.on_iq(el, now),
            "message" => self.on_message(&el),
            _ => {}
        }
    }

    fn on_iq(&mut self, el: Element, _now: Instant) {
        let ty = el.attr("type").unwrap_or_default();
        match ty {
            "result" | "error" => {
                let Some(id) = el.attr("id") else { return };
                let Some((p, _)) = self.pending.remove(id) else { return };
                // The answer must come from whom we asked (RFC 6120 §8.1.2.1 is the server's
                // job, but a result to a roster get from another address is not that roster).
                let from = el.attr("from").and_then(crate::jid::parse);
                let expected = match &p {
                    Pending::Roster(owner) => from.as_ref().is_some_and(|f| f.to_bare() == *owner),
                    Pending::Subscribe(n) | Pending::Items(n) => {
                        from.as_ref().is_some_and(|f| crate::jid::parse(&n.service).is_some_and(|s| s == *f))
                    }
                };
                if !expected {
                    return self.failed(p, "answer from an unexpected address".to_owned());
                }
                if ty == "error" {
                    return self.failed(p, error_reason(&el));
                }
                match p {
                    Pending::Roster(owner) => {
                        let items = el
                            .elements()
                            .find(|c| c.name == "query" && &*c.ns == NS_ROSTER)
                            .map(roster_items)
                            .unwrap_or_default();
                        self.event(ComponentEvent::Roster { owner, items });
                    }
                    Pending::Subscribe(_) => {}
                    Pending::Items(node) => {
                        let (ids, complete) = match el.elements().find(|c| c.is(NS_PUBSUB, "pubsub")) {
                            Some(ps) => {
                                let items = ps.elements().find(|c| c.is(NS_PUBSUB, "items"));
                                let paged = ps.elements().any(|c| c.name == "set");
                                let (ids, all) = items.map_or((Vec::new(), true), |i| item_ids(i, NS_PUBSUB, "item"));
                                (ids, all && !paged)
                            }
                            None => (Vec::new(), true),
                        };
                        self.event(ComponentEvent::Node { node, change: NodeChange::All { ids, complete } });
                    }
                }
            }
            "set" => self.on_iq_set(&el),
            "get" => {
                // We serve nothing: RFC 6120 §8.2.3 says answer, not ignore.
                self.reply_error(&el, "cancel", "service-unavailable");
            }
            _ => {}
        }
    }

    /// A roster push (XEP-0356 0.4 §4.3): from the user's bare JID, at a domain that granted
    /// roster access with pushes. Answered with a result (RFC 6121 §2.1.6) either way.
    fn on_iq_set(&mut self, el: &Element) {
        let query = el.elements().find(|c| c.name == "query" && &*c.ns == NS_ROSTER);
        let owner =
            el.attr("from").and_then(crate::jid::parse).filter(|j| j.node().is_some() && j.resource().is_none());
        match (query, owner) {
            (Some(q), Some(owner)) => {
                let domain = owner.domain().as_str().to_owned();
                if !self.privileges(&domain).roster_push && !self.privileges(&domain).roster_get {
                    return self.reply_error(el, "auth", "forbidden");
                }
                let items = roster_items(q);
                self.reply_result(el);
                self.event(ComponentEvent::RosterPush { owner: owner.to_bare(), items });
            }
            _ => self.reply_error(el, "cancel", "service-unavailable"),
        }
    }

    fn on_message(&mut self, el: &Element) {
        if el.attr("type") == Some("error") {
            let reason = error_reason(el);
            return self.event(ComponentEvent::SendFailed { reason });
        }
        let from = el.attr("from").unwrap_or_default();
        // XEP-0356 §4.2: the server advertises from its own domain.
        if let Some(p) = el.elements().find_map(parse_privilege) {
            if !crate::jid::is_domain(from) {
                return;
            }
            let server = match crate::jid::parse(from) {
                Some(j) => j.domain().as_str().to_owned(),
                None => return,
            };
            if !self.privileges.contains_key(&server) && self.privileges.len() >= MAX_DOMAINS {
                return;
            }
            self.privileges.insert(server.clone(), p);
            return self.event(ComponentEvent::Privileges { server, privileges: p });
        }
        if let Some(event) = el.elements().find(|c| c.is(NS_PUBSUB_EVENT, "event")) {
            self.on_pubsub_event(from, event);
        }
    }

    /// XEP-0060 §7.1.2 (items), §7.2.2.1 (retract), §8.5.2.1 (purge), from a followed node's
    /// service only: anyone can send a message to the component.
    fn on_pubsub_event(&mut self, from: &str, event: &Element) {
        let Some(from) = crate::jid::parse(from) else { return };
        for child in event.elements().filter(|c| *c.ns == *NS_PUBSUB_EVENT).take(16) {
            let Some(name) = child.attr("node") else { continue };
            let Some(node) = self
                .followed
                .iter()
                .find(|n| n.node == name && crate::jid::parse(&n.service).is_some_and(|s| s == from))
                .cloned()
            else {
                continue;
            };
            match child.name.as_str() {
                "items" => {
                    let (published, _) = item_ids(child, NS_PUBSUB_EVENT, "item");
                    let (retracted, _) = item_ids(child, NS_PUBSUB_EVENT, "retract");
                    if !published.is_empty() {
                        self.event(ComponentEvent::Node {
                            node: node.clone(),
                            change: NodeChange::Published(published),
                        });
                    }
                    if !retracted.is_empty() {
                        self.event(ComponentEvent::Node { node, change: NodeChange::Retracted(retracted) });
                    }
                }
                "purge" => self.event(ComponentEvent::Node { node, change: NodeChange::Purged }),
                _ => {}
            }
        }
    }

    fn reply_result(&mut self, iq: &Element) {
        let mut r = Element::new(NS_COMPONENT, "iq").with_attr("type", "result");
        for (a, b) in [("from", "to"), ("to", "from"), ("id", "id")] {
            if let Some(v) = iq.attr(a) {
                r.set_attr(b, v);
            }
        }
        self.write(&r);
    }

    fn reply_error(&mut self, iq: &Element, ty: &str, condition: &str) {
        let mut r = Element::new(NS_COMPONENT, "iq").with_attr("type", "error");
        for (a, b) in [("from", "to"), ("to", "from"), ("id", "id")] {
            if let Some(v) = iq.attr(a) {
                r.set_attr(b, v);
            }
        }
        let err = Element::new(NS_COMPONENT, "error")
            .with_attr("type", ty)
            .with_child(Element::new(crate::stanza::NS_STANZA_ERRORS, condition));
        self.write(&r.with_child(err));
    }

    fn write(&mut self, el: &Element) -> bool {
        if self.out.len() > MAX_OUTPUT {
            return false;
        }
        el.write_to(&mut self.out, NS_COMPONENT);
        true
    }

    fn iq(&mut self, to: &str, ty: &str, payload: Element, pending: Pending, now: Instant) -> bool {
        if self.phase != Phase::Open || self.pending.len() >= MAX_PENDING || self.out.len() > MAX_OUTPUT {
            return false;
        }
        self.next_id += 1;
        let id = format!("sw{}", self.next_id);
        let iq = Element::new(NS_COMPONENT, "iq")
            .with_attr("type", ty)
            .with_attr("from", self.cfg.jid.clone())
            .with_attr("to", to)
            .with_attr("id", id.clone())
            .with_child(payload);
        self.write(&iq);
        self.pending.insert(id, (pending, now + self.cfg.iq_timeout));
        true
    }

    /// Can the roster of `owner` be fetched now (connected, and its domain granted `get`)?
    pub fn can_fetch(&self, owner: &BareJid) -> bool {
        self.phase == Phase::Open && self.privileges(owner.domain().as_str()).roster_get
    }

    /// Ask the server for `owner`'s roster (XEP-0356 §4.3: an iq get to the user's bare JID);
    /// false when it cannot be asked now (see [`Component::can_fetch`], or too many in flight).
    /// The answer comes as [`ComponentEvent::Roster`] or [`ComponentEvent::RosterFailed`].
    pub fn fetch_roster(&mut self, owner: &BareJid, now: Instant) -> bool {
        if !self.can_fetch(owner) {
            return false;
        }
        let in_flight = self.pending.values().any(|(p, _)| matches!(p, Pending::Roster(o) if o == owner));
        in_flight
            || self.iq(owner.as_str(), "get", Element::new(NS_ROSTER, "query"), Pending::Roster(owner.clone()), now)
    }

    /// Follow a pubsub node: subscribe the component's JID, then fetch its items; again after
    /// every reconnect. Events come as [`ComponentEvent::Node`].
    pub fn follow(&mut self, node: PubsubNode, now: Instant) {
        if self.followed.contains(&node) {
            return;
        }
        if self.followed.len() >= MAX_DOMAINS {
            return;
        }
        self.followed.push(node.clone());
        if self.phase == Phase::Open {
            self.request_node(node, now);
        }
    }

    fn request_node(&mut self, node: PubsubNode, now: Instant) {
        let jid = self.cfg.jid.clone();
        let subscribe = Element::new(NS_PUBSUB, "pubsub").with_child(
            Element::new(NS_PUBSUB, "subscribe").with_attr("node", node.node.clone()).with_attr("jid", jid),
        );
        let items = Element::new(NS_PUBSUB, "pubsub")
            .with_child(Element::new(NS_PUBSUB, "items").with_attr("node", node.node.clone()));
        let service = node.service.clone();
        self.iq(&service, "set", subscribe, Pending::Subscribe(node.clone()), now);
        self.iq(&service, "get", items, Pending::Items(node), now);
    }

    /// Send a stanza from the component's own address (`from` is set to it).
    pub fn send_direct(&mut self, mut el: Element) -> Result<(), SendError> {
        if self.phase != Phase::Open {
            return Err(SendError::NotConnected);
        }
        el.set_attr("from", self.cfg.jid.clone());
        to_component_ns(&mut el);
        if !self.write(&el) {
            return Err(SendError::Full);
        }
        Ok(())
    }

    /// Send `message` on behalf of its `from` (a bare JID or the domain of a server that
    /// granted message `outgoing`), wrapped as XEP-0356 §5.3 says: `<message from=component
    /// to=server><privilege><forwarded><message xmlns='jabber:client' …/></forwarded>
    /// </privilege></message>`. The server routes the inner message as if its `from` had sent
    /// it.
    pub fn send_privileged(&mut self, mut message: Element) -> Result<(), SendError> {
        if self.phase != Phase::Open {
            return Err(SendError::NotConnected);
        }
        if message.name != "message" {
            return Err(SendError::NotPermitted("only messages can be sent with privilege".to_owned()));
        }
        let from = message.attr("from").and_then(crate::jid::parse).filter(|j| j.resource().is_none());
        let Some(from) = from else {
            return Err(SendError::NotPermitted("the message needs a bare 'from' of a local user".to_owned()));
        };
        let server = from.domain().as_str().to_owned();
        if !self.privileges(&server).message_outgoing {
            return Err(SendError::NotPermitted(format!("{server} granted no message permission")));
        }
        to_client_ns(&mut message);
        let privilege = Element::new(NS_PRIVILEGE, "privilege")
            .with_child(Element::new(NS_FORWARD, "forwarded").with_child(message));
        let wrapper = Element::new(NS_COMPONENT, "message")
            .with_attr("from", self.cfg.jid.clone())
            .with_attr("to", server)
            .with_child(privilege);
        if !self.write(&wrapper) {
            return Err(SendError::Full);
        }
        Ok(())
    }
}

/// Item ids (`<item id/>` or `<retract id/>` children named `name` in `ns`) of `items`, at most
/// [`MAX_ITEMS_PER_STANZA`]; the flag is false when some were left out.
fn item_ids(items: &Element, ns: &str, name: &str) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    for c in items.elements().filter(|c| c.name == name && *c.ns == *ns) {
        if out.len() >= MAX_ITEMS_PER_STANZA {
            return (out, false);
        }
        if let Some(id) = c.attr("id") {
            out.push(id.to_owned());
        }
    }
    (out, true)
}

/// A stanza in the client namespace (as a forwarded one must be, XEP-0297 §3) keeps its
/// children's namespaces; only the stanza's own (and its `jabber:*` children's) change.
fn to_client_ns(el: &mut Element) {
    retag(el, NS_CLIENT);
}

fn to_component_ns(el: &mut Element) {
    retag(el, NS_COMPONENT);
}

fn retag(el: &mut Element, ns: &str) {
    let from = el.ns.clone();
    let is_stanza_ns = |n: &str| n == NS_CLIENT || n == crate::xml::NS_SERVER || n == NS_COMPONENT;
    if !is_stanza_ns(&from) {
        return;
    }
    let to: crate::xml::Ns = ns.into();
    fn walk(el: &mut Element, from: &crate::xml::Ns, to: &crate::xml::Ns, depth: usize) {
        if el.ns == *from {
            el.ns = to.clone();
        }
        if depth > 64 {
            return;
        }
        for n in &mut el.children {
            if let Node::Element(c) = n {
                walk(c, from, to, depth + 1);
            }
        }
    }
    walk(el, &from, &to, 0);
}

/// The message that tells an administrator (`to`) about a XEP-0377 spam report, as Prosody's
/// `mod_report_forward` does: a readable body naming the reporter, the reported JID, the reason
/// and the reporter's text, and the report itself (`urn:xmpp:reporting:1`) for clients that
/// read it.
pub fn report_message(to: &str, reporter: &str, reported: &str, reason: &str, text: Option<&str>) -> Element {
    let mut body = format!("Spam report: {reporter} reported {reported} ({reason})");
    if let Some(t) = text.filter(|t| !t.is_empty()) {
        // The reporter's words, bounded: a report is not a channel for long texts.
        let t: String = t.chars().take(1000).collect();
        body.push_str(&format!(": {t}"));
    }
    let mut report = Element::new("urn:xmpp:reporting:1", "report")
        .with_attr("reason", format!("urn:xmpp:reporting:{reason}"))
        .with_attr("jid", reported);
    if let Some(t) = text.filter(|t| !t.is_empty()) {
        report = report.with_child(
            Element::new("urn:xmpp:reporting:1", "text").with_text(t.chars().take(1000).collect::<String>()),
        );
    }
    Element::new(NS_COMPONENT, "message")
        .with_attr("to", to)
        .with_attr("type", "normal")
        .with_child(Element::new(NS_COMPONENT, "subject").with_text("Spam report"))
        .with_child(Element::new(NS_COMPONENT, "body").with_text(body))
        .with_child(report)
}
