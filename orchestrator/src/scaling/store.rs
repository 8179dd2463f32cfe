//! The files of a scaled run directory: `samples.jsonl` (solving samples, graded), `testgen.jsonl` (test-generation
//! episodes and their validity checks) and `pairs.jsonl` (the cache of candidate × generated-test runs), each
//! append-only and fdatasynced per line, so a killed run resumes where it stopped and never runs a pair twice.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::testgen::{Rejection, ScriptRun, Validation};
use crate::benchmark::results::{read_json_lines, InstanceResult, InstanceStatus, ResultsFile};

/// File of the solving samples.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// File of the test-generation episodes.
pub const TESTGEN_FILE: &str = "testgen.jsonl";
/// File of the candidate × test runs.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// File of the per-instance selections (rewritten whole at the end of a run).
pub const SELECTION_FILE: &str = "selection.jsonl";
/// The scaling report.
pub const REPORT_FILE: &str = "scaling.json";

/// One finished solving sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The sample's result (graded unless `status` is `error`).
    #[serde(flatten)]
    pub result: InstanceResult,
    /// Sample index k.
    pub sample: u32,
    /// The sampling seed it was given.
    pub seed: u64,
    /// Its episode id (`<run>-<instance>.s<k>`).
    pub episode_id: String,
}

/// One finished test-generation episode and the validity check of its script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestgenRecord {
    /// Task id.
    pub instance_id: String,
    /// Repository.
    pub repo: String,
    /// Index m of the generated test.
    pub index: u32,
    /// The sampling seed it was given.
    pub seed: u64,
    /// Its episode id (`<run>-<instance>.t<m>`).
    pub episode_id: String,
    /// How the episode ended.
    pub episode_status: Option<String>,
    /// Agent steps.
    pub n_steps: u32,
    /// Model tokens.
    pub tokens: u64,
    /// Time in model calls, ms.
    pub model_ms: u64,
    /// Wall time of the episode and its check, ms.
    pub total_ms: u64,
    /// The submitted script.
    pub script: Option<String>,
    /// SHA-256 of the script.
    pub script_sha256: Option<String>,
    /// Valid; `None` when the episode or the check failed (infrastructure: `error_kind`).
    pub valid: Option<bool>,
    /// Why it was rejected.
    pub reason: Option<Rejection>,
    /// What the check saw, in words.
    pub detail: String,
    /// The check.
    pub validation: Option<Validation>,
    /// The failure's kind when `valid` is `None`.
    pub error_kind: Option<String>,
    /// The failure, in words.
    pub error: Option<String>,
}

impl TestgenRecord {
    /// The script, when the check found it valid.
    pub fn valid_script(&self) -> Option<(&str, &str)> {
        match (self.valid, &self.script, &self.script_sha256) {
            (Some(true), Some(script), Some(sha)) => Some((script, sha)),
            _ => None,
        }
    }
}

/// One run of a valid generated test against a candidate patch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRecord {
    /// Task id.
    pub instance_id: String,
    /// SHA-256 of the candidate patch.
    pub patch_sha256: String,
    /// SHA-256 of the test script.
    pub test_sha256: String,
    /// The test passed on the patched tree.
    pub passed: bool,
    /// The patch applied.
    pub patch_applied: bool,
    /// The run (none when the patch did not apply).
    pub run: Option<ScriptRun>,
    /// Container time, ms.
    pub container_ms: u64,
}

/// The open files of a scaled run and what they already hold.
pub struct Store {
    samples_file: ResultsFile,
    testgen_file: ResultsFile,
    pairs_file: ResultsFile,
    /// Last record per (instance, sample).
    pub samples: BTreeMap<(String, u32), SampleRecord>,
    /// Last record per (instance, index).
    pub testgen: BTreeMap<(String, u32), TestgenRecord>,
    /// Per (instance, patch sha256, test sha256).
    pub pairs: HashMap<(String, String, String), PairRecord>,
}

impl Store {
    /// Opens the run directory's files (creating them), reading what earlier invocations recorded.
    pub async fn open(dir: &Path) -> std::io::Result<Self> {
        let mut samples = BTreeMap::new();
        for record in read_json_lines::<SampleRecord>(&dir.join(SAMPLES_FILE)).await? {
            samples.insert((record.result.instance_id.clone(), record.sample), record);
        }
        let mut testgen = BTreeMap::new();
        for record in read_json_lines::<TestgenRecord>(&dir.join(TESTGEN_FILE)).await? {
            testgen.insert((record.instance_id.clone(), record.index), record);
        }
        let mut pairs = HashMap::new();
        for record in read_json_lines::<PairRecord>(&dir.join(PAIRS_FILE)).await? {
            pairs.insert(pair_key(&record), record);
        }
        Ok(Self {
            samples_file: ResultsFile::open(&dir.join(SAMPLES_FILE)).await?,
            testgen_file: ResultsFile::open(&dir.join(TESTGEN_FILE)).await?,
            pairs_file: ResultsFile::open(&dir.join(PAIRS_FILE)).await?,
            samples,
            testgen,
            pairs,
        })
    }

    /// Whether sample `sample` of `instance_id` is done (an error counts as done unless `retry_errors`).
    pub fn has_sample(&self, instance_id: &str, sample: u32, retry_errors: bool) -> bool {
        self.samples
            .get(&(instance_id.to_owned(), sample))
            .is_some_and(|r| !(retry_errors && r.result.status == InstanceStatus::Error))
    }

    /// Whether generated test `index` of `instance_id` is done (an infrastructure failure counts as done unless
    /// `retry_errors`).
    pub fn has_testgen(&self, instance_id: &str, index: u32, retry_errors: bool) -> bool {
        self.testgen
            .get(&(instance_id.to_owned(), index))
            .is_some_and(|r| !(retry_errors && r.valid.is_none()))
    }

    /// Records a sample durably.
    pub async fn add_sample(&mut self, record: SampleRecord) -> std::io::Result<()> {
        self.samples_file.append_json(&record).await?;
        self.samples
            .insert((record.result.instance_id.clone(), record.sample), record);
        Ok(())
    }

    /// Records a test-generation episode durably.
    pub async fn add_testgen(&mut self, record: TestgenRecord) -> std::io::Result<()> {
        self.testgen_file.append_json(&record).await?;
        self.testgen
            .insert((record.instance_id.clone(), record.index), record);
        Ok(())
    }

    /// Records a pair run durably.
    pub async fn add_pair(&mut self, record: PairRecord) -> std::io::Result<()> {
        self.pairs_file.append_json(&record).await?;
        self.pairs.insert(pair_key(&record), record);
        Ok(())
    }
}

fn pair_key(record: &PairRecord) -> (String, String, String) {
    (
        record.instance_id.clone(),
        record.patch_sha256.clone(),
        record.test_sha256.clone(),
    )
}
