//! The benchmark programs through the real binary, small: `bench scale` (a real `swe-env serve` child, episodes
//! created, stepped all at once and closed, a burst served from prewarmed pools, the engine ceiling) and
//! `bench sandbox` (interleaved rows, equal samples, the Docker floor). Each checks its JSON: no errors, no leaked
//! container, every figure present and positive.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::engine;

fn bench(args: &[&str]) -> (Output, Value, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        output.status.success(),
        "bench {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (output, json, pid)
}

fn positive(value: &Value, what: &str) -> f64 {
    let x = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} missing: {value}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}, expected positive");
    x
}

fn check_phase(phase: &Value, calls: u64, what: &str) {
    assert_eq!(phase["calls"], calls, "{what}: {phase}");
    assert_eq!(phase["errors"], 0, "{what}: {phase}");
    positive(&phase["per_sec"], &format!("{what} per_sec"));
    assert_eq!(phase["latency"]["n"], calls, "{what}: {phase}");
    positive(&phase["latency"]["p50_ms"], &format!("{what} p50"));
    positive(&phase["latency"]["p99_ms"], &format!("{what} p99"));
}

#[tokio::test]
async fn bench_scale_drives_episodes_through_a_real_server_without_errors_or_leaks() {
    let (_, report, _) = bench(&[
        "scale",
        "--episodes",
        "8",
        "--steps",
        "3",
        "--concurrency",
        "4",
        "--burst",
        "4",
        "--burst-tasks",
        "2",
        "--prewarm",
        "2",
        "--json",
    ]);
    check_phase(&report["create"], 8, "create");
    check_phase(&report["step"], 24, "step");
    check_phase(&report["close"], 8, "close");
    check_phase(&report["burst"]["create"], 4, "burst");
    assert_eq!(report["burst"]["tasks"], 2, "{report}");
    assert_eq!(report["leaked_containers"], 0, "{report}");
    assert_eq!(report["burst"]["leaked_containers"], 0, "{report}");
    assert_eq!(
        report["leaked_after_stop"], 0,
        "pooled containers left: {report}"
    );
    // Two containers prewarmed per task, then the burst of four (two per task) is served from them.
    assert_eq!(report["burst"]["prewarm"]["ready"], 4, "{report}");
    assert_eq!(report["burst"]["create"]["warm"], 4, "{report}");
    let peak = &report["memory_peak"];
    positive(&peak["server_rss"], "server RSS");
    positive(&peak["dockerd_rss"], "dockerd RSS");
    positive(&peak["shims_rss"], "shims RSS");
    positive(&peak["host_used"], "host memory used");
    assert!(
        peak["shims"].as_u64().unwrap() >= 8,
        "one shim per live container at least: {peak}"
    );
    assert!(
        report["host_mib_per_episode"].as_f64().unwrap() >= 0.0,
        "{report}"
    );
    assert!(
        report["process_rss_mib_per_episode"].as_f64().unwrap() >= 0.0,
        "{report}"
    );
    assert!(
        report["ceiling"].is_null(),
        "no ceiling unless asked: {report}"
    );
}

#[tokio::test]
async fn bench_scale_ceiling_reports_every_level_and_removes_its_containers() {
    let (_, report, pid) = bench(&[
        "scale",
        "--episodes",
        "0",
        "--ceiling",
        "--ceiling-concurrency",
        "1,2",
        "--ceiling-starts",
        "4",
        "--json",
    ]);
    let ceiling = &report["ceiling"];
    let levels = ceiling["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{ceiling}");
    for (level, concurrency) in levels.iter().zip([1, 2]) {
        assert_eq!(level["concurrency"], concurrency, "{level}");
        assert_eq!(level["starts"], 4, "{level}");
        assert_eq!(level["errors"], 0, "{level}");
        positive(&level["per_sec"], "starts/s");
        positive(&level["latency"]["p50_ms"], "start p50");
    }
    let best = positive(&ceiling["best_per_sec"], "best starts/s");
    assert!(
        levels
            .iter()
            .all(|l| l["per_sec"].as_f64().unwrap() <= best),
        "{ceiling}"
    );
    let episode = format!("bench-ceiling-{pid}");
    let left = engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.episode == episode)
        .count();
    assert_eq!(left, 0, "the ceiling left {left} container(s) behind");
}

#[tokio::test]
async fn bench_sandbox_interleaves_equal_samples_and_measures_the_docker_floor() {
    let (_, report, pid) = bench(&[
        "sandbox",
        "--samples",
        "6",
        "--starts",
        "2",
        "--cpu-steps",
        "50",
        "--json",
    ]);
    let rows: Vec<(&String, &Value)> = report
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("p50_ms").is_some())
        .collect();
    assert_eq!(rows.len(), 9, "{report}");
    for (name, row) in &rows {
        let expected = if name.starts_with("step:") { 6 } else { 2 };
        assert_eq!(row["n"], expected, "{name}: {row}");
        positive(&row["p50_ms"], name);
        positive(&report["p50_over_api_floor_p50"][name.as_str()], name);
    }
    for name in [
        "floor: `docker run -d` + `docker exec true` CLI",
        "floor: create+start+exec `true` via API",
        "step: Episode::step in process (full path)",
        "step: bare shell round trip, attach path",
        "step: bare shell round trip, FIFO path",
    ] {
        assert!(report.get(name).is_some(), "row {name:?} missing: {report}");
    }
    let cpu = report["host_cpu_per_step"].as_array().unwrap();
    assert_eq!(cpu.len(), 3, "attach, FIFO, Episode::step: {report}");
    for row in cpu {
        positive(&row["wall_ms_per_step"], "wall per step");
        assert!(row["cpu_ms_per_step"].as_f64().unwrap() >= 0.0, "{row}");
    }
    let prefix = format!("bench-{pid}");
    let left = engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.episode.starts_with(&prefix))
        .count();
    assert_eq!(left, 0, "bench sandbox left {left} container(s) behind");
}

#[tokio::test]
async fn an_interrupted_bench_removes_every_container_it_started() {
    // The ceiling starts containers from several workers at once: Ctrl-C lands while some are being created.
    let mut child = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args([
            "bench",
            "scale",
            "--episodes",
            "0",
            "--ceiling",
            "--ceiling-concurrency",
            "4",
            "--ceiling-starts",
            "400",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let episode = format!("bench-ceiling-{pid}");
    let engine = engine().await;
    let count = || async {
        engine
            .labelled_containers()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.episode == episode)
            .count()
    };
    // Interrupt once the ceiling has containers up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ceiling never started a container"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (child.wait().unwrap(), stderr)
    })
    .await
    .unwrap();
    assert_eq!(output.0.code(), Some(130), "{}", output.1);
    assert!(output.1.contains("interrupted"), "{}", output.1);
    assert_eq!(
        count().await,
        0,
        "containers left after Ctrl-C:\n{}",
        output.1
    );
}
