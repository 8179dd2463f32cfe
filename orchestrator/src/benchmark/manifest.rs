//! The run manifest (`<run dir>/manifest.json`) and the run-directory lock (`<run dir>/.lock`).
//!
//! Results of one run are only comparable when every instance ran with the same settings. When a run starts, its
//! manifest records what changes results (`settings`: the agent and its configuration with a hash of it, the
//! dataset content's sha256, episode budgets and sandbox limits, grading options) and, for the record only, what
//! does not (`recorded`: swe-env version, dataset source and path, model endpoints, pull policy, workers).
//!
//! Resuming (the run directory already has `results.jsonl` or `manifest.json`) compares the new settings with the
//! stored ones field by field; any difference refuses the run ([`RunStartError::SettingsChanged`]) unless
//! `--force-resume`, which is then recorded in `resumes` with the differing fields. The stored `settings` stay
//! those the run started with. A different instance selection is allowed: the manifest's `instances` is the
//! union of every selection the run was started with, and each resume records the ids it added.
//!
//! The lock is an advisory `flock` on `<run dir>/.lock`, held for the whole run with the holder's pid written
//! inside; a second process on the same run directory fails fast ([`RunStartError::InUse`]). The kernel releases
//! it when the process dies, so a killed run can be resumed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use super::{AgentSpec, RunConfig};
use crate::trajectory::digest::hex;
use crate::trajectory::record::now_rfc3339;

/// The manifest's file name in the run directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The lock file's name in the run directory.
pub const LOCK_FILE: &str = ".lock";
/// Version of the manifest layout.
pub const MANIFEST_VERSION: u32 = 1;

/// `<run dir>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// [`MANIFEST_VERSION`] of the writer.
    pub manifest_version: u32,
    /// The run id.
    pub run_id: String,
    /// When the run was first started (RFC 3339).
    pub created_at: String,
    /// Result-changing settings, compared on resume (a JSON object; see [`RunManifest::new`]).
    pub settings: Value,
    /// Sorted instance ids: the union of every selection the run was started with.
    pub instances: Vec<String>,
    /// Context that does not change results; not compared.
    pub recorded: Recorded,
    /// Every resume of this run, in order.
    #[serde(default)]
    pub resumes: Vec<ResumeRecord>,
    /// The effective configuration the run started with (`run-benchmark --print-config`'s output: never an API
    /// key, only its variable's name); not compared on resume (`settings` is). A resume with a different one
    /// records its own in `resumes[].config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// What a run manifest records of the invocation beyond the run's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocation {
    /// The effective configuration (see [`RunManifest::config`]).
    pub config: Option<Value>,
    /// Where the context window came from: `flag`, `config`, `endpoint` or `default`.
    pub context_tokens_source: Option<String>,
}

/// What a manifest records without comparing it on resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recorded {
    /// `swe-env` version that started the run.
    pub swe_env_version: String,
    /// Git commit of that build, when the build set `SWE_ENV_GIT_COMMIT`.
    pub git_commit: Option<String>,
    /// The dataset as given (`fixtures`, an alias, a path).
    pub dataset_source: String,
    /// The file read for it (none for the embedded fixtures).
    pub dataset_path: Option<String>,
    /// Model endpoints (a moved server of the same model does not change results).
    pub model_endpoints: Vec<String>,
    /// Name of the environment variable holding the API key (never the key).
    pub api_key_env: Option<String>,
    /// Image pull policy (`missing`, `always`, `never`): where images come from, not what they are.
    pub pull: String,
    /// Instances run at once.
    pub workers: usize,
    /// Where the context window (`settings.episode.context_tokens`) came from: `flag`, `config`, `endpoint` (the
    /// window the model endpoint serves) or `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_tokens_source: Option<String>,
}

