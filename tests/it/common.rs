//! Shared helpers: engine connection, unique ids, the base image, starting an episode.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use swe_env::agent::builtin_prompt;
use swe_env::episode::{Episode, EpisodeConfig, StartInfo};
use swe_env_grading::dataset::Instance;

use swe_env_sandbox::{DockerEngine, DockerSandbox, SandboxConfig};

/// The base image built by images/base/build.sh.
pub const BASE_IMAGE: &str = "swe-env/base:bookworm";

pub async fn engine() -> DockerEngine {
    DockerEngine::connect(Duration::from_secs(60))
        .await
        .expect("these tests need a running Docker engine (CI starts dockerd; see .ci/run)")
}

pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("test-{prefix}-{}-{nanos:08x}", std::process::id())
}

pub async fn base_sandbox(prefix: &str, config: SandboxConfig) -> DockerSandbox {
    let engine = engine().await;
    assert!(
        engine.image_info(BASE_IMAGE).await.unwrap().is_some(),
        "image {BASE_IMAGE} is missing: run images/build.sh first"
    );
    engine
        .create_sandbox(BASE_IMAGE, &unique_id(prefix), config)
        .await
        .unwrap()
}

pub fn base_config() -> SandboxConfig {
    SandboxConfig {
        workdir: "/root".into(),
        ..SandboxConfig::default()
    }
}

/// Starts an episode of `instance` as the tests' agents do: the default config with trajectories under `dir`,
/// the built-in prompt, no model.
pub async fn start_episode(
    engine: &DockerEngine,
    dir: &Path,
    id: &str,
    instance: Instance,
) -> Episode {
    let config = EpisodeConfig {
        trajectory_dir: dir.to_owned(),
        ..EpisodeConfig::default()
    };
    let info = StartInfo {
        model: None,
        prompt: builtin_prompt(&instance.problem_statement),
    };
    Episode::start(engine, id, instance, config, info)
        .await
        .unwrap()
}

/// A finished command's exit status, stdout and stderr, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that a finished command exited 0; the panic names `what` and shows its status, stdout and stderr.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        describe(output)
    );
}

/// Runs `command` to its end and asserts it exited 0 (see [`assert_success`]); returns its output.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert_success(&output, &format!("{command:?}"));
    output
}

/// Starts `swe-env shell` on the base image with `env` added to its environment, and reads the id of the container
/// it created from its stderr banner. The caller ends the child.
pub fn spawn_shell(env: Vec<(&'static str, OsString)>) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["shell", "--image", BASE_IMAGE])
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn swe-env shell");
    let mut banner = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let id = banner
        .split("container ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no container id in banner {banner:?}"));
    (child, id)
}

/// `swe-env gc --json` with `args` added (e.g. `--dry-run`) and `env` added to its environment: must succeed;
/// returns its JSON report.
pub fn gc_report(args: &[&str], env: Vec<(&'static str, OsString)>) -> serde_json::Value {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_swe-env"))
            .args(["gc", "--json"])
            .args(args)
            .envs(env),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The container ids a gc report says it removed.
pub fn removed_ids(report: &serde_json::Value) -> Vec<&str> {
    report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect()
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Python with `packages`, in the venv `name` under the test target directory, made once: `import_check` (a Python
/// statement) decides whether it is ready. A file lock keeps tests running at the same time from racing or
/// installing twice.
pub fn python_venv(name: &str, packages: &[&str], import_check: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let lock = std::fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    let venv = root.join(name);
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", import_check])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        run_ok(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        );
        run_ok(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet"])
                .args(packages),
        );
    }
    python
}

/// pyenv's interpreter for Python 3.`minor` (`/root/.pyenv/versions/3.<minor>.*/bin/python3`); panics naming
/// `what` (the stdlib-only script that must run on every Python task images use, 3.6-3.12) when it is missing.
pub fn pyenv_python(minor: u32, what: &str) -> std::path::PathBuf {
    let prefix = format!("3.{minor}.");
    let versions = Path::new("/root/.pyenv/versions");
    let found = std::fs::read_dir(versions)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix))
        })
        .map(|path| path.join("bin/python3"))
        .find(|python| python.exists());
    found.unwrap_or_else(|| {
        panic!(
            "no Python 3.{minor} under {}: {what} must be tested on every Python task images use (3.6-3.12); \
             install it with pyenv",
            versions.display()
        )
    })
}

/// One `#[test]` per pyenv interpreter task images use (`python_3_6` … `python_3_12`) plus `system_python`
/// (/usr/bin/python3), each calling `$run(&interpreter)`: for the stdlib-only scripts piped into task containers
/// (`$what` names the script in the message when an interpreter is missing).
macro_rules! per_python {
    ($what:expr, $run:path) => {
        $crate::common::per_python!(@each $what, $run,
            python_3_6 => 6, python_3_7 => 7, python_3_8 => 8, python_3_9 => 9,
            python_3_10 => 10, python_3_11 => 11, python_3_12 => 12);
        #[test]
        fn system_python() {
            $run(std::path::Path::new("/usr/bin/python3"));
        }
    };
    (@each $what:expr, $run:path, $($name:ident => $minor:expr),*) => {
        $(
            #[test]
            fn $name() {
                $run(&$crate::common::pyenv_python($minor, $what));
            }
        )*
    };
}
pub(crate) use per_python;

/// A JSON file, parsed (the test fails naming the file when it cannot be read or parsed).
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// The non-blank lines of a JSON-lines file, parsed.
pub fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}
