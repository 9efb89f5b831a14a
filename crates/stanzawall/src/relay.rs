//! The gateway's XEP-0065 bytestream proxy (`kind = "socks5"`): pairs the two parties of a
//! transfer by their stream hash and moves the file through the inspection pipeline.
//!
//! XEP-0065 §6: the target connects first (after receiving the offer, which forced mediation
//! made name only this proxy), then the requester (after `<streamhost-used/>`); both send the
//! same hash. Nothing flows until the requester activates the stream through the proxy JID on
//! its c2s session ([`Registry`] is that session's [`Activator`]); the hash the session
//! computes names the activating user, so only the requester the hash names can activate.
//! The relay never dials anywhere (core `transfer::socks5` accepts only hashes).
//!
//! The file (requester → target) crosses core [`Inspection`]: what it releases is written to
//! the target, the same bytes are streamed to clamd, and the held-back tail is written only
//! after the verdict. A refused file is cut: both sockets are reset (SO_LINGER 0), so the
//! target sees an error instead of a clean end, and never the tail. Bytes from the target
//! (the receiving side) would be an uninspected channel the other way: they end the transfer.
//!
//! The `file` chain judges the transfer with its requester (sender), target (recipient) and
//! transport `s5b`. A refused file's requester is told: a `<message type='error'>` from the
//! proxy JID with the reason reaches its c2s session ([`crate::transfers::refusal_notice`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use serde_json::json;
use stanzawall_core::config::{FileTransferConfig, ListenerConfig};
use stanzawall_core::policy::file::{Offer, Transport};
use stanzawall_core::transfer::socks5::{self, Handshake, ReplyCode};
use stanzawall_core::transfer::{Activator, InspectPolicy, Inspection, Refusal, ScanVerdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::state::{Generation, Shared};
use crate::transfers::Ending;

/// Most transfers waiting for their partner or activation at once (each holds a socket).
const MAX_PENDING: usize = 4096;
/// Longest an activated transfer may stall (no byte from the requester) before it is ended.
const IDLE: Duration = Duration::from_secs(120);
/// Read size on the requester's socket.
const READ_CHUNK: usize = 64 * 1024;

/// Relay metrics.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Transfers ended, by verdict and detector.
    pub transfers: Family<TransferLabels, Counter>,
    /// Bytes received from requesters.
    pub bytes_in: Counter,
    /// Bytes written to targets.
    pub bytes_out: Counter,
    /// Connections refused at the SOCKS5 handshake or pairing.
    pub refused: Family<ReasonLabel, Counter>,
}

/// `verdict` and `detector` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferLabels {
    /// pass or block.
    pub verdict: &'static str,
    /// The detector that blocked, or `none`.
    pub detector: &'static str,
}

/// `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

static METRICS: LazyLock<RelayMetrics> = LazyLock::new(RelayMetrics::default);
static REGISTRY: LazyLock<Arc<Registry>> = LazyLock::new(|| Arc::new(Registry::default()));

/// Register the relay's metric families.
pub fn register_metrics(registry: &mut MetricsRegistry) {
    let r = registry.sub_registry_with_prefix("stanzawall_relay");
    r.register("transfers", "Bytestream transfers ended, per verdict and detector", METRICS.transfers.clone());
    r.register("bytes_in", "Bytes received from requesters", METRICS.bytes_in.clone());
    r.register("bytes_out", "Bytes released to targets", METRICS.bytes_out.clone());
    r.register("refused", "Relay connections refused, per reason", METRICS.refused.clone());
}

/// The activator every c2s session of this process uses.
pub fn activator() -> Arc<dyn Activator> {
    REGISTRY.clone()
}

/// What the requester's task receives at activation.
#[derive(Debug)]
struct Activated {
    target: TcpStream,
    requester: String,
    target_jid: String,
}

#[derive(Debug)]
struct Pending {
    /// The first connection (the target), with its address.
    first: Option<(TcpStream, SocketAddr)>,
    /// The second connection's (the requester's) task waits here.
    second: Option<oneshot::Sender<Activated>>,
    since: Instant,
}

