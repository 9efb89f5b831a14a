//! The one normal form keywords and regexes are matched in: NFKC, full Unicode case folding, and
//! every `Default_Ignorable_Code_Point` removed — close to Unicode's `NFKC_Casefold`, so that
//! `ＶＩＡＧＲＡ`, `𝐯𝐢𝐚𝐠𝐫𝐚`, `vi\u{200b}agra`, `vi\u{e0041}agra` (a tag character) and `VIAGRA`
//! all read `viagra`.
//!
//! The data is Unicode's own (ICU4X: `icu_normalizer`, `icu_casemap`, `icu_properties`), not a
//! hand list: every default-ignorable code point is removed, including those assigned later
//! (the property reserves whole ranges for them).
//!
//! Detection and masking fold the same way, through one function ([`fold_each`]) that works in
//! *chunks*: a chunk is a character with the characters that normalization may merge into it
//! (combining marks, Hangul jamo), so folding the chunks one by one gives the same text as
//! folding the whole, and every folded byte knows which characters of the original it came from.
//! NFKC changes lengths (`ﬁ` → `fi`, `①` → `1`, `㎒` → `mhz`) and case folding too (`ß` → `ss`);
//! a match on the folded text is mapped back to whole chunks of the original, so a rule that
//! matched always masks what it matched.

use std::borrow::Cow;
use std::ops::Range;

use icu_casemap::{CaseMapper, CaseMapperBorrowed};
use icu_normalizer::properties::{
    CanonicalCombiningClassMap, CanonicalCombiningClassMapBorrowed, CanonicalComposition, CanonicalCompositionBorrowed,
};
use icu_normalizer::{
    ComposingNormalizer, ComposingNormalizerBorrowed, DecomposingNormalizer, DecomposingNormalizerBorrowed,
};
use icu_properties::props::DefaultIgnorableCodePoint;
use icu_properties::{CodePointSetData, CodePointSetDataBorrowed};

const NFKC: ComposingNormalizerBorrowed<'static> = ComposingNormalizer::new_nfkc();
const NFKD: DecomposingNormalizerBorrowed<'static> = DecomposingNormalizer::new_nfkd();
const CASE: CaseMapperBorrowed<'static> = CaseMapper::new();
const CCC: CanonicalCombiningClassMapBorrowed<'static> = CanonicalCombiningClassMap::new();
const COMPOSE: CanonicalCompositionBorrowed<'static> = CanonicalComposition::new();
const IGNORABLE: CodePointSetDataBorrowed<'static> = CodePointSetData::new::<DefaultIgnorableCodePoint>();

/// True for a `Default_Ignorable_Code_Point` (Unicode DerivedCoreProperties): characters that
/// render as nothing — zero-width spaces and joiners, soft hyphen, direction marks, variation
/// selectors, tag characters, Hangul fillers, musical formatting controls, and the ranges
/// reserved for future ones.
pub fn is_ignorable(c: char) -> bool {
    IGNORABLE.contains(c)
}

/// `text` folded. Borrowed when folding changes nothing (lowercase ASCII, the common case).
pub fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        // ASCII is NFKC already and has no default-ignorable code point: folding is lowercasing.
        return if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        };
    }
    let mut out = String::with_capacity(text.len());
    fold_each(text, |piece, _| out.push_str(piece));
    Cow::Owned(out)
}

/// `text` folded, with the byte range of the original each folded byte came from (the whole
/// chunk: a match that touches a folded byte covers the chunk it belongs to).
#[derive(Debug, Default)]
pub struct Folded {
    /// The folded text.
    pub text: String,
    /// Per byte of `text`: the byte range of the original text it came from.
    pub origin: Vec<Range<usize>>,
}

impl Folded {
    /// Fold `text`, remembering origins.
    pub fn new(text: &str) -> Folded {
        let mut out = Folded { text: String::with_capacity(text.len()), origin: Vec::with_capacity(text.len()) };
        fold_each(text, |piece, from| {
            out.text.push_str(piece);
            out.origin.extend(std::iter::repeat_n(from, piece.len()));
        });
        out
    }

    /// The range of the original text that the folded bytes `range` came from: from the start of
    /// the first one's chunk to the end of the last one's (ignorable characters in between
    /// included). `None` for an empty range.
    pub fn original(&self, range: Range<usize>) -> Option<Range<usize>> {
        if range.is_empty() {
            return None;
        }
        let first = self.origin.get(range.start)?;
        let last = self.origin.get(range.end.checked_sub(1)?)?;
        Some(first.start..last.end)
    }
}

/// Fold `text` chunk by chunk: `emit(folded chunk, byte range of the chunk in text)`, in order.
/// Chunks that fold to nothing (ignorable characters) are not emitted.
pub fn fold_each(text: &str, mut emit: impl FnMut(&str, Range<usize>)) {
    // The chunk being gathered (ignorable characters left out) and its range in `text`.
    let mut chunk = String::new();
    let mut range = 0..0;
    for (i, c) in text.char_indices() {
        if is_ignorable(c) {
            continue;
        }
        let end = i + c.len_utf8();
        if !chunk.is_empty() && !starts_chunk(&chunk, c) {
            chunk.push(c);
            range.end = end;
            continue;
        }
        if !chunk.is_empty() {
            fold_chunk(&chunk, range.clone(), &mut emit);
            chunk.clear();
        }
        chunk.push(c);
        range = i..end;
    }
    if !chunk.is_empty() {
        fold_chunk(&chunk, range, &mut emit);
    }
}

