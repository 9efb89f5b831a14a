//! `stanzawall inspect`: passive inspection of captured or mirrored XMPP traffic.
//!
//! Reads pcap and pcapng (Ethernet, Linux cooked SLL and SLL2 as `tcpdump -i any` writes, raw
//! IP, BSD loopback; IPv4 and IPv6), decodes TCP segments and hands them with their capture
//! timestamps to the core's [`Inspector`] — the same restricted-XML reader, gateway checks and
//! policy as the inline gateway. Decisions are written as the inline audit's JSON lines (the
//! same `conn::report` mapping), each with the flow's 5-tuple, the capture time and the verdict
//! phrased as what the gateway *would* have done; alerts go to `--eve` in Suricata's EVE JSON
//! style; a summary ends the run (stderr).
//!
//! Live capture (`--interface`) and BPF filters (`--bpf`) go through libpcap ([`live`]): an
//! `AF_PACKET` ring with the filter attached in the kernel, or, on files, the same expression
//! run in user space. With `[admin] bind` in its config, a live capture serves its counters on
//! the gateway's admin listener ([`metrics`]). Nothing is ever blocked: this mode only observes.
//!
//! A live capture runs until SIGINT (Ctrl-C) or SIGTERM: the capture loop stops, what the
//! kernel delivered is inspected, and the summary is printed as at the end of a file; a second
//! signal exits at once.

pub mod live;
pub mod metrics;

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_parser::pcapng::Block;
use pcap_parser::{create_reader, Linktype, PcapBlockOwned, PcapError};
use serde_json::{json, Value};
use stanzawall_core::capture::{
    CaptureEvent, CaptureLimits, CaptureStats, FileInspection, FlowAddrs, Inspector, Observed, Segment, StreamKind,
    TcpFlags,
};
use stanzawall_core::config::Config;
use stanzawall_core::policy::file::{Offer, Transport};
use stanzawall_core::policy::Chain;
use stanzawall_core::policy::Policy;
use stanzawall_core::session::Effect;
use stanzawall_core::transfer::ibb::IbbEnded;

use crate::audit::humantime_rfc3339;
use crate::conn::report;
use crate::metrics::VerdictLabels;
use crate::state::StdFiles;
use crate::transfers::Ending;
use live::{FileFilter, KernelStats, Live, Next};
use metrics::{AdminEndpoint, ConditionLabels, InspectMetrics, KindLabels};

/// What `stanzawall inspect` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// Configuration (policy and limits; listeners and certificates optional).
    pub config: PathBuf,
    /// Capture files, read in order as one capture.
    pub pcaps: Vec<PathBuf>,
    /// A live interface instead.
    pub interface: Option<String>,
    /// A BPF filter expression.
    pub bpf: Option<String>,
    /// Live capture in promiscuous mode (a mirror port's frames are not addressed to us).
    pub promisc: bool,
    /// Audit JSON lines (stdout without it).
    pub audit: Option<PathBuf>,
    /// EVE JSON alerts.
    pub eve: Option<PathBuf>,
    /// Flow table size.
    pub max_flows: Option<usize>,
}

/// Capture buffer: the largest record read whole (pcapng blocks with 256 KiB snaplen fit).
const READ_BUFFER: usize = 4 << 20;
/// EVE signature ids (Suricata's local range): one per kind of finding.
const SID_POLICY: u32 = 9_100_001;
const SID_GATEWAY: u32 = 9_100_002;
const SID_CLOSE: u32 = 9_100_003;
const SID_PARSE: u32 = 9_100_004;
const SID_CONFLICT: u32 = 9_100_005;
const SID_FILE: u32 = 9_100_006;

/// How often a live capture flushes its output and brings the metrics up to date.
const LIVE_SYNC: Duration = Duration::from_millis(500);

