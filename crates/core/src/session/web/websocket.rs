//! [`WebSocketSession`]: the WebSocket door as a [`StreamMachine`] wrapped around a
//! [`C2sSession`]. The daemon drives it exactly like a direct-TLS c2s connection (bytes in,
//! bytes out, effects, deadlines); this module turns those bytes into an HTTP handshake and
//! RFC 6455 frames, and the frames' RFC 7395 messages into the stream the c2s machine reads.
//! Every stanza therefore crosses the c2s machine's checks, policy chains (`c2s-in`,
//! `c2s-out`), audit and XEP-0198 counting; nothing here decides about stanzas.
//!
//! The backend leg is the c2s machine's own: the server's plain (or STARTTLS, or TLS) c2s port.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::frame::{self, FrameDecoder, FrameError, Incoming, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL};
use super::framing::{parse_message, ClientFrame, Reframer, ServerFrame, CLOSE_MESSAGE};
use super::http::{self, Answer};
use super::WebConfig;
use crate::jid::FullJid;
use crate::policy::Policy;
use crate::session::{C2sSession, CloseReason, Counters, Effect, StreamMachine};
use crate::stream::{Condition, StreamError, NS_CLIENT, STREAM_CLOSE};
use crate::xml::XmlLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP request head.
    Http,
    /// Upgraded: frames both ways.
    Open,
    /// Answered over HTTP without an upgrade (host-meta, a refusal, a timeout): done.
    Done,
}

/// One WebSocket connection carrying one XMPP c2s stream (see the module docs).
#[derive(Debug)]
pub struct WebSocketSession {
    cfg: Arc<WebConfig>,
    inner: C2sSession,
    phase: Phase,
    head: Vec<u8>,
    frames: FrameDecoder,
    reframer: Reframer,
    /// Limits for parsing one client message (the c2s machine applies its own again): the
    /// pre-authentication ones until SASL succeeds, then `limits`.
    message_limits: XmlLimits,
    /// The limits after authentication.
    limits: XmlLimits,
    to_client: Vec<u8>,
    /// Effects of this layer (the end of a connection answered over HTTP), before the inner's.
    effects: VecDeque<Effect>,
    /// The close code of the WebSocket close that follows the stream's `<close/>`.
    close_code: u16,
    /// Our close frame is written: nothing more goes to the client.
    close_sent: bool,
}

impl WebSocketSession {
    /// Wrap `inner` (a c2s session configured for a client leg that is already secure) for a
    /// connection accepted on a WebSocket listener. `preauth` and `limits` bound the parse of
    /// one client message before and after SASL success; before it, frames and messages are
    /// also capped at `preauth.stanza_bytes`, so an unauthenticated connection holds no more
    /// than a TCP one would (invariant 6).
    pub fn new(cfg: Arc<WebConfig>, inner: C2sSession, preauth: XmlLimits, limits: XmlLimits) -> Self {
        let cap = preauth.stanza_bytes;
        let frames = FrameDecoder::new(cfg.max_frame_bytes.min(cap), cfg.max_message_bytes.min(cap));
        WebSocketSession {
            cfg,
            inner,
            phase: Phase::Http,
            head: Vec::new(),
            frames,
            reframer: Reframer::new(),
            message_limits: preauth,
            limits,
            to_client: Vec::new(),
            effects: VecDeque::new(),
            close_code: CLOSE_NORMAL,
            close_sent: false,
        }
    }

    /// End a connection that never upgraded.
    fn end(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Done;
        self.effects.push_back(Effect::Close(reason));
    }

    fn on_head_bytes(&mut self, data: &[u8], now: Instant) {
        self.head.extend_from_slice(data);
        let Some(end) = http::head_end(&self.head) else {
            if self.head.len() > http::MAX_HEAD {
                self.respond(http::refuse(431, "request head too large"));
            }
            return;
        };
        if end > http::MAX_HEAD {
            return self.respond(http::refuse(431, "request head too large"));
        }
        let rest = self.head.split_off(end);
        let head = std::mem::take(&mut self.head);
        match http::answer(&head, &self.cfg) {
            Answer::Upgrade { response } => {
                self.to_client.extend_from_slice(&response);
                self.phase = Phase::Open;
                if !rest.is_empty() {
                    self.on_frame_bytes(&rest, now);
                }
            }
            other => self.respond(other),
        }
    }

