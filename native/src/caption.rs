//! captions.clean_caption for non-ASCII alt texts, with tables Python builds from its own
//! unicodedata and ftfy (laion_spark/extract/wat_native.py: caption_tables), so the two
//! paths agree by construction:
//! - `safe`: non-ASCII BMP characters that change nothing in the Python rule: printable,
//!   not whitespace, NFC-stable in any sequence (combining class 0, NFC(c) == c, never the
//!   second character of a canonical composition), not acted on by any ftfy fixer (the
//!   ftfy gate of captions.py). Text with any other character goes to Python.
//! - ftfy's mojibake test `is_bad` (its BADNESS_RE) as a program of character sets: every
//!   branch of that regex is a short sequence of single-character matchers (a set, any
//!   character, an optional set, the start of text), which `is_bad` below searches exactly.

use std::collections::HashMap;

// rejection reasons of laion_spark.extract.captions
pub const NO_ALT: &str = "no_alt";
pub const CAPTION_TOO_SHORT: &str = "caption_too_short";
pub const CAPTION_TOO_LONG: &str = "caption_too_long";

/// captions.clean_caption's bound on absurd input, checked before any per-character pass.
pub fn too_long_to_clean(n_chars: usize, max_c: usize) -> bool {
    n_chars > 4 * max_c + 64
}

