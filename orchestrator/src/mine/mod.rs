//! `swe-env mine`: new tasks from a repository's history (`history.rs`, git2 on the host) and from bugs injected
//! into working code (`mutate.py`, a stdlib-only script piped into a task container).
//!
//! - `history`: the first-parent walk and the source / test split (no Docker).
//! - `env`: where a mined repository's tests run — an existing image or a recipe — and the per-base-commit derived
//!   images (only history up to the base commit inside).
//! - `validate`: the shared Docker validation of a provisional row (tests twice without and twice with the patch,
//!   FAIL_TO_PASS / PASS_TO_PASS, flaky tests dropped, the gold patch graded by our own grader).
//! - `issue_fix`: `mine history` end to end (walk → base image → validate → row).
//! - `mutate`: `mine mutate` end to end (baseline → mutants → derived image → validate → row).
//! - `output`: the output directory of a mine run (tasks.jsonl, rejected.jsonl, swerl.jsonl, summary.json).
//! - `swerl`: SWE-RL records (issue text, code context at base, oracle patch) for similarity-reward RL.

pub mod env;
pub mod history;
pub mod issue_fix;
pub mod mutate;
pub mod output;
pub mod swerl;
#[cfg(test)]
pub(crate) mod test_repo;
pub mod validate;

/// The last `max` bytes of `text` (from a char boundary), trimmed: the part of a long command output an error shows.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let start = text.len().saturating_sub(max);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].trim().to_owned()
}
