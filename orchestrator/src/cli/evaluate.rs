//! `swe-env evaluate`: grade given predictions (or the gold / empty patches) like the reference harness, with
//! workers and resume, writing `logs/run_evaluation/<run_id>/<model>/<instance>/…` and the run summary.
//!
//! As in the harness, only dataset instances that have a prediction are graded (`--instance-ids` narrows further);
//! the others count as `incomplete` in report.json. No agent episode runs: `gold` grades each row's `patch`,
//! `empty` the empty patch.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use swe_env_grading::dataset::Instance;

use super::run_benchmark::{execute_instances, load_tasks, select, LogsLayout, RunArgs, RunScope};
use crate::benchmark::AgentSpec;
use crate::episode::EpisodeConfig;

/// How many unknown prediction ids a warning names before it only counts.
const NAMED_UNKNOWN_IDS: usize = 10;

/// Arguments of `swe-env evaluate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env evaluate --predictions gold --dataset fixtures\n  \
    swe-env evaluate --predictions preds.jsonl --dataset verified --workers 8 --run-id eval1"
)]
pub struct EvaluateArgs {
    /// A predictions file (JSONL or JSON list of {instance_id, model_name_or_path, model_patch}), or `gold` (each
    /// row's reference patch) / `empty` (the empty patch).
    #[arg(long)]
    predictions: String,
    /// `verified`, `lite`, `full`, `fixtures`, or a dataset path.
    #[arg(long, default_value = "verified")]
    dataset: String,
    #[command(flatten)]
    run: RunArgs,
}

/// A predictions file that cannot be used; names the file and the line (or list entry) at fault.
#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    /// The file could not be read.
    #[error("cannot read predictions {path}: {io} (pass a JSONL or JSON predictions file, or `gold` / `empty`)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        io: std::io::Error,
    },
    /// A row is not a JSON object (or the JSON list does not parse).
    #[error("predictions {path}, {at}: not a JSON object ({detail}); each row must be {{\"instance_id\": …, \"model_name_or_path\": …, \"model_patch\": …}}")]
    Json {
        /// The file.
        path: PathBuf,
        /// `line N` or `entry N`.
        at: String,
        /// The parser's message.
        detail: String,
    },
    /// A row has no string `instance_id`.
    #[error(
        "predictions {path}, {at}: no string \"instance_id\"; every prediction names its instance"
    )]
    NoInstanceId {
        /// The file.
        path: PathBuf,
        /// `line N` or `entry N`.
        at: String,
    },
    /// `model_patch` is neither a string nor null.
    #[error("predictions {path}, {at}: \"model_patch\" must be a string (a diff) or null")]
    BadPatch {
        /// The file.
        path: PathBuf,
        /// `line N` or `entry N`.
        at: String,
    },
    /// The same instance is predicted twice with different patches.
    #[error("predictions {path}, {at}: {instance_id} already has a different prediction at {first}; keep one per instance")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// Where the second one is.
        at: String,
        /// Where the first one is.
        first: String,
        /// The instance.
        instance_id: String,
    },
    /// Rows name different models: one run grades one model.
    #[error(
        "predictions {path}, {at}: model \"{other}\" differs from \"{first}\" named earlier; evaluate one model per \
         run (split the file by model_name_or_path)"
    )]
    MixedModels {
        /// The file.
        path: PathBuf,
        /// Where the other model is named.
        at: String,
        /// The first model named.
        first: String,
        /// The other one.
        other: String,
    },
}

/// Parsed predictions: `instance_id → patch` (`None` = a null patch) and the model name.
#[derive(Debug)]
struct Predictions {
    patches: HashMap<String, Option<String>>,
    model: String,
}