/// Run it; `Ok(false)` when a capture could not be read to its end (what was read is reported).
pub fn run(opts: &Options) -> anyhow::Result<bool> {
    let text = crate::files::read_to_string(&opts.config).with_context(|| format!("{}", opts.config.display()))?;
    let config = Config::parse_for_inspection(&text, &opts.config, &StdFiles)?;
    let policy = Arc::new(Policy::compile(&config.policy)?);
    let mut limits = CaptureLimits::default();
    if let Some(n) = opts.max_flows {
        limits.max_flows = n.max(1);
    }
    // Checked before any output file is created: a typo in the expression costs nothing.
    let filter = match (&opts.bpf, opts.interface.is_some()) {
        (Some(expr), false) => Some(FileFilter::new(expr)?),
        _ => None,
    };
    let mut inspector = Inspector::new(policy.clone(), config.limits, limits, Instant::now());
    // In-band bytestreams are judged where the gateway would judge them: with `[file_transfer]`.
    if let Some(ft) = &config.file_transfer {
        let inspect = ft.inspect_policy(policy.file_rules().clone()).context("[file_transfer]")?;
        inspector.set_file_inspection(Some(FileInspection { policy: Arc::new(inspect), scanner: ft.clamd.is_some() }));
    }
    // `[s2s] domains` tell inbound from outbound s2s streams (s2s-in / s2s-out).
    inspector.set_local_domains(config.s2s.as_ref().map(|s| s.local_domains.clone()));
    let mut live = match &opts.interface {
        Some(iface) => Some(Live::open(iface, opts.bpf.as_deref(), opts.promisc)?),
        None => None,
    };
    // Metrics only where something runs long enough to be scraped: a live capture.
    let (metrics, admin) = match (&live, config.admin.bind) {
        (Some(_), Some(_)) => {
            init_logging();
            let m = Arc::new(InspectMetrics::default());
            let admin = AdminEndpoint::start(&config, policy, &m)?;
            (Some(m), admin)
        }
        _ => (None, None),
    };
    let audit: Box<dyn Write> = match &opts.audit {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("--audit {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let eve: Option<Box<dyn Write>> = match &opts.eve {
        Some(p) => Some(Box::new(std::fs::File::create(p).with_context(|| format!("--eve {}", p.display()))?)),
        None => None,
    };
    let mut sink = Sink {
        inspector,
        audit: BufWriter::new(audit),
        eve: eve.map(BufWriter::new),
        summary: Summary::default(),
        sources: Vec::new(),
        filter,
        metrics,
        kernel: None,
    };
    let mut complete = true;
    if let (Some(cap), Some(iface)) = (&mut live, &opts.interface) {
        let interrupted = Arc::new(AtomicBool::new(false));
        stop_on_signal(cap.breaker(), interrupted.clone())?;
        eprintln!(
            "stanzawall inspect: listening on {iface}, link-type {} ({}), kernel timestamps{}",
            cap.linktype_name(),
            cap.linktype(),
            opts.bpf.as_deref().map_or(String::new(), |f| format!(", filter '{f}'"))
        );
        if let Some(a) = &admin {
            a.ready();
        }
        if let Err(e) = sink.read_live(&format!("interface {iface}"), cap, &interrupted) {
            eprintln!("{e:#}");
            complete = false;
        }
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("stanzawall inspect: interrupted, live capture stopped");
        }
    }
    for path in &opts.pcaps {
        let name = path.display().to_string();
        let result = std::fs::File::open(path).with_context(|| name.clone()).and_then(|f| sink.read_capture(&name, f));
        if let Err(e) = result {
            eprintln!("{e:#}");
            complete = false;
        }
    }
    sink.inspector.finish();
    sink.drain()?;
    sink.audit.flush()?;
    if let Some(e) = &mut sink.eve {
        e.flush()?;
    }
    let stats = sink.inspector.stats();
    if let Some(m) = &sink.metrics {
        m.sync(&stats, 0, &sink.kernel.unwrap_or_default());
    }
    eprint!("{}", sink.summary.render(&stats, &sink.sources, sink.kernel.as_ref()));
    drop(admin);
    Ok(complete)
}

