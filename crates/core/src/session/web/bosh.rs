//! [`BoshSession`]: BOSH (XEP-0124, XMPP over it: XEP-0206) as a [`StreamMachine`] wrapped
//! around a [`C2sSession`].
//!
//! A BOSH session spans many HTTP requests on several connections. The daemon's HTTP tasks
//! read each request ([`http`]) and hand its body to the session as a [`leg`] record tagged
//! with a handle; the session answers each handle with one `<body/>`. Everything a BOSH
//! connection manager decides lives here, without sockets or clocks:
//!
//! - the `rid` window (XEP-0124 §14): requests are processed strictly in `rid` order; one
//!   that arrives early waits (at most `requests` of them) until the gap is filled; one
//!   outside the window ends the session with `item-not-found`;
//! - retransmission (§14.3): a `rid` already answered gets the identical response from a
//!   cache and nothing reaches the c2s machine twice; a `rid` still held is answered on the
//!   connection it came on last (the earlier one broke);
//! - `hold` and `wait` (§7.1, §11): at most `hold` requests are held; the oldest is answered
//!   when data comes, when another request pushes it over `hold`, or empty at `wait`;
//! - `xmpp:restart` (XEP-0206 §5) becomes a new stream header for the c2s machine;
//! - `type='terminate'` (§12), and the stream's end becomes a terminal `<body/>` with
//!   `remote-stream-error` and the `<stream:error/>` (XEP-0206 §7), delivered before the
//!   session reports its close;
//! - inactivity (§7.1): no request for `inactivity` while none is held means the client left.
//!
//! Each body is parsed with the gateway's restricted reader ([`body`]) and capped (before SASL
//! success at `preauth_stanza_bytes` plus the wrapper, as a TCP client's stanza); its children
//! are re-serialized into the c2s stream, so every stanza takes the c2s path (checks, policy
//! chains, audit, XEP-0198 counters) exactly as from a TCP client. A stanza the gateway drops
//! simply leaves its request to be answered by an empty `<body/>` at `wait`. The backend leg
//! is the c2s machine's own: the server's plain c2s port.

pub mod body;
pub mod http;
pub mod leg;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::framing::standalone;
use super::Origins;
use crate::jid::FullJid;
use crate::policy::Policy;
use crate::session::{C2sSession, CloseReason, Counters, Effect, StreamMachine, NS_SASL};
use crate::stream::{Condition, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::{escape_attr_str, StreamReader, XmlError, XmlEvent, XmlLimits, NS_STREAMS};
use body::{parse_body, BodyError, Request, ResponseBody};
use leg::{LegDecoder, Record};

/// Room for the `<body/>` wrapper around a request's stanzas, on top of the stanza cap.
pub const BODY_OVERHEAD: usize = 1024;
/// How long a session whose stream ended waits for a request to carry the terminal `<body/>`
/// before it closes anyway.
const LINGER: Duration = Duration::from_secs(5);

/// One BOSH listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoshConfig {
    /// The request path (`/http-bind`).
    pub path: String,
    /// Browser origins allowed.
    pub origins: Origins,
    /// Largest request body accepted after authentication (before it, the pre-auth stanza cap
    /// plus [`BODY_OVERHEAD`]).
    pub max_request_bytes: usize,
    /// Longest `wait` granted (XEP-0124 §7.1: the client asks, the manager may lower it).
    pub max_wait: Duration,
    /// Largest `hold` granted.
    pub max_hold: u64,
    /// A session with no request held ends after this long without one.
    pub inactivity: Duration,
    /// Most client-bound bytes queued while no request is there to carry them; past it the
    /// client is not reading (invariant 6).
    pub max_pending_bytes: usize,
    /// What host-meta advertises for this listener; `None`: `https://` + `Host` + `path`.
    pub public_url: Option<String>,
    /// The domains host-meta is served for.
    pub domains: Vec<String>,
    /// The other web listeners' endpoints, for host-meta.
    pub links: Vec<super::http::HostMetaLink>,
}