/// One resume of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// When (RFC 3339).
    pub at: String,
    /// `--force-resume` overrode differing settings (listed in `differences`) or a missing manifest.
    pub forced: bool,
    /// Settings that differed from the run's (empty unless forced).
    #[serde(default)]
    pub differences: Vec<FieldDiff>,
    /// Instance ids this resume added to the run's selection.
    #[serde(default)]
    pub added_instances: Vec<String>,
    /// `swe-env` version of the resuming process.
    #[serde(default)]
    pub swe_env_version: String,
    /// Anything else worth knowing (e.g. the run had no manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// This invocation's effective configuration, when it differs from the run's `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// One differing settings field: its dotted path and both values (`None`: the field was not recorded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// Dotted path in `settings`, e.g. `agent.kind`.
    pub field: String,
    /// The run's value.
    pub old: Option<Value>,
    /// This invocation's value.
    pub new: Option<Value>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: was {}, now {}",
            self.field,
            show_value(self.old.as_ref()),
            show_value(self.new.as_ref())
        )
    }
}

/// A value for a message: JSON, long ones shortened.
fn show_value(value: Option<&Value>) -> String {
    const MAX_CHARS: usize = 100;
    let Some(value) = value else {
        return "(not recorded)".to_owned();
    };
    let text = value.to_string();
    let count = text.chars().count();
    if count <= MAX_CHARS {
        text
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}… ({count} chars)")
    }
}

/// Why a run cannot start in its directory.
#[derive(Debug, thiserror::Error)]
pub enum RunStartError {
    /// Another process holds the run directory's lock.
    #[error(
        "run {run_id} is in use by another swe-env process ({}): wait for it to end, or use another --run-id",
        pid_text(*pid)
    )]
    InUse {
        /// The run.
        run_id: String,
        /// The holder's pid, when it could be read from the lock file.
        pid: Option<u32>,
    },
    /// Result-changing settings differ from the run's.
    #[error(
        "run {run_id} was started with different settings; resuming it would mix results of different \
         configurations:\n{}\nTo proceed: rerun with the run's settings (recorded in {}), pass --force-resume to \
         resume anyway (recorded in the manifest), or start a new run with another --run-id",
        list_diffs(differences),
        manifest.display()
    )]
    SettingsChanged {
        /// The run.
        run_id: String,
        /// Its manifest.
        manifest: PathBuf,
        /// Every differing field.
        differences: Vec<FieldDiff>,
    },
    /// The directory has results but no manifest (an older swe-env started the run).
    #[error(
        "run {run_id} has results in {} but no {MANIFEST_FILE} (an older swe-env started it), so its settings cannot \
         be checked: pass --force-resume to resume it anyway (the current settings are then recorded as the run's), \
         or use another --run-id",
        dir.display()
    )]
    NoManifest {
        /// The run.
        run_id: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// The stored manifest does not parse.
    #[error(
        "cannot read the run manifest {}: {detail}; restore it, or use another --run-id",
        path.display()
    )]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl RunStartError {
    /// Bad usage or input (exit 2), as opposed to an infrastructure failure (`Io`, exit 3).
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }
}

fn pid_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

fn list_diffs(differences: &[FieldDiff]) -> String {
    let lines: Vec<String> = differences.iter().map(|d| format!("  {d}")).collect();
    lines.join("\n")
}

/// The result-changing settings; serialized into [`RunManifest::settings`].
#[derive(Serialize)]
struct Settings<'a> {
    agent: AgentSettings,
    dataset_sha256: &'a str,
    episode: EpisodeSettings<'a>,
    grading: GradingSettings<'a>,
    /// A scaled run's samples, selectors and test-generation settings (absent for a plain run).
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling: Option<&'a Value>,
}

#[derive(Serialize)]
struct AgentSettings {
    /// `gold`, `empty`, `predictions` or `model`.
    kind: &'static str,
    /// `model_name_or_path`.
    name: String,
    /// The model agent's configuration (sampling, prompts, API mode, …), the predictions' sha256, or null.
    config: Value,
    /// sha256 of `{kind, name, config}` serialized.
    config_hash: String,
}

