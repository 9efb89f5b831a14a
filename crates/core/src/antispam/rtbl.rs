//! Real-time block lists (RTBL) fed by an XEP-0060 pubsub node: the entries of one
//! `[list.NAME] rtbl = { service, node }`, changed by the node's items and notifications, and
//! the file they are kept in between restarts.
//!
//! An RTBL node (the xmppbl.org format) names its entries by item id: a domain for nodes like
//! `spam_source_domains`, the hex SHA-256 of a bare JID for nodes whose name ends in `_sha256`
//! (matched by `from_sha256_in`, which hashes the sender). Item payloads are not read. An id
//! that is not such an entry is skipped, never written: the list file must stay one every
//! condition taking a list can compile (a list that does not compile would stop every reload).
//!
//! The file is the list's `file` in the config sense: one entry a line, written whole (the
//! daemon renames a temporary file over it, so a reader never sees half a list), read back at
//! start and on every reload, so a restart opens no gap.
//!
//! Bounded: at most [`MAX_RTBL_ENTRIES`] entries per list; items past it are skipped and
//! counted. Pure: no I/O.

use std::collections::BTreeSet;

/// A change to a followed node's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// The node's items as fetched (replaces what was known); `complete` is false when the
    /// answer was cut at the component's per-stanza cap or paged (RSM `<set/>`).
    All {
        /// Item ids.
        ids: Vec<String>,
        /// All items were read.
        complete: bool,
    },
    /// Items published (XEP-0060 §7.1.2).
    Published(Vec<String>),
    /// Items retracted (§7.2.2.1).
    Retracted(Vec<String>),
    /// All items purged (§8.5.2.1).
    Purged,
}

/// Most entries one RTBL list holds.
pub const MAX_RTBL_ENTRIES: usize = 1_000_000;

/// The entries of one RTBL list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtblList {
    entries: BTreeSet<String>,
    sha256: bool,
    /// Item ids skipped (not an entry of this node's kind, or past the cap) since start.
    pub skipped: u64,
}

/// Is `node` a node of hashed JIDs (its name ends in `_sha256`)?
pub fn is_sha256_node(node: &str) -> bool {
    node.ends_with("_sha256")
}

/// The entry an item id stands for in a list of this kind, in the form the list file keeps;
/// `None` if it is not one.
pub fn entry_of(id: &str, sha256: bool) -> Option<String> {
    let id = id.trim();
    if sha256 {
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
    } else {
        // A domain, prepared (`Spam.Example` is `spam.example`); JIDs with a local part are not
        // domains and would not compile in a domain list.
        let j = crate::jid::parse(id)?;
        (j.node().is_none() && j.resource().is_none()).then(|| j.domain().as_str().to_owned())
    }
}

impl RtblList {
    /// An empty list for `node` (its kind follows from the name).
    pub fn new(node: &str) -> Self {
        RtblList { entries: BTreeSet::new(), sha256: is_sha256_node(node), skipped: 0 }
    }

    /// The list as kept in `text` (a file this module wrote, or an operator edited); lines that
    /// are not entries are skipped.
    pub fn from_file_text(node: &str, text: &str) -> Self {
        let mut l = RtblList::new(node);
        l.add(text.lines().map(|line| line.split('#').next().unwrap_or_default()));
        l
    }

    fn add<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let mut changed = false;
        for id in ids {
            if id.trim().is_empty() {
                continue;
            }
            match entry_of(id, self.sha256) {
                Some(e) if self.entries.len() < MAX_RTBL_ENTRIES || self.entries.contains(&e) => {
                    changed |= self.entries.insert(e);
                }
                _ => self.skipped += 1,
            }
        }
        changed
    }

    /// Apply a change from the node; true if the entries changed.
    pub fn apply(&mut self, change: &NodeChange) -> bool {
        match change {
            NodeChange::All { ids, complete } => {
                let before = self.entries.clone();
                if *complete {
                    self.entries.clear();
                }
                // An incomplete answer (cut or paged) only adds: dropping entries it did not
                // show would unblock senders the node still lists.
                self.add(ids.iter().map(String::as_str));
                self.entries != before
            }
            NodeChange::Published(ids) => self.add(ids.iter().map(String::as_str)),
            NodeChange::Retracted(ids) => {
                let mut changed = false;
                for id in ids {
                    if let Some(e) = entry_of(id, self.sha256) {
                        changed |= self.entries.remove(&e);
                    }
                }
                changed
            }
            NodeChange::Purged => {
                let changed = !self.entries.is_empty();
                self.entries.clear();
                changed
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, sorted.
    pub fn entries(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(String::as_str)
    }

    /// Is `entry` (in list-file form) listed?
    pub fn contains(&self, entry: &str) -> bool {
        self.entries.contains(entry)
    }

    /// The list file's text: a comment naming the node, then one entry a line, sorted.
    pub fn to_file_text(&self, service: &str, node: &str) -> String {
        let mut out = String::with_capacity(self.entries.len() * 66 + 128);
        // Service and node were validated by the config (no newline can be in them).
        out.push_str(&format!("# RTBL {node} on {service}; written by stanzawall, do not edit\n"));
        for e in &self.entries {
            out.push_str(e);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "c2a3a5e4ee5ff38fe0b5a2e8f4e44a8a7ac7f5e1e3d0c86bd0dc1c4a3c0c6f21";

    #[test]
    fn items_retractions_and_purges_change_the_entries() {
        let mut l = RtblList::new("spam_source_domains");
        let all = NodeChange::All { ids: vec!["Spam.Example".into(), "bad.example".into()], complete: true };
        assert!(l.apply(&all));
        assert!(l.contains("spam.example") && l.contains("bad.example"));
        assert!(!l.apply(&all), "the same items again change nothing");
        assert!(l.apply(&NodeChange::Published(vec!["new.example".into()])));
        assert!(l.apply(&NodeChange::Retracted(vec!["BAD.example".into()])));
        assert!(!l.contains("bad.example"));
        assert_eq!(l.len(), 2);
        let text = l.to_file_text("pubsub.example.test", "spam_source_domains");
        let back = RtblList::from_file_text("spam_source_domains", &text);
        assert_eq!(back.entries, l.entries);
        assert!(l.apply(&NodeChange::Purged));
        assert!(l.is_empty());
    }

    #[test]
    fn ids_that_are_not_entries_of_the_nodes_kind_are_skipped() {
        let mut l = RtblList::new("spam_source_domains");
        l.apply(&NodeChange::Published(vec![
            "user@spam.example".into(),
            "spam.example/res".into(),
            "not a domain".into(),
            "line\nbreak.example".into(),
            String::new(),
        ]));
        assert!(l.is_empty(), "{:?}", l.entries);
        assert_eq!(l.skipped, 4);
        let mut h = RtblList::new("spam_source_jids_sha256");
        h.apply(&NodeChange::Published(vec![H.to_uppercase(), "abc".into(), "spam.example".into()]));
        assert_eq!(h.len(), 1);
        assert!(h.contains(H));
    }

    #[test]
    fn an_incomplete_answer_only_adds() {
        let mut l = RtblList::new("spam_source_domains");
        l.apply(&NodeChange::Published(vec!["a.example".into()]));
        l.apply(&NodeChange::All { ids: vec!["b.example".into()], complete: false });
        assert!(l.contains("a.example") && l.contains("b.example"));
        l.apply(&NodeChange::All { ids: vec!["b.example".into()], complete: true });
        assert!(!l.contains("a.example"));
    }
}
