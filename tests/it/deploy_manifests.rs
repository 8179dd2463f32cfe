//! deploy/kubernetes, validated offline (no cluster is reachable here): every document of every manifest against
//! the Kubernetes JSON schemas in strict mode (`kubernetes-validate`, in a venv under target/), the validator
//! shown to reject a misspelled field, and our own consistency checks: the ConfigMap's config and the container
//! args are accepted by the real binary (`serve --print-config`, and a start that gets past validation to its
//! token), probes are gRPC health on the serve port, the termination grace covers the drain, the token comes from
//! the Secret, the FIFO directory is a same-path hostPath, and the headless Service selects the DaemonSet's pods.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The validator and the Kubernetes versions the manifests are validated against (the schemas ship with it).
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// The measured container removal rate the termination grace is sized with (README "bench scale": close 9.9/s at
/// 1,000 live episodes, 19.9/s at 256), rounded down.
const REMOVALS_PER_SEC: u64 = 9;
/// A Kubernetes node name standing in for the downward API's `spec.nodeName`.
const SAMPLE_NODE_NAME: &str = "worker-1";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn validator_python() -> PathBuf {
    crate::common::python_venv(
        "k8s-validate",
        &[VALIDATOR, "pyyaml==6.0.4"],
        "import kubernetes_validate, yaml; assert kubernetes_validate.__version__ == '1.37.0'",
    )
}

/// Runs deploy/kubernetes/validate.py on `dir` for [`K8S_VERSIONS`]: its exit status and its JSON report.
fn validate(dir: &Path) -> (Output, Value) {
    let mut command = Command::new(validator_python());
    command.arg(deploy_dir().join("validate.py"));
    for version in K8S_VERSIONS {
        command.args(["--k8s", version]);
    }
    let output = command.arg(dir).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "validate.py printed no JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

fn documents(report: &Value) -> &Vec<Value> {
    report["documents"].as_array().unwrap()
}

/// The one object of `kind` among the validated documents.
fn object<'a>(report: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents(report)
        .iter()
        .map(|doc| &doc["object"])
        .filter(|obj| obj["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// A copy of deploy/kubernetes's YAML files in a temp dir, `from` replaced by `to` once in `file`.
fn broken_copy(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".yaml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            if name == file {
                assert!(text.contains(from), "{file} has no `{from}` to break");
                text = text.replacen(from, to, 1);
            }
            std::fs::write(dir.path().join(name), text).unwrap();
        }
    }
    dir
}

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas_in_strict_mode() {
    let (output, report) = validate(&deploy_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "validation failed:\n{stderr}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["versions"], serde_json::json!(K8S_VERSIONS));
    for doc in documents(&report) {
        for version in K8S_VERSIONS {
            assert_eq!(doc["errors"][version], Value::Null, "{doc}");
        }
    }
    let mut kinds: Vec<&str> = documents(&report)
        .iter()
        .map(|doc| str_of(&doc["object"]["kind"], "kind"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["ConfigMap", "DaemonSet", "Namespace", "Secret", "Service"]
    );
    // kustomization.yaml (not a Kubernetes object, so not validated itself) lists exactly the validated files.
    let mut listed: Vec<&str> = report["resources_listed"]
        .as_array()
        .expect("deploy/kubernetes/kustomization.yaml lists the manifests")
        .iter()
        .map(|name| str_of(name, "resource"))
        .collect();
    listed.sort_unstable();
    let mut files: Vec<String> = documents(&report)
        .iter()
        .map(|doc| {
            let file = PathBuf::from(str_of(&doc["file"], "file"));
            file.file_name().unwrap().to_str().unwrap().to_owned()
        })
        .collect();
    files.sort_unstable();
    files.dedup();
    assert_eq!(listed, files);
    // One namespace for everything.
    let namespace = str_of(
        &object(&report, "Namespace")["metadata"]["name"],
        "namespace",
    );
    for doc in documents(&report) {
        let obj = &doc["object"];
        if obj["kind"] != "Namespace" {
            assert_eq!(obj["metadata"]["namespace"], namespace, "{}", obj["kind"]);
        }
    }
}

#[test]
fn the_validator_rejects_misspelled_fields_top_level_and_nested() {
    for (file, from, to) in [
        (
            "daemonset.yaml",
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecond:",
        ),
        ("daemonset.yaml", "service: \"\"", "sevice: \"\""),
        ("service.yaml", "clusterIP: None", "clusterIp: None"),
    ] {
        let copy = broken_copy(file, from, to);
        let (output, report) = validate(copy.path());
        assert!(!output.status.success(), "{file} with `{to}` passed");
        assert_eq!(report["ok"], false);
        let misspelled = to.trim_end_matches(|c| c != ':').trim_end_matches(':');
        let bad: Vec<&Value> = documents(&report)
            .iter()
            .filter(|doc| K8S_VERSIONS.iter().any(|v| !doc["errors"][v].is_null()))
            .collect();
        assert_eq!(bad.len(), 1, "only the broken document fails: {bad:?}");
        assert!(str_of(&bad[0]["file"], "file").ends_with(file));
        for version in K8S_VERSIONS {
            let error = str_of(&bad[0]["errors"][version], "error");
            assert!(
                error.contains(misspelled) && error.contains("was unexpected"),
                "{version}: {error}"
            );
        }
    }
}

/// Kubernetes `$(VAR)` expansion of a container arg from the container's env (`$$` escapes).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("$(") {
            let end = after.find(')').unwrap();
            let name = &after[..end];
            let value = env.get(name).unwrap_or_else(|| {
                panic!("arg {arg} names ${name}, which the container's env lacks")
            });
            out.push_str(value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The value of `--flag=VALUE` (or `--flag VALUE`) in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let prefix = format!("--{name}=");
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix(&prefix) {
            Some(value) => Some(value),
            None if *arg == long => args.get(i + 1).map(String::as_str),
            None => None,
        })
}

/// The volume mounted at the directory holding `path`, and the file's name in it.
fn mount_of<'a>(container: &Value, volumes: &'a [Value], path: &str) -> (&'a Value, String) {
    let path = Path::new(path);
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Some(Path::new(str_of(&m["mountPath"], "mountPath"))) == path.parent())
        .unwrap_or_else(|| {
            panic!(
                "no volume is mounted at the directory of {}",
                path.display()
            )
        });
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    (
        volume,
        path.file_name().unwrap().to_str().unwrap().to_owned(),
    )
}