impl Default for BoshConfig {
    fn default() -> Self {
        BoshConfig {
            path: "/http-bind".to_owned(),
            origins: Origins::SameHost,
            max_request_bytes: 262_144 + BODY_OVERHEAD,
            max_wait: Duration::from_secs(60),
            max_hold: 2,
            inactivity: Duration::from_secs(60),
            max_pending_bytes: 1 << 20,
            public_url: None,
            domains: Vec::new(),
            links: Vec::new(),
        }
    }
}

/// A processed request waiting for its answer.
#[derive(Debug)]
struct Held {
    rid: u64,
    /// `None`: the HTTP connection it came on is gone; its answer goes to the cache only.
    handle: Option<u64>,
    due: Instant,
}

/// An early request waiting for the requests before it.
#[derive(Debug)]
struct Early {
    handle: Option<u64>,
    request: Request,
}

/// One BOSH session carrying one XMPP c2s stream (see the module docs).
#[derive(Debug)]
pub struct BoshSession {
    cfg: Arc<BoshConfig>,
    inner: C2sSession,
    sid: String,
    leg: LegDecoder,
    to_client: Vec<u8>,
    /// Reads the c2s machine's client-bound stream back into elements.
    reader: StreamReader,
    created: bool,
    wait: Duration,
    hold: usize,
    /// The stream's `to` and `xml:lang` from the session-creation request.
    to: String,
    lang: Option<String>,
    /// The next `rid` to process.
    next_rid: u64,
    early: BTreeMap<u64, Early>,
    held: VecDeque<Held>,
    /// The last answers by `rid`, for retransmissions.
    answered: VecDeque<(u64, Vec<u8>)>,
    /// Client-bound elements not yet carried, each a standalone document.
    out: Vec<u8>,
    stream_from: Option<String>,
    stream_id: Option<String>,
    creation_sent: bool,
    /// The client-bound stream ended (or the session failed): the next answers are terminal.
    ended: bool,
    stream_error: bool,
    client_terminated: bool,
    terminate_delivered: bool,
    effects: VecDeque<Effect>,
    stashed_close: Option<CloseReason>,
    linger_until: Option<Instant>,
    last_request: Instant,
    now: Instant,
    message_limits: XmlLimits,
    limits: XmlLimits,
    authenticated: bool,
    /// Ended by this layer before a stream existed.
    done: bool,
}

