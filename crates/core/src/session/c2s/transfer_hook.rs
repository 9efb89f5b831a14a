//! Where the c2s session meets the file-transfer door ([`crate::transfer::mediate`]): iqs to
//! the gateway's proxy JID are answered here and never reach the server; with `mediate`,
//! streamhost offers both ways name only the gateway's proxy and the server's disco#items
//! answer lists it. Runs after policy: a stanza the policy refused is never answered or
//! rewritten.
//!
//! Offers are judged by the `file` chain before any byte moves ([`crate::policy::file`]): a
//! XEP-0234 Jingle file-transfer `session-initiate` (its `<file>`: name, size, media-type,
//! XEP-0300 hash; the transport s5b or ibb) and a XEP-0363 slot request (filename, size,
//! content-type). A refused offer is answered with an iq error `<not-acceptable/>` and the
//! reason as text (XEP-0166 §7.2: an error to the session-initiate ends the session before
//! it exists; XEP-0363 §4: the service's refusal of a slot is an iq error) and never reaches
//! the recipient or the upload service.

use std::sync::Arc;

use super::C2sSession;
use crate::policy::file::{normalize_type, Offer, Transport};
use crate::session::{Effect, StreamMachine};
use crate::stanza::StanzaCondition;
use crate::stream::NS_CLIENT;
use crate::transfer::ibb::{IbbInspector, Original, NS_IBB};
use crate::transfer::mediate::{self, ProxyIq};
use crate::transfer::{Activator, InspectPolicy, Inspection, ProxySettings, ScanVerdict};
use crate::xml::Element;

/// XEP-0234 namespaces (version 5 is current; 3 and 4 are still sent by deployed clients).
const NS_JINGLE_FT: [&str; 3] = [
    "urn:xmpp:jingle:apps:file-transfer:5",
    "urn:xmpp:jingle:apps:file-transfer:4",
    "urn:xmpp:jingle:apps:file-transfer:3",
];
/// XEP-0261 Jingle in-band bytestreams transport.
const NS_JINGLE_IBB: &str = "urn:xmpp:jingle:transports:ibb:1";
/// XEP-0300 hashes (version 2; version 1 in older XEP-0234 offers).
const NS_HASHES: [&str; 2] = ["urn:xmpp:hashes:2", "urn:xmpp:hashes:1"];

/// The proxy's settings and the relay it activates.
#[derive(Debug)]
pub(super) struct FileTransferHook {
    pub(super) settings: ProxySettings,
    pub(super) activator: Arc<dyn Activator>,
    /// XEP-0047 streams the user sends, inspected in-stream.
    pub(super) ibb: Option<IbbInspector>,
    /// The file chain and checks offers are judged by.
    pub(super) inspect: Option<Arc<InspectPolicy>>,
}

impl C2sSession {
    /// Answer the gateway's proxy JID and mediate transfers (`[file_transfer]`).
    #[must_use]
    pub fn with_file_transfer(mut self, settings: ProxySettings, activator: Arc<dyn Activator>) -> Self {
        self.transfer = Some(FileTransferHook { settings, activator, ibb: None, inspect: None });
        self
    }

    /// Inspect the in-band bytestreams (XEP-0047) the user sends with `policy` (after
    /// [`C2sSession::with_file_transfer`]).
    #[must_use]
    pub fn with_ibb_inspection(mut self, policy: Arc<InspectPolicy>) -> Self {
        if let Some(hook) = self.transfer.as_mut() {
            hook.ibb = Some(IbbInspector::new(policy.clone()));
            hook.inspect = Some(policy);
        }
        self
    }

    /// The daemon scans in-band streams with an antivirus (after
    /// [`C2sSession::with_ibb_inspection`]): their ends wait for its verdict.
    #[must_use]
    pub fn with_ibb_scanner(mut self) -> Self {
        if let Some(hook) = self.transfer.as_mut() {
            hook.ibb = hook.ibb.take().map(IbbInspector::with_scanner);
        }
        self
    }

    /// A stanza from the gateway to the client, outside any exchange the client started.
    pub(super) fn transfer_notify(&mut self, el: &Element) {
        if self.bound.is_none() || StreamMachine::is_closed(self) {
            return;
        }
        el.write_to(&mut self.to_client, NS_CLIENT);
        let r = self.sm.to_client.injected();
        self.sm_result(r);
    }

