//! The one configuration file (`--config`) of `run-benchmark`, `run-episode`, `harvest` and `serve`, through the
//! real binary: `--print-config` shows the file's values and the flags over them, the printed config is accepted
//! back unchanged, unknown keys are refused with file:line:column, a run stores its effective config in
//! manifest.json and resumes with the same file, the context window comes from the model endpoint, and the old
//! option names still work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};

use crate::common::{assert_success, describe, read_json, unique_id};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const SPANS: &str = "swe-env-fixtures__spans-1";
/// The API key the config's `api_key_env` names: it must never be printed or stored.
const SECRET: &str = "sk-config-test-secret";

/// A unified file setting a value in each shared section and each command's own section.
const UNIFIED: &str = "\
# one file for every command
model:
  urls: [http://127.0.0.1:9/v1]
  name: config-model
  api_key_env: CONFIG_TEST_KEY
  request_timeout: 77
agent:
  mode: chat-tools
  sampling:
    temperature: 0.3
budgets:
  max_turns: 7
  context_tokens: 50000
  episode_timeout: 900
sandbox:
  anti_leak: full
  pids_limit: 512
grading:
  rules: hardened
  network: none
  test_timeout: 300
benchmark:
  workers: 3
  pull: never
harvest:
  datasets: [fixtures]
  samples: 2
  out: harvest-out
serve:
  max_episodes: 11
  tasks: [fixtures]
";

/// The complete example of the README's "Configuration" section, read from README.md itself (the YAML block that
/// starts with `# swe-env.yaml`), so the documentation cannot drift from what the commands accept.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("```yaml\n# swe-env.yaml")
        .expect("README.md has the Configuration example")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn swe_env(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env_remove("RUST_LOG")
        .env("CONFIG_TEST_KEY", SECRET)
        .env("MY_API_KEY", SECRET)
        .output()
        .unwrap_or_else(|e| panic!("cannot run swe-env {args:?}: {e}"))
}

/// `swe-env <args> --print-config`: exit 0 and the printed JSON.
fn print_config(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--print-config");
    let output = swe_env(&all);
    assert_success(&output, &format!("swe-env {all:?}"));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(SECRET),
        "--print-config printed the API key"
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("--print-config is not JSON ({e}): {}", describe(&output)))
}

