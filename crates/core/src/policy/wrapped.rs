//! Stanzas delivered inside other stanzas, policed as what they are.
//!
//! XEP-0297 `<forwarded/>` carries a whole stanza inside another: message carbons (XEP-0280,
//! whose outer `from` is the user's own account), archive results (XEP-0313), and forwards a
//! client sends itself. A rule that drops a sender's messages must also stop that sender's
//! message arriving as a carbon or an archive result, so every stanza wrapped in a
//! `<forwarded/>` — at any depth, nested forwards included — is evaluated in the same chain as
//! if it had arrived on its own, with its own `from` as the sender, and the strongest outcome
//! decides for the whole stanza: close, then drop or quarantine (a bounce on `c2s-in`, where the
//! sender is the client; the first of them stands), then rewrite (the wrapped stanza is replaced in place), then pass.
//!
//! Never fails open: a stanza wrapping more than [`MAX_WRAPPED`] stanzas is dropped unread.

use std::time::Instant;

use super::{Chain, Context, Outcome, Policy, RateStore, Verdict};
use crate::stanza::{Kind, NS_CARBONS};
use crate::xml::{Element, Node};

/// Stanza Forwarding (XEP-0297).
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// Most wrapped stanzas read in one stanza (carbons and archive results wrap one; forwards a few).
pub const MAX_WRAPPED: usize = 16;

/// What carried a wrapped stanza, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    /// A message carbon (XEP-0280) `<received/>` or `<sent/>`.
    Carbon,
    /// An archive result (XEP-0313 `<result/>`).
    ArchiveResult,
    /// Any other `<forwarded/>` (XEP-0297).
    Forwarded,
}

impl Wrapper {
    /// The name used in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Wrapper::Carbon => "carbon",
            Wrapper::ArchiveResult => "archive-result",
            Wrapper::Forwarded => "forwarded",
        }
    }
}

/// The verdict on one wrapped stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedVerdict {
    /// What carried it.
    pub wrapper: Wrapper,
    /// The wrapped stanza as it was received (for the audit log).
    pub stanza: Element,
    /// Its verdict.
    pub verdict: Verdict,
}

/// A stanza's verdict together with the verdicts on what it wraps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// What to do with the whole stanza.
    pub outcome: Outcome,
    /// The verdict on the stanza itself.
    pub outer: Verdict,
    /// The verdicts on the stanzas it wraps that matched a rule or did not pass, in document
    /// order (evaluated only while the outer verdict passes or rewrites).
    pub wrapped: Vec<WrappedVerdict>,
    /// More than [`MAX_WRAPPED`] stanzas were wrapped: dropped unread.
    pub too_many_wrapped: bool,
}

/// A wrapped stanza: the child-index path from the outer stanza to it, and what carried it.
struct Found {
    path: Vec<usize>,
    wrapper: Wrapper,
}

impl Policy {
    /// Decide what happens to stanza `el` and every stanza wrapped in it (see the module docs).
    pub fn evaluate_stanza(&self, el: &Element, ctx: &Context<'_>, rates: &dyn RateStore, now: Instant) -> Evaluation {
        let outer = self.evaluate(el, ctx, rates, now);
        // What the wrapped stanzas are looked for in: the outer rewrite when there is one (a
        // `strip` may have removed a wrapper already).
        let mut rewritten = match &outer.outcome {
            Outcome::Pass => None,
            Outcome::Rewrite(e) => Some(e.clone()),
            decided => {
                let outcome = decided.clone();
                return Evaluation { outcome, outer, wrapped: Vec::new(), too_many_wrapped: false };
            }
        };
        let base = rewritten.clone();
        let base = base.as_ref().unwrap_or(el);
        let mut found = Vec::new();
        find_wrapped(base, None, &mut Vec::new(), &mut found, 0);
        if found.len() > MAX_WRAPPED {
            return Evaluation { outcome: Outcome::Drop, outer, wrapped: Vec::new(), too_many_wrapped: true };
        }
        let mut decided: Option<Outcome> = None;
        let mut rewritten_paths: Vec<&[usize]> = Vec::new();
        let mut wrapped = Vec::new();
        for f in &found {
            let Some(inner) = at_path(base, &f.path) else { continue };
            let verdict = self.evaluate_as(inner, ctx, rates, now, true);
            let this = match (&verdict.outcome, ctx.chain) {
                (Outcome::Pass, _) => None,
                // A held wrapped stanza holds the whole: releasing it delivers the wrapper as
                // the receiver would have had it (a carbon stays a carbon).
                (Outcome::Close { .. } | Outcome::Drop | Outcome::Quarantine, _)
                | (Outcome::Bounce { .. }, Chain::C2sIn | Chain::S2sIn | Chain::S2sOut) => {
                    Some(verdict.outcome.clone())
                }
                // The wrapper comes from the user's own account or archive: nobody to bounce to.
                (Outcome::Bounce { .. }, Chain::C2sOut) => Some(Outcome::Drop),
                // Inside a stanza rewritten already (nested forwards), the replacement has no
                // reliable place: drop rather than forward it unchanged.
                (Outcome::Rewrite(_), _) if rewritten_paths.iter().any(|p| f.path.starts_with(p)) => {
                    Some(Outcome::Drop)
                }
                (Outcome::Rewrite(new), _) => {
                    let whole = rewritten.get_or_insert_with(|| el.clone());
                    if let Some(slot) = at_path_mut(whole, &f.path) {
                        *slot = new.clone();
                    }
                    rewritten_paths.push(&f.path);
                    None
                }
            };
            if !verdict.hits.is_empty() || verdict.outcome != Outcome::Pass {
                wrapped.push(WrappedVerdict { wrapper: f.wrapper, stanza: inner.clone(), verdict });
            }
            // Close outranks drop and bounce; otherwise the first of those stands.
            match this {
                Some(c @ Outcome::Close { .. }) => {
                    decided = Some(c);
                    break;
                }
                Some(d) if decided.is_none() => decided = Some(d),
                _ => {}
            }
        }
        let outcome = decided.or(rewritten.map(Outcome::Rewrite)).unwrap_or(Outcome::Pass);
        Evaluation { outcome, outer, wrapped, too_many_wrapped: false }
    }
}

