//! The test-time-scaling report (`scaling.json` and the terminal table): pass@1 (mean over samples), pass@K (any
//! sample resolved: the oracle), selected@K per selector, per run and per repository, generated-test validity, and
//! the cost (episodes, model tokens, container-seconds, test runs, wall time).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::select::{Selection, Selector};
use super::testgen::Rejection;
use crate::benchmark::results::InstanceStatus;
use crate::benchmark::summary::RunStats;

/// One solving sample of an instance, as the report sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSummary {
    /// Sample index.
    pub sample: u32,
    /// Its graded outcome (`error`: the sample failed; it counts as not resolved).
    pub status: InstanceStatus,
    /// Model tokens it spent.
    pub tokens: u64,
    /// Wall time of the attempt (episode + grading), ms: its container time.
    pub total_ms: u64,
}

/// One test-generation episode of an instance, as the report sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestgenSummary {
    /// Index of the generated test.
    pub index: u32,
    /// Model tokens the episode spent.
    pub tokens: u64,
    /// Wall time of the episode, ms.
    pub total_ms: u64,
    /// `Some(true)` valid, `Some(false)` rejected (see `reason`), `None`: the episode or its check failed
    /// (infrastructure; `error_kind`).
    pub valid: Option<bool>,
    /// Why it was rejected.
    pub reason: Option<Rejection>,
    /// The failure kind when `valid` is `None`.
    pub error_kind: Option<String>,
    /// Container time of its validity check, ms.
    pub validation_ms: u64,
}

/// Everything the report needs of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceScaling {
    /// Task id.
    pub instance_id: String,
    /// Repository.
    pub repo: String,
    /// Its solving samples (K of them unless the run was interrupted).
    pub samples: Vec<SampleSummary>,
    /// Its test-generation episodes.
    pub testgen: Vec<TestgenSummary>,
    /// One selection per selector of the run.
    pub selections: Vec<Selection>,
    /// Candidate × test runs done for `tests` selection in this invocation.
    pub pair_runs: u32,
    /// Candidate × test runs answered from the cache (`pairs.jsonl`).
    pub pair_cached: u32,
    /// Container time of the pair runs, ms (those done, cached ones included with their recorded time).
    pub pair_ms: u64,
}

/// The run's scaling report (`scaling.json`; `--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct ScalingReport {
    /// Run id.
    pub run_id: String,
    /// Model name.
    pub model: String,
    /// K: solving samples per instance.
    pub samples: u32,
    /// Test-generation episodes per instance.
    pub testgen_samples: u32,
    /// The selectors, in `--select` order.
    pub selectors: Vec<Selector>,
    /// The selector whose choices are report.json (the first that is not `oracle`).
    pub primary: Selector,
    /// Instances in the run.
    pub instances: usize,
    /// Mean over instances of (resolved samples / K); a failed or missing sample counts as not resolved.
    pub pass_at_1: f64,
    /// Fraction of instances with at least one resolved sample.
    pub pass_at_k: f64,
    /// Per selector: fraction of instances whose selected sample is resolved.
    pub selected_at_k: BTreeMap<Selector, f64>,
    /// The same as counts of instances.
    pub resolved: ResolvedCounts,
    /// Per repository.
    pub per_repo: BTreeMap<String, RepoScaling>,
    /// Generated tests.
    pub testgen: TestgenStats,
    /// What it cost.
    pub cost: Cost,
    /// The harness counts of report.json (the primary selector's patches).
    pub stats: RunStats,
}

/// Resolved instances, counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResolvedCounts {
    /// Sum over instances of resolved samples / K (pass@1 × instances).
    pub pass_at_1: f64,
    /// Instances with a resolved sample.
    pub pass_at_k: usize,
    /// Per selector: instances whose selected sample is resolved.
    pub selected: BTreeMap<Selector, usize>,
}

/// One repository's line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoScaling {
    /// Instances of the repository.
    pub instances: usize,
    /// As [`ScalingReport::pass_at_1`], over this repository.
    pub pass_at_1: f64,
    /// As [`ScalingReport::pass_at_k`].
    pub pass_at_k: f64,
    /// As [`ScalingReport::selected_at_k`].
    pub selected_at_k: BTreeMap<Selector, f64>,
}

