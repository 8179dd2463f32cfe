//! The scaled run: (1) every instance's K solving samples and M test-generation episodes on the benchmark's worker
//! loop (each sample an attempt of the benchmark path with its own episode id and seed; each test-generation
//! episode an ungraded attempt whose script is then checked at the base commit); (2) every distinct candidate patch
//! against every valid generated test, in fresh containers, answers cached in `pairs.jsonl`; (3) one selection per
//! selector; (4) the outputs: report.json and friends of the primary selection, `report-<selector>.json` of the
//! others, `selection.jsonl`, `scaling.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swe_env_grading::dataset::Instance;
use swe_env_sandbox::{DockerEngine, SandboxError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{
    scaling_report, InstanceScaling, SampleSummary, ScalingReport, TestgenSummary,
};
use super::select::{majority_key, select, Candidate, Selection, Selector, TestEvidence};
use super::store::{PairRecord, SampleRecord, Store, TestgenRecord, REPORT_FILE, SELECTION_FILE};
use super::testgen::{run_test_on_patch, validate_test, TestgenError};
use super::ScalingConfig;
use crate::benchmark::results::{InstanceResult, InstanceStatus};
use crate::benchmark::summary::{finish_run, run_stats, run_summary};
use crate::benchmark::{
    rollout_seed, run_workers, AgentSpec, AttemptKind, AttemptSpec, Attempts, Job, ModelAgent,
    Progress, RunConfig,
};
use crate::trajectory::digest::sha256_hex;

/// What a scaled run produced.
#[derive(Debug)]
pub struct ScaledOutcome {
    /// The report (also written as `scaling.json`).
    pub report: ScalingReport,
    /// The primary selector's results (one per instance: the selected sample's), as report.json counts them.
    pub results: Vec<InstanceResult>,
    /// Samples, test-generation episodes and pair runs that failed on infrastructure (recorded, retried by
    /// `--retry-errors` / the next invocation for pairs).
    pub failures: usize,
    /// Interrupted (Ctrl-C / SIGTERM): nothing of the selection was written; the recorded work is kept.
    pub interrupted: bool,
}

/// One unit of the worker loop.
enum Work {
    Solve {
        instance: Arc<Instance>,
        sample: u32,
    },
    Testgen {
        instance: Arc<Instance>,
        index: u32,
    },
    Pair(Box<PairWork>),
}

struct PairWork {
    instance: Arc<Instance>,
    patch: Arc<str>,
    patch_sha256: String,
    script: Arc<str>,
    test_sha256: String,
}

enum Done {
    Sample(Box<SampleRecord>),
    Testgen(Box<TestgenRecord>),
    Pair(Result<PairRecord, (String, String)>),
}

/// What is kept of a job to make its output if it panics.
enum WorkKey {
    Solve(String, String, u32),
    Testgen(String, String, u32),
    Pair(String),
}

impl Job for Work {
    type Output = Done;
    type Key = WorkKey;

    fn key(&self) -> WorkKey {
        match self {
            Self::Solve { instance, sample } => {
                WorkKey::Solve(instance.instance_id.clone(), instance.repo.clone(), *sample)
            }
            Self::Testgen { instance, index } => {
                WorkKey::Testgen(instance.instance_id.clone(), instance.repo.clone(), *index)
            }
            Self::Pair(pair) => WorkKey::Pair(pair.instance.instance_id.clone()),
        }
    }

    fn panicked(key: WorkKey, message: &str) -> Done {
        let error = format!(
            "swe-env panicked here ({message}): this is a bug, please report it with the log; --retry-errors \
             runs it again"
        );
        match key {
            WorkKey::Solve(instance_id, repo, sample) => Done::Sample(Box::new(SampleRecord {
                result: InstanceResult::error(&instance_id, &repo, "panic", error),
                sample,
                seed: 0,
                episode_id: String::new(),
            })),
            WorkKey::Testgen(instance_id, repo, index) => {
                let mut record = failed_testgen(&instance_id, &repo, index, 0, String::new());
                record.error_kind = Some("panic".to_owned());
                record.error = Some(error);
                Done::Testgen(Box::new(record))
            }
            WorkKey::Pair(instance_id) => Done::Pair(Err((instance_id, error))),
        }
    }

    fn set_elapsed(output: &mut Done, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        match output {
            Done::Sample(record) => record.result.total_ms = ms,
            Done::Testgen(record) => record.total_ms = ms,
            Done::Pair(_) => {}
        }
    }
}

fn failed_testgen(
    instance_id: &str,
    repo: &str,
    index: u32,
    seed: u64,
    episode_id: String,
) -> TestgenRecord {
    TestgenRecord {
        instance_id: instance_id.to_owned(),
        repo: repo.to_owned(),
        index,
        seed,
        episode_id,
        episode_status: None,
        n_steps: 0,
        tokens: 0,
        model_ms: 0,
        total_ms: 0,
        script: None,
        script_sha256: None,
        valid: None,
        reason: None,
        detail: String::new(),
        validation: None,
        error_kind: None,
        error: None,
    }
}

/// What every job of the run shares.
struct Context {
    engine: DockerEngine,
    attempts: Attempts,
    config: RunConfig,
    scaling: ScalingConfig,
}

/// Runs `instances` with test-time scaling; resumes from the run directory's files.
pub async fn run_scaled(
    engine: &DockerEngine,
    instances: Vec<Instance>,
    config: RunConfig,
    scaling: ScalingConfig,
    progress: Arc<dyn Progress>,
    cancel: CancellationToken,
) -> std::io::Result<ScaledOutcome> {
    let started = Instant::now();
    tokio::fs::create_dir_all(&config.dir).await?;
    let mut store = Store::open(&config.dir).await?;
    let mut run_config = config.clone();
    run_config.episode.trajectory_dir = config.dir.join("trajectories");
    let context = Arc::new(Context {
        engine: engine.clone(),
        attempts: Attempts::new(engine, run_config, progress.clone()),
        config: config.clone(),
        scaling: scaling.clone(),
    });
    let instances: Vec<Arc<Instance>> = instances.into_iter().map(Arc::new).collect();

    // Phase 1: samples and generated tests not recorded yet.
    let mut work = Vec::new();
    for instance in &instances {
        for sample in 0..scaling.samples {
            if !store.has_sample(&instance.instance_id, sample, config.retry_errors) {
                work.push(Work::Solve {
                    instance: instance.clone(),
                    sample,
                });
            }
        }
        for index in 0..scaling.testgen_samples {
            if !store.has_testgen(&instance.instance_id, index, config.retry_errors) {
                work.push(Work::Testgen {
                    instance: instance.clone(),
                    index,
                });
            }
        }
    }
    let total = instances.len() * (scaling.samples + scaling.testgen_samples) as usize;
    let skipped = total - work.len();
    if skipped > 0 {
        progress.note(&format!(
            "resuming: {skipped} of {total} samples and generated tests already recorded"
        ));
    }
    let mut failures = 0usize;
    let interrupted = run_phase(
        &context,
        work,
        &mut store,
        &progress,
        &cancel,
        skipped,
        total,
        &mut failures,
    )
    .await?;
    if interrupted {
        return Ok(interrupted_outcome(
            &config, &scaling, &instances, &store, started,
        ));
    }

    // Phase 2: candidate × valid test runs not in the cache.
    let mut pair_stats: HashMap<String, (u32, u32, u64)> = HashMap::new();
    if scaling.selectors.contains(&Selector::Tests) {
        let mut work = Vec::new();
        for instance in &instances {
            let id = &instance.instance_id;
            let entry = pair_stats.entry(id.clone()).or_default();
            for (patch, patch_sha256) in distinct_patches(&store, id, scaling.samples) {
                for (script, test_sha256) in valid_tests(&store, id, scaling.testgen_samples) {
                    let key = (id.clone(), patch_sha256.clone(), test_sha256.clone());
                    if let Some(cached) = store.pairs.get(&key) {
                        entry.1 += 1;
                        entry.2 += cached.container_ms;
                        continue;
                    }
                    work.push(Work::Pair(Box::new(PairWork {
                        instance: instance.clone(),
                        patch: patch.clone(),
                        patch_sha256: patch_sha256.clone(),
                        script: script.clone(),
                        test_sha256,
                    })));
                }
            }
        }
        if !work.is_empty() {
            progress.note(&format!(
                "selection: {} candidate patch x generated test runs",
                work.len()
            ));
            let total = work.len();
            // The pairs this phase runs: each one recorded afterwards counts as run now.
            let planned: Vec<_> = work
                .iter()
                .filter_map(|work| match work {
                    Work::Pair(pair) => Some((
                        pair.instance.instance_id.clone(),
                        pair.patch_sha256.clone(),
                        pair.test_sha256.clone(),
                    )),
                    _ => None,
                })
                .collect();
            let interrupted = run_phase(
                &context,
                work,
                &mut store,
                &progress,
                &cancel,
                0,
                total,
                &mut failures,
            )
            .await?;
            if interrupted {
                return Ok(interrupted_outcome(
                    &config, &scaling, &instances, &store, started,
                ));
            }
            for key in &planned {
                if let Some(record) = store.pairs.get(key) {
                    let entry = pair_stats.entry(key.0.clone()).or_default();
                    entry.0 += 1;
                    entry.2 += record.container_ms;
                }
            }
        }
    }

    // Phases 3 and 4: selections and outputs.
    let (report, results) = write_outputs(
        &config,
        &scaling,
        &instances,
        &store,
        &pair_stats,
        started.elapsed(),
    )
    .await?;
    // Every recorded failure of this run's work counts, including those of earlier invocations, as a plain run's
    // exit code counts every error result.
    failures += recorded_failures(&scaling, &instances, &store);
    Ok(ScaledOutcome {
        report,
        results,
        failures,
        interrupted: false,
    })
}

/// Samples and test-generation episodes of `instances` recorded with an infrastructure failure.
fn recorded_failures(scaling: &ScalingConfig, instances: &[Arc<Instance>], store: &Store) -> usize {
    instances
        .iter()
        .map(|instance| {
            let id = &instance.instance_id;
            let samples = (0..scaling.samples)
                .filter_map(|k| store.samples.get(&(id.clone(), k)))
                .filter(|record| record.result.status == InstanceStatus::Error)
                .count();
            let tests = (0..scaling.testgen_samples)
                .filter_map(|m| store.testgen.get(&(id.clone(), m)))
                .filter(|record| record.valid.is_none())
                .count();
            samples + tests
        })
        .sum()
}

/// Runs `work` on the worker loop and records every output as it arrives; returns whether it was interrupted.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    context: &Arc<Context>,
    work: Vec<Work>,
    store: &mut Store,
    progress: &Arc<dyn Progress>,
    cancel: &CancellationToken,
    done_before: usize,
    total: usize,
    failures: &mut usize,
) -> std::io::Result<bool> {
    if work.is_empty() {
        return Ok(false);
    }
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let job_context = context.clone();
    let attempt = move |work: Work| {
        let context = job_context.clone();
        async move { run_work(&context, work).await }
    };
    let workers = run_workers(
        work,
        context.config.workers,
        cancel.clone(),
        attempt,
        sender,
    );
    let collect = async {
        let mut done = done_before;
        while let Some(output) = receiver.recv().await {
            done += 1;
            let line = match output {
                Done::Sample(record) => {
                    let line = format!(
                        "{:>10}  {} s{}  ({:.1}s)",
                        match record.result.status {
                            InstanceStatus::Resolved => "resolved",
                            InstanceStatus::Unresolved => "unresolved",
                            InstanceStatus::Error => "error",
                        },
                        record.result.instance_id,
                        record.sample,
                        record.result.total_ms as f64 / 1e3
                    );
                    store.add_sample(*record).await?;
                    line
                }
                Done::Testgen(record) => {
                    let verdict = match (record.valid, record.reason) {
                        (Some(true), _) => "valid test".to_owned(),
                        (Some(false), Some(reason)) => format!("rejected: {}", reason.as_str()),
                        (Some(false), None) => "rejected".to_owned(),
                        (None, _) => {
                            format!("error: {}", record.error_kind.as_deref().unwrap_or("error"))
                        }
                    };
                    let line = format!(
                        "{verdict:>10}  {} t{}  ({:.1}s)",
                        record.instance_id,
                        record.index,
                        record.total_ms as f64 / 1e3
                    );
                    store.add_testgen(*record).await?;
                    line
                }
                Done::Pair(Ok(record)) => {
                    let line = format!(
                        "{:>10}  {} patch {} test {}",
                        if record.passed { "passes" } else { "fails" },
                        record.instance_id,
                        &record.patch_sha256[..12],
                        &record.test_sha256[..12]
                    );
                    store.add_pair(record).await?;
                    line
                }
                Done::Pair(Err((instance_id, error))) => {
                    *failures += 1;
                    warn!(%instance_id, %error, "a candidate x test run failed; it counts as not passed and is retried by the next invocation");
                    format!(
                        "{:>10}  {instance_id} candidate x test run: {error}",
                        "error"
                    )
                }
            };
            progress.advanced(&line, done, total);
        }
        Ok::<(), std::io::Error>(())
    };
    let (interrupted, collected) = tokio::join!(workers, collect);
    collected?;
    if interrupted {
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(&context.engine).await;
        info!(removed, "removed in-flight containers after interrupt");
    }
    Ok(interrupted)
}

