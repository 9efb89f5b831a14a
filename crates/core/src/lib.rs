//! # stanzawall-core
//!
//! The pure heart of stanzawall, an XMPP-aware firewall. Everything here is sans-IO: functions
//! take bytes, events and (where time matters) the current time as arguments, and return events,
//! verdicts and bytes to write. No tokio, no sockets, no clock reads — which is what makes every
//! part unit-testable without sleeps and fuzzable in one line.
//!
//! Data flow of one client connection (docs/DESIGN.md, "How a stanza travels"):
//!
//! ```text
//! bytes ─► xml::StreamReader ─► XmlEvent ─► session::c2s ─► checks ─► policy ─► canonical bytes ─► other leg
//!            (restricted XML,                (STARTTLS, SASL relay,
//!             limits at the cap)              bind, from-stamping)
//! ```
//!
//! - [`xml`]: restricted streaming XML (RFC 6120 §11) into a bounded tree, and the one canonical
//!   serialization (invariant 1, never forward bytes the parser did not accept, docs/DESIGN.md);
//! - [`stream`]: stream headers and stream errors (RFC 6120 §4);
//! - [`jid`]: prepared JIDs, compared only in canonical form;
//! - [`stanza`]: stanza kinds and error replies (bounces);
//! - [`session`]: the stream engine (`StreamMachine`: bytes and time in, bytes and effects out)
//!   and its kinds, today [`session::c2s`];
//! - [`guard`], [`limit`], [`ban`]: admission at accept (lists, caps, GCRA rates, bans);
//! - [`net`]: IP prefixes and the one definition of a connection's *source*;
//! - [`keyed`]: bounded, sharded per-key state with a quota per source of keys (rate buckets);
//! - [`proxy_protocol`]: the PROXY protocol v2 header for backends that accept it;
//! - [`policy`]: the rule engine (lists, limiters, rules per chain → verdicts);
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`origin`]: where a configured value came from, and the error that points there;
//! - [`capture`]: passive inspection (TCP reassembly, XMPP detection, the same checks and
//!   policy over captured traffic);
//! - [`transfer`]: the file-transfer door (inspection pipeline, SOCKS5 relay handshake, forced
//!   mediation of bytestream offers);
//! - [`component`]: the gateway's own XEP-0114 component connection to the server, with the
//!   XEP-0356 privileges it is granted (rosters, messages on a user's behalf) and the pubsub
//!   nodes (RTBLs) it follows;
//! - [`fuzzing`]: the fuzz targets' entry points, also replayed as tests.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod antispam;
pub mod ban;
pub mod capture;
pub mod component;
pub mod config;
pub mod fuzzing;
pub mod guard;
pub mod jid;
pub mod keyed;
pub mod limit;
pub mod net;
pub mod origin;
pub mod policy;
pub mod proxy_protocol;
pub mod session;
pub mod stanza;
pub mod stream;
pub mod transfer;
pub mod xml;