/// Collect the stanzas wrapped below `el` (child-index paths), up to one past [`MAX_WRAPPED`].
fn find_wrapped(el: &Element, parent: Option<&Element>, path: &mut Vec<usize>, found: &mut Vec<Found>, depth: usize) {
    // The reader bounds depth already; this cap keeps the recursion's own bound visible.
    if depth > 64 || found.len() > MAX_WRAPPED {
        return;
    }
    let forwarded = el.is(NS_FORWARD, "forwarded");
    for (i, child) in el.children.iter().enumerate() {
        let Node::Element(c) = child else { continue };
        path.push(i);
        if forwarded && Kind::of(c).is_some() {
            let wrapper = match parent {
                Some(p) if &*p.ns == NS_CARBONS => Wrapper::Carbon,
                Some(p) if p.name == "result" && p.ns.starts_with("urn:xmpp:mam:") => Wrapper::ArchiveResult,
                _ => Wrapper::Forwarded,
            };
            found.push(Found { path: path.clone(), wrapper });
        }
        find_wrapped(c, Some(el), path, found, depth + 1);
        path.pop();
    }
}

fn at_path<'a>(el: &'a Element, path: &[usize]) -> Option<&'a Element> {
    path.iter().try_fold(el, |e, &i| match e.children.get(i) {
        Some(Node::Element(c)) => Some(c),
        _ => None,
    })
}

