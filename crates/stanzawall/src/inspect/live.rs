//! Packets from libpcap: a live interface (`--interface`) and BPF filters (`--bpf`).
//!
//! On Linux libpcap opens an `AF_PACKET` socket with a `TPACKET_V3` memory-mapped ring, and
//! `pcap_setfilter` attaches the compiled classic-BPF program to it with `SO_ATTACH_FILTER`, so
//! the kernel drops unwanted packets before they are copied out. Timestamps are the kernel's
//! (the ring's per-packet time), asked for in nanoseconds. `any` captures every interface with
//! Linux cooked headers (SLL); a single interface gives its own link type (Ethernet on `lo`
//! and NICs). The kernel's drop counter (`PACKET_STATISTICS`) is read through `pcap_stats`.
//!
//! For capture files the same filter expression is compiled once per link type against a
//! "dead" handle and run in user space (`pcap_offline_filter`), so `--bpf` means the same on a
//! file as on an interface and no external tool is started.
//!
//! Every failure names the interface or the expression and what to do about it: an unknown
//! interface lists the ones that exist; a capture without the privilege says which one is
//! missing (`CAP_NET_RAW`).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use pcap::{Active, BpfProgram, BreakLoop, Capture, Linktype, Precision};

/// Bytes kept of each packet: a whole jumbo frame or a GSO super-segment on loopback.
const SNAPLEN: i32 = 262_144;
/// Kernel ring size: room for a burst while the inspector is busy with a large stanza.
const RING_BYTES: i32 = 32 << 20;
/// How long a read waits before the loop looks at the stop flag and the counters again.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a live capture or a filter could not be set up or went on.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// No interface of that name.
    #[error("--interface {name}: no such interface (interfaces here: {available})")]
    NoSuchInterface {
        /// The name asked for.
        name: String,
        /// The interfaces libpcap lists.
        available: String,
    },
    /// The process may not open a packet socket.
    #[error(
        "--interface {name}: no permission to capture ({detail}); live capture needs root or the \
         CAP_NET_RAW capability (e.g. `setcap cap_net_raw+ep $(command -v stanzawall)`)"
    )]
    Permission {
        /// The interface.
        name: String,
        /// libpcap's words.
        detail: String,
    },
    /// Any other failure to open or start the capture.
    #[error("--interface {name}: cannot capture: {detail}")]
    Open {
        /// The interface.
        name: String,
        /// libpcap's words.
        detail: String,
    },
    /// The filter expression does not compile.
    #[error("--bpf '{expr}': {detail}")]
    Filter {
        /// The expression.
        expr: String,
        /// libpcap's words (for a file: with the link type it was compiled for).
        detail: String,
    },
    /// Reading packets failed after the capture had started.
    #[error("--interface {name}: capture failed: {detail}")]
    Read {
        /// The interface.
        name: String,
        /// libpcap's words.
        detail: String,
    },
}

/// What one read gave.
#[derive(Debug)]
pub enum Next<'a> {
    /// A packet: link-layer bytes (at most the snapshot length) and the kernel's timestamp.
    Packet(&'a [u8], Duration),
    /// Nothing within the read timeout, or the loop was broken (a signal): look at the flags.
    Idle,
}

/// Kernel counters of a live capture since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    /// Packets the kernel handed to the socket (before the ring's own drops).
    pub received: u64,
    /// Packets dropped because the ring was full (the inspector fell behind).
    pub dropped: u64,
    /// Packets the interface or its driver dropped.
    pub if_dropped: u64,
}

/// A live capture on one interface (or `any`).
///
/// The handle is non-blocking and the wait for packets is an epoll on its descriptor with a
/// timeout of our own: libpcap's read timeout does not end a read on a quiet interface (its
/// poll loop goes on), and a quiet interface is exactly when the stop flag and the metrics must
/// still be looked at.
pub struct Live {
    name: String,
    cap: Capture<Active>,
    linktype: Linktype,
    /// An epoll set holding the capture's descriptor.
    poll: Poll,
    events: Events,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("name", &self.name).field("linktype", &self.linktype.0).finish()
    }
}