/// Log lines (the admin listener's, on stderr) for a live capture with `[admin]`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STANZAWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// On the first SIGINT or SIGTERM, mark `interrupted` and break the capture loop (libpcap's
/// `pcap_breakloop`; the read timeout bounds the wait in any case); on the second, exit at once.
fn stop_on_signal(breaker: pcap::BreakLoop, interrupted: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Registered before the capture is read, so that no signal falls through to the default
    // action (which would end the process without a summary).
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            for _ in 0..2 {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if interrupted.swap(true, Ordering::SeqCst) {
                    break;
                }
                breaker.breakloop();
            }
        });
        eprintln!("stanzawall inspect: interrupted twice, exiting without a summary");
        std::process::exit(130);
    });
    Ok(())
}

/// What was read from one source.
#[derive(Debug, Default)]
struct SourceReport {
    name: String,
    packets: u64,
    bytes: u64,
    /// Packets that were not TCP over IP, or could not be decoded.
    skipped: u64,
    /// Packets of a file that `--bpf` left out (`None`: no filter).
    filtered: Option<u64>,
    error: Option<String>,
}

struct Sink {
    inspector: Inspector,
    audit: BufWriter<Box<dyn Write>>,
    eve: Option<BufWriter<Box<dyn Write>>>,
    summary: Summary,
    sources: Vec<SourceReport>,
    /// `--bpf` over files (a live capture filters in the kernel).
    filter: Option<FileFilter>,
    /// A live capture's metrics (with `[admin] bind`).
    metrics: Option<Arc<InspectMetrics>>,
    /// A live capture's kernel counters at its end.
    kernel: Option<KernelStats>,
}

/// An interface of a pcapng section: its link type and timestamp units.
#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: Linktype,
    /// Units per second.
    resolution: u64,
    offset: i64,
}

impl Sink {
    /// Inspect a live capture until `interrupted` (or a read error).
    fn read_live(&mut self, name: &str, cap: &mut Live, interrupted: &AtomicBool) -> anyhow::Result<()> {
        self.sources.push(SourceReport { name: name.to_owned(), ..SourceReport::default() });
        let linktype = Linktype(cap.linktype());
        let mut synced = Instant::now();
        let result = loop {
            if interrupted.load(Ordering::SeqCst) {
                break Ok(());
            }
            match cap.next() {
                Ok(Next::Packet(data, ts)) => {
                    if let Err(e) = self.packet(linktype, data, ts) {
                        break Err(e);
                    }
                }
                Ok(Next::Idle) => {}
                Err(e) => break Err(e.into()),
            }
            // Output and metrics follow the traffic, also while it is quiet.
            if synced.elapsed() >= LIVE_SYNC {
                synced = Instant::now();
                self.kernel = Some(cap.stats());
                self.flush_live()?;
            }
        };
        self.kernel = Some(cap.stats());
        self.flush_live()?;
        if let Err(e) = &result {
            if let Some(s) = self.sources.last_mut() {
                s.error = Some(format!("{e:#}"));
            }
        }
        result
    }

    fn flush_live(&mut self) -> anyhow::Result<()> {
        self.audit.flush()?;
        if let Some(e) = &mut self.eve {
            e.flush()?;
        }
        if let Some(m) = &self.metrics {
            m.sync(&self.inspector.stats(), self.inspector.flow_count(), &self.kernel.unwrap_or_default());
        }
        Ok(())
    }

    /// Read one capture (pcap or pcapng) to its end.
    fn read_capture(&mut self, name: &str, input: impl Read + Send) -> anyhow::Result<()> {
        let filtered = self.filter.as_ref().map(|_| 0);
        self.sources.push(SourceReport { name: name.to_owned(), filtered, ..SourceReport::default() });
        let result = self.read_blocks(input);
        if let Err(e) = &result {
            if let Some(s) = self.sources.last_mut() {
                s.error = Some(e.to_string());
            }
        }
        let s = self.sources.last().map(|s| (s.packets, s.bytes)).unwrap_or_default();
        result.with_context(|| format!("{name}: read {} packets ({} bytes) before the error", s.0, s.1))
    }