fn at_path_mut<'a>(el: &'a mut Element, path: &[usize]) -> Option<&'a mut Element> {
    path.iter().try_fold(el, |e, &i| match e.children.get_mut(i) {
        Some(Node::Element(c)) => Some(c),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid;

    const POLICY: &str = r#"
[[rule]]
name = "blocked-sender"
chain = "c2s-out"
when = { from = "mallory@example.test" }
action = "drop"

[[rule]]
name = "bounce-dave"
chain = "c2s-out"
when = { from = "dave@example.test" }
action = "bounce"

[[rule]]
name = "close-eve"
chain = "c2s-out"
when = { from = "eve@example.test" }
action = "close"

[[rule]]
name = "bad-word"
when = { body_contains = "badword" }
action = "bounce"

[[rule]]
name = "mask-heck"
when = { body_contains = "heck" }
action = "mask"

[[rule]]
name = "exploit"
when = { body_contains = "exploit-trigger" }
action = "close"
"#;

    fn eval(chain: Chain, xml: &str) -> Evaluation {
        let policy = super::super::tests::policy(POLICY);
        let user = jid::parse_full("alice@example.test/phone").unwrap();
        let ctx = Context { chain, user: Some(&user), source_ip: "192.0.2.1".parse().unwrap() };
        policy.evaluate_stanza(
            &super::super::tests::stanza(xml),
            &ctx,
            &crate::policy::RateTable::new(),
            Instant::now(),
        )
    }

    fn carbon(inner: &str) -> String {
        format!(
            "<message from='alice@example.test' to='alice@example.test/phone'><received xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></received></message>"
        )
    }

    fn archived(inner: &str) -> String {
        format!(
            "<message to='alice@example.test/phone'><result xmlns='urn:xmpp:mam:2' queryid='q' id='1'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>\
             {inner}</forwarded></result></message>"
        )
    }

    const FROM_MALLORY: &str =
        "<message xmlns='jabber:client' from='mallory@example.test/x' to='alice@example.test'><body>hi</body></message>";

    #[test]
    fn a_blocked_senders_message_is_dropped_as_carbon_and_archive_result() {
        // On its own: dropped.
        assert_eq!(eval(Chain::C2sOut, FROM_MALLORY).outcome, Outcome::Drop);
        for (xml, wrapper) in
            [(carbon(FROM_MALLORY), Wrapper::Carbon), (archived(FROM_MALLORY), Wrapper::ArchiveResult)]
        {
            let e = eval(Chain::C2sOut, &xml);
            assert_eq!(e.outcome, Outcome::Drop, "{xml}");
            assert_eq!(e.outer.rule, None, "the wrapper itself is from the user's own account");
            assert_eq!(e.wrapped.len(), 1);
            assert_eq!(e.wrapped[0].wrapper, wrapper);
            assert_eq!(e.wrapped[0].verdict.rule.as_deref(), Some("blocked-sender"));
            assert_eq!(e.wrapped[0].stanza.attr("from"), Some("mallory@example.test/x"));
        }
        // Someone else's message in a carbon passes.
        let bob = FROM_MALLORY.replace("mallory", "bob");
        let e = eval(Chain::C2sOut, &carbon(&bob));
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.wrapped.is_empty());
    }

    #[test]
    fn content_rules_apply_inside_forwards_in_both_chains() {
        let inner = "<message xmlns='jabber:client' from='bob@example.test/y'><body>a badword</body></message>";
        let forward = format!(
            "<message to='carol@example.test'><body>look</body><forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></message>"
        );
        // Sent by the client: bounced to it, as the message itself would be.
        assert!(matches!(eval(Chain::C2sIn, &forward).outcome, Outcome::Bounce { .. }));
        // Delivered to the client in a carbon: nobody to bounce to, dropped. (The outer carbon
        // reads its wrapped text too, so a content rule decides there already: take a rule on
        // the wrapped sender.)
        let from_dave = "<message xmlns='jabber:client' from='dave@example.test/d'><body>hello</body></message>";
        let e = eval(Chain::C2sOut, &carbon(from_dave));
        assert_eq!((e.outer.rule, e.outcome), (None, Outcome::Drop));
        // Close outranks the rest, also when it comes second.
        let two = format!(
            "<message from='bob@example.test/b'><forwarded xmlns='urn:xmpp:forward:0'>{from_dave}</forwarded>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='eve@example.test/e'>\
             <body>hi</body></message></forwarded></message>"
        );
        let e = eval(Chain::C2sOut, &two);
        assert!(matches!(e.outcome, Outcome::Close { .. }), "{:?}", e.outcome);
        assert_eq!(e.wrapped.len(), 2);
    }

    #[test]
    fn a_wrapped_rewrite_is_applied_in_place() {
        let inner = "<message xmlns='jabber:client' from='bob@example.test/y'><body>oh heck</body></message>";
        let e = eval(Chain::C2sOut, &carbon(inner));
        let Outcome::Rewrite(new) = e.outcome else { panic!("{:?}", e.outcome) };
        let out = String::from_utf8(new.to_bytes(crate::stream::NS_CLIENT)).unwrap();
        assert!(out.contains("<body>oh ****</body>") && out.contains("<received xmlns='urn:xmpp:carbons:2'>"), "{out}");
        // Nested: a forward inside an archive result is evaluated too.
        let nested = archived(&format!(
            "<message xmlns='jabber:client' from='bob@example.test/y'><forwarded xmlns='urn:xmpp:forward:0'>{FROM_MALLORY}</forwarded></message>"
        ));
        assert_eq!(eval(Chain::C2sOut, &nested).outcome, Outcome::Drop);
    }

    #[test]
    fn too_many_wrapped_stanzas_fail_closed() {
        let many = format!(
            "<message to='carol@example.test'>{}</message>",
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded>"
                .repeat(MAX_WRAPPED + 1)
        );
        let e = eval(Chain::C2sIn, &many);
        assert!(e.too_many_wrapped);
        assert_eq!(e.outcome, Outcome::Drop);
    }
}
