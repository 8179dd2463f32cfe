//! The data card of a harvest directory: `data_card.json` (for programs) and `data_card.md` (tables for a person),
//! computed from the committed manifest rows, the failures log and what this invocation spent. The same inputs give
//! byte-identical files (keys sorted, no clock read).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::{
    write_atomically, ManifestRow, RolloutFailure, SpentSummary, StoreError, TimeSums,
};

/// Format tag of `data_card.json`.
pub const CARD_FORMAT: &str = "swe-env-harvest-card/1";
/// The machine-readable card.
pub const CARD_JSON: &str = "data_card.json";
/// The card for a person.
pub const CARD_MD: &str = "data_card.md";

/// Distribution of a per-rollout number (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Rollouts.
    pub n: u64,
    /// Smallest.
    pub min: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 90th percentile (nearest rank).
    pub p90: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// `None` for no values; otherwise min, nearest-rank p50/p90/p99 (the value at rank ⌈q·n⌉), max and mean.
pub fn distribution(mut values: Vec<u64>) -> Option<Distribution> {
    values.sort_unstable();
    let n = values.len();
    let first = *values.first()?;
    let rank = |q: f64| {
        let rank = (q * n as f64).ceil() as usize;
        values[rank.clamp(1, n) - 1]
    };
    let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
    Some(Distribution {
        n: n as u64,
        min: first,
        p50: rank(0.5),
        p90: rank(0.9),
        p99: rank(0.99),
        max: values[n - 1],
        mean: sum as f64 / n as f64,
    })
}

/// Counts of one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoCounts {
    /// Committed rollouts.
    pub rollouts: u64,
    /// Distinct instances.
    pub instances: u64,
    /// Resolved rollouts.
    pub resolved: u64,
    /// `resolved / rollouts`.
    pub resolved_rate: f64,
}

/// Format errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatErrorStats {
    /// Steps of all rollouts.
    pub steps: u64,
    /// Steps whose action did not parse.
    pub format_error_steps: u64,
    /// `format_error_steps / steps` (0 without steps).
    pub step_rate: f64,
    /// Rollouts that ended `format_errors`.
    pub rollouts_ended_format_errors: u64,
    /// Their share of all rollouts.
    pub rollout_share: f64,
}

/// Model calls cut off by `max_tokens` (`finish_reason` `length`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthCutStats {
    /// Cut model calls (steps and final answers).
    pub cut_calls: u64,
    /// `cut_calls / steps` (0 without steps).
    pub per_step: f64,
    /// Rollouts with at least one cut call.
    pub rollouts_with_cut: u64,
    /// Their share of all rollouts.
    pub rollout_share: f64,
}

/// Tokens summed over rollouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSums {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Both.
    pub total: u64,
}

/// Failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureStats {
    /// Rollouts in `failures.jsonl` that are still not committed, by the kind of their latest failure.
    pub outstanding_by_kind: BTreeMap<String, u64>,
    /// How many rollouts that is.
    pub outstanding_rollouts: u64,
    /// Lines of `failures.jsonl` (every failure of every invocation, retried ones included).
    pub recorded: u64,
}

/// The data card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCard {
    /// [`CARD_FORMAT`].
    pub format: String,
    /// Committed rollouts.
    pub rollouts: u64,
    /// Distinct instances among them.
    pub instances: u64,
    /// Resolved rollouts.
    pub resolved: u64,
    /// `resolved / rollouts` (0 without rollouts).
    pub resolved_rate: f64,
    /// Per repository.
    pub by_repo: BTreeMap<String, RepoCounts>,
    /// Rollouts per `episode_end` status.
    pub by_status: BTreeMap<String, u64>,
    /// Per-rollout distributions: `turns`, `total_tokens`, `completion_tokens`, `obs_bytes_max`,
    /// `obs_bytes_total`, `bytes` (absent without rollouts).
    pub distributions: BTreeMap<String, Distribution>,
    /// Format errors.
    pub format_errors: FormatErrorStats,
    /// Length cuts.
    pub length_cut: LengthCutStats,
    /// Time summed over every committed rollout, ms.
    pub time_ms: TimeSums,
    /// Tokens summed over every committed rollout.
    pub tokens: TokenSums,
    /// What the invocation that wrote this card spent.
    pub this_invocation: SpentSummary,
    /// Failures.
    pub failures: FailureStats,
}

