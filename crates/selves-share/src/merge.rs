//! Three-way merges of text files, line by line (diff3). Symmetric: the
//! two sides are put in a fixed order (by content hash) first, so every
//! node that merges the same pair writes the same bytes.

use std::ops::Range;
use std::time::{Duration, Instant};

use selves_wire::file::BlobHash;

/// Files larger than this are never merged (a conflict copy is kept).
pub const MAX_MERGE_BYTES: usize = 1 << 20;

/// Whether `content` is text worth merging: UTF-8 without NUL bytes, and
/// small enough.
pub fn is_text(content: &[u8]) -> bool {
    content.len() <= MAX_MERGE_BYTES
        && !content.contains(&0)
        && std::str::from_utf8(content).is_ok()
}

fn lines(text: &[u8]) -> Option<Vec<&str>> {
    Some(
        std::str::from_utf8(text)
            .ok()?
            .split_inclusive('\n')
            .collect(),
    )
}

/// How long one diff may take: past it the diff is coarser (bigger
/// hunks, so more conflicts), never wrong.
const DIFF_BUDGET: Duration = Duration::from_millis(250);

/// Merges two edits of `base`. `None` when they overlap (or a side is not
/// text): the caller keeps both versions instead.
///
/// A line diff (Myers) of each side against the base gives its hunks; hunks
/// of the two sides that overlap or touch in the base form one region,
/// which merges only if both sides made it the same. Everything else is
/// taken from the one side that changed it, or from the base.
pub fn merge3(base: &[u8], a: (&BlobHash, &[u8]), b: (&BlobHash, &[u8])) -> Option<Vec<u8>> {
    if !(is_text(base) && is_text(a.1) && is_text(b.1)) {
        return None;
    }
    let (first, second) = if a.0 <= b.0 { (a.1, b.1) } else { (b.1, a.1) };
    let (base, first, second) = (lines(base)?, lines(first)?, lines(second)?);
    let ha = hunks(&base, &first);
    let hb = hunks(&base, &second);
    let mut out = String::new();
    // Base lines before `at` are done; `da`/`db`: how far each side's line
    // numbers are ahead of the base's there.
    let (mut at, mut da, mut db) = (0usize, 0isize, 0isize);
    let (mut ia, mut ib) = (0, 0);
    loop {
        // The next region: the earliest hunk, grown while a hunk of either
        // side overlaps or touches it.
        let start = match (ha.get(ia), hb.get(ib)) {
            (None, None) => break,
            (Some(x), None) => x.base.start,
            (None, Some(y)) => y.base.start,
            (Some(x), Some(y)) => x.base.start.min(y.base.start),
        };
        let (mut end, mut ja, mut jb) = (start, ia, ib);
        loop {
            let mut grew = false;
            if let Some(x) = ha.get(ja).filter(|x| x.base.start <= end) {
                end = end.max(x.base.end);
                ja += 1;
                grew = true;
            }
            if let Some(y) = hb.get(jb).filter(|y| y.base.start <= end) {
                end = end.max(y.base.end);
                jb += 1;
                grew = true;
            }
            if !grew {
                break;
            }
        }
        base[at..start].iter().for_each(|l| out.push_str(l));
        let side = |h: &[Hunk], from: usize, to: usize, delta: isize, text: &[&str]| {
            let grown: isize = h[from..to]
                .iter()
                .map(|x| x.side.len() as isize - x.base.len() as isize)
                .sum();
            let s = (start as isize + delta) as usize;
            let e = (end as isize + delta + grown) as usize;
            (text[s..e].concat(), delta + grown)
        };
        let (ta, na) = side(&ha, ia, ja, da, &first);
        let (tb, nb) = side(&hb, ib, jb, db, &second);
        match (ja > ia, jb > ib) {
            (true, false) => out.push_str(&ta),
            (false, true) => out.push_str(&tb),
            _ if ta == tb => out.push_str(&ta),
            _ => return None,
        }
        (at, da, db, ia, ib) = (end, na, nb, ja, jb);
    }
    base[at..].iter().for_each(|l| out.push_str(l));
    Some(out.into_bytes())
}

/// A change: base lines `base` became the side's lines `side`.
struct Hunk {
    base: Range<usize>,
    side: Range<usize>,
}

