//! The server side of SOCKS5 (RFC 1928) as XEP-0065 §5.3 restricts it, sans-IO.
//!
//! A bytestream proxy takes exactly one shape of request: no authentication (method `0x00`),
//! `CONNECT` (`0x01`), address type domain name (`0x03`) carrying the 40 hex digits of
//! SHA-1(SID + requester JID + target JID), port 0. Anything else is answered with the RFC 1928
//! §6 error reply and refused: the relay never dials the address (it is a pairing key, not a
//! destination), so it can never be an open proxy.
//!
//! [`Handshake::feed`] takes bytes as they arrive and returns what to write and, once the
//! request is complete, the pairing key; bytes the client sent after its request (it should
//! wait for activation, XEP-0065 §6.3.3, but may not) are kept as [`Request::early`].

/// The SOCKS protocol version (RFC 1928 §3).
const VERSION: u8 = 5;
/// "No authentication required" (RFC 1928 §3).
const METHOD_NONE: u8 = 0x00;
/// "No acceptable methods" (RFC 1928 §3).
const METHOD_REFUSED: u8 = 0xff;
/// Most methods a greeting can list (NMETHODS is one byte).
const MAX_GREETING: usize = 2 + 255;

/// RFC 1928 §6 reply codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// `0x00` succeeded.
    Succeeded = 0x00,
    /// `0x01` general SOCKS server failure.
    GeneralFailure = 0x01,
    /// `0x02` connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// `0x07` command not supported.
    CommandNotSupported = 0x07,
    /// `0x08` address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// The first byte is not 5 (another SOCKS version, or not SOCKS at all).
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    /// The greeting does not offer "no authentication", the only method XEP-0065 uses.
    #[error("the client offers no acceptable authentication method")]
    NoAcceptableMethod,
    /// A command other than CONNECT (BIND and UDP ASSOCIATE are never offered).
    #[error("command {0:#04x} is not supported (only CONNECT)")]
    Command(u8),
    /// An address type other than domain name (XEP-0065 §5.3.2).
    #[error("address type {0:#04x} is not supported (only a domain name)")]
    AddressType(u8),
    /// DST.ADDR is not 40 lowercase hex digits, or the port is not 0.
    #[error("destination is not a XEP-0065 stream hash with port 0")]
    NotAStreamHash,
    /// A reserved byte is not zero.
    #[error("malformed request")]
    Malformed,
}

impl Socks5Error {
    fn reply_code(&self) -> ReplyCode {
        match self {
            Socks5Error::Command(_) => ReplyCode::CommandNotSupported,
            Socks5Error::AddressType(_) => ReplyCode::AddressTypeNotSupported,
            Socks5Error::NotAStreamHash => ReplyCode::NotAllowed,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// A complete, acceptable request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The stream hash (40 lowercase hex digits).
    pub hash: String,
    /// Bytes received after the request.
    pub early: Vec<u8>,
}

/// What one [`Handshake::feed`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Bytes to write to the client.
    pub reply: Vec<u8>,
    /// `None`: more bytes needed; `Some(Ok)`: the request; `Some(Err)`: refused (after `reply`
    /// is written, close).
    pub outcome: Option<Result<Request, Socks5Error>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Request,
    Done,
}

/// The SOCKS5 handshake of one connection to the relay.
#[derive(Debug)]
pub struct Handshake {
    phase: Phase,
    buf: Vec<u8>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake::new()
    }
}

/// The reply to a request (RFC 1928 §6); XEP-0065 §5.3.3: BND.ADDR echoes the hash, port 0.
pub fn reply(code: ReplyCode, hash: &str) -> Vec<u8> {
    let mut out = vec![VERSION, code as u8, 0x00, 0x03, hash.len() as u8];
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

impl Handshake {
    /// A new handshake, waiting for the greeting.
    pub fn new() -> Handshake {
        Handshake { phase: Phase::Greeting, buf: Vec::new() }
    }

    /// Bytes from the client.
    pub fn feed(&mut self, data: &[u8]) -> Step {
        let mut step = Step::default();
        if self.phase == Phase::Done {
            return step;
        }
        self.buf.extend_from_slice(data);
        if self.phase == Phase::Greeting {
            match parse_greeting(&self.buf) {
                None => return step,
                Some(Err(e)) => {
                    self.phase = Phase::Done;
                    if e == Socks5Error::NoAcceptableMethod {
                        step.reply = vec![VERSION, METHOD_REFUSED];
                    }
                    step.outcome = Some(Err(e));
                    return step;
                }
                Some(Ok(len)) => {
                    self.buf.drain(..len);
                    step.reply = vec![VERSION, METHOD_NONE];
                    self.phase = Phase::Request;
                }
            }
        }
        match parse_request(&self.buf) {
            None => {}
            Some(Err(e)) => {
                self.phase = Phase::Done;
                step.reply.extend(reply_error(e.reply_code()));
                step.outcome = Some(Err(e));
            }
            Some(Ok((hash, len))) => {
                self.phase = Phase::Done;
                let early = self.buf.split_off(len);
                step.outcome = Some(Ok(Request { hash, early }));
            }
        }
        step
    }
}

/// An error reply with an empty IPv4 bound address (there is none).
fn reply_error(code: ReplyCode) -> Vec<u8> {
    vec![VERSION, code as u8, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
}

fn parse_greeting(buf: &[u8]) -> Option<Result<usize, Socks5Error>> {
    let (&ver, rest) = buf.split_first()?;
    if ver != VERSION {
        return Some(Err(Socks5Error::Version(ver)));
    }
    let (&n, methods) = rest.split_first()?;
    let len = 2 + usize::from(n);
    debug_assert!(len <= MAX_GREETING);
    let methods = methods.get(..usize::from(n))?;
    if !methods.contains(&METHOD_NONE) {
        return Some(Err(Socks5Error::NoAcceptableMethod));
    }
    Some(Ok(len))
}

fn parse_request(buf: &[u8]) -> Option<Result<(String, usize), Socks5Error>> {
    let head = buf.get(..4)?;
    if head[0] != VERSION {
        return Some(Err(Socks5Error::Version(head[0])));
    }
    if head[1] != 0x01 {
        return Some(Err(Socks5Error::Command(head[1])));
    }
    if head[2] != 0 {
        return Some(Err(Socks5Error::Malformed));
    }
    if head[3] != 0x03 {
        return Some(Err(Socks5Error::AddressType(head[3])));
    }
    let n = usize::from(*buf.get(4)?);
    let end = 5 + n + 2;
    let rest = buf.get(5..end)?;
    let (addr, port) = rest.split_at(n);
    let is_hash = n == 40 && addr.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if !is_hash || port != [0, 0] {
        return Some(Err(Socks5Error::NotAStreamHash));
    }
    // Checked ASCII above.
    let hash = String::from_utf8_lossy(addr).into_owned();
    Some(Ok((hash, end)))
}

/// XEP-0065 §5.3.2: the stream hash, hex SHA-1(SID + requester JID + target JID).
pub fn stream_hash(sid: &str, requester: &str, target: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(sid.as_bytes());
    h.update(requester.as_bytes());
    h.update(target.as_bytes());
    h.digest().to_string()
}
