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
//! without the tail.
//!
//! With an antivirus ([`IbbInspector::with_scanner`]) the decoded bytes also go to the daemon
//! ([`IbbEvent::Data`], which streams them to clamd), and at `<close/>` the held data and the
//! close itself wait for the verdict ([`IbbEvent::AwaitVerdict`] →
//! [`IbbInspector::scanned`]): the sender's close stays unanswered until then (XEP-0047 §2.3:
//! the close is an iq, answered once), and is answered by the receiver when the file passes,
//! or with `<not-acceptable/>` and the reason when it is refused.
//!
//! Every stream is judged by the `file` chain with its sender, recipient and transport `ibb`
//! ([`crate::policy::file`]) from the `<open/>` on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;

use super::inspect::{Detector, Facts, InspectPolicy, Inspection, Refusal, ScanVerdict};
use crate::policy::file::{Offer, Transport};
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
    /// What the daemon must do for the antivirus and the audit.
    pub events: Vec<IbbEvent>,
}

/// What the daemon does for one IBB stream: scan it, and report how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IbbEvent {
    /// A stream was opened: start a scan (and a clock) for `id`.
    Opened {
        /// The stream's id in this session.
        id: u64,
    },
    /// Decoded bytes of stream `id`, for the antivirus.
    Data {
        /// The stream.
        id: u64,
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// Stream `id` ended: finish its scan and answer with [`IbbInspector::scanned`].
    AwaitVerdict {
        /// The stream.
        id: u64,
    },
    /// Stream `id` ended (audit, metrics): passed, or refused.
    Ended(Box<IbbEnded>),
}

/// How one IBB stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbbEnded {
    /// The stream's id in this session.
    pub id: u64,
    /// XEP-0047 `sid`.
    pub sid: String,
    /// The sender (bound JID).
    pub sender: String,
    /// The recipient.
    pub recipient: String,
    /// What the inspection learned.
    pub facts: Facts,
    /// Why it was refused; `None`: delivered.
    pub refusal: Option<Refusal>,
}

impl IbbStep {
    fn forward() -> IbbStep {
        IbbStep { release: Vec::new(), original: Original::Forward, ack: None, ended: None, events: Vec::new() }
    }
}

#[derive(Debug)]
struct Stream {
    ins: Inspection,
    held: Option<Element>,
    /// Opening order (the oldest is forgotten first), and the id the daemon knows it by.
    opened: u64,
    /// The sender's `<close/>`, waiting for the antivirus's verdict.
    closing: Option<Element>,
    sender: String,
    /// The `block-size` of the `<open/>`: no chunk may decode to more (XEP-0047 §2.2).
    block_size: usize,
    /// The `seq` the next `<data/>` must carry (XEP-0047 §2.2: from 0, +1, wrapping at 65535).
    next_seq: u16,
}

/// The IBB sessions one user is sending (see the module docs).
#[derive(Debug)]
pub struct IbbInspector {
    policy: Arc<InspectPolicy>,
    streams: HashMap<(String, String), Stream>,
    /// Ids of stanzas the gateway sent to the server whose answers the client must not see.
    swallow: HashSet<String>,
    next_id: u64,
    /// The daemon streams the bytes to an antivirus and reports its verdict.
    scanner: bool,
}

fn ibb_child<'a>(el: &'a Element, name: &str) -> Option<&'a Element> {
    el.child(NS_IBB, name)
}

impl IbbInspector {
    /// A new inspector with the file policy.
    pub fn new(policy: Arc<InspectPolicy>) -> IbbInspector {
        IbbInspector { policy, streams: HashMap::new(), swallow: HashSet::new(), next_id: 0, scanner: false }
    }

    /// The daemon scans every stream with an antivirus ([`IbbEvent`]).
    #[must_use]
    pub fn with_scanner(mut self) -> IbbInspector {
        self.scanner = true;
        self
    }