    fn read_blocks(&mut self, input: impl Read + Send) -> anyhow::Result<()> {
        let mut reader = match create_reader(READ_BUFFER, input) {
            Ok(r) => r,
            Err(PcapError::HeaderNotRecognized) => anyhow::bail!("not a pcap or pcapng file"),
            Err(e) => anyhow::bail!("cannot read the capture header: {e:?}"),
        };
        let mut legacy: Option<(Linktype, bool)> = None;
        let mut interfaces: Vec<Interface> = Vec::new();
        let mut refills_without_progress = 0;
        loop {
            match reader.next() {
                Ok((offset, block)) => {
                    refills_without_progress = 0;
                    match block {
                        PcapBlockOwned::LegacyHeader(h) => legacy = Some((h.network, h.is_nanosecond_precision())),
                        PcapBlockOwned::Legacy(b) => {
                            let (linktype, nanos) = legacy.unwrap_or((Linktype::ETHERNET, false));
                            let frac = if nanos { b.ts_usec } else { b.ts_usec.saturating_mul(1000) };
                            let ts = Duration::new(u64::from(b.ts_sec), frac.min(999_999_999));
                            self.packet(linktype, b.data, ts)?;
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => interfaces.push(Interface {
                            linktype: idb.linktype,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                            offset: idb.ts_offset(),
                        }),
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            let Some(iface) = interfaces.get(epb.if_id as usize).copied() else {
                                anyhow::bail!("packet for interface {} that was not described", epb.if_id);
                            };
                            let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                            let secs = (units / iface.resolution).saturating_add_signed(iface.offset);
                            let nanos =
                                u128::from(units % iface.resolution) * 1_000_000_000 / u128::from(iface.resolution);
                            let ts = Duration::new(secs, nanos as u32);
                            let len = (epb.caplen as usize).min(epb.data.len());
                            self.packet(iface.linktype, &epb.data[..len], ts)?;
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                            let linktype = interfaces.first().map_or(Linktype::ETHERNET, |i| i.linktype);
                            self.packet(linktype, spb.data, Duration::ZERO)?;
                        }
                        PcapBlockOwned::NG(_) => {}
                    }
                    reader.consume(offset);
                }
                Err(PcapError::Eof) => return Ok(()),
                Err(PcapError::Incomplete(_)) => {
                    refills_without_progress += 1;
                    if refills_without_progress > 64 {
                        anyhow::bail!("the capture ends inside a record (truncated file)");
                    }
                    reader.refill().map_err(|e| anyhow::anyhow!("read error: {e:?}"))?;
                }
                Err(PcapError::UnexpectedEof) => anyhow::bail!("the capture ends inside a record (truncated file)"),
                Err(PcapError::BufferTooSmall) => anyhow::bail!("a record is larger than {READ_BUFFER} bytes"),
                Err(e) => anyhow::bail!("malformed capture: {e:?}"),
            }
        }
    }

    /// One captured packet of link type `linktype`.
    fn packet(&mut self, linktype: Linktype, data: &[u8], ts: Duration) -> anyhow::Result<()> {
        if let Some(f) = &mut self.filter {
            if !f.matches(linktype.0, data)? {
                if let Some(n) = self.sources.last_mut().and_then(|s| s.filtered.as_mut()) {
                    *n += 1;
                }
                return Ok(());
            }
        }
        if let Some(m) = &self.metrics {
            m.packets.inc();
        }
        if let Some(s) = self.sources.last_mut() {
            s.packets += 1;
            s.bytes += data.len() as u64;
        }
        match decode(linktype, data) {
            Some(seg) => {
                self.inspector.segment(&seg, ts);
                self.drain()
            }
            None => {
                if let Some(s) = self.sources.last_mut() {
                    s.skipped += 1;
                }
                Ok(())
            }
        }
    }

