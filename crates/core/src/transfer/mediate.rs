//! Forced mediation on the c2s stream: the gateway's bytestream proxy is the only route.
//!
//! Three things, all pure functions over stanzas the c2s session hands in:
//! - the gateway answers iqs addressed to its proxy JID itself (XEP-0065 §4 discovery:
//!   disco#info with identity `proxy/bytestreams`, the `bytestreams` host query; §6.3.4
//!   `<activate/>`), so no such iq reaches the server;
//! - XEP-0065 §5.3.1 streamhost offers, in either direction, are rewritten so that the only
//!   streamhost is the gateway's proxy (direct hosts — the sender's own address — and other
//!   proxies are removed: bytes that would travel past the gateway have no route); XEP-0260
//!   Jingle S5B candidates likewise (direct, assisted, tunnel and foreign proxy candidates
//!   replaced by the gateway's proxy);
//! - the server's disco#items answer for its own domain lists the gateway's proxy, so clients
//!   discover it (`mediate = true`).
//!
//! Activation is checked here: the activating user must be the requester the stream hash names
//! (the hash is computed from the bound JID, never from what the client claims).

use crate::jid::FullJid;
use crate::stanza::{self, StanzaCondition};
use crate::xml::Element;

/// XEP-0065 namespace.
pub const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
/// XEP-0030 info.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0166 Jingle.
pub const NS_JINGLE: &str = "urn:xmpp:jingle:1";
/// XEP-0260 Jingle SOCKS5 bytestreams transport.
pub const NS_JINGLE_S5B: &str = "urn:xmpp:jingle:transports:s5b:1";
/// The candidate id the gateway's proxy gets in rewritten Jingle transports.
pub const PROXY_CID: &str = "stanzawall-proxy";
/// XEP-0260 §2.4 priority of a proxy candidate: type preference 10, local preference 0.
const PROXY_PRIORITY: u32 = 10 << 16;

/// Where the gateway's proxy is and what the c2s sessions do about transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The proxy's JID (a domain answered by the gateway).
    pub jid: String,
    /// The host clients connect to (`<streamhost host>`).
    pub host: String,
    /// The port clients connect to (the `socks5` listener's).
    pub port: u16,
    /// Rewrite offers and add the proxy to the server's disco#items.
    pub mediate: bool,
    /// XEP-0363 slot URLs are rewritten to this base (the gateway's `http-upload` listener).
    pub upload_url: Option<String>,
}

/// Pairs the two connections of a stream hash once the requester activates it (the relay's
/// registry, shared with the `socks5` listener).
pub trait Activator: Send + Sync + std::fmt::Debug {
    /// Activate `hash`: both parties must be connected. `Err` says why not (the iq error text).
    fn activate(&self, hash: &str, requester: &str, target: &str) -> Result<(), String>;
}

/// What the session does with a client stanza addressed to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyIq {
    /// Answer the client with this stanza; nothing reaches the server.
    Answer(Element),
    /// Activation requested: answer `ok` if [`Activator::activate`] succeeds, else an error.
    Activate {
        /// The stream hash, computed from the bound JID.
        hash: String,
        /// The requester (the bound JID).
        requester: String,
        /// The target named in `<activate/>`.
        target: String,
        /// The result to send on success.
        ok: Element,
    },
}

/// Is `el` addressed to the proxy?
pub fn is_for_proxy(el: &Element, settings: &ProxySettings) -> bool {
    el.name == "iq" && el.attr("to").is_some_and(|to| to.eq_ignore_ascii_case(&settings.jid))
}

fn result_for(el: &Element, settings: &ProxySettings) -> Element {
    let mut r = Element::new(el.ns.clone(), "iq").with_attr("type", "result").with_attr("from", settings.jid.as_str());
    if let Some(id) = el.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(from) = el.attr("from") {
        r.set_attr("to", from);
    }
    r
}

fn error_for(el: &Element, condition: StanzaCondition, text: &str, settings: &ProxySettings) -> Option<Element> {
    stanza::error_reply(el, condition, Some(text), &settings.jid)
}