async fn run_work(context: &Context, work: Work) -> Done {
    match work {
        Work::Solve { instance, sample } => {
            Done::Sample(Box::new(run_sample(context, &instance, sample).await))
        }
        Work::Testgen { instance, index } => {
            Done::Testgen(Box::new(run_testgen(context, &instance, index).await))
        }
        Work::Pair(pair) => Done::Pair(run_pair(context, &pair).await),
    }
}

/// The run's agent with this rollout's seed (built-in agents are deterministic: unchanged).
fn seeded(agent: &AgentSpec, seed: u64, user_template: Option<&str>) -> AgentSpec {
    match agent {
        AgentSpec::Model(model) => {
            let mut config = model.config.clone();
            config.sampling.seed = Some(seed);
            if let Some(template) = user_template {
                config.prompts.user_template = template.to_owned();
            }
            AgentSpec::Model(Arc::new(ModelAgent {
                client: model.client.clone(),
                client_config: model.client_config.clone(),
                config,
            }))
        }
        other => other.clone(),
    }
}

async fn run_sample(context: &Context, instance: &Instance, sample: u32) -> SampleRecord {
    let config = &context.config;
    let id = &instance.instance_id;
    let seed = rollout_seed(context.scaling.seed, id, sample);
    let episode_id = format!("{}-{id}.s{sample}", config.run_id);
    let spec = AttemptSpec {
        grading_id: format!("{episode_id}-grade"),
        episode_id: episode_id.clone(),
        agent: seeded(&config.agent, seed, None),
        logs_dir: Some(config.logs_dir.join(format!("s{sample}"))),
        kind: AttemptKind::Solve,
    };
    let output = context.attempts.run(instance, &spec).await;
    SampleRecord {
        result: output.result,
        sample,
        seed,
        episode_id,
    }
}