    /// Write out every observation the inspector has made.
    fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(ev) = self.inspector.poll_event() {
            self.observe(ev)?;
        }
        Ok(())
    }

    fn observe(&mut self, ev: CaptureEvent) -> anyhow::Result<()> {
        if let Some(m) = &self.metrics {
            count(m, &ev.what);
        }
        let s = &mut self.summary;
        match &ev.what {
            Observed::Decision(chain, effect) => {
                // The effect's own direction (`from_backend`) agrees with its chain.
                let r = report::report(effect, "inspect", ev.flow.client.ip(), (*chain, *chain));
                for l in r.verdicts.iter().chain(&r.defaults) {
                    *s.rules
                        .entry(format!(
                            "{} ({}{})",
                            l.rule,
                            l.action,
                            if l.log_only == "true" { ", log_only" } else { "" }
                        ))
                        .or_default() += 1;
                }
                if let Effect::Bounced { reason, .. } | Effect::Dropped { reason, .. } = effect {
                    *s.rules.entry(format!("gateway: {reason}")).or_default() += 1;
                }
                for mut line in r.audit {
                    annotate(&mut line, &ev);
                    writeln!(self.audit, "{line}")?;
                    let action = line["action"].as_str().unwrap_or_default().to_owned();
                    let rule = line["rule"].as_str().unwrap_or_default().to_owned();
                    let sid = if rule.starts_with("gateway: ") { SID_GATEWAY } else { SID_POLICY };
                    let signature = format!("stanzawall {rule}: {}", line["verdict"].as_str().unwrap_or_default());
                    let severity = if action == "pass" || action == "log" { 3 } else { 2 };
                    self.alert(&ev, sid, &signature, severity, Some(line))?;
                }
            }
            Observed::WouldClose { chain, condition, reason } => {
                *s.rules.entry(format!("close: {}", condition.as_str())).or_default() += 1;
                let signature =
                    format!("stanzawall would close the stream ({}, {}): {reason}", chain.as_str(), condition.as_str());
                self.alert(&ev, SID_CLOSE, &signature, 2, None)?;
            }
            Observed::ParseError { from_client, error } => {
                let condition = stanzawall_core::stream::Condition::from(error);
                *s.parse_errors.entry(condition.as_str()).or_default() += 1;
                let side = if *from_client { "client" } else { "server" };
                let signature = format!("stanzawall XML refused from the {side}: {} ({error})", condition.as_str());
                self.alert(&ev, SID_PARSE, &signature, 2, None)?;
            }
            Observed::Conflict { from_client, offset } => {
                let side = if *from_client { "client" } else { "server" };
                let signature = format!(
                    "stanzawall TCP retransmission with different data from the {side} at offset {offset} (evasion)"
                );
                self.alert(&ev, SID_CONFLICT, &signature, 1, None)?;
            }
            Observed::Stream { kind, .. } => match kind {
                StreamKind::C2s => s.c2s += 1,
                StreamKind::S2s => s.s2s += 1,
                StreamKind::Other => s.other += 1,
            },
            Observed::Encrypted(_) => s.encrypted += 1,
            Observed::Bound(_) => s.bound += 1,
            Observed::FileTransfer { chain, ended, opened } => {
                let blocked = ended.refusal.is_some();
                if blocked {
                    s.ibb_block += 1;
                } else {
                    s.ibb_pass += 1;
                }
                let mut line = ibb_record(*chain, ended, *opened, &ev);
                writeln!(self.audit, "{line}")?;
                if let Some(r) = &ended.refusal {
                    *s.ibb_detectors.entry(r.detector.as_str()).or_default() += 1;
                    let signature = format!("stanzawall in-band file would be blocked: {r}");
                    line["verdict"] = json!("would block");
                    self.alert(&ev, SID_FILE, &signature, 2, Some(line))?;
                }
            }
            Observed::FileTransferError { chain, condition, reason } => {
                s.ibb_errors += 1;
                let signature = format!(
                    "stanzawall in-band bytestream stanza would be refused ({}, {}): {reason}",
                    chain.as_str(),
                    condition.as_str()
                );
                self.alert(&ev, SID_FILE, &signature, 2, None)?;
            }
            Observed::Authenticated { .. } | Observed::AuthFailed | Observed::Gap { .. } => {}
            Observed::Ended { xmpp, totals, how } => {
                if *xmpp {
                    s.stanzas += totals.stanzas[0] + totals.stanzas[1];
                    if let Some(eve) = &mut self.eve {
                        let mut v = eve_base(&ev, "flow", true);
                        v["flow"] = json!({
                            "bytes_toserver": totals.bytes[0], "bytes_toclient": totals.bytes[1],
                            "stanzas_toserver": totals.stanzas[0], "stanzas_toclient": totals.stanzas[1],
                            "reason": how.as_str(),
                        });
                        writeln!(eve, "{v}")?;
                    }
                }
            }
        }
        if let (Some(eve), Observed::Gap { from_client, bytes }) = (&mut self.eve, &ev.what) {
            let mut v = eve_base(&ev, "anomaly", *from_client);
            v["anomaly"] = json!({"type": "stream", "event": "gap", "bytes": bytes});
            writeln!(eve, "{v}")?;
        }
        Ok(())
    }

    fn alert(
        &mut self,
        ev: &CaptureEvent,
        sid: u32,
        signature: &str,
        severity: u8,
        xmpp: Option<Value>,
    ) -> anyhow::Result<()> {
        let Some(eve) = &mut self.eve else { return Ok(()) };
        let to_server = xmpp.as_ref().is_none_or(|l| l["chain"] != "c2s-out");
        let mut v = eve_base(ev, "alert", to_server);
        v["alert"] = json!({
            // Passive: nothing was stopped, whatever the rule says.
            "action": "allowed", "gid": 1, "signature_id": sid, "rev": 1,
            "signature": signature, "category": "XMPP policy", "severity": severity,
        });
        if let Some(x) = xmpp {
            v["xmpp"] = x;
        }
        writeln!(eve, "{v}")?;
        Ok(())
    }
}