#[derive(Serialize)]
struct EpisodeSettings<'a> {
    max_turns: u32,
    wall_clock_secs: u64,
    tool_format: &'static str,
    context_tokens: u64,
    observation_cap_bytes: usize,
    cmd_timeout_secs: u64,
    anti_leak: &'static str,
    network_mode: &'a str,
    memory_bytes: i64,
    nano_cpus: i64,
    pids_limit: i64,
    image_template: &'a str,
}

#[derive(Serialize)]
struct GradingSettings<'a> {
    network: &'a str,
    test_timeout_secs: u64,
    in_place: bool,
    image_template: &'a str,
    options: &'a swe_env_grading::report::GradingOptions,
    eval_script: swe_env_grading::eval_script::EvalScriptConfig,
    rewards: &'a swe_env_grading::rewards::RewardConfig,
}

/// Where a dataset's content came from and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetDigest {
    /// The source as given.
    pub source: String,
    /// The file hashed (none for the embedded fixtures).
    pub path: Option<PathBuf>,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// One dataset of a harvest directory's header (`swe-env harvest`, `swe-env trace harvest`): what a resume compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetEntry {
    /// The source as given (`fixtures`, alias, path).
    pub source: String,
    /// sha256 of the dataset bytes ([`dataset_digest`]).
    pub sha256: String,
    /// Rows in it.
    pub rows: u64,
}