/// Connections waiting for their partner or activation, by stream hash.
#[derive(Debug, Default)]
pub struct Registry {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Activator for Registry {
    fn activate(&self, hash: &str, requester: &str, target: &str) -> Result<(), String> {
        let mut map = self.lock();
        let ready = map.get(hash).is_some_and(|p| p.first.is_some() && p.second.is_some());
        if !ready {
            return Err("both parties must be connected to the proxy before activation".into());
        }
        let Some(p) = map.remove(hash) else { return Err("no such stream".into()) };
        let (Some((stream, _)), Some(tx)) = (p.first, p.second) else { return Err("no such stream".into()) };
        tx.send(Activated { target: stream, requester: requester.to_owned(), target_jid: target.to_owned() })
            .map_err(|_| "the requester's connection closed".to_owned())
    }
}

/// Reset instead of a clean close: the peer sees an error, never a complete transfer.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Count one ended transfer (the relay's and the upload proxy's).
pub fn count(verdict: &'static str, detector: &'static str) {
    METRICS.transfers.get_or_create(&TransferLabels { verdict, detector }).inc();
}

fn refused(reason: &'static str) {
    METRICS.refused.get_or_create(&ReasonLabel { reason }).inc();
}

/// Serve one connection to the relay.
pub async fn serve(
    mut socket: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    generation: Arc<Generation>,
    shared: Shared,
) {
    let Some(ft) = generation.config.file_transfer.clone() else {
        refused("no-file-transfer-config");
        return;
    };
    let deadline = generation.config.network.handshake_timeout;
    let handshake = tokio::time::timeout(deadline, handshake(&mut socket)).await;
    let (hash, early) = match handshake {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => {
            refused("socks5");
            return info!(listener = %listener.name, client.ip = %peer.ip(), error = %why, "relay connection refused");
        }
        Err(_) => {
            refused("handshake-timeout");
            return info!(listener = %listener.name, client.ip = %peer.ip(), "relay handshake timed out");
        }
    };
    // Register; the first of a hash is the target, the second the requester. The lock is
    // never held across an await.
    let role = {
        let mut map = REGISTRY.lock();
        let timeout = ft.pairing_timeout;
        map.retain(|_, p| p.since.elapsed() < timeout);
        let full = map.len() >= MAX_PENDING;
        match map.get_mut(&hash) {
            None if full => None,
            None => {
                map.insert(hash.clone(), Pending { first: None, second: None, since: Instant::now() });
                Some(None)
            }
            Some(p) if p.second.is_none() => {
                let (tx, rx) = oneshot::channel();
                p.second = Some(tx);
                Some(Some(rx))
            }
            Some(_) => None,
        }
    };
    let rx = match role {
        None => {
            refused("stream-taken");
            let _ = socket.write_all(&socks5::reply(ReplyCode::NotAllowed, &hash)).await;
            return info!(listener = %listener.name, client.ip = %peer.ip(), stream.hash = %hash, "relay: stream already paired (or too many pending)");
        }
        Some(None) => {
            // Bytes sent by the target before activation have nowhere to go: refused.
            if !early.is_empty() {
                REGISTRY.lock().remove(&hash);
                refused("data-before-activation");
                let _ = socket.write_all(&socks5::reply(ReplyCode::NotAllowed, &hash)).await;
                return;
            }
            if socket.write_all(&socks5::reply(ReplyCode::Succeeded, &hash)).await.is_err() {
                REGISTRY.lock().remove(&hash);
                return;
            }
            if let Some(p) = REGISTRY.lock().get_mut(&hash) {
                p.first = Some((socket, peer));
            }
            return info!(listener = %listener.name, client.ip = %peer.ip(), stream.hash = %hash, "relay: first party connected");
        }
        Some(Some(rx)) => rx,
    };
    if socket.write_all(&socks5::reply(ReplyCode::Succeeded, &hash)).await.is_err() {
        REGISTRY.lock().remove(&hash);
        return;
    }
    info!(listener = %listener.name, client.ip = %peer.ip(), stream.hash = %hash, "relay: second party connected, waiting for activation");
    let activated = match tokio::time::timeout(ft.pairing_timeout, rx).await {
        Ok(Ok(a)) => a,
        _ => {
            REGISTRY.lock().remove(&hash);
            refused("not-activated");
            return info!(listener = %listener.name, stream.hash = %hash, "relay: not activated in time");
        }
    };
    let audit_path = generation.policy.audit().path.clone();
    let started = Instant::now();
    let offer = Offer {
        sender: stanzawall_core::jid::parse(&activated.requester),
        recipient: stanzawall_core::jid::parse(&activated.target_jid),
        transport: Some(Transport::S5b),
        ..Offer::default()
    };
    // A copy for the quarantine, only where a `file` rule can quarantine (see upload.rs).
    let mut tee = match &generation.inspect {
        Some(p) if p.rules.quarantines() => Some(
            crate::quarantine::tee::Tee::start(&generation.config.state_dir, generation.config.quarantine.max_bytes)
                .await,
        ),
        _ => None,
    };
    let outcome = match generation.inspect.clone() {
        Some(policy) => relay(&ft, policy, offer.clone(), socket, early, activated.target, tee.as_mut()).await,
        None => aborted(socket, activated.target, Default::default(), "no file policy".into()),
    };
    let mut extra = serde_json::Map::new();
    if let Some(tee) = tee {
        match &outcome.result {
            Err(End::Refused(r)) if r.detector == stanzawall_core::transfer::Detector::Quarantine => {
                let held = crate::quarantine::tee::HeldTransfer {
                    listener: &listener.name,
                    transport: Transport::S5b,
                    offer: &offer,
                    facts: &outcome.facts,
                    refusal: r,
                };
                let (id, record) = tee.keep(shared.quarantine.as_deref(), held).await;
                extra.insert("quarantine_id".into(), json!(id));
                shared.audit.record(audit_path.clone(), vec![record]).await;
            }
            _ => tee.discard().await,
        }
    }
    let (verdict, detector) = match &outcome.result {
        Ok(()) => ("pass", "none"),
        Err(End::Refused(r)) => ("block", r.detector.as_str()),
        Err(End::Aborted(_)) => ("aborted", "none"),
    };
    count(verdict, detector);
    if let Err(End::Refused(r)) = &outcome.result {
        // The activation was answered long ago: the requester learns of the refusal here.
        if let Some(notice) =
            crate::transfers::refusal_notice(&ft.proxy_jid, &activated.requester, &activated.target_jid, r)
        {
            let told = shared.sessions.notify(&activated.requester, notice);
            info!(stream.hash = %hash, requester = %activated.requester, told, "relay: refusal sent to the requester");
        }
    }
    let ending = match &outcome.result {
        Ok(()) => Ending::Pass,
        Err(End::Refused(r)) => Ending::Block(r),
        Err(End::Aborted(why)) => Ending::Aborted(why),
    };
    extra.insert("stream.hash".into(), json!(hash));
    extra.insert("requester".into(), json!(activated.requester));
    extra.insert("target".into(), json!(activated.target_jid));
    let report = crate::transfers::Report {
        listener: &listener.name,
        transport: Transport::S5b,
        client_ip: Some(peer.ip()),
        sender: Some(&activated.requester),
        recipient: Some(&activated.target_jid),
        offer: Some(&offer),
        facts: &outcome.facts,
        ending,
        duration: started.elapsed(),
        extra,
    };
    crate::transfers::report(&shared, audit_path, report).await;
}

/// The SOCKS5 handshake: the stream hash and any bytes sent after the request.
async fn handshake(socket: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut hs = Handshake::new();
    let mut buf = [0u8; 512];
    loop {
        let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the SOCKS5 handshake".into());
        }
        let step = hs.feed(&buf[..n]);
        if !step.reply.is_empty() {
            socket.write_all(&step.reply).await.map_err(|e| e.to_string())?;
        }
        match step.outcome {
            None => continue,
            Some(Ok(req)) => return Ok((req.hash, req.early)),
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[derive(Debug)]
enum End {
    Refused(Refusal),
    Aborted(String),
}

struct Outcome {
    facts: stanzawall_core::transfer::Facts,
    result: Result<(), End>,
}

/// Move the file from `requester` to `target` through the pipeline (and into `tee`, when
/// given: every byte from the requester, for a quarantine verdict).
async fn relay(
    ft: &FileTransferConfig,
    policy: Arc<InspectPolicy>,
    offer: Offer,
    mut requester: TcpStream,
    early: Vec<u8>,
    mut target: TcpStream,
    mut tee: Option<&mut crate::quarantine::tee::Tee>,
) -> Outcome {
    let mut ins = match Inspection::with_offer(policy, offer) {
        Ok(i) => i,
        Err(r) => return cut(requester, target, Default::default(), r),
    };
    let mut scan = match &ft.clamd {
        Some(addr) => Some(crate::clamd::Scan::start(addr, ft.scan_timeout).await),
        None => None,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut back = [0u8; 1024];
    let mut pending = early;
    loop {
        if !pending.is_empty() {
            METRICS.bytes_in.inc_by(pending.len() as u64);
            if let Some(t) = tee.as_deref_mut() {
                t.write(&pending).await;
            }
            let released = match ins.push(&pending) {
                Ok(r) => r,
                Err(r) => return cut(requester, target, ins.facts().clone(), r),
            };
            if let Some(s) = scan.as_mut() {
                s.send(&pending).await;
            }
            if !released.is_empty() {
                if let Err(e) = target.write_all(&released).await {
                    return aborted(requester, target, ins.facts().clone(), format!("target: {e}"));
                }
                METRICS.bytes_out.inc_by(released.len() as u64);
            }
            pending.clear();
        }
        tokio::select! {
            () = tokio::time::sleep(IDLE) => {
                return aborted(requester, target, ins.facts().clone(), "the requester stalled".into())
            }
            r = requester.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) => return aborted(requester, target, ins.facts().clone(), format!("requester: {e}")),
            },
            r = target.read(&mut back) => match r {
                Ok(0) => return aborted(requester, target, ins.facts().clone(), "the target closed before the end".into()),
                Ok(_) => {
                    return aborted(requester, target, ins.facts().clone(), "data from the target: only the requester sends".into())
                }
                Err(e) => return aborted(requester, target, ins.facts().clone(), format!("target: {e}")),
            },
        }
    }
    if let Err(r) = ins.finish() {
        return cut(requester, target, ins.facts().clone(), r);
    }
    let verdict = match scan {
        Some(s) => s.verdict(ft.scan_timeout).await,
        None => ScanVerdict::NotConfigured,
    };
    if let ScanVerdict::Failed(why) = &verdict {
        warn!(error = %why, "antivirus scan failed");
    }
    match ins.scanned(verdict) {
        Ok(tail) => {
            let facts = ins.facts().clone();
            if let Err(e) = target.write_all(&tail).await {
                return aborted(requester, target, facts, format!("target: {e}"));
            }
            METRICS.bytes_out.inc_by(tail.len() as u64);
            let _ = target.shutdown().await;
            let _ = requester.shutdown().await;
            Outcome { facts, result: Ok(()) }
        }
        Err(r) => cut(requester, target, ins.facts().clone(), r),
    }
}

fn cut(requester: TcpStream, target: TcpStream, facts: stanzawall_core::transfer::Facts, r: Refusal) -> Outcome {
    reset(&requester);
    reset(&target);
    Outcome { facts, result: Err(End::Refused(r)) }
}

fn aborted(requester: TcpStream, target: TcpStream, facts: stanzawall_core::transfer::Facts, why: String) -> Outcome {
    reset(&requester);
    reset(&target);
    Outcome { facts, result: Err(End::Aborted(why)) }
}
