//! `swe-env doctor`: Check the machine: Docker, images, cache and disk space, with the fix for each problem.
//!
//! Every check runs, whatever failed before it (a machine without Docker still gets its disk and limits checked),
//! and reports `ok`, `warn` or `fail` with what it saw and, unless ok, the fix. Exit code: 0 when nothing failed
//! (warnings allowed), 3 when the Docker engine is unreachable (infrastructure, as every other command reports
//! it), 1 when another check failed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use swe_env_sandbox::{collect_garbage_with, DockerEngine, EngineEndpoint, GcScope};

use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE};

/// Oldest engine release doctor accepts without a warning: Docker 20.10 is the first with cgroup v2 support, which
/// the containers' memory, CPU and pids limits rely on under current distributions (they mount only cgroup v2).
const MIN_DOCKER_VERSION: (u64, u64) = (20, 10);

/// Below this much free space on a disk swe-env writes to, doctor warns: a SWE-bench task image takes gigabytes,
/// and a benchmark run keeps a few of them plus its trajectories.
const WARN_FREE_BYTES: u64 = 20 << 30;

/// Below this much free space doctor fails: an image pull or a grading run will not fit.
const FAIL_FREE_BYTES: u64 = 2 << 30;

/// The image `swe-env shell` opens by default, also the base of the fixture task images.
const BASE_IMAGE: &str = "swe-env/base:bookworm";

/// Open files a server at its default 1024 live episodes needs (about four per episode on the FIFO data path),
/// with room for the rest of the process.
const MIN_OPEN_FILES: u64 = 4 * 1024 + 256;

/// How long doctor waits for the engine before calling it unreachable.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `swe-env doctor`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env doctor\n  swe-env doctor --json\n  \
    swe-env doctor --dataset verified\n\n\
    Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 3 the Docker engine is unreachable."
)]
pub struct DoctorArgs {
    /// Also count how many task images of this dataset are present (`fixtures`, `verified`/`lite`/`full`, or a
    /// JSONL/JSON/parquet file).
    #[arg(long, value_name = "NAME|FILE")]
    dataset: Option<String>,
    /// Image name template for dataset rows without an `image` field (as `swe-env images pull` takes it).
    #[arg(long, default_value = OFFICIAL_IMAGE_TEMPLATE)]
    image_template: String,
    /// Directory that runs write to (its disk is checked).
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check: what it looked at, what it saw, and how to fix it when it is not ok.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
    /// Machine-readable facts (a version, a count, bytes free).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    data: serde_json::Value,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
            data: serde_json::Value::Null,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        if self.status != Status::Ok {
            self.fix = Some(fix.into());
        }
        self
    }

    fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// Runs `swe-env doctor`.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let (engine, docker_check) = check_docker().await;
    let docker_unreachable = engine.is_none();
    let docker_root = docker_check
        .data
        .get("docker_root_dir")
        .and_then(|v| v.as_str())
        .filter(|_| {
            docker_check
                .data
                .get("local")
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        })
        .map(PathBuf::from);
    checks.push(docker_check);
    if let Some(engine) = &engine {
        checks.push(check_images(engine, "base image", &[BASE_IMAGE.to_owned()]).await);
        let fixtures = crate::datasets::load_source(crate::datasets::FIXTURES).await;
        match fixtures {
            Ok(fixtures) => {
                let images: Vec<String> = fixtures
                    .instances
                    .iter()
                    .map(|instance| image_for(instance, &args.image_template))
                    .collect();
                checks.push(check_images(engine, "fixture images", &images).await);
            }
            Err(error) => checks.push(Check::new(
                "fixture images",
                Status::Fail,
                format!("the embedded fixture tasks do not load: {error}"),
            )),
        }
        if let Some(dataset) = &args.dataset {
            checks.push(check_dataset(engine, dataset, &args.image_template).await);
        }
        checks.push(check_leftovers(engine).await);
    }
    checks.push(check_cache().await);
    let mut disks = Vec::new();
    if let Some(root) = docker_root {
        disks.push(("disk of Docker data", root));
    }
    disks.push((
        "disk of current dir",
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    ));
    disks.push(("disk of runs dir", args.runs_dir.clone()));
    disks.push(("disk of cache", crate::datasets::cache_root()));
    for (name, path) in disks {
        checks.push(check_disk(name, path).await);
    }
    checks.push(check_open_files());

    let code = if docker_unreachable {
        super::EXIT_INFRA
    } else if checks.iter().any(|c| c.status == Status::Fail) {
        super::EXIT_FAILED
    } else {
        super::EXIT_OK
    };
    if args.json {
        let report = json!({ "checks": checks, "exit_code": code });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&checks);
    }
    Ok(ExitCode::from(code))
}