impl Live {
    /// Open `name` (`promisc`: also frames not addressed to this host, on a mirror port) and
    /// attach `bpf`, if given, in the kernel.
    pub fn open(name: &str, bpf: Option<&str>, promisc: bool) -> Result<Live, LiveError> {
        // libpcap's own message for an unknown name varies by version ("No such device
        // exists", "SIOCGIFHWADDR: No such device"); checking the list first says it plainly.
        if let Ok(devices) = pcap::Device::list() {
            if !devices.iter().any(|d| d.name == name) {
                let available = devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(LiveError::NoSuchInterface { name: name.to_owned(), available });
            }
        }
        let open_error = |e: pcap::Error| classify(name, e);
        let inactive = Capture::from_device(name).map_err(open_error)?;
        let mut cap = inactive
            .promisc(promisc)
            .snaplen(SNAPLEN)
            .buffer_size(RING_BYTES)
            // Each packet is handed over as it arrives, not when a TPACKET_V3 block fills: a
            // quiet XMPP session would otherwise sit in the ring until the block timeout.
            .immediate_mode(true)
            .precision(Precision::Nano)
            .open()
            .and_then(Capture::setnonblock)
            .map_err(open_error)?;
        if let Some(expr) = bpf {
            cap.filter(expr, true).map_err(|e| LiveError::Filter { expr: expr.to_owned(), detail: pcap_words(&e) })?;
        }
        let linktype = cap.get_datalink();
        let epoll_error = |e: std::io::Error| LiveError::Open { name: name.to_owned(), detail: format!("epoll: {e}") };
        let poll = Poll::new().map_err(epoll_error)?;
        // The descriptor stays owned by the capture; closing it removes it from the set.
        poll.registry().register(&mut SourceFd(&cap.as_raw_fd()), Token(0), Interest::READABLE).map_err(epoll_error)?;
        Ok(Live { name: name.to_owned(), cap, linktype, poll, events: Events::with_capacity(4) })
    }

    /// The link type of every packet of this capture, as capture files number it
    /// (`LINKTYPE_*`, what the decoder reads).
    pub fn linktype(&self) -> i32 {
        linktype_of_dlt(self.linktype.0)
    }

    /// Its name, e.g. `EN10MB` or `LINUX_SLL`.
    pub fn linktype_name(&self) -> String {
        self.linktype.get_name().unwrap_or_else(|_| self.linktype.0.to_string())
    }

    /// A handle that makes a blocked [`Live::next`] return (from the signal thread).
    pub fn breaker(&mut self) -> BreakLoop {
        self.cap.breakloop_handle()
    }

    /// The next packet, or [`Next::Idle`] when none came within the read timeout.
    pub fn next(&mut self) -> Result<Next<'_>, LiveError> {
        match self.cap.next_packet() {
            Ok(p) => {
                // Nanosecond precision was asked for, so `tv_usec` holds nanoseconds.
                let secs = u64::try_from(p.header.ts.tv_sec).unwrap_or(0);
                let nanos = u32::try_from(p.header.ts.tv_usec).unwrap_or(0).min(999_999_999);
                Ok(Next::Packet(p.data, Duration::new(secs, nanos)))
            }
            // The ring is empty (a non-blocking read); `NoMorePackets` is what `pcap_breakloop`
            // makes a read return.
            Err(pcap::Error::TimeoutExpired | pcap::Error::NoMorePackets) => {
                wait_readable(&mut self.poll, &mut self.events);
                Ok(Next::Idle)
            }
            Err(e) => Err(LiveError::Read { name: self.name.clone(), detail: pcap_words(&e) }),
        }
    }

    /// The kernel's counters (zeros if they cannot be read).
    pub fn stats(&mut self) -> KernelStats {
        match self.cap.stats() {
            Ok(s) => KernelStats {
                received: u64::from(s.received),
                dropped: u64::from(s.dropped),
                if_dropped: u64::from(s.if_dropped),
            },
            Err(_) => KernelStats::default(),
        }
    }
}

/// Wait (at most [`READ_TIMEOUT`]) until the capture's descriptor is readable: a packet came
/// into the ring. Called only after a read found the ring empty, so no packet waits unseen
/// (the edge-triggered set reports each arrival after that read); a spurious wake-up, or an
/// interrupted wait (EINTR from a signal), costs one empty non-blocking read.
fn wait_readable(poll: &mut Poll, events: &mut Events) {
    let _ = poll.poll(events, Some(READ_TIMEOUT));
}

