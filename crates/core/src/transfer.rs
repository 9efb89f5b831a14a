//! The file-transfer door's pure parts (docs/DESIGN.md "The four doors"): every path a file
//! can take is inspected or closed.
//!
//! - [`inspect`]: the one streaming inspection pipeline (size, media type by magic number,
//!   SHA-256 against a hash list, DLP, the antivirus verdict reported by the daemon), with the
//!   tail of the data held back until the verdict;
//! - [`ibb`]: in-band bytestreams (XEP-0047) inspected in the sender's c2s stream;
//! - [`socks5`]: the relay's SOCKS5 handshake (RFC 1928 as XEP-0065 §5.3 restricts it);
//! - [`upload`]: HTTP File Upload (XEP-0363) slots rewritten to the gateway's inspecting
//!   proxy, and its request heads;
//! - [`mediate`]: forced mediation on the c2s stream (the gateway answers its proxy JID,
//!   streamhost offers are rewritten to the gateway's proxy only).
//!
//! Nothing here does I/O: the daemon's `relay` moves the bytes and talks to clamd.

pub mod ibb;
pub mod inspect;
pub mod mediate;
pub mod socks5;
#[cfg(test)]
mod tests;
pub mod upload;

pub use inspect::{Detector, Dlp, Facts, InspectPolicy, Inspection, OnScannerError, Refusal, ScanVerdict};
pub use mediate::{Activator, ProxySettings};
