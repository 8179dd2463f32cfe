//! A port of CPython's `difflib.SequenceMatcher` restricted to what `ratio()` needs, for
//! `SequenceMatcher(None, a, b, autojunk=False)`: no junk, no popular elements. Sequences are
//! compared element by element with `Eq`; for Python `str` use `char`s (Unicode code points).

use std::collections::HashMap;
use std::hash::Hash;

/// One matching block `a[a_start..a_start+size] == b[b_start..b_start+size]` (Python's `Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchingBlock {
    /// Start in `a`.
    pub a_start: usize,
    /// Start in `b`.
    pub b_start: usize,
    /// Length of the match.
    pub size: usize,
}

/// `SequenceMatcher(None, a, b, autojunk=False)`: holds `b`'s index (`b2j`) so that the matching
/// is computed exactly as CPython does, ties included.
pub struct SequenceMatcher<'a, T> {
    a: &'a [T],
    b: &'a [T],
    /// Element of `b` → its positions in `b`, ascending (CPython's `b2j`; with `isjunk=None` and
    /// `autojunk=False` nothing is ever purged from it).
    b2j: HashMap<&'a T, Vec<usize>>,
}

impl<'a, T: Eq + Hash> SequenceMatcher<'a, T> {
    /// Indexes `b` (CPython's `__chain_b`).
    pub fn new(a: &'a [T], b: &'a [T]) -> Self {
        let mut b2j: HashMap<&'a T, Vec<usize>> = HashMap::new();
        for (j, element) in b.iter().enumerate() {
            b2j.entry(element).or_default().push(j);
        }
        SequenceMatcher { a, b, b2j }
    }

    /// CPython's `find_longest_match(alo, ahi, blo, bhi)`: the longest block in the given ranges,
    /// the earliest in `a` among equals, then the earliest in `b`.
    ///
    /// `j2len` is CPython's dict keyed by `j`, kept here as two dense arrays over `b_lo..b_hi`
    /// (`len[j - b_lo + 1]` = length of the match ending at `a[i]`, `b[j]`; slot 0 stays 0 for
    /// `j - 1 < b_lo`) that are cleared entry by entry, which yields the same values as the dict.
    pub fn find_longest_match(
        &self,
        a_lo: usize,
        a_hi: usize,
        b_lo: usize,
        b_hi: usize,
    ) -> MatchingBlock {
        let (a, b) = (self.a, self.b);
        let (mut best_i, mut best_j, mut best_size) = (a_lo, b_lo, 0usize);
        let width = b_hi.saturating_sub(b_lo) + 1;
        let mut previous = vec![0usize; width];
        let mut current = vec![0usize; width];
        let mut previous_set: Vec<usize> = Vec::new();
        let mut current_set: Vec<usize> = Vec::new();
        for (i, element) in a.iter().enumerate().take(a_hi).skip(a_lo) {
            if let Some(positions) = self.b2j.get(element) {
                for &j in positions {
                    if j < b_lo {
                        continue;
                    }
                    if j >= b_hi {
                        break;
                    }
                    let slot = j - b_lo + 1;
                    let k = previous[slot - 1] + 1;
                    current[slot] = k;
                    current_set.push(slot);
                    if k > best_size {
                        best_i = i + 1 - k;
                        best_j = j + 1 - k;
                        best_size = k;
                    }
                }
            }
            for &slot in &previous_set {
                previous[slot] = 0;
            }
            previous_set.clear();
            std::mem::swap(&mut previous, &mut current);
            std::mem::swap(&mut previous_set, &mut current_set);
        }
        // CPython then extends the block over adjacent equal non-junk elements; with no junk and
        // no popular elements the block is already maximal, but the loops are kept for fidelity.
        while best_i > a_lo && best_j > b_lo && a[best_i - 1] == b[best_j - 1] {
            best_i -= 1;
            best_j -= 1;
            best_size += 1;
        }
        while best_i + best_size < a_hi
            && best_j + best_size < b_hi
            && a[best_i + best_size] == b[best_j + best_size]
        {
            best_size += 1;
        }
        MatchingBlock {
            a_start: best_i,
            b_start: best_j,
            size: best_size,
        }
    }