    fn respond(&mut self, answer: Answer) {
        match answer {
            Answer::Respond { response, status, why } => {
                self.to_client.extend_from_slice(&response);
                let reason = match status {
                    200 => CloseReason::ClientClosed,
                    _ => CloseReason::ClientFailed(format!("HTTP {status}: {why}")),
                };
                self.end(reason);
            }
            Answer::Upgrade { .. } => self.end(CloseReason::ClientFailed("unexpected upgrade".to_owned())),
        }
    }

    fn on_frame_bytes(&mut self, data: &[u8], now: Instant) {
        self.frames.feed(data);
        while !self.close_sent && !self.inner.is_closed() {
            match self.frames.next_incoming() {
                Ok(None) => break,
                Ok(Some(Incoming::Text(text))) => self.on_message(&text, now),
                Ok(Some(Incoming::Ping(payload))) => {
                    // A ping is traffic, like a whitespace keepalive on TCP: it keeps an
                    // authenticated session from the idle timeout.
                    self.inner.client_bytes(&[], now);
                    self.pump();
                    if !self.close_sent {
                        frame::write_pong(&payload, &mut self.to_client);
                    }
                }
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close(code))) => return self.on_client_close(code),
                Err(e) => return self.frame_error(e),
            }
        }
    }

    /// One complete client message: parsed here, fed to the c2s machine in stream form.
    fn on_message(&mut self, text: &str, now: Instant) {
        match parse_message(text, self.message_limits) {
            Ok(ClientFrame::Open(header)) => self.inner.client_bytes(&header, now),
            Ok(ClientFrame::Close) => self.inner.client_bytes(STREAM_CLOSE, now),
            Ok(ClientFrame::Element(el)) => self.inner.client_bytes(&el.to_bytes(NS_CLIENT), now),
            Ok(ClientFrame::Keepalive) => self.inner.client_bytes(b" ", now),
            Err(e) => self.fail(CLOSE_NORMAL, e.stream_error()),
        }
    }

    /// RFC 6455 §7.1.7: fail the connection with the code for `e`; the XMPP stream is closed
    /// with a stream error first, so the client learns why in XMPP terms too.
    fn frame_error(&mut self, e: FrameError) {
        let condition = match e {
            FrameError::TooBig { .. } => Condition::PolicyViolation,
            FrameError::InvalidUtf8 | FrameError::Binary => Condition::UnsupportedEncoding,
            FrameError::Protocol(_) => Condition::BadFormat,
        };
        self.fail(e.close_code(), StreamError::new(condition, Some(e.to_string())));
    }

    /// Close the XMPP stream with `err`, then the WebSocket with `code`.
    fn fail(&mut self, code: u16, err: StreamError) {
        self.close_code = code;
        if self.inner.is_closed() {
            self.pump();
            self.write_close(code, "");
        } else {
            self.inner.refuse(err.condition, err.text.as_deref().unwrap_or_default());
            self.pump();
        }
    }

    /// The client closed the WebSocket: answer its close (RFC 6455 §5.5.1) and end the XMPP
    /// stream if it was still open (RFC 7395 §3.6: the stream ends with its connection).
    fn on_client_close(&mut self, code: Option<u16>) {
        self.pump();
        self.write_close(code.unwrap_or(CLOSE_NORMAL), "");
        if !self.inner.is_closed() {
            self.inner.client_disconnected();
        }
    }

    fn write_close(&mut self, code: u16, reason: &str) {
        if !self.close_sent {
            frame::write_close(code, reason, &mut self.to_client);
            self.close_sent = true;
        }
    }

    /// Move what the c2s machine wrote for the client into messages.
    fn pump(&mut self) {
        let bytes = self.inner.take_to_client();
        if bytes.is_empty() || self.close_sent || self.phase != Phase::Open {
            // Before the upgrade there is no WebSocket to write to; after our close nothing is
            // written.
            return;
        }
        match self.reframer.convert(&bytes) {
            Ok(frames) => {
                for f in frames {
                    match f {
                        ServerFrame::Message(m) => frame::write_text(&m, &mut self.to_client),
                        ServerFrame::Close => {
                            frame::write_text(CLOSE_MESSAGE, &mut self.to_client);
                            self.write_close(self.close_code, "");
                            break;
                        }
                    }
                }
            }
            Err(_) => {
                // The gateway's own canonical output did not parse: a bug. Fail closed.
                self.write_close(CLOSE_INTERNAL, "internal error");
                if !self.inner.is_closed() {
                    self.inner.client_disconnected();
                }
            }
        }
    }
}