pub async fn run(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let given = match args.predictions.as_str() {
        "gold" | "empty" => None,
        path => Some(read_predictions(Path::new(path)).await?),
    };
    let all = load_tasks(&args.dataset).await?;
    let unknown: Vec<String> = match &given {
        Some(predictions) => {
            let known: BTreeSet<&str> = all.iter().map(|i| i.instance_id.as_str()).collect();
            let mut unknown: Vec<String> = predictions
                .patches
                .keys()
                .filter(|id| !known.contains(id.as_str()))
                .cloned()
                .collect();
            unknown.sort();
            unknown
        }
        None => Vec::new(),
    };
    let instances = select(all, &args.run.instance_ids, &args.dataset)?;
    let selected = instances.len();
    let predictions = match given {
        Some(predictions) => predictions,
        None => gold_or_empty(&args.predictions, &instances),
    };
    if !unknown.is_empty() {
        let named: Vec<&str> = unknown
            .iter()
            .take(NAMED_UNKNOWN_IDS)
            .map(String::as_str)
            .collect();
        let more = unknown.len().saturating_sub(NAMED_UNKNOWN_IDS);
        eprintln!(
            "warning: {} prediction(s) name instances not in {}, not graded: {}{}",
            unknown.len(),
            args.dataset,
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let (graded, ungraded): (Vec<Instance>, Vec<Instance>) = instances
        .into_iter()
        .partition(|i| predictions.patches.contains_key(&i.instance_id));
    if !args.run.instance_ids.is_empty() && !ungraded.is_empty() {
        eprintln!(
            "warning: {} of the selected instances have no prediction and are not graded",
            ungraded.len()
        );
    }
    if graded.is_empty() {
        return Err(super::error::usage(format!(
            "no prediction matches an instance of {} ({} selected, {} predictions): check the dataset and \
             --instance-ids",
            args.dataset,
            selected,
            predictions.patches.len()
        )));
    }
    let model = predictions.model.clone();
    let mut run = args.run;
    let run_id = run
        .run_id
        .clone()
        .unwrap_or_else(crate::benchmark::default_run_id);
    run.run_id = Some(run_id.clone());
    let agent = AgentSpec::Predictions {
        name: model.clone(),
        patches: Arc::new(predictions.patches),
    };
    let scope = RunScope {
        dataset: args.dataset.clone(),
        ungraded_ids: ungraded.into_iter().map(|i| i.instance_id).collect(),
        unknown_prediction_ids: unknown,
    };
    let code = execute_instances(
        graded,
        scope,
        agent,
        EpisodeConfig::default(),
        &run,
        LogsLayout::Reference,
        None,
    )
    .await?;
    // The reference harness also leaves the run summary as `<model with / → __>.<run_id>.json`.
    let summary = run.output_dir.join(&run_id).join("report.json");
    let reference_name = format!("{}.{run_id}.json", crate::benchmark::log_dir_name(&model));
    if tokio::fs::try_exists(&summary).await.unwrap_or(false) {
        tokio::fs::copy(&summary, run.output_dir.join(&reference_name))
            .await
            .with_context(|| format!("writing {reference_name}"))?;
    }
    Ok(code)
}

/// The harness's gold mode (each row's reference patch, byte for byte) or the empty patch, for every instance.
fn gold_or_empty(which: &str, instances: &[Instance]) -> Predictions {
    let patches = instances
        .iter()
        .map(|i| {
            let patch = if which == "gold" {
                i.patch.clone()
            } else {
                String::new()
            };
            (i.instance_id.clone(), Some(patch))
        })
        .collect();
    Predictions {
        patches,
        model: which.to_owned(),
    }
}

async fn read_predictions(path: &Path) -> Result<Predictions, PredictionsError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|io| PredictionsError::Read {
            path: path.to_owned(),
            io,
        })?;
    parse_predictions(&text, path)
}

