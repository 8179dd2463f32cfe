//! The pages of `swe-env view`: `index.html` and `episodes/<page>.html`, self-contained (inline CSS, no script, no
//! external URL; a Content-Security-Policy forbids scripts and every fetch). Every text goes through maud's
//! escaping; nothing read from a run is ever written unescaped.

use std::collections::BTreeMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use swe_env_grading::report::{InstanceReport, TestOutcomes};

use super::load::{EpisodeView, IndexRow, Report};
use super::ViewConfig;
use crate::trajectory::StepRecord;

/// The generated pages: path relative to the output directory (`index.html`, `episodes/<page>.html`) → HTML.
pub type Pages = BTreeMap<String, String>;

/// The directory of the episode pages, relative to the index.
pub const EPISODES_DIR: &str = "episodes";

/// Scripts, frames, fonts and every fetch refused; only the inline style runs.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

const CSS: &str = r#"
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #ffffff; --muted: #57606a; --line: #d0d7de;
  --add: #dafbe1; --del: #ffebe9; --hunk: #ddf4ff; --warn: #fff8c5; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #8d96a0; --line: #30363d;
  --add: #12361f; --del: #42181b; --hunk: #0c2d6b; --warn: #3b2e00; } }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 1.5em auto;
  max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.yes { color: #1a7f37; font-weight: 600; } .no { color: #cf222e; font-weight: 600; }
pre { background: color-mix(in srgb, var(--line) 25%, var(--bg)); border: 1px solid var(--line); padding: 8px;
  overflow-x: auto; white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
pre.diff span { display: block; }
pre.diff .add { background: var(--add); } pre.diff .del { background: var(--del); }
pre.diff .hunk { background: var(--hunk); } .clip { background: var(--warn); font-style: italic; }
.step { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.step header { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; }
.problems { background: var(--warn); padding: 6px 12px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
#rewards { width: auto; min-width: 16em; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; word-break: break-word; }
"#;

/// Every page of `report`: the index and one page per episode.
pub fn render_site(report: &Report, config: &ViewConfig) -> Pages {
    let mut pages = Pages::new();
    pages.insert("index.html".into(), index_page(report).into_string());
    for episode in report.episodes.values() {
        pages.insert(
            format!("{EPISODES_DIR}/{}.html", episode.page),
            episode_page(report, episode, config).into_string(),
        );
    }
    pages
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body { (body) }
        }
    }
}

/// `850 ms`, `12.3 s`, `4 min 05 s`.
pub fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn resolved_cell(resolved: Option<bool>) -> Markup {
    match resolved {
        Some(true) => html! { span.yes { "yes" } },
        Some(false) => html! { span.no { "no" } },
        None => html! { span.muted { "—" } },
    }
}

fn index_page(report: &Report) -> Markup {
    let s = &report.summary;
    let body = html! {
        h1 { "swe-env · " (report.title) }
        p #summary {
            "resolved " strong #resolved-count { (s.resolved) "/" (s.total) }
            " · unresolved " (s.unresolved) " · errors " span #error-count { (s.errors) }
            " · not graded " (s.not_graded)
        }
        p.muted {
            "Input: "
            @for (n, input) in report.inputs.iter().enumerate() {
                @if n > 0 { ", " }
                code { (input.display()) }
            }
        }
        @if !report.problems.is_empty() {
            div.problems {
                strong { "Problems reading the input:" }
                ul { @for problem in &report.problems { li { (problem) } } }
            }
        }
        table #index {
            thead { tr {
                th { "instance" } th { "status" } th { "resolved" } th.num { "turns" } th.num { "tokens" }
                th.num { "time" } th { "error" } th { "episode" }
            } }
            tbody { @for row in &report.rows { (index_row(report, row)) } }
        }
    };
    page(&format!("swe-env · {}", report.title), body)
}

fn index_row(report: &Report, row: &IndexRow) -> Markup {
    html! {
        tr.row data-instance=(row.instance_id) data-status=(row.status) {
            td { code { (row.instance_id) } }
            td { (row.status) }
            td { (resolved_cell(row.resolved)) }
            td.num { (row.turns) }
            td.num { (row.tokens) }
            td.num { (format_ms(row.time_ms)) }
            td { @if let Some(error) = &row.error { (first_line(error, 160)) } }
            td {
                @for (n, page) in row.episodes.iter().enumerate() {
                    @if n > 0 { " " }
                    a href=(format!("{EPISODES_DIR}/{page}.html")) {
                        @if row.episodes.len() == 1 || !report.is_run { "steps" }
                        @else { (report.episodes.get(page).map_or(page.as_str(), |e| e.episode_id.as_str())) }
                    }
                }
                @if row.episodes.is_empty() { span.muted { "no trajectory" } }
            }
        }
    }
}

/// The first line of `text`, at most `max_chars` characters (an ellipsis marks a cut).
pub fn first_line(text: &str, max_chars: usize) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let more_lines = text.trim().lines().nth(1).is_some();
    let mut out: String = line.chars().take(max_chars).collect();
    if line.chars().count() > max_chars || (more_lines && !out.is_empty()) {
        if out.chars().count() >= max_chars {
            out.pop();
        }
        out.push('…');
    }
    out
}

