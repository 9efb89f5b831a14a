//! The client leg of a BOSH session as bytes: records between the gateway's HTTP connection
//! tasks and the session.
//!
//! A BOSH session spans several HTTP connections, but the daemon drives every stream machine
//! through one byte stream per leg. So the HTTP side writes each request body as a record
//! tagged with a *handle* (which HTTP request it came on) and the session answers with records
//! carrying the same handle; a record also tells the session that the connection holding a
//! request went away. The records are the gateway's own, but they are checked anyway: a
//! malformed one is an internal fault and closes the session (fail closed).
//!
//! Layout: `kind: u8`, `handle: u64` (big-endian), `len: u32` (big-endian), `len` bytes.

/// A request body from an HTTP connection.
const KIND_REQUEST: u8 = 1;
/// The HTTP connection holding a request went away.
const KIND_GONE: u8 = 2;
/// A response body for a handle.
const KIND_RESPONSE: u8 = 3;
const HEADER: usize = 1 + 8 + 4;

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A request's body, as received (the session parses it).
    Request {
        /// Which HTTP request.
        handle: u64,
        /// The body.
        body: Vec<u8>,
    },
    /// The HTTP connection carrying `handle` closed before its answer.
    Gone {
        /// Which HTTP request.
        handle: u64,
    },
    /// The answer to `handle`: a `<body/>` document.
    Response {
        /// Which HTTP request.
        handle: u64,
        /// The body.
        body: Vec<u8>,
    },
}

/// A record that cannot be right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LegError {
    /// An unknown record kind.
    #[error("unknown BOSH leg record kind {0}")]
    Kind(u8),
    /// A record longer than the cap.
    #[error("BOSH leg record of {0} bytes exceeds the cap")]
    TooLong(usize),
}

impl Record {
    /// Append the record's bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let (kind, handle, body): (u8, u64, &[u8]) = match self {
            Record::Request { handle, body } => (KIND_REQUEST, *handle, body),
            Record::Gone { handle } => (KIND_GONE, *handle, &[]),
            Record::Response { handle, body } => (KIND_RESPONSE, *handle, body),
        };
        out.push(kind);
        out.extend_from_slice(&handle.to_be_bytes());
        // Bodies are capped far below 4 GiB (max_request_bytes, the pending-output cap).
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
    }

    /// The record as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

/// Reads records from a byte stream fed in pieces.
#[derive(Debug)]
pub struct LegDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl LegDecoder {
    /// A decoder refusing records longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LegDecoder { buf: Vec::new(), max }
    }

    /// More bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete record, if any.
    pub fn next_record(&mut self) -> Result<Option<Record>, LegError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let mut handle = [0u8; 8];
        handle.copy_from_slice(&self.buf[1..9]);
        let handle = u64::from_be_bytes(handle);
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[9..13]);
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max {
            return Err(LegError::TooLong(len));
        }
        if !matches!(kind, KIND_REQUEST | KIND_GONE | KIND_RESPONSE) {
            return Err(LegError::Kind(kind));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(match kind {
            KIND_REQUEST => Record::Request { handle, body },
            KIND_GONE => Record::Gone { handle },
            _ => Record::Response { handle, body },
        }))
    }
}