/// Hashes the content behind a dataset source (`fixtures`, an alias, a path), as `load_source` resolves it.
pub fn dataset_digest(source: &str) -> std::io::Result<DatasetDigest> {
    let Some(path) = crate::datasets::source_file(source) else {
        return Ok(DatasetDigest {
            source: source.to_owned(),
            path: None,
            sha256: sha256_hex(crate::datasets::FIXTURE_TASKS_JSONL.as_bytes()),
        });
    };
    let mut file = File::open(&path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    Ok(DatasetDigest {
        source: source.to_owned(),
        path: Some(path),
        sha256: hex(context.finish().as_ref()),
    })
}

/// Hex sha256 of `bytes` (the one definition lives in `trajectory::digest`).
pub use crate::trajectory::digest::sha256_hex;

fn agent_settings(agent: &AgentSpec) -> AgentSettings {
    let (kind, config) = match agent {
        AgentSpec::Gold => ("gold", Value::Null),
        AgentSpec::Empty => ("empty", Value::Null),
        AgentSpec::Predictions { patches, .. } => {
            let sorted: BTreeMap<&String, &Option<String>> = patches.iter().collect();
            let text = serde_json::to_string(&sorted).unwrap_or_default();
            (
                "predictions",
                json!({ "predictions_sha256": sha256_hex(text.as_bytes()) }),
            )
        }
        AgentSpec::Model(model) => (
            "model",
            serde_json::to_value(&model.config).unwrap_or(Value::Null),
        ),
    };
    let name = agent.name().to_owned();
    let hashed = json!({ "kind": kind, "name": name, "config": config }).to_string();
    AgentSettings {
        kind,
        name,
        config,
        config_hash: sha256_hex(hashed.as_bytes()),
    }
}

impl RunManifest {
    /// The manifest of a run started now with `config` on `dataset`, selecting `instance_ids`.
    pub fn new(config: &RunConfig, dataset: &DatasetDigest, instance_ids: &[String]) -> Self {
        let episode = &config.episode;
        let tool_format = match &config.agent {
            AgentSpec::Model(model) => model.config.mode.tool_format(),
            _ => episode.tool_format,
        };
        let grade = &config.grade;
        let settings = Settings {
            agent: agent_settings(&config.agent),
            dataset_sha256: &dataset.sha256,
            episode: EpisodeSettings {
                max_turns: episode.max_turns,
                wall_clock_secs: episode.wall_clock.as_secs(),
                tool_format: tool_format.as_str(),
                context_tokens: episode.context_tokens,
                observation_cap_bytes: episode.observation_cap_bytes,
                cmd_timeout_secs: episode.tools.cmd_timeout.as_secs(),
                anti_leak: episode.anti_leak.as_str(),
                network_mode: &episode.sandbox.network_mode,
                memory_bytes: episode.sandbox.memory_bytes,
                nano_cpus: episode.sandbox.nano_cpus,
                pids_limit: episode.sandbox.pids_limit,
                image_template: &episode.image_template,
            },
            grading: GradingSettings {
                network: &grade.network_mode,
                test_timeout_secs: grade.test_timeout.as_secs(),
                in_place: grade.in_place,
                image_template: &grade.image_template,
                options: &grade.options,
                eval_script: grade.effective_eval_script(),
                rewards: &grade.rewards,
            },
            scaling: config.extra_settings.as_ref(),
        };
        let (model_endpoints, api_key_env) = match &config.agent {
            AgentSpec::Model(model) => (
                // Without user-info or query: a credential in `--model-url` is never written down.
                model
                    .client_config
                    .endpoints
                    .iter()
                    .map(|url| swe_env_model::redact_url(url))
                    .collect(),
                model.client_config.api_key_env.clone(),
            ),
            _ => (Vec::new(), None),
        };
        let instances: BTreeSet<String> = instance_ids.iter().cloned().collect();
        RunManifest {
            manifest_version: MANIFEST_VERSION,
            run_id: config.run_id.clone(),
            created_at: now_rfc3339(),
            settings: serde_json::to_value(&settings).unwrap_or(Value::Null),
            instances: instances.into_iter().collect(),
            recorded: Recorded {
                swe_env_version: env!("CARGO_PKG_VERSION").to_owned(),
                git_commit: option_env!("SWE_ENV_GIT_COMMIT").map(str::to_owned),
                dataset_source: dataset.source.clone(),
                dataset_path: dataset.path.as_ref().map(|p| p.display().to_string()),
                model_endpoints,
                api_key_env,
                pull: clap::ValueEnum::to_possible_value(&config.pull)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
                workers: config.workers,
                context_tokens_source: None,
            },
            resumes: Vec::new(),
            config: None,
        }
    }
}

/// Every leaf of `old` and `new` (dotted paths; arrays are leaves) whose values differ, sorted by path.
pub fn diff_settings(old: &Value, new: &Value) -> Vec<FieldDiff> {
    let mut old_leaves = BTreeMap::new();
    let mut new_leaves = BTreeMap::new();
    flatten(old, String::new(), &mut old_leaves);
    flatten(new, String::new(), &mut new_leaves);
    let fields: BTreeSet<&String> = old_leaves.keys().chain(new_leaves.keys()).collect();
    fields
        .into_iter()
        .filter_map(|field| {
            let (old, new) = (old_leaves.get(field), new_leaves.get(field));
            (old != new).then(|| FieldDiff {
                field: field.clone(),
                old: old.cloned(),
                new: new.cloned(),
            })
        })
        .collect()
}

fn flatten(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(child, child_path, out);
            }
        }
        other => {
            out.insert(path, other.clone());
        }
    }
}

