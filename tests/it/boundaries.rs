//! The code map in ARCHITECTURE.md as checks: which crate may depend on which (from `cargo metadata`), which
//! module may use which crate or generated code (from the sources), and the layering inside the orchestrator. A new
//! `use` that breaks the map fails here with the rule it broke, so the map cannot drift from the code again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the orchestrator crate sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, as (path relative to the workspace root, text).
fn rust_sources(dir: &str) -> Vec<(String, String)> {
    let root = workspace_root();
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current)
            .unwrap_or_else(|error| panic!("reading {}: {error}", current.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let relative = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((relative, text));
            }
        }
    }
    out.sort();
    out
}

/// The code of a line: comments (`//`, `///`, `//!`) carry prose that may name anything.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

/// A rule on source text: `pattern` may only appear in files under one of `allowed` (path prefixes).
struct SourceRule {
    what: &'static str,
    pattern: &'static str,
    allowed: &'static [&'static str],
}

/// Every library and binary source of the workspace (tests may use anything: they are clients and harnesses).
const SOURCE_DIRS: &[&str] = &[
    "sandbox/src",
    "tools/src",
    "grading/src",
    "model/src",
    "orchestrator/src",
];

const SOURCE_RULES: &[SourceRule] = &[
    SourceRule {
        what: "the Docker engine client (bollard): only the sandbox crate talks to the engine",
        pattern: r"\bbollard::",
        allowed: &["sandbox/src/"],
    },
    SourceRule {
        what: "gRPC (tonic / prost): only the service (server/) and the wire clients (client/)",
        pattern: r"\b(tonic|tonic_health|tonic_reflection|tonic_prost|prost)::",
        allowed: &["orchestrator/src/server/", "orchestrator/src/client/"],
    },
    SourceRule {
        what: "the generated proto code: only the service (server/) and the wire clients (client/)",
        pattern: r"\bserver::proto\b|\bproto::[A-Za-z_]",
        allowed: &["orchestrator/src/server/", "orchestrator/src/client/"],
    },
    SourceRule {
        what: "making a tonic::Status: only the service (server/) turns errors into statuses",
        pattern: r"\bStatus::(new|with_details|cancelled|unknown|invalid_argument|deadline_exceeded|not_found|already_exists|permission_denied|resource_exhausted|failed_precondition|aborted|out_of_range|unimplemented|internal|unavailable|data_loss|unauthenticated|from_error)\(",
        allowed: &["orchestrator/src/server/"],
    },
    SourceRule {
        what: "anyhow: only at the binary edge (cli/, main.rs) and in the wire-client programs (client/)",
        pattern: r"\banyhow\b",
        allowed: &[
            "orchestrator/src/cli/",
            "orchestrator/src/client/",
            "orchestrator/src/main.rs",
        ],
    },
    SourceRule {
        what: "the HTTP server of the scripted model: only the model crate serves HTTP",
        pattern: r"\bhyper::server\b|\bhyper_util::server\b",
        allowed: &["model/src/"],
    },
];

/// Every place in the sources that breaks a [`SOURCE_RULES`] rule, as `path:line: rule`.
fn source_violations(sources: &[(String, String)]) -> Vec<String> {
    let mut violations = Vec::new();
    for rule in SOURCE_RULES {
        let pattern = Regex::new(rule.pattern).unwrap();
        for (path, text) in sources {
            if rule.allowed.iter().any(|prefix| path.starts_with(prefix)) {
                continue;
            }
            for (line_no, line) in code_lines(text) {
                if pattern.is_match(line) {
                    violations.push(format!(
                        "{path}:{line_no}: {}: `{}`",
                        rule.what,
                        line.trim()
                    ));
                }
            }
        }
    }
    violations
}

