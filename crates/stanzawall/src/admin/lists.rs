//! Editing a file-backed list: add or remove one entry, keeping every other line (comments,
//! blank lines, order) as it was.
//!
//! The list file stays the source of truth: the API edits it, then reloads like SIGHUP would,
//! so what a session sees is always what the file says. These functions only transform text;
//! the caller writes the result atomically ([`crate::files::replace_atomically`]).

/// Why an entry cannot be written to a list file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Empty after trimming.
    #[error("the entry is empty")]
    Empty,
    /// Longer than [`MAX_ENTRY`] bytes.
    #[error("the entry is longer than {MAX_ENTRY} bytes")]
    TooLong,
    /// `#` starts a comment in a list file; a control character (a newline) would make two lines.
    #[error("the entry contains '#' or a control character")]
    Forbidden,
}

/// Longest entry accepted (a URL or a JID pattern; list files are line-based).
pub const MAX_ENTRY: usize = 2048;

/// The entry as it will be written, or why it cannot be.
pub fn clean(entry: &str) -> Result<&str, EntryError> {
    let e = entry.trim();
    if e.is_empty() {
        return Err(EntryError::Empty);
    }
    if e.len() > MAX_ENTRY {
        return Err(EntryError::TooLong);
    }
    if e.contains('#') || e.chars().any(char::is_control) {
        return Err(EntryError::Forbidden);
    }
    Ok(e)
}

/// The entry a line holds (what the config loader reads from it), if any.
fn entry_of(line: &str) -> &str {
    line.split('#').next().unwrap_or_default().trim()
}

/// `text` with `entry` appended, or `None` if a line holds it already.
pub fn add(text: &str, entry: &str) -> Option<String> {
    if text.lines().any(|l| entry_of(l) == entry) {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(entry);
    out.push('\n');
    Some(out)
}

/// `text` without the lines holding `entry` (a comment on such a line goes with it), or `None`
/// if no line holds it.
pub fn remove(text: &str, entry: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if entry_of(line) == entry {
            found = true;
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_keep_comments_and_order() {
        let text = "# links doing the rounds\nevil.example/payload\n\nphish.example  # since May\n# end";
        let added = add(text, "new.example/x").unwrap();
        assert_eq!(added, format!("{text}\nnew.example/x\n"));
        assert_eq!(add(&added, "evil.example/payload"), None);
        let removed = remove(&added, "phish.example").unwrap();
        assert_eq!(removed, "# links doing the rounds\nevil.example/payload\n\n# end\nnew.example/x\n");
        assert_eq!(remove(&removed, "phish.example"), None);
        // A comment mentioning an entry is not the entry.
        assert_eq!(remove("# evil.example\n", "evil.example"), None);
        assert_eq!(add("", "a"), Some("a\n".to_owned()));
    }

    #[test]
    fn entries_that_would_change_the_file_shape_are_refused() {
        assert_eq!(clean("  x.example  "), Ok("x.example"));
        assert_eq!(clean(" "), Err(EntryError::Empty));
        assert_eq!(clean("a\nb"), Err(EntryError::Forbidden));
        assert_eq!(clean("a#b"), Err(EntryError::Forbidden));
        assert_eq!(clean(&"a".repeat(MAX_ENTRY + 1)), Err(EntryError::TooLong));
    }
}