/// Asserts that `path` is inside a hostPath volume mounted at the SAME path in the pod as on the host.
fn assert_same_path_host_dir(container: &Value, volumes: &[Value], path: &str, what: &str) {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(path).starts_with(str_of(&m["mountPath"], "mountPath")))
        .unwrap_or_else(|| panic!("{what} {path} is on no volume"));
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(
        volume["hostPath"]["path"], mount["mountPath"],
        "{what} {path}: a hostPath mounted at the same path in the pod"
    );
}

#[test]
fn the_daemonset_args_and_config_are_accepted_by_the_real_binary_and_consistent() {
    let (output, report) = validate(&deploy_dir());
    assert!(output.status.success());
    let daemonset = object(&report, "DaemonSet");
    let service = object(&report, "Service");
    let config_map = object(&report, "ConfigMap");
    let secret = object(&report, "Secret");
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let volumes = spec["volumes"].as_array().unwrap();

    // The container's env: literal values, and the downward API's node name (the only fieldRef expected).
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::String(field)) => {
                assert_eq!(field, "spec.nodeName", "{name}");
                SAMPLE_NODE_NAME.to_owned()
            }
            other => panic!("env {name}: unexpected {other:?}"),
        };
        env.insert(name, value);
    }
    let raw_args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(a, "arg").to_owned())
        .collect();
    assert_eq!(raw_args[0], "serve");
    assert_eq!(
        flag(&raw_args, "node-id"),
        Some("$(NODE_NAME)"),
        "the node id is the Kubernetes node name"
    );
    let mut args: Vec<String> = raw_args.iter().map(|a| expand(a, &env)).collect();
    assert_eq!(flag(&args, "node-id"), Some(SAMPLE_NODE_NAME));

    // The config file is the ConfigMap's key, mounted where --config points.
    let config_path = flag(&args, "config").unwrap().to_owned();
    let (volume, key) = mount_of(container, volumes, &config_path);
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let config_text = str_of(&config_map["data"][&key], "config");
    // The token file is the Secret's key, mounted where --token-file points.
    let token_path = flag(&args, "token-file")
        .expect("the token comes from --token-file")
        .to_owned();
    let (volume, file) = mount_of(container, volumes, &token_path);
    assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
    let item = volume["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["path"] == file.as_str())
        .unwrap_or_else(|| panic!("the Secret volume has no item at {file}"));
    let token_key = str_of(&item["key"], "key");
    let token = str_of(&secret["stringData"][token_key], "token");
    assert!(!token.trim().is_empty());

    // Run the real binary on the extracted files, with the container's args.
    let work = tempfile::tempdir().unwrap();
    let local_config = work.path().join(&key);
    std::fs::write(&local_config, config_text).unwrap();
    let local_token = work.path().join("token");
    std::fs::write(&local_token, token).unwrap();
    for arg in &mut args {
        *arg = arg
            .replace(&config_path, local_config.to_str().unwrap())
            .replace(&token_path, local_token.to_str().unwrap());
    }
    let run = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(&args)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "swe-env {args:?} --print-config failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: Value = serde_json::from_slice(&run.stdout).unwrap();
    let serve = &printed["serve"];
    assert_eq!(serve["token_file"], local_token.to_str().unwrap());
    // `--print-config` parses but does not run ServerConfig::validate (the node id, limits…); a start does, before
    // anything else (`server::start`: validate, then the token, then tasks and Docker). Start it with the token
    // file missing: stopping at the token shows that validation passed, with no dataset download and no Docker.
    let missing = work.path().join("missing-token");
    let start = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(
            args.iter()
                .map(|a| a.replace(local_token.to_str().unwrap(), missing.to_str().unwrap())),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("token file {}", missing.display()))
            && !stderr.contains("config field"),
        "serve stopped before its token: {stderr}"
    );

    // gRPC on every address, on the port the probes, the container port and the Service name.
    let listen = str_of(&serve["listen"], "listen");
    let (host, port) = listen.rsplit_once(':').unwrap();
    assert_eq!(host, "0.0.0.0");
    let port: u64 = port.parse().unwrap();
    let grpc_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(grpc_port["containerPort"], port);
    let metrics = str_of(&serve["metrics_listen"], "metrics_listen");
    let metrics_port: u64 = metrics.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"] == metrics_port));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let grpc = &container[probe]["grpc"];
        assert_eq!(
            grpc["port"], port,
            "{probe} is gRPC health on the serve port"
        );
        assert_eq!(grpc["service"], "", "{probe} asks the overall status");
    }

    // The termination grace covers the drain plus the removal of every episode's container.
    let grace = serve["shutdown_grace_secs"].as_u64().unwrap_or(30);
    let max_episodes = serve["max_episodes"].as_u64().unwrap_or(1024);
    let termination = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > grace + max_episodes.div_ceil(REMOVALS_PER_SEC),
        "terminationGracePeriodSeconds {termination} must exceed shutdown_grace_secs {grace} + {max_episodes} \
         removals at {REMOVALS_PER_SEC}/s"
    );

    // The FIFO directory (TMPDIR) and the trajectories: hostPaths at the same path; the host's Docker socket.
    assert_same_path_host_dir(container, volumes, &env["TMPDIR"], "TMPDIR");
    let trajectories = str_of(&serve["trajectory_dir"], "trajectory_dir");
    assert_same_path_host_dir(container, volumes, trajectories, "trajectory_dir");
    let socket = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/run/docker.sock")
        .expect("the host's Docker socket is mounted at the default path");
    let socket = volumes
        .iter()
        .find(|v| v["name"] == socket["name"])
        .unwrap();
    assert_eq!(socket["hostPath"]["path"], "/var/run/docker.sock");
    assert_eq!(socket["hostPath"]["type"], "Socket");
    // Owner liveness of a crashed predecessor needs the host's host name and pid namespace.
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");

    // Headless Service selecting exactly the DaemonSet's pods, on the serve port.
    assert_eq!(service["spec"]["clusterIP"], "None");
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(labels.get(key), Some(value), "Service selector {key}");
    }
    for (key, value) in daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels.get(key), Some(value), "DaemonSet selector {key}");
    }
    let service_grpc = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(service_grpc["port"], port);
    assert_eq!(service_grpc["targetPort"], "grpc");
}

#[test]
fn a_node_name_that_is_not_a_dns_label_is_refused_at_start_and_the_readme_patch_removes_the_flag() {
    let (output, report) = validate(&deploy_dir());
    assert!(output.status.success());
    let container = &object(&report, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    // deploy/kubernetes/README.md "Node ids" removes `/spec/template/spec/containers/0/args/2`.
    assert_eq!(container["args"][2], "--node-id=$(NODE_NAME)");
    // Kubernetes node names are DNS subdomains; EKS names nodes like this one. serve refuses it before listening.
    // A real start (`--print-config` does not validate); the missing token file stops it before tasks and Docker
    // even if the id were accepted.
    let work = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["serve", "--node-id=ip-10-0-1-23.ec2.internal"])
        .arg("--listen=127.0.0.1:0")
        .arg(format!(
            "--token-file={}",
            work.path().join("missing").display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "accepted: {stderr}");
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`node_id`") && stderr.contains("DNS label"),
        "{stderr}"
    );
}