fn hunks(base: &[&str], side: &[&str]) -> Vec<Hunk> {
    let ops = similar::capture_diff_slices_deadline(
        similar::Algorithm::Myers,
        base,
        side,
        Some(Instant::now() + DIFF_BUDGET),
    );
    let mut out: Vec<Hunk> = Vec::new();
    for op in ops {
        let (tag, old, new) = op.as_tag_tuple();
        if tag == similar::DiffTag::Equal {
            continue;
        }
        match out.last_mut() {
            // Consecutive changes are one hunk.
            Some(h) if h.base.end == old.start && h.side.end == new.start => {
                h.base.end = old.end;
                h.side.end = new.end;
            }
            _ => out.push(Hunk {
                base: old,
                side: new,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(base: &str, a: &str, b: &str) -> Option<String> {
        let (ha, hb) = (BlobHash::of(a.as_bytes()), BlobHash::of(b.as_bytes()));
        let one = merge3(base.as_bytes(), (&ha, a.as_bytes()), (&hb, b.as_bytes()));
        let two = merge3(base.as_bytes(), (&hb, b.as_bytes()), (&ha, a.as_bytes()));
        assert_eq!(one, two, "merging is symmetric");
        one.map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn edits_of_different_paragraphs_merge() {
        let base = "# Title\n\nfirst paragraph\n\nsecond paragraph\n\nthird paragraph\n";
        let a = "# Title\n\nfirst paragraph, edited on A\n\nsecond paragraph\n\nthird paragraph\n";
        let b = "# Title\n\nfirst paragraph\n\nsecond paragraph\n\nthird paragraph, edited on B\n";
        let merged = m(base, a, b).unwrap();
        assert!(
            merged.contains("edited on A") && merged.contains("edited on B"),
            "{merged}"
        );
    }

    #[test]
    fn edits_of_the_same_line_do_not() {
        let base = "one\ntwo\nthree\n";
        assert_eq!(
            m(base, "one\nTWO on A\nthree\n", "one\ntwo on B\nthree\n"),
            None
        );
    }

    #[test]
    fn three_nodes_editing_three_paragraphs_merge_in_any_order() {
        let p = "# Plan\n\nIntro.\n\n## Hub\n\nthe hub line\n\n## A\n\nthe alpha line\n\n## B\n\nthe beta line\n";
        let h = p.replace("the hub line", "the hub line, edited on the hub");
        let a = p.replace("the alpha line", "the alpha line, edited on a");
        let b = p.replace("the beta line", "the beta line, edited on b");
        let all = h
            .replace("the alpha line", "the alpha line, edited on a")
            .replace("the beta line", "the beta line, edited on b");
        let ah = m(p, &a, &h).unwrap();
        assert_eq!(m(p, &b, &ah).unwrap(), all);
        let bh = m(p, &b, &h).unwrap();
        assert_eq!(m(p, &a, &bh).unwrap(), all);
    }

    /// Lines of a base text: paragraphs of one or two lines, separated by
    /// blank lines.
    fn paragraphs(n: usize, seed: u32) -> Vec<String> {
        (0..n)
            .map(|i| {
                if (i as u32 + seed).is_multiple_of(3) {
                    format!("paragraph {i} first line\nparagraph {i} second line\n")
                } else {
                    format!("paragraph {i}\n")
                }
            })
            .collect()
    }

    proptest::proptest! {
        /// Edits of different paragraphs merge into exactly the edited
        /// text; never anything else.
        #[test]
        fn disjoint_edits_merge_exactly(
            n in 3usize..120,
            seed in 0u32..3,
            edits in proptest::collection::vec((0usize..120, proptest::bool::ANY, 0u8..3), 0..12),
        ) {
            let base = paragraphs(n, seed);
            let (mut a, mut b, mut want) = (base.clone(), base.clone(), base.clone());
            let mut used = std::collections::HashSet::new();
            for (i, side_a, kind) in edits {
                let i = i % n;
                // One side per paragraph.
                if !used.insert(i) {
                    continue;
                }
                let new = match kind {
                    0 => format!("paragraph {i}, rewritten on {}\n", if side_a { "a" } else { "b" }),
                    1 => String::new(),
                    _ => format!("{}an added line from {}\n", base[i], if side_a { "a" } else { "b" }),
                };
                want[i] = new.clone();
                if side_a { a[i] = new } else { b[i] = new }
            }
            let join = |v: &[String]| v.join("\n");
            let merged = m(&join(&base), &join(&a), &join(&b));
            proptest::prop_assert_eq!(merged, Some(join(&want)));
        }
    }

    fn text_of(lines: &[u8]) -> String {
        lines.iter().map(|l| format!("line {l}\n")).collect()
    }

    proptest::proptest! {
        /// On arbitrary (often ambiguous) edits: merging one side with an
        /// unchanged other gives that side; merging identical sides gives
        /// them; and a merge never holds a line none of the inputs has.
        #[test]
        fn merges_never_invent_or_drop(
            base in proptest::collection::vec(0u8..6, 0..40),
            a in proptest::collection::vec(0u8..6, 0..40),
            b in proptest::collection::vec(0u8..6, 0..40),
        ) {
            let (base, a, b) = (text_of(&base), text_of(&a), text_of(&b));
            proptest::prop_assert_eq!(m(&base, &a, &base), Some(a.clone()));
            proptest::prop_assert_eq!(m(&base, &base, &b), Some(b.clone()));
            proptest::prop_assert_eq!(m(&base, &a, &a), Some(a.clone()));
            if let Some(out) = m(&base, &a, &b) {
                for line in out.lines() {
                    proptest::prop_assert!(
                        base.lines().chain(a.lines()).chain(b.lines()).any(|l| l == line),
                        "invented {line:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn binary_is_never_merged() {
        assert!(!is_text(b"a\0b"));
        assert!(!is_text(&[0xff, 0xfe]));
        assert!(m("x\n", "x\ny\n", "w\nx\n").is_some());
        let h = BlobHash::of(b"");
        assert_eq!(merge3(b"a\0", (&h, b"a\0b"), (&h, b"c\0a")), None);
    }
}
