//! In-band bytestreams (XEP-0047) reassembled and inspected in the sender's c2s stream.
//!
//! Every `<data/>` iq of an IBB session the user opened is decoded and pushed through the
//! inspection pipeline as it passes. The tail is held back a whole stanza deep: the latest
//! data iq is withheld from the server and acknowledged to the sender by the gateway (XEP-0047
//! §2.2 lets the sender go on after the result), and released when the next one arrives — the
//! receiver's result for a released iq was already given, so it is swallowed on the way back.
//! At `<close/>` the whole-file checks run (size, SHA-256 against the hash list, media type,
//! DLP); only if they pass are the held data and the close forwarded. A refused stream is cut:
//! the sender's stanza gets `<not-acceptable/>` with the reason, the receiver gets a `<close/>`
//! without the tail. clamd is not consulted here (the session cannot wait on the daemon's
//! I/O), so a deployment that needs antivirus on every file refuses IBB by policy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;

use super::inspect::{Facts, InspectPolicy, Inspection, Refusal, ScanVerdict};
use crate::stanza::StanzaCondition;
use crate::xml::Element;

/// XEP-0047 namespace.
pub const NS_IBB: &str = "http://jabber.org/protocol/ibb";
/// Most IBB sessions inspected at once per c2s session (each holds one stanza and a hasher).
const MAX_STREAMS: usize = 16;

/// What becomes of the client's stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Original {
    /// Forward it (possibly after [`IbbStep::release`]).
    Forward,
    /// Withheld by the gateway (acknowledged with [`IbbStep::ack`]).
    Held,
    /// Refuse it with this error (the reason is the text).
    Bounce(StanzaCondition, String),
}

/// The outcome of one client stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbbStep {
    /// Stanzas to send to the server first, on the gateway's behalf (held data, a close).
    pub release: Vec<Element>,
    /// The client's stanza.
    pub original: Original,
    /// The gateway's answer to the client (the result for a held data iq).
    pub ack: Option<Element>,
    /// A stream ended: its facts and, if refused, why (for audit and metrics).
    pub ended: Option<(Facts, Option<Refusal>)>,
}

impl IbbStep {
    fn forward() -> IbbStep {
        IbbStep { release: Vec::new(), original: Original::Forward, ack: None, ended: None }
    }
}

#[derive(Debug)]
struct Stream {
    ins: Inspection,
    held: Option<Element>,
    /// Opening order (the oldest is forgotten first).
    opened: u64,
}

/// The IBB sessions one user is sending (see the module docs).
#[derive(Debug)]
pub struct IbbInspector {
    policy: Arc<InspectPolicy>,
    streams: HashMap<(String, String), Stream>,
    /// Ids of stanzas the gateway sent to the server whose answers the client must not see.
    swallow: HashSet<String>,
    next_id: u64,
}

fn ibb_child<'a>(el: &'a Element, name: &str) -> Option<&'a Element> {
    el.child(NS_IBB, name)
}

impl IbbInspector {
    /// A new inspector with the file policy.
    pub fn new(policy: Arc<InspectPolicy>) -> IbbInspector {
        IbbInspector { policy, streams: HashMap::new(), swallow: HashSet::new(), next_id: 0 }
    }