/// Top-level modules of the orchestrator and the modules each may use (`crate::X`): the layering cli → server /
/// benchmark / client → agent → episode / grade → trajectory / task / datasets (harvest sits above benchmark), with no
/// arrow back up.
const LAYERS: &[(&str, &[&str])] = &[
    ("task", &[]),
    ("datasets", &[]),
    ("fsio", &[]),
    ("trajectory", &[]),
    ("grade", &["task", "trajectory"]),
    ("episode", &["task", "trajectory"]),
    ("agent", &["episode", "task", "trajectory"]),
    ("pool", &["episode", "task"]),
    (
        "benchmark",
        &[
            "agent",
            "datasets",
            "fsio",
            "episode",
            "grade",
            "task",
            "trajectory",
        ],
    ),
    (
        "harvest",
        &[
            "agent",
            "benchmark",
            "datasets",
            "fsio",
            "episode",
            "grade",
            "task",
            "trajectory",
        ],
    ),
    (
        "mine",
        &[
            "benchmark",
            "datasets",
            "fsio",
            "grade",
            "task",
            "trajectory",
        ],
    ),
    (
        "scaling",
        &[
            "agent",
            "benchmark",
            "datasets",
            "episode",
            "fsio",
            "grade",
            "task",
            "trajectory",
        ],
    ),
    (
        "trace",
        &[
            "benchmark",
            "datasets",
            "fsio",
            "grade",
            "task",
            "trajectory",
        ],
    ),
    (
        "view",
        &["benchmark", "datasets", "fsio", "task", "trajectory"],
    ),
    (
        "server",
        &[
            "agent",
            "datasets",
            "episode",
            "grade",
            "pool",
            "task",
            "trajectory",
        ],
    ),
    (
        "config",
        &[
            "agent",
            "benchmark",
            "datasets",
            "episode",
            "grade",
            "harvest",
            "server",
            "task",
        ],
    ),
    (
        "client",
        &["datasets", "episode", "server", "task", "trajectory"],
    ),
    (
        "cli",
        &[
            "agent",
            "benchmark",
            "client",
            "config",
            "datasets",
            "episode",
            "grade",
            "harvest",
            "mine",
            "scaling",
            "server",
            "task",
            "trace",
            "trajectory",
            "view",
        ],
    ),
];

/// The top-level orchestrator module a source file belongs to (`None` for lib.rs / main.rs).
fn orchestrator_module(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("orchestrator/src/")?;
    let first = rest.split('/').next()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then_some(module)
}

fn layering_violations(sources: &[(String, String)]) -> Vec<String> {
    let layers: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(module, allowed)| (*module, allowed.iter().copied().collect()))
        .collect();
    let reference = Regex::new(r"\bcrate::([a-z_]+)").unwrap();
    let grouped = Regex::new(r"\bcrate::\{").unwrap();
    let mut violations = Vec::new();
    for (path, text) in sources {
        let Some(module) = orchestrator_module(path) else {
            continue;
        };
        let Some(allowed) = layers.get(module) else {
            violations.push(format!(
                "{path}: module `{module}` is not in the layer table of tests/it/boundaries.rs (add it, and to \
                 ARCHITECTURE.md)"
            ));
            continue;
        };
        for (line_no, line) in code_lines(text) {
            if grouped.is_match(line) {
                violations.push(format!(
                    "{path}:{line_no}: `use crate::{{…}}` hides which layers are used: one `use crate::module::…` a \
                     module"
                ));
            }
            for captures in reference.captures_iter(line) {
                let used = &captures[1];
                if used != module && layers.contains_key(used) && !allowed.contains(used) {
                    violations.push(format!(
                        "{path}:{line_no}: `{module}` may not use `crate::{used}` (layering in ARCHITECTURE.md): `{}`",
                        line.trim()
                    ));
                }
            }
        }
    }
    violations
}

/// Each workspace crate and the workspace crates it may depend on (normal and build dependencies).
const CRATE_LAYERS: &[(&str, &[&str])] = &[
    ("swe-env-sandbox", &[]),
    ("swe-env-tools", &["swe-env-sandbox"]),
    ("swe-env-grading", &[]),
    ("swe-env-model", &[]),
    (
        "swe-env",
        &[
            "swe-env-sandbox",
            "swe-env-tools",
            "swe-env-grading",
            "swe-env-model",
        ],
    ),
];

/// External crates and the only workspace crates that may depend on them (normal and build dependencies).
const CRATE_OWNERS: &[(&str, &[&str])] = &[
    ("bollard", &["swe-env-sandbox"]),
    ("tonic", &["swe-env"]),
    ("tonic-health", &["swe-env"]),
    ("tonic-reflection", &["swe-env"]),
    ("tonic-prost", &["swe-env"]),
    ("prost", &["swe-env"]),
    ("anyhow", &["swe-env"]),
    ("hyper", &["swe-env-model"]),
];