impl BoshSession {
    /// Wrap `inner` (a c2s session configured for a client leg that is already secure) as the
    /// BOSH session `sid`. `preauth` and `limits` bound the parse of a request's stanzas before
    /// and after SASL success.
    pub fn new(
        cfg: Arc<BoshConfig>,
        inner: C2sSession,
        sid: String,
        preauth: XmlLimits,
        limits: XmlLimits,
        now: Instant,
    ) -> Self {
        let leg_cap = cfg.max_request_bytes.max(preauth.stanza_bytes + BODY_OVERHEAD);
        BoshSession {
            reader: StreamReader::new(XmlLimits { stanza_bytes: usize::MAX / 4, depth: 1024, attributes: 1 << 16 }),
            wait: cfg.max_wait,
            hold: 1,
            cfg,
            inner,
            sid,
            leg: LegDecoder::new(leg_cap),
            to_client: Vec::new(),
            created: false,
            to: String::new(),
            lang: None,
            next_rid: 0,
            early: BTreeMap::new(),
            held: VecDeque::new(),
            answered: VecDeque::new(),
            out: Vec::new(),
            stream_from: None,
            stream_id: None,
            creation_sent: false,
            ended: false,
            stream_error: false,
            client_terminated: false,
            terminate_delivered: false,
            effects: VecDeque::new(),
            stashed_close: None,
            linger_until: None,
            last_request: now,
            now,
            message_limits: preauth,
            limits,
            authenticated: false,
            done: false,
        }
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// XEP-0124 §7.1 `requests`: how many requests the client may have outstanding.
    fn requests(&self) -> u64 {
        self.hold as u64 + 1
    }

    /// Answer one handle directly (errors and retransmissions; not a held request).
    fn respond(&mut self, handle: u64, body: Vec<u8>) {
        Record::Response { handle, body }.write(&mut self.to_client);
    }

    /// End the session from this layer: the stream gets `condition` (the request that caused
    /// it was answered already), held requests a terminal body.
    fn fail(&mut self, condition: Condition, text: &str) {
        if !self.created {
            if !self.done {
                self.done = true;
                self.effects.push_back(Effect::Close(CloseReason::ClientFailed(format!("BOSH: {text}"))));
            }
            return;
        }
        if !self.inner.is_closed() {
            // The stream error it writes reaches the client in the next terminal body.
            self.inner.refuse(condition, text);
        }
    }

    fn on_record(&mut self, record: Record, now: Instant) {
        match record {
            Record::Request { handle, body } => self.on_request(handle, &body, now),
            Record::Gone { handle } => {
                for h in self.held.iter_mut().filter(|h| h.handle == Some(handle)) {
                    h.handle = None;
                }
                for e in self.early.values_mut().filter(|e| e.handle == Some(handle)) {
                    e.handle = None;
                }
            }
            Record::Response { .. } => {
                self.fail(Condition::InternalServerError, "a response record on the request leg")
            }
        }
    }

    fn on_request(&mut self, handle: u64, bytes: &[u8], now: Instant) {
        self.last_request = now;
        let cap = if self.authenticated {
            self.cfg.max_request_bytes
        } else {
            self.message_limits.stanza_bytes + BODY_OVERHEAD
        };
        if bytes.len() > cap {
            self.respond(handle, body::terminate("policy-violation"));
            return self.fail(Condition::PolicyViolation, &format!("BOSH request body exceeds {cap} bytes"));
        }
        let parse_limits = XmlLimits {
            stanza_bytes: cap,
            depth: self.message_limits.depth + 1,
            attributes: self.message_limits.attributes,
        };
        let request = match parse_body(bytes, parse_limits) {
            Ok(r) => r,
            Err(e) => {
                // A retransmission of an answered request is answered whatever else is wrong
                // with the session; an unreadable body is not one.
                self.respond(handle, body::terminate(e.condition()));
                let err = match &e {
                    BodyError::Xml(x) => StreamError::from(x),
                    _ => StreamError::new(Condition::BadFormat, Some(e.to_string())),
                };
                return self.fail(err.condition, &e.to_string());
            }
        };
        if !self.created {
            return self.create(handle, request, now);
        }
        if request.sid.as_deref() != Some(self.sid.as_str()) {
            // Routed here by `sid`, so this cannot happen; refuse this request only.
            return self.respond(handle, body::terminate("item-not-found"));
        }
        let rid = request.rid;
        if rid < self.next_rid {
            // XEP-0124 §14.3: a retransmission (the client lost the connection it sent it on).
            if let Some((_, cached)) = self.answered.iter().find(|(r, _)| *r == rid) {
                let cached = cached.clone();
                return self.respond(handle, cached);
            }
            if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
                h.handle = Some(handle);
                return;
            }
            self.respond(handle, body::terminate("item-not-found"));
            return self.fail(Condition::PolicyViolation, "BOSH rid repeated outside the window");
        }
        if rid >= self.next_rid.saturating_add(self.requests()) {
            // §14.2: beyond the requests the client may have outstanding.
            self.respond(handle, body::terminate("item-not-found"));
            return self.fail(Condition::PolicyViolation, "BOSH rid beyond the window");
        }
        if rid > self.next_rid {
            // Early: held back until the requests before it came (§14.2 in-order processing).
            match self.early.get_mut(&rid) {
                Some(e) => e.handle = Some(handle),
                None => {
                    self.early.insert(rid, Early { handle: Some(handle), request });
                }
            }
            return;
        }
        self.process(Some(handle), request, now);
        while let Some(e) = self.early.remove(&self.next_rid) {
            self.process(e.handle, e.request, now);
        }
    }

