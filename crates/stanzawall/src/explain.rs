//! `stanzawall explain`: the policy's decision for stanzas given on stdin, without a server.
//!
//! Uses the same config loader, compiler and evaluator as the daemon, so what it prints is what
//! the gateway would do — except for `rate` conditions, which start from full buckets here, and
//! the anti-spam state, which starts empty and learns from the stanzas given (a roster result
//! on `c2s-out` before a message makes `stranger` decidable; copies of one text make a wave).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use stanzawall_core::jid;
use stanzawall_core::policy::{Chain, Context, Evaluation, Outcome, Policy, RateTable, RuleAction, Verdict};
use stanzawall_core::session::{decide, Check, Decision};
use stanzawall_core::stream::NS_CLIENT;
use stanzawall_core::xml::parse_stanzas;

use crate::state::load_config;

/// The report for every stanza in `input`.
pub fn run(path: &Path, chain: &str, source_ip: IpAddr, user: Option<&str>, input: &str) -> anyhow::Result<String> {
    let config = load_config(path)?;
    let policy = Policy::compile(&config.policy)?;
    explain_with(&config, &policy, chain, source_ip, user, input)
}

/// The report for every stanza in `input` under a loaded config and its compiled policy (the
/// admin API's `POST /api/v1/explain` uses the running generation's).
pub fn explain_with(
    config: &stanzawall_core::config::Config,
    policy: &Policy,
    chain: &str,
    source_ip: IpAddr,
    user: Option<&str>,
    input: &str,
) -> anyhow::Result<String> {
    if chain == "file" {
        return Ok(file_chain(config, policy));
    }
    let Some(chain) = Chain::from_name(chain) else {
        anyhow::bail!("--chain: unknown chain '{chain}' (expected c2s-in, c2s-out or file)");
    };
    let user = match user {
        None => None,
        Some(u) => Some(full_jid(u).ok_or_else(|| anyhow::anyhow!("--user: '{u}' is not a valid JID"))?),
    };
    let stanzas = parse_stanzas(input, config.limits.xml()).map_err(|e| anyhow::anyhow!("stdin: {e}"))?;
    if stanzas.is_empty() {
        anyhow::bail!(
            "stdin: no stanza (write it as a client would send it, e.g. <message to='…'><body>…</body></message>)"
        );
    }
    let rates = RateTable::new();
    let now = std::time::Instant::now();
    let mut out = String::new();
    let origin = |name: &str| {
        config
            .policy
            .rules
            .iter()
            .find(|r| r.name == name)
            .map_or(String::new(), |r| format!(" ({}:{})", r.origin.file.display(), r.origin.line))
    };
    for (i, mut el) in stanzas.into_iter().enumerate() {
        // The session's JID is --user; without it, a stanza's own `from` stands for it on
        // c2s-in (the session stamps the bound JID, and refuses any other).
        let own_from = match (chain, &user, el.attr("from")) {
            (Chain::C2sIn, None, Some(f)) => full_jid(f),
            _ => None,
        };
        let user = user.clone().or(own_from);
        let ctx = Context { chain, user: user.as_ref(), source_ip };
        // The session's own pipeline: the gateway's checks (stamping, `to` preparation, iq
        // structure, forged carbons and roster pushes), then the policy.
        let decision = decide(&mut el, &ctx, policy, &rates, now);
        let _ = writeln!(out, "stanza {}: {}", i + 1, String::from_utf8_lossy(&el.to_bytes(NS_CLIENT)));
        let _ = writeln!(out, "  chain: {}", chain.as_str());
        match decision {
            Decision::Gateway(check) => explain_check(&mut out, check),
            Decision::Policy(eval) => explain_evaluation(&mut out, &eval, &origin),
        }
    }
    Ok(out)
}

/// What the gateway refused on its own, before policy.
fn explain_check(out: &mut String, check: Check) {
    let _ = match check {
        Check::Pass => writeln!(out, "  gateway: pass"),
        Check::Close(condition, why) => {
            writeln!(out, "  gateway: close\n  stream error: {}: {why}", condition.as_str())
        }
        Check::Bounce(condition, why) => {
            writeln!(out, "  gateway: bounce\n  error: {} ({}): {why}", condition.as_str(), condition.error_type())
        }
        Check::Drop(why) => writeln!(out, "  gateway: drop: {why}"),
    };
}

