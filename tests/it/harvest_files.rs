//! The harvest store's files as other tools read them: a store written with synthetic rollouts (no Docker, no
//! model), then Python reads every shard with `zstandard` (whole shards across frames, and each manifest row's
//! frame alone), `manifest.jsonl` with `json`, and `manifest.parquet` with `pyarrow`; the `zstd` command line
//! decodes a shard too. The venv lives under the target directory and is reused (`data_venv`); without Python,
//! pip or a reachable package index this test fails loudly.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use swe_env::harvest::store::{
    rollout_id, DatasetEntry, HarvestHeader, HarvestStore, RolloutLine, RolloutTiming,
    SpentSummary, StoreOptions,
};
use swe_env::trajectory::record::{
    EpisodeEnd, EpisodeStart, EpisodeStatus, Record, StepRecord, StepTokens,
};

use crate::common::assert_success;

/// Python with `zstandard` and `pyarrow`, in a venv under the test target directory, made once.
pub fn data_venv() -> PathBuf {
    crate::common::python_venv(
        "harvest-data-venv",
        &["zstandard", "pyarrow"],
        "import zstandard, pyarrow.parquet",
    )
}

const DATASET: &str = "5ca1ab1e";
const CONFIG_HASH: &str = "c0ffee";

fn synthetic_rollout(instance_id: &str, sample_idx: u32) -> RolloutLine {
    let id = rollout_id(DATASET, instance_id, sample_idx, CONFIG_HASH);
    let at = "2026-01-01T00:00:00.000Z".to_owned();
    let mut records = vec![Record::EpisodeStart(EpisodeStart {
        schema_version: 1,
        episode_id: format!("{instance_id}.s{sample_idx}.{}.0000", &id[..8]),
        instance_id: instance_id.into(),
        task: json!({"instance_id": instance_id, "repo": "owner/repo"}),
        image: "img".into(),
        image_id: String::new(),
        image_digests: vec![],
        tool_format: "text".into(),
        limits: json!({}),
        model: None,
        prompt: vec![],
        versions: json!({}),
        started_at: at.clone(),
        owner: None,
    })];
    for step_idx in 0..=sample_idx {
        records.push(Record::Step(StepRecord {
            step_idx,
            request_id: None,
            raw_action: format!("<tool: bash>\necho {step_idx}\n</tool>"),
            reasoning: None,
            content: None,
            parsed_call: Some(json!({"tool": "bash", "command": format!("echo {step_idx}")})),
            tool: Some("bash".into()),
            tool_call_id: None,
            format_error: None,
            tool_error: None,
            // Unicode and enough bytes that a few rollouts fill a small shard.
            observation: format!("{step_idx} ünïcødé ") + &"x".repeat(700 + 37 * step_idx as usize),
            exit_code: Some(0),
            timed_out: false,
            truncated: false,
            restarted: false,
            tool_ms: 3,
            model_ms: Some(5),
            tokens: StepTokens {
                prompt: Some(1000),
                completion: Some(20),
                finish_reason: Some("stop".into()),
                ..StepTokens::default()
            },
            at: at.clone(),
        }));
    }
    let resolved = sample_idx.is_multiple_of(2);
    records.push(Record::EpisodeEnd(EpisodeEnd {
        status: EpisodeStatus::Submitted,
        detail: None,
        submission: Some(format!("diff --git a/f b/f\n+{sample_idx}\n")),
        final_answer: None,
        final_answer_tokens: None,
        final_answer_reasoning: None,
        n_steps: sample_idx + 1,
        rewards: Some(
            json!({"resolved": resolved, "execution": if resolved { 1.0 } else { -1.0 }}),
        ),
        grading: None,
        duration_ms: 9,
        ended_at: at,
    }));
    RolloutLine {
        rollout_id: id,
        dataset_sha256: DATASET.into(),
        config_hash: CONFIG_HASH.into(),
        instance_id: instance_id.into(),
        repo: "owner/repo".into(),
        sample_idx,
        seed: Some(u64::from(sample_idx) + 42),
        temperature: Some(0.5),
        model: "scripted".into(),
        resolved,
        timing: RolloutTiming {
            wall_ms: 100,
            start_ms: 10,
            model_ms: 20,
            tool_ms: 30,
            grade_ms: 40,
        },
        records,
    }
}

const READ_HARVEST: &str = r#"
import glob, json, os, sys
import pyarrow.parquet as pq
import zstandard

out = sys.argv[1]
shards = {}
for path in sorted(glob.glob(os.path.join(out, "shards", "*.jsonl.zst"))):
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        text = reader.read().decode("utf-8")
    lines = text.splitlines()
    shards[os.path.basename(path)] = [json.loads(line)["rollout_id"] for line in lines]
rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"), encoding="utf-8")]
frames_ok = 0
for row in rows:
    with open(os.path.join(out, "shards", row["shard"]), "rb") as f:
        f.seek(row["offset"])
        frame = f.read(row["length"])
    data = zstandard.ZstdDecompressor().decompress(frame)
    line = json.loads(data)
    if line["rollout_id"] == row["rollout_id"] and len(data) == row["bytes"] and data.endswith(b"\n"):
        frames_ok += 1