async fn run_testgen(context: &Context, instance: &Instance, index: u32) -> TestgenRecord {
    let config = &context.config;
    let id = &instance.instance_id;
    let seed = rollout_seed(context.scaling.seed, &format!("{id}#testgen"), index);
    let episode_id = format!("{}-{id}.t{index}", config.run_id);
    let spec = AttemptSpec {
        grading_id: format!("{episode_id}-grade"),
        episode_id: episode_id.clone(),
        agent: seeded(&config.agent, seed, Some(&context.scaling.testgen_template)),
        logs_dir: None,
        kind: AttemptKind::Testgen,
    };
    let output = context.attempts.run(instance, &spec).await;
    let result = output.result;
    let mut record = failed_testgen(id, &instance.repo, index, seed, episode_id.clone());
    record.episode_status = result.episode_status.clone();
    record.n_steps = result.n_steps;
    record.tokens = result.tokens;
    record.model_ms = result.model_ms;
    if result.status == InstanceStatus::Error {
        record.error_kind = result.error_kind;
        record.error = result.error;
        return record;
    }
    record.script_sha256 = result
        .submission
        .as_deref()
        .map(|s| sha256_hex(s.as_bytes()));
    record.script = result.submission;
    let image = crate::task::image_for(instance, &config.grade.image_template);
    match validate_test(
        &context.engine,
        instance,
        &image,
        record.script.as_deref(),
        &context.scaling.limits,
        &format!("{episode_id}-check"),
    )
    .await
    {
        Ok(validation) => {
            record.valid = Some(validation.valid);
            record.reason = validation.reason;
            record.detail = validation.detail.clone();
            record.validation = Some(validation);
        }
        Err(error) => {
            record.error_kind = Some(testgen_error_kind(&error).to_owned());
            record.error = Some(format!("checking the generated test failed: {error}"));
        }
    }
    record
}

