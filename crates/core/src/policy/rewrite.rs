//! The rewriting actions: `strip` removes child elements, `mask` replaces matched body text.
//! Both return a new element; the original is never modified (explain shows both).

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use super::Step;
use crate::stream::NS_CLIENT;
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

/// Replaces what a rule's keywords and regexes matched in `<body/>` text.
#[derive(Debug)]
pub(super) struct Masker {
    keywords: Option<AhoCorasick>,
    regexes: Vec<Regex>,
    with: String,
}

impl Masker {
    /// `words` lowercased already.
    pub(super) fn new(words: &[String], regexes: Vec<Regex>, with: &str) -> Result<Masker, String> {
        let keywords = if words.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(words)
                    .map_err(|e| format!("keywords cannot be compiled: {e}"))?,
            )
        };
        Ok(Masker { keywords, regexes, with: with.to_owned() })
    }

    /// A copy of `el` with every match in its bodies, subjects and status replaced, one `with`
    /// per character. An XHTML-IM body is removed: its markup cannot be masked reliably, and
    /// clients fall back to the plain (masked) body.
    pub(super) fn mask(&self, el: &Element) -> Element {
        let mut out = el.clone();
        out.retain_elements(|c| !c.is(super::NS_XHTML_IM, "html"));
        for child in &mut out.children {
            if let Node::Element(body) = child {
                if *body.ns == *NS_CLIENT && matches!(body.name.as_str(), "body" | "subject" | "status") {
                    let text = body.text();
                    let masked = self.mask_text(&text);
                    body.children = vec![Node::Text(masked)];
                }
            }
        }
        out
    }

    /// Mask `text`: keyword matches are found case-insensitively (Unicode lowercase, mapped back
    /// to the original characters), regex matches as written.
    pub(super) fn mask_text(&self, text: &str) -> String {
        // Which characters (by index) to replace.
        let chars: Vec<char> = text.chars().collect();
        let mut hide = vec![false; chars.len()];
        if let Some(ac) = &self.keywords {
            // Folded as detection folds, remembering which character each byte came from; the
            // span between a match's first and last character is hidden (invisible characters
            // inside it included).
            let (folded, owner) = super::fold::fold_mapped(text);
            for m in ac.find_iter(&folded) {
                if let (Some(&first), Some(&last)) = (owner.get(m.start()), owner.get(m.end().saturating_sub(1))) {
                    hide[first..=last].iter_mut().for_each(|h| *h = true);
                }
            }
        }
        if !self.regexes.is_empty() {
            let starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
            for re in &self.regexes {
                for m in re.find_iter(text) {
                    let first = starts.partition_point(|&b| b < m.start());
                    let last = starts.partition_point(|&b| b < m.end());
                    hide[first..last].iter_mut().for_each(|h| *h = true);
                }
            }
        }
        let mut out = String::with_capacity(text.len());
        for (c, h) in chars.iter().zip(&hide) {
            if *h && !c.is_whitespace() {
                out.push_str(&self.with);
            } else {
                out.push(*c);
            }
        }
        out
    }
}
