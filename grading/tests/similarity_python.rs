//! Differential test: our `ratio` and SWE-RL similarity against CPython's difflib, bit for bit.
//!
//! Inputs: the 500 gold patches of SWE-bench Verified (read from `<repo>/../shared/datasets/`)
//! against deterministic perturbations of themselves, plus random strings (ASCII and non-ASCII,
//! many longer than 200 characters, where autojunk would matter). One python3 process (stdlib
//! only, `grading/reference-parsers/similarity_reference.py`) answers all requests as JSON lines.
//! Fails loudly when python3 cannot run.

#![allow(clippy::unwrap_used)] // Tests panic on unexpected failures by design.

mod common;

use common::repo_root;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use swe_env_grading::similarity::{ratio, swe_rl_similarity};

/// splitmix64: a tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Runs the reference on JSON lines, returning one JSON value per request.
fn run_reference(requests: &[Value]) -> Vec<Value> {
    let script = repo_root().join("grading/reference-parsers/similarity_reference.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 is required for this differential test and could not start: {e}")
        });
    let mut stdin = child.stdin.take().unwrap();
    let payload: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let writer = std::thread::spawn(move || {
        stdin.write_all(payload.as_bytes()).unwrap();
    });
    let stdout = child.stdout.take().unwrap();
    let answers: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    writer.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "reference script failed: {status}");
    assert_eq!(
        answers.len(),
        requests.len(),
        "reference answered too few lines"
    );
    answers
}

fn py_float(value: &Value) -> f64 {
    value.as_str().unwrap().parse::<f64>().unwrap()
}

/// Deterministic perturbations of one patch.
///
/// Dropped lines mostly break hunk counts and are cheap to compare; the expensive kinds (identity,
/// changed characters, swapped hunks, a dropped file) rotate with `index` so that python's
/// quadratic difflib keeps the test at tens of seconds.
fn perturbations(index: usize, patch: &str, other: &str, rng: &mut Rng) -> Vec<String> {
    let lines: Vec<&str> = patch.split('\n').collect();
    let mut out = vec![other.to_string(), String::new()];
    let mut expensive: Vec<String> = vec![patch.to_string()];
    // Dropped lines (often breaking hunk counts: then both sides must say -1).
    for _ in 0..2 {
        let mut kept = lines.clone();
        let victim = rng.below(kept.len());
        kept.remove(victim);
        out.push(kept.join("\n"));
    }
    // Changed characters inside +/- lines, including non-ASCII replacements.
    let replacements = ['x', ' ', 'é', '✓', '😀', '_', '('];
    let mut changed: Vec<String> = Vec::new();
    for line in &lines {
        let is_change = (line.starts_with('+') && !line.starts_with("+++"))
            || (line.starts_with('-') && !line.starts_with("---"));
        if is_change && line.len() > 1 && rng.below(3) == 0 {
            let mut chars: Vec<char> = line.chars().collect();
            let position = 1 + rng.below(chars.len() - 1);
            chars[position] = replacements[rng.below(replacements.len())];
            changed.push(chars.into_iter().collect());
        } else {
            changed.push(line.to_string());
        }
    }
    expensive.push(changed.join("\n"));
    // Swapped hunks: the first two hunks of the patch exchanged (same file or not).
    let hunk_starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("@@"))
        .map(|(i, _)| i)
        .collect();
    if hunk_starts.len() >= 2 {
        let (first, second) = (hunk_starts[0], hunk_starts[1]);
        let second_end = hunk_starts.get(2).copied().unwrap_or(lines.len());
        // Only swap when the second hunk is followed by nothing but hunk lines of the same file.
        let between_is_hunk = lines[first..second]
            .iter()
            .all(|l| !l.starts_with("diff ") && !l.starts_with("--- ") && !l.starts_with("+++ "));
        let after_is_hunk = lines[second..second_end]
            .iter()
            .all(|l| !l.starts_with("diff ") && !l.starts_with("--- ") && !l.starts_with("+++ "));
        if between_is_hunk && after_is_hunk {
            let mut swapped: Vec<&str> = lines[..first].to_vec();
            swapped.extend_from_slice(&lines[second..second_end]);
            swapped.extend_from_slice(&lines[first..second]);
            swapped.extend_from_slice(&lines[second_end..]);
            expensive.push(swapped.join("\n"));
        }
    }
    // A whole file section dropped (files missing on one side score 0).
    let sections: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("diff --git "))
        .map(|(i, _)| i)
        .collect();
    if sections.len() >= 2 {
        expensive.push(lines[..sections[1]].join("\n") + "\n");
    }
    // Changed characters for every other patch, else identity / swap / dropped file in turn.
    let pick = if index & 1 == 0 {
        1
    } else {
        (index / 2) % expensive.len()
    };
    out.push(expensive.swap_remove(pick.min(expensive.len() - 1)));
    out
}