/// The manifest to write for this start: `new` for a fresh run; for a resume, the stored one with the selection
/// widened and the resume recorded. Differences refuse the run unless `force`.
pub fn reconcile(
    stored: Option<RunManifest>,
    has_results: bool,
    new: RunManifest,
    force: bool,
    dir: &Path,
) -> Result<RunManifest, RunStartError> {
    let Some(mut manifest) = stored else {
        if !has_results {
            return Ok(new);
        }
        if !force {
            return Err(RunStartError::NoManifest {
                run_id: new.run_id,
                dir: dir.to_path_buf(),
            });
        }
        let mut manifest = new;
        manifest.resumes.push(ResumeRecord {
            at: now_rfc3339(),
            forced: true,
            differences: Vec::new(),
            added_instances: Vec::new(),
            swe_env_version: env!("CARGO_PKG_VERSION").to_owned(),
            note: Some(
                "resumed a run that had results but no manifest: its earlier settings are unknown"
                    .to_owned(),
            ),
            config: None,
        });
        return Ok(manifest);
    };
    let differences = diff_settings(&manifest.settings, &new.settings);
    if !differences.is_empty() && !force {
        return Err(RunStartError::SettingsChanged {
            run_id: new.run_id,
            manifest: dir.join(MANIFEST_FILE),
            differences,
        });
    }
    let known: BTreeSet<String> = manifest.instances.iter().cloned().collect();
    let added: Vec<String> = new
        .instances
        .iter()
        .filter(|id| !known.contains(*id))
        .cloned()
        .collect();
    let union: BTreeSet<String> = known.into_iter().chain(added.iter().cloned()).collect();
    manifest.instances = union.into_iter().collect();
    let config = match (&manifest.config, new.config) {
        (None, new_config) => {
            manifest.config = new_config;
            None
        }
        (Some(old), Some(new_config)) if *old != new_config => Some(new_config),
        (Some(_), _) => None,
    };
    manifest.resumes.push(ResumeRecord {
        at: now_rfc3339(),
        forced: !differences.is_empty(),
        differences,
        added_instances: added,
        swe_env_version: env!("CARGO_PKG_VERSION").to_owned(),
        note: None,
        config,
    });
    Ok(manifest)
}

/// A started run: holds the run directory's lock until dropped.
#[derive(Debug)]
pub struct RunGuard {
    _lock: File,
    manifest: RunManifest,
}

impl RunGuard {
    /// The manifest as written.
    pub fn manifest(&self) -> &RunManifest {
        &self.manifest
    }
}

/// Starts a run in `config.dir`: takes the lock, checks the stored manifest (if any) against this invocation's
/// settings, and writes the manifest (atomically). Keep the guard for the whole run.
pub async fn begin_run(
    config: &RunConfig,
    dataset_source: &str,
    instance_ids: Vec<String>,
    force_resume: bool,
    invocation: Invocation,
) -> Result<RunGuard, RunStartError> {
    let config = config.clone();
    let source = dataset_source.to_owned();
    let dir = config.dir.clone();
    tokio::task::spawn_blocking(move || {
        begin_run_blocking(&config, &source, &instance_ids, force_resume, invocation)
    })
    .await
    .map_err(|error| RunStartError::Io {
        op: "prepare the run directory",
        path: dir,
        source: std::io::Error::other(error.to_string()),
    })?
}

fn begin_run_blocking(
    config: &RunConfig,
    dataset_source: &str,
    instance_ids: &[String],
    force_resume: bool,
    invocation: Invocation,
) -> Result<RunGuard, RunStartError> {
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(RunStartError::io("create the run directory", dir))?;
    let lock = lock_run_dir(dir, &config.run_id)?;
    let dataset = dataset_digest(dataset_source).map_err(RunStartError::io(
        "hash the dataset",
        Path::new(dataset_source),
    ))?;
    let mut new = RunManifest::new(config, &dataset, instance_ids);
    new.config = invocation.config;
    new.recorded.context_tokens_source = invocation.context_tokens_source;
    let manifest_path = dir.join(MANIFEST_FILE);
    let stored = match std::fs::read(&manifest_path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<RunManifest>(&bytes).map_err(|error| {
                RunStartError::BadManifest {
                    path: manifest_path.clone(),
                    detail: error.to_string(),
                }
            })?,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(RunStartError::io("read", &manifest_path)(error)),
    };
    let has_results = dir.join("results.jsonl").exists();
    let manifest = reconcile(stored, has_results, new, force_resume, dir)?;
    if let Some(resume) = manifest.resumes.last().filter(|r| r.forced) {
        for difference in &resume.differences {
            warn!(run_id = %config.run_id, field = %difference.field, %difference, "--force-resume: resuming with a different setting");
        }
    }
    write_atomically(&manifest_path, &manifest)?;
    Ok(RunGuard {
        _lock: lock,
        manifest,
    })
}