    /// The antivirus's verdict on an in-band stream.
    pub(super) fn transfer_ibb_scanned(&mut self, id: u64, verdict: ScanVerdict) {
        if StreamMachine::is_closed(self) {
            return;
        }
        let Some(ibb) = self.transfer.as_mut().and_then(|h| h.ibb.as_mut()) else { return };
        let Some(v) = ibb.scanned(id, verdict) else { return };
        for r in &v.to_server {
            r.write_to(&mut self.to_backend, NS_CLIENT);
        }
        // The sender's close was withheld (counted then); what crosses now is the gateway's.
        for _ in &v.to_server {
            let r = self.sm.to_server.injected();
            self.sm_result(r);
        }
        if let Some(reply) = &v.to_client {
            reply.write_to(&mut self.to_client, NS_CLIENT);
            let r = self.sm.to_client.injected();
            self.sm_result(r);
        }
        self.effects.push_back(Effect::Ibb(v.ended));
    }

    /// XEP-0234 / XEP-0363 offers through the file chain: `Some(reason)` when refused.
    fn transfer_offer_refused(&self, el: &Element) -> Option<String> {
        let policy = self.transfer.as_ref()?.inspect.as_ref()?;
        let offer = offer_of(el, self.bound.as_ref().map(|b| b.to_string()).as_deref())?;
        Inspection::with_offer(policy.clone(), offer).err().map(|r| format!("file refused: {r}"))
    }

    /// IBB: the stanza to forward, or `None` when the gateway held or refused it.
    fn transfer_ibb(&mut self, el: Element) -> Option<Element> {
        let is_ibb = el.name == "iq" && el.elements().any(|c| &*c.ns == NS_IBB);
        // XEP-0047 §3: data may also travel in messages, which cannot be held back and
        // acknowledged like iqs: refused rather than let through uninspected.
        if el.name == "message"
            && el.child(NS_IBB, "data").is_some()
            && self.transfer.as_ref().is_some_and(|h| h.ibb.is_some())
        {
            self.refuse_client_stanza(
                &el,
                crate::stanza::StanzaCondition::NotAcceptable,
                Some("in-band data in messages is not accepted; use iq"),
            );
            return None;
        }
        let Some(ibb) = self.transfer.as_mut().and_then(|h| h.ibb.as_mut()).filter(|_| is_ibb) else {
            return Some(el);
        };
        let step = ibb.client_stanza(&el);
        for e in step.events.iter().cloned() {
            self.effects.push_back(Effect::Ibb(e));
        }
        for r in &step.release {
            r.write_to(&mut self.to_backend, NS_CLIENT);
            let r = self.sm.to_server.injected();
            self.sm_result(r);
        }
        if let Some((_, Some(_))) = &step.ended {
            if let Some(stanza) = crate::session::StanzaSummary::of(&el, self.bound.as_ref()) {
                self.effects.push_back(crate::session::Effect::Bounced {
                    stanza,
                    condition: crate::stanza::StanzaCondition::NotAcceptable,
                    reason: "in-band file refused by inspection",
                });
            }
        }
        match step.original {
            Original::Forward => Some(el),
            Original::Held => {
                if let Some(ack) = step.ack {
                    ack.write_to(&mut self.to_client, NS_CLIENT);
                }
                let r = self.sm.client_stanza_bounced();
                self.sm_result(r);
                None
            }
            Original::Bounce(condition, text) => {
                self.refuse_client_stanza(&el, condition, Some(&text));
                None
            }
        }
    }

    /// A backend stanza answering one the gateway sent for the client (IBB): withheld.
    pub(super) fn transfer_swallows(&mut self, el: &Element) -> bool {
        let Some(ibb) = self.transfer.as_mut().and_then(|h| h.ibb.as_mut()) else { return false };
        if !ibb.swallows(el) {
            return false;
        }
        let r = self.sm.to_client.withheld();
        self.sm_result(r);
        true
    }