/// The command line of each command with `--config FILE` (and what each needs besides).
fn command_args(command: &str, config: &Path) -> Vec<String> {
    let config = config.display().to_string();
    let mut args: Vec<String> = match command {
        "run-benchmark" => vec!["run-benchmark".into(), "fixtures".into()],
        other => vec![other.into()],
    };
    args.extend(["--config".into(), config]);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Each command prints the file's value, a flag overrides it, and the printed config fed back as `--config` prints
/// the same config again.
#[test]
fn print_config_shows_file_values_flags_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "swe-env.yaml", UNIFIED);
    // (command, pointer to max_turns in the printed config, pointer to a command-specific value and its file value)
    let cases: [(&str, &str, &str, Value); 4] = [
        (
            "run-benchmark",
            "/budgets/max_turns",
            "/benchmark/workers",
            Value::from(3),
        ),
        (
            "run-episode",
            "/budgets/max_turns",
            "/agent/sampling/temperature",
            Value::from(0.3),
        ),
        (
            "harvest",
            "/harvest/max_turns",
            "/harvest/samples",
            Value::from(2),
        ),
        (
            "serve",
            "/serve/episode/max_turns",
            "/serve/max_episodes",
            Value::from(11),
        ),
    ];
    for (command, turns, own, own_value) in cases {
        let args = command_args(command, &config);
        let printed = print_config(&strs(&args));
        assert_eq!(
            printed.pointer(turns),
            Some(&Value::from(7)),
            "{command}: budgets.max_turns of the file not shown at {turns}: {printed:#}"
        );
        assert_eq!(
            printed.pointer(own),
            Some(&own_value),
            "{command}: {own}: {printed:#}"
        );
        // A flag beats the file.
        let mut overridden = args.clone();
        match command {
            "serve" => overridden.extend(["--max-episodes".into(), "5".into()]),
            _ => overridden.extend(["--max-turns".into(), "9".into()]),
        }
        let flagged = print_config(&strs(&overridden));
        let (pointer, expected) = match command {
            "serve" => (own, 5),
            _ => (turns, 9),
        };
        assert_eq!(
            flagged.pointer(pointer),
            Some(&Value::from(expected)),
            "{command}: the flag did not override the file: {flagged:#}"
        );
        // Round trip: the printed config is a config file that prints the same.
        let again_path = write(
            dir.path(),
            &format!("{command}.printed.yaml"),
            &serde_json::to_string_pretty(&flagged).unwrap(),
        );
        let again = print_config(&strs(&command_args(command, &again_path)));
        assert_eq!(
            again, flagged,
            "{command}: the round trip changed the config"
        );
    }
    // Shared sections reach each command: run-benchmark's grading and sandbox, harvest's endpoint and grading.
    let bench = print_config(&strs(&command_args("run-benchmark", &config)));
    assert_eq!(bench["grading"]["rules"], "hardened", "{bench:#}");
    assert_eq!(bench["grading"]["network"], "none", "{bench:#}");
    assert_eq!(bench["sandbox"]["anti_leak"], "full", "{bench:#}");
    assert_eq!(bench["sandbox"]["pids_limit"], 512, "{bench:#}");
    assert_eq!(bench["budgets"]["context_tokens"], 50000, "{bench:#}");
    assert!(
        bench.get("harvest").is_none() && bench.get("serve").is_none(),
        "run-benchmark printed other commands' sections: {bench:#}"
    );
    let harvest = print_config(&strs(&command_args("harvest", &config)));
    assert_eq!(
        harvest["harvest"]["endpoints"][0]["url"], "http://127.0.0.1:9/v1",
        "{harvest:#}"
    );
    assert_eq!(harvest["harvest"]["model"], "config-model", "{harvest:#}");
    assert_eq!(harvest["harvest"]["context_tokens"], 50000, "{harvest:#}");
    assert_eq!(harvest["harvest"]["episode_timeout"], 900, "{harvest:#}");
    assert_eq!(harvest["harvest"]["request_timeout"], 77, "{harvest:#}");
    assert_eq!(harvest["harvest"]["rules"], "hardened", "{harvest:#}");
    let episode = print_config(&strs(&command_args("run-episode", &config)));
    assert_eq!(episode["model"]["name"], "config-model", "{episode:#}");
    assert_eq!(
        episode["model"]["api_key_env"], "CONFIG_TEST_KEY",
        "{episode:#}"
    );
    assert_eq!(episode["agent"]["mode"], "chat-tools", "{episode:#}");
    assert_eq!(episode["budgets"]["episode_timeout"], 900, "{episode:#}");
    let serve = print_config(&strs(&command_args("serve", &config)));
    assert_eq!(
        serve["serve"]["grading"]["network_mode"], "none",
        "{serve:#}"
    );
    assert_eq!(serve["serve"]["episode"]["anti_leak"], "full", "{serve:#}");
    assert_eq!(
        serve["serve"]["episode"]["context_tokens"], 50000,
        "{serve:#}"
    );
}

/// An unknown key is refused (exit 2) naming the file, its line and column, and the key; for every command.
#[test]
fn unknown_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "typo.yaml",
        "budgets:\n  max_turns: 3\n  max_turnz: 4\n",
    );
    let place = format!("{}:3:3", config.display());
    for command in ["run-benchmark", "run-episode", "harvest", "serve"] {
        let args = command_args(command, &config);
        let mut all = strs(&args);
        all.push("--print-config");
        let output = swe_env(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            describe(&output)
        );
        assert!(
            stderr.contains("max_turnz") && stderr.contains(&place),
            "{command}: the error does not name {place} and the key: {stderr}"
        );
    }
    // Inside a command's own section too.
    let own = write(
        dir.path(),
        "own.yaml",
        "serve:\n  max_episodes: 3\n  max_episodez: 4\n",
    );
    let output = swe_env(&["serve", "--config", own.to_str().unwrap(), "--print-config"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        stderr.contains("max_episodez") && stderr.contains("line 3"),
        "{stderr}"
    );
    // run-benchmark ignores the serve section's contents (another command's section).
    print_config(&[
        "run-benchmark",
        "fixtures",
        "--config",
        own.to_str().unwrap(),
    ]);
}