    /// A policed iq from the client (`from` stamped with the bound JID).
    pub fn client_stanza(&mut self, el: &Element) -> IbbStep {
        if el.name != "iq" || el.attr("type") != Some("set") {
            return IbbStep::forward();
        }
        let to = el.attr("to").unwrap_or_default().to_owned();
        if let Some(open) = ibb_child(el, "open") {
            let sid = open.attr("sid").unwrap_or_default().to_owned();
            // Opens the receiver declined never see a close: past the cap the oldest stream is
            // forgotten (its later data is refused as unknown, never let through).
            if self.streams.len() >= MAX_STREAMS {
                if let Some(oldest) = self.streams.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| k.clone()) {
                    self.streams.remove(&oldest);
                }
            }
            self.next_id += 1;
            let opened = self.next_id;
            return match Inspection::new(self.policy.clone(), None) {
                Ok(ins) => {
                    self.streams.insert((sid, to), Stream { ins, held: None, opened });
                    IbbStep::forward()
                }
                Err(r) => bounce(StanzaCondition::NotAcceptable, &format!("file refused: {r}")),
            };
        }
        if let Some(data) = ibb_child(el, "data") {
            let key = (data.attr("sid").unwrap_or_default().to_owned(), to);
            let Some(stream) = self.streams.get_mut(&key) else {
                // Data for a stream opened before inspection started, or never opened: it
                // would cross uninspected.
                return bounce(StanzaCondition::NotAcceptable, "unknown in-band bytestream");
            };
            let text: String = data.text().chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(b) => b,
                Err(_) => return bounce(StanzaCondition::BadRequest, "data is not base64"),
            };
            if let Err(r) = stream.ins.push(&bytes) {
                return self.cut(key, r);
            }
            let step = IbbStep {
                release: stream.held.take().into_iter().collect(),
                original: Original::Held,
                ack: Some(result_for(el)),
                ended: None,
            };
            stream.held = Some(el.clone());
            for r in &step.release {
                if let Some(id) = r.attr("id") {
                    self.remember(id);
                }
            }
            return step;
        }
        if let Some(close) = ibb_child(el, "close") {
            let key = (close.attr("sid").unwrap_or_default().to_owned(), to);
            let Some(mut stream) = self.streams.remove(&key) else { return IbbStep::forward() };
            let verdict = stream.ins.finish().map(|_| ()).and_then(|()| stream.ins.scanned(ScanVerdict::NotConfigured));
            return match verdict {
                Ok(_) => {
                    let release: Vec<Element> = stream.held.take().into_iter().collect();
                    for r in &release {
                        if let Some(id) = r.attr("id") {
                            self.remember(id);
                        }
                    }
                    IbbStep {
                        release,
                        original: Original::Forward,
                        ack: None,
                        ended: Some((stream.ins.facts().clone(), None)),
                    }
                }
                Err(r) => {
                    self.streams.insert(key.clone(), stream);
                    self.cut(key, r)
                }
            };
        }
        IbbStep::forward()
    }

    /// Refuse stream `key`: the receiver gets a close, the sender an error.
    fn cut(&mut self, key: (String, String), r: Refusal) -> IbbStep {
        let facts = self.streams.remove(&key).map(|s| s.ins.facts().clone()).unwrap_or_default();
        self.next_id += 1;
        let id = format!("stanzawall-ibb-close-{}", self.next_id);
        self.remember(&id);
        let (sid, to) = key;
        let close = Element::new(crate::stream::NS_CLIENT, "iq")
            .with_attr("type", "set")
            .with_attr("id", id)
            .with_attr("to", to)
            .with_child(Element::new(NS_IBB, "close").with_attr("sid", sid));
        IbbStep {
            release: vec![close],
            original: Original::Bounce(StanzaCondition::NotAcceptable, format!("file refused: {r}")),
            ack: None,
            ended: Some((facts, Some(r))),
        }
    }

    fn remember(&mut self, id: &str) {
        // Answers that never come must not grow this without bound.
        if self.swallow.len() >= 4096 {
            self.swallow.clear();
        }
        self.swallow.insert(id.to_owned());
    }

    /// A stanza from the server: true if it answers one the gateway sent on the client's
    /// behalf (the client already has its answer), so it is withheld.
    pub fn swallows(&mut self, el: &Element) -> bool {
        el.name == "iq"
            && matches!(el.attr("type"), Some("result" | "error"))
            && el.attr("id").is_some_and(|id| self.swallow.remove(id))
    }
}

fn bounce(condition: StanzaCondition, text: &str) -> IbbStep {
    IbbStep { release: Vec::new(), original: Original::Bounce(condition, text.to_owned()), ack: None, ended: None }
}

/// The result the receiver would send, given by the gateway for a held data iq.
fn result_for(el: &Element) -> Element {
    let mut r = Element::new(el.ns.clone(), "iq").with_attr("type", "result");
    if let Some(id) = el.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(to) = el.attr("to") {
        r.set_attr("from", to);
    }
    if let Some(from) = el.attr("from") {
        r.set_attr("to", from);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::NS_CLIENT;

    fn iq(child: Element) -> Element {
        Element::new(NS_CLIENT, "iq")
            .with_attr("type", "set")
            .with_attr("id", "x")
            .with_attr("to", "bob@example.test/b")
            .with_attr("from", "alice@example.test/a")
            .with_child(child)
    }

    #[test]
    fn declined_opens_never_lock_out_new_streams() {
        let mut ibb = IbbInspector::new(Arc::new(InspectPolicy::default()));
        for i in 0..(MAX_STREAMS + 3) {
            let open = Element::new(NS_IBB, "open").with_attr("sid", format!("s{i}")).with_attr("block-size", "4096");
            assert_eq!(ibb.client_stanza(&iq(open)).original, Original::Forward, "open {i}");
        }
        assert_eq!(ibb.streams.len(), MAX_STREAMS);
        // The oldest was forgotten: its data is refused, never let through uninspected.
        let data = Element::new(NS_IBB, "data").with_attr("sid", "s0").with_attr("seq", "0").with_text("aGk=");
        assert!(matches!(ibb.client_stanza(&iq(data)).original, Original::Bounce(StanzaCondition::NotAcceptable, _)));
        let data = Element::new(NS_IBB, "data").with_attr("sid", "s18").with_attr("seq", "0").with_text("aGk=");
        assert_eq!(ibb.client_stanza(&iq(data)).original, Original::Held);
    }
}