/// A per-rollout number of a row.
type PerRollout = fn(&ManifestRow) -> u64;

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The card of `rows` (committed), `failures` (all of `failures.jsonl`) and `spent` (this invocation).
pub fn build(rows: &[ManifestRow], failures: &[RolloutFailure], spent: &SpentSummary) -> DataCard {
    let mut builder = CardBuilder::default();
    for row in rows {
        builder.add(row);
    }
    let committed: BTreeSet<&str> = rows.iter().map(|r| r.rollout_id.as_str()).collect();
    for failure in failures {
        builder.add_failure(failure, committed.contains(failure.rollout_id.as_str()));
    }
    builder.build(spent)
}

/// The card built in one pass over the rows without keeping them: counters, per-repo and per-status counts, the
/// distinct instances, and the six per-rollout numbers the percentiles need (48 bytes a row).
#[derive(Debug, Default)]
pub struct CardBuilder {
    rollouts: u64,
    resolved: u64,
    repos: BTreeMap<String, (u64, BTreeSet<String>, u64)>,
    by_status: BTreeMap<String, u64>,
    instances: BTreeSet<String>,
    time: TimeSums,
    tokens: TokenSums,
    steps: u64,
    format_error_steps: u64,
    ended_format_errors: u64,
    cut_calls: u64,
    rollouts_with_cut: u64,
    /// One column per entry of [`PER_ROLLOUT`].
    columns: [Vec<u64>; 6],
    /// The latest failure kind of each rollout failed and not committed.
    outstanding: BTreeMap<String, String>,
    /// Failures seen.
    recorded: u64,
}

/// The per-rollout distributions of the card, by name.
const PER_ROLLOUT: [(&str, PerRollout); 6] = [
    ("turns", |r| u64::from(r.n_turns)),
    ("total_tokens", |r| r.total_tokens),
    ("completion_tokens", |r| r.completion_tokens),
    ("obs_bytes_max", |r| r.obs_bytes_max),
    ("obs_bytes_total", |r| r.obs_bytes_total),
    ("bytes", |r| r.bytes),
];

impl CardBuilder {
    /// Counts one committed row.
    pub fn add(&mut self, row: &ManifestRow) {
        self.rollouts += 1;
        self.resolved += u64::from(row.resolved);
        if let Some(repo) = self.repos.get_mut(&row.repo) {
            repo.0 += 1;
            repo.2 += u64::from(row.resolved);
            if !repo.1.contains(&row.instance_id) {
                repo.1.insert(row.instance_id.clone());
            }
        } else {
            self.repos.insert(
                row.repo.clone(),
                (
                    1,
                    BTreeSet::from([row.instance_id.clone()]),
                    u64::from(row.resolved),
                ),
            );
        }
        if let Some(n) = self.by_status.get_mut(&row.status) {
            *n += 1;
        } else {
            self.by_status.insert(row.status.clone(), 1);
        }
        if !self.instances.contains(&row.instance_id) {
            self.instances.insert(row.instance_id.clone());
        }
        self.time.wall_ms += row.wall_ms;
        self.time.start_ms += row.start_ms;
        self.time.model_ms += row.model_ms;
        self.time.tool_ms += row.tool_ms;
        self.time.grade_ms += row.grade_ms;
        self.tokens.prompt += row.prompt_tokens;
        self.tokens.completion += row.completion_tokens;
        self.tokens.total += row.total_tokens;
        self.steps += u64::from(row.n_turns);
        self.format_error_steps += u64::from(row.n_format_errors);
        self.ended_format_errors += u64::from(row.status == "format_errors");
        self.cut_calls += u64::from(row.n_length_cut);
        self.rollouts_with_cut += u64::from(row.n_length_cut > 0);
        for (column, (_, get)) in self.columns.iter_mut().zip(PER_ROLLOUT) {
            column.push(get(row));
        }
    }

