//! `stanzawall`: the daemon and its command line.
//!
//! `run` serves until SIGTERM/SIGINT and reloads on SIGHUP; `inspect` reads captures passively;
//! `check` validates a config (and the files it names) and prints `FILE:LINE: key: what is
//! wrong`. Only this file uses `anyhow`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod admin;
mod admin_tls;
mod audit;
mod clamd;
mod component;
// The outbound s2s path (issue 11) is wired by the lead; until then only `resolve` uses it.
mod conn;
mod dns;
mod docs;
mod explain;
mod files;
mod inspect;
mod io;
mod metrics;
mod nft;
mod quarantine;
mod relay;
mod s2s;
mod server;
mod sessions;
mod state;
mod store;
mod tls;
mod tokens;
mod transfers;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// `stanzawall --version`: the release and the commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("STANZAWALL_COMMIT"), ")");

/// An XMPP-aware firewall: terminates TLS, parses every stanza strictly, and hands the XMPP
/// server behind it only canonical XML.
#[derive(Debug, Parser)]
#[command(name = "stanzawall", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in the foreground (SIGHUP reloads, SIGTERM/SIGINT stop).
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the nftables ruleset (`table inet stanzawall`) for a configuration: only the
    /// listener ports open, per-source meters, deny and ban sets (with the bans active now).
    Nft {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file, the certificates, lists and rules it names; exit 1 on error.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Inspect captured or live XMPP traffic passively with the same parser and policy: audit
    /// JSON lines (stdout or --audit), Suricata-style EVE alerts (--eve), a summary on stderr.
    /// Exit 1 when a capture could not be read to its end (what was read is still reported).
    Inspect {
        /// Configuration file (TOML): the policy and limits; listeners and certificates optional.
        #[arg(short, long)]
        config: PathBuf,
        /// pcap or pcapng files, read in order as one capture.
        #[arg(long = "pcap", num_args = 1.., required_unless_present = "interface", conflicts_with = "interface")]
        pcap: Vec<PathBuf>,
        /// Capture live on this interface (`any`: all of them) until SIGINT/SIGTERM, through
        /// libpcap's AF_PACKET ring; needs root or CAP_NET_RAW.
        #[arg(long)]
        interface: Option<String>,
        /// BPF filter expression (libpcap syntax, e.g. 'tcp port 5222'): attached in the kernel
        /// for --interface, applied to every packet of --pcap files.
        #[arg(long)]
        bpf: Option<String>,
        /// Put the interface in promiscuous mode (a mirror/SPAN port).
        #[arg(long, requires = "interface")]
        promisc: bool,
        /// Write audit JSON lines here instead of stdout.
        #[arg(long)]
        audit: Option<PathBuf>,
        /// Write EVE JSON alerts here.
        #[arg(long)]
        eve: Option<PathBuf>,
        /// Flows tracked at once (least recently seen evicted beyond).
        #[arg(long)]
        max_flows: Option<usize>,
    },
    /// Show which rule decides each stanza read from stdin (as a client would send it, or as
    /// the server would deliver it), the action, and the rewritten stanza for strip and mask.
    Explain {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// The chain: c2s-in (client → server) or c2s-out (server → client).
        #[arg(long, default_value = "c2s-in")]
        chain: String,
        /// The client's source address.
        #[arg(long, default_value = "127.0.0.1")]
        source_ip: std::net::IpAddr,
        /// The session's bound JID (a full JID; a bare one gets the resource `explain`).
        #[arg(long)]
        user: Option<String>,
    },
    /// Create an admin API token: print it once on stdout, store only its hash in the token
    /// file (`[admin] tokens`; created with mode 0600 if missing). A running gateway picks the
    /// new token up within a second or two.
    AdminToken {
        /// The token file.
        #[arg(long)]
        tokens: PathBuf,
        /// What the token may do: `read` (see everything) or `admin` (also act).
        #[arg(long, value_parser = ["read", "admin"])]
        role: String,
        /// A name for the token (audit records show it); default `token-N`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Resolve a remote XMPP domain as outbound s2s would (static route, SRV, A/AAAA, DNSSEC,
    /// TLSA) and print the targets as JSON; exit 1 on a bogus answer or a failed lookup.
    Resolve {
        /// The remote XMPP domain.
        domain: String,
        /// DNS server to ask (IP:PORT); default: the system's.
        #[arg(long)]
        resolver: Option<std::net::SocketAddr>,
        /// DNSKEY records to trust (default: the IANA root keys).
        #[arg(long)]
        trust_anchor: Option<PathBuf>,
        /// DNSSEC validation.
        #[arg(long, default_value = "validate", value_parser = ["validate", "off"])]
        dnssec: String,
        /// Static route DOMAIN=HOST:PORT[,direct] (repeatable).
        #[arg(long = "route")]
        routes: Vec<String>,
    },
    /// Stanzas held by `quarantine` rules: list, show, release (deliver once) or delete them
    /// through the running gateway's admin API (the `[admin] bind` of --config).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Print the man page (roff) on stdout, or write stanzawall.1 and a page per subcommand
    /// into --dir (`man -l stanzawall.1` reads one).
    Man {
        /// Directory to write every page into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How `stanzawall quarantine` reaches the gateway.
#[derive(Debug, clap::Args)]
struct AdminConnection {
    /// The gateway's configuration file (its `[admin] bind` is called).
    #[arg(short, long)]
    config: PathBuf,
    /// A file holding an admin API token (default: the STANZAWALL_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The CA certificate (PEM) of the admin listener, when it speaks HTTPS.
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum QuarantineAction {
    /// List the held entries, oldest first (a `read` token suffices).
    List {
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Show one entry (any state) with its stanza.
    Show {
        /// The entry's id.
        id: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Deliver a held entry once, where it was going (an `admin` token); fails if it was
    /// released already or no session can take it now (then it stays held).
    Release {
        /// The entry's id.
        id: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
    /// Delete an entry without delivering it (an `admin` token).
    Delete {
        /// The entry's id.
        id: String,
        #[command(flatten)]
        admin: AdminConnection,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { dir } => match docs::man_pages(Cli::command(), dir.as_deref(), &mut std::io::stdout().lock()) {
            Ok(pages) => {
                if let Some(dir) = dir {
                    eprintln!("wrote {} pages to {}", pages.len(), dir.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stanzawall man: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            docs::completions(Cli::command(), shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Command::AdminToken { tokens, role, name } => {
            let role = tokens::Role::parse(&role).unwrap_or(tokens::Role::Read);
            match tokens::add_to_file(&tokens, name.as_deref(), role) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!(
                        "token added to {} (role {}); it is shown only now, the file keeps its hash",
                        tokens.display(),
                        role.as_str()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stanzawall admin-token: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Quarantine { action } => {
            use quarantine::cli::Action;
            let (admin, action) = match action {
                QuarantineAction::List { admin } => (admin, Action::List),
                QuarantineAction::Show { id, admin } => (admin, Action::Show(id)),
                QuarantineAction::Release { id, admin } => (admin, Action::Release(id)),
                QuarantineAction::Delete { id, admin } => (admin, Action::Delete(id)),
            };
            let opts = quarantine::cli::Options { config: admin.config, token_file: admin.token_file, ca: admin.ca };
            let config = match state::load_config_with_deadline(&opts.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match quarantine::cli::run(&config, &opts, &action) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stanzawall quarantine: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Resolve { domain, resolver, trust_anchor, dnssec, routes } => {
            match dns::cli::run(&domain, resolver, trust_anchor, dnssec == "validate", &routes) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stanzawall resolve {domain}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain { config, chain, source_ip, user } => {
            let mut stdin = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin) {
                eprintln!("stdin: {e}");
                return ExitCode::FAILURE;
            }
            match explain::run(&config, &chain, source_ip, user.as_deref(), &stdin) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inspect { config, pcap, interface, bpf, promisc, audit, eve, max_flows } => {
            let opts = inspect::Options { config, pcaps: pcap, interface, bpf, promisc, audit, eve, max_flows };
            match inspect::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match state::load_with_deadline(&config) {
            Ok(g) => {
                println!(
                    "{}: ok ({} listeners, {} certificates, {} rules, {} lists)",
                    config.display(),
                    g.config.listeners.len(),
                    g.config.certificates.len(),
                    g.config.policy.rules.len(),
                    g.config.policy.lists.len()
                );
                if let Some(s2s) = &g.config.s2s {
                    let p = &g.config.policy.s2s;
                    println!(
                        "federation: domains {:?}; allow {} (empty: everyone), deny {}; require_tls {}; \
                         require_authenticated {} (+{} per-domain); dnssec {}; resolver {}; {} static routes; \
                         dialback secret {}",
                        s2s.local_domains,
                        p.allow.len(),
                        p.deny.len(),
                        s2s.require_tls,
                        p.default_require.unwrap_or(stanzawall_core::config::AuthLevel::Dialback).as_str(),
                        p.require.len(),
                        if s2s.dnssec { "validate" } else { "off" },
                        s2s.resolver.map_or_else(|| "system".to_owned(), |r| r.to_string()),
                        s2s.routes.len(),
                        s2s.dialback_secret_file.display(),
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Nft { config } => match nft_ruleset(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("STANZAWALL_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            // A panic ends only the task it happened in (tokio catches it; the release profile
            // unwinds); log it through tracing with the session's span instead of raw stderr.
            std::panic::set_hook(Box::new(|info| {
                tracing::error!(panic = %info, "task panicked; its connection is closed, other sessions continue");
            }));
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The ruleset for the config at `path`, with the bans its state directory holds now.
fn nft_ruleset(path: &std::path::Path) -> anyhow::Result<String> {
    let config = state::load_config_with_deadline(path)?;
    let now = std::time::SystemTime::now();
    let prefix = config.network.guard.ipv6_prefix;
    let bans = match files::read_to_string(&config.state_dir.join("bans")) {
        Ok(t) => stanzawall_core::ban::BanList::parse_text(&t, now, prefix).0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("{}: {e}", config.state_dir.join("bans").display()),
    };
    Ok(nft::ruleset(&config, &bans, now))
}