    /// XEP-0124 §7.1, XEP-0206 §4: the session-creation request.
    fn create(&mut self, handle: u64, request: Request, now: Instant) {
        let refuse = |s: &mut Self, why: &str| {
            s.respond(handle, body::terminate("bad-request"));
            s.fail(Condition::BadFormat, why);
        };
        if request.sid.is_some() {
            return refuse(self, "the first request of a session has no sid");
        }
        let Some(to) = request.to.clone().filter(|t| !t.is_empty()) else {
            return refuse(self, "the session-creation request needs 'to' (XEP-0124 §7.1)");
        };
        if request.xmpp_version.as_deref() != Some("1.0") {
            return refuse(self, "the session-creation request needs xmpp:version='1.0' (XEP-0206 §4)");
        }
        if request.ver.is_some_and(|v| v < (1, 6)) {
            return refuse(self, "BOSH version 1.6 or later is required (XEP-0206 §3)");
        }
        let wait = request.wait.map_or(self.cfg.max_wait, Duration::from_secs);
        self.wait = wait.clamp(Duration::from_secs(1), self.cfg.max_wait);
        self.hold = request.hold.unwrap_or(1).min(self.cfg.max_hold) as usize;
        self.to = to;
        self.lang = request.lang.clone();
        self.created = true;
        self.next_rid = request.rid + 1;
        self.held.push_back(Held { rid: request.rid, handle: Some(handle), due: now + self.wait });
        let header = self.stream_header();
        self.inner.client_bytes(&header, now);
        for el in request.payloads {
            if self.inner.is_closed() {
                break;
            }
            self.inner.client_bytes(&el.to_bytes(NS_CLIENT), now);
        }
    }

    /// The stream header the c2s machine reads for a new or restarted stream.
    fn stream_header(&self) -> Vec<u8> {
        let mut out =
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='".to_vec();
        escape_attr_str(&self.to, &mut out);
        out.extend_from_slice(b"' version='1.0'");
        if let Some(lang) = &self.lang {
            out.extend_from_slice(b" xml:lang='");
            escape_attr_str(lang, &mut out);
            out.push(b'\'');
        }
        out.push(b'>');
        out
    }

    /// Hand one in-order request to the c2s machine and hold it for its answer.
    fn process(&mut self, handle: Option<u64>, request: Request, now: Instant) {
        self.next_rid = request.rid + 1;
        // A request is client traffic even when empty (it keeps the session from the idle
        // timeout, like a whitespace keepalive on TCP).
        self.inner.client_bytes(&[], now);
        for el in request.payloads {
            if self.inner.is_closed() {
                break;
            }
            self.inner.client_bytes(&el.to_bytes(NS_CLIENT), now);
        }
        if request.terminate {
            self.client_terminated = true;
            if !self.inner.is_closed() {
                self.inner.client_bytes(STREAM_CLOSE, now);
            }
        } else if request.restart && !self.inner.is_closed() {
            let header = self.stream_header();
            self.inner.client_bytes(&header, now);
        }
        self.held.push_back(Held { rid: request.rid, handle, due: now + self.wait });
    }

    /// Read what the c2s machine wrote for the client, then answer what can be answered.
    fn pump(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let bytes = self.inner.take_to_client();
        if !bytes.is_empty() && !self.ended {
            self.reader.feed(&bytes);
            if let Err(e) = self.reframe() {
                // The gateway's own canonical output did not parse: a bug. Fail closed.
                self.out.clear();
                self.fail(Condition::InternalServerError, &format!("reading our own stream: {e}"));
                self.ended = true;
            }
        }
        if self.inner.is_closed() && self.created {
            self.ended = true;
        }
        if self.out.len() > self.cfg.max_pending_bytes && !self.inner.is_closed() {
            // Nobody is collecting what the server sends: a client that stopped polling.
            self.inner.client_not_reading();
            self.out.clear();
            self.ended = true;
        }
        while let Some(front) = self.held.front() {
            let ready = !self.out.is_empty()
                || self.ended
                || self.client_terminated
                || self.held.len() > self.hold
                || front.due <= now;
            if !ready {
                break;
            }
            self.answer_front();
        }
    }