    /// Counts one line of `failures.jsonl` (in file order); `committed`: its rollout was committed since.
    pub fn add_failure(&mut self, failure: &RolloutFailure, committed: bool) {
        self.recorded += 1;
        if !committed {
            self.outstanding
                .insert(failure.rollout_id.clone(), failure.error_kind.clone());
        }
    }

    /// The card; `spent` is this invocation's.
    pub fn build(self, spent: &SpentSummary) -> DataCard {
        let Self {
            rollouts,
            resolved,
            repos,
            by_status,
            instances,
            time,
            tokens,
            steps,
            format_error_steps,
            ended_format_errors,
            cut_calls,
            rollouts_with_cut,
            columns,
            outstanding,
            recorded,
        } = self;
        let by_repo = repos
            .into_iter()
            .map(|(repo, (n, ids, ok))| {
                (
                    repo,
                    RepoCounts {
                        rollouts: n,
                        instances: ids.len() as u64,
                        resolved: ok,
                        resolved_rate: ratio(ok, n),
                    },
                )
            })
            .collect();
        let distributions = PER_ROLLOUT
            .into_iter()
            .zip(columns)
            .filter_map(|((name, _), values)| distribution(values).map(|d| (name.to_owned(), d)))
            .collect();
        let mut outstanding_by_kind = BTreeMap::new();
        for kind in outstanding.values() {
            *outstanding_by_kind.entry(kind.clone()).or_insert(0u64) += 1;
        }
        DataCard {
            format: CARD_FORMAT.to_owned(),
            rollouts,
            instances: instances.len() as u64,
            resolved,
            resolved_rate: ratio(resolved, rollouts),
            by_repo,
            by_status,
            distributions,
            format_errors: FormatErrorStats {
                steps,
                format_error_steps,
                step_rate: ratio(format_error_steps, steps),
                rollouts_ended_format_errors: ended_format_errors,
                rollout_share: ratio(ended_format_errors, rollouts),
            },
            length_cut: LengthCutStats {
                cut_calls,
                per_step: ratio(cut_calls, steps),
                rollouts_with_cut,
                rollout_share: ratio(rollouts_with_cut, rollouts),
            },
            time_ms: time,
            tokens,
            this_invocation: spent.clone(),
            failures: FailureStats {
                outstanding_rollouts: outstanding.len() as u64,
                outstanding_by_kind,
                recorded,
            },
        }
    }
}

/// `data_card.json`: the card as JSON with every object's keys sorted, ending in a newline.
pub fn to_json(card: &DataCard) -> String {
    // Through a Value: its maps are sorted by key (serde_json is built without `preserve_order`).
    let value = serde_json::to_value(card).unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1e3)
}