table = pq.read_table(os.path.join(out, "manifest.parquet"))
parquet = {
    "num_rows": table.num_rows,
    "columns": table.column_names,
    "rollout_id": table.column("rollout_id").to_pylist(),
    "sample_idx": table.column("sample_idx").to_pylist(),
    "reward": table.column("reward").to_pylist(),
    "n_turns": table.column("n_turns").to_pylist(),
    "rewards": [json.loads(r) for r in table.column("rewards").to_pylist()],
    "types": {f.name: str(f.type) for f in table.schema},
}
card = json.load(open(os.path.join(out, "data_card.json"), encoding="utf-8"))
print(json.dumps({"shards": shards, "rows": len(rows), "frames_ok": frames_ok, "parquet": parquet,
                  "card_rollouts": card["rollouts"]}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_reads_shards_manifest_and_parquet_written_by_the_store() {
    let python = tokio::task::spawn_blocking(data_venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let header = HarvestHeader {
        datasets: vec![DatasetEntry {
            source: "synthetic".into(),
            sha256: DATASET.into(),
            rows: 3,
        }],
        config_hash: CONFIG_HASH.into(),
        config: json!({"model": "scripted"}),
    };
    let options = StoreOptions {
        max_shard_bytes: 1200,
    };
    // Two invocations, so the second appends to the shards and manifest the first left.
    let mut expected = Vec::new();
    for (instances, samples) in [(["a__a-1", "b__b-2"], 0..3), (["a__a-1", "b__b-2"], 3..5)] {
        let mut store = HarvestStore::open(&out, header.clone(), options)
            .await
            .unwrap();
        for instance in instances {
            for k in samples.clone() {
                let row = store.commit(synthetic_rollout(instance, k)).await.unwrap();
                expected.push(row);
            }
        }
        store.finish(SpentSummary::default()).await.unwrap();
    }
    assert_eq!(expected.len(), 10);

    let output = Command::new(&python)
        .args(["-c", READ_HARVEST])
        .arg(&out)
        .output()
        .unwrap();
    assert_success(&output, "reading the harvest with zstandard + pyarrow");
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Every shard decodes whole, every line is a committed rollout, in commit order, none twice.
    let shards = seen["shards"].as_object().unwrap();
    assert!(shards.len() >= 3, "expected several shards: {seen}");
    let mut in_shards: Vec<(String, String)> = Vec::new();
    for (name, ids) in shards {
        for id in ids.as_array().unwrap() {
            in_shards.push((name.clone(), id.as_str().unwrap().to_owned()));
        }
    }
    let committed: Vec<(String, String)> = expected
        .iter()
        .map(|r| (r.shard.clone(), r.rollout_id.clone()))
        .collect();
    assert_eq!(in_shards, committed);
    assert_eq!(seen["rows"], 10);
    assert_eq!(
        seen["frames_ok"], 10,
        "each row's frame decodes alone: {seen}"
    );

    let parquet = &seen["parquet"];
    assert_eq!(parquet["num_rows"], 10);
    let columns: Vec<&str> = parquet["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns.len(), 35);
    for column in [
        "rollout_id",
        "instance_id",
        "sample_idx",
        "status",
        "resolved",
        "reward",
        "rewards",
        "total_tokens",
        "patch_hash",
        "trajectory_hash",
        "shard",
        "offset",
        "length",
        "created_at",
    ] {
        assert!(columns.contains(&column), "{column} missing: {columns:?}");
    }
    let ids: Vec<&str> = expected.iter().map(|r| r.rollout_id.as_str()).collect();
    assert_eq!(parquet["rollout_id"], json!(ids));
    assert_eq!(parquet["sample_idx"], json!([0, 1, 2, 0, 1, 2, 3, 4, 3, 4]));
    assert_eq!(
        parquet["reward"],
        json!([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    );
    assert_eq!(parquet["n_turns"], json!([1, 2, 3, 1, 2, 3, 4, 5, 4, 5]));
    assert_eq!(
        parquet["rewards"][1],
        json!({"resolved": false, "execution": -1.0})
    );
    let types = &parquet["types"];
    assert_eq!(types["rollout_id"], "string");
    assert_eq!(types["sample_idx"], "int32");
    assert_eq!(types["total_tokens"], "int64");
    assert_eq!(types["resolved"], "bool");
    assert_eq!(types["temperature"], "double");
    assert_eq!(seen["card_rollouts"], 10);

    // The zstd command line reads a whole shard too.
    let first = &expected[0];
    let zstd = Command::new("zstd")
        .arg("-dc")
        .arg(out.join("shards").join(&first.shard))
        .output()
        .unwrap();
    assert_success(&zstd, "zstd -dc of a shard");
    let text = String::from_utf8(zstd.stdout).unwrap();
    let first_line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first_line["rollout_id"], first.rollout_id.as_str());
}

/// `--out` naming a directory of someone else's files (no `harvest.json`) is refused with exit 2 before anything
/// in it is touched: its `work/` is not cleared and no lock file is left.
#[test]
fn harvest_refuses_an_out_directory_that_is_not_a_harvest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mine");
    std::fs::create_dir_all(out.join("work")).unwrap();
    std::fs::write(out.join("work/draft.txt"), "precious").unwrap();
    std::fs::write(out.join("notes.md"), "mine").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["harvest", "--dataset", "fixtures", "--model-url"])
        .arg("http://127.0.0.1:9/v1")
        .args(["--model", "m", "--samples", "1", "--out"])
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not empty and is not a harvest directory: give a new or empty --out"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("work/draft.txt")).unwrap(),
        "precious"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.md", "work"]);
}