fn testgen_error_kind(error: &TestgenError) -> &'static str {
    match error {
        TestgenError::Sandbox(SandboxError::EngineUnavailable { .. }) => "docker_unavailable",
        TestgenError::Sandbox(SandboxError::ImageNotFound { .. }) => "image_missing",
        TestgenError::Sandbox(_) => "sandbox",
    }
}

async fn run_pair(context: &Context, pair: &PairWork) -> Result<PairRecord, (String, String)> {
    let instance = &pair.instance;
    let image = crate::task::image_for(instance, &context.config.grade.image_template);
    let name = format!(
        "{}-{}.p{}-{}",
        context.config.run_id,
        instance.instance_id,
        &pair.patch_sha256[..12],
        &pair.test_sha256[..12]
    );
    match run_test_on_patch(
        &context.engine,
        instance,
        &image,
        &pair.patch,
        &pair.script,
        &context.scaling.limits,
        &name,
    )
    .await
    {
        Ok(run) => Ok(PairRecord {
            instance_id: instance.instance_id.clone(),
            patch_sha256: pair.patch_sha256.clone(),
            test_sha256: pair.test_sha256.clone(),
            passed: run.passed,
            patch_applied: run.patch_applied,
            run: run.run,
            container_ms: run.container_ms,
        }),
        Err(error) => Err((instance.instance_id.clone(), error.to_string())),
    }
}