/// Generated tests over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestgenStats {
    /// Test-generation episodes recorded.
    pub generated: usize,
    /// Valid tests.
    pub valid: usize,
    /// Rejected tests by reason (snake_case names).
    pub rejected: BTreeMap<String, usize>,
    /// Episodes or checks that failed (infrastructure), by error kind.
    pub errors: BTreeMap<String, usize>,
    /// Instances with at least one valid test.
    pub instances_with_valid_test: usize,
}

/// What the run cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Solving episodes.
    pub solve_episodes: usize,
    /// Test-generation episodes.
    pub testgen_episodes: usize,
    /// Model tokens of the solving episodes.
    pub solve_tokens: u64,
    /// Model tokens of the test-generation episodes.
    pub testgen_tokens: u64,
    /// Container-seconds: solving attempts (episode + grading).
    pub solve_container_seconds: f64,
    /// Container-seconds: test-generation episodes.
    pub testgen_container_seconds: f64,
    /// Container-seconds: validity checks of generated tests.
    pub validation_container_seconds: f64,
    /// Container-seconds: candidate × test runs of `tests` selection.
    pub selection_container_seconds: f64,
    /// Sum of the four.
    pub container_seconds: f64,
    /// Candidate × test runs done.
    pub selection_runs: usize,
    /// Candidate × test runs answered from the cache.
    pub selection_runs_cached: usize,
    /// Wall time of this invocation, s.
    pub wall_seconds: f64,
}

/// The report of `instances`. `samples` is K (the denominator of pass@1 even when samples are missing); `stats`
/// the harness counts of the primary selector's patches.
#[allow(clippy::too_many_arguments)]
pub fn scaling_report(
    run_id: &str,
    model: &str,
    samples: u32,
    testgen_samples: u32,
    selectors: &[Selector],
    primary: Selector,
    instances: &[InstanceScaling],
    stats: RunStats,
    wall_seconds: f64,
) -> ScalingReport {
    let k = samples;
    let mut resolved = ResolvedCounts {
        pass_at_1: 0.0,
        pass_at_k: 0,
        selected: selectors.iter().map(|s| (*s, 0)).collect(),
    };
    let mut per_repo_counts: BTreeMap<String, (usize, ResolvedCounts)> = BTreeMap::new();
    for instance in instances {
        let figures = InstanceFigures::of(instance, k, selectors);
        resolved.add(&figures);
        let (count, repo) = per_repo_counts
            .entry(instance.repo.clone())
            .or_insert_with(|| {
                (
                    0,
                    ResolvedCounts {
                        pass_at_1: 0.0,
                        pass_at_k: 0,
                        selected: selectors.iter().map(|s| (*s, 0)).collect(),
                    },
                )
            });
        *count += 1;
        repo.add(&figures);
    }
    let n = instances.len();
    let selected_at_k = fractions(&resolved.selected, n);
    let per_repo = per_repo_counts
        .into_iter()
        .map(|(repo, (count, counts))| {
            let line = RepoScaling {
                instances: count,
                pass_at_1: ratio(counts.pass_at_1, count),
                pass_at_k: ratio(counts.pass_at_k as f64, count),
                selected_at_k: fractions(&counts.selected, count),
            };
            (repo, line)
        })
        .collect();
    ScalingReport {
        run_id: run_id.to_owned(),
        model: model.to_owned(),
        samples,
        testgen_samples,
        selectors: selectors.to_vec(),
        primary,
        instances: n,
        pass_at_1: ratio(resolved.pass_at_1, n),
        pass_at_k: ratio(resolved.pass_at_k as f64, n),
        selected_at_k,
        resolved,
        per_repo,
        testgen: testgen_stats(instances),
        cost: cost(instances, wall_seconds),
        stats,
    }
}

/// One instance's contribution to the resolved counts.
struct InstanceFigures {
    /// Resolved samples / K.
    pass_at_1: f64,
    /// At least one resolved sample.
    any_resolved: bool,
    /// The selectors whose selected sample is resolved.
    selected: Vec<Selector>,
}

