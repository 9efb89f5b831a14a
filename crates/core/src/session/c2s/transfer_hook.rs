//! Where the c2s session meets the file-transfer door ([`crate::transfer::mediate`]): iqs to
//! the gateway's proxy JID are answered here and never reach the server; with `mediate`,
//! streamhost offers both ways name only the gateway's proxy and the server's disco#items
//! answer lists it. Runs after policy: a stanza the policy refused is never answered or
//! rewritten.

use std::sync::Arc;

use super::C2sSession;
use crate::stream::NS_CLIENT;
use crate::transfer::mediate::{self, ProxyIq};
use crate::transfer::{Activator, ProxySettings};
use crate::xml::Element;

/// The proxy's settings and the relay it activates.
#[derive(Debug, Clone)]
pub(super) struct FileTransferHook {
    pub(super) settings: ProxySettings,
    pub(super) activator: Arc<dyn Activator>,
}

impl C2sSession {
    /// Answer the gateway's proxy JID and mediate transfers (`[file_transfer]`).
    #[must_use]
    pub fn with_file_transfer(mut self, settings: ProxySettings, activator: Arc<dyn Activator>) -> Self {
        self.transfer = Some(FileTransferHook { settings, activator });
        self
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
        Some(el)
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