/// `text` cut to at most `max_bytes` (on character boundaries): a head (3/4) and a tail (1/4), and the number of
/// bytes left out between them (0 when nothing was).
pub fn clip(text: &str, max_bytes: usize) -> (&str, &str, usize) {
    if text.len() <= max_bytes {
        return (text, "", 0);
    }
    let mut head_end = max_bytes / 4 * 3;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - (max_bytes - max_bytes / 4 * 3);
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    (
        &text[..head_end],
        &text[tail_start..],
        tail_start - head_end,
    )
}

fn clip_note(total: usize, omitted: usize) -> Markup {
    html! {
        span.clip { "… " (omitted) " bytes left out here (the whole text is " (total) " bytes) …" }
    }
}

/// A `<pre>` of `text`, clipped to `max_bytes`.
fn plain_pre(text: &str, max_bytes: usize) -> Markup {
    let (head, tail, omitted) = clip(text, max_bytes);
    html! {
        pre {
            (head)
            @if omitted > 0 { "\n" (clip_note(text.len(), omitted)) "\n" (tail) }
        }
    }
}

fn diff_lines(text: &str) -> Markup {
    html! {
        @for line in text.lines() {
            @let class = if line.starts_with("+++") || line.starts_with("---") || line.starts_with("diff ") {
                "file"
            } else if line.starts_with("@@") {
                "hunk"
            } else if line.starts_with('+') {
                "add"
            } else if line.starts_with('-') {
                "del"
            } else {
                "ctx"
            };
            span class=(class) { (line) "\n" }
        }
    }
}

/// A `<pre class="diff">` of `text`, each line coloured by its first character (`+`, `-`, `@@`), clipped.
fn diff_pre(text: &str, max_bytes: usize) -> Markup {
    let (head, tail, omitted) = clip(text, max_bytes);
    html! {
        pre.diff {
            (diff_lines(head))
            @if omitted > 0 { (clip_note(text.len(), omitted)) (diff_lines(tail)) }
        }
    }
}

/// Test outcomes as a diff: a passing test `+`, a failing one `-`, one hunk per list.
fn tests_diff(report: &InstanceReport) -> Option<String> {
    let status = report.tests_status.as_ref()?;
    let lists: [(&str, &TestOutcomes); 4] = [
        ("FAIL_TO_PASS", &status.fail_to_pass),
        ("PASS_TO_PASS", &status.pass_to_pass),
        ("FAIL_TO_FAIL", &status.fail_to_fail),
        ("PASS_TO_FAIL", &status.pass_to_fail),
    ];
    let mut out = String::new();
    for (name, outcomes) in lists {
        if outcomes.success.is_empty() && outcomes.failure.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "@@ {name}: {} passed, {} failed @@\n",
            outcomes.success.len(),
            outcomes.failure.len()
        ));
        for test in &outcomes.failure {
            out.push_str(&format!("- {test}\n"));
        }
        for test in &outcomes.success {
            out.push_str(&format!("+ {test}\n"));
        }
    }
    Some(out)
}

fn json_value_cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn step_section(step: &StepRecord, config: &ViewConfig) -> Markup {
    let tokens = &step.tokens;
    html! {
        section.step id=(format!("step-{}", step.step_idx)) data-step=(step.step_idx) {
            header {
                h3 { "step " (step.step_idx) }
                span { "tool " code { (step.tool.as_deref().unwrap_or("—")) } }
                @if let Some(code) = step.exit_code { span { "exit " strong { (code) } } }
                span { "ran " (format_ms(step.tool_ms)) }
                @if let Some(ms) = step.model_ms { span { "model call " (format_ms(ms)) } }
                @if tokens.prompt.is_some() || tokens.completion.is_some() {
                    span { "tokens " (tokens.prompt.unwrap_or(0)) " + " (tokens.completion.unwrap_or(0)) }
                }
                @if step.timed_out { span.no { "timed out" } }
                @if step.truncated { span.muted { "output truncated" } }
                @if step.restarted { span.no { "shell restarted" } }
                span.muted { (step.at) }
            }
            @if let Some(error) = &step.format_error { p.no { "format error: " (error) } }
            @if let Some(error) = &step.tool_error { p.no { "tool error: " (error) } }
            @if let Some(reasoning) = &step.reasoning {
                details { summary { "reasoning (" (reasoning.len()) " bytes)" } (plain_pre(reasoning, config.max_note_bytes)) }
            }
            @if let Some(content) = &step.content {
                details { summary { "assistant text (" (content.len()) " bytes)" } (plain_pre(content, config.max_note_bytes)) }
            }
            div.muted { "action (" (step.raw_action.len()) " bytes)" }
            (plain_pre(&step.raw_action, config.max_step_text_bytes))
            div.muted { "observation (" (step.observation.len()) " bytes)" }
            (plain_pre(&step.observation, config.max_step_text_bytes))
        }
    }
}