fn cargo_metadata() -> Value {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn dependency_violations(metadata: &Value) -> Vec<String> {
    let workspace: BTreeMap<&str, &[&str]> = CRATE_LAYERS.iter().copied().collect();
    let owners: BTreeMap<&str, &[&str]> = CRATE_OWNERS.iter().copied().collect();
    let mut violations = Vec::new();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<&str> = packages
        .iter()
        .map(|package| package["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        workspace.keys().copied().collect(),
        "the workspace crates changed: update CRATE_LAYERS here and the code map in ARCHITECTURE.md"
    );
    for package in packages {
        let name = package["name"].as_str().unwrap();
        for dependency in package["dependencies"].as_array().unwrap() {
            let dep = dependency["name"].as_str().unwrap();
            if dependency["kind"].as_str() == Some("dev") {
                continue;
            }
            if workspace.contains_key(dep) && !workspace[name].contains(&dep) {
                violations.push(format!(
                    "crate {name} depends on {dep}: not allowed by the crate layering (CRATE_LAYERS)"
                ));
            }
            if let Some(allowed) = owners.get(dep) {
                if !allowed.contains(&name) {
                    violations.push(format!(
                        "crate {name} depends on {dep}: only {allowed:?} may (CRATE_OWNERS)"
                    ));
                }
            }
            // The tools take the Sandbox trait, never the Docker backend.
            if name == "swe-env-tools" && dep == "swe-env-sandbox" {
                let features: Vec<&str> = dependency["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                if dependency["uses_default_features"].as_bool() != Some(false)
                    || features.contains(&"docker")
                {
                    violations.push(format!(
                        "crate swe-env-tools takes swe-env-sandbox with the Docker backend (default features \
                         {}, features {features:?}): use default-features = false",
                        dependency["uses_default_features"]
                    ));
                }
            }
        }
    }
    // bollard comes in only with the sandbox's `docker` feature.
    let sandbox = packages
        .iter()
        .find(|package| package["name"] == "swe-env-sandbox")
        .unwrap();
    let bollard = sandbox["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|dependency| dependency["name"] == "bollard");
    match bollard {
        Some(dependency) if dependency["optional"] == true => {}
        Some(_) => violations.push(
            "swe-env-sandbox depends on bollard unconditionally: keep it behind the `docker` feature".to_owned(),
        ),
        None => violations.push("swe-env-sandbox no longer depends on bollard: update this check".to_owned()),
    }
    violations
}

#[test]
fn crates_depend_only_on_what_their_layer_may() {
    let violations = dependency_violations(&cargo_metadata());
    assert!(
        violations.is_empty(),
        "the crate graph breaks ARCHITECTURE.md:\n{}",
        violations.join("\n")
    );
}

#[test]
fn modules_use_only_what_their_layer_may() {
    let sources: Vec<(String, String)> = SOURCE_DIRS
        .iter()
        .flat_map(|dir| rust_sources(dir))
        .collect();
    assert!(
        sources.len() > 50,
        "found only {} source files: is the workspace root right?",
        sources.len()
    );
    let mut violations = source_violations(&sources);
    violations.extend(layering_violations(&sources));
    assert!(
        violations.is_empty(),
        "{} place(s) break the code map in ARCHITECTURE.md:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The checks can fail: each rule catches a planted violation (so a typo in a pattern cannot make it pass silently).
#[test]
fn every_rule_catches_a_planted_violation() {
    let planted = [
        ("orchestrator/src/grade/mod.rs", "use bollard::Docker;"),
        ("tools/src/bash.rs", "use tonic::transport::Channel;"),
        (
            "orchestrator/src/cli/run_episode.rs",
            "use crate::server::proto::StepRequest;",
        ),
        (
            "orchestrator/src/client/grpc_bench.rs",
            "return Err(tonic::Status::internal(\"x\"));",
        ),
        (
            "orchestrator/src/episode/mod.rs",
            "fn f() -> anyhow::Result<()> { Ok(()) }",
        ),
        ("grading/src/lib.rs", "use hyper::server::conn::http1;"),
    ];
    for (index, (path, line)) in planted.iter().enumerate() {
        let violations = source_violations(&[(path.to_string(), line.to_string())]);
        assert_eq!(
            violations.len(),
            1,
            "rule {index} ({}) did not catch `{line}` in {path}: {violations:?}",
            SOURCE_RULES[index].what
        );
    }
    let upward = layering_violations(&[(
        "orchestrator/src/episode/mod.rs".to_owned(),
        "use crate::server::ServerConfig;".to_owned(),
    )]);
    assert_eq!(upward.len(), 1, "{upward:?}");
    let comment = source_violations(&[(
        "orchestrator/src/grade/mod.rs".to_owned(),
        "/// Only server/ makes a tonic::Status::internal(…).".to_owned(),
    )]);
    assert!(
        comment.is_empty(),
        "prose in comments is not code: {comment:?}"
    );
}