/// The end of captions.clean_caption: whitespace runs collapse (str.split / join; controls
/// count as whitespace, the rule turns them into spaces first), then the length bounds.
/// `alt` is the caption before cleaning (for the no_alt / too_short distinction).
pub fn collapse_and_bound(
    chars: impl Iterator<Item = char>,
    alt: &str,
    min_c: usize,
    max_c: usize,
) -> Result<String, &'static str> {
    let mut out = String::with_capacity(alt.len());
    let mut count = 0;
    let mut gap = false;
    for ch in chars {
        if ch <= ' ' || ch == '\x7f' {
            gap = count > 0;
            continue;
        }
        if gap {
            out.push(' ');
            count += 1;
            gap = false;
        }
        out.push(ch);
        count += 1;
    }
    if count < min_c {
        // Python: NO_ALT if the alt was only whitespace (str.strip), else too short
        let blank = alt.bytes().all(|b| matches!(b, 9..=13 | 0x1c..=0x20));
        return Err(if count == 0 && blank {
            NO_ALT
        } else {
            CAPTION_TOO_SHORT
        });
    }
    if count > max_c {
        return Err(CAPTION_TOO_LONG);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Item {
    Set(u32),
    Any,
    Optional(u32),
    Begin,
}

pub struct CaptionTables {
    safe: Vec<u8>,
    word: Vec<u8>,
    ascii_gate: [bool; 128],
    // set membership bits: explicit characters, plus the sets that hold a category
    explicit: HashMap<u32, u128>,
    ascii_masks: [u128; 128],
    space: Vec<u32>,
    space_sets: u128,
    word_sets: u128,
    negated_sets: u128,
    branches: Vec<Vec<Item>>,
    // the set each branch must match first (None: it starts with something else)
    first_sets: Vec<Option<u32>>,
    first_union: u128,
    // some branch starts with something other than a set (then no position is skipped)
    other_starts: bool,
}

/// (set ranges, holds \s, holds \w, negated) per set; branches as (kind, set index): kind
/// 0 = set, 1 = any character but "\n", 2 = optional set, 3 = start of text.
pub type SetSpec = (Vec<(u32, u32)>, bool, bool, bool);

impl CaptionTables {
    pub fn new(
        safe: Vec<u8>,
        word: Vec<u8>,
        space: Vec<u32>,
        ascii_gate: Vec<u32>,
        sets: Vec<SetSpec>,
        branches: Vec<Vec<(u8, usize)>>,
    ) -> Result<CaptionTables, String> {
        if safe.len() != 0x10000 || word.len() != 0x10000 || sets.len() > 128 {
            return Err("caption tables have the wrong shape".into());
        }
        let mut t = CaptionTables {
            safe,
            word,
            ascii_gate: [false; 128],
            explicit: HashMap::new(),
            ascii_masks: [0; 128],
            space,
            space_sets: 0,
            word_sets: 0,
            negated_sets: 0,
            branches: Vec::new(),
            first_sets: Vec::new(),
            first_union: 0,
            other_starts: false,
        };
        for c in ascii_gate.into_iter().filter(|&c| c < 128) {
            t.ascii_gate[c as usize] = true;
        }
        for (i, (ranges, has_space, has_word, negated)) in sets.iter().enumerate() {
            let bit = 1u128 << i;
            for &(lo, hi) in ranges {
                if hi < lo || hi - lo > 0x3000 {
                    return Err("a badness set is too large to expand".into());
                }
                for c in lo..=hi {
                    *t.explicit.entry(c).or_default() |= bit;
                }
            }
            if *has_space {
                t.space_sets |= bit;
            }
            if *has_word {
                t.word_sets |= bit;
            }
            if *negated {
                t.negated_sets |= bit;
            }
        }
        for c in 0..128u32 {
            t.ascii_masks[c as usize] = t.mask_slow(c);
        }
        for br in branches {
            let mut items = Vec::with_capacity(br.len());
            for (kind, set) in br {
                if set >= sets.len() && matches!(kind, 0 | 2) {
                    return Err("badness branch names an unknown set".into());
                }
                items.push(match kind {
                    0 => Item::Set(set as u32),
                    1 => Item::Any,
                    2 => Item::Optional(set as u32),
                    3 => Item::Begin,
                    _ => return Err("unknown badness item".into()),
                });
            }
            let first = match items.first() {
                Some(Item::Set(s)) => Some(*s),
                _ => None,
            };
            t.first_union |= first.map_or(0, |s| 1u128 << s);
            t.other_starts |= first.is_none();
            t.first_sets.push(first);
            t.branches.push(items);
        }
        Ok(t)
    }

    fn mask_slow(&self, c: u32) -> u128 {
        let mut m = self.explicit.get(&c).copied().unwrap_or(0);
        if self.space.binary_search(&c).is_ok() {
            m |= self.space_sets;
        }
        if c < 0x10000 && self.word[c as usize] != 0 {
            m |= self.word_sets;
        }
        m ^ self.negated_sets // a negated set holds what its members do not
    }

    #[inline]
    fn mask(&self, c: char) -> u128 {
        let c = c as u32;
        if c < 128 {
            self.ascii_masks[c as usize]
        } else {
            self.mask_slow(c)
        }
    }

    fn matches_at(&self, items: &[Item], text: &[char], masks: &[u128], p: usize) -> bool {
        let Some((first, rest)) = items.split_first() else {
            return true;
        };
        match *first {
            Item::Set(s) => {
                p < text.len()
                    && masks[p] >> s & 1 == 1
                    && self.matches_at(rest, text, masks, p + 1)
            }
            Item::Any => {
                p < text.len() && text[p] != '\n' && self.matches_at(rest, text, masks, p + 1)
            }
            Item::Optional(s) => {
                (p < text.len()
                    && masks[p] >> s & 1 == 1
                    && self.matches_at(rest, text, masks, p + 1))
                    || self.matches_at(rest, text, masks, p)
            }
            Item::Begin => p == 0 && self.matches_at(rest, text, masks, p),
        }
    }

    /// ftfy.badness.is_bad(text): BADNESS_RE.search(text) is not None.
    pub fn is_bad(&self, text: &[char]) -> bool {
        // every branch needs a non-ASCII character of a plain explicit set (checked in
        // Python): without one in the text, nothing can match
        if !text
            .iter()
            .any(|&c| c as u32 >= 128 && self.explicit.contains_key(&(c as u32)))
        {
            return false;
        }
        let masks: Vec<u128> = text.iter().map(|&c| self.mask(c)).collect();
        (0..=text.len()).any(|p| {
            let m = masks.get(p).copied().unwrap_or(0);
            if !self.other_starts && m & self.first_union == 0 {
                return false; // no branch can start here
            }
            self.branches
                .iter()
                .zip(&self.first_sets)
                .any(|(br, first)| match first {
                    Some(s) if m >> s & 1 == 0 => false,
                    _ => self.matches_at(br, text, &masks, p),
                })
        })
    }

    /// captions.clean_caption(alt) for a non-ASCII alt (entities already decoded), or None
    /// when Python has to do it (a character outside `safe`, an ftfy fixer's character, or
    /// text that looks like mojibake).
    pub fn clean(
        &self,
        alt: &str,
        min_c: usize,
        max_c: usize,
        fix_text: bool,
    ) -> Option<Result<String, &'static str>> {
        let n = alt.chars().count();
        if too_long_to_clean(n, max_c) {
            return Some(Err(CAPTION_TOO_LONG));
        }
        // control characters -> space (captions._strip_controls on printable-but-Cc text)
        let mut stripped: Vec<char> = Vec::with_capacity(n);
        for ch in alt.chars() {
            let c = ch as u32;
            if c < 128 {
                if c < 0x20 || c == 0x7f {
                    stripped.push(' ');
                    continue;
                }
                if fix_text && self.ascii_gate[c as usize] {
                    return None;
                }
            } else if c >= 0x10000 || self.safe[c as usize] == 0 {
                return None;
            }
            stripped.push(ch);
        }
        if fix_text && self.is_bad(&stripped) {
            return None;
        }
        // NFC changes nothing (safe characters)
        Some(collapse_and_bound(stripped.into_iter(), alt, min_c, max_c))
    }
}
