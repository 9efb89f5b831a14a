//! The one normal form keywords are matched in: Unicode lowercase, with invisible format
//! characters removed (a zero-width space inside `vi\u{200b}agra` must not hide the word).
//!
//! Detection and masking fold the same way, character by character, so a rule that matched
//! always masks what it matched.

/// Invisible characters (Unicode general category Cf as used for evasion): soft hyphen, Arabic
/// letter mark, Mongolian vowel separator, zero-width space/joiners, direction marks and
/// embeddings, word joiner and invisible operators, BOM.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// `text` folded.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|&c| !is_invisible(c)) {
        out.extend(c.to_lowercase());
    }
    out
}

/// `text` folded, and for each byte of the result the index of the character of `text` it came
/// from.
pub fn fold_mapped(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len());
    let mut owner = Vec::with_capacity(text.len());
    for (i, c) in text.chars().enumerate().filter(|&(_, c)| !is_invisible(c)) {
        for l in c.to_lowercase() {
            let before = out.len();
            out.push(l);
            owner.extend(std::iter::repeat_n(i, out.len() - before));
        }
    }
    (out, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_and_case_fold_away() {
        assert_eq!(fold("Vi\u{200B}AG\u{00AD}ra"), "viagra");
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), fold_mapped("ΣΊΣΥΦΟΣ").0, "one folding for both");
        let (s, owner) = fold_mapped("a\u{200B}İb");
        assert_eq!(s, "ai\u{307}b");
        assert_eq!(owner, vec![0, 2, 2, 2, 3]);
    }
}