/// The metrics an observation moves (the inspector's own totals are synced separately).
fn count(m: &InspectMetrics, what: &Observed) {
    match what {
        Observed::Decision(chain, effect) => {
            let r = report::report(effect, "inspect", IpAddr::from([0, 0, 0, 0]), (*chain, *chain));
            for l in r.verdicts.iter().chain(&r.defaults) {
                m.verdicts.get_or_create(l).inc();
            }
            if let Effect::Bounced { .. } | Effect::Dropped { .. } = effect {
                let action = if matches!(effect, Effect::Bounced { .. }) { "bounce" } else { "drop" };
                let labels = VerdictLabels { rule: "gateway".to_owned(), action, log_only: "false" };
                m.verdicts.get_or_create(&labels).inc();
            }
        }
        Observed::WouldClose { condition, .. } => {
            m.would_close.get_or_create(&ConditionLabels { condition: condition.as_str() }).inc();
        }
        Observed::ParseError { error, .. } => {
            let condition = stanzawall_core::stream::Condition::from(error).as_str();
            m.parse_errors.get_or_create(&ConditionLabels { condition }).inc();
        }
        Observed::Stream { kind, .. } => {
            m.streams.get_or_create(&KindLabels { kind: kind.as_str() }).inc();
        }
        Observed::Encrypted(_) => {
            m.encrypted.inc();
        }
        _ => {}
    }
}

/// Suricata's EVE header fields for `ev`, oriented like the packet (`to_server`).
fn eve_base(ev: &CaptureEvent, event_type: &str, to_server: bool) -> Value {
    let (src, dst) = oriented(&ev.flow, to_server);
    json!({
        "timestamp": eve_time(ev.ts),
        "flow_id": flow_id(&ev.flow),
        "event_type": event_type,
        "src_ip": src.ip().to_string(), "src_port": src.port(),
        "dest_ip": dst.ip().to_string(), "dest_port": dst.port(),
        "proto": "TCP", "app_proto": "xmpp",
    })
}

fn oriented(flow: &FlowAddrs, to_server: bool) -> (SocketAddr, SocketAddr) {
    if to_server {
        (flow.client, flow.server)
    } else {
        (flow.server, flow.client)
    }
}

/// A stable id per flow (FNV-1a of the 5-tuple), as Suricata's `flow_id` joins a flow's events.
fn flow_id(flow: &FlowAddrs) -> u64 {
    let text = format!("tcp {} {}", flow.client, flow.server);
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    h & (i64::MAX as u64)
}

