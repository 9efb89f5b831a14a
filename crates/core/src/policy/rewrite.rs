//! The rewriting actions: `strip` removes child elements, `mask` replaces matched text.
//! Both return a new element; the original is never modified (explain shows both).

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use std::ops::Range;

use super::fold::Folded;
use super::text::{self, Slot};
use super::Step;
use crate::xml::{Element, Node};

/// A copy of `el` without the children in `payload` namespaces and without the elements at the
/// end of each of `paths`.
pub(super) fn strip(el: &Element, payload: &[String], paths: &[Vec<Step>]) -> Element {
    let mut out = el.clone();
    out.retain_elements(|c| !payload.iter().any(|ns| **ns == *c.ns));
    for path in paths {
        remove_path(&mut out, path);
    }
    out
}

fn remove_path(el: &mut Element, path: &[Step]) {
    let Some((step, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        el.retain_elements(|c| !step.matches(c));
        return;
    }
    for child in &mut el.children {
        if let Node::Element(c) = child {
            if step.matches(c) {
                remove_path(c, rest);
            }
        }
    }
}

/// Replaces what a rule's keywords and regexes matched in the stanza's text (see
/// [`super::text`]): every text node and attribute value a match touched, both parts of a match
/// that spans two of them.
#[derive(Debug)]
pub(super) struct Masker {
    keywords: Option<AhoCorasick>,
    regexes: Vec<Regex>,
    /// The regexes read the text as written (`regex_raw = true`), not its folded form.
    raw: bool,
    with: String,
}

impl Masker {
    /// `words` folded already; `regexes` compiled as detection compiles them.
    pub(super) fn new(words: &[String], regexes: Vec<Regex>, raw: bool, with: &str) -> Result<Masker, String> {
        let keywords = if words.is_empty() {
            None
        } else {
            // Standard semantics and overlapping search, as detection: every occurrence of every
            // keyword is masked whole (leftmost-longest would leave `bcd` of `abcd` half shown
            // when `abc` is a keyword too).
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(words)
                    .map_err(|e| format!("keywords cannot be compiled: {e}"))?,
            )
        };
        Ok(Masker { keywords, regexes, raw, with: with.to_owned() })
    }

    /// A copy of `el` with every match replaced, one `with` per character (whitespace kept).
    /// An XHTML-IM body is removed: its markup and styles can hide or reorder text, so it
    /// cannot be masked reliably, and clients fall back to the plain (masked) body.
    pub(super) fn mask(&self, el: &Element) -> Element {
        let mut out = el.clone();
        remove_xhtml_im(&mut out);
        let (text, pieces) = text::pieces(&out);
        let hide = self.hidden(&text);
        for piece in pieces {
            let Some(span) = text.get(piece.range.clone()) else { continue };
            if !hide[piece.range.clone()].contains(&true) {
                continue;
            }
            let mut masked = String::with_capacity(span.len());
            for (b, c) in span.char_indices() {
                if hide[piece.range.start + b] && !c.is_whitespace() {
                    masked.push_str(&self.with);
                } else {
                    masked.push(c);
                }
            }
            let Some(at) = text::element_at_mut(&mut out, &piece.path) else { continue };
            match piece.slot {
                Slot::Text(i) => {
                    if let Some(node @ Node::Text(_)) = at.children.get_mut(i) {
                        *node = Node::Text(masked);
                    }
                }
                Slot::Attr(i) => {
                    if let Some(a) = at.attrs.get_mut(i) {
                        a.value = masked;
                    }
                }
            }
        }
        out
    }

    /// Which bytes of `text` to hide: per byte, true if a match covers its character. Matches
    /// on the folded text cover the whole original characters they came from (ignorable
    /// characters inside a match included).
    fn hidden(&self, text: &str) -> Vec<bool> {
        let mut hide = vec![false; text.len()];
        let mut mark = |r: Range<usize>| hide[r].iter_mut().for_each(|h| *h = true);
        let needs_fold = self.keywords.is_some() || (!self.raw && !self.regexes.is_empty());
        let folded = needs_fold.then(|| Folded::new(text));
        if let (Some(ac), Some(f)) = (&self.keywords, &folded) {
            for m in ac.find_overlapping_iter(&f.text) {
                if let Some(r) = f.original(m.range()) {
                    mark(r);
                }
            }
        }
        for re in &self.regexes {
            match (&folded, self.raw) {
                (Some(f), false) => {
                    for m in re.find_iter(&f.text) {
                        if let Some(r) = f.original(m.range()) {
                            mark(r);
                        }
                    }
                }
                _ => {
                    for m in re.find_iter(text) {
                        mark(m.range());
                    }
                }
            }
        }
        hide
    }
}

/// Remove XHTML-IM copies at any depth (a message forwarded inside a carbon or an archive
/// result has its own).
fn remove_xhtml_im(el: &mut Element) {
    el.retain_elements(|c| !c.is(super::NS_XHTML_IM, "html"));
    for child in &mut el.children {
        if let Node::Element(c) = child {
            remove_xhtml_im(c);
        }
    }
}