    /// A policed client stanza: `None` when the gateway answered it itself.
    pub(super) fn transfer_client_stanza(&mut self, mut el: Element) -> Option<Element> {
        let (Some(hook), Some(bound)) = (&self.transfer, &self.bound) else { return Some(el) };
        if mediate::is_for_proxy(&el, &hook.settings) {
            let reply = match mediate::proxy_iq(&el, &hook.settings, bound) {
                None => None,
                Some(ProxyIq::Answer(reply)) => Some(reply),
                Some(ProxyIq::Activate { hash, requester, target, ok }) => {
                    match hook.activator.activate(&hash, &requester, &target) {
                        Ok(()) => Some(ok),
                        Err(why) => mediate::activation_error(&el, &why, &hook.settings),
                    }
                }
            };
            let r = match reply {
                Some(reply) => {
                    reply.write_to(&mut self.to_client, NS_CLIENT);
                    self.sm.client_stanza_bounced()
                }
                None => self.sm.to_server.withheld(),
            };
            self.sm_result(r);
            return None;
        }
        if let Some(reason) = self.transfer_offer_refused(&el) {
            if let Some(stanza) = crate::session::StanzaSummary::of(&el, self.bound.as_ref()) {
                self.effects.push_back(Effect::Bounced {
                    stanza,
                    condition: StanzaCondition::NotAcceptable,
                    reason: "file offer refused by the file chain",
                });
            }
            self.refuse_client_stanza(&el, StanzaCondition::NotAcceptable, Some(&reason));
            return None;
        }
        let Some(hook) = &self.transfer else { return Some(el) };
        if hook.settings.mediate {
            mediate::rewrite_offer(&mut el, &hook.settings);
        }
        self.transfer_ibb(el)
    }

    /// A policed backend stanza toward the client.
    pub(super) fn transfer_backend_stanza(&self, el: &mut Element) {
        let Some(hook) = &self.transfer else { return };
        if let Some(base) = &hook.settings.upload_url {
            crate::transfer::upload::rewrite_slot(el, base);
        }
        if !hook.settings.mediate {
            return;
        }
        mediate::rewrite_offer(el, &hook.settings);
        if let Some(domain) = &self.domain {
            mediate::add_proxy_item(el, &hook.settings, domain);
        }
    }
}

/// The offer a client stanza makes, if it is one: a Jingle `session-initiate` carrying a
/// XEP-0234 `<file>` (sending it: the initiator is the sender), or a XEP-0363 slot request.
fn offer_of(el: &Element, sender: Option<&str>) -> Option<Offer> {
    if el.name != "iq" {
        return None;
    }
    let to = el.attr("to").and_then(crate::jid::parse);
    let sender = sender.and_then(crate::jid::parse);
    if el.attr("type") == Some("get") {
        let req = el.child(crate::transfer::upload::NS_HTTP_UPLOAD, "request")?;
        return Some(Offer {
            sender,
            recipient: None,
            transport: Some(Transport::Upload),
            name: req.attr("filename").map(str::to_owned),
            size: req.attr("size").and_then(|s| s.trim().parse().ok()),
            media_type: req.attr("content-type").map(normalize_type),
            sha256: None,
        });
    }
    if el.attr("type") != Some("set") {
        return None;
    }
    let jingle = el.child(mediate::NS_JINGLE, "jingle")?;
    if jingle.attr("action") != Some("session-initiate") {
        return None;
    }
    // XEP-0234 §3 offers (the initiator sends); a request (`senders='responder'`) is judged
    // when its bytes flow.
    let sends = |c: &Element| c.attr("senders").is_none_or(|s| s == "initiator" || s == "both");
    for content in jingle.elements().filter(|c| c.is(mediate::NS_JINGLE, "content") && sends(c)) {
        let Some((ns, desc)) = NS_JINGLE_FT.iter().find_map(|ns| content.child(ns, "description").map(|d| (*ns, d)))
        else {
            continue;
        };
        let Some(file) = desc.child(ns, "file") else { continue };
        let text = |name: &str| file.child(ns, name).map(|c| c.text().trim().to_owned()).filter(|t| !t.is_empty());
        let transport = content.elements().find_map(|t| {
            if *t.ns == *mediate::NS_JINGLE_S5B {
                Some(Transport::S5b)
            } else if *t.ns == *NS_JINGLE_IBB {
                Some(Transport::Ibb)
            } else {
                None
            }
        });
        let sha256 = file
            .elements()
            .filter(|h| h.name == "hash" && NS_HASHES.contains(&&*h.ns) && h.attr("algo") == Some("sha-256"))
            .find_map(|h| {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.decode(h.text().trim()).ok()?;
                <[u8; 32]>::try_from(b.as_slice()).ok()
            });
        return Some(Offer {
            sender,
            recipient: to,
            transport,
            name: text("name"),
            size: text("size").and_then(|s| s.parse().ok()),
            media_type: text("media-type").map(|t| normalize_type(&t)),
            sha256,
        });
    }
    None
}