/// The policy's decision: the stanza's verdict, those of the stanzas it wraps, the outcome.
fn explain_evaluation(out: &mut String, eval: &Evaluation, origin: &dyn Fn(&str) -> String) {
    explain_verdict(out, &eval.outer, "  ", origin);
    for w in &eval.wrapped {
        let stanza = String::from_utf8_lossy(&w.stanza.to_bytes(NS_CLIENT)).into_owned();
        let _ = writeln!(out, "  wrapped ({}): {stanza}", w.wrapper.as_str());
        explain_verdict(out, &w.verdict, "    ", origin);
    }
    if eval.too_many_wrapped {
        let _ = writeln!(
            out,
            "  wraps more than {} stanzas: dropped unread",
            stanzawall_core::policy::wrapped::MAX_WRAPPED
        );
    }
    if !eval.wrapped.is_empty() || eval.too_many_wrapped {
        let _ = writeln!(out, "  outcome: {}", eval.outcome.disposition().as_str());
    }
    match &eval.outcome {
        Outcome::Bounce { condition, text } => {
            let _ = writeln!(
                out,
                "  error: {} ({}){}",
                condition.as_str(),
                condition.error_type(),
                text.as_ref().map_or(String::new(), |t| format!(": {t}"))
            );
        }
        Outcome::Close { condition, text } => {
            let _ = writeln!(
                out,
                "  stream error: {}{}",
                condition.as_str(),
                text.as_ref().map_or(String::new(), |t| format!(": {t}"))
            );
        }
        Outcome::Rewrite(new) => {
            let _ = writeln!(out, "  rewritten: {}", String::from_utf8_lossy(&new.to_bytes(NS_CLIENT)));
        }
        Outcome::Quarantine => {
            let _ = writeln!(out, "  held in the quarantine (not delivered; the sender is not told)");
        }
        Outcome::Pass | Outcome::Drop => {}
    }
}

/// `--chain file`: the chain's rules in the order they are walked, then the `[file_transfer]`
/// checks that follow them as its implicit last rules (transfers are judged as their facts
/// arrive, so there is no stanza to evaluate here).
fn file_chain(config: &stanzawall_core::config::Config, policy: &Policy) -> String {
    let mut out = String::from("chain: file\n");
    for (name, action, shadow) in policy.file_rules().describe() {
        let origin = config
            .policy
            .file_rules
            .iter()
            .find(|r| *r.name == *name)
            .map_or(String::new(), |r| format!(" ({}:{})", r.origin.file.display(), r.origin.line));
        let shadow = if shadow { " log_only" } else { "" };
        let _ = writeln!(out, "  rule: {name} -> {action}{shadow}{origin}");
    }
    match &config.file_transfer {
        None => out.push_str("  no [file_transfer]: no transfer is relayed\n"),
        Some(ft) => {
            let _ = writeln!(out, "  [file_transfer] max_bytes = {} -> block (size)", ft.max_bytes);
            if !ft.deny_types.is_empty() || !ft.allow_types.is_empty() {
                out.push_str("  [file_transfer] deny_types / allow_types -> block (type)\n");
            }
            if !ft.hash_deny.is_empty() {
                out.push_str("  [file_transfer] hash_deny -> block (hash)\n");
            }
            if !ft.dlp_keywords.is_empty() || !ft.dlp_patterns.is_empty() || ft.dlp_card_numbers {
                out.push_str("  [file_transfer] dlp_* -> block (dlp)\n");
            }
            if ft.clamd.is_some() {
                out.push_str("  [file_transfer] clamd -> block (antivirus)\n");
                if ft.on_scanner_error == stanzawall_core::transfer::OnScannerError::Block {
                    out.push_str("  [file_transfer] on_scanner_error = \"block\" -> block (scanner-error)\n");
                }
            }
            out.push_str("  default: pass\n");
        }
    }
    out
}

/// The rules of one verdict: log and log_only matches, then the deciding rule or the default.
fn explain_verdict(out: &mut String, verdict: &Verdict, indent: &str, origin: &dyn Fn(&str) -> String) {
    for h in verdict.hits.iter().filter(|h| h.log_only || h.action == RuleAction::Log) {
        let what = if h.log_only { format!("log_only: would {}", h.action) } else { "log".to_owned() };
        let _ = writeln!(out, "{indent}matched: {}{} ({what}; evaluation continued)", h.rule, origin(&h.rule));
    }
    for h in verdict.hits.iter().filter(|h| h.note.is_some()) {
        let _ = writeln!(out, "{indent}anti-spam ({}): {}", h.rule, h.note.as_deref().unwrap_or_default());
    }
    match &verdict.rule {
        Some(r) => {
            let action = verdict.hits.last().map_or("", |h| h.action.as_str());
            let _ = writeln!(out, "{indent}rule: {r}{}", origin(r));
            let _ = writeln!(out, "{indent}action: {action}");
        }
        None => {
            let _ = writeln!(out, "{indent}rule: none matched; the chain's default applies");
            let _ = writeln!(out, "{indent}action: {}", verdict.outcome.disposition().as_str());
        }
    }
}

