//! Episodes on fixture tasks: scripted actions, the gold agent, crash-safe trajectories, exports, and the edit
//! property in a real container.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use swe_env::agent::run_gold;
use swe_env::episode::{Action, EndInfo, StepMeta};
use swe_env::trajectory::export::{to_cwm_transcript, to_openai_chat};
use swe_env::trajectory::{read_trajectory, EpisodeStatus};
use swe_env_grading::dataset::{load_dataset_file, Instance};

use crate::common::{base_config, base_sandbox, engine, start_episode, unique_id};

pub fn fixtures_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/fixtures/tasks.jsonl")
}

pub fn fixture(instance_id: &str) -> Instance {
    let dataset = load_dataset_file(&fixtures_file()).unwrap();
    assert!(dataset.errors.is_empty(), "{:?}", dataset.errors);
    dataset
        .get(instance_id)
        .unwrap_or_else(|| panic!("no fixture {instance_id}"))
        .clone()
}

fn text(action: &str) -> Action {
    Action::Text(action.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_episode_fixes_a_fixture_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__spans-1");
    let id = unique_id("scripted");
    let mut episode = start_episode(&engine, dir.path(), &id, instance).await;

    // Anti-leak: no remotes, no refs besides the checked-out branch.
    let out = episode
        .step(
            text("<tool: bash>\ngit for-each-ref | wc -l; git remote | wc -l\n</tool>"),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert!(
        out.observation.contains("<output>\n1\n0\n"),
        "{}",
        out.observation
    );

    let out = episode.step(text("<think>look first</think>\n<tool: bash>\ngrep -n 'for start, end' src/spans/ops.py\n</tool>"), StepMeta::default()).await.unwrap();
    assert!(
        out.observation
            .contains("for start, end in map(_check, ranges):"),
        "{}",
        out.observation
    );
    assert!(out.observation.contains("<budget>"));

    // A malformed call is a format error, and the episode goes on.
    let out = episode
        .step(text("I will now edit the file."), StepMeta::default())
        .await
        .unwrap();
    assert!(
        out.observation.starts_with("FormatError:"),
        "{}",
        out.observation
    );
    assert!(!out.done);

    let edit = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>";
    let out = episode.step(text(edit), StepMeta::default()).await.unwrap();
    assert!(out.record.tool_error.is_none(), "{}", out.observation);
    let edit = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n        if merged and start < merged[-1][1]:\n=======\n        if merged and start <= merged[-1][1]:\n>>>>>>> REPLACE\n</tool>";
    let out = episode.step(text(edit), StepMeta::default()).await.unwrap();
    assert!(out.record.tool_error.is_none(), "{}", out.observation);

    let out = episode
        .step(
            text("<tool: bash>\npython -m pytest -q tests 2>&1 | tail -n 3\n</tool>"),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.record.exit_code, Some(0), "{}", out.observation);

    let out = episode
        .step(
            text("<tool: bash>\ngit diff > /tmp/fix.patch\n</tool>"),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.record.exit_code, Some(0));
    let out = episode
        .step(
            text("<tool: submit>\n/tmp/fix.patch\n</tool>"),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert!(out.submitted && out.done, "{}", out.observation);
    let submission = episode.submission().unwrap().to_owned();
    assert!(
        submission.contains("+    for start, end in sorted(map(_check, ranges)):"),
        "{submission}"
    );
    let mut end = EndInfo::status(EpisodeStatus::Submitted);
    end.final_answer = Some("Sorted the ranges before merging and merged touching ranges.".into());
    episode.finish(end).await.unwrap();
    assert!(episode
        .step(text("<tool: bash>\ntrue\n</tool>"), StepMeta::default())
        .await
        .is_err());

    let trajectory = read_trajectory(&episode.trajectory_path()).await.unwrap();
    assert!(!trajectory.torn_tail);
    assert_eq!(trajectory.steps.len(), 8);
    let start = trajectory.start.as_ref().unwrap();
    assert!(start.image_id.starts_with("sha256:"));
    assert_eq!(
        trajectory.end.as_ref().unwrap().status,
        EpisodeStatus::Submitted
    );
    assert!(trajectory.steps[2].format_error.is_some());

    let chat = to_openai_chat(&trajectory);
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2 + 2 * 8 + 1);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[3]["role"], "user");
    let cwm = to_cwm_transcript(&trajectory);
    let roles: Vec<&str> = cwm["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"tool: bash")
            && roles.contains(&"tool: edit")
            && roles.contains(&"tool: submit"),
        "{roles:?}"
    );
    assert_eq!(
        roles[2 + 2 * 2 + 1],
        "user",
        "format errors go back as user turns: {roles:?}"
    );
    // Both exports are loadable by HF `datasets` when written one JSON per line.
    let out_file = dir.path().join("chat.jsonl");
    std::fs::write(&out_file, format!("{chat}\n{chat}\n")).unwrap();
    for line in std::fs::read_to_string(&out_file).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value["messages"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_agent_submits_the_gold_change_on_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine().await;
    let dataset = load_dataset_file(&fixtures_file()).unwrap();
    assert!(dataset.instances.len() >= 5);
    for instance in dataset.instances.clone() {
        let gold = instance.patch.clone();
        let id = unique_id("gold");
        let mut episode = start_episode(&engine, dir.path(), &id, instance.clone()).await;
        let outcome = run_gold(&mut episode).await.unwrap();
        assert_eq!(
            outcome.status,
            EpisodeStatus::Submitted,
            "{}",
            instance.instance_id
        );
        let submission = outcome.submission.unwrap();
        // Same files, same added and removed lines as the gold patch.
        let changed = |patch: &str| -> Vec<String> {
            patch
                .lines()
                .filter(|l| {
                    (l.starts_with('+') || l.starts_with('-'))
                        && !l.starts_with("+++")
                        && !l.starts_with("---")
                })
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            changed(&submission),
            changed(&gold),
            "{}",
            instance.instance_id
        );
        episode
            .finish(EndInfo::status(outcome.status))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_episode_leaves_a_readable_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_swe-env");
    let mut child = Command::new(exe)
        .args(["shell", "--task", "swe-env-fixtures__spans-1", "--tasks"])
        .arg(fixtures_file())
        .arg("--trajectory-dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.starts_with("episode ready"), "{banner}");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for i in 0..5 {
        writeln!(stdin, "<tool: bash>\necho step-{i}\n</tool>").unwrap();
        stdin.flush().unwrap();
        // Read the observation up to the end of its budget block.
        let mut seen = String::new();
        while !seen.contains("</budget>") {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child ended early: {seen}"
            );
            seen.push_str(&line);
        }
        assert!(seen.contains(&format!("step-{i}")), "{seen}");
    }
    // A step in flight when the process dies.
    writeln!(stdin, "<tool: bash>\nsleep 30\n</tool>").unwrap();
    stdin.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let trajectory = read_trajectory(&files[0]).await.unwrap();
    assert!(trajectory.start.is_some());
    assert_eq!(trajectory.steps.len(), 5);
    for (i, step) in trajectory.steps.iter().enumerate() {
        assert!(step.observation.contains(&format!("step-{i}")));
    }
    assert!(trajectory.end.is_none());
    // Its container is an orphan now; gc removes it (checked in gc tests); clean up here.
    let _ = Command::new(exe).args(["gc"]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_matches_the_reference_on_generated_files_in_a_container() {
    let sb = base_sandbox("edit-prop", base_config()).await;
    sb.run_command("mkdir -p /root/prop", Duration::from_secs(10))
        .await
        .unwrap();
    swe_env_tools::testing::run_edit_property(&sb, "/root/prop", 48, 0x5eed)
        .await
        .unwrap();
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_agent_falls_back_to_git_apply_when_an_edit_is_ambiguous() {
    // A one-line-context hunk whose old side (two blank lines) occurs several times in the file: the edit tool
    // must refuse it, and the gold agent must still land the change (reset the file, `git apply` its diff).
    let patch = "diff --git a/src/spans/ops.py b/src/spans/ops.py\n--- a/src/spans/ops.py\n+++ b/src/spans/ops.py\n@@ -26,2 +26,3 @@ def merge(ranges):\n \n+# marker between functions\n \n";
    let dir = tempfile::tempdir().unwrap();
    let engine = engine().await;
    let mut instance = fixture("swe-env-fixtures__spans-1");
    instance.patch = patch.to_owned();
    let mut episode =
        start_episode(&engine, dir.path(), &unique_id("gold-fallback"), instance).await;
    let outcome = run_gold(&mut episode).await.unwrap();
    assert_eq!(outcome.status, EpisodeStatus::Submitted);
    let submission = outcome.submission.unwrap();
    assert!(
        submission.contains("+# marker between functions"),
        "{submission}"
    );
    episode
        .finish(EndInfo::status(outcome.status))
        .await
        .unwrap();
    let trajectory = read_trajectory(&episode.trajectory_path()).await.unwrap();
    assert_eq!(
        trajectory.steps[0].tool_error.as_deref(),
        Some("several_occurrences"),
        "{:?}",
        trajectory.steps[0]
    );
    assert!(
        trajectory
            .steps
            .iter()
            .any(|s| s.raw_action.contains("git apply -v")),
        "no git apply fallback step"
    );
}