/// One aligned line per check; the fix on the line below. Symbols only on a terminal, plain words when piped.
fn print_human(checks: &[Check]) {
    let terminal = std::io::stdout().is_terminal();
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for check in checks {
        let mark = match (check.status, terminal) {
            (Status::Ok, true) => "✓",
            (Status::Warn, true) => "!",
            (Status::Fail, true) => "✗",
            (Status::Ok, false) => "ok  ",
            (Status::Warn, false) => "warn",
            (Status::Fail, false) => "FAIL",
        };
        text.push_str(&format!(
            "{mark} {:<width$}  {}\n",
            check.name, check.detail
        ));
        if let Some(fix) = &check.fix {
            let pad = if terminal { 2 } else { 5 };
            text.push_str(&format!("{:pad$}{:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    text.push_str(&format!(
        "{} checks: {} ok, {warned} warnings, {failed} failed\n",
        checks.len(),
        checks.len() - failed - warned
    ));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// The engine `DOCKER_HOST` names (or the default socket): reachable, and its version.
async fn check_docker() -> (Option<DockerEngine>, Check) {
    const NAME: &str = "docker";
    let endpoint = match EngineEndpoint::from_env() {
        Ok(endpoint) => endpoint,
        Err(error) => {
            let check = Check::new(NAME, Status::Fail, format!("{error}")).fix(
                "set DOCKER_HOST to unix:///path/to/docker.sock or tcp://host:port (with DOCKER_TLS_VERIFY and \
                 DOCKER_CERT_PATH for TLS), or unset it for the default socket",
            );
            return (None, check);
        }
    };
    let engine = match DockerEngine::connect_to(&endpoint, DOCKER_TIMEOUT).await {
        Ok(engine) => engine,
        Err(error) => {
            let check = Check::new(NAME, Status::Fail, format!("unreachable: {error}"))
                .fix(format!(
                    "start the Docker engine (`sudo systemctl start docker`, or `bash scripts/setup.sh` on a fresh \
                     machine), or point DOCKER_HOST at a running one (now {endpoint})"
                ))
                .data(json!({ "endpoint": endpoint.to_string() }));
            return (None, check);
        }
    };
    let check = match engine.engine_facts().await {
        Ok(facts) => {
            let data = json!({
                "endpoint": endpoint.to_string(),
                "server_version": facts.server_version,
                "api_version": facts.api_version,
                "docker_root_dir": facts.docker_root_dir,
                "local": facts.local,
            });
            let detail = format!(
                "Docker {} (API {}) at {endpoint}",
                facts.server_version, facts.api_version
            );
            match parse_version(&facts.server_version) {
                Some(version) if version >= MIN_DOCKER_VERSION => {
                    Check::new(NAME, Status::Ok, detail)
                }
                _ => Check::new(
                    NAME,
                    Status::Warn,
                    format!(
                        "{detail}: older than {}.{} (or unknown); memory, CPU and pids limits need cgroup v2 support",
                        MIN_DOCKER_VERSION.0, MIN_DOCKER_VERSION.1
                    ),
                )
                .fix(format!(
                    "upgrade the Docker engine to {}.{} or newer",
                    MIN_DOCKER_VERSION.0, MIN_DOCKER_VERSION.1
                )),
            }
            .data(data)
        }
        Err(error) => Check::new(
            NAME,
            Status::Warn,
            format!("reachable at {endpoint}, but its version is unknown: {error}"),
        )
        .fix("check that DOCKER_HOST names a Docker engine (podman's API lacks some calls)")
        .data(json!({ "endpoint": endpoint.to_string() })),
    };
    (Some(engine), check)
}

/// `major.minor` of a version string such as `27.3.1` or `20.10.24+dfsg1`.
fn parse_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How many of `images` are present; missing ones are a warning (only the commands that use them need them).
async fn check_images(engine: &DockerEngine, name: &str, images: &[String]) -> Check {
    let mut missing = Vec::new();
    for image in images {
        match engine.image_info(image).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(image.clone()),
            Err(error) => {
                return Check::new(
                    name,
                    Status::Fail,
                    format!("cannot inspect {image}: {error}"),
                )
                .fix(
                    "check the Docker engine (`docker image inspect IMAGE` shows the same error)",
                );
            }
        }
    }
    let present = images.len() - missing.len();
    let data = json!({ "present": present, "total": images.len(), "missing": missing });
    if missing.is_empty() {
        let detail = match images {
            [one] => format!("{one} present"),
            _ => format!("all {} present", images.len()),
        };
        return Check::new(name, Status::Ok, detail).data(data);
    }
    Check::new(
        name,
        Status::Warn,
        format!(
            "{present} of {} present; missing: {}",
            images.len(),
            shorten_list(&missing)
        ),
    )
    .fix("bash images/build.sh (or `swe-env images build`)")
    .data(data)
}

/// The first few items of a list, then how many more.
fn shorten_list(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// How many task images of `dataset` are present.
async fn check_dataset(engine: &DockerEngine, dataset: &str, template: &str) -> Check {
    let name = format!("dataset {dataset}");
    let loaded = match crate::datasets::load_source(dataset).await {
        Ok(loaded) => loaded,
        Err(error) => return Check::new(name, Status::Fail, format!("cannot load it: {error}"))
            .fix(
            "name `fixtures`, `verified`, `lite`, `full`, or an existing JSONL/JSON/parquet file",
        ),
    };
    let mut images: Vec<String> = loaded
        .instances
        .iter()
        .map(|instance| image_for(instance, template))
        .collect();
    images.sort();
    images.dedup();
    let mut check = check_images(engine, &name, &images).await;
    if check.status == Status::Warn {
        check.fix = Some(format!("swe-env images pull {dataset}"));
    }
    check
}

/// swe-env containers whose owner is gone or that are past their expiry.
async fn check_leftovers(engine: &DockerEngine) -> Check {
    const NAME: &str = "leftover containers";
    match collect_garbage_with(engine, GcScope::Orphans, true).await {
        Ok(report) => {
            let orphans = report.would_remove.len();
            let live = report.seen.saturating_sub(orphans);
            let data = json!({ "orphans": orphans, "live": live });
            if orphans == 0 {
                Check::new(
                    NAME,
                    Status::Ok,
                    format!("none ({live} of live swe-env processes)"),
                )
                .data(data)
            } else {
                Check::new(
                    NAME,
                    Status::Warn,
                    format!(
                        "{orphans} left by dead or expired swe-env processes ({live} of live ones)"
                    ),
                )
                .fix("swe-env gc")
                .data(data)
            }
        }
        Err(error) => Check::new(NAME, Status::Warn, format!("cannot list them: {error}"))
            .fix("check the Docker engine, then run `swe-env gc --dry-run`"),
    }
}

/// The dataset cache directory and how much it holds.
async fn check_cache() -> Check {
    const NAME: &str = "dataset cache";
    let root = crate::datasets::cache_root();
    let measured = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || directory_size(&root)).await
    };
    let shown = root.display();
    match measured {
        Ok(Ok(Some((files, bytes)))) => Check::new(
            NAME,
            Status::Ok,
            format!("{shown}: {files} files, {}", human_bytes(bytes)),
        )
        .data(json!({ "path": root, "files": files, "bytes": bytes })),
        Ok(Ok(None)) => Check::new(
            NAME,
            Status::Ok,
            format!("{shown}: empty (datasets are downloaded here on first use; SWE_ENV_CACHE moves it)"),
        )
        .data(json!({ "path": root, "files": 0, "bytes": 0 })),
        Ok(Err(error)) => Check::new(NAME, Status::Warn, format!("{shown}: cannot read it: {error}"))
            .fix(format!(
                "make {shown} readable and writable, or set SWE_ENV_CACHE to another directory"
            )),
        Err(error) => Check::new(NAME, Status::Warn, format!("{shown}: not measured: {error}")),
    }
}

/// Files and bytes under `root` (symlinks not followed); `None` when it does not exist.
fn directory_size(root: &Path) -> std::io::Result<Option<(u64, u64)>> {
    if std::fs::symlink_metadata(root).is_err() {
        return Ok(None);
    }
    let (mut files, mut bytes) = (0_u64, 0_u64);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok(Some((files, bytes)))
}

/// Free space of the filesystem holding `path` (or its nearest existing parent).
async fn check_disk(name: &str, path: PathBuf) -> Check {
    let measured = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || free_bytes(&path)).await
    };
    let shown = path.display();
    let (free, total, measured_at) = match measured {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            return Check::new(
                name,
                Status::Warn,
                format!("{shown}: not measured: {error}"),
            )
            .fix(format!(
                "check that {shown} (or a parent of it) exists and is readable"
            ))
        }
        Err(error) => {
            return Check::new(
                name,
                Status::Warn,
                format!("{shown}: not measured: {error}"),
            )
        }
    };
    let status = if free < FAIL_FREE_BYTES {
        Status::Fail
    } else if free < WARN_FREE_BYTES {
        Status::Warn
    } else {
        Status::Ok
    };
    let at = if measured_at == path {
        String::new()
    } else {
        format!(" (measured at {})", measured_at.display())
    };
    Check::new(
        name,
        status,
        format!(
            "{shown}{at}: {} free of {}",
            human_bytes(free),
            human_bytes(total)
        ),
    )
    .fix(format!(
        "free space on that disk (below {} warns, below {} fails): `swe-env gc`, `docker image prune`, remove old runs",
        human_bytes(WARN_FREE_BYTES),
        human_bytes(FAIL_FREE_BYTES)
    ))
    .data(json!({ "path": path, "free_bytes": free, "total_bytes": total }))
}

