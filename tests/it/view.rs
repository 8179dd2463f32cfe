//! `swe-env view` and `swe-env show` through the real binary: real runs (gold and empty agents on the fixtures), a
//! hand-written hostile trajectory, pages loaded in a real headless browser (Debian's chromium) from the file
//! system and from `--serve`, with no console message allowed (a page with a deliberate `throw` proves the check
//! catches one), and a screenshot helper.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use regex::Regex;

use crate::common::{assert_success, describe, read_jsonl, run_ok};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

fn swe_env(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn swe_env_ok(args: &[&str]) -> Output {
    run_ok(Command::new(EXE).args(args).stdin(Stdio::null()))
}

/// What headless chromium printed: its standard output (`--dump-dom`'s DOM) and every console message of the page
/// (chromium logs each `console.*` call and each uncaught exception as a `CONSOLE` line).
struct Browsed {
    stdout: String,
    console: Vec<String>,
}

/// Runs Debian's chromium headless on `url` with `extra` arguments, in a fresh profile. Fails (never skips) when
/// chromium is missing.
fn chromium(url: &str, extra: &[String]) -> Browsed {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): these tests need it; scripts/setup.sh installs it (apt-get install chromium)")
        });
    assert_success(&output, &format!("chromium on {url}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let console = stderr
        .lines()
        .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
        .map(str::to_owned)
        .collect();
    Browsed {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        console,
    }
}

/// The console messages of the page at `url` once loaded.
fn console_messages(url: &str) -> Vec<String> {
    chromium(url, &["--dump-dom".into()]).console
}

/// The rendered DOM of the page at `url`; the page must log nothing to the console (no error, no warning, no
/// refused script).
fn load_page(url: &str) -> String {
    let browsed = chromium(url, &["--dump-dom".into()]);
    assert!(
        browsed.console.is_empty(),
        "{url} logged to the console: {:#?}",
        browsed.console
    );
    assert!(
        browsed.stdout.contains("</html>"),
        "no DOM for {url}: {}",
        browsed.stdout
    );
    browsed.stdout
}

/// Writes a PNG screenshot (1280×900) of the page at `url` to `out_png` and returns its width and height.
pub fn screenshot(url: &str, out_png: &Path) -> (u32, u32) {
    chromium(
        url,
        &[
            "--hide-scrollbars".into(),
            "--window-size=1280,900".into(),
            format!("--screenshot={}", out_png.display()),
        ],
    );
    let png = std::fs::read(out_png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", out_png.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (width, height)
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// The rows of the index DOM: (instance id, status), in page order.
fn index_rows(dom: &str) -> Vec<(String, String)> {
    let row =
        Regex::new(r#"<tr class="row" data-instance="([^"]*)" data-status="([^"]*)""#).unwrap();
    row.captures_iter(dom)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect()
}

/// The `href` of every link in a page.
fn links(html: &str) -> Vec<String> {
    let href = Regex::new(r#"href="([^"]*)""#).unwrap();
    href.captures_iter(html).map(|c| c[1].to_owned()).collect()
}

/// Every generated page: no tag points outside (no http(s) or protocol-relative URL, no absolute path) and the
/// style loads nothing (no `url(`, no `@import`). In the written HTML every `<` of a text is escaped, so each `<`
/// starts a real tag.
fn assert_self_contained(out: &Path) {
    let tag = Regex::new(r"<[a-zA-Z][^>]*>").unwrap();
    let reference =
        Regex::new(r#"(?i)\b(src|href|action|data|poster|srcset)\s*=\s*"([^"]*)""#).unwrap();
    let style = Regex::new(r"(?s)<style>(.*?)</style>").unwrap();
    let mut pages = vec![out.join("index.html")];
    for entry in std::fs::read_dir(out.join("episodes")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap();
        for tag in tag.find_iter(&html) {
            for value in reference.captures_iter(tag.as_str()) {
                let url = &value[2];
                assert!(
                    !url.contains("//") && !url.contains(':') && !url.starts_with('/'),
                    "{}: {} points outside",
                    page.display(),
                    tag.as_str()
                );
            }
        }
        for css in style.captures_iter(&html) {
            assert!(
                !css[1].contains("url(") && !css[1].contains("@import"),
                "{}",
                page.display()
            );
        }
    }
}

/// `dom` with attribute values emptied: what is left of `<script` or `<img` would be an element.
fn without_attribute_values(dom: &str) -> String {
    Regex::new(r#"="[^"]*""#)
        .unwrap()
        .replace_all(dom, "=\"\"")
        .into_owned()
}

/// The cells of the Markdown table rows `show` printed (header and separator left out).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|-"))
        .skip(1)
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// A raw HTTP/1.1 GET of `target` exactly as written (no client normalises `..` away); returns the status code.
fn raw_get(addr: &str, target: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {response:?}"))
}

/// `swe-env view INPUT -o OUT --serve 127.0.0.1:0`, running; returns the child and the `http://ADDR/` it printed.
fn serve(input: &Path, out: &Path) -> (Child, String) {
    let mut child = Command::new(EXE)
        .arg("view")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--serve", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        if !matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            let _ = child.kill();
            let status = child.wait();
            panic!("view --serve ended ({status:?}) before serving; it printed {seen:?}");
        }
        seen.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("serving ") {
            break url.to_owned();
        }
    };
    (child, url)
}

fn stop(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "view --serve exited {status:?} on SIGTERM"
    );
}

/// Checks `view` and `show` of the run at `run` against its results.jsonl: index rows (sorted, one per instance,
/// status and resolved), summary counts, episode pages with every step, through file:// and --serve.
fn check_run(run: &Path, work: &Path, expect_resolved: usize) {
    let results = read_jsonl(&run.join("results.jsonl"));
    let mut ids: Vec<String> = results
        .iter()
        .map(|r| r["instance_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let status_of = |id: &str| {
        results
            .iter()
            .rev()
            .find(|r| r["instance_id"] == id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Default output directory, then written again: the same files.
    swe_env_ok(&["view", run.to_str().unwrap()]);
    let out = run.join("view");
    let first = std::fs::read(out.join("index.html")).unwrap();
    swe_env_ok(&["view", run.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("index.html")).unwrap(),
        first,
        "rewrite differs"
    );
    assert_self_contained(&out);

    // The index in the browser: one row per instance, sorted, with the run's statuses and counts.
    let dom = load_page(&file_url(&out.join("index.html")));
    let rows = index_rows(&dom);
    let expected: Vec<(String, String)> =
        ids.iter().map(|id| (id.clone(), status_of(id))).collect();
    assert_eq!(rows, expected);
    assert!(
        dom.contains(&format!(
            r#"<strong id="resolved-count">{expect_resolved}/{}</strong>"#,
            ids.len()
        )),
        "no resolved count {expect_resolved}/{} in {dom}",
        ids.len()
    );

    // Every episode link resolves to a page that loads cleanly and shows every step of its trajectory.
    let index_html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let episode_links: Vec<String> = links(&index_html)
        .into_iter()
        .filter(|l| l.starts_with("episodes/"))
        .collect();
    let run_id = run.file_name().unwrap().to_str().unwrap();
    let with_trajectory = ids
        .iter()
        .filter(|id| {
            run.join(format!("trajectories/{run_id}-{id}.jsonl"))
                .exists()
        })
        .count();
    assert_eq!(episode_links.len(), with_trajectory, "{episode_links:?}");
    let first_link = &episode_links[0];
    let page = out.join(first_link);
    let episode_dom = load_page(&file_url(&page));
    let trajectory = run.join("trajectories").join(
        first_link
            .trim_start_matches("episodes/")
            .replace(".html", ".jsonl"),
    );
    let records = read_jsonl(&trajectory);
    let n_steps = records.iter().filter(|r| r["type"] == "step").count();
    assert_eq!(
        episode_dom.matches(r#"<section class="step""#).count(),
        n_steps
    );
    assert!(episode_dom.contains(&format!(r#"<dd id="instance"><code>{}</code>"#, ids[0])));
    assert!(links(&episode_dom).contains(&"../index.html".to_owned()));

    // --serve: the same pages over HTTP, nothing else.
    let served = work.join("served");
    let (mut child, url) = serve(run, &served);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let dom = load_page(&url);
    assert_eq!(index_rows(&dom), expected);
    let episode_dom = load_page(&format!("{url}{first_link}"));
    assert_eq!(
        episode_dom.matches(r#"<section class="step""#).count(),
        n_steps
    );
    assert_eq!(raw_get(&addr, "/"), 200);
    assert_eq!(raw_get(&addr, &format!("/{first_link}")), 200);
    for escape in [
        "/../results.jsonl",
        "/episodes/../../results.jsonl",
        "/%2e%2e/results.jsonl",
        "/episodes/..%2f..%2fresults.jsonl",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/results.jsonl",
        "/episodes/",
    ] {
        assert_eq!(raw_get(&addr, escape), 404, "{escape}");
    }
    stop(&mut child);

    // show: the index table, exact cells for each instance, no escape code when piped, and --json.
    let output = swe_env_ok(&["show", run.to_str().unwrap()]);
    assert!(
        !output.stdout.contains(&0x1b),
        "escape code in piped output"
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let rows = table_rows(&text);
    assert_eq!(rows.len(), ids.len(), "{text}");
    let time_cell = Regex::new(r"^\d+(\.\d)? (ms|s)$|^\d+ min \d\d s$").unwrap();
    for (row, id) in rows.iter().zip(&ids) {
        let result = results
            .iter()
            .rev()
            .find(|r| r["instance_id"] == id.as_str())
            .unwrap();
        let resolved = match result["status"].as_str().unwrap() {
            "resolved" => "yes",
            "unresolved" => "no",
            _ => "-",
        };
        assert_eq!(
            row[..5],
            [
                id.clone(),
                status_of(id),
                resolved.to_owned(),
                result["n_steps"].to_string(),
                result["tokens"].to_string(),
            ],
            "{text}"
        );
        assert!(time_cell.is_match(&row[5]), "time cell {:?}", row[5]);
    }
    let errors = results.iter().filter(|r| r["status"] == "error").count();
    assert!(
        text.contains(&format!("resolved {expect_resolved}/{} · ", ids.len()))
            && text.contains(&format!("errors {errors}")),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&swe_env_ok(&["show", run.to_str().unwrap(), "--json"]).stdout)
            .unwrap();
    assert_eq!(json["summary"]["resolved"], expect_resolved);
    assert_eq!(json["rows"].as_array().unwrap().len(), ids.len());

    // show RUN INSTANCE: that episode's steps.
    let output = swe_env_ok(&["show", run.to_str().unwrap(), &ids[0]]);
    let text = String::from_utf8(output.stdout).unwrap();
    let rows = table_rows(&text);
    assert_eq!(rows.len(), n_steps, "{text}");
    let steps: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "step").collect();
    for (row, step) in rows.iter().zip(&steps) {
        assert_eq!(row[0], step["step_idx"].to_string());
        assert_eq!(row[1], step["tool"].as_str().unwrap_or("-"));
        assert_eq!(row[3], step["tool_ms"].to_string());
        assert!(
            row[4].chars().count() <= 100 && row[5].chars().count() <= 100,
            "{row:?}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(
        &swe_env_ok(&["show", run.to_str().unwrap(), &ids[0], "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(json["steps"].as_array().unwrap().len(), n_steps);
    assert_eq!(json["instance_id"], ids[0].as_str());
}

/// `run-benchmark fixtures --agent AGENT --run-id AGENT --grading-network none` into `out`, started.
fn start_fixture_run(agent: &str, out: &Path) -> Child {
    Command::new(EXE)
        .args([
            "run-benchmark",
            "fixtures",
            "--agent",
            agent,
            "--run-id",
            agent,
        ])
        .args(["--grading-network", "none", "--json", "--output-dir"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn view_and_show_real_gold_and_empty_runs() {
    let out = tempfile::tempdir().unwrap();
    // Both runs at once (they share nothing but the engine).
    let gold = start_fixture_run("gold", out.path());
    let empty = start_fixture_run("empty", out.path());
    let (gold, empty) = (
        gold.wait_with_output().unwrap(),
        empty.wait_with_output().unwrap(),
    );
    assert_success(&gold, "run-benchmark --agent gold");
    assert_success(&empty, "run-benchmark --agent empty");
    let n_fixtures = read_jsonl(&out.path().join("gold/results.jsonl")).len();
    assert!(n_fixtures >= 2, "{}", describe(&gold));
    check_run(
        &out.path().join("gold"),
        &out.path().join("gold-work"),
        n_fixtures,
    );
    check_run(&out.path().join("empty"), &out.path().join("empty-work"), 0);

    // A screenshot of the real index is a real picture.
    let png = out.path().join("index.png");
    let (width, height) = screenshot(&file_url(&out.path().join("gold/view/index.html")), &png);
    assert_eq!((width, height), (1280, 900));
    assert!(std::fs::metadata(&png).unwrap().len() > 5_000);
}

/// A hand-written trajectory whose action and observation are HTML, a script, a `</pre>` and an outside image,
/// with an observation too large to show whole.
fn hostile_trajectory(dir: &Path) -> PathBuf {
    let big = format!("{}END-OF-BIG", "x".repeat(100_000));
    let records = [
        serde_json::json!({"type": "episode_start", "schema_version": 1, "episode_id": "hostile/<b>ep</b>",
            "instance_id": "<img src=x onerror=alert(1)>", "task": {"problem_statement": "</pre><script>alert(3)</script>"},
            "image": "img", "image_id": "", "tool_format": "text", "limits": {}, "versions": {},
            "started_at": "2026-12-01T00:00:00.000Z"}),
        serde_json::json!({"type": "step", "step_idx": 0, "raw_action": "<script>alert(1)</script>",
            "parsed_call": null, "tool": "bash", "observation": "</pre><script>alert(2)</script><img src=\"http://example.invalid/x.png\">",
            "exit_code": 0, "tool_ms": 5, "at": "2026-12-01T00:00:01.000Z"}),
        serde_json::json!({"type": "step", "step_idx": 1, "raw_action": "cat big", "parsed_call": null, "tool": "bash",
            "observation": big, "exit_code": 1, "tool_ms": 7, "at": "2026-12-01T00:00:02.000Z"}),
        serde_json::json!({"type": "episode_end", "status": "submitted", "n_steps": 2, "duration_ms": 9,
            "submission": "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-<old>\n+</pre><script>alert(4)</script>\n",
            "rewards": {"resolved": false, "execution": 0.0}, "ended_at": "2026-12-01T00:00:03.000Z"}),
    ];
    let path = dir.join("hostile.jsonl");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn hostile_text_is_shown_not_run_and_large_texts_are_cut_with_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let file = hostile_trajectory(dir.path());
    let out = dir.path().join("report");
    swe_env_ok(&["view", file.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_self_contained(&out);
    let pages: Vec<PathBuf> = std::fs::read_dir(out.join("episodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(pages[0].file_name().unwrap(), "hostile__b_ep__b_.html");

    for url in [file_url(&out.join("index.html")), file_url(&pages[0])] {
        // No console message: a script that ran, or one the page's policy refused, would log one.
        let dom = load_page(&url);
        let elements = without_attribute_values(&dom);
        assert!(
            !elements.contains("<script") && !elements.contains("<img"),
            "markup from the trajectory in {url}: {dom}"
        );
        assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    }
    let dom = load_page(&file_url(&pages[0]));
    for shown in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&lt;/pre&gt;&lt;script&gt;alert(2)&lt;/script&gt;&lt;img src=\"http://example.invalid/x.png\"&gt;",
        "&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;",
        "<span class=\"add\">+&lt;/pre&gt;&lt;script&gt;alert(4)&lt;/script&gt;\n</span>",
        "<span class=\"del\">-&lt;old&gt;\n</span>",
        "<span class=\"hunk\">@@ -1 +1 @@\n</span>",
    ] {
        assert!(dom.contains(shown), "{shown} not shown in {dom}");
    }
    // 100 010 bytes, 16 KiB shown: a head, a note with both sizes, and the tail.
    assert!(dom.contains("observation (100010 bytes)"));
    assert!(
        dom.contains(&format!(
            "… {} bytes left out here (the whole text is 100010 bytes) …",
            100_010 - 16_384
        )),
        "{dom}"
    );
    assert!(dom.contains("END-OF-BIG"));

    // show of the same file: escaping is the terminal's business, the text is as written.
    let output = swe_env_ok(&[
        "show",
        file.to_str().unwrap(),
        "<img src=x onerror=alert(1)>",
    ]);
    let text = String::from_utf8(output.stdout).unwrap();
    let rows = table_rows(&text);
    assert_eq!(rows[0][4], "<script>alert(1)</script>");
    assert_eq!(rows[1][5].chars().count(), 100, "{text}");
    assert!(rows[1][5].ends_with('…'));
}

#[test]
fn inputs_that_are_not_runs_or_trajectories_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "hello").unwrap();
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let missing = dir.path().join("missing");
    for (input, says) in [
        (&text_file, "not a run directory"),
        (&empty_dir, "not a run directory"),
        (&missing, "cannot read"),
    ] {
        for command in ["view", "show"] {
            let output = swe_env(&[command, input.to_str().unwrap()]);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command} {}: {}",
                input.display(),
                describe(&output)
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(says) && stderr.contains(input.to_str().unwrap()),
                "{stderr}"
            );
        }
    }
    // An unknown instance names the ones there are; an address in use is the user's to change.
    let file = hostile_trajectory(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = dir.path().join("out");
    let output = swe_env(&[
        "view",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--serve",
        &addr,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("cannot listen on {addr}")));
    let output = swe_env(&["show", file.to_str().unwrap(), "nope"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("known: <img src=x onerror=alert(1)>"));
}

#[test]
fn the_console_check_catches_a_page_that_throws() {
    let dir = tempfile::tempdir().unwrap();
    let throwing = dir.path().join("throws.html");
    std::fs::write(
        &throwing,
        "<!doctype html><html><body><p>x</p><script>throw new Error('deliberate test error')</script></body></html>",
    )
    .unwrap();
    let messages = console_messages(&file_url(&throwing));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Uncaught Error: deliberate test error")),
        "{messages:?}"
    );
    let quiet = dir.path().join("quiet.html");
    std::fs::write(&quiet, "<!doctype html><html><body><p>x</p></body></html>").unwrap();
    assert_eq!(console_messages(&file_url(&quiet)), Vec::<String>::new());

    // The screenshot helper writes a real PNG of the page.
    let png = dir.path().join("quiet.png");
    assert_eq!(screenshot(&file_url(&quiet), &png), (1280, 900));
    assert!(std::fs::metadata(&png).unwrap().len() > 1_000);
}

/// A run directory written by hand as the runner writes one (results.jsonl, trajectories/, logs/): a resolved
/// instance, an unresolved one and one that failed before its episode (no trajectory).
fn hand_written_run(dir: &Path) -> PathBuf {
    let run = dir.join("handrun");
    std::fs::create_dir_all(run.join("trajectories")).unwrap();
    std::fs::create_dir_all(run.join("logs/fx__a-1")).unwrap();
    let patch = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-old\n+new\n";
    let start = |instance: &str| {
        serde_json::json!({"type": "episode_start", "schema_version": 1, "episode_id": format!("handrun-{instance}"),
            "instance_id": instance, "task": {"problem_statement": "fix m"}, "image": "img", "image_id": "",
            "tool_format": "text", "limits": {}, "versions": {}, "started_at": "2026-12-01T00:00:00.000Z"})
    };
    let step = |idx: u32, action: &str, observation: &str| {
        serde_json::json!({"type": "step", "step_idx": idx, "raw_action": action, "parsed_call": null, "tool": "bash",
            "observation": observation, "exit_code": 0, "tool_ms": 3 + idx, "at": "2026-12-01T00:00:01.000Z",
            "tokens": {"prompt": 50, "completion": 10}})
    };
    let trajectories = [
        (
            "fx__a-1",
            vec![
                start("fx__a-1"),
                step(0, "cat m.py", "old"),
                step(1, "<tool: submit>\n</tool>", "submitted"),
                serde_json::json!({"type": "episode_end", "status": "submitted", "submission": patch, "n_steps": 2,
                    "rewards": {"resolved": true, "execution": 1.0}, "duration_ms": 2500,
                    "ended_at": "2026-12-01T00:00:03.000Z"}),
            ],
        ),
        (
            "fx__b-1",
            vec![
                start("fx__b-1"),
                serde_json::json!({"type": "episode_end", "status": "max_turns", "detail": "turn budget 0 reached",
                    "n_steps": 0, "duration_ms": 20, "ended_at": "2026-12-01T00:00:03.000Z"}),
            ],
        ),
    ];
    for (instance, records) in trajectories {
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(
            run.join(format!("trajectories/handrun-{instance}.jsonl")),
            text,
        )
        .unwrap();
    }
    let results = [
        serde_json::json!({"instance_id": "fx__b-1", "repo": "fx/b", "status": "unresolved", "episode_status": "max_turns",
            "submission": "", "n_steps": 0, "tokens": 0, "total_ms": 20,
            "report": {"patch_is_None": false, "patch_exists": true, "patch_successfully_applied": false, "resolved": false}}),
        serde_json::json!({"instance_id": "fx__a-1", "repo": "fx/a", "status": "resolved", "episode_status": "submitted",
            "submission": patch, "n_steps": 2, "tokens": 120, "total_ms": 2500,
            "report": {"patch_is_None": false, "patch_exists": true, "patch_successfully_applied": true, "resolved": true,
                "tests_status": {"FAIL_TO_PASS": {"success": ["t_fixed"], "failure": []},
                    "PASS_TO_PASS": {"success": ["t_kept"], "failure": []},
                    "FAIL_TO_FAIL": {"success": [], "failure": []}, "PASS_TO_FAIL": {"success": [], "failure": []}}}}),
        serde_json::json!({"instance_id": "fx__c-1", "repo": "fx/c", "status": "error", "error_kind": "image_missing",
            "error": "image fx-c is not present\npull it first", "n_steps": 0, "tokens": 0, "total_ms": 0}),
    ];
    let text: String = results.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(run.join("results.jsonl"), text).unwrap();
    std::fs::write(
        run.join("logs/fx__a-1/test_output.txt"),
        "+ git diff\n-old\n+new\nPASSED t_fixed\n",
    )
    .unwrap();
    run
}

#[test]
fn a_run_with_an_error_row_and_grading_logs() {
    let dir = tempfile::tempdir().unwrap();
    let run = hand_written_run(dir.path());
    check_run(&run, &dir.path().join("work"), 1);
    let index = load_page(&file_url(&run.join("view/index.html")));
    assert!(
        index.contains("errors <span id=\"error-count\">1</span>"),
        "{index}"
    );
    assert!(
        index.contains("image_missing: image fx-c is not present…"),
        "{index}"
    );
    assert!(index.contains("no trajectory"), "{index}");
    let episode = load_page(&file_url(&run.join("view/episodes/handrun-fx__a-1.html")));
    for shown in [
        "<span class=\"hunk\">@@ FAIL_TO_PASS: 1 passed, 0 failed @@\n</span><span class=\"add\">+ t_fixed\n</span>",
        "<h2>Test output (36 bytes)</h2>",
        "<span class=\"add\">+new\n</span>",
    ] {
        assert!(episode.contains(shown), "{shown} not in {episode}");
    }
    // A stale page of an earlier report is removed on rewrite; the error row's instance has none.
    std::fs::write(run.join("view/episodes/stale.html"), "old").unwrap();
    swe_env_ok(&["view", run.to_str().unwrap()]);
    assert!(!run.join("view/episodes/stale.html").exists());
    assert!(!run.join("view/episodes/handrun-fx__c-1.html").exists());
}