impl InstanceFigures {
    fn of(instance: &InstanceScaling, k: u32, selectors: &[Selector]) -> Self {
        let resolved: BTreeSet<u32> = instance
            .samples
            .iter()
            .filter(|s| s.status == InstanceStatus::Resolved)
            .map(|s| s.sample)
            .collect();
        // Distinct sample indices, capped at K: a sample recorded twice or beyond K cannot push pass@1 over 1.
        let resolved_count = resolved.len().min(k as usize);
        let pass_at_1 = if k == 0 {
            0.0
        } else {
            resolved_count as f64 / f64::from(k)
        };
        let selected = selectors
            .iter()
            .copied()
            .filter(|selector| {
                instance
                    .selections
                    .iter()
                    .find(|selection| selection.selector == *selector)
                    .and_then(|selection| selection.sample)
                    .is_some_and(|sample| resolved.contains(&sample))
            })
            .collect();
        Self {
            pass_at_1,
            any_resolved: !resolved.is_empty(),
            selected,
        }
    }
}

impl ResolvedCounts {
    fn add(&mut self, figures: &InstanceFigures) {
        self.pass_at_1 += figures.pass_at_1;
        if figures.any_resolved {
            self.pass_at_k += 1;
        }
        for selector in &figures.selected {
            *self.selected.entry(*selector).or_default() += 1;
        }
    }
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: f64, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part / whole as f64
    }
}

fn fractions(counts: &BTreeMap<Selector, usize>, whole: usize) -> BTreeMap<Selector, f64> {
    counts
        .iter()
        .map(|(selector, count)| (*selector, ratio(*count as f64, whole)))
        .collect()
}