/// A full JID for `text`; a bare one gets the resource `explain`.
fn full_jid(text: &str) -> Option<jid::FullJid> {
    match jid::parse(text)?.try_into_full() {
        Ok(full) => Some(full),
        Err(bare) => jid::parse_full(&format!("{bare}/explain")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_file_chain_with_its_implicit_rules() {
        let dir = std::env::temp_dir().join(format!("sw-explain-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
             [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n\
             [[listener]]\nname = \"relay\"\nkind = \"socks5\"\nbind = \"127.0.0.1:7777\"\n\
             [file_transfer]\nproxy_jid = \"proxy.example.test\"\nclamd = \"127.0.0.1:3310\"\n\
             [[rule]]\nname = \"no-exe\"\nchain = \"file\"\nwhen = { name = \"*.exe\" }\naction = \"block\"\n",
        )
        .unwrap();
        let out = run(&path, "file", "127.0.0.1".parse().unwrap(), None, "").unwrap();
        assert!(out.contains("rule: no-exe -> block (") && out.contains("c.toml:17)"), "{out}");
        assert!(out.contains("clamd -> block (antivirus)") && out.ends_with("default: pass\n"), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explains_rules_defaults_and_rewrites() {
        let dir = std::env::temp_dir().join(format!("sw-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
             [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n\
             [[rule]]\nname = \"watch\"\nwhen = { body_contains = \"secret\" }\naction = \"drop\"\nlog_only = true\n\
             [[rule]]\nname = \"mask\"\nwhen = { body_contains = \"secret\" }\naction = \"mask\"\n",
        )
        .unwrap();
        let out = run(
            &path,
            "c2s-in",
            "127.0.0.1".parse().unwrap(),
            Some("alice@example.test"),
            "<message to='b@example.test'><body>a secret</body></message><presence/>",
        )
        .unwrap();
        assert!(out.contains("from='alice@example.test/explain'"), "{out}");
        assert!(out.contains("matched: watch (") && out.contains("log_only: would drop"), "{out}");
        assert!(out.contains("rule: mask (") && out.contains("c.toml:15)"), "{out}");
        assert!(out.contains("rewritten: <message to='b@example.test' from='alice@example.test/explain'><body>a ******</body></message>"), "{out}");
        assert!(out.contains("stanza 2: <presence") && out.contains("rule: none matched"), "{out}");
        let e = run(&path, "s2s-sideways", "127.0.0.1".parse().unwrap(), None, "<presence/>").unwrap_err();
        assert!(e.to_string().contains("unknown chain"), "{e}");
        // s2s chains: the gateway's own check (both addresses, RFC 6120 §8.1.2.2), then the rules.
        let out = run(&path, "s2s-in", "127.0.0.1".parse().unwrap(), None, "<presence/>").unwrap();
        assert!(out.contains("chain: s2s-in") && out.contains("improper-addressing"), "{out}");
        let out = run(
            &path,
            "s2s-in",
            "127.0.0.1".parse().unwrap(),
            None,
            "<message from='eve@remote.example/x' to='b@example.test'><body>a secret</body></message>",
        )
        .unwrap();
        assert!(out.contains("chain: s2s-in") && !out.contains("gateway: close"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn explains_a_quarantine() {
        let dir = std::env::temp_dir().join(format!("sw-explain-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[tls.certificate]]\ndomains = [\"example.test\"]\ncert = \"c\"\nkey = \"k\"\n\
             [[listener]]\nname = \"c2s\"\nkind = \"c2s\"\nbind = \"127.0.0.1:5222\"\nbackend = \"127.0.0.1:1\"\n\
             [[rule]]\nname = \"hold-links\"\nwhen = { body_regex = \"https?://\" }\naction = \"quarantine\"\n",
        )
        .unwrap();
        let out = run(
            &path,
            "c2s-out",
            "127.0.0.1".parse().unwrap(),
            Some("bob@example.test"),
            "<message from='eve@remote.test/x' to='bob@example.test'><body>http://x.test</body></message>",
        )
        .unwrap();
        assert!(out.contains("rule: hold-links (") && out.contains("action: quarantine"), "{out}");
        assert!(out.contains("held in the quarantine (not delivered; the sender is not told)"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
