//! Spam reports (XEP-0377 Spam Reporting) carried in XEP-0191 block commands: what a user
//! reports, read from the `<block/>` iq it sends.
//!
//! ```xml
//! <iq type='set'><block xmlns='urn:xmpp:blocking'>
//!   <item jid='spammer@example.net'>
//!     <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>
//!       <text>Buy cheap …</text></report></item></block></iq>
//! ```
//!
//! The older `urn:xmpp:reporting:0` form (`<report><spam/></report>`) is read too, and a
//! `<report/>` beside the items instead of inside one (slixmpp's plugin sends that). The block
//! itself goes on to the server unchanged (the server blocks; the gateway counts).

use crate::jid::BareJid;
use crate::xml::Element;

/// XEP-0191 Blocking Command.
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0377 Spam Reporting, version 1 (`reason` attribute).
pub const NS_REPORTING_1: &str = "urn:xmpp:reporting:1";
/// XEP-0377, version 0 (`<spam/>` / `<abuse/>` children).
pub const NS_REPORTING_0: &str = "urn:xmpp:reporting:0";

/// Longest report text kept for the audit log.
pub const MAX_TEXT_CHARS: usize = 500;
/// Most reports read from one block command.
pub const MAX_REPORTS_PER_IQ: usize = 16;

/// One reported JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Who is reported (bare).
    pub reported: BareJid,
    /// `spam`, `abuse`, or `other` (an unknown reason URI).
    pub reason: &'static str,
    /// The reporter's text, cut at [`MAX_TEXT_CHARS`].
    pub text: Option<String>,
}

/// The reports in `el`, if it is an `<iq type='set'>` block command carrying any.
pub fn reports_in(el: &Element) -> Vec<Report> {
    if el.name != "iq" || el.attr("type") != Some("set") {
        return Vec::new();
    }
    let Some(block) = el.elements().find(|c| c.name == "block" && &*c.ns == NS_BLOCKING) else {
        return Vec::new();
    };
    let is_report = |c: &&Element| c.name == "report" && (&*c.ns == NS_REPORTING_1 || &*c.ns == NS_REPORTING_0);
    // A report beside the items (as slixmpp's XEP-0377 plugin sends it) covers them all.
    let shared = block.elements().find(is_report);
    let mut out = Vec::new();
    for item in block.elements().filter(|c| c.name == "item" && &*c.ns == NS_BLOCKING) {
        let Some(jid) = item.attr("jid").and_then(crate::jid::parse) else { continue };
        let Some(report) = item.elements().find(is_report).or(shared) else { continue };
        let reason = match report.attr("reason") {
            Some("urn:xmpp:reporting:spam") => "spam",
            Some("urn:xmpp:reporting:abuse") => "abuse",
            Some(_) => "other",
            None if report.elements().any(|c| c.name == "spam") => "spam",
            None if report.elements().any(|c| c.name == "abuse") => "abuse",
            None => "other",
        };
        let text = report
            .elements()
            .find(|c| c.name == "text")
            .map(|t| t.text().chars().take(MAX_TEXT_CHARS).collect::<String>())
            .filter(|t| !t.trim().is_empty());
        out.push(Report { reported: jid.to_bare(), reason, text });
        if out.len() >= MAX_REPORTS_PER_IQ {
            break;
        }
    }
    out
}