/// `2026-12-03T15:12:13.123456+0000`, as EVE writes times.
fn eve_time(ts: Duration) -> String {
    let base = humantime_rfc3339(UNIX_EPOCH + ts);
    format!("{}.{:06}+0000", &base[..19], ts.subsec_micros())
}

/// The inline audit line plus what only a capture knows: the flow's 5-tuple in the stanza's
/// direction, the capture time (which also becomes `time`), and the verdict as what would
/// have been done.
fn annotate(line: &mut Value, ev: &CaptureEvent) {
    let to_server = line["chain"] != "c2s-out";
    let (src, dst) = oriented(&ev.flow, to_server);
    let outcome = line["outcome"].as_str().unwrap_or("pass").to_owned();
    let Some(map) = line.as_object_mut() else { return };
    map.insert("time".into(), Value::String(humantime_rfc3339(UNIX_EPOCH + ev.ts)));
    map.insert("capture.ts".into(), json!(format!("{}.{:06}", ev.ts.as_secs(), ev.ts.subsec_micros())));
    map.insert("flow.proto".into(), json!("tcp"));
    map.insert("flow.src_ip".into(), json!(src.ip().to_string()));
    map.insert("flow.src_port".into(), json!(src.port()));
    map.insert("flow.dest_ip".into(), json!(dst.ip().to_string()));
    map.insert("flow.dest_port".into(), json!(dst.port()));
    map.insert("verdict".into(), json!(format!("would {outcome}")));
}

/// The inline `file-transfer` record of an in-band transfer seen in a capture, with the flow
/// and the capture time as [`annotate`] adds them, and the verdict as what would have been done.
fn ibb_record(chain: Chain, e: &IbbEnded, opened: Option<Duration>, ev: &CaptureEvent) -> Value {
    let offer = Offer {
        sender: stanzawall_core::jid::parse(&e.sender),
        recipient: stanzawall_core::jid::parse(&e.recipient),
        transport: Some(Transport::Ibb),
        ..Offer::default()
    };
    let mut extra = serde_json::Map::new();
    extra.insert("sid".into(), json!(e.sid));
    extra.insert("chain".into(), json!(chain.as_str()));
    let report = crate::transfers::Report {
        listener: "inspect",
        transport: Transport::Ibb,
        client_ip: Some(ev.flow.client.ip()),
        sender: Some(&e.sender),
        recipient: Some(&e.recipient),
        offer: Some(&offer),
        facts: &e.facts,
        ending: e.refusal.as_ref().map_or(Ending::Pass, Ending::Block),
        duration: opened.map_or(Duration::ZERO, |o| ev.ts.saturating_sub(o)),
        extra,
    };
    let mut line = crate::transfers::record(&report);
    annotate(&mut line, ev);
    line["verdict"] = json!(if e.refusal.is_some() { "would block" } else { "would pass" });
    line
}

/// The TCP segment in one packet of link type `linktype`, if it holds one.
fn decode(linktype: Linktype, data: &[u8]) -> Option<Segment<'_>> {
    let packet = match linktype {
        Linktype::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => SlicedPacket::from_ip(data).ok()?,
        // Linux cooked v1: 16-byte header, EtherType in its last two bytes.
        Linktype::LINUX_SLL => ip_after(data, 16, 14)?,
        // Linux cooked v2 (`tcpdump -i any` since 4.99): 20 bytes, EtherType first.
        Linktype::LINUX_SLL2 => ip_after(data, 20, 0)?,
        // BSD loopback: a 4-byte address family in host order (2 = IPv4; 24, 28, 30 = IPv6).
        Linktype::NULL | Linktype::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(v4) => (v4.header().source_addr().into(), v4.header().destination_addr().into()),
        NetSlice::Ipv6(v6) => (v6.header().source_addr().into(), v6.header().destination_addr().into()),
        _ => return None,
    };
    let TransportSlice::Tcp(tcp) = packet.transport? else { return None };
    Some(Segment {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags { syn: tcp.syn(), ack: tcp.ack(), fin: tcp.fin(), rst: tcp.rst() },
        payload: tcp.payload(),
    })
}