    /// A policed iq from the client (`from` stamped with the bound JID).
    pub fn client_stanza(&mut self, el: &Element) -> IbbStep {
        if el.name != "iq" || el.attr("type") != Some("set") {
            return IbbStep::forward();
        }
        let to = el.attr("to").unwrap_or_default().to_owned();
        if let Some(open) = ibb_child(el, "open") {
            let sid = open.attr("sid").unwrap_or_default().to_owned();
            // XEP-0047 §2.1: block-size is at most 65535; a larger (or missing) one is refused
            // before anything is tracked for it.
            let block_size = match open.attr("block-size").map(str::parse::<u16>) {
                Some(Ok(n)) if n > 0 => usize::from(n),
                Some(_) => return bounce(StanzaCondition::ResourceConstraint, "block-size must be 1 to 65535"),
                None => return bounce(StanzaCondition::BadRequest, "open without block-size"),
            };
            // Opens the receiver declined never see a close: past the cap the oldest stream is
            // forgotten (its later data is refused as unknown, never let through).
            if self.streams.len() >= MAX_STREAMS {
                if let Some(oldest) = self.streams.iter().min_by_key(|(_, s)| s.opened).map(|(k, _)| k.clone()) {
                    self.streams.remove(&oldest);
                }
            }
            self.next_id += 1;
            let opened = self.next_id;
            let sender = el.attr("from").unwrap_or_default().to_owned();
            let offer = Offer {
                sender: crate::jid::parse(&sender),
                recipient: crate::jid::parse(&to),
                transport: Some(Transport::Ibb),
                ..Offer::default()
            };
            return match Inspection::with_offer(self.policy.clone(), offer) {
                Ok(ins) => {
                    self.streams.insert(
                        (sid, to),
                        Stream { ins, held: None, opened, closing: None, sender, block_size, next_seq: 0 },
                    );
                    let mut step = IbbStep::forward();
                    step.events.push(IbbEvent::Opened { id: opened });
                    step
                }
                Err(r) => {
                    let mut step = bounce(StanzaCondition::NotAcceptable, &format!("file refused: {r}"));
                    step.events.push(IbbEvent::Ended(Box::new(IbbEnded {
                        id: opened,
                        sid,
                        sender,
                        recipient: to,
                        facts: Facts::default(),
                        refusal: Some(r),
                    })));
                    step
                }
            };
        }
        if let Some(data) = ibb_child(el, "data") {
            let key = (data.attr("sid").unwrap_or_default().to_owned(), to);
            let Some(stream) = self.streams.get_mut(&key).filter(|s| s.closing.is_none()) else {
                // Data for a stream opened before inspection started, never opened, or already
                // closing: it would cross uninspected.
                return bounce(StanzaCondition::NotAcceptable, "unknown in-band bytestream");
            };
            let text: String = data.text().chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(b) => b,
                Err(_) => return bounce(StanzaCondition::BadRequest, "data is not base64"),
            };
            // XEP-0047 §2.2: a seq out of order or a chunk over the block size means the
            // bytes cannot be put together as sent: the stream is cut, never guessed at.
            let seq = data.attr("seq").and_then(|s| s.parse::<u16>().ok());
            if seq != Some(stream.next_seq) {
                let detail =
                    format!("data seq {} where {} was due", data.attr("seq").unwrap_or("(none)"), stream.next_seq);
                return self.cut(key, protocol_refusal(detail));
            }
            if bytes.len() > stream.block_size {
                let detail = format!("data of {} bytes over the block-size {}", bytes.len(), stream.block_size);
                return self.cut(key, protocol_refusal(detail));
            }
            stream.next_seq = stream.next_seq.wrapping_add(1);
            if let Err(r) = stream.ins.push(&bytes) {
                return self.cut(key, r);
            }
            let events = if self.scanner { vec![IbbEvent::Data { id: stream.opened, bytes }] } else { Vec::new() };
            let step = IbbStep {
                release: stream.held.take().into_iter().collect(),
                original: Original::Held,
                ack: Some(result_for(el)),
                ended: None,
                events,
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
            if stream.closing.is_some() {
                self.streams.insert(key, stream);
                return bounce(StanzaCondition::BadRequest, "the stream is already closing");
            }
            if let Err(r) = stream.ins.finish() {
                self.streams.insert(key.clone(), stream);
                return self.cut(key, r);
            }
            if self.scanner {
                // The close waits for the antivirus: neither it nor the held data moves yet.
                let id = stream.opened;
                stream.closing = Some(el.clone());
                self.streams.insert(key, stream);
                return IbbStep {
                    release: Vec::new(),
                    original: Original::Held,
                    ack: None,
                    ended: None,
                    events: vec![IbbEvent::AwaitVerdict { id }],
                };
            }
            return match stream.ins.scanned(ScanVerdict::NotConfigured) {
                Ok(tail) => {
                    debug_assert!(tail.is_empty() || stream.held.is_some());
                    let (release, ended) = self.release(key, stream);
                    IbbStep {
                        release,
                        original: Original::Forward,
                        ack: None,
                        ended: Some((ended.facts.clone(), None)),
                        events: vec![ended_event(&ended)],
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

    /// The stream passed: its held data goes first (the receiver's answer swallowed, the
    /// sender had the gateway's).
    fn release(&mut self, key: (String, String), mut stream: Stream) -> (Vec<Element>, Ended) {
        let release: Vec<Element> = stream.held.take().into_iter().collect();
        for r in &release {
            if let Some(id) = r.attr("id") {
                self.remember(id);
            }
        }
        let ended = Ended {
            id: stream.opened,
            sid: key.0,
            sender: stream.sender,
            recipient: key.1,
            facts: stream.ins.facts().clone(),
            refusal: None,
        };
        (release, ended)
    }

    /// The antivirus's verdict on stream `id` (after [`IbbEvent::AwaitVerdict`]): what to send
    /// to the server and to the client. `None` if no stream waits under that id.
    pub fn scanned(&mut self, id: u64, verdict: ScanVerdict) -> Option<IbbVerdict> {
        let key = self.streams.iter().find(|(_, s)| s.opened == id && s.closing.is_some()).map(|(k, _)| k.clone())?;
        let mut stream = self.streams.remove(&key)?;
        let close = stream.closing.take()?;
        match stream.ins.scanned(verdict) {
            Ok(_) => {
                let (mut to_server, ended) = self.release(key, stream);
                // The sender's own close: the receiver's answer is the sender's.
                to_server.push(close);
                Some(IbbVerdict { to_server, to_client: None, ended: ended_event(&ended) })
            }
            Err(r) => {
                let text = format!("file refused: {r}");
                self.streams.insert(key.clone(), stream);
                let step = self.cut(key, r);
                let to_client = crate::stanza::error_reply(&close, StanzaCondition::NotAcceptable, Some(&text), "");
                let ended = step.events.into_iter().next()?;
                Some(IbbVerdict { to_server: step.release, to_client, ended })
            }
        }
    }

    /// Refuse stream `key`: the receiver gets a close, the sender an error.
    fn cut(&mut self, key: (String, String), r: Refusal) -> IbbStep {
        let (facts, id, sender) =
            self.streams.remove(&key).map(|s| (s.ins.facts().clone(), s.opened, s.sender)).unwrap_or_default();
        self.next_id += 1;
        let close_id = format!("stanzawall-ibb-close-{}", self.next_id);
        self.remember(&close_id);
        let (sid, to) = key;
        let close = Element::new(crate::stream::NS_CLIENT, "iq")
            .with_attr("type", "set")
            .with_attr("id", close_id)
            .with_attr("to", to.as_str())
            .with_child(Element::new(NS_IBB, "close").with_attr("sid", sid.as_str()));
        let ended = Ended { id, sid, sender, recipient: to, facts: facts.clone(), refusal: Some(r.clone()) };
        IbbStep {
            release: vec![close],
            original: Original::Bounce(StanzaCondition::NotAcceptable, format!("file refused: {r}")),
            ack: None,
            ended: Some((facts, Some(r))),
            events: vec![ended_event(&ended)],
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

/// A stream broken as XEP-0047 defines it (seq, block size).
fn protocol_refusal(detail: String) -> Refusal {
    Refusal { detector: Detector::Protocol, detail, rule: None }
}

fn bounce(condition: StanzaCondition, text: &str) -> IbbStep {
    IbbStep {
        release: Vec::new(),
        original: Original::Bounce(condition, text.to_owned()),
        ack: None,
        ended: None,
        events: Vec::new(),
    }
}

/// What the antivirus's verdict on a closing stream sends.
#[derive(Debug, Clone, PartialEq)]
pub struct IbbVerdict {
    /// To the server, in order: the held data and the sender's close (passed), or the
    /// gateway's close without the tail (refused).
    pub to_server: Vec<Element>,
    /// To the client: the error answering its close (refused).
    pub to_client: Option<Element>,
    /// The [`IbbEvent::Ended`] record.
    pub ended: IbbEvent,
}

/// [`IbbEnded`] as it is built.
type Ended = IbbEnded;

fn ended_event(e: &Ended) -> IbbEvent {
    IbbEvent::Ended(Box::new(e.clone()))
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