fn testgen_stats(instances: &[InstanceScaling]) -> TestgenStats {
    let mut stats = TestgenStats::default();
    for instance in instances {
        let mut any_valid = false;
        for test in &instance.testgen {
            stats.generated += 1;
            match test.valid {
                Some(true) => {
                    stats.valid += 1;
                    any_valid = true;
                }
                Some(false) => {
                    let reason = test.reason.map_or("unknown", |r| r.as_str());
                    *stats.rejected.entry(reason.to_owned()).or_default() += 1;
                }
                None => {
                    let kind = test.error_kind.as_deref().unwrap_or("error");
                    *stats.errors.entry(kind.to_owned()).or_default() += 1;
                }
            }
        }
        if any_valid {
            stats.instances_with_valid_test += 1;
        }
    }
    stats
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn cost(instances: &[InstanceScaling], wall_seconds: f64) -> Cost {
    let mut cost = Cost {
        wall_seconds,
        ..Cost::default()
    };
    let (mut solve_ms, mut testgen_ms, mut validation_ms, mut selection_ms) =
        (0u64, 0u64, 0u64, 0u64);
    for instance in instances {
        for sample in &instance.samples {
            cost.solve_episodes += 1;
            cost.solve_tokens = cost.solve_tokens.saturating_add(sample.tokens);
            solve_ms = solve_ms.saturating_add(sample.total_ms);
        }
        for test in &instance.testgen {
            cost.testgen_episodes += 1;
            cost.testgen_tokens = cost.testgen_tokens.saturating_add(test.tokens);
            testgen_ms = testgen_ms.saturating_add(test.total_ms);
            validation_ms = validation_ms.saturating_add(test.validation_ms);
        }
        selection_ms = selection_ms.saturating_add(instance.pair_ms);
        cost.selection_runs += instance.pair_runs as usize;
        cost.selection_runs_cached += instance.pair_cached as usize;
    }
    cost.solve_container_seconds = seconds(solve_ms);
    cost.testgen_container_seconds = seconds(testgen_ms);
    cost.validation_container_seconds = seconds(validation_ms);
    cost.selection_container_seconds = seconds(selection_ms);
    cost.container_seconds = cost.solve_container_seconds
        + cost.testgen_container_seconds
        + cost.validation_container_seconds
        + cost.selection_container_seconds;
    cost
}

/// A fraction as a percentage with one decimal (`41.7%`).
fn pct(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// `name n, name n` of a count map, `none` when empty.
fn counts_list(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terminal table: one line per run figure, one per repository, the generated tests, the cost.
pub fn render_scaling_table(report: &ScalingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} · {} · K={} samples, M={} generated tests per instance",
        report.run_id, report.model, report.samples, report.testgen_samples
    );
    let selected: Vec<String> = report
        .selectors
        .iter()
        .map(|selector| {
            let value = report.selected_at_k.get(selector).copied().unwrap_or(0.0);
            let primary = if *selector == report.primary {
                " (primary)"
            } else {
                ""
            };
            format!("{} {}{primary}", selector.as_str(), pct(value))
        })
        .collect();
    let _ = writeln!(
        out,
        "instances {}  pass@1 {}  pass@K {}  selected@K: {}",
        report.instances,
        pct(report.pass_at_1),
        pct(report.pass_at_k),
        if selected.is_empty() {
            "none".to_owned()
        } else {
            selected.join(", ")
        }
    );
    if !report.per_repo.is_empty() {
        let _ = writeln!(out, "per repo:");
        let name_width = report
            .per_repo
            .keys()
            .map(|repo| repo.chars().count())
            .chain(std::iter::once("repo".len()))
            .max()
            .unwrap_or(4);
        let mut header = format!(
            "  {:<name_width$}  {:>9}  {:>6}  {:>6}",
            "repo", "instances", "pass@1", "pass@K"
        );
        let widths: Vec<usize> = report
            .selectors
            .iter()
            .map(|selector| selector.as_str().len().max(6))
            .collect();
        for (selector, width) in report.selectors.iter().zip(&widths) {
            let _ = write!(header, "  {:>width$}", selector.as_str());
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for (repo, line) in &report.per_repo {
            let mut row = format!(
                "  {:<name_width$}  {:>9}  {:>6}  {:>6}",
                repo,
                line.instances,
                pct(line.pass_at_1),
                pct(line.pass_at_k)
            );
            for (selector, width) in report.selectors.iter().zip(&widths) {
                let value = line.selected_at_k.get(selector).copied().unwrap_or(0.0);
                let _ = write!(row, "  {:>width$}", pct(value));
            }
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }
    let testgen = &report.testgen;
    let _ = writeln!(
        out,
        "generated tests: {}, valid {} (instances with a valid test {}); rejected: {}; errors: {}",
        testgen.generated,
        testgen.valid,
        testgen.instances_with_valid_test,
        counts_list(&testgen.rejected),
        counts_list(&testgen.errors)
    );
    let cost = &report.cost;
    let _ = writeln!(
        out,
        "cost: {} episodes ({} solve + {} testgen), tokens {} (solve {}, testgen {}), container-seconds {:.1} \
         (solve {:.1}, testgen {:.1}, validation {:.1}, selection {:.1}), test runs {} (+{} cached), wall {:.1}s",
        cost.solve_episodes + cost.testgen_episodes,
        cost.solve_episodes,
        cost.testgen_episodes,
        cost.solve_tokens.saturating_add(cost.testgen_tokens),
        cost.solve_tokens,
        cost.testgen_tokens,
        cost.container_seconds,
        cost.solve_container_seconds,
        cost.testgen_container_seconds,
        cost.validation_container_seconds,
        cost.selection_container_seconds,
        cost.selection_runs,
        cost.selection_runs_cached,
        cost.wall_seconds
    );
    let stats = &report.stats;
    let _ = writeln!(
        out,
        "report.json: resolved {}/{} of the {} selection ({:.1}%); submitted {}, completed {}, unresolved {}, \
         empty patch {}, error {}, incomplete {}",
        stats.resolved,
        stats.total,
        report.primary.as_str(),
        stats.resolved_pct,
        stats.submitted,
        stats.completed,
        stats.unresolved,
        stats.empty_patch,
        stats.error,
        stats.incomplete
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmark::results::InstanceResult;
    use crate::benchmark::summary::{run_stats, run_summary};
    use crate::scaling::select::DecidedBy;
    use swe_env_grading::report::InstanceReport;

    const EPS: f64 = 1e-9;

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < EPS,
            "expected {expected}, got {actual}"
        );
    }

    fn sample(k: u32, status: InstanceStatus) -> SampleSummary {
        SampleSummary {
            sample: k,
            status,
            tokens: 100 + 10 * u64::from(k),
            total_ms: 1000 + 100 * u64::from(k),
        }
    }

    fn samples(statuses: &[InstanceStatus]) -> Vec<SampleSummary> {
        statuses
            .iter()
            .zip(0u32..)
            .map(|(status, k)| sample(k, *status))
            .collect()
    }

    fn test(
        index: u32,
        valid: Option<bool>,
        reason: Option<Rejection>,
        kind: Option<&str>,
    ) -> TestgenSummary {
        TestgenSummary {
            index,
            tokens: 50,
            total_ms: 2000,
            valid,
            reason,
            error_kind: kind.map(str::to_owned),
            validation_ms: 250,
        }
    }

    fn chose(selector: Selector, sample: Option<u32>) -> Selection {
        Selection {
            selector,
            sample,
            decided_by: if sample.is_some() {
                DecidedBy::Majority
            } else {
                DecidedBy::NoCandidate
            },
            votes: BTreeMap::new(),
            tests_passed: BTreeMap::new(),
        }
    }

    fn instance(
        id: &str,
        repo: &str,
        samples: Vec<SampleSummary>,
        testgen: Vec<TestgenSummary>,
        choices: [Option<u32>; 3],
        pairs: (u32, u32, u64),
    ) -> InstanceScaling {
        InstanceScaling {
            instance_id: id.to_owned(),
            repo: repo.to_owned(),
            samples,
            testgen,
            selections: vec![
                chose(Selector::Tests, choices[0]),
                chose(Selector::Majority, choices[1]),
                chose(Selector::Oracle, choices[2]),
            ],
            pair_runs: pairs.0,
            pair_cached: pairs.1,
            pair_ms: pairs.2,
        }
    }

    /// The harness counts of the primary selection: `(id, repo, status)`.
    fn stats_of(rows: &[(&str, &str, InstanceStatus)]) -> RunStats {
        let results: Vec<InstanceResult> = rows
            .iter()
            .map(|(id, repo, status)| {
                let mut result = InstanceResult::error(id, repo, "sandbox", "test".to_owned());
                result.status = *status;
                if *status != InstanceStatus::Error {
                    result.error_kind = None;
                    result.error = None;
                    result.submission = Some("diff --git a/x b/x\n".to_owned());
                    result.report = Some(InstanceReport {
                        patch_exists: true,
                        patch_successfully_applied: true,
                        resolved: *status == InstanceStatus::Resolved,
                        ..InstanceReport::default()
                    });
                }
                result
            })
            .collect();
        let ids: Vec<String> = rows.iter().map(|(id, _, _)| (*id).to_owned()).collect();
        let summary = run_summary(&ids, &results);
        run_stats("run-1", "model-x", &summary, 0, &results, 12.5)
    }

    const ALL: [Selector; 3] = [Selector::Tests, Selector::Majority, Selector::Oracle];

    /// 3 instances × K=3 over 2 repositories.
    fn three_by_three() -> ScalingReport {
        use InstanceStatus::{Error, Resolved, Unresolved};
        let instances = vec![
            instance(
                "alpha-1",
                "org/alpha",
                samples(&[Resolved, Unresolved, Resolved]),
                vec![
                    test(0, Some(true), None, None),
                    test(1, Some(false), Some(Rejection::NotReproduced), None),
                ],
                [Some(2), Some(1), Some(0)],
                (6, 3, 3000),
            ),
            instance(
                "alpha-2",
                "org/alpha",
                samples(&[Unresolved, Error, Unresolved]),
                vec![
                    test(0, Some(false), Some(Rejection::PrintsResolvedAtBase), None),
                    test(1, None, None, Some("sandbox")),
                ],
                [Some(0), Some(0), Some(0)],
                (0, 0, 0),
            ),
            instance(
                "beta-1",
                "org/beta",
                samples(&[Unresolved, Resolved, Error]),
                vec![test(0, Some(true), None, None), test(1, None, None, None)],
                [Some(1), Some(1), Some(1)],
                (2, 0, 1200),
            ),
        ];
        let stats = stats_of(&[
            ("alpha-1", "org/alpha", Resolved),
            ("alpha-2", "org/alpha", Unresolved),
            ("beta-1", "org/beta", Resolved),
        ]);
        scaling_report(
            "run-1",
            "model-x",
            3,
            2,
            &ALL,
            Selector::Tests,
            &instances,
            stats,
            12.5,
        )
    }

    #[test]
    fn exact_figures_of_three_instances_by_three_samples() {
        let report = three_by_three();
        assert_eq!(report.run_id, "run-1");
        assert_eq!(report.model, "model-x");
        assert_eq!(report.samples, 3);
        assert_eq!(report.testgen_samples, 2);
        assert_eq!(report.selectors, ALL.to_vec());
        assert_eq!(report.primary, Selector::Tests);
        assert_eq!(report.instances, 3);
        // (2/3 + 0/3 + 1/3) / 3
        close(report.pass_at_1, 1.0 / 3.0);
        close(report.pass_at_k, 2.0 / 3.0);
        assert_eq!(report.selected_at_k.len(), 3);
        close(report.selected_at_k[&Selector::Tests], 2.0 / 3.0);
        close(report.selected_at_k[&Selector::Majority], 1.0 / 3.0);
        close(report.selected_at_k[&Selector::Oracle], 2.0 / 3.0);

        close(report.resolved.pass_at_1, 1.0);
        assert_eq!(report.resolved.pass_at_k, 2);
        assert_eq!(
            report.resolved.selected,
            BTreeMap::from([
                (Selector::Tests, 2),
                (Selector::Majority, 1),
                (Selector::Oracle, 2)
            ])
        );

        assert_eq!(
            report.per_repo.keys().collect::<Vec<_>>(),
            ["org/alpha", "org/beta"]
        );
        let alpha = &report.per_repo["org/alpha"];
        assert_eq!(alpha.instances, 2);
        close(alpha.pass_at_1, 1.0 / 3.0);
        close(alpha.pass_at_k, 0.5);
        close(alpha.selected_at_k[&Selector::Tests], 0.5);
        close(alpha.selected_at_k[&Selector::Majority], 0.0);
        close(alpha.selected_at_k[&Selector::Oracle], 0.5);
        let beta = &report.per_repo["org/beta"];
        assert_eq!(beta.instances, 1);
        close(beta.pass_at_1, 1.0 / 3.0);
        close(beta.pass_at_k, 1.0);
        for selector in ALL {
            close(beta.selected_at_k[&selector], 1.0);
        }

        assert_eq!(
            report.testgen,
            TestgenStats {
                generated: 6,
                valid: 2,
                rejected: BTreeMap::from([
                    ("not_reproduced".to_owned(), 1),
                    ("prints_resolved_at_base".to_owned(), 1)
                ]),
                errors: BTreeMap::from([("error".to_owned(), 1), ("sandbox".to_owned(), 1)]),
                instances_with_valid_test: 2,
            }
        );

        let cost = &report.cost;
        assert_eq!(cost.solve_episodes, 9);
        assert_eq!(cost.testgen_episodes, 6);
        assert_eq!(cost.solve_tokens, 3 * (100 + 110 + 120));
        assert_eq!(cost.testgen_tokens, 6 * 50);
        close(cost.solve_container_seconds, 3.0 * 3.3);
        close(cost.testgen_container_seconds, 12.0);
        close(cost.validation_container_seconds, 1.5);
        close(cost.selection_container_seconds, 4.2);
        close(cost.container_seconds, 9.9 + 12.0 + 1.5 + 4.2);
        assert_eq!(cost.selection_runs, 8);
        assert_eq!(cost.selection_runs_cached, 3);
        close(cost.wall_seconds, 12.5);

        assert_eq!(report.stats.resolved, 2);
        assert_eq!(report.stats.total, 3);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["selected_at_k"]["tests"], serde_json::json!(2.0 / 3.0));
        assert_eq!(json["resolved"]["selected"]["majority"], 1);
        assert_eq!(json["per_repo"]["org/beta"]["instances"], 1);
        assert_eq!(json["stats"]["resolved"], 2);
    }

    #[test]
    fn an_instance_whose_samples_all_failed_counts_as_unresolved() {
        use InstanceStatus::{Error, Resolved};
        let instances = vec![
            instance(
                "a-1",
                "org/a",
                samples(&[Error, Error, Error]),
                vec![test(0, None, None, Some("model"))],
                [None, None, None],
                (0, 0, 0),
            ),
            instance(
                "a-2",
                "org/a",
                samples(&[Error, Resolved, Error]),
                Vec::new(),
                [Some(1), Some(1), Some(1)],
                (0, 0, 0),
            ),
        ];
        let stats = stats_of(&[("a-1", "org/a", Error), ("a-2", "org/a", Resolved)]);
        let report = scaling_report(
            "r",
            "m",
            3,
            1,
            &ALL,
            Selector::Tests,
            &instances,
            stats,
            0.0,
        );
        close(report.pass_at_1, (0.0 + 1.0 / 3.0) / 2.0);
        close(report.pass_at_k, 0.5);
        for selector in ALL {
            close(report.selected_at_k[&selector], 0.5);
            assert_eq!(report.resolved.selected[&selector], 1);
        }
        assert_eq!(
            report.testgen.errors,
            BTreeMap::from([("model".to_owned(), 1)])
        );
        assert_eq!(report.testgen.instances_with_valid_test, 0);
        assert_eq!(report.cost.solve_episodes, 6);
        let table = render_scaling_table(&report);
        assert!(table.contains("errors: model 1"), "{table}");
        assert!(table.contains("rejected: none"), "{table}");
    }

    #[test]
    fn k_larger_than_the_recorded_samples_divides_by_k() {
        use InstanceStatus::{Resolved, Unresolved};
        // K=4 but only 2 samples recorded (an interrupted run): pass@1 = 2/4, not 2/2. A selection naming a
        // sample that was never recorded is not resolved.
        let instances = vec![instance(
            "a-1",
            "org/a",
            samples(&[Resolved, Resolved]),
            Vec::new(),
            [Some(0), Some(3), None],
            (0, 0, 0),
        )];
        let stats = stats_of(&[("a-1", "org/a", Resolved)]);
        let report = scaling_report(
            "r",
            "m",
            4,
            0,
            &ALL,
            Selector::Tests,
            &instances,
            stats,
            1.0,
        );
        close(report.pass_at_1, 0.5);
        close(report.resolved.pass_at_1, 0.5);
        close(report.pass_at_k, 1.0);
        close(report.selected_at_k[&Selector::Tests], 1.0);
        close(report.selected_at_k[&Selector::Majority], 0.0);
        close(report.selected_at_k[&Selector::Oracle], 0.0);
        close(report.per_repo["org/a"].pass_at_1, 0.5);
        assert_eq!(report.cost.solve_episodes, 2);

        // The same sample recorded twice counts once; pass@1 never exceeds 1.
        let mut twice = instances[0].clone();
        twice.samples.push(sample(1, Resolved));
        twice.samples.push(sample(2, Unresolved));
        let report = scaling_report(
            "r",
            "m",
            2,
            0,
            &[Selector::Majority],
            Selector::Majority,
            &[twice],
            stats_of(&[("a-1", "org/a", Resolved)]),
            1.0,
        );
        close(report.pass_at_1, 1.0);
    }

    #[test]
    fn no_instances_give_zeros_and_every_selector_key() {
        let report = scaling_report(
            "r",
            "m",
            3,
            0,
            &[Selector::Majority, Selector::Oracle],
            Selector::Majority,
            &[],
            stats_of(&[]),
            0.0,
        );
        assert_eq!(report.instances, 0);
        close(report.pass_at_1, 0.0);
        close(report.pass_at_k, 0.0);
        assert_eq!(
            report.selected_at_k,
            BTreeMap::from([(Selector::Majority, 0.0), (Selector::Oracle, 0.0)])
        );
        assert_eq!(
            report.resolved.selected,
            BTreeMap::from([(Selector::Majority, 0), (Selector::Oracle, 0)])
        );
        assert!(report.per_repo.is_empty());
        let table = render_scaling_table(&report);
        assert!(!table.contains("per repo:"), "{table}");
        assert!(
            table.contains("selected@K: majority 0.0% (primary), oracle 0.0%"),
            "{table}"
        );
    }

    #[test]
    fn the_table_holds_the_figures_and_no_escape_codes() {
        let table = render_scaling_table(&three_by_three());
        assert!(!table.contains('\x1b'), "{table}");
        let expected = "\
run run-1 · model-x · K=3 samples, M=2 generated tests per instance
instances 3  pass@1 33.3%  pass@K 66.7%  selected@K: tests 66.7% (primary), majority 33.3%, oracle 66.7%
per repo:
  repo       instances  pass@1  pass@K   tests  majority  oracle
  org/alpha          2   33.3%   50.0%   50.0%      0.0%   50.0%
  org/beta           1   33.3%  100.0%  100.0%    100.0%  100.0%
generated tests: 6, valid 2 (instances with a valid test 2); rejected: not_reproduced 1, prints_resolved_at_base 1; errors: error 1, sandbox 1
cost: 15 episodes (9 solve + 6 testgen), tokens 1290 (solve 990, testgen 300), container-seconds 27.6 (solve 9.9, testgen 12.0, validation 1.5, selection 4.2), test runs 8 (+3 cached), wall 12.5s
report.json: resolved 2/3 of the tests selection (66.7%); submitted 3, completed 3, unresolved 1, empty patch 0, error 0, incomplete 0
";
        assert_eq!(table, expected, "\n{table}");
    }
}
