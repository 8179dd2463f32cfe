//! `swe-env trace` CLI (issue 16), through the real binary and Docker.

mod run_cli {
    use std::process::{Command, Output};

    use serde_json::Value;

    use crate::common::describe;

    const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
    const SPANS: &str = "swe-env-fixtures__spans-1";
    const F2P: &str = "tests/test_ops.py::test_merge_unsorted";

    /// Runs the binary to its end; returns its output and the owner-label pid it ran as.
    fn swe_env(args: &[&str]) -> (Output, u32) {
        let child = Command::new(EXE)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    }

    /// Containers still labelled as owned by process `pid` (any host, any start time).
    fn containers_of(pid: u32) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=swe-env.owner",
                "--format",
                "{{.Names}} {{.Label \"swe-env.owner\"}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains(&format!(":{pid}:")))
            .map(str::to_owned)
            .collect()
    }

    /// The spans fixture's row of images/fixtures/tasks.jsonl, to be altered into a bad task.
    fn spans_row() -> Value {
        let fixtures = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../images/fixtures/tasks.jsonl"
        ))
        .unwrap();
        serde_json::from_str(fixtures.lines().find(|line| line.contains(SPANS)).unwrap()).unwrap()
    }

    fn assert_usage(output: &Output, needles: &[&str]) {
        assert_eq!(output.status.code(), Some(2), "{}", describe(output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "stderr lacks {needle:?}: {}",
                describe(output)
            );
        }
    }

    #[test]
    fn bad_input_exits_2_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog.py");
        std::fs::write(&prog, "def f():\n    return 1\n").unwrap();
        let prog = prog.to_str().unwrap();
        let missing = dir.path().join("missing.py");
        let missing = missing.to_str().unwrap();
        // A task whose runner is not pytest.
        let mut row = spans_row();
        row["test_cmd"] = Value::from("./tests/runtests.py --verbosity 2");
        let tasks = dir.path().join("tasks.jsonl");
        std::fs::write(&tasks, format!("{row}\n")).unwrap();
        let tasks = tasks.to_str().unwrap();
        let no_dir = dir.path().join("no/such/dir/out.jsonl");
        let no_dir = no_dir.to_str().unwrap();

        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec![], vec!["nothing to trace", "--task", "--entry"]),
            (
                vec!["--task", "nope__nope-1"],
                vec!["task nope__nope-1 is not in fixtures", "--tasks"],
            ),
            (
                vec!["--task", SPANS, "--max-bytes", "999999999"],
                vec!["--max-bytes 999999999", "62914560"],
            ),
            (
                vec!["--task", SPANS, "--max-repr", "0"],
                vec!["--max-repr 0", "10000"],
            ),
            (
                vec!["--task", SPANS, "--root", "testbed"],
                vec!["--root", "absolute path"],
            ),
            (vec!["--task", SPANS, "--json"], vec!["--json", "--out"]),
            (
                vec!["--task", SPANS, "--out", no_dir],
                vec!["does not exist"],
            ),
            (vec!["--task", SPANS, "--format", "xml"], vec!["xml"]),
            (vec!["--task", SPANS, "--locals", "some"], vec!["some"]),
            (
                vec!["--task", SPANS, "--file", prog, "--entry", "f()"],
                vec!["--file"],
            ),
            (
                vec!["--image", "swe-env/base:bookworm", "--file", prog],
                vec!["--entry"],
            ),
            (vec!["--file", prog, "--entry", "f()"], vec!["--image"]),
            (
                vec![
                    "--image",
                    "swe-env/base:bookworm",
                    "--file",
                    missing,
                    "--entry",
                    "f()",
                ],
                vec!["no such file"],
            ),
            (
                vec!["--task", SPANS, "--tasks", tasks, "--test", F2P],
                vec![SPANS, "./tests/runtests.py --verbosity 2", "not pytest"],
            ),
        ];
        for (args, needles) in cases {
            let mut argv = vec!["trace"];
            argv.extend(&args);
            let (output, _) = swe_env(&argv);
            assert_usage(&output, &needles);
        }
    }

    #[test]
    fn a_missing_node_id_image_or_python_and_a_patch_that_does_not_apply_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog.py");
        std::fs::write(&prog, "def f():\n    return 1\n").unwrap();
        let prog = prog.to_str().unwrap();
        // A task whose gold patch does not apply to its image.
        let mut row = spans_row();
        row["patch"] = Value::from(
            "diff --git a/src/spans/ops.py b/src/spans/ops.py\n--- a/src/spans/ops.py\n+++ b/src/spans/ops.py\n\
             @@ -1,1 +1,1 @@\n-no such line here\n+x\n",
        );
        let tasks = dir.path().join("tasks.jsonl");
        std::fs::write(&tasks, format!("{row}\n")).unwrap();
        let tasks = tasks.to_str().unwrap();
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["--task", SPANS, "--tasks", tasks, "--test", F2P],
                vec!["the gold patch does not apply", "src/spans/ops.py"],
            ),
            (
                vec!["--task", SPANS, "--test", "tests/test_ops.py::no_such_test"],
                vec!["pytest found no test", "no_such_test"],
            ),
            (
                vec![
                    "--image",
                    "swe-env/no-such-image:x",
                    "--file",
                    prog,
                    "--entry",
                    "f()",
                ],
                vec!["swe-env/no-such-image:x not found"],
            ),
            (
                vec![
                    "--image",
                    "swe-env/base:bookworm",
                    "--file",
                    prog,
                    "--entry",
                    "f()",
                    "--python",
                    "python9",
                ],
                vec!["not found in the image", "python9"],
            ),
        ];
        for (args, needles) in cases {
            let mut argv = vec!["trace"];
            argv.extend(&args);
            let (output, pid) = swe_env(&argv);
            assert_usage(&output, &needles);
            assert_eq!(
                containers_of(pid),
                Vec::<String>::new(),
                "{args:?} left containers"
            );
        }
    }

    #[test]
    fn a_fail_to_pass_test_of_a_fixture_gives_cwm_traces_and_items() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("traces.jsonl");
        let items = dir.path().join("items.jsonl");
        let (output, pid) = swe_env(&[
            "trace",
            "--task",
            SPANS,
            "--test",
            F2P,
            "--out",
            out.to_str().unwrap(),
            "--items",
            items.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        assert_eq!(containers_of(pid), Vec::<String>::new());
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        let traces: Vec<Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(!traces.is_empty(), "{}", describe(&output));
        assert_eq!(summary["traces"], traces.len() as u64);
        assert_eq!(
            summary["tests"],
            serde_json::json!([{"nodeid": F2P, "outcome": "passed"}])
        );
        let mut frames = 0;
        for trace in &traces {
            let cwm = trace["cwm"].as_str().unwrap();
            let prompt = format!(
                "<|begin_of_text|><|trace_context_start|>{}<|frame_sep|>",
                trace["context"].as_str().unwrap()
            );
            assert!(cwm.starts_with(&prompt), "{cwm}");
            assert!(cwm.ends_with("<|frame_sep|><|end_of_text|>"), "{cwm}");
            assert!(cwm[prompt.len()..].starts_with("<|call_sep|>"), "{cwm}");
            assert_eq!(trace["test"], F2P);
            assert!(
                trace["entry"]["file"]
                    .as_str()
                    .unwrap()
                    .starts_with("src/spans/"),
                "{trace}"
            );
            frames += trace["frames"].as_array().unwrap().len() as u64;
        }
        assert_eq!(summary["frames"], frames);
        // merge() of the test's ranges is traced, its helper too.
        let functions: Vec<&str> = traces
            .iter()
            .map(|t| t["entry"]["function"].as_str().unwrap())
            .collect();
        assert!(functions.contains(&"merge"), "{functions:?}");
        let item_lines = std::fs::read_to_string(&items).unwrap();
        assert_eq!(summary["items"], item_lines.lines().count() as u64);
        assert!(summary["bytes_per_frame"].as_f64().unwrap() > 0.0);
        assert!(summary["frames_per_sec"].as_f64().unwrap() > 0.0);

        // --format cwm on stdout: the same traces' CWM strings, the summary table on stderr.
        let (output, _) = swe_env(&["trace", "--task", SPANS, "--test", F2P, "--format", "cwm"]);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let stdout = String::from_utf8(output.stdout.clone()).unwrap();
        let expected: String = traces
            .iter()
            .map(|t| format!("{}\n\n", t["cwm"].as_str().unwrap()))
            .collect();
        assert_eq!(stdout, expected);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in ["traces/s", "frames/s", "bytes per frame", F2P] {
            assert!(stderr.contains(line), "{stderr}");
        }
        assert!(!stderr.contains('\u{1b}'), "ANSI off a terminal: {stderr}");
        assert!(
            stdout.contains(r#"": "..""#),
            "diff locals by default: {stdout}"
        );

        // --locals full: the same traces, every local written out.
        let (output, _) = swe_env(&[
            "trace", "--task", SPANS, "--test", F2P, "--format", "cwm", "--locals", "full",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let full = String::from_utf8(output.stdout).unwrap();
        assert!(!full.contains(r#"": "..""#), "{full}");
        assert_eq!(full.matches("<|end_of_text|>").count(), traces.len());
    }

    #[test]
    fn ctrl_c_exits_130_and_removes_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("slow.py");
        std::fs::write(
            &prog,
            "import time\n\n\ndef main():\n    time.sleep(120)\n    return 1\n",
        )
        .unwrap();
        let child = Command::new(EXE)
            .args([
                "trace",
                "--image",
                "swe-env/base:bookworm",
                "--file",
                prog.to_str().unwrap(),
            ])
            .args(["--entry", "main()"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = std::time::Instant::now();
        while containers_of(pid).is_empty() {
            assert!(
                started.elapsed().as_secs() < 60,
                "no trace container appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Let the traced program start, then interrupt.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let pid_arg = pid.to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid_arg])
            .status()
            .unwrap()
            .success());
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
        assert!(
            started.elapsed().as_secs() < 60,
            "the interrupt did not stop the run at once"
        );
        assert_eq!(containers_of(pid), Vec::<String>::new());
        assert!(
            output.stdout.is_empty(),
            "nothing is written when interrupted"
        );
    }

    /// The hostile review's cases (each failed before its fix): a program that outlives `--timeout` (exit 3, not
    /// 0, and a message naming the flag), an events cap reached by a program that never ends (the cap record is
    /// flushed, so it is there after the kill), a `--file` named like a test file (traced: the test-file rule is
    /// for a task's tests, not the file the user names), an `--entry` that is not an expression (exit 2), and a
    /// deep recursion (one trace per level, each holding every frame under it) bounded by `--max-test-frames`.
    #[test]
    fn timeouts_caps_test_named_files_bad_entries_and_deep_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("test_prog.py");
        std::fs::write(
            &prog,
            "def forever():\n    n = 0\n    while True:\n        n += 1\n\n\n\
             def deep(n):\n    if n == 0:\n        return 0\n    return deep(n - 1) + 1\n",
        )
        .unwrap();
        let prog = prog.to_str().unwrap();
        let image = "swe-env/base:bookworm";
        let base = ["trace", "--image", image, "--file", prog];

        let out = dir.path().join("forever.jsonl");
        let (output, pid) = swe_env(
            &[
                &base[..],
                &[
                    "--entry",
                    "forever()",
                    "--max-events",
                    "1000",
                    "--timeout",
                    "4",
                ],
                &["--json", "--out", out.to_str().unwrap()],
            ]
            .concat(),
        );
        assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--timeout 4 s"), "{}", describe(&output));
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["timed_out"], true, "{summary}");
        let caps = summary["caps"].to_string();
        assert!(
            caps.contains("events"),
            "the cap record was lost: {summary}"
        );
        assert!(containers_of(pid).is_empty());

        let (output, _) =
            swe_env(&[&base[..], &["--entry", "deep(3)", "--format", "json"]].concat());
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let traces = String::from_utf8_lossy(&output.stdout).lines().count();
        assert_eq!(
            traces,
            4,
            "a file named test_*.py must be traced: {}",
            describe(&output)
        );

        let (output, _) = swe_env(&[&base[..], &["--entry", "deep(3"]].concat());
        assert_usage(&output, &["not a valid Python expression"]);

        let out = dir.path().join("deep.jsonl");
        let (output, _) = swe_env(
            &[
                &base[..],
                &[
                    "--entry",
                    "deep(200)",
                    "--max-test-frames",
                    "5000",
                    "--json",
                ],
                &["--out", out.to_str().unwrap()],
            ]
            .concat(),
        );
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(summary["over_budget"].as_u64().unwrap() > 0, "{summary}");
        let frames = summary["frames"].as_u64().unwrap();
        assert!(frames > 0 && frames <= 5000, "{summary}");
    }
}
