//! `swe-env show`: the index and one episode's steps as terminal tables (no colour, no escape code: the same
//! bytes on a terminal and in a pipe but for the frame), and as JSON.

use comfy_table::{presets, CellAlignment, Table};
use serde_json::{json, Value};

use super::html::{first_line, format_ms};
use super::load::{EpisodeView, Report, Summary};
use super::ViewError;

/// Cell width of a text column when the output is not a terminal.
pub const PIPED_CELL_CHARS: usize = 100;

/// Where the table goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStyle {
    /// The terminal's width in columns, or `None` when the output is not a terminal (a Markdown table with text
    /// cells cut at [`PIPED_CELL_CHARS`]).
    pub terminal_width: Option<u16>,
}

impl TableStyle {
    fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_style(match self.terminal_width {
            Some(_) => presets::UTF8_FULL_CONDENSED,
            None => presets::ASCII_MARKDOWN,
        });
        table
    }

    /// Characters for each of `n_text` text columns beside columns whose widest cells (header included) are
    /// `fixed_widths` characters: the terminal's width shared out, at least 12; [`PIPED_CELL_CHARS`] in a pipe.
    fn text_cell_chars(&self, fixed_widths: &[usize], n_text: usize) -> usize {
        match self.terminal_width {
            None => PIPED_CELL_CHARS,
            Some(width) => {
                // Each column takes its content plus 3 characters of padding and frame, and the frame one more.
                let n_columns = fixed_widths.len() + n_text;
                let used = fixed_widths.iter().sum::<usize>() + 3 * n_columns + 1;
                (usize::from(width).saturating_sub(used) / n_text.max(1)).max(12)
            }
        }
    }
}

/// The widest cell of each column of `rows` (headers included), in characters.
fn column_widths<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> [usize; N] {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

fn resolved_text(resolved: Option<bool>) -> &'static str {
    match resolved {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// `resolved 2/3 · unresolved 1 · errors 0 · not graded 0`.
pub fn summary_line(summary: &Summary) -> String {
    format!(
        "resolved {}/{} · unresolved {} · errors {} · not graded {}",
        summary.resolved, summary.total, summary.unresolved, summary.errors, summary.not_graded
    )
}

/// The index: one row per instance (or episode), then the summary line.
pub fn index_table(report: &Report, style: TableStyle) -> String {
    const HEADER: [&str; 6] = ["instance", "status", "resolved", "turns", "tokens", "time"];
    let fixed: Vec<[String; 6]> = report
        .rows
        .iter()
        .map(|row| {
            [
                row.instance_id.clone(),
                row.status.clone(),
                resolved_text(row.resolved).to_owned(),
                row.turns.to_string(),
                row.tokens.to_string(),
                format_ms(row.time_ms),
            ]
        })
        .collect();
    let error_chars = style.text_cell_chars(&column_widths(HEADER, &fixed), 1);
    let mut table = style.table();
    let mut header = HEADER.to_vec();
    header.push("error");
    table.set_header(header);
    for (cells, row) in fixed.into_iter().zip(&report.rows) {
        let mut cells = cells.to_vec();
        cells.push(
            row.error
                .as_deref()
                .map_or_else(String::new, |e| first_line(e, error_chars)),
        );
        table.add_row(cells);
    }
    for column in [3, 4, 5] {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    format!("{table}\n{}\n", summary_line(&report.summary))
}

/// The episode `key` names in `report`: an instance id (its main episode), an episode id or a page name.
pub fn find_episode<'a>(report: &'a Report, key: &str) -> Result<&'a EpisodeView, ViewError> {
    let input = report.inputs.first().cloned().unwrap_or_default();
    if let Some(row) = report.rows.iter().find(|r| r.instance_id == key) {
        return row
            .episodes
            .first()
            .and_then(|page| report.episodes.get(page))
            .ok_or_else(|| ViewError::NoTrajectory {
                input: input.clone(),
                instance: key.to_owned(),
            });
    }
    if let Some(episode) = report
        .episodes
        .values()
        .find(|e| e.episode_id == key || e.page == key)
    {
        return Ok(episode);
    }
    let mut known: Vec<&str> = report.rows.iter().map(|r| r.instance_id.as_str()).collect();
    known.dedup();
    let more = known.len().saturating_sub(10);
    let mut known = known.into_iter().take(10).collect::<Vec<_>>().join(", ");
    if more > 0 {
        known.push_str(&format!(" and {more} more"));
    }
    Err(ViewError::UnknownInstance {
        input,
        instance: key.to_owned(),
        known,
    })
}

/// One episode's steps: index, tool, exit code, tool time, and the first line of action and observation.
pub fn steps_table(episode: &EpisodeView, style: TableStyle) -> String {
    const HEADER: [&str; 4] = ["idx", "tool", "exit", "ms"];
    let steps = &episode.trajectory.steps;
    let fixed: Vec<[String; 4]> = steps
        .iter()
        .map(|step| {
            [
                step.step_idx.to_string(),
                step.tool.clone().unwrap_or_else(|| "-".into()),
                step.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                step.tool_ms.to_string(),
            ]
        })
        .collect();
    let text_chars = style.text_cell_chars(&column_widths(HEADER, &fixed), 2);
    let mut table = style.table();
    table.set_header(["idx", "tool", "exit", "ms", "action", "observation"]);
    for (cells, step) in fixed.into_iter().zip(steps) {
        let observation = match &step.format_error {
            Some(error) => format!("format error: {error}"),
            None => step.observation.clone(),
        };
        let mut cells = cells.to_vec();
        cells.push(first_line(&step.raw_action, text_chars));
        cells.push(first_line(&observation, text_chars));
        table.add_row(cells);
    }
    for column in [0, 2, 3] {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let end = match &episode.trajectory.end {
        Some(end) => format!(
            "{} · {} steps · {}{}",
            end.status.as_str(),
            end.n_steps,
            format_ms(end.duration_ms),
            match episode.resolved() {
                Some(true) => " · resolved",
                Some(false) => " · not resolved",
                None => "",
            }
        ),
        None => format!("unfinished · {} steps", episode.trajectory.steps.len()),
    };
    format!(
        "episode {} · instance {}\n{table}\n{end}\n",
        episode.episode_id, episode.instance_id
    )
}

/// The index as JSON: `{title, inputs, summary, rows}`.
pub fn index_json(report: &Report) -> Value {
    json!({
        "title": report.title,
        "inputs": report.inputs,
        "summary": report.summary,
        "rows": report.rows,
        "problems": report.problems,
    })
}

/// One episode's steps as JSON, texts whole.
pub fn steps_json(episode: &EpisodeView) -> Value {
    let steps: Vec<Value> = episode
        .trajectory
        .steps
        .iter()
        .map(|step| {
            json!({
                "step_idx": step.step_idx,
                "tool": step.tool,
                "exit_code": step.exit_code,
                "tool_ms": step.tool_ms,
                "model_ms": step.model_ms,
                "prompt_tokens": step.tokens.prompt,
                "completion_tokens": step.tokens.completion,
                "timed_out": step.timed_out,
                "truncated": step.truncated,
                "format_error": step.format_error,
                "tool_error": step.tool_error,
                "action": step.raw_action,
                "observation": step.observation,
            })
        })
        .collect();
    json!({
        "episode_id": episode.episode_id,
        "instance_id": episode.instance_id,
        "status": episode.status(),
        "resolved": episode.resolved(),
        "tokens": episode.tokens(),
        "duration_ms": episode.trajectory.end.as_ref().map(|e| e.duration_ms),
        "trajectory": episode.path,
        "steps": steps,
    })
}