/// The submission of a sample when it is a candidate: recorded, not an error, non-empty.
fn candidate_patch(record: &SampleRecord) -> Option<&str> {
    if record.result.status == InstanceStatus::Error {
        return None;
    }
    record
        .result
        .submission
        .as_deref()
        .filter(|patch| !patch.trim().is_empty())
}

/// The distinct candidate patches of `instance_id` (samples below `samples`), with their SHA-256, in sample order.
fn distinct_patches(store: &Store, instance_id: &str, samples: u32) -> Vec<(Arc<str>, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for sample in 0..samples {
        let Some(record) = store.samples.get(&(instance_id.to_owned(), sample)) else {
            continue;
        };
        if let Some(patch) = candidate_patch(record) {
            let sha = sha256_hex(patch.as_bytes());
            if seen.insert(sha.clone()) {
                out.push((Arc::from(patch), sha));
            }
        }
    }
    out
}

/// The distinct valid generated tests of `instance_id` (indices below `testgen_samples`), with their SHA-256.
fn valid_tests(store: &Store, instance_id: &str, testgen_samples: u32) -> Vec<(Arc<str>, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for index in 0..testgen_samples {
        let Some(record) = store.testgen.get(&(instance_id.to_owned(), index)) else {
            continue;
        };
        if let Some((script, sha)) = record.valid_script() {
            if seen.insert(sha.to_owned()) {
                out.push((Arc::from(script), sha.to_owned()));
            }
        }
    }
    out
}

/// One line of `selection.jsonl`.
#[derive(Debug, serde::Serialize)]
struct SelectionLine {
    instance_id: String,
    repo: String,
    resolved_samples: Vec<u32>,
    valid_tests: Vec<u32>,
    candidates: Vec<CandidateLine>,
    selections: BTreeMap<Selector, Selection>,
}

#[derive(Debug, serde::Serialize)]
struct CandidateLine {
    sample: u32,
    patch_sha256: Option<String>,
    majority_key_sha256: Option<String>,
    resolved: Option<bool>,
}

