//! Selection among the K candidate patches of one instance (`--select`): `tests` (generated reproduction tests,
//! ties by majority), `majority` (vote over normalised patches), `oracle` (the real tests: pass@K, never the
//! reported choice). Pure and deterministic: the same candidates and evidence give the same choice whatever their
//! order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A selector of `--select` (a closed set).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Run every candidate against every valid generated test; most tests printing `Issue resolved` wins, ties by
    /// majority vote.
    Tests,
    /// Majority vote over normalised patches (whitespace- and comment-insensitive changed lines).
    Majority,
    /// The real tests (reports pass@K; never the reported choice).
    Oracle,
}

impl Selector {
    /// The lowercase name (`tests`, `majority`, `oracle`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tests => "tests",
            Self::Majority => "majority",
            Self::Oracle => "oracle",
        }
    }
}

/// One candidate patch of an instance: sample `sample`'s submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The sample index (0-based).
    pub sample: u32,
    /// The submitted patch (`None`: no submission, or the sample failed). An empty or whitespace-only patch is
    /// no candidate either.
    pub patch: Option<String>,
    /// Whether the real tests resolved it (`None`: not graded, e.g. the sample failed). Read only by `oracle`.
    pub resolved: Option<bool>,
}

/// What the generated tests said about the candidates of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestEvidence {
    /// The indices of the valid generated tests (empty: none was valid, `tests` falls back to majority).
    pub valid_tests: BTreeSet<u32>,
    /// Per candidate sample, the valid tests it passes (prints `Issue resolved` and neither other line). A sample
    /// absent here passes none.
    pub passes: BTreeMap<u32, BTreeSet<u32>>,
}

/// How a selection was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// One candidate passed strictly more valid tests than every other.
    Tests,
    /// Several candidates tied on tests; majority vote among them decided.
    TestsThenMajority,
    /// No valid generated test (or `tests` found no candidate passing any): majority vote decided.
    MajorityFallback,
    /// Majority vote: one normalised patch had strictly the most votes.
    Majority,
    /// Majority vote tied: the tied group holding the lowest sample index won.
    MajorityTieLowestSample,
    /// `oracle`: a candidate the real tests resolved (the lowest such sample).
    Oracle,
    /// `oracle`: no candidate was resolved; the majority choice stands.
    OracleNoneResolved,
    /// No candidate had a non-empty patch: nothing selected.
    NoCandidate,
}

/// The choice of one selector for one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Which selector.
    pub selector: Selector,
    /// The chosen sample (`None`: no candidate had a patch).
    pub sample: Option<u32>,
    /// How it was decided.
    pub decided_by: DecidedBy,
    /// Per candidate sample (with a patch): votes of its normalised patch (every candidate with the same key).
    pub votes: BTreeMap<u32, u32>,
    /// Per candidate sample: valid tests passed (only for `tests` with at least one valid test).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tests_passed: BTreeMap<u32, u32>,
}

/// The normalised form majority vote compares (see `swe_env_grading::patch_key::normalize`).
pub fn majority_key(patch: &str) -> String {
    swe_env_grading::patch_key::normalize(patch)
}