fn episode_page(report: &Report, episode: &EpisodeView, config: &ViewConfig) -> Markup {
    let trajectory = &episode.trajectory;
    let start = trajectory.start.as_ref();
    let end = trajectory.end.as_ref();
    let grading: Option<InstanceReport> = episode
        .result
        .as_ref()
        .and_then(|r| r.report.clone())
        .or_else(|| {
            end.and_then(|e| e.grading.clone())
                .and_then(|g| serde_json::from_value(g).ok())
        });
    let submission = end.and_then(|e| e.submission.as_deref()).or_else(|| {
        episode
            .result
            .as_ref()
            .and_then(|r| r.submission.as_deref())
    });
    let problem = start
        .and_then(|s| s.task.get("problem_statement"))
        .and_then(serde_json::Value::as_str);
    let body = html! {
        p { a href="../index.html" { "← " (report.title) } }
        h1 { "episode " code { (episode.episode_id) } }
        dl.meta #episode-meta {
            dt { "instance" } dd #instance { code { (episode.instance_id) } }
            dt { "status" } dd #status {
                (episode.status())
                @if let Some(detail) = end.and_then(|e| e.detail.as_ref()) { " — " (detail) }
            }
            @if let Some(result) = &episode.result {
                dt { "run result" } dd {
                    (format!("{:?}", result.status).to_lowercase())
                    @if let Some(error) = &result.error { " — " (result.error_kind.as_deref().unwrap_or("error")) ": " (error) }
                }
            }
            dt { "resolved" } dd #resolved { (resolved_cell(episode.resolved().or(grading.as_ref().map(|g| g.resolved)))) }
            dt { "steps" } dd { (trajectory.steps.len()) }
            dt { "tokens" } dd { (episode.tokens()) }
            @if let Some(end) = end { dt { "duration" } dd { (format_ms(end.duration_ms)) } }
            @if let Some(start) = start {
                dt { "image" } dd { code { (start.image) } " " span.muted { (start.image_id) } }
                dt { "tool format" } dd { (start.tool_format) }
                dt { "started" } dd { (start.started_at) }
            }
            @if let Some(end) = end { dt { "ended" } dd { (end.ended_at) } }
            dt { "trajectory" } dd { code { (episode.path.display()) } @if trajectory.torn_tail { " (torn last line dropped)" } }
        }
        @if let Some(rewards) = end.and_then(|e| e.rewards.as_ref()).and_then(|r| r.as_object()) {
            h2 { "Rewards" }
            table #rewards { tbody { @for (name, value) in rewards {
                tr { th { (name) } td.num { (json_value_cell(value)) } }
            } } }
        }
        @if let Some(report) = &grading {
            h2 { "Test results" }
            p {
                "patch applied: " (resolved_cell(Some(report.patch_successfully_applied)))
                " · resolved: " (resolved_cell(Some(report.resolved)))
            }
            @if let Some(tests) = tests_diff(report) { (diff_pre(&tests, config.max_test_output_bytes)) }
        }
        h2 { "Submission" }
        @match submission {
            Some(patch) if !patch.is_empty() => {
                div.muted { (patch.len()) " bytes" }
                (diff_pre(patch, config.max_patch_bytes))
            }
            _ => p.muted { "no patch submitted" },
        }
        @if let Some(answer) = end.and_then(|e| e.final_answer.as_ref()) {
            h2 { "Final answer" }
            (plain_pre(answer, config.max_note_bytes))
        }
        @if let Some(problem) = problem {
            details { summary { "Problem statement (" (problem.len()) " bytes)" } (plain_pre(problem, config.max_note_bytes)) }
        }
        h2 { "Steps (" (trajectory.steps.len()) ")" }
        @for step in &trajectory.steps { (step_section(step, config)) }
        @if let Some(output) = &episode.test_output {
            h2 { "Test output (" (output.len()) " bytes)" }
            (diff_pre(output, config.max_test_output_bytes))
        }
    };
    page(&format!("{} · {}", episode.episode_id, report.title), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_a_head_and_a_tail_on_character_boundaries() {
        assert_eq!(clip("short", 10), ("short", "", 0));
        let text = "é".repeat(100); // 200 bytes
        let (head, tail, omitted) = clip(&text, 41);
        assert_eq!(head.len() + tail.len() + omitted, 200);
        assert!(
            head.len() <= 30 && tail.len() <= 11,
            "{} {}",
            head.len(),
            tail.len()
        );
        assert_eq!(first_line("\n  first line\nsecond", 100), "  first line…");
        assert_eq!(first_line("abcdef", 4), "abc…");
        assert_eq!(first_line("abcd", 4), "abcd");
    }

    #[test]
    fn diff_lines_are_classed_by_their_first_character() {
        let html = diff_lines("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old <b>\n+new\n ctx").into_string();
        assert_eq!(
            html,
            "<span class=\"file\">--- a/x\n</span><span class=\"file\">+++ b/x\n</span>\
             <span class=\"hunk\">@@ -1 +1 @@\n</span><span class=\"del\">-old &lt;b&gt;\n</span>\
             <span class=\"add\">+new\n</span><span class=\"ctx\"> ctx\n</span>"
        );
    }
}
