//! RFC 6455 framing, server side: client frames in (unmasked, reassembled, checked), server
//! frames out. Sans-IO: bytes are fed, whole messages and control frames come out.
//!
//! What it refuses, each with the close code RFC 6455 §7.4.1 assigns: an unmasked client frame,
//! reserved bits (no extension is negotiated), unknown opcodes, fragmented or oversized control
//! frames, continuations out of place (1002); binary messages (1003: RFC 7395 §3.2 carries XMPP
//! in text frames only); text that is not UTF-8 (1007); a frame or message over the caps (1009).
//! A cap is checked against the length in the frame header, before the payload is buffered, so
//! a peer announcing a huge frame costs nothing. It never panics on any input.

/// RFC 6455 §5.2 opcodes.
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// A data type that cannot be accepted (binary).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Data inconsistent with the message type (text that is not UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// A message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// An unexpected condition on the server.
pub const CLOSE_INTERNAL: u16 = 1011;

/// What the client sent, once complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message (reassembled from its fragments), valid UTF-8.
    Text(String),
    /// A ping: answer with a pong carrying the same payload (RFC 6455 §5.5.2).
    Ping(Vec<u8>),
    /// A pong (unsolicited or not): nothing to do.
    Pong,
    /// A close frame with its status code, if any.
    Close(Option<u16>),
}

/// Why the client's frames were refused; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The framing rules were broken.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A binary message.
    #[error("binary WebSocket messages are not accepted (RFC 7395 §3.2: text only)")]
    Binary,
    /// A text message that is not UTF-8.
    #[error("WebSocket text message is not valid UTF-8")]
    InvalidUtf8,
    /// A frame or message larger than the cap.
    #[error("WebSocket {what} exceeds {limit} bytes")]
    TooBig {
        /// `frame` or `message`.
        what: &'static str,
        /// The cap in force.
        limit: usize,
    },
}

impl FrameError {
    /// The close code to send (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL,
            FrameError::Binary => CLOSE_UNSUPPORTED,
            FrameError::InvalidUtf8 => CLOSE_INVALID_DATA,
            FrameError::TooBig { .. } => CLOSE_TOO_BIG,
        }
    }
}

/// Reassembles the client's frames into messages under two caps.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// The text message being reassembled from fragments.
    message: Option<Vec<u8>>,
    max_frame: usize,
    max_message: usize,
}

/// A parsed frame header.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    len: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max_frame` and messages over `max_message` payload bytes.
    pub fn new(max_frame: usize, max_message: usize) -> Self {
        FrameDecoder { buf: Vec::new(), message: None, max_frame, max_message }
    }

    /// Change the caps (after authentication); they apply from the next frame header.
    pub fn set_caps(&mut self, max_frame: usize, max_message: usize) {
        self.max_frame = max_frame;
        self.max_message = max_message;
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held (a partial frame, a partial message), for memory accounting in tests.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.message.as_ref().map_or(0, Vec::len)
    }

    /// The next complete message or control frame; `Ok(None)` when more bytes are needed.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(head) = self.head()? else { return Ok(None) };
            let end = head.header_len + head.len;
            if self.buf.len() < end {
                return Ok(None);
            }
            let mut payload: Vec<u8> = self.buf[head.header_len..end].to_vec();
            self.buf.drain(..end);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= head.mask[i % 4];
            }
            match head.opcode {
                OP_PING => return Ok(Some(Incoming::Ping(payload))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => return close_frame(&payload).map(Some),
                OP_TEXT | OP_CONTINUATION => {
                    let message = match self.message.take() {
                        Some(mut m) => {
                            m.extend_from_slice(&payload);
                            m
                        }
                        None => payload,
                    };
                    if !head.fin {
                        // Fragments of one message arrive in order; the cap was checked in
                        // `head` against what is held plus this frame.
                        self.message = Some(message);
                        continue;
                    }
                    return String::from_utf8(message)
                        .map(|t| Some(Incoming::Text(t)))
                        .map_err(|_| FrameError::InvalidUtf8);
                }
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }

    /// The header of the next frame, checked; `None` while incomplete.
    fn head(&self) -> Result<Option<Head>, FrameError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
        if rsv != 0 {
            // RFC 6455 §5.2: no extension was negotiated (we never accept permessage-deflate).
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_BINARY => return Err(FrameError::Binary),
            OP_TEXT if self.message.is_some() => {
                return Err(FrameError::Protocol("new message inside a fragmented one"))
            }
            OP_CONTINUATION if self.message.is_none() => {
                return Err(FrameError::Protocol("continuation frame without a message"))
            }
            OP_TEXT | OP_CONTINUATION | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(FrameError::Protocol("unknown opcode")),
        }
        if control && !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if b[1] & 0x80 == 0 {
            // RFC 6455 §5.1: a server MUST close on an unmasked client frame.
            return Err(FrameError::Protocol("client frame not masked"));
        }
        let (len, at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(FrameError::Protocol("frame length has its most significant bit set"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if control && len > 125 {
            return Err(FrameError::Protocol("control frame longer than 125 bytes"));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if !control {
            if len > self.max_frame {
                return Err(FrameError::TooBig { what: "frame", limit: self.max_frame });
            }
            let held = self.message.as_ref().map_or(0, Vec::len);
            if held.saturating_add(len) > self.max_message {
                return Err(FrameError::TooBig { what: "message", limit: self.max_message });
            }
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(Some(Head { fin, opcode, mask, header_len: at + 4, len }))
    }
}

/// A close frame's payload: empty, or a valid status code and a UTF-8 reason (RFC 6455 §5.5.1).
fn close_frame(payload: &[u8]) -> Result<Incoming, FrameError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(FrameError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 §7.4: 1004-1006 and 1015 are never sent; below 1000 and 1012-2999
            // (unassigned here) are not valid on the wire.
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

/// Append an unmasked server frame (RFC 6455 §5.1: servers never mask) with FIN set.
fn write_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Append a text frame carrying `text` (one whole message).
pub fn write_text(text: &[u8], out: &mut Vec<u8>) {
    write_frame(OP_TEXT, text, out);
}

/// Append a pong answering a ping with `payload`.
pub fn write_pong(payload: &[u8], out: &mut Vec<u8>) {
    write_frame(OP_PONG, payload, out);
}

/// Append a close frame with `code` and a short reason (cut to fit 125 bytes at a character
/// boundary).
pub fn write_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    write_frame(OP_CLOSE, &payload, out);
}
