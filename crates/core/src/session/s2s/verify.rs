//! The dialback verify stream (XEP-0220 §2.3): the gateway, as receiving server for our domain,
//! asks the remote domain's authoritative server whether a key is valid. A short client-only
//! stream: header, STARTTLS when offered (required when `require_tls`), `db:verify`, the answer,
//! close. Sans-IO like the session kinds; the daemon connects (SRV, DNSSEC) and moves bytes.

use super::{db, domain_attr, header_problem, S2sWrite, NS_DIALBACK, NS_TLS};
use crate::stream::{Header, StreamError, STREAM_CLOSE};
use crate::xml::{Element, StreamReader, XmlEvent, XmlLimits, NS_STREAMS};

/// What the daemon does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyStep {
    /// Write the output and read more.
    Continue,
    /// Write the output, then run a TLS client handshake (bytes already read: `take_buffered`).
    StartTls,
    /// Finished: write the output (the close) and report. `Ok(valid)` or why it failed.
    Done(Result<bool, String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Features,
    Proceed,
    Answer,
    Finished,
}

/// One dialback verification (see the module docs).
#[derive(Debug)]
pub struct DialbackVerify {
    reader: StreamReader,
    out: Vec<u8>,
    local: String,
    remote: String,
    id: String,
    key: String,
    tls: bool,
    require_tls: bool,
    state: State,
}

impl DialbackVerify {
    /// Verify `key` for the stream `id` from `remote` to `local`; `direct_tls` when the
    /// connection is already under TLS (XEP-0368).
    pub fn new(local: &str, remote: &str, id: &str, key: &str, require_tls: bool, direct_tls: bool) -> DialbackVerify {
        let mut v = DialbackVerify {
            reader: StreamReader::new(XmlLimits { stanza_bytes: 65_536, ..XmlLimits::default() }),
            out: Vec::new(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            id: id.to_owned(),
            key: key.to_owned(),
            tls: direct_tls,
            require_tls,
            state: State::Header,
        };
        v.write_header();
        v
    }

    fn write_header(&mut self) {
        let h = Header { from: Some(self.local.clone()), to: Some(self.remote.clone()), id: None, lang: None };
        h.write_s2s(&mut self.out);
        self.state = State::Header;
    }

    /// Bytes to write.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes read after `<proceed/>`: the start of the TLS handshake.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.reader.take_buffered()
    }

    /// TLS is up: the stream restarts.
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.reader.restart();
        self.write_header();
    }

    fn done(&mut self, result: Result<bool, String>) -> VerifyStep {
        self.out.extend_from_slice(STREAM_CLOSE);
        self.state = State::Finished;
        VerifyStep::Done(result)
    }

    /// Bytes from the authoritative server.
    pub fn feed(&mut self, data: &[u8]) -> VerifyStep {
        if self.state == State::Finished {
            return VerifyStep::Done(Err("already finished".into()));
        }
        self.reader.feed(data);
        loop {
            let ev = match self.reader.next_event() {
                Ok(None) => return VerifyStep::Continue,
                Ok(Some(ev)) => ev,
                Err(e) => return self.done(Err(format!("bad XML from the authoritative server: {e}"))),
            };
            match (self.state, ev) {
                (_, XmlEvent::Whitespace) => {}
                (State::Header, XmlEvent::StreamOpen { header, default_ns }) => {
                    if let Some((_, why)) = header_problem(&header, default_ns.as_deref()) {
                        return self.done(Err(why.to_owned()));
                    }
                    self.state = State::Features;
                }
                (State::Features, XmlEvent::Stanza(f)) if f.is(NS_STREAMS, "features") => {
                    if !self.tls && f.child(NS_TLS, "starttls").is_some() {
                        Element::new(NS_TLS, "starttls").write_s2s(&mut self.out);
                        self.state = State::Proceed;
                        continue;
                    }
                    if !self.tls && self.require_tls {
                        return self.done(Err("the authoritative server does not offer TLS (require_tls)".into()));
                    }
                    db("verify", &self.local, &self.remote)
                        .with_attr("id", self.id.clone())
                        .with_text(self.key.clone())
                        .write_s2s(&mut self.out);
                    self.state = State::Answer;
                }
                (State::Proceed, XmlEvent::Stanza(el)) if el.is(NS_TLS, "proceed") => {
                    self.state = State::Header;
                    return VerifyStep::StartTls;
                }
                (State::Answer, XmlEvent::Stanza(el)) if &*el.ns == NS_DIALBACK && el.name == "verify" => {
                    let matches = domain_attr(&el, "from").as_deref() == Some(self.remote.as_str())
                        && domain_attr(&el, "to").as_deref() == Some(self.local.as_str())
                        && el.attr("id") == Some(self.id.as_str());
                    if !matches {
                        continue; // an answer to another question
                    }
                    return match el.attr("type") {
                        Some("valid") => self.done(Ok(true)),
                        Some("invalid") => self.done(Ok(false)),
                        _ => self.done(Err("the authoritative server answered with an error".into())),
                    };
                }
                (_, XmlEvent::Stanza(el)) if el.is(NS_STREAMS, "error") => {
                    let err = StreamError::from_element(&el);
                    return self.done(Err(format!("the authoritative server closed with {err}")));
                }
                (_, XmlEvent::StreamClose) => {
                    return self.done(Err("the authoritative server closed the stream".into()))
                }
                _ => return self.done(Err("unexpected element from the authoritative server".into())),
            }
        }
    }
}
