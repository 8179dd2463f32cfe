//! Dataset aliases: `verified` is downloaded from the hub (here a loopback HTTP server standing in for it through
//! `HF_ENDPOINT`) as parquet, cached, loaded, and run; a second run uses the cache with the server gone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const COLUMNS: [&str; 12] = [
    "repo",
    "instance_id",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "environment_setup_commit",
];

/// Writes `rows` (Verified JSON rows) as a parquet file of string columns, as the hub serves the dataset.
fn write_parquet(rows: &[serde_json::Value], path: &Path) {
    let fields: String = COLUMNS
        .iter()
        .map(|c| format!("REQUIRED BYTE_ARRAY {c} (UTF8);"))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut idx = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        let values: Vec<ByteArray> = rows
            .iter()
            .map(|r| ByteArray::from(r[COLUMNS[idx]].as_str().unwrap_or_default()))
            .collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
        idx += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn verified_alias_downloads_caches_and_loads() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/swe-bench-verified.jsonl");
    let text =
        std::fs::read_to_string(&shared).unwrap_or_else(|e| panic!("{}: {e}", shared.display()));
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 500);

    let hub = tempfile::tempdir().unwrap();
    let data = hub
        .path()
        .join("datasets/princeton-nlp/SWE-bench_Verified/resolve/main/data");
    std::fs::create_dir_all(&data).unwrap();
    write_parquet(&rows, &data.join("test-00000-of-00001.parquet"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(hub.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let ids = "django__django-11099,astropy__astropy-12907";
    let run = |run_id: &str| {
        Command::new(EXE)
            .args([
                "run-benchmark",
                "verified",
                "--agent",
                "empty",
                "--pull",
                "never",
                "--json",
                "--instance-ids",
                ids,
            ])
            .args(["--run-id", run_id, "--output-dir"])
            .arg(out.path())
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("SWE_ENV_CACHE", cache.path())
            .output()
            .unwrap()
    };
    let first = run("first");
    let _ = server.kill();
    let _ = server.wait();
    let stats: serde_json::Value = serde_json::from_slice(&first.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&first.stderr)));
    // The official images are not here: both instances load from the downloaded dataset and fail per instance.
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["errors_by_kind"]["image_missing"], 2);
    let cached = cache
        .path()
        .join("datasets/princeton-nlp/SWE-bench_Verified/test.parquet");
    assert!(
        cached.exists(),
        "the download is cached at {}",
        cached.display()
    );
    let results = std::fs::read_to_string(out.path().join("first/results.jsonl")).unwrap();
    assert!(
        results.contains("swebench/sweb.eval.x86_64.django_1776_django-11099:latest"),
        "{results}"
    );

    // With the server gone, the cache serves the alias.
    let second = run("second");
    let stats: serde_json::Value = serde_json::from_slice(&second.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&second.stderr)));
    assert_eq!(stats["total"], 2);
}