/// Takes `<dir>/.lock` (advisory, exclusive, non-blocking) and writes this process's pid into it.
pub(crate) fn lock_run_dir(dir: &Path, run_id: &str) -> Result<File, RunStartError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(RunStartError::io("open the run lock", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RunStartError::InUse {
                run_id: run_id.to_owned(),
                pid: holder_pid(&path),
            })
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(RunStartError::io("lock", &path)(error))
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .and_then(|()| file.flush())
        .map_err(RunStartError::io("write the run lock", &path))?;
    Ok(file)
}

/// The pid in a held lock file; the holder writes it right after locking, so an empty file is retried briefly.
fn holder_pid(path: &Path) -> Option<u32> {
    for _ in 0..10 {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn write_atomically(path: &Path, manifest: &RunManifest) -> Result<(), RunStartError> {
    let mut text = serde_json::to_string_pretty(manifest).map_err(|error| RunStartError::Io {
        op: "serialize",
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    })?;
    text.push('\n');
    crate::fsio::write_atomically(path, text.as_bytes()).map_err(RunStartError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(settings: Value, instances: &[&str]) -> RunManifest {
        RunManifest {
            manifest_version: MANIFEST_VERSION,
            run_id: "r".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            settings,
            instances: instances.iter().map(|s| (*s).to_owned()).collect(),
            recorded: Recorded::default(),
            resumes: Vec::new(),
            config: None,
        }
    }

    #[test]
    fn the_config_is_kept_and_a_different_one_is_recorded_by_the_resume() {
        let dir = Path::new("/runs/r");
        let settings = json!({"agent": {"kind": "gold"}});
        let mut old = manifest(settings.clone(), &["a"]);
        old.config = Some(json!({"benchmark": {"workers": 1}}));
        let mut same = manifest(settings.clone(), &["a"]);
        same.config = old.config.clone();
        let resumed = reconcile(Some(old.clone()), true, same, false, dir).unwrap();
        assert_eq!(resumed.config, old.config);
        assert_eq!(resumed.resumes[0].config, None, "same config: not repeated");

        let mut other = manifest(settings.clone(), &["a"]);
        other.config = Some(json!({"benchmark": {"workers": 4}}));
        let resumed = reconcile(Some(old.clone()), true, other.clone(), false, dir).unwrap();
        assert_eq!(resumed.config, old.config, "the run's config stays");
        assert_eq!(resumed.resumes[0].config, other.config);

        // A run started before configs were stored gets this invocation's.
        let resumed = reconcile(
            Some(manifest(settings, &["a"])),
            true,
            other.clone(),
            false,
            dir,
        )
        .unwrap();
        assert_eq!(resumed.config, other.config);
        assert_eq!(resumed.resumes[0].config, None);
    }

    #[test]
    fn diff_names_each_differing_leaf_with_both_values() {
        let old = json!({"agent": {"kind": "gold", "name": "gold", "config": null},
                         "grading": {"options": {"rule_set": "v4"}, "test_timeout_secs": 1800}, "same": [1, 2]});
        let new = json!({"agent": {"kind": "empty", "name": "empty", "config": null},
                         "grading": {"options": {"rule_set": "v4", "extra": true}, "test_timeout_secs": 60},
                         "same": [1, 2]});
        let diffs = diff_settings(&old, &new);
        let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "agent.kind",
                "agent.name",
                "grading.options.extra",
                "grading.test_timeout_secs"
            ]
        );
        assert_eq!(
            diffs[0].to_string(),
            r#"agent.kind: was "gold", now "empty""#
        );
        assert_eq!(
            diffs[2].to_string(),
            "grading.options.extra: was (not recorded), now true"
        );
        assert!(diff_settings(&old, &old).is_empty());
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let diff = FieldDiff {
            field: "agent.config.prompts.system".into(),
            old: Some(json!("é".repeat(500))),
            new: Some(json!("x")),
        };
        let text = diff.to_string();
        assert!(text.contains("… (502 chars)"), "{text}");
        assert!(text.len() < 400, "{text}");
    }

    #[test]
    fn resume_refuses_differences_unless_forced_and_widens_the_selection() {
        let dir = Path::new("/runs/r");
        let old = manifest(json!({"agent": {"kind": "gold"}}), &["a", "b"]);
        let same = manifest(json!({"agent": {"kind": "gold"}}), &["b", "c"]);
        let merged = reconcile(Some(old.clone()), true, same, false, dir).unwrap();
        assert_eq!(merged.instances, ["a", "b", "c"]);
        assert_eq!(merged.resumes.len(), 1);
        assert!(!merged.resumes[0].forced);
        assert_eq!(merged.resumes[0].added_instances, ["c"]);
        assert_eq!(merged.created_at, old.created_at);

        let other = manifest(json!({"agent": {"kind": "empty"}}), &["a"]);
        let error = reconcile(Some(old.clone()), true, other.clone(), false, dir).unwrap_err();
        assert!(error.is_usage());
        let text = error.to_string();
        assert!(
            text.contains(r#"agent.kind: was "gold", now "empty""#),
            "{text}"
        );
        assert!(
            text.contains("--force-resume") && text.contains("--run-id"),
            "{text}"
        );

        let forced = reconcile(Some(old), true, other, true, dir).unwrap();
        assert_eq!(
            forced.settings,
            json!({"agent": {"kind": "gold"}}),
            "the run's settings stay"
        );
        assert!(forced.resumes[0].forced);
        assert_eq!(forced.resumes[0].differences[0].field, "agent.kind");
    }

    #[test]
    fn results_without_a_manifest_need_force() {
        let dir = Path::new("/runs/r");
        let new = manifest(json!({"agent": {"kind": "gold"}}), &["a"]);
        assert_eq!(
            reconcile(None, false, new.clone(), false, dir).unwrap(),
            new,
            "a fresh run"
        );
        let error = reconcile(None, true, new.clone(), false, dir).unwrap_err();
        assert!(matches!(error, RunStartError::NoManifest { .. }));
        let forced = reconcile(None, true, new, true, dir).unwrap();
        assert!(forced.resumes[0].forced && forced.resumes[0].note.is_some());
    }

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_run_dir(dir.path(), "r").unwrap();
        let error = lock_run_dir(dir.path(), "r").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "run r is in use by another swe-env process (pid {}): wait for it to end, or use another --run-id",
                std::process::id()
            )
        );
        drop(held);
        lock_run_dir(dir.path(), "r").unwrap();
    }

    #[test]
    fn manifest_is_written_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let written = manifest(json!({"agent": {"kind": "gold"}}), &["a"]);
        write_atomically(&path, &written).unwrap();
        let back: RunManifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, written);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [MANIFEST_FILE], "no temp file left");
    }

    #[test]
    fn default_run_ids_have_time_and_a_random_suffix() {
        let ids: BTreeSet<String> = (0..20).map(|_| super::super::default_run_id()).collect();
        assert!(ids.len() > 1, "{ids:?}");
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 6, 4],
                "{id}"
            );
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }

    #[test]
    fn dataset_digest_hashes_the_content() {
        let fixtures = dataset_digest("fixtures").unwrap();
        assert_eq!(fixtures.path, None);
        assert_eq!(fixtures.sha256.len(), 64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "abc").unwrap();
        let digest = dataset_digest(path.to_str().unwrap()).unwrap();
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