/// An error from opening `name`, sorted by what the operator has to do.
fn classify(name: &str, e: pcap::Error) -> LiveError {
    let detail = pcap_words(&e);
    let lower = detail.to_ascii_lowercase();
    if lower.contains("permission") || lower.contains("operation not permitted") {
        LiveError::Permission { name: name.to_owned(), detail }
    } else if lower.contains("no such device") {
        LiveError::NoSuchInterface { name: name.to_owned(), available: "see `ip link`".to_owned() }
    } else {
        LiveError::Open { name: name.to_owned(), detail }
    }
}

/// Capture files number link types `LINKTYPE_*`, libpcap's handles `DLT_*`; they agree except
/// where early BSD values collided (tcpdump.org link-layer header types). Raw IP is the one a
/// capture of XMPP meets: LINKTYPE_RAW 101 is DLT_RAW 12 (on Linux; a tun device gives it).
const LINKTYPE_RAW: i32 = 101;
const DLT_RAW: i32 = 12;

fn dlt_of_linktype(linktype: i32) -> i32 {
    if linktype == LINKTYPE_RAW {
        DLT_RAW
    } else {
        linktype
    }
}

fn linktype_of_dlt(dlt: i32) -> i32 {
    if dlt == DLT_RAW {
        LINKTYPE_RAW
    } else {
        dlt
    }
}

fn pcap_words(e: &pcap::Error) -> String {
    match e {
        pcap::Error::PcapError(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `--bpf` over capture files: the expression compiled once per link type, run on each packet.
pub struct FileFilter {
    expr: String,
    programs: HashMap<i32, BpfProgram>,
}

impl std::fmt::Debug for FileFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileFilter").field("expr", &self.expr).finish()
    }
}

impl FileFilter {
    /// A filter for `expr`, checked now against Ethernet so a typo fails before any file is read.
    pub fn new(expr: &str) -> Result<FileFilter, LiveError> {
        let mut f = FileFilter { expr: expr.to_owned(), programs: HashMap::new() };
        f.program(1)?;
        Ok(f)
    }

    /// Does the packet `data` of link type `linktype` pass?
    pub fn matches(&mut self, linktype: i32, data: &[u8]) -> Result<bool, LiveError> {
        Ok(self.program(linktype)?.filter(data))
    }

    fn program(&mut self, linktype: i32) -> Result<&BpfProgram, LiveError> {
        if !self.programs.contains_key(&linktype) {
            let compiled = Capture::dead(Linktype(dlt_of_linktype(linktype)))
                .and_then(|dead| dead.compile(&self.expr, true))
                .map_err(|e| LiveError::Filter {
                    expr: self.expr.clone(),
                    detail: format!("{} (link type {linktype})", pcap_words(&e)),
                })?;
            self.programs.insert(linktype, compiled);
        }
        self.programs
            .get(&linktype)
            .ok_or_else(|| LiveError::Filter { expr: self.expr.clone(), detail: "not compiled".to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame of an IPv4 TCP segment `sport → dport` (checksums left zero: BPF does
    /// not look at them).
    fn frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 10, 192, 0, 2, 1]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn file_filter_compiles_per_link_type_and_matches_ports() {
        let mut f = FileFilter::new("tcp port 5222").unwrap();
        assert!(f.matches(1, &frame(40000, 5222)).unwrap());
        assert!(!f.matches(1, &frame(40000, 5269)).unwrap());
        // Raw IPv4 (link type 101): the same expression, another program.
        let raw = frame(40000, 5222)[14..].to_vec();
        assert!(f.matches(101, &raw).unwrap());
        assert!(!f.matches(101, &frame(40000, 5269)[14..]).unwrap());
    }

    #[test]
    fn a_bad_expression_names_itself() {
        let e = FileFilter::new("tcp prot 5222").unwrap_err().to_string();
        assert!(e.starts_with("--bpf 'tcp prot 5222': "), "{e}");
    }

    #[test]
    fn an_unknown_interface_is_named_with_the_ones_that_exist() {
        let e = Live::open("no-such-if0", None, false).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LiveError::NoSuchInterface { .. }), "{text}");
        assert!(text.contains("--interface no-such-if0: no such interface"), "{text}");
        assert!(text.contains("lo"), "{text}");
    }
}
