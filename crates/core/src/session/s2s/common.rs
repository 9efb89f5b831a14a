//! What both s2s kinds share: the two legs' buffers, effects, closing with a stream error,
//! timers, the per-domain rate and the policy glue. The front leg is the one accepted by the
//! listener (the remote server inbound, our server outbound); the back leg is the one the
//! gateway opened.

use std::collections::VecDeque;
use std::time::Instant;

use super::{S2sSettings, S2sWrite};
use crate::policy::rate::{Bucket, KeySource};
use crate::policy::{Chain, Context, Outcome};
use crate::session::{CloseReason, Counters, Effect, PolicyBinding, StanzaSummary};
use crate::stanza::{self, Kind, StanzaCondition};
use crate::stream::{Condition, Header, StreamError, STREAM_CLOSE};
use crate::xml::{Element, StreamReader, NS_SERVER};

/// The legs and bookkeeping of one s2s session.
#[derive(Debug)]
pub(crate) struct S2sCore {
    pub(crate) cfg: S2sSettings,
    pub(crate) front: StreamReader,
    pub(crate) back: StreamReader,
    pub(crate) to_front: Vec<u8>,
    pub(crate) to_back: Vec<u8>,
    /// Our header is out on the front leg's current stream.
    pub(crate) front_header_sent: bool,
    /// Our header is out on the back leg (a close tag may be written there).
    pub(crate) back_open: bool,
    pub(crate) effects: VecDeque<Effect>,
    pub(crate) counters: Counters,
    pub(crate) filter: PolicyBinding,
    pub(crate) now: Instant,
    pub(crate) last_activity: Instant,
    /// Until the first pair is usable; never moved by traffic.
    pub(crate) handshake_deadline: Instant,
    /// A pair is usable: the idle timer applies from here.
    pub(crate) established: bool,
    pub(crate) closed: bool,
    /// The front leg's TLS handshake is under way: nothing can be written to it.
    pub(crate) front_in_tls_handshake: bool,
}