/// The answer to an iq (already stamped with the bound JID) addressed to the proxy; `None` for
/// an iq that needs no answer (a result or error), which is dropped.
pub fn proxy_iq(el: &Element, settings: &ProxySettings, bound: &FullJid) -> Option<ProxyIq> {
    let ty = el.attr("type").unwrap_or_default();
    if !matches!(ty, "get" | "set") {
        return None;
    }
    let child = el.elements().next()?;
    let ns = &*child.ns;
    let answer = |c: Element| Some(ProxyIq::Answer(result_for(el, settings).with_child(c)));
    match (ty, ns, child.name.as_str()) {
        ("get", NS_DISCO_INFO, "query") if child.attr("node").is_none() => answer(
            Element::new(NS_DISCO_INFO, "query")
                .with_child(
                    Element::new(NS_DISCO_INFO, "identity")
                        .with_attr("category", "proxy")
                        .with_attr("type", "bytestreams")
                        .with_attr("name", "stanzawall inspecting bytestream proxy"),
                )
                .with_child(Element::new(NS_DISCO_INFO, "feature").with_attr("var", NS_DISCO_INFO))
                .with_child(Element::new(NS_DISCO_INFO, "feature").with_attr("var", NS_BYTESTREAMS)),
        ),
        ("get", NS_DISCO_ITEMS, "query") => answer(Element::new(NS_DISCO_ITEMS, "query")),
        // XEP-0065 §6.3.2: the proxy's network address.
        ("get", NS_BYTESTREAMS, "query") => {
            answer(Element::new(NS_BYTESTREAMS, "query").with_child(streamhost(settings)))
        }
        ("set", NS_BYTESTREAMS, "query") => {
            let sid = child.attr("sid").unwrap_or_default();
            let target = child.child(NS_BYTESTREAMS, "activate").map(|a| a.text()).unwrap_or_default();
            let target = target.trim();
            let Some(target_jid) = crate::jid::parse(target) else {
                return error_for(el, StanzaCondition::BadRequest, "activate needs a target JID", settings)
                    .map(ProxyIq::Answer);
            };
            if sid.is_empty() || sid.len() > 256 {
                return error_for(el, StanzaCondition::BadRequest, "activate needs a stream id", settings)
                    .map(ProxyIq::Answer);
            }
            let requester = bound.to_string();
            let target = target_jid.to_string();
            Some(ProxyIq::Activate {
                hash: super::socks5::stream_hash(sid, &requester, &target),
                requester,
                target,
                ok: result_for(el, settings),
            })
        }
        _ => error_for(el, StanzaCondition::ServiceUnavailable, "not offered by this proxy", settings)
            .map(ProxyIq::Answer),
    }
}

/// The error answer to a failed activation (XEP-0065 §6.3.4: the proxy could not pair).
pub fn activation_error(el: &Element, why: &str, settings: &ProxySettings) -> Option<Element> {
    error_for(el, StanzaCondition::NotAllowed, why, settings)
}

fn streamhost(settings: &ProxySettings) -> Element {
    Element::new(NS_BYTESTREAMS, "streamhost")
        .with_attr("jid", settings.jid.as_str())
        .with_attr("host", settings.host.as_str())
        .with_attr("port", settings.port.to_string())
}