impl StreamMachine for WebSocketSession {
    fn client_bytes(&mut self, data: &[u8], now: Instant) {
        if self.is_closed() {
            // Closed from either layer (the c2s machine may close before the upgrade, e.g. on
            // a backend failure): nothing more is read or answered.
            return;
        }
        match self.phase {
            Phase::Http => self.on_head_bytes(data, now),
            Phase::Open => self.on_frame_bytes(data, now),
            Phase::Done => {}
        }
    }

    fn backend_bytes(&mut self, data: &[u8], now: Instant) {
        self.inner.backend_bytes(data, now);
    }

    fn take_to_client(&mut self) -> Vec<u8> {
        self.pump();
        std::mem::take(&mut self.to_client)
    }

    fn take_to_backend(&mut self) -> Vec<u8> {
        self.inner.take_to_backend()
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        let effect = self.effects.pop_front().or_else(|| self.inner.poll_effect());
        if effect == Some(Effect::Authenticated) {
            // The c2s machine switched to its post-authentication limits; so do the caps here.
            self.message_limits = self.limits;
            self.frames.set_caps(self.cfg.max_frame_bytes, self.cfg.max_message_bytes);
        }
        effect
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done => None,
            // Before the upgrade, the c2s machine's handshake deadline (from accept) applies.
            _ => self.inner.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Http if self.inner.poll_timeout().is_some_and(|due| now >= due) => {
                self.end(CloseReason::ClientFailed("WebSocket handshake timed out".to_owned()))
            }
            Phase::Http | Phase::Done => {}
            Phase::Open => self.inner.handle_timeout(now),
        }
    }

    fn take_client_buffered(&mut self) -> Vec<u8> {
        // The client leg never upgrades mid-stream: TLS is below HTTP.
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
    }

    fn client_disconnected(&mut self) {
        match self.phase {
            Phase::Http => self.end(CloseReason::ClientClosed),
            Phase::Open => {
                self.close_sent = true;
                self.inner.client_disconnected();
            }
            Phase::Done => {}
        }
    }

    fn client_not_reading(&mut self) {
        self.to_client.clear();
        self.close_sent = true;
        match self.phase {
            Phase::Http => self.end(CloseReason::ClientNotReading),
            Phase::Open => self.inner.client_not_reading(),
            Phase::Done => {}
        }
    }

    fn shutdown(&mut self) {
        match self.phase {
            Phase::Http => self.end(CloseReason::Shutdown),
            Phase::Open => {
                self.close_code = CLOSE_GOING_AWAY;
                self.inner.shutdown();
                self.pump();
            }
            Phase::Done => {}
        }
    }

    fn refuse(&mut self, condition: Condition, text: &str) {
        match self.phase {
            Phase::Http => self.end(CloseReason::ClientFailed(text.to_owned())),
            Phase::Open => self.fail(CLOSE_NORMAL, StreamError::new(condition, Some(text.to_owned()))),
            Phase::Done => {}
        }
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

    fn paused(&self) -> (bool, bool) {
        self.inner.paused()
    }

    fn wake(&mut self, now: Instant) {
        if self.phase == Phase::Open {
            self.inner.wake(now);
        }
    }

    fn counters(&self) -> Counters {
        self.inner.counters()
    }

    fn is_closed(&self) -> bool {
        self.phase == Phase::Done || self.inner.is_closed()
    }

    fn bound_jid(&self) -> Option<&FullJid> {
        self.inner.bound_jid()
    }

    fn deliver_released(
        &mut self,
        chain: crate::policy::Chain,
        stanza: crate::xml::Element,
    ) -> Result<(), crate::session::DeliverRefused> {
        if self.phase != Phase::Open {
            return Err(crate::session::DeliverRefused::NotEstablished);
        }
        // Written by the c2s machine; framed toward the client with its other output.
        self.inner.deliver_released(chain, stanza)
    }

    fn domain(&self) -> Option<&str> {
        self.inner.domain()
    }
}