/// The old option names are accepted as hidden aliases of the new ones.
#[test]
fn old_option_names_still_work() {
    let bench = print_config(&["run-benchmark", "fixtures", "--timeout", "61"]);
    assert_eq!(bench["budgets"]["episode_timeout"], 61, "{bench:#}");
    let episode = print_config(&[
        "run-episode",
        "--model-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--wall-clock-secs",
        "62",
        "--request-timeout-secs",
        "8",
    ]);
    assert_eq!(episode["budgets"]["episode_timeout"], 62, "{episode:#}");
    assert_eq!(episode["model"]["request_timeout"], 8, "{episode:#}");
    let harvest = print_config(&[
        "harvest",
        "--out",
        "harvest-out",
        "--dataset",
        "fixtures",
        "--model-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--rollout-token-budget",
        "4096",
        "--rollout-time-budget-secs",
        "63",
        "--request-timeout-secs",
        "9",
    ]);
    assert_eq!(harvest["harvest"]["context_tokens"], 4096, "{harvest:#}");
    assert_eq!(harvest["harvest"]["episode_timeout"], 63, "{harvest:#}");
    assert_eq!(harvest["harvest"]["request_timeout"], 9, "{harvest:#}");
    // An old flat harvest file with the old key names is still read.
    let dir = tempfile::tempdir().unwrap();
    let flat = write(
        dir.path(),
        "flat.yaml",
        "datasets: [fixtures]\nout: h\nmodel: m\nendpoints: [{url: http://127.0.0.1:9/v1}]\nrollout_token_budget: 2048\n",
    );
    let harvest = print_config(&["harvest", "--config", flat.to_str().unwrap()]);
    assert_eq!(harvest["harvest"]["context_tokens"], 2048, "{harvest:#}");
    // A file holding only the server's section, with the server's own `grading` keys, is still read as such.
    let flat = write(
        dir.path(),
        "serve.yaml",
        "tasks: [fixtures]\nmax_episodes: 4\ngrading:\n  network_mode: none\n",
    );
    let serve = print_config(&["serve", "--config", flat.to_str().unwrap()]);
    assert_eq!(serve["serve"]["max_episodes"], 4, "{serve:#}");
    assert_eq!(
        serve["serve"]["grading"]["network_mode"], "none",
        "{serve:#}"
    );
}

fn run_benchmark(args: &[&str]) -> Output {
    let mut all = vec!["run-benchmark", "fixtures"];
    all.extend_from_slice(args);
    swe_env(&all)
}

