//! What evaluation returns: the [`Outcome`] for a stanza, the rules that matched ([`Hit`]), and
//! their plain kinds for audit records and metric labels ([`Disposition`], [`RuleAction`]).

use std::sync::Arc;

use crate::stanza::StanzaCondition;
use crate::stream::Condition as StreamCondition;
use crate::xml::Element;

/// What happens to a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it as it is.
    Pass,
    /// Discard it (audited).
    Drop,
    /// Answer its sender with this stanza error (dropped instead where no error may be sent).
    Bounce {
        /// Condition.
        condition: StanzaCondition,
        /// Text.
        text: Option<String>,
    },
    /// Close the client's stream with this stream error.
    Close {
        /// Condition.
        condition: StreamCondition,
        /// Text.
        text: Option<String>,
    },
    /// Forward this rewritten stanza instead (strip, mask).
    Rewrite(Element),
    /// Hold it, undelivered, in the quarantine (the daemon stores it; an operator releases or
    /// deletes it). The sender is not told: a silent hold, like a drop that can be undone.
    Quarantine,
}

impl Outcome {
    /// What kind of outcome this is, for the audit log and metric labels.
    pub fn disposition(&self) -> Disposition {
        match self {
            Outcome::Pass => Disposition::Pass,
            Outcome::Drop => Disposition::Drop,
            Outcome::Bounce { .. } => Disposition::Bounce,
            Outcome::Close { .. } => Disposition::Close,
            Outcome::Rewrite(_) => Disposition::Rewrite,
            Outcome::Quarantine => Disposition::Quarantine,
        }
    }
}

/// What was done to a stanza: an [`Outcome`] without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Forwarded as it was.
    Pass,
    /// Discarded.
    Drop,
    /// Answered with a stanza error.
    Bounce,
    /// The stream was closed.
    Close,
    /// Forwarded rewritten.
    Rewrite,
    /// Held in the quarantine.
    Quarantine,
}

impl Disposition {
    /// The name in audit records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Pass => "pass",
            Disposition::Drop => "drop",
            Disposition::Bounce => "bounce",
            Disposition::Close => "close",
            Disposition::Rewrite => "rewrite",
            Disposition::Quarantine => "quarantine",
        }
    }
}

/// A rule's action as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// `pass`
    Pass,
    /// `drop`
    Drop,
    /// `bounce`
    Bounce,
    /// `close`
    Close,
    /// `strip`
    Strip,
    /// `mask`
    Mask,
    /// `log`: audited, evaluation continues.
    Log,
    /// `quarantine`: held, not delivered, until released or deleted.
    Quarantine,
}

impl RuleAction {
    /// The name in the configuration, audit records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Pass => "pass",
            RuleAction::Drop => "drop",
            RuleAction::Bounce => "bounce",
            RuleAction::Close => "close",
            RuleAction::Strip => "strip",
            RuleAction::Mask => "mask",
            RuleAction::Log => "log",
            RuleAction::Quarantine => "quarantine",
        }
    }
}

impl std::fmt::Display for RuleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule that matched: the terminal one, or a `log`/`log_only` rule passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The rule's name.
    pub rule: Arc<str>,
    /// Its action as configured.
    pub action: RuleAction,
    /// Shadow mode: recorded, not enforced.
    pub log_only: bool,
    /// The error condition of a bounce or close.
    pub condition: Option<&'static str>,
    /// What an anti-spam condition found (the wave matched), for the audit log and `explain`.
    pub note: Option<String>,
}

/// The result of evaluating one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub outcome: Outcome,
    /// The terminal rule that decided it; `None`: the chain's default.
    pub rule: Option<Arc<str>>,
    /// Every rule that matched, in order (log and log_only rules, then the terminal one).
    pub hits: Vec<Hit>,
}