/// XEP-0065 §5.3.1: in an offer (iq set carrying `<query><streamhost/>…`), keep only the
/// gateway's proxy. Returns how many other streamhosts were removed; 0 and untouched when `el`
/// is not an offer. An offer naming no streamhost but the gateway's is left as is.
pub fn rewrite_offer(el: &mut Element, settings: &ProxySettings) -> usize {
    if el.name != "iq" || el.attr("type") != Some("set") {
        return 0;
    }
    let mut removed = 0;
    for node in &mut el.children {
        let crate::xml::Node::Element(q) = node else { continue };
        if !q.is(NS_BYTESTREAMS, "query") || !q.elements().any(|c| c.is(NS_BYTESTREAMS, "streamhost")) {
            continue;
        }
        let ours = |c: &Element| c.attr("jid").is_some_and(|j| j.eq_ignore_ascii_case(&settings.jid));
        let total = q.elements().filter(|c| c.is(NS_BYTESTREAMS, "streamhost")).count();
        let kept_ours = q.elements().filter(|c| c.is(NS_BYTESTREAMS, "streamhost") && ours(c)).count();
        if total == 1 && kept_ours == 1 {
            continue;
        }
        removed += total - kept_ours;
        q.retain_elements(|c| !c.is(NS_BYTESTREAMS, "streamhost"));
        // The gateway's own address, whatever host/port the offer claimed for it.
        q.children.push(crate::xml::Node::Element(streamhost(settings)));
    }
    removed + rewrite_jingle(el, settings)
}

/// XEP-0260 §2.2: in Jingle S5B transports (session-initiate, session-accept,
/// transport-replace, …) keep only the gateway's proxy as candidate: direct, assisted and
/// tunnel candidates and other proxies are removed, the gateway's proxy is inserted. Elements
/// that carry no `<candidate/>` (candidate-used, activated, candidate-error) are untouched.
fn rewrite_jingle(el: &mut Element, settings: &ProxySettings) -> usize {
    let mut removed = 0;
    for node in &mut el.children {
        let crate::xml::Node::Element(jingle) = node else { continue };
        if !jingle.is(NS_JINGLE, "jingle") {
            continue;
        }
        for node in &mut jingle.children {
            let crate::xml::Node::Element(content) = node else { continue };
            if !content.is(NS_JINGLE, "content") {
                continue;
            }
            for node in &mut content.children {
                let crate::xml::Node::Element(t) = node else { continue };
                if !t.is(NS_JINGLE_S5B, "transport") || !t.elements().any(|c| c.is(NS_JINGLE_S5B, "candidate")) {
                    continue;
                }
                let ours = |c: &Element| {
                    c.attr("type") == Some("proxy")
                        && c.attr("jid").is_some_and(|j| j.eq_ignore_ascii_case(&settings.jid))
                        && c.attr("cid") == Some(PROXY_CID)
                };
                let candidates: Vec<bool> =
                    t.elements().filter(|c| c.is(NS_JINGLE_S5B, "candidate")).map(ours).collect();
                if candidates == [true] {
                    continue;
                }
                removed += candidates.iter().filter(|o| !**o).count();
                t.retain_elements(|c| !c.is(NS_JINGLE_S5B, "candidate"));
                t.children.push(crate::xml::Node::Element(
                    Element::new(NS_JINGLE_S5B, "candidate")
                        .with_attr("cid", PROXY_CID)
                        .with_attr("host", settings.host.as_str())
                        .with_attr("jid", settings.jid.as_str())
                        .with_attr("port", settings.port.to_string())
                        .with_attr("priority", PROXY_PRIORITY.to_string())
                        .with_attr("type", "proxy"),
                ));
            }
        }
    }
    removed
}

/// The server's disco#items answer for its own domain: list the gateway's proxy (once).
/// Returns true if it was added.
pub fn add_proxy_item(el: &mut Element, settings: &ProxySettings, server_domain: &str) -> bool {
    if el.name != "iq" || el.attr("type") != Some("result") {
        return false;
    }
    if !el.attr("from").is_some_and(|f| f.eq_ignore_ascii_case(server_domain)) {
        return false;
    }
    for node in &mut el.children {
        let crate::xml::Node::Element(q) = node else { continue };
        if !q.is(NS_DISCO_ITEMS, "query") || q.attr("node").is_some() {
            continue;
        }
        if q.elements().any(|c| c.attr("jid").is_some_and(|j| j.eq_ignore_ascii_case(&settings.jid))) {
            return false;
        }
        q.children.push(crate::xml::Node::Element(
            Element::new(NS_DISCO_ITEMS, "item").with_attr("jid", settings.jid.as_str()),
        ));
        return true;
    }
    false
}