/// A run with a config file stores the effective config in manifest.json (no API key, only its variable) and
/// resumes with the same file.
#[test]
fn run_stores_effective_config_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let config = write(
        dir.path(),
        "run.yaml",
        &format!(
            "budgets:\n  max_turns: 20\n  context_tokens: 50000\ngrading:\n  network: none\nbenchmark:\n  \
             output_dir: {}\n  workers: 1\n  instance_ids: [{SPANS}]\n",
            out.display()
        ),
    );
    let run_id = unique_id("cfg-run");
    let args = [
        "--agent",
        "gold",
        "--config",
        config.to_str().unwrap(),
        "--run-id",
        &run_id,
        "--json",
    ];
    let first = run_benchmark(&args);
    assert_success(&first, "run-benchmark with a config file");
    let manifest_path = out.join(&run_id).join("manifest.json");
    let manifest = read_json(&manifest_path);
    let stored = &manifest["config"];
    assert_eq!(stored["budgets"]["max_turns"], 20, "{manifest:#}");
    assert_eq!(stored["budgets"]["context_tokens"], 50000, "{manifest:#}");
    assert_eq!(stored["grading"]["network"], "none", "{manifest:#}");
    assert_eq!(stored["benchmark"]["workers"], 1, "{manifest:#}");
    assert_eq!(manifest["recorded"]["context_tokens_source"], "config");
    assert_eq!(manifest["settings"]["episode"]["context_tokens"], 50000);
    assert_eq!(manifest["settings"]["episode"]["max_turns"], 20);
    // The stored config is itself a config file for the same run.
    let printed = print_config(&[
        "run-benchmark",
        "fixtures",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(
        &printed, stored,
        "manifest config differs from --print-config"
    );

    // Resume: same file, more workers (not result-changing) → accepted, no settings difference.
    let resumed = run_benchmark(&[&args[..], &["--workers", "2"]].concat());
    assert_success(&resumed, "resuming with the same config file");
    let manifest = read_json(&manifest_path);
    let resumes = manifest["resumes"].as_array().unwrap();
    assert_eq!(resumes.len(), 1, "{manifest:#}");
    assert_eq!(resumes[0]["forced"], false, "{manifest:#}");
    assert_eq!(
        resumes[0]["config"]["benchmark"]["workers"], 2,
        "{manifest:#}"
    );
    assert_eq!(
        manifest["config"]["benchmark"]["workers"], 1,
        "{manifest:#}"
    );

    // A result-changing value in the file (the context window) refuses the resume, naming the field.
    let changed = write(
        dir.path(),
        "changed.yaml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("50000", "40000"),
    );
    let refused = run_benchmark(&[
        "--agent",
        "gold",
        "--config",
        changed.to_str().unwrap(),
        "--run-id",
        &run_id,
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("episode.context_tokens"),
        "{}",
        describe(&refused)
    );
}

/// With no context window configured, a model endpoint serving 8192 tokens makes the prompt say 8192 (not the
/// 131072 default), and the manifest records the endpoint as its source.
#[tokio::test]
async fn context_window_comes_from_the_endpoint() {
    let server = ScriptedServer::start(
        Script::default().with_fallback(ScriptedReply::text("Nothing to do.")),
    )
    .await
    .unwrap();
    server.serve_model("window-model", Some(8192));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let run_id = unique_id("cfg-window");
    let url = server.base_url();
    let out_text = out.display().to_string();
    let run_id_text = run_id.clone();
    let output = tokio::task::spawn_blocking(move || {
        run_benchmark(&[
            "--model-url",
            &url,
            "--model",
            "window-model",
            "--instance-ids",
            SPANS,
            "--max-turns",
            "1",
            "--grading-network",
            "none",
            "--output-dir",
            &out_text,
            "--run-id",
            &run_id_text,
        ])
    })
    .await
    .unwrap();
    assert!(
        output.status.code() == Some(0) || output.status.code() == Some(1),
        "{}",
        describe(&output)
    );
    assert!(
        !server.model_list_requests().is_empty(),
        "the endpoint was not asked"
    );
    let requests = server.requests();
    let first = requests
        .first()
        .unwrap_or_else(|| panic!("no chat call: {}", describe(&output)));
    let system = first.body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        system.contains("8192 tokens") && !system.contains("131072"),
        "the system prompt does not tell the served window: {system}"
    );
    let manifest = read_json(&out.join(&run_id).join("manifest.json"));
    assert_eq!(
        manifest["recorded"]["context_tokens_source"], "endpoint",
        "{manifest:#}"
    );
    assert_eq!(
        manifest["settings"]["episode"]["context_tokens"], 8192,
        "{manifest:#}"
    );
    assert_eq!(
        manifest["config"]["budgets"]["context_tokens"], 8192,
        "{manifest:#}"
    );

    // A configured window above the served one: a warning naming both numbers (the unknown instance id then
    // stops the run before Docker, exit 2).
    let url = server.base_url();
    let output = tokio::task::spawn_blocking(move || {
        run_benchmark(&[
            "--model-url",
            &url,
            "--model",
            "window-model",
            "--context-tokens",
            "16384",
            "--instance-ids",
            "no-such-instance",
        ])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("16384") && stderr.contains("8192"),
        "no warning naming both windows: {stderr}"
    );
}

/// The README's complete example is read by every command, and each shows its values.
#[test]
fn readme_example_is_read_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "swe-env.yaml", &readme_example());
    let bench = print_config(&strs(&command_args("run-benchmark", &config)));
    assert_eq!(bench["budgets"]["context_tokens"], 32768, "{bench:#}");
    assert_eq!(bench["benchmark"]["workers"], 4, "{bench:#}");
    assert_eq!(bench["agent"]["sampling"]["max_tokens"], 4096, "{bench:#}");
    let episode = print_config(&strs(&command_args("run-episode", &config)));
    assert_eq!(episode["sandbox"]["cmd_timeout"], 120, "{episode:#}");
    let harvest = print_config(&strs(&command_args("harvest", &config)));
    assert_eq!(harvest["harvest"]["samples"], 4, "{harvest:#}");
    assert_eq!(
        harvest["harvest"]["sandbox"]["anti_leak"], "refs",
        "{harvest:#}"
    );
    let serve = print_config(&strs(&command_args("serve", &config)));
    assert_eq!(serve["serve"]["max_episodes"], 256, "{serve:#}");
    assert_eq!(
        serve["serve"]["episode"]["context_tokens"], 32768,
        "{serve:#}"
    );
}
