//! Submissions contain only what the episode changed: untracked files the image already had (a `build/` tree left
//! by `pip install .` that `.gitignore` does not cover, as in real SWE-bench images) stay out while unchanged.

use std::collections::BTreeSet;
use std::process::Command;

use swe_env::agent::run_gold;
use swe_env::episode::{Action, EndInfo, StepMeta};
use swe_env::trajectory::{read_trajectory, EpisodeStatus};

use crate::common::{engine, start_episode, unique_id};
use crate::episode::fixture;

const FIXTURE_IMAGE: &str = "swe-env/fixture-spans:latest";
/// Generated untracked files under `build/lib/gen/` (thousands: no single command line may carry them all).
const N_GENERATED: usize = 3000;

/// Makes the derived image: a commit that stops ignoring `build/`, then untracked files under `build/lib/**`
/// (thousands, plus names with a space and a quote, a newline, a non-UTF-8 byte) and ignored files. Prints the
/// new HEAD and the number of untracked, non-ignored files.
const DERIVE_SCRIPT: &str = r#"set -e
cd /testbed
sed -i '/^build\/$/d' .gitignore
git -c user.email=t@e.st -c user.name=t commit -qam 'stop ignoring build/'
mkdir -p build/lib/spans build/lib/gen src/spans/__pycache__ src/spans.egg-info
cp src/spans/*.py build/lib/spans/
i=1; while [ "$i" -le 3000 ]; do echo "generated $i" > "build/lib/gen/f$i.txt"; i=$((i + 1)); done
printf 'a note\n' > "build/lib/it's a note.txt"
printf 'newline\n' > "build/lib/new
line.txt"
printf 'latin-1\n' > "$(printf 'build/lib/caf\351.txt')"
echo junk > src/spans/__pycache__/ops.cpython-311.pyc
echo meta > src/spans.egg-info/PKG-INFO
git rev-parse HEAD
git ls-files -z --others --exclude-standard | tr -cd '\0' | wc -c
"#;

/// A uniquely tagged image derived from the spans fixture; removed on drop.
struct DerivedImage {
    tag: String,
    base_commit: String,
    n_untracked: usize,
}

impl DerivedImage {
    fn build() -> Self {
        let id = unique_id("untracked");
        let tag = format!("swe-env-test/{id}:latest");
        let output = Command::new("docker")
            .args(["run", "--name", &id, "--network", "none", FIXTURE_IMAGE])
            .args(["bash", "-c", DERIVE_SCRIPT])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let committed = output.status.success()
            && Command::new("docker")
                .args(["commit", "--change", r#"CMD ["/bin/bash"]"#, &id, &tag])
                .output()
                .unwrap()
                .status
                .success();
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        assert!(
            committed,
            "deriving {tag} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines = stdout.lines();
        let base_commit = lines.next().unwrap().trim().to_owned();
        let n_untracked = lines.next().unwrap().trim().parse().unwrap();
        Self {
            tag,
            base_commit,
            n_untracked,
        }
    }
}

impl Drop for DerivedImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// The paths of a patch's `diff --git a/X b/X` headers (the `b/` side).
fn patch_files(patch: &str) -> BTreeSet<String> {
    patch
        .lines()
        .filter_map(|line| line.strip_prefix("diff --git "))
        .map(|rest| match rest.split_once(" b/") {
            Some((_, path)) => path.to_owned(),
            // A quoted name (a newline or a non-UTF-8 byte in it): keep git's C-style quoting.
            None => rest
                .split_once(" \"b/")
                .unwrap()
                .1
                .trim_end_matches('"')
                .to_owned(),
        })
        .collect()
}

fn text(action: &str) -> Action {
    Action::Text(action.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn submissions_leave_out_untracked_files_the_image_already_had() {
    let image = DerivedImage::build();
    assert!(
        image.n_untracked > N_GENERATED + 3,
        "{N_GENERATED} generated files, copies under build/lib/spans and 3 oddly named files: {}",
        image.n_untracked
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine().await;
    let mut instance = fixture("swe-env-fixtures__spans-1");
    instance.image = Some(image.tag.clone());
    instance.base_commit = image.base_commit.clone();

    // The gold agent: the submission touches exactly the gold patch's files.
    let mut gold = start_episode(
        &engine,
        dir.path(),
        &unique_id("untracked-gold"),
        instance.clone(),
    )
    .await;
    let outcome = run_gold(&mut gold).await.unwrap();
    if outcome.status != EpisodeStatus::Submitted {
        let trajectory = read_trajectory(&gold.trajectory_path()).await.unwrap();
        let last = trajectory.steps.last().map(|step| step.observation.clone());
        panic!("gold ended {:?}: {last:?}", outcome.status);
    }
    let submission = outcome.submission.unwrap();
    assert_eq!(
        patch_files(&submission),
        patch_files(&instance.patch),
        "{} bytes:\n{}",
        submission.len(),
        submission.chars().take(3000).collect::<String>()
    );
    // The index is as it was and the pre-existing files are still there.
    let out = gold
        .step(
            text("<tool: bash>\ngit diff --cached --name-only | wc -l; ls build/lib/gen | wc -l\n</tool>"),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert!(
        out.observation
            .contains(&format!("<output>\n0\n{N_GENERATED}\n")),
        "{}",
        out.observation
    );
    gold.finish(EndInfo::status(EpisodeStatus::Submitted))
        .await
        .unwrap();
    let trajectory = read_trajectory(&gold.trajectory_path()).await.unwrap();
    let limits = &trajectory.start.as_ref().unwrap().limits;
    assert_eq!(
        limits["submission_excluded_untracked_files"],
        serde_json::json!(image.n_untracked),
        "{limits}"
    );

    // An agent that edits a pre-existing untracked file, deletes another and creates a new one, then submits
    // without a path: the edited and the new file are in, nothing else.
    let mut agent = start_episode(
        &engine,
        dir.path(),
        &unique_id("untracked-agent"),
        instance.clone(),
    )
    .await;
    let out = agent
        .step(
            text(
                "<tool: bash>\nprintf 'edited\\n' >> \"build/lib/it's a note.txt\" && printf 'hello\\n' > \
                 'brand new.txt' && rm build/lib/gen/f1.txt\n</tool>",
            ),
            StepMeta::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.record.exit_code, Some(0), "{}", out.observation);
    let out = agent
        .step(text("<tool: submit>\n\n</tool>"), StepMeta::default())
        .await
        .unwrap();
    assert!(out.submitted, "{}", out.observation);
    let submission = agent.submission().unwrap().to_owned();
    assert_eq!(
        patch_files(&submission),
        BTreeSet::from([
            "build/lib/it's a note.txt".to_owned(),
            "brand new.txt".to_owned()
        ]),
        "{}",
        submission.chars().take(3000).collect::<String>()
    );
    assert!(submission.contains("+a note\n+edited\n"), "{submission}");
    assert!(submission.contains("+hello\n"), "{submission}");
    agent
        .finish(EndInfo::status(EpisodeStatus::Submitted))
        .await
        .unwrap();
}
