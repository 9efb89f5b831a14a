//! In-band transfers (XEP-0047) of one c2s session: the antivirus scans the core's
//! [`IbbEvent`]s ask for, and the report of each stream's end ([`crate::transfers`]).
//!
//! The core holds a stream's end until the verdict; the verdict is computed in a task of its
//! own (clamd may take seconds) and comes back on the session's control channel
//! ([`crate::sessions::Control::Scanned`]), so the session keeps moving other stanzas
//! meanwhile.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use stanzawall_core::policy::file::{Offer, Transport};
use stanzawall_core::transfer::ibb::IbbEvent;
use stanzawall_core::transfer::ScanVerdict;
use tokio::sync::mpsc;

use crate::sessions::Control;
use crate::state::{Generation, Shared};
use crate::transfers::{Ending, Report};

/// Most streams tracked per session (the core caps its own at 16; ends not reported are
/// forgotten past this).
const MAX_STREAMS: usize = 64;

/// The streams of one session being scanned and timed.
#[derive(Debug, Default)]
pub(super) struct IbbScans {
    streams: HashMap<u64, Stream>,
}

#[derive(Debug)]
struct Stream {
    started: Instant,
    scan: Option<crate::clamd::Scan>,
}

impl IbbScans {
    /// Carry out one event.
    pub(super) async fn handle(
        &mut self,
        event: IbbEvent,
        generation: &Generation,
        shared: &Shared,
        control: &mpsc::Sender<Control>,
        listener: &str,
        client_ip: IpAddr,
    ) {
        let ft = generation.config.file_transfer.as_ref();
        match event {
            IbbEvent::Opened { id } => {
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.clear();
                }
                let scan = match ft.and_then(|f| f.clamd.as_ref().map(|a| (a, f.scan_timeout))) {
                    Some((addr, timeout)) => Some(crate::clamd::Scan::start(addr, timeout).await),
                    None => None,
                };
                self.streams.insert(id, Stream { started: Instant::now(), scan });
            }
            IbbEvent::Data { id, bytes } => {
                if let Some(scan) = self.streams.get_mut(&id).and_then(|s| s.scan.as_mut()) {
                    scan.send(&bytes).await;
                }
            }
            IbbEvent::AwaitVerdict { id } => {
                let scan = self.streams.get_mut(&id).and_then(|s| s.scan.take());
                let timeout = ft.map_or(std::time::Duration::from_secs(60), |f| f.scan_timeout);
                let control = control.clone();
                tokio::spawn(async move {
                    let verdict = match scan {
                        Some(s) => s.verdict(timeout).await,
                        // Opened before this session tracked it (never happens) or no clamd:
                        // fail closed, on_scanner_error decides.
                        None => ScanVerdict::Failed("no scan for this stream".into()),
                    };
                    let _ = control.send(Control::Scanned { id, verdict }).await;
                });
            }
            IbbEvent::Ended(e) => {
                let started = self.streams.remove(&e.id).map_or_else(Instant::now, |s| s.started);
                let offer = Offer {
                    sender: stanzawall_core::jid::parse(&e.sender),
                    recipient: stanzawall_core::jid::parse(&e.recipient),
                    transport: Some(Transport::Ibb),
                    ..Offer::default()
                };
                let ending = match &e.refusal {
                    None => Ending::Pass,
                    Some(r) => Ending::Block(r),
                };
                let mut extra = serde_json::Map::new();
                extra.insert("sid".into(), serde_json::json!(e.sid));
                let report = Report {
                    listener,
                    transport: Transport::Ibb,
                    client_ip: Some(client_ip),
                    sender: Some(&e.sender),
                    recipient: Some(&e.recipient),
                    offer: Some(&offer),
                    facts: &e.facts,
                    ending,
                    duration: started.elapsed(),
                    extra,
                };
                crate::transfers::report(shared, generation.policy.audit().path.clone(), report).await;
            }
        }
    }
}