/// The selections of one instance from what the store holds.
fn select_instance(scaling: &ScalingConfig, instance: &Instance, store: &Store) -> SelectionLine {
    let id = &instance.instance_id;
    let mut candidates = Vec::new();
    let mut lines = Vec::new();
    let mut resolved_samples = Vec::new();
    for sample in 0..scaling.samples {
        let Some(record) = store.samples.get(&(id.clone(), sample)) else {
            continue;
        };
        let patch = candidate_patch(record).map(str::to_owned);
        let resolved = match record.result.status {
            InstanceStatus::Resolved => Some(true),
            InstanceStatus::Unresolved => Some(false),
            InstanceStatus::Error => None,
        };
        if resolved == Some(true) {
            resolved_samples.push(sample);
        }
        lines.push(CandidateLine {
            sample,
            patch_sha256: patch.as_deref().map(|p| sha256_hex(p.as_bytes())),
            majority_key_sha256: patch
                .as_deref()
                .map(|p| sha256_hex(majority_key(p).as_bytes())),
            resolved,
        });
        candidates.push(Candidate {
            sample,
            patch,
            resolved,
        });
    }
    let mut evidence = TestEvidence::default();
    let mut seen_scripts = HashSet::new();
    for index in 0..scaling.testgen_samples {
        let Some(record) = store.testgen.get(&(id.clone(), index)) else {
            continue;
        };
        let Some((_, test_sha)) = record.valid_script() else {
            continue;
        };
        // The same script generated twice is one test, not two votes.
        if !seen_scripts.insert(test_sha.to_owned()) {
            continue;
        }
        evidence.valid_tests.insert(index);
        for line in &lines {
            let Some(patch_sha) = &line.patch_sha256 else {
                continue;
            };
            let key = (id.clone(), patch_sha.clone(), test_sha.to_owned());
            if store.pairs.get(&key).is_some_and(|pair| pair.passed) {
                evidence
                    .passes
                    .entry(line.sample)
                    .or_insert_with(BTreeSet::new)
                    .insert(index);
            }
        }
    }
    let selections = scaling
        .selectors
        .iter()
        .map(|selector| (*selector, select(*selector, &candidates, Some(&evidence))))
        .collect();
    SelectionLine {
        instance_id: id.clone(),
        repo: instance.repo.clone(),
        resolved_samples,
        valid_tests: evidence.valid_tests.iter().copied().collect(),
        candidates: lines,
        selections,
    }
}

/// The result report.json counts for `selection` of `instance`: the selected sample's result; with no selected
/// sample, sample 0's (an empty or failed submission), else an error result saying no sample finished.
fn selected_result(store: &Store, instance: &Instance, selection: &Selection) -> InstanceResult {
    let id = &instance.instance_id;
    let pick = selection.sample.unwrap_or(0);
    match store.samples.get(&(id.clone(), pick)) {
        Some(record) => record.result.clone(),
        None => InstanceResult::error(
            id,
            &instance.repo,
            "no_sample",
            "no sample of this instance finished: run the same command again to resume".to_owned(),
        ),
    }
}

/// Everything the outputs are made of, per instance: the selection line, the report's view, and per selector the
/// result report.json counts.
struct Assembled {
    lines: Vec<SelectionLine>,
    summaries: Vec<InstanceScaling>,
    per_selector: BTreeMap<Selector, Vec<InstanceResult>>,
}

fn assemble(
    scaling: &ScalingConfig,
    instances: &[Arc<Instance>],
    store: &Store,
    pair_stats: &HashMap<String, (u32, u32, u64)>,
) -> Assembled {
    let mut assembled = Assembled {
        lines: Vec::new(),
        summaries: Vec::new(),
        per_selector: BTreeMap::new(),
    };
    for instance in instances {
        let id = &instance.instance_id;
        let line = select_instance(scaling, instance, store);
        let started = (0..scaling.samples).any(|k| store.samples.contains_key(&(id.clone(), k)));
        for (selector, selection) in &line.selections {
            let results = assembled.per_selector.entry(*selector).or_default();
            if started {
                results.push(selected_result(store, instance, selection));
            }
        }
        let samples = (0..scaling.samples)
            .filter_map(|k| store.samples.get(&(id.clone(), k)))
            .map(|record| SampleSummary {
                sample: record.sample,
                status: record.result.status,
                tokens: record.result.tokens,
                total_ms: record.result.total_ms,
            })
            .collect();
        let testgen = (0..scaling.testgen_samples)
            .filter_map(|m| store.testgen.get(&(id.clone(), m)))
            .map(|record| {
                let validation_ms = record.validation.as_ref().map_or(0, |v| v.container_ms);
                TestgenSummary {
                    index: record.index,
                    tokens: record.tokens,
                    total_ms: record.total_ms.saturating_sub(validation_ms),
                    valid: record.valid,
                    reason: record.reason,
                    error_kind: record.error_kind.clone(),
                    validation_ms,
                }
            })
            .collect();
        let (pair_runs, pair_cached, pair_ms) = pair_stats.get(id).copied().unwrap_or_default();
        assembled.summaries.push(InstanceScaling {
            instance_id: id.clone(),
            repo: instance.repo.clone(),
            samples,
            testgen,
            selections: line.selections.values().cloned().collect(),
            pair_runs,
            pair_cached,
            pair_ms,
        });
        assembled.lines.push(line);
    }
    assembled
}