/// Parses predictions (a JSON list, or JSONL); the model name is the first row's `model_name_or_path` (`None`
/// when absent, like the harness).
fn parse_predictions(text: &str, path: &Path) -> Result<Predictions, PredictionsError> {
    let json_error = |at: String, error: serde_json::Error| PredictionsError::Json {
        path: path.to_owned(),
        at,
        detail: error.to_string(),
    };
    // The harness also takes a JSON object `{instance_id: prediction}` (SWE-agent's form); a one-line JSONL file
    // is an object too, but one that names its instance itself.
    let dict = if text.trim_start().starts_with('{') {
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
            Ok(map) if !map.contains_key("instance_id") => Some(map),
            _ => None,
        }
    } else {
        None
    };
    let rows: Vec<(String, serde_json::Value)> = if let Some(map) = dict {
        map.into_iter()
            .map(|(key, row)| (format!("entry \"{key}\""), row))
            .collect()
    } else if text.trim_start().starts_with('[') {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| json_error(format!("line {}", e.line()), e))?;
        list.into_iter()
            .enumerate()
            .map(|(i, row)| (format!("entry {}", i + 1), row))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let at = format!("line {}", i + 1);
                serde_json::from_str(l)
                    .map(|row| (at.clone(), row))
                    .map_err(|e| json_error(at, e))
            })
            .collect::<Result<_, _>>()?
    };
    let mut patches = HashMap::new();
    let mut first_at: HashMap<String, String> = HashMap::new();
    let mut model = None;
    for (at, row) in rows {
        if !row.is_object() {
            return Err(PredictionsError::Json {
                path: path.to_owned(),
                at,
                detail: format!("found {}", kind_of(&row)),
            });
        }
        let Some(id) = row["instance_id"].as_str() else {
            return Err(PredictionsError::NoInstanceId {
                path: path.to_owned(),
                at,
            });
        };
        let patch = match &row["model_patch"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(patch) => Some(patch.clone()),
            _ => {
                return Err(PredictionsError::BadPatch {
                    path: path.to_owned(),
                    at,
                })
            }
        };
        match patches.get(id) {
            Some(earlier) if *earlier != patch => {
                return Err(PredictionsError::Duplicate {
                    path: path.to_owned(),
                    first: first_at.get(id).cloned().unwrap_or_default(),
                    at,
                    instance_id: id.to_owned(),
                })
            }
            Some(_) => {}
            None => {
                first_at.insert(id.to_owned(), at.clone());
                patches.insert(id.to_owned(), patch);
            }
        }
        let named = row["model_name_or_path"].as_str().unwrap_or("None");
        match &model {
            None => model = Some(named.to_owned()),
            Some(first) if first != named => {
                return Err(PredictionsError::MixedModels {
                    path: path.to_owned(),
                    at,
                    first: first.clone(),
                    other: named.to_owned(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(Predictions {
        patches,
        model: model.unwrap_or_else(|| "None".to_owned()),
    })
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Predictions, PredictionsError> {
        parse_predictions(text, Path::new("p.jsonl"))
    }

    #[test]
    fn errors_name_the_line() {
        let good = r#"{"instance_id": "a", "model_name_or_path": "m/x", "model_patch": "d"}"#;
        let error = parse(&format!("{good}\nnot json\n")).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        let error = parse(&format!("{good}\n\n{{\"model_patch\": \"d\"}}\n")).unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
        assert!(error.to_string().contains("instance_id"), "{error}");
        let other = r#"{"instance_id": "a", "model_patch": "other"}"#;
        let error = parse(&format!("{good}\n{other}\n")).unwrap_err();
        assert!(
            error.to_string().contains("line 2") && error.to_string().contains("line 1"),
            "{error}"
        );
        let error = parse("[1]").unwrap_err();
        assert!(error.to_string().contains("entry 1"), "{error}");
        let mixed = r#"{"instance_id": "b", "model_name_or_path": "m/y", "model_patch": "d"}"#;
        let error = parse(&format!("{good}\n{mixed}\n")).unwrap_err();
        assert!(
            matches!(error, PredictionsError::MixedModels { .. })
                && error.to_string().contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn the_harness_dict_form_is_read() {
        let text = r#"{"a": {"instance_id": "a", "model_name_or_path": "m", "model_patch": "d"},
                      "b": {"instance_id": "b", "model_name_or_path": "m", "model_patch": null}}"#;
        let predictions = parse(text).unwrap();
        assert_eq!(predictions.patches.len(), 2);
        assert_eq!(predictions.patches["a"].as_deref(), Some("d"));
        assert_eq!(predictions.model, "m");
        // A one-line JSONL file is an object too, but a row.
        let one = parse(r#"{"instance_id": "a", "model_name_or_path": "m", "model_patch": "d"}"#)
            .unwrap();
        assert_eq!(one.patches.len(), 1);
    }

    #[test]
    fn same_prediction_twice_is_one_and_null_stays_null() {
        let row = r#"{"instance_id": "a", "model_name_or_path": "m/x", "model_patch": null}"#;
        let predictions = parse(&format!("{row}\n{row}\n")).unwrap();
        assert_eq!(predictions.patches.len(), 1);
        assert_eq!(predictions.patches["a"], None);
        assert_eq!(predictions.model, "m/x");
    }
}