/// `data_card.md`: tables for a person.
pub fn to_markdown(card: &DataCard) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Harvest data card\n");
    let _ = writeln!(
        md,
        "{} committed rollouts of {} instances; {} resolved ({}).\n",
        card.rollouts,
        card.instances,
        card.resolved,
        percent(card.resolved_rate)
    );
    let _ = writeln!(md, "## By repository\n");
    let _ = writeln!(
        md,
        "| repo | instances | rollouts | resolved | resolved rate |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (repo, counts) in &card.by_repo {
        let _ = writeln!(
            md,
            "| {repo} | {} | {} | {} | {} |",
            counts.instances,
            counts.rollouts,
            counts.resolved,
            percent(counts.resolved_rate)
        );
    }
    let _ = writeln!(md, "\n## By status\n");
    let _ = writeln!(md, "| status | rollouts | share |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (status, n) in &card.by_status {
        let _ = writeln!(
            md,
            "| {status} | {n} | {} |",
            percent(ratio(*n, card.rollouts))
        );
    }
    let _ = writeln!(md, "\n## Per rollout\n");
    let _ = writeln!(md, "| measure | n | min | p50 | p90 | p99 | max | mean |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, d) in &card.distributions {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {:.1} |",
            d.n, d.min, d.p50, d.p90, d.p99, d.max, d.mean
        );
    }
    let f = &card.format_errors;
    let l = &card.length_cut;
    let _ = writeln!(md, "\n## Format errors and length cuts\n");
    let _ = writeln!(md, "| measure | count | rate |");
    let _ = writeln!(md, "|---|---:|---:|");
    let _ = writeln!(
        md,
        "| format-error steps (of {} steps) | {} | {} |",
        f.steps,
        f.format_error_steps,
        percent(f.step_rate)
    );
    let _ = writeln!(
        md,
        "| rollouts ended `format_errors` | {} | {} |",
        f.rollouts_ended_format_errors,
        percent(f.rollout_share)
    );
    let _ = writeln!(
        md,
        "| model calls cut at max tokens (per step) | {} | {} |",
        l.cut_calls,
        percent(l.per_step)
    );
    let _ = writeln!(
        md,
        "| rollouts with a length cut | {} | {} |",
        l.rollouts_with_cut,
        percent(l.rollout_share)
    );
    let t = &card.time_ms;
    let s = &card.this_invocation;
    let _ = writeln!(md, "\n## Time and tokens\n");
    let _ = writeln!(md, "| | all committed rollouts | this invocation |");
    let _ = writeln!(md, "|---|---:|---:|");
    for (name, all, this) in [
        ("rollout wall, s", t.wall_ms, s.time.wall_ms),
        ("sandbox start, s", t.start_ms, s.time.start_ms),
        ("model, s", t.model_ms, s.time.model_ms),
        ("tools, s", t.tool_ms, s.time.tool_ms),
        ("grading, s", t.grade_ms, s.time.grade_ms),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} |", secs(all), secs(this));
    }
    let _ = writeln!(
        md,
        "| invocation wall, s | | {} |",
        secs(s.invocation_wall_ms)
    );
    let _ = writeln!(
        md,
        "| prompt tokens | {} | {} |",
        card.tokens.prompt, s.prompt_tokens
    );
    let _ = writeln!(
        md,
        "| completion tokens | {} | {} |",
        card.tokens.completion, s.completion_tokens
    );
    let _ = writeln!(
        md,
        "| rollouts committed | {} | {} |",
        card.rollouts, s.committed_new
    );
    let _ = writeln!(md, "\n## Failures\n");
    let _ = writeln!(
        md,
        "{} failure records; {} rollouts still failed (retried by the next invocation unless given up below).\n",
        card.failures.recorded, card.failures.outstanding_rollouts
    );
    let kinds: BTreeSet<&String> = card
        .failures
        .outstanding_by_kind
        .keys()
        .chain(s.failures_by_kind.keys())
        .collect();
    let _ = writeln!(md, "| kind | still failed | this invocation |");
    let _ = writeln!(md, "|---|---:|---:|");
    for kind in kinds {
        let _ = writeln!(
            md,
            "| {kind} | {} | {} |",
            card.failures.outstanding_by_kind.get(kind).unwrap_or(&0),
            s.failures_by_kind.get(kind).unwrap_or(&0)
        );
    }
    if !s.given_up.is_empty() {
        let _ = writeln!(
            md,
            "\n{} rollouts given up (not run again; `--retry-given-up` runs them once more):\n",
            s.given_up.len()
        );
        for rollout in s.given_up.iter().take(50) {
            let _ = writeln!(md, "- {rollout}");
        }
        if s.given_up.len() > 50 {
            let _ = writeln!(md, "- … ({} more in data_card.json)", s.given_up.len() - 50);
        }
    }
    md
}