    fn reframe(&mut self) -> Result<(), XmlError> {
        // Each event consumes buffered bytes; the buffer is finite.
        while let Some(event) = self.reader.next_event()? {
            match event {
                XmlEvent::StreamOpen { header, .. } => {
                    self.stream_from = header.attr("from").map(str::to_owned);
                    self.stream_id = header.attr("id").map(str::to_owned);
                }
                XmlEvent::Stanza(el) => {
                    self.out.extend_from_slice(&standalone(&el));
                    if el.is(NS_STREAMS, "error") {
                        self.stream_error = true;
                    }
                    if el.is(NS_SASL, "success") {
                        // RFC 6120 §6.4.6: the c2s machine writes a new header after the restart.
                        self.reader.restart();
                    }
                }
                XmlEvent::StreamClose => self.ended = true,
                XmlEvent::Whitespace | XmlEvent::Skipped { .. } => {}
            }
        }
        Ok(())
    }

    /// Answer the oldest held request with everything queued (and the end, if it came).
    fn answer_front(&mut self) {
        let Some(held) = self.held.pop_front() else { return };
        // XEP-0124 §7.1 `inactivity` runs while the client has no request with us.
        self.last_request = self.now;
        let mut body = ResponseBody::new();
        if !self.creation_sent {
            self.creation_sent = true;
            let (wait, hold, requests) = (self.wait.as_secs(), self.hold, self.requests());
            let inactivity = self.cfg.inactivity.as_secs();
            body.attr("sid", &self.sid)
                .attr("wait", &wait.to_string())
                .attr("hold", &hold.to_string())
                .attr("requests", &requests.to_string())
                .attr("inactivity", &inactivity.to_string())
                .attr("polling", "1")
                .attr("ver", "1.11")
                .attr("xmpp:version", "1.0")
                .attr("xmpp:restartlogic", "true");
            if let Some(from) = self.stream_from.clone() {
                body.attr("from", &from);
            }
            if let Some(id) = self.stream_id.clone() {
                body.attr("authid", &id);
            }
        }
        body.child(&std::mem::take(&mut self.out));
        if self.ended || self.client_terminated {
            body.attr("type", "terminate");
            if self.stream_error && !self.client_terminated {
                // XEP-0206 §7: the stream error rides in the terminal body.
                body.attr("condition", "remote-stream-error");
            }
            self.terminate_delivered = true;
        }
        let bytes = body.finish();
        if let Some(handle) = held.handle {
            self.respond(handle, bytes.clone());
        }
        self.answered.push_back((held.rid, bytes));
        // Enough for any rid still inside the window to be answered again.
        while self.answered.len() > self.requests() as usize + 1 {
            self.answered.pop_front();
        }
    }

    /// Early requests can no longer be processed once the stream ended: answer them too.
    fn end_early(&mut self) {
        if !self.ended {
            return;
        }
        let early = std::mem::take(&mut self.early);
        for (_, e) in early {
            if let Some(handle) = e.handle {
                self.respond(handle, body::terminate("item-not-found"));
            }
        }
    }

    fn close_due(&self) -> bool {
        self.terminate_delivered || self.client_terminated || self.linger_until.is_some_and(|t| self.now >= t)
    }
}

impl StreamMachine for BoshSession {
    fn client_bytes(&mut self, data: &[u8], now: Instant) {
        self.now = self.now.max(now);
        self.leg.feed(data);
        // Each record consumes its bytes; the input is finite.
        loop {
            if self.done {
                return;
            }
            match self.leg.next_record() {
                Ok(Some(record)) => self.on_record(record, now),
                Ok(None) => break,
                Err(e) => {
                    self.fail(Condition::InternalServerError, &e.to_string());
                    break;
                }
            }
        }
        self.pump(now);
        self.end_early();
    }

    fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.now = self.now.max(now);
        self.inner.backend_bytes(data, now);
        self.pump(now);
    }

    fn take_to_client(&mut self) -> Vec<u8> {
        self.pump(self.now);
        self.end_early();
        std::mem::take(&mut self.to_client)
    }

    fn take_to_backend(&mut self) -> Vec<u8> {
        self.inner.take_to_backend()
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        if let Some(e) = self.effects.pop_front() {
            return Some(e);
        }
        if self.stashed_close.is_some() {
            return if self.close_due() { self.stashed_close.take().map(Effect::Close) } else { None };
        }
        match self.inner.poll_effect()? {
            Effect::Close(reason) if !self.close_due() => {
                // Hold the close until a request carried the terminal body (or LINGER passed):
                // the client learns why its session ended.
                self.stashed_close = Some(reason);
                self.linger_until = Some(self.now + LINGER);
                None
            }
            Effect::Authenticated => {
                // The c2s machine switched to its post-authentication limits; so do the caps here.
                self.authenticated = true;
                self.message_limits = self.limits;
                Some(Effect::Authenticated)
            }
            other => Some(other),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let held = self.held.iter().map(|h| h.due).min();
        let idle =
            (self.created && self.held.is_empty() && !self.ended).then(|| self.last_request + self.cfg.inactivity);
        [self.inner.poll_timeout(), held, idle, self.linger_until.filter(|_| self.stashed_close.is_some())]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.created
            && self.held.is_empty()
            && !self.ended
            && now >= self.last_request + self.cfg.inactivity
            && !self.inner.is_closed()
        {
            // XEP-0124 §7.1: no request within `inactivity`: the client is gone.
            self.inner.client_disconnected();
            self.ended = true;
        }
        self.inner.handle_timeout(now);
        self.pump(now);
        self.end_early();
    }

    fn take_client_buffered(&mut self) -> Vec<u8> {
        Vec::new()
    }

    fn take_backend_buffered(&mut self) -> Vec<u8> {
        self.inner.take_backend_buffered()
    }

    fn client_tls_established(&mut self) {
        self.inner.client_tls_established();
    }

    fn backend_connected(&mut self) {
        self.inner.backend_connected();
    }

    fn backend_tls_established(&mut self) {
        self.inner.backend_tls_established();
    }

    fn backend_failed(&mut self, why: &str) {
        self.inner.backend_failed(why);
        self.pump(self.now);
    }

    fn client_disconnected(&mut self) {
        // The leg itself closed: no HTTP request can reach this session any more.
        self.held.clear();
        self.early.clear();
        self.terminate_delivered = true;
        if !self.created {
            return self.fail(Condition::InternalServerError, "the request leg closed");
        }
        self.inner.client_disconnected();
        self.ended = true;
    }

    fn client_not_reading(&mut self) {
        self.to_client.clear();
        self.held.clear();
        self.terminate_delivered = true;
        if !self.created {
            return self.fail(Condition::InternalServerError, "the request leg stopped reading");
        }
        self.inner.client_not_reading();
        self.ended = true;
    }

    fn shutdown(&mut self) {
        if !self.created {
            self.done = true;
            return self.effects.push_back(Effect::Close(CloseReason::Shutdown));
        }
        self.inner.shutdown();
        self.pump(self.now);
    }

    fn refuse(&mut self, condition: Condition, text: &str) {
        self.fail(condition, text);
        self.pump(self.now);
    }

    fn notify_client(&mut self, stanza: &crate::xml::Element) {
        self.inner.notify_client(stanza);
    }

    fn transfer_scanned(&mut self, id: u64, verdict: crate::transfer::ScanVerdict) {
        self.inner.transfer_scanned(id, verdict);
    }

    fn set_policy(&mut self, policy: Arc<Policy>) {
        self.inner.set_policy(policy);
    }

    fn counters(&self) -> Counters {
        self.inner.counters()
    }

    fn is_closed(&self) -> bool {
        self.done || self.inner.is_closed()
    }

    fn bound_jid(&self) -> Option<&FullJid> {
        self.inner.bound_jid()
    }

    fn deliver_released(
        &mut self,
        chain: crate::policy::Chain,
        stanza: crate::xml::Element,
    ) -> Result<(), crate::session::DeliverRefused> {
        if self.done {
            return Err(crate::session::DeliverRefused::Closed);
        }
        // Written by the c2s machine; framed toward the client with its other output.
        self.inner.deliver_released(chain, stanza)
    }

    fn domain(&self) -> Option<&str> {
        self.inner.domain()
    }
}