#[test]
fn swe_rl_similarity_matches_python_on_verified_gold_patches() {
    let dataset = repo_root().join("../shared/datasets/swe-bench-verified.jsonl");
    let text = std::fs::read_to_string(&dataset)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dataset.display()));
    let golds: Vec<String> = text
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            row["patch"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(golds.len(), 500);

    let mut rng = Rng(0x5EED);
    let mut cases: Vec<(String, String)> = Vec::new();
    for (index, gold) in golds.iter().enumerate() {
        let other = &golds[(index * 7 + 13) % golds.len()];
        for predicted in perturbations(index, gold, other, &mut rng) {
            cases.push((predicted, gold.clone()));
        }
    }
    let requests: Vec<Value> = cases
        .iter()
        .map(|(pred, gold)| json!({"kind": "patch", "pred": pred, "gold": gold}))
        .collect();
    let started = std::time::Instant::now();
    let answers = run_reference(&requests);
    let python_time = started.elapsed();
    let started = std::time::Instant::now();

    let (mut format_errors, mut partial) = (0, 0);
    for ((pred, gold), answer) in cases.iter().zip(&answers) {
        let ours = swe_rl_similarity(pred, gold).expect("every Verified gold patch parses");
        let theirs = py_float(&answer["reward"]);
        assert_eq!(
            ours.reward.to_bits(),
            theirs.to_bits(),
            "reward differs ({} vs {}) for prediction:\n{pred}",
            ours.reward,
            theirs
        );
        let their_files = answer["files"].as_array().unwrap();
        assert_eq!(ours.files.len(), their_files.len());
        for (file, theirs) in ours.files.iter().zip(their_files) {
            assert_eq!(file.path, theirs[0].as_str().unwrap());
            assert_eq!(file.similarity.to_bits(), py_float(&theirs[1]).to_bits());
        }
        assert_eq!(ours.format_error.is_some(), !answer["error"].is_null());
        if ours.format_error.is_some() {
            format_errors += 1;
        } else if ours.reward > 0.0 && ours.reward < 1.0 {
            partial += 1;
        }
    }
    // The corpus must exercise both the -1 path and genuinely fractional similarities.
    assert!(format_errors > 100, "only {format_errors} format errors");
    assert!(partial > 300, "only {partial} fractional rewards");
    eprintln!(
        "{} patch pairs compared ({format_errors} format errors, {partial} fractional); python {:?}, rust {:?}",
        cases.len(),
        python_time,
        started.elapsed()
    );
}

fn random_string(rng: &mut Rng, alphabet: &[char], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.below(alphabet.len())])
        .collect()
}

fn mutate(rng: &mut Rng, text: &str, alphabet: &[char]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let edits = 1 + rng.below(chars.len() / 4 + 1);
    for _ in 0..edits {
        match rng.below(3) {
            0 if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars.remove(at);
            }
            1 => {
                let at = rng.below(chars.len() + 1);
                chars.insert(at, alphabet[rng.below(alphabet.len())]);
            }
            _ if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars[at] = alphabet[rng.below(alphabet.len())];
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

#[test]
fn ratio_matches_python_on_random_strings() {
    let alphabets: Vec<Vec<char>> = vec![
        "ab".chars().collect(),
        "abc \n".chars().collect(),
        "abcdefghijklmnopqrstuvwxyz ()_:=\n".chars().collect(),
        "aé✓😀中文 \u{0}\u{301}".chars().collect(),
    ];
    let mut rng = Rng(42);
    let mut cases: Vec<(String, String)> = vec![
        (String::new(), String::new()),
        (String::new(), "abc".into()),
        ("x".repeat(300), "x".repeat(250)),
    ];
    for round in 0..400 {
        let alphabet = &alphabets[round % alphabets.len()];
        let len = match round % 5 {
            0 => rng.below(20),
            1 => 150 + rng.below(100),
            2 => 200 + rng.below(200),
            3 => 400 + rng.below(400),
            _ => rng.below(1200),
        };
        let a = random_string(&mut rng, alphabet, len);
        let b = if round % 3 == 0 {
            let other_len = len / 2 + rng.below(len + 1);
            random_string(&mut rng, alphabet, other_len)
        } else {
            mutate(&mut rng, &a, alphabet)
        };
        cases.push((a, b));
    }
    let requests: Vec<Value> = cases
        .iter()
        .map(|(a, b)| json!({"kind": "ratio", "a": a, "b": b}))
        .collect();
    let answers = run_reference(&requests);
    let mut long = 0;
    for ((a, b), answer) in cases.iter().zip(&answers) {
        let theirs = py_float(&answer["ratio"]);
        let ours = ratio(a, b);
        assert_eq!(
            ours.to_bits(),
            theirs.to_bits(),
            "ratio({a:?}, {b:?}): {ours} vs {theirs}"
        );
        if b.chars().count() > 200 {
            long += 1;
        }
    }
    assert!(long > 150, "only {long} cases longer than 200");
}