/// Does normalization leave the boundary between `chunk` and a following `c` alone? Only if
/// `c`'s decomposition starts with a starter (canonical combining class 0: nothing reorders
/// across it) that does not compose with the chunk's last character (Hangul jamo, some Indic
/// vowel signs do). Then normalizing the two sides apart equals normalizing them together
/// (UAX #15 §9, "Detecting Normalization Forms" / stable code points).
fn starts_chunk(chunk: &str, c: char) -> bool {
    if c.is_ascii() {
        // No canonical composition has an ASCII second character, and ASCII is a starter.
        return true;
    }
    let Some(first) = NFKD.normalize_iter(std::iter::once(c)).next() else { return true };
    if CCC.get_u8(first) != 0 {
        return false;
    }
    let composed = NFKC.normalize(chunk);
    composed.chars().next_back().is_none_or(|last| COMPOSE.compose(last, first).is_none())
}

/// NFKC, then full case folding, then NFKC again (folding can undo normalization, e.g. U+0345
/// → ι), then ignorables dropped (NFKC can produce one: U+FFA0 → U+3164).
fn fold_chunk(chunk: &str, range: Range<usize>, emit: &mut impl FnMut(&str, Range<usize>)) {
    if chunk.len() == 1 {
        // ASCII: NFKC and ignorable-free already.
        let b = chunk.as_bytes()[0].to_ascii_lowercase();
        let mut buf = [0u8; 4];
        emit(char::from(b).encode_utf8(&mut buf), range);
        return;
    }
    let normal = NFKC.normalize(chunk);
    let folded = match CASE.fold_string(&normal) {
        Cow::Borrowed(_) => normal,
        Cow::Owned(f) => Cow::Owned(NFKC.normalize(&f).into_owned()),
    };
    if folded.chars().any(is_ignorable) {
        let kept: String = folded.chars().filter(|&c| !is_ignorable(c)).collect();
        if !kept.is_empty() {
            emit(&kept, range);
        }
    } else {
        emit(&folded, range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ignorable_is_the_unicode_property() {
        // The ones the brief names, and a few a hand list tends to miss.
        for c in [
            '\u{00AD}',
            '\u{034F}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{180F}',
            '\u{200B}',
            '\u{200D}',
            '\u{2060}',
            '\u{2064}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{1D17A}',
            '\u{E0001}',
            '\u{E0020}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{E01EF}',
            '\u{E0FFF}',
        ] {
            assert!(is_ignorable(c), "U+{:04X}", c as u32);
        }
        for c in ['a', ' ', '\u{0301}', '\u{00A0}', '\u{2028}', '\u{E000}'] {
            assert!(!is_ignorable(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn nfkc_case_fold_and_ignorables() {
        assert_eq!(fold("Vi\u{200B}AG\u{00AD}ra"), "viagra");
        assert_eq!(fold("ＶＩＡＧＲＡ"), "viagra");
        assert_eq!(fold("𝐯𝐢𝐚𝐠𝐫𝐚"), "viagra");
        assert_eq!(fold("vi\u{E0041}ag\u{FE0F}r\u{1D173}a\u{3164}"), "viagra");
        assert_eq!(fold("\u{FB01}le ① ㎒ Straße ΣΊΣΥΦΟΣ"), "file 1 mhz strasse σίσυφοσ");
        // Composition across what were separate characters: e + combining acute, Hangul jamo.
        assert_eq!(fold("Cafe\u{0301}"), "café");
        assert_eq!(fold("\u{1100}\u{1161}\u{11A8}"), "\u{AC01}");
        // Borrowed when nothing changes.
        assert!(matches!(fold("plain ascii"), Cow::Borrowed(_)));
    }

    #[test]
    fn folded_bytes_map_back_to_whole_original_characters() {
        let text = "x\u{FB01}\u{200B}Ｂe\u{0301}ß";
        let f = Folded::new(text);
        assert_eq!(f.text, "xfibéss");
        assert_eq!(f.text, fold(text), "one folding for detection and masking");
        let at = |needle: &str| {
            let s = f.text.find(needle).unwrap();
            let r = f.original(s..s + needle.len()).unwrap();
            &text[r]
        };
        assert_eq!(at("f"), "\u{FB01}", "half a ligature maps to the ligature");
        assert_eq!(at("ib"), "\u{FB01}\u{200B}Ｂ", "ignorables inside a match are covered");
        assert_eq!(at("é"), "e\u{0301}");
        assert_eq!(at("s"), "ß");
        assert_eq!(f.original(3..3), None);
    }

    proptest::proptest! {
        /// Folding chunk by chunk is folding the whole: for any text, the chunks' folded
        /// pieces concatenate to the fold of each chunk's original run, and the ranges tile
        /// the text in order.
        #[test]
        fn chunks_are_in_order_and_fold_like_the_whole(text in "(\\PC|[\u{0300}-\u{036F}\u{1100}-\u{11FF}\u{200B}-\u{200F}\u{FE00}-\u{FE0F}\u{FF00}-\u{FFEF}])*") {
            let mut last_end = 0;
            fold_each(&text, |piece, r| {
                assert!(r.start >= last_end && r.end > r.start, "{r:?} after {last_end}");
                last_end = r.end;
                assert!(!piece.is_empty());
            });
            let f = Folded::new(&text);
            proptest::prop_assert_eq!(&f.text, &fold(&text).into_owned());
            proptest::prop_assert_eq!(f.origin.len(), f.text.len());
            // Idempotent: keywords are folded once at compile time and must match folded text.
            proptest::prop_assert_eq!(fold(&f.text).into_owned(), f.text.clone());
            // And the same as normalizing the whole text at once.
            let kept: String = text.chars().filter(|&c| !is_ignorable(c)).collect();
            let whole = NFKC.normalize(&CASE.fold_string(&NFKC.normalize(&kept))).into_owned();
            let whole: String = whole.chars().filter(|&c| !is_ignorable(c)).collect();
            proptest::prop_assert_eq!(f.text, whole);
        }
    }
}
