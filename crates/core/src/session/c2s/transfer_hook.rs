//! Where the c2s session meets the file-transfer door ([`crate::transfer::mediate`]): iqs to
//! the gateway's proxy JID are answered here and never reach the server; with `mediate`,
//! streamhost offers both ways name only the gateway's proxy and the server's disco#items
//! answer lists it. Runs after policy: a stanza the policy refused is never answered or
//! rewritten.

use std::sync::Arc;

use super::C2sSession;
use crate::stream::NS_CLIENT;
use crate::transfer::ibb::{IbbInspector, Original, NS_IBB};
use crate::transfer::mediate::{self, ProxyIq};
use crate::transfer::{Activator, InspectPolicy, ProxySettings};
use crate::xml::Element;

/// The proxy's settings and the relay it activates.
#[derive(Debug)]
pub(super) struct FileTransferHook {
    pub(super) settings: ProxySettings,
    pub(super) activator: Arc<dyn Activator>,
    /// XEP-0047 streams the user sends, inspected in-stream.
    pub(super) ibb: Option<IbbInspector>,
}

impl C2sSession {
    /// Answer the gateway's proxy JID and mediate transfers (`[file_transfer]`).
    #[must_use]
    pub fn with_file_transfer(mut self, settings: ProxySettings, activator: Arc<dyn Activator>) -> Self {
        self.transfer = Some(FileTransferHook { settings, activator, ibb: None });
        self
    }

    /// Inspect the in-band bytestreams (XEP-0047) the user sends with `policy` (after
    /// [`C2sSession::with_file_transfer`]).
    #[must_use]
    pub fn with_ibb_inspection(mut self, policy: Arc<InspectPolicy>) -> Self {
        if let Some(hook) = self.transfer.as_mut() {
            hook.ibb = Some(IbbInspector::new(policy));
        }
        self
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