/// Free bytes (for unprivileged users), total bytes, and the existing path they were measured at.
fn free_bytes(path: &Path) -> std::io::Result<(u64, u64, PathBuf)> {
    let mut at = path.to_owned();
    while std::fs::symlink_metadata(&at).is_err() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent.to_owned(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    let stat = rustix::fs::statvfs(&at).map_err(std::io::Error::from)?;
    Ok((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
        at,
    ))
}

/// The open-file limit (soft, after swe-env raised it to the hard limit at start, and hard).
fn check_open_files() -> Check {
    const NAME: &str = "open-file limit";
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let shown = |v: Option<u64>| v.map_or("unlimited".to_owned(), |v| v.to_string());
    let detail = format!(
        "{} (hard limit {})",
        shown(limit.current),
        shown(limit.maximum)
    );
    let data = json!({ "soft": limit.current, "hard": limit.maximum });
    match limit.current {
        Some(soft) if soft < MIN_OPEN_FILES => Check::new(
            NAME,
            Status::Warn,
            format!("{detail}: a server at 1024 live episodes needs about {MIN_OPEN_FILES}"),
        )
        .fix(format!(
            "raise the hard limit (`ulimit -Hn {MIN_OPEN_FILES}` as root, LimitNOFILE= in a systemd unit, \
             --ulimit nofile=… for a container), or serve fewer episodes (--max-episodes)"
        ))
        .data(data),
        _ => Check::new(NAME, Status::Ok, detail).data(data),
    }
}

/// Bytes in binary units, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse_version("27.3.1"), Some((27, 3)));
        assert_eq!(parse_version("20.10.24+dfsg1"), Some((20, 10)));
        assert_eq!(parse_version("19.03.15"), Some((19, 3)));
        assert_eq!(parse_version("dev"), None);
        assert!(parse_version("19.03.15").unwrap() < MIN_DOCKER_VERSION);
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn a_fix_is_kept_only_for_problems() {
        assert_eq!(Check::new("x", Status::Ok, "d").fix("f").fix, None);
        assert_eq!(
            Check::new("x", Status::Warn, "d").fix("f").fix.as_deref(),
            Some("f")
        );
    }
}