/// Selects among `candidates` with `selector`. `evidence` is read only by `Tests` (`None` = no valid test).
///
/// Rules (deterministic; input order does not matter):
/// - candidates without a non-empty patch are ignored; if none is left: `sample: None`, `NoCandidate`;
/// - majority: group by [`majority_key`]; the largest group wins; a tie goes to the group holding the lowest
///   sample index; the chosen sample is the group's lowest sample index;
/// - tests: score = number of valid tests passed; the highest score wins; among tied top scorers (score > 0),
///   majority vote restricted to them (votes counted over ALL candidates' groups), then lowest sample; a max
///   score of 0 or no valid test → majority over all (`MajorityFallback`);
/// - oracle: the lowest resolved sample; none resolved → the majority choice (`OracleNoneResolved`).
pub fn select(
    selector: Selector,
    candidates: &[Candidate],
    evidence: Option<&TestEvidence>,
) -> Selection {
    let pool = pool(candidates);
    if pool.is_empty() {
        return Selection {
            selector,
            sample: None,
            decided_by: DecidedBy::NoCandidate,
            votes: BTreeMap::new(),
            tests_passed: BTreeMap::new(),
        };
    }
    let votes = votes(&pool);
    let (majority_sample, majority_decided) = majority(&pool, &votes);
    let mut tests_passed = BTreeMap::new();
    let (sample, decided_by) = match selector {
        Selector::Majority => (majority_sample, majority_decided),
        Selector::Oracle => match pool.iter().find(|c| c.resolved == Some(true)) {
            Some(candidate) => (candidate.sample, DecidedBy::Oracle),
            None => (majority_sample, DecidedBy::OracleNoneResolved),
        },
        Selector::Tests => match evidence.filter(|e| !e.valid_tests.is_empty()) {
            None => (majority_sample, DecidedBy::MajorityFallback),
            Some(evidence) => {
                tests_passed = scores(&pool, evidence);
                by_tests(&tests_passed, &votes)
                    .unwrap_or((majority_sample, DecidedBy::MajorityFallback))
            }
        },
    };
    Selection {
        selector,
        sample: Some(sample),
        decided_by,
        votes,
        tests_passed,
    }
}

/// A candidate with a non-empty patch, keyed for majority vote.
#[derive(Debug)]
struct Keyed {
    sample: u32,
    key: String,
    resolved: Option<bool>,
}

/// The candidates with a non-empty patch, sorted by sample index (the input order never matters). Should the same
/// sample index appear twice, the first after sorting by (sample, patch, resolved) stands, so the outcome stays
/// independent of the input order.
fn pool(candidates: &[Candidate]) -> Vec<Keyed> {
    let mut with_patch: Vec<(u32, &str, Option<bool>)> = candidates
        .iter()
        .filter_map(|c| match c.patch.as_deref() {
            Some(patch) if !patch.trim().is_empty() => Some((c.sample, patch, c.resolved)),
            _ => None,
        })
        .collect();
    with_patch.sort();
    with_patch.dedup_by_key(|(sample, _, _)| *sample);
    with_patch
        .into_iter()
        .map(|(sample, patch, resolved)| Keyed {
            sample,
            key: majority_key(patch),
            resolved,
        })
        .collect()
}

/// Per sample: how many candidates share its majority key.
fn votes(pool: &[Keyed]) -> BTreeMap<u32, u32> {
    let mut per_key: BTreeMap<&str, u32> = BTreeMap::new();
    for candidate in pool {
        *per_key.entry(candidate.key.as_str()).or_default() += 1;
    }
    pool.iter()
        .map(|c| (c.sample, per_key.get(c.key.as_str()).copied().unwrap_or(0)))
        .collect()
}

/// The majority choice of a non-empty, sample-sorted pool: the largest group, a tie going to the group holding
/// the lowest sample; the group's lowest sample.
fn majority(pool: &[Keyed], votes: &BTreeMap<u32, u32>) -> (u32, DecidedBy) {
    // The pool is sorted by sample, so the first member seen of a group is its lowest sample.
    let mut groups: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for candidate in pool {
        let count = votes.get(&candidate.sample).copied().unwrap_or(0);
        groups
            .entry(candidate.key.as_str())
            .or_insert((count, candidate.sample));
    }
    let best = groups.values().map(|(count, _)| *count).max().unwrap_or(0);
    let mut tied: Vec<u32> = groups
        .values()
        .filter(|(count, _)| *count == best)
        .map(|(_, lowest)| *lowest)
        .collect();
    tied.sort_unstable();
    let decided_by = if tied.len() > 1 {
        DecidedBy::MajorityTieLowestSample
    } else {
        DecidedBy::Majority
    };
    let sample = tied.first().copied().unwrap_or_default();
    (sample, decided_by)
}