async fn write_outputs(
    config: &RunConfig,
    scaling: &ScalingConfig,
    instances: &[Arc<Instance>],
    store: &Store,
    pair_stats: &HashMap<String, (u32, u32, u64)>,
    wall: Duration,
) -> std::io::Result<(ScalingReport, Vec<InstanceResult>)> {
    let primary = scaling.primary();
    let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
    let Assembled {
        lines,
        summaries,
        mut per_selector,
    } = assemble(scaling, instances, store, pair_stats);
    let dir = &config.dir;
    let mut selection_text = String::new();
    for line in &lines {
        selection_text.push_str(&serde_json::to_string(line).map_err(std::io::Error::other)?);
        selection_text.push('\n');
    }
    write_whole(dir.join(SELECTION_FILE), selection_text.into_bytes()).await?;
    let primary_results = per_selector.remove(&primary).unwrap_or_default();
    // results.jsonl of a scaled run: the primary selection (what report.json counts), rewritten whole.
    let mut results_text = String::new();
    for result in &primary_results {
        results_text.push_str(&serde_json::to_string(result).map_err(std::io::Error::other)?);
        results_text.push('\n');
    }
    write_whole(dir.join("results.jsonl"), results_text.into_bytes()).await?;
    let stats = finish_run(config, &ids, &primary_results, wall).await?;
    for (selector, results) in &per_selector {
        let summary = run_summary(&ids, results);
        let text = serde_json::to_vec_pretty(&summary).map_err(std::io::Error::other)?;
        write_whole(dir.join(format!("report-{}.json", selector.as_str())), text).await?;
    }
    let report = make_report(config, scaling, &summaries, stats, wall.as_secs_f64());
    let text = serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?;
    write_whole(dir.join(REPORT_FILE), text).await?;
    Ok((report, primary_results))
}

fn make_report(
    config: &RunConfig,
    scaling: &ScalingConfig,
    summaries: &[InstanceScaling],
    stats: crate::benchmark::summary::RunStats,
    wall_seconds: f64,
) -> ScalingReport {
    scaling_report(
        &config.run_id,
        &config.model_name,
        scaling.samples,
        scaling.testgen_samples,
        &scaling.selectors,
        scaling.primary(),
        summaries,
        stats,
        wall_seconds,
    )
}

/// After an interrupt: the recorded work stays for the next invocation; the report of what is recorded is made
/// for the terminal only (no selection or report file is written from a partial run).
fn interrupted_outcome(
    config: &RunConfig,
    scaling: &ScalingConfig,
    instances: &[Arc<Instance>],
    store: &Store,
    started: Instant,
) -> ScaledOutcome {
    let primary = scaling.primary();
    let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
    let Assembled {
        summaries,
        mut per_selector,
        ..
    } = assemble(scaling, instances, store, &HashMap::new());
    let results = per_selector.remove(&primary).unwrap_or_default();
    let summary = run_summary(&ids, &results);
    let wall = started.elapsed().as_secs_f64();
    let stats = run_stats(
        &config.run_id,
        &config.model_name,
        &summary,
        0,
        &results,
        wall,
    );
    let report = make_report(config, scaling, &summaries, stats, wall);
    ScaledOutcome {
        report,
        results,
        failures: 0,
        interrupted: true,
    }
}

/// Replaces `path` whole (temp file, fsync, rename) on the blocking pool.
async fn write_whole(path: std::path::PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || crate::fsio::write_atomically(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}