/// Writes `data_card.json` and `data_card.md` into `dir` (each atomically).
pub fn write(dir: &Path, card: &DataCard) -> Result<(), StoreError> {
    write_atomically(&dir.join(CARD_JSON), to_json(card).as_bytes())?;
    write_atomically(&dir.join(CARD_MD), to_markdown(card).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::store::tests::line;
    use crate::harvest::store::{summarize, FrameLocation};

    /// A row with the numbers the card reads set by hand.
    #[allow(clippy::too_many_arguments)]
    fn row(
        k: u32,
        repo: &str,
        instance: &str,
        resolved: bool,
        status: &str,
        turns: u32,
        format_errors: u32,
        cuts: u32,
    ) -> ManifestRow {
        let mut row = summarize(
            &line(instance, k, 1, 1),
            FrameLocation {
                shard: "s".into(),
                offset: 0,
                length: 1,
                bytes: 1,
            },
        );
        let n = u64::from(k + 1);
        row.repo = repo.into();
        row.resolved = resolved;
        row.status = status.into();
        row.n_turns = turns;
        row.n_format_errors = format_errors;
        row.n_length_cut = cuts;
        row.prompt_tokens = 90 * n;
        row.completion_tokens = 10 * n;
        row.total_tokens = 100 * n;
        row.obs_bytes_max = 5 * n;
        row.obs_bytes_total = 8 * n;
        row.bytes = 1000 * n;
        row.wall_ms = 1000 * n;
        row.start_ms = 100;
        row.model_ms = 200;
        row.tool_ms = 300;
        row.grade_ms = 400;
        row
    }

    fn failure(rollout_id: &str, kind: &str) -> RolloutFailure {
        RolloutFailure {
            rollout_id: rollout_id.into(),
            instance_id: "i9".into(),
            sample_idx: 0,
            error_kind: kind.into(),
            error: "e".into(),
            at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn the_card_counts_exactly_and_is_deterministic() {
        let rows = vec![
            row(0, "a/x", "i1", true, "submitted", 2, 0, 0),
            row(1, "a/x", "i1", false, "format_errors", 4, 3, 1),
            row(2, "b/y", "i2", true, "submitted", 6, 0, 2),
            row(3, "b/y", "i3", false, "max_turns", 8, 0, 0),
        ];
        let failures = vec![
            failure("x", "image_missing"),
            failure("x", "model_unavailable"),
            failure(&rows[0].rollout_id, "sandbox"),
        ];
        let mut spent = SpentSummary {
            invocation_wall_ms: 60_000,
            committed_new: 2,
            prompt_tokens: 5,
            completion_tokens: 6,
            ..SpentSummary::default()
        };
        spent.failures_by_kind.insert("image_missing".into(), 1);
        spent
            .given_up
            .push("o__r-9 s1: 3 failures, last model_endpoint".into());
        let card = build(&rows, &failures, &spent);
        assert_eq!((card.rollouts, card.instances, card.resolved), (4, 3, 2));
        assert_eq!(card.resolved_rate, 0.5);
        assert_eq!(
            card.by_repo["a/x"],
            RepoCounts {
                rollouts: 2,
                instances: 1,
                resolved: 1,
                resolved_rate: 0.5
            }
        );
        assert_eq!(card.by_repo["b/y"].instances, 2);
        assert_eq!(
            card.by_status,
            BTreeMap::from([
                ("format_errors".to_owned(), 1),
                ("max_turns".to_owned(), 1),
                ("submitted".to_owned(), 2)
            ])
        );
        assert_eq!(
            card.distributions["turns"],
            Distribution {
                n: 4,
                min: 2,
                p50: 4,
                p90: 8,
                p99: 8,
                max: 8,
                mean: 5.0
            }
        );
        assert_eq!(
            card.distributions["total_tokens"],
            Distribution {
                n: 4,
                min: 100,
                p50: 200,
                p90: 400,
                p99: 400,
                max: 400,
                mean: 250.0
            }
        );
        assert_eq!(card.distributions["completion_tokens"].mean, 25.0);
        assert_eq!(card.distributions["obs_bytes_max"].max, 20);
        assert_eq!(card.distributions["obs_bytes_total"].min, 8);
        assert_eq!(card.distributions["bytes"].p50, 2000);
        assert_eq!(card.distributions.len(), 6);
        assert_eq!(
            card.format_errors,
            FormatErrorStats {
                steps: 20,
                format_error_steps: 3,
                step_rate: 0.15,
                rollouts_ended_format_errors: 1,
                rollout_share: 0.25
            }
        );
        assert_eq!(
            card.length_cut,
            LengthCutStats {
                cut_calls: 3,
                per_step: 0.15,
                rollouts_with_cut: 2,
                rollout_share: 0.5
            }
        );
        assert_eq!(
            card.time_ms,
            TimeSums {
                wall_ms: 10_000,
                start_ms: 400,
                model_ms: 800,
                tool_ms: 1200,
                grade_ms: 1600
            }
        );
        assert_eq!(
            card.tokens,
            TokenSums {
                prompt: 900,
                completion: 100,
                total: 1000
            }
        );
        // The latest failure of a rollout that is still not committed counts; a committed one does not.
        assert_eq!(
            card.failures,
            FailureStats {
                outstanding_by_kind: BTreeMap::from([("model_unavailable".to_owned(), 1)]),
                outstanding_rollouts: 1,
                recorded: 3
            }
        );
        assert_eq!(card.this_invocation, spent);

        let json = to_json(&card);
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(to_json(&build(&reversed, &failures, &spent)), json);
        assert_eq!(
            serde_json::from_str::<DataCard>(&json).unwrap(),
            card,
            "the JSON reads back"
        );
        assert!(json.find("\"by_repo\"").unwrap() < json.find("\"by_status\"").unwrap());
        // Sorted, not in declaration order (time_ms, tokens, this_invocation).
        assert!(json.find("\"this_invocation\"").unwrap() < json.find("\"time_ms\"").unwrap());

        let md = to_markdown(&card);
        assert!(
            md.contains("4 committed rollouts of 3 instances; 2 resolved (50.0%)."),
            "{md}"
        );
        assert!(md.contains("| a/x | 1 | 2 | 1 | 50.0% |"), "{md}");
        assert!(
            md.contains("| turns | 4 | 2 | 4 | 8 | 8 | 8 | 5.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| format-error steps (of 20 steps) | 3 | 15.0% |"),
            "{md}"
        );
        assert!(md.contains("| grading, s | 1.6 | 0.0 |"), "{md}");
        assert!(md.contains("| image_missing | 0 | 1 |"), "{md}");
        assert!(md.contains("| model_unavailable | 1 | 0 |"), "{md}");
        assert!(
            md.contains("1 rollouts given up")
                && md.contains("- o__r-9 s1: 3 failures, last model_endpoint"),
            "{md}"
        );
        assert!(json.contains("o__r-9 s1: 3 failures"), "{json}");
    }

    #[test]
    fn an_empty_harvest_has_a_card() {
        let card = build(&[], &[], &SpentSummary::default());
        assert_eq!((card.rollouts, card.resolved_rate), (0, 0.0));
        assert!(card.distributions.is_empty());
        let md = to_markdown(&card);
        assert!(md.contains("0 committed rollouts"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = distribution((1..=100).collect()).unwrap();
        assert_eq!((d.min, d.p50, d.p90, d.p99, d.max), (1, 50, 90, 99, 100));
        assert_eq!(d.mean, 50.5);
        let one = distribution(vec![7]).unwrap();
        assert_eq!((one.p50, one.p99, one.mean), (7, 7, 7.0));
        assert_eq!(distribution(vec![]), None);
    }
}