    /// CPython's `get_matching_blocks()`: non-adjacent blocks in increasing order, ending with the
    /// sentinel `(len(a), len(b), 0)`.
    pub fn matching_blocks(&self) -> Vec<MatchingBlock> {
        let (len_a, len_b) = (self.a.len(), self.b.len());
        let mut queue = vec![(0usize, len_a, 0usize, len_b)];
        let mut blocks = Vec::new();
        while let Some((a_lo, a_hi, b_lo, b_hi)) = queue.pop() {
            let block = self.find_longest_match(a_lo, a_hi, b_lo, b_hi);
            let (i, j, k) = (block.a_start, block.b_start, block.size);
            if k > 0 {
                blocks.push(block);
                if a_lo < i && b_lo < j {
                    queue.push((a_lo, i, b_lo, j));
                }
                if i + k < a_hi && j + k < b_hi {
                    queue.push((i + k, a_hi, j + k, b_hi));
                }
            }
        }
        blocks.sort();
        let mut merged: Vec<MatchingBlock> = Vec::new();
        let (mut i1, mut j1, mut k1) = (0usize, 0usize, 0usize);
        for block in blocks {
            if i1 + k1 == block.a_start && j1 + k1 == block.b_start {
                k1 += block.size;
            } else {
                if k1 > 0 {
                    merged.push(MatchingBlock {
                        a_start: i1,
                        b_start: j1,
                        size: k1,
                    });
                }
                (i1, j1, k1) = (block.a_start, block.b_start, block.size);
            }
        }
        if k1 > 0 {
            merged.push(MatchingBlock {
                a_start: i1,
                b_start: j1,
                size: k1,
            });
        }
        merged.push(MatchingBlock {
            a_start: len_a,
            b_start: len_b,
            size: 0,
        });
        merged
    }

    /// CPython's `ratio()`: `2.0 * M / T` with `M` the matched elements and `T = len(a) + len(b)`,
    /// or `1.0` when both are empty; computed with the same float operations, so equal bit for bit.
    pub fn ratio(&self) -> f64 {
        let matches: usize = self.matching_blocks().iter().map(|block| block.size).sum();
        let total = self.a.len() + self.b.len();
        if total == 0 {
            return 1.0;
        }
        2.0 * matches as f64 / total as f64
    }
}

/// `difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()` over the code points of two strings.
pub fn ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    SequenceMatcher::new(&a, &b).ratio()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(a: &str, b: &str) -> Vec<(usize, usize, usize)> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        SequenceMatcher::new(&a, &b)
            .matching_blocks()
            .into_iter()
            .map(|m| (m.a_start, m.b_start, m.size))
            .collect()
    }

    #[test]
    fn matches_cpython_documentation_examples() {
        // From the difflib documentation: SequenceMatcher(None, "abxcd", "abcd").
        assert_eq!(
            blocks("abxcd", "abcd"),
            vec![(0, 0, 2), (3, 2, 2), (5, 4, 0)]
        );
        // find_longest_match(" abcd", "abcd abcd") with isjunk=None gives (0, 4, 5).
        let a: Vec<char> = " abcd".chars().collect();
        let b: Vec<char> = "abcd abcd".chars().collect();
        let m = SequenceMatcher::new(&a, &b).find_longest_match(0, 5, 0, 9);
        assert_eq!((m.a_start, m.b_start, m.size), (0, 4, 5));
    }

    #[test]
    fn ratio_edge_cases() {
        assert_eq!(ratio("", ""), 1.0);
        assert_eq!(ratio("abc", ""), 0.0);
        assert_eq!(ratio("abcd", "bcde"), 0.75);
        assert_eq!(ratio("é✓x", "é✓y"), 2.0 * 2.0 / 6.0);
    }
}
