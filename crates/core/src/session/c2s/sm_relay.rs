//! Stream Management (XEP-0198) relayed through the gateway with its counters rewritten.
//!
//! Because the gateway withholds and injects stanzas, it owns the XEP-0198 counters: `<a h/>`
//! from each side is translated ([`super::sm`]) so neither end sees a mismatch or resends.
//! Resumption (XEP-0198 §5) is not offered through the gateway: `resume` is removed from
//! `<enable/>` and a `<resume/>` is answered with `<failed/>`, since the counters live in this
//! session only.

use super::sm::{TooManyUnacked, NS_SM};
use super::C2sSession;
use crate::session::StreamMachine;
use crate::stanza::NS_STANZA_ERRORS;
use crate::stream::{Condition, NS_CLIENT};
use crate::xml::Element;

impl C2sSession {
    /// Close the session when the SM bookkeeping is full (too much withheld without an ack).
    pub(super) fn sm_result(&mut self, r: Result<(), TooManyUnacked>) {
        if let Err(e) = r {
            if !self.is_closed() {
                self.close_with(e.stream_error());
            }
        }
    }

    /// A top-level element in the SM namespace from the client (after SASL success).
    pub(super) fn on_client_sm(&mut self, mut el: Element) {
        if self.bound.is_none() && el.name != "resume" {
            return self.client_error(Condition::UnsupportedStanzaType, "stream management before resource binding");
        }
        match el.name.as_str() {
            "enable" if self.sm_enable_pending || self.sm.to_server.is_enabled() => {
                // XEP-0198 §3: enabling twice is an error; answered here so the counters of the
                // enabled stream are not reset.
                let failed =
                    Element::new(NS_SM, "failed").with_child(Element::new(NS_STANZA_ERRORS, "unexpected-request"));
                failed.write_to(&mut self.to_client, NS_CLIENT);
            }
            "enable" => {
                self.sm_enable_pending = true;
                // No resumption through the gateway (see the module docs).
                el.remove_attr("resume");
                el.remove_attr("max");
                el.write_to(&mut self.to_backend, NS_CLIENT);
                self.sm.to_server.enable();
            }
            "r" => el.write_to(&mut self.to_backend, NS_CLIENT),
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return self.client_error(Condition::InvalidXml, "<a/> without a valid h");
                };
                match self.sm.to_client.translate_ack(h) {
                    Ok(h) => {
                        Element::new(NS_SM, "a")
                            .with_attr("h", h.to_string())
                            .write_to(&mut self.to_backend, NS_CLIENT);
                        self.drain_client_acked();
                    }
                    Err(e) => self.close_with(e.stream_error()),
                }
            }
            "resume" => {
                let failed = Element::new(NS_SM, "failed").with_child(Element::new(NS_STANZA_ERRORS, "item-not-found"));
                failed.write_to(&mut self.to_client, NS_CLIENT);
            }
            _ => self.client_error(Condition::UnsupportedStanzaType, "unsupported stream management element"),
        }
    }

    /// A top-level element in the SM namespace from the backend.
    pub(super) fn on_backend_sm(&mut self, mut el: Element) {
        match el.name.as_str() {
            "enabled" => {
                // A `location` would send the client around the gateway on reconnection.
                for a in ["location", "resume", "id", "max"] {
                    el.remove_attr(a);
                }
                el.write_to(&mut self.to_client, NS_CLIENT);
                self.sm_enable_pending = false;
                self.sm.to_client.enable();
            }
            "failed" => {
                el.write_to(&mut self.to_client, NS_CLIENT);
                // Only a refusal of the pending <enable/> stops the client → server counting.
                if std::mem::take(&mut self.sm_enable_pending) {
                    self.sm.to_server.disable();
                }
            }
            "r" => el.write_to(&mut self.to_client, NS_CLIENT),
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return self.fail_backend("<a/> without a valid h from backend".to_owned());
                };
                match self.sm.to_server.translate_ack(h) {
                    Ok(h) => {
                        Element::new(NS_SM, "a").with_attr("h", h.to_string()).write_to(&mut self.to_client, NS_CLIENT);
                        self.drain_server_acked();
                    }
                    Err(e) => self.fail_backend(format!("backend acknowledged impossibly: {}", e.stream_error())),
                }
            }
            other => self.fail_backend(format!("unexpected stream management <{other}/> from backend")),
        }
    }
}