/// Per candidate: the valid tests it passes.
fn scores(pool: &[Keyed], evidence: &TestEvidence) -> BTreeMap<u32, u32> {
    pool.iter()
        .map(|c| {
            let passed = evidence.passes.get(&c.sample).map_or(0, |passes| {
                passes.intersection(&evidence.valid_tests).count()
            });
            (c.sample, u32::try_from(passed).unwrap_or(u32::MAX))
        })
        .collect()
}

/// The `tests` choice, `None` when no candidate passes a valid test: the top scorer; several → the most votes,
/// then the lowest sample.
fn by_tests(scores: &BTreeMap<u32, u32>, votes: &BTreeMap<u32, u32>) -> Option<(u32, DecidedBy)> {
    let best = scores.values().copied().max().filter(|best| *best > 0)?;
    let top: Vec<u32> = scores
        .iter()
        .filter(|(_, score)| **score == best)
        .map(|(sample, _)| *sample)
        .collect();
    if let [only] = top.as_slice() {
        return Some((*only, DecidedBy::Tests));
    }
    // `top` is sorted by sample (a BTreeMap's order): `min_by_key` keeps the first of equal keys.
    top.iter()
        .copied()
        .min_by_key(|sample| std::cmp::Reverse(votes.get(sample).copied().unwrap_or(0)))
        .map(|sample| (sample, DecidedBy::TestsThenMajority))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real unified diff of `src/calc.py` replacing `return a - b` with `new_line` (context and hunk offset
    /// as given).
    fn diff(new_line: &str, context: &str, start: u32) -> String {
        format!(
            "diff --git a/src/calc.py b/src/calc.py\n\
             --- a/src/calc.py\n\
             +++ b/src/calc.py\n\
             @@ -{start},3 +{start},3 @@\n \
             def add(a, b):\n\
             -    return a - b\n\
             +{new_line}\n \
             {context}\n"
        )
    }

    /// The right fix.
    fn right() -> String {
        diff("    return a + b", "", 1)
    }

    /// A wrong fix.
    fn wrong() -> String {
        diff("    return b - a", "", 1)
    }

    /// Another wrong fix.
    fn other() -> String {
        diff("    return a * b", "", 1)
    }

    fn cand(sample: u32, patch: Option<String>, resolved: Option<bool>) -> Candidate {
        Candidate {
            sample,
            patch,
            resolved,
        }
    }

    fn evidence(valid: &[u32], passes: &[(u32, &[u32])]) -> TestEvidence {
        TestEvidence {
            valid_tests: valid.iter().copied().collect(),
            passes: passes
                .iter()
                .map(|(sample, tests)| (*sample, tests.iter().copied().collect()))
                .collect(),
        }
    }

    fn votes_of(pairs: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        pairs.iter().copied().collect()
    }

    /// Every permutation of `items` (Heap's algorithm).
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
            if k <= 1 {
                out.push(items.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, items, out);
                if k.is_multiple_of(2) {
                    items.swap(i, k - 1);
                } else {
                    items.swap(0, k - 1);
                }
            }
        }
        let mut items = items.to_vec();
        let mut out = Vec::new();
        heap(items.len(), &mut items, &mut out);
        out
    }

    #[test]
    fn the_diffs_are_real_and_differ() {
        assert!(majority_key(&right()).contains("file src/calc.py"));
        assert_ne!(majority_key(&right()), majority_key(&wrong()));
        assert_ne!(majority_key(&wrong()), majority_key(&other()));
    }

    #[test]
    fn majority_picks_the_largest_group_and_its_lowest_sample() {
        let candidates = [
            cand(0, Some(other()), None),
            cand(1, Some(right()), None),
            cand(2, Some(wrong()), None),
            cand(3, Some(right()), None),
        ];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.selector, Selector::Majority);
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::Majority);
        assert_eq!(selection.votes, votes_of(&[(0, 1), (1, 2), (2, 1), (3, 2)]));
        assert!(selection.tests_passed.is_empty());
    }

    #[test]
    fn majority_tie_goes_to_the_group_holding_the_lowest_sample() {
        // Groups {1, 2} (wrong) and {3, 4} (right) tie: the wrong group holds sample 1, the lowest.
        let candidates = [
            cand(4, Some(right()), None),
            cand(1, Some(wrong()), None),
            cand(3, Some(right()), None),
            cand(2, Some(wrong()), None),
        ];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::MajorityTieLowestSample);
        assert_eq!(selection.votes, votes_of(&[(1, 2), (2, 2), (3, 2), (4, 2)]));

        // All different: every group has one vote, the lowest sample wins.
        let candidates = [
            cand(2, Some(other()), None),
            cand(5, Some(right()), None),
            cand(7, Some(wrong()), None),
        ];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.sample, Some(2));
        assert_eq!(selection.decided_by, DecidedBy::MajorityTieLowestSample);

        // A single candidate is a strict majority.
        let selection = select(Selector::Majority, &[cand(6, Some(wrong()), None)], None);
        assert_eq!(selection.sample, Some(6));
        assert_eq!(selection.decided_by, DecidedBy::Majority);
        assert_eq!(selection.votes, votes_of(&[(6, 1)]));
    }

    #[test]
    fn whitespace_context_and_comment_differences_vote_together() {
        let plain = right();
        // Other context, another hunk offset, other spacing, trailing whitespace and a trailing comment.
        let reformatted = diff("    return a+b   # fixed: was a - b", "    # end", 40);
        assert_eq!(majority_key(&plain), majority_key(&reformatted));
        let candidates = [
            cand(0, Some(wrong()), None),
            cand(1, Some(plain), None),
            cand(2, Some(reformatted), None),
        ];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::Majority);
        assert_eq!(selection.votes, votes_of(&[(0, 1), (1, 2), (2, 2)]));
    }

    #[test]
    fn indentation_changes_do_not_vote_together() {
        let nested = diff("        return a + b", "", 1);
        assert_ne!(majority_key(&nested), majority_key(&right()));
        let candidates = [cand(0, Some(nested), None), cand(1, Some(right()), None)];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.votes, votes_of(&[(0, 1), (1, 1)]));
        assert_eq!(selection.decided_by, DecidedBy::MajorityTieLowestSample);
    }

    #[test]
    fn empty_and_missing_patches_are_ignored() {
        let candidates = [
            cand(0, None, None),
            cand(1, Some(String::new()), Some(false)),
            cand(2, Some(" \n\t\n".to_owned()), Some(false)),
            cand(3, Some(wrong()), Some(false)),
            cand(4, Some(right()), Some(true)),
            cand(5, Some(right()), Some(true)),
        ];
        let selection = select(Selector::Majority, &candidates, None);
        assert_eq!(selection.sample, Some(4));
        assert_eq!(selection.decided_by, DecidedBy::Majority);
        assert_eq!(selection.votes, votes_of(&[(3, 1), (4, 2), (5, 2)]));

        // Empty patches do not count as passing either.
        let ev = evidence(&[0], &[(1, &[0]), (2, &[0])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.tests_passed, votes_of(&[(3, 0), (4, 0), (5, 0)]));
        assert_eq!(selection.decided_by, DecidedBy::MajorityFallback);
        assert_eq!(selection.sample, Some(4));
    }

    #[test]
    fn no_candidate_selects_nothing() {
        let candidates = [
            cand(0, None, Some(false)),
            cand(1, Some("   \n".to_owned()), None),
            cand(2, Some(String::new()), Some(true)),
        ];
        let ev = evidence(&[0], &[(2, &[0])]);
        for selector in [Selector::Tests, Selector::Majority, Selector::Oracle] {
            let selection = select(selector, &candidates, Some(&ev));
            assert_eq!(selection.selector, selector);
            assert_eq!(selection.sample, None);
            assert_eq!(selection.decided_by, DecidedBy::NoCandidate);
            assert!(selection.votes.is_empty());
            assert!(selection.tests_passed.is_empty());
            assert_eq!(
                select(selector, &[], None).decided_by,
                DecidedBy::NoCandidate
            );
        }
    }

    #[test]
    fn majority_picks_a_wrong_patch_tests_pick_the_right_one() {
        let candidates = [
            cand(0, Some(wrong()), Some(false)),
            cand(1, Some(wrong()), Some(false)),
            cand(2, Some(right()), Some(true)),
        ];
        // Test 1 is the only valid one; test 0 (invalid) is "passed" by the wrong patches and must not count.
        let ev = evidence(&[1], &[(0, &[0]), (1, &[0]), (2, &[1])]);

        let majority = select(Selector::Majority, &candidates, Some(&ev));
        assert_eq!(majority.sample, Some(0));
        assert_eq!(majority.decided_by, DecidedBy::Majority);

        let tests = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(tests.sample, Some(2));
        assert_eq!(tests.decided_by, DecidedBy::Tests);
        assert_eq!(tests.votes, votes_of(&[(0, 2), (1, 2), (2, 1)]));
        assert_eq!(tests.tests_passed, votes_of(&[(0, 0), (1, 0), (2, 1)]));

        let oracle = select(Selector::Oracle, &candidates, Some(&ev));
        assert_eq!(oracle.sample, Some(2));
        assert_eq!(oracle.decided_by, DecidedBy::Oracle);
    }

    #[test]
    fn no_valid_test_lets_majority_decide() {
        let candidates = [
            cand(0, Some(right()), None),
            cand(1, Some(wrong()), None),
            cand(2, Some(wrong()), None),
        ];
        // No evidence at all.
        let selection = select(Selector::Tests, &candidates, None);
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::MajorityFallback);
        assert!(selection.tests_passed.is_empty());

        // Evidence without a valid test: passes of invalid tests are ignored.
        let ev = evidence(&[], &[(0, &[0, 1])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::MajorityFallback);
        assert!(selection.tests_passed.is_empty());

        // Valid tests that no candidate passes: majority too, with the (zero) scores recorded.
        let ev = evidence(&[0, 1], &[(0, &[2])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::MajorityFallback);
        assert_eq!(selection.tests_passed, votes_of(&[(0, 0), (1, 0), (2, 0)]));
    }

    #[test]
    fn tests_most_passed_wins_strictly() {
        let candidates = [
            cand(0, Some(wrong()), None),
            cand(1, Some(wrong()), None),
            cand(2, Some(right()), None),
            cand(3, Some(other()), None),
        ];
        let ev = evidence(&[0, 1, 2], &[(0, &[0]), (1, &[0]), (2, &[0, 1]), (3, &[1])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(2));
        assert_eq!(selection.decided_by, DecidedBy::Tests);
        assert_eq!(
            selection.tests_passed,
            votes_of(&[(0, 1), (1, 1), (2, 2), (3, 1)])
        );
    }

    #[test]
    fn tests_ties_go_to_the_bigger_group_then_the_lowest_sample() {
        // Samples 0 (other) and 2 (right) both pass the one valid test; 2's group (2, 3) has 2 votes over ALL
        // candidates although 3 passes nothing.
        let candidates = [
            cand(0, Some(other()), None),
            cand(1, Some(wrong()), None),
            cand(2, Some(right()), None),
            cand(3, Some(right()), None),
        ];
        let ev = evidence(&[5], &[(0, &[5]), (2, &[5])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(2));
        assert_eq!(selection.decided_by, DecidedBy::TestsThenMajority);
        assert_eq!(
            selection.tests_passed,
            votes_of(&[(0, 1), (1, 0), (2, 1), (3, 0)])
        );

        // Equal votes among the top scorers: the lowest sample.
        let candidates = [
            cand(4, Some(right()), None),
            cand(1, Some(wrong()), None),
            cand(6, Some(other()), None),
        ];
        let ev = evidence(&[0], &[(4, &[0]), (6, &[0])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(4));
        assert_eq!(selection.decided_by, DecidedBy::TestsThenMajority);

        // Two top scorers of the same group: the lower sample.
        let candidates = [
            cand(0, Some(wrong()), None),
            cand(1, Some(right()), None),
            cand(2, Some(right()), None),
        ];
        let ev = evidence(&[0], &[(2, &[0]), (1, &[0])]);
        let selection = select(Selector::Tests, &candidates, Some(&ev));
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::TestsThenMajority);
    }

    #[test]
    fn oracle_takes_the_lowest_resolved_else_the_majority_choice() {
        let candidates = [
            cand(0, Some(wrong()), Some(false)),
            cand(1, None, Some(true)),
            cand(2, Some(wrong()), Some(false)),
            cand(5, Some(other()), Some(true)),
            cand(3, Some(right()), Some(true)),
        ];
        let selection = select(Selector::Oracle, &candidates, None);
        assert_eq!(selection.sample, Some(3));
        assert_eq!(selection.decided_by, DecidedBy::Oracle);
        assert_eq!(selection.votes, votes_of(&[(0, 2), (2, 2), (3, 1), (5, 1)]));

        let candidates = [
            cand(0, Some(other()), None),
            cand(1, Some(wrong()), Some(false)),
            cand(2, Some(wrong()), Some(false)),
        ];
        let selection = select(Selector::Oracle, &candidates, None);
        assert_eq!(selection.sample, Some(1));
        assert_eq!(selection.decided_by, DecidedBy::OracleNoneResolved);
    }

    #[test]
    fn the_input_order_does_not_matter() {
        let candidates = [
            cand(0, Some(other()), Some(false)),
            cand(1, Some(wrong()), Some(false)),
            cand(2, Some(right()), Some(true)),
            cand(3, None, None),
            cand(4, Some(wrong()), Some(false)),
            cand(5, Some(diff("    return a+b  # ok", "", 9)), Some(true)),
        ];
        let evidences = [
            None,
            Some(evidence(&[0, 1], &[(2, &[0]), (5, &[0]), (0, &[0])])),
            Some(evidence(&[0], &[(0, &[0]), (1, &[0]), (4, &[0])])),
            Some(evidence(&[1], &[(3, &[1])])),
        ];
        for selector in [Selector::Tests, Selector::Majority, Selector::Oracle] {
            for ev in &evidences {
                let expected = select(selector, &candidates, ev.as_ref());
                let permuted = permutations(&candidates);
                assert_eq!(permuted.len(), 720);
                for order in &permuted {
                    assert_eq!(select(selector, order, ev.as_ref()), expected);
                }
            }
        }
        // Spot-check the figures the permutations agree on.
        let ev = evidences[1].as_ref();
        let tests = select(Selector::Tests, &candidates, ev);
        assert_eq!(tests.sample, Some(2));
        assert_eq!(tests.decided_by, DecidedBy::TestsThenMajority);
        let majority = select(Selector::Majority, &candidates, None);
        assert_eq!(majority.sample, Some(1));
        assert_eq!(majority.decided_by, DecidedBy::MajorityTieLowestSample);
    }

    #[test]
    fn selection_serde_form() {
        let candidates = [cand(0, Some(right()), None), cand(1, Some(wrong()), None)];
        let majority = select(Selector::Majority, &candidates, None);
        let value = serde_json::to_value(&majority).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "selector": "majority",
                "sample": 0,
                "decided_by": "majority_tie_lowest_sample",
                "votes": {"0": 1, "1": 1},
            })
        );
        let back: Selection = serde_json::from_value(value).unwrap();
        assert_eq!(back, majority);
        let ev = evidence(&[0], &[(1, &[0])]);
        let tests = select(Selector::Tests, &candidates, Some(&ev));
        let value = serde_json::to_value(&tests).unwrap();
        assert_eq!(value["decided_by"], "tests");
        assert_eq!(value["tests_passed"], serde_json::json!({"0": 0, "1": 1}));
    }
}
