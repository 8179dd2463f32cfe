//! The fault-injection program as a test: `swe-env bench chaos --json` runs every fault of the reliability issue
//! against a real `swe-env serve` child (client deadlines and cancels mid-step, shell hijacks, a newline in the
//! cwd, a NUL byte, a container removed outside, hostile limits, kill -9 and restart, a drain) with a bystander
//! episode stepping throughout; every fault must be survived with no lost or duplicated record and no leaked
//! container.

use std::process::{Command, Stdio};

#[test]
fn every_fault_is_survived_without_lost_records_or_leaked_containers() {
    let output = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["bench", "chaos", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON table ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(rows.len() >= 10, "{stdout}");
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| {
            row["survived"] != true || row["lost_records"] != 0 || row["leaked_containers"] != 0
        })
        .map(|row| row.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "faults not survived:\n{}",
        failed.join("\n")
    );
    assert!(output.status.success(), "{stderr}");
}