impl S2sCore {
    pub(crate) fn new(cfg: S2sSettings, filter: PolicyBinding, now: Instant) -> S2sCore {
        let front = StreamReader::new(cfg.limits);
        let back = StreamReader::new(cfg.backend_limits);
        let handshake_deadline = now + cfg.timeouts.handshake;
        S2sCore {
            cfg,
            front,
            back,
            to_front: Vec::new(),
            to_back: Vec::new(),
            front_header_sent: false,
            back_open: false,
            effects: VecDeque::new(),
            counters: Counters::default(),
            filter,
            now,
            last_activity: now,
            handshake_deadline,
            established: false,
            closed: false,
            front_in_tls_handshake: false,
        }
    }

    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.last_activity = self.last_activity.max(now);
    }

    /// Write our header on the front leg (`from` = the domain it addressed).
    pub(crate) fn write_front_header(&mut self, from: Option<String>, to: Option<String>) {
        let h = Header { from, to, id: Some(self.cfg.stream_id.clone()), lang: None };
        h.write_s2s(&mut self.to_front);
        self.front_header_sent = true;
    }

    pub(crate) fn finish(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.effects.push_back(Effect::Close(reason));
        }
    }

    pub(crate) fn close_back_stream(&mut self) {
        if self.back_open {
            self.to_back.extend_from_slice(STREAM_CLOSE);
            self.back_open = false;
        }
    }

    /// Write `err` and the close tag on the front leg (our header first if needed).
    pub(crate) fn front_error_no_finish(&mut self, err: &StreamError, header_from: Option<String>) {
        if self.front_in_tls_handshake {
            return;
        }
        if !self.front_header_sent {
            self.write_front_header(header_from, None);
        }
        err.to_element().write_to(&mut self.to_front, NS_SERVER);
        self.to_front.extend_from_slice(STREAM_CLOSE);
    }

    /// Close the session with a stream error to the front leg.
    pub(crate) fn front_error(&mut self, condition: Condition, text: &str, header_from: Option<String>) {
        if self.closed {
            return;
        }
        let err = StreamError::new(condition, Some(text.to_owned()));
        self.front_error_no_finish(&err, header_from);
        self.close_back_stream();
        self.finish(CloseReason::ClientError(err));
    }

    /// The front leg's connection broke below the stream.
    pub(crate) fn front_disconnected(&mut self) {
        if !self.closed {
            self.close_back_stream();
            self.finish(CloseReason::ClientClosed);
        }
    }

    /// The front leg stopped reading: nothing more is written to it.
    pub(crate) fn front_not_reading(&mut self) {
        if !self.closed {
            self.to_front.clear();
            self.close_back_stream();
            self.finish(CloseReason::ClientNotReading);
        }
    }

    /// The gateway shuts down: `<system-shutdown/>` to the front leg (and to the back leg when
    /// `tell_back`: a remote server deserves the reason too), both closed.
    pub(crate) fn shutdown(&mut self, header_from: Option<String>, tell_back: bool) {
        if self.closed {
            return;
        }
        let err = StreamError::new(Condition::SystemShutdown, None);
        self.front_error_no_finish(&err, header_from);
        if tell_back && self.back_open {
            err.to_element().write_s2s(&mut self.to_back);
        }
        self.close_back_stream();
        self.finish(CloseReason::Shutdown);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        Some(if self.established { self.last_activity + self.cfg.timeouts.idle } else { self.handshake_deadline })
    }

    /// Is `remote` over its `stanza_rate_per_domain` (or `connection_rate_per_domain` with
    /// `connection`) in `chain`?
    pub(crate) fn over_domain_rate(&self, remote: &str, chain: Chain, connection: bool) -> bool {
        let rules = self.filter.policy.s2s();
        let (limit, limiter) = match connection {
            false => (rules.stanza_rate.as_ref(), "s2s.stanza_rate_per_domain"),
            true => (rules.connection_rate.as_ref(), "s2s.connection_rate_per_domain"),
        };
        let Some(limit) = limit else { return false };
        let source = KeySource::Address(self.filter.source_ip);
        self.filter.rates.over_limit(Bucket { limiter, chain, key: remote }, &source, limit, self.now)
    }

    /// Answer a refused stanza from the front leg with a stanza error on that leg (or drop it
    /// where none may be sent, RFC 6120 §8.3.1), and audit it.
    pub(crate) fn refuse_front_stanza(&mut self, el: &Element, condition: StanzaCondition, reason: &'static str) {
        let summary = StanzaSummary::of(el, None);
        let replier = el.attr("to").unwrap_or_default().to_owned();
        match (stanza::error_reply(el, condition, Some(reason), &replier), summary) {
            (Some(reply), Some(stanza)) => {
                reply.write_to(&mut self.to_front, NS_SERVER);
                self.effects.push_back(Effect::Bounced { stanza, condition, reason });
            }
            (_, stanza) => self.effects.push_back(Effect::Dropped { from_backend: false, stanza, reason }),
        }
    }

    /// Run a front-leg stanza through `chain`: the stanza to forward, or `None` when it was
    /// dropped, bounced (on the front leg, toward its sender) or the session closed.
    pub(crate) fn police(&mut self, chain: Chain, el: Element) -> Option<Element> {
        let (binding, now) = (&self.filter, self.now);
        if Kind::of(&el).is_none() || binding.policy.is_pass_all(chain) {
            return Some(el);
        }
        let ctx = Context { chain, user: None, source_ip: binding.source_ip };
        let mut eval = binding.policy.evaluate_stanza(&el, &ctx, &*binding.rates, now);
        // The same audit mapping as c2s and passive inspection.
        let include_body = binding.policy.audit().include_body;
        let effects = crate::session::c2s::policy_effects(chain, &el, &mut eval, None, include_body);
        self.effects.extend(effects);
        self.effects.extend(binding.rates.antispam().take_events().into_iter().map(Effect::AntiSpam));
        match eval.outcome {
            Outcome::Pass => Some(el),
            Outcome::Rewrite(new) => Some(new),
            Outcome::Drop => None,
            Outcome::Bounce { condition, text } => {
                let replier = el.attr("to").unwrap_or_default().to_owned();
                if let Some(reply) = stanza::error_reply(&el, condition, text.as_deref(), &replier) {
                    reply.write_to(&mut self.to_front, NS_SERVER);
                }
                None
            }
            Outcome::Close { condition, text } => {
                let text = text.unwrap_or_else(|| "closed by policy".to_owned());
                self.front_error(condition, &text, None);
                None
            }
            Outcome::Quarantine => {
                if let Some(held) = crate::session::c2s::held(chain, el, &eval, None) {
                    self.effects.push_back(Effect::Quarantine(Box::new(held)));
                }
                None
            }
        }
    }

    /// Bytes from the back leg that may not appear there: audited and dropped.
    pub(crate) fn drop_back_stanza(&mut self, el: &Element, reason: &'static str) {
        let stanza = StanzaSummary::of(el, None);
        self.effects.push_back(Effect::Dropped { from_backend: true, stanza, reason });
    }
}