/// The IP packet after a cooked header of `len` bytes whose EtherType is at `proto_at`.
fn ip_after(data: &[u8], len: usize, proto_at: usize) -> Option<SlicedPacket<'_>> {
    let proto = u16::from_be_bytes([*data.get(proto_at)?, *data.get(proto_at + 1)?]);
    if proto != 0x0800 && proto != 0x86DD {
        return None;
    }
    SlicedPacket::from_ip(data.get(len..)?).ok()
}

/// Totals for the end-of-run summary.
#[derive(Debug, Default)]
struct Summary {
    c2s: u64,
    s2s: u64,
    other: u64,
    encrypted: u64,
    bound: u64,
    stanzas: u64,
    rules: BTreeMap<String, u64>,
    parse_errors: BTreeMap<&'static str, u64>,
    /// In-band transfers (XEP-0047) that would pass / be blocked, blocks per detector.
    ibb_pass: u64,
    ibb_block: u64,
    ibb_detectors: BTreeMap<&'static str, u64>,
    /// In-band bytestream stanzas that would be refused outside a transfer.
    ibb_errors: u64,
}

impl Summary {
    fn render(&self, stats: &CaptureStats, sources: &[SourceReport], kernel: Option<&KernelStats>) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("stanzawall inspect summary\n");
        for s in sources {
            let _ = writeln!(
                out,
                "  source {}: {} packets, {} bytes, {} not TCP/IP{}{}",
                s.name,
                s.packets,
                s.bytes,
                s.skipped,
                s.filtered.map_or(String::new(), |n| format!(", {n} left out by --bpf")),
                s.error.as_ref().map_or(String::new(), |e| format!(", incomplete: {e}"))
            );
        }
        if let Some(k) = kernel {
            let _ = writeln!(
                out,
                "  kernel: {} packets received by the socket, {} dropped (ring full), {} dropped by the interface",
                k.received, k.dropped, k.if_dropped
            );
        }
        let xmpp = self.c2s + self.s2s + self.other;
        let _ = writeln!(out, "  tcp segments: {} ({} payload bytes)", stats.segments, stats.payload_bytes);
        let _ = writeln!(
            out,
            "  flows: {} (evicted {}, idle {}, most at once {})",
            stats.flows, stats.flows_evicted, stats.flows_idle, stats.flows_high_water
        );
        let _ = writeln!(out, "  xmpp streams: {xmpp} (c2s {}, s2s {}, other {})", self.c2s, self.s2s, self.other);
        let _ = writeln!(out, "  encrypted: {}, plaintext: {}", self.encrypted, xmpp.saturating_sub(self.encrypted));
        let _ = writeln!(out, "  bound users: {}", self.bound);
        let _ = writeln!(out, "  stanzas: {}", self.stanzas);
        let _ = writeln!(
            out,
            "  reassembly: gaps {} ({} bytes), conflicting overlaps {}, retransmissions {}, resync failures {}, out-of-order bytes dropped {}",
            stats.gaps, stats.gap_bytes, stats.conflicts, stats.duplicates, stats.resync_failures, stats.pending_dropped
        );
        let _ = writeln!(out, "  verdicts:{}", if self.rules.is_empty() { " none" } else { "" });
        for (rule, n) in &self.rules {
            let _ = writeln!(out, "    {rule}: {n}");
        }
        let _ = writeln!(
            out,
            "  in-band transfers: {} (would pass {}, would block {}), refused in-band stanzas {}",
            self.ibb_pass + self.ibb_block,
            self.ibb_pass,
            self.ibb_block,
            self.ibb_errors
        );
        for (d, n) in &self.ibb_detectors {
            let _ = writeln!(out, "    blocked by {d}: {n}");
        }
        let _ = writeln!(out, "  parse errors:{}", if self.parse_errors.is_empty() { " none" } else { "" });
        for (c, n) in &self.parse_errors {
            let _ = writeln!(out, "    {c}: {n}");
        }
        out
    }
}
