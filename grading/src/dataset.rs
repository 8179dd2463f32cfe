//! SWE-bench dataset rows and their loaders (JSONL, JSON, Hugging Face parquet).
//!
//! Rows arrive in several shapes in the wild: `FAIL_TO_PASS` as a JSON-encoded string (as on the hub) or as an
//! array, `version` as a string or a number. Every shape is normalised into one [`Instance`]. A bad row never
//! stops a load: it becomes a [`RowError`] naming the row, the instance id when known and the field, and the good
//! rows still load (bad input is data, not `Err`).

mod hub;
mod parquet_rows;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use hub::{hub_parquet_file, DatasetAlias, HubParquetFile};

/// One task row in SWE-bench format, with the optional swe-env fields our own task files use.
///
/// Field names on the wire are the Hugging Face ones (`FAIL_TO_PASS`, `PASS_TO_PASS`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Instance {
    /// `owner/name` of the GitHub repository, which selects the per-repo test spec.
    pub repo: String,
    /// Unique id, e.g. `django__django-11099`.
    pub instance_id: String,
    /// Commit the task starts from; test files are reset to it at grading time.
    pub base_commit: String,
    /// The gold patch (empty when the source has none).
    #[serde(default)]
    pub patch: String,
    /// The patch adding the tests that decide the task.
    pub test_patch: String,
    /// The issue text shown to a model.
    #[serde(default)]
    pub problem_statement: String,
    /// Discussion from the issue, often empty.
    #[serde(default)]
    pub hints_text: String,
    /// Creation time of the pull request, as given by the source.
    #[serde(default)]
    pub created_at: String,
    /// Install version key into the per-repo specs (`"3.0"`, `"2022.03"`, ...); empty when absent.
    #[serde(default)]
    pub version: String,
    /// Commit whose dependency files built the environment.
    #[serde(default)]
    pub environment_setup_commit: String,
    /// Tests that must go from failing to passing.
    #[serde(rename = "FAIL_TO_PASS", default)]
    pub fail_to_pass: Vec<String>,
    /// Tests that must keep passing.
    #[serde(rename = "PASS_TO_PASS", default)]
    pub pass_to_pass: Vec<String>,
    /// swe-env: image name overriding the SWE-bench naming convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// swe-env: shell line(s) activating the task's environment, overriding conda's `testbed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate: Option<String>,
    /// swe-env: test command for tasks outside the SWE-bench repos (directives are appended to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_cmd: Option<String>,
    /// swe-env: log parser family name (`pytest`, `django`, ...) for tasks outside the SWE-bench repos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_parser: Option<String>,
    /// Eval script shipped with the row (swebench 5 datasets carry one); used only by the v5-style option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_script: Option<String>,
    /// Any other columns (e.g. `difficulty`), kept so a row round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Why one row could not become an [`Instance`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based row number in the file (the line number for JSONL).
    pub row: usize,
    /// The row's `instance_id`, when it could be read.
    pub instance_id: Option<String>,
    /// The offending field, when the problem is one field.
    pub field: Option<String>,
    /// What is wrong, lowercase.
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row)?;
        if let Some(id) = &self.instance_id {
            write!(f, " ({id})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The result of loading a dataset: the good rows, and one error per bad row.
#[derive(Debug, Clone, Default)]
pub struct LoadedDataset {
    /// Rows that parsed, in file order.
    pub instances: Vec<Instance>,
    /// Rows that did not, in file order.
    pub errors: Vec<RowError>,
    /// Row numbers of every parsed row, by instance id (to find duplicates).
    rows_by_id: BTreeMap<String, Vec<usize>>,
}

impl LoadedDataset {
    /// Looks up an instance by id (linear scan; datasets are a few thousand rows).
    pub fn get(&self, instance_id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.instance_id == instance_id)
    }

    /// Instance ids that more than one parsed row carries, sorted by id, with their row numbers. Running either
    /// copy would be a guess, so [`load_dataset_file`] rejects such a file; callers of the `*_str` loaders check
    /// this themselves.
    pub fn duplicates(&self) -> Vec<DuplicateId> {
        self.rows_by_id
            .iter()
            .filter(|(_, rows)| rows.len() > 1)
            .map(|(id, rows)| DuplicateId {
                instance_id: id.clone(),
                rows: rows.clone(),
            })
            .collect()
    }
}

/// An instance id carried by several rows of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateId {
    /// The repeated id.
    pub instance_id: String,
    /// The 1-based row numbers carrying it, ascending.
    pub rows: Vec<usize>,
}

impl fmt::Display for DuplicateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<String> = self.rows.iter().map(usize::to_string).collect();
        write!(f, "{} (rows {})", self.instance_id, rows.join(", "))
    }
}

fn list_duplicates(duplicates: &[DuplicateId]) -> String {
    let items: Vec<String> = duplicates.iter().map(DuplicateId::to_string).collect();
    items.join("; ")
}

/// A whole-file failure: the file could not be read or has no recognisable row structure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read dataset {path}")]
    Io {
        /// The dataset file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document that does not parse at all.
    #[error("dataset {path} is not valid json")]
    Json {
        /// The dataset file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// JSON that parses but is neither a list of rows nor a dict of rows.
    #[error("dataset {path} is json but not a list of rows, a dict keyed by id, or {{\"rows\"|\"data\": [...]}}")]
    JsonShape {
        /// The dataset file.
        path: PathBuf,
    },
    /// A parquet file the reader rejects.
    #[error("cannot read parquet dataset {path}: {message}")]
    Parquet {
        /// The dataset file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// Several rows carry the same instance id.
    #[error(
        "dataset {path} has duplicate instance ids: {}; every instance_id must be unique: remove or rename the \
         extra rows",
        list_duplicates(duplicates)
    )]
    DuplicateIds {
        /// The dataset file.
        path: PathBuf,
        /// Each repeated id with its rows.
        duplicates: Vec<DuplicateId>,
    },
    /// The extension is not one of `.jsonl`, `.json`, `.parquet`.
    #[error("dataset {path} has an unknown format (expected .jsonl, .json or .parquet)")]
    UnknownFormat {
        /// The dataset file.
        path: PathBuf,
    },
}

/// Loads a dataset file, choosing the format by extension (`.jsonl`/`.ndjson`, `.json`, `.parquet`). A file in
/// which two rows carry the same instance id is rejected ([`DatasetError::DuplicateIds`]).
pub fn load_dataset_file(path: &Path) -> Result<LoadedDataset, DatasetError> {
    let loaded = load_any_format(path)?;
    let duplicates = loaded.duplicates();
    if duplicates.is_empty() {
        Ok(loaded)
    } else {
        Err(DatasetError::DuplicateIds {
            path: path.to_path_buf(),
            duplicates,
        })
    }
}

fn load_any_format(path: &Path) -> Result<LoadedDataset, DatasetError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(load_jsonl_str(&read_text(path)?)),
        "json" => load_json_str(&read_text(path)?).map_err(|shape| match shape {
            JsonLoadError::Syntax(source) => DatasetError::Json {
                path: path.to_path_buf(),
                source,
            },
            JsonLoadError::Shape => DatasetError::JsonShape {
                path: path.to_path_buf(),
            },
        }),
        "parquet" => parquet_rows::load_parquet_file(path),
        _ => Err(DatasetError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

fn read_text(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads JSON Lines text: one row object per non-blank line; row numbers are line numbers.
pub fn load_jsonl_str(text: &str) -> LoadedDataset {
    let mut loaded = LoadedDataset::default();
    for (idx, line) in text.lines().enumerate() {
        let row = idx + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(value) => loaded.push_value(row, value),
            Err(err) => loaded.errors.push(RowError {
                row,
                instance_id: None,
                field: None,
                message: format!("not valid json: {err}"),
            }),
        }
    }
    loaded
}

/// Why a JSON document has no rows at all.
#[derive(Debug)]
pub enum JsonLoadError {
    /// The text is not JSON.
    Syntax(serde_json::Error),
    /// The JSON is not one of the accepted row containers.
    Shape,
}

/// Loads a JSON document: a list of rows, a dict keyed by instance id, or `{"rows"|"data": [...]}`
/// (rows of the hub's datasets-server form `{"row_idx": n, "row": {...}}` are unwrapped).
pub fn load_json_str(text: &str) -> Result<LoadedDataset, JsonLoadError> {
    let doc: Value = serde_json::from_str(text).map_err(JsonLoadError::Syntax)?;
    let mut loaded = LoadedDataset::default();
    match doc {
        Value::Array(rows) => loaded.push_rows(rows),
        Value::Object(mut map) => {
            let list_key = ["rows", "data"]
                .into_iter()
                .find(|k| matches!(map.get(*k), Some(Value::Array(_))));
            if let Some(key) = list_key {
                if let Some(Value::Array(rows)) = map.remove(key) {
                    loaded.push_rows(rows);
                }
            } else if !map.is_empty() && map.values().all(Value::is_object) {
                for (idx, (key, value)) in map.into_iter().enumerate() {
                    let value = match value {
                        Value::Object(mut obj) => {
                            obj.entry("instance_id").or_insert(Value::String(key));
                            Value::Object(obj)
                        }
                        other => other,
                    };
                    loaded.push_value(idx + 1, value);
                }
            } else {
                return Err(JsonLoadError::Shape);
            }
        }
        _ => return Err(JsonLoadError::Shape),
    }
    Ok(loaded)
}

impl LoadedDataset {
    fn push_rows(&mut self, rows: Vec<Value>) {
        for (idx, value) in rows.into_iter().enumerate() {
            let value = unwrap_server_row(value);
            self.push_value(idx + 1, value);
        }
    }

    fn push_value(&mut self, row: usize, value: Value) {
        match instance_from_value(value) {
            Ok(instance) => {
                self.rows_by_id
                    .entry(instance.instance_id.clone())
                    .or_default()
                    .push(row);
                self.instances.push(instance);
            }
            Err(err) => self.errors.push(err.at_row(row)),
        }
    }
}

/// Unwraps `{"row_idx": n, "row": {...}}` (the hub's datasets-server row form).
fn unwrap_server_row(value: Value) -> Value {
    match value {
        Value::Object(mut obj)
            if obj.contains_key("row_idx") && obj.get("row").is_some_and(Value::is_object) =>
        {
            obj.remove("row").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// A row-level problem before its row number is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The row's `instance_id`, when readable.
    pub instance_id: Option<String>,
    /// The offending field, if any.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn at_row(self, row: usize) -> RowError {
        RowError {
            row,
            instance_id: self.instance_id,
            field: self.field,
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.instance_id {
            write!(f, "{id}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for FieldError {}

impl TryFrom<Value> for Instance {
    type Error = FieldError;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        instance_from_value(value)
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "repo",
    "instance_id",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "environment_setup_commit",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "image",
    "activate",
    "test_cmd",
    "log_parser",
    "eval_script",
];

/// Converts one row object into an [`Instance`], naming the first bad field.
pub fn instance_from_value(value: Value) -> Result<Instance, FieldError> {
    let Value::Object(mut obj) = value else {
        return Err(FieldError {
            instance_id: None,
            field: None,
            message: "row is not a json object".to_string(),
        });
    };
    let instance_id = match obj.get("instance_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let fail = |field: &str, message: String| FieldError {
        instance_id: instance_id.clone(),
        field: Some(field.to_string()),
        message,
    };
    let required = |obj: &Map<String, Value>, field: &str| -> Result<String, FieldError> {
        match optional_string(obj, field).map_err(|m| fail(field, m))? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(fail(field, "missing or empty".to_string())),
        }
    };
    let text = |obj: &Map<String, Value>, field: &str| -> Result<String, FieldError> {
        Ok(optional_string(obj, field)
            .map_err(|m| fail(field, m))?
            .unwrap_or_default())
    };
    let opt = |obj: &Map<String, Value>, field: &str| -> Result<Option<String>, FieldError> {
        optional_string(obj, field).map_err(|m| fail(field, m))
    };

    let instance = Instance {
        repo: required(&obj, "repo")?,
        instance_id: required(&obj, "instance_id")?,
        base_commit: required(&obj, "base_commit")?,
        patch: text(&obj, "patch")?,
        test_patch: required(&obj, "test_patch")?,
        problem_statement: text(&obj, "problem_statement")?,
        hints_text: text(&obj, "hints_text")?,
        created_at: text(&obj, "created_at")?,
        version: version_string(obj.get("version")).map_err(|m| fail("version", m))?,
        environment_setup_commit: text(&obj, "environment_setup_commit")?,
        fail_to_pass: test_list(obj.get("FAIL_TO_PASS")).map_err(|m| fail("FAIL_TO_PASS", m))?,
        pass_to_pass: test_list(obj.get("PASS_TO_PASS")).map_err(|m| fail("PASS_TO_PASS", m))?,
        image: opt(&obj, "image")?,
        activate: opt(&obj, "activate")?,
        test_cmd: opt(&obj, "test_cmd")?,
        log_parser: opt(&obj, "log_parser")?,
        eval_script: opt(&obj, "eval_script")?,
        extra: BTreeMap::new(),
    };
    for key in KNOWN_FIELDS {
        obj.remove(*key);
    }
    Ok(Instance {
        extra: obj.into_iter().collect(),
        ..instance
    })
}

/// A string field; `null` counts as absent.
fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("expected a string, found {}", json_kind(other))),
    }
}

/// `version` is a string on the hub but a number in some re-exports (`3.0`); numbers keep their JSON spelling.
fn version_string(value: Option<&Value>) -> Result<String, String> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!(
            "expected a string or number, found {}",
            json_kind(other)
        )),
    }
}

/// `FAIL_TO_PASS`/`PASS_TO_PASS`: a JSON-encoded list of strings (hub form) or a list; absent means empty.
fn test_list(value: Option<&Value>) -> Result<Vec<String>, String> {
    let decoded;
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => {
            decoded = serde_json::from_str::<Value>(s)
                .map_err(|e| format!("string is not a json-encoded list: {e}"))?;
            &decoded
        }
        Some(v) => v,
    };
    let Value::Array(items) = list else {
        return Err(format!(
            "expected a list of test names, found {}",
            json_kind(list)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(idx, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("item {idx} is {}, not a string", json_kind(other))),
        })
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> Value {
        json!({
            "repo": "psf/requests", "instance_id": "psf__requests-1", "base_commit": "abc",
            "patch": "", "test_patch": "diff --git a/t.py b/t.py\n", "version": "2.0",
            "FAIL_TO_PASS": "[\"a\", \"b\"]", "PASS_TO_PASS": ["c"], "difficulty": "easy"
        })
    }

    #[test]
    fn parses_encoded_and_plain_lists_and_keeps_extra_columns() {
        let inst = instance_from_value(row()).unwrap();
        assert_eq!(inst.fail_to_pass, vec!["a", "b"]);
        assert_eq!(inst.pass_to_pass, vec!["c"]);
        assert_eq!(inst.extra.get("difficulty"), Some(&json!("easy")));
        assert_eq!(inst.image, None);
    }

    #[test]
    fn numeric_version_keeps_its_spelling() {
        let mut v = row();
        v["version"] = json!(3.0);
        assert_eq!(instance_from_value(v).unwrap().version, "3.0");
        let mut v = row();
        v["version"] = json!(0.12);
        assert_eq!(instance_from_value(v).unwrap().version, "0.12");
    }

    #[test]
    fn bad_field_is_named_with_the_instance_id() {
        let mut v = row();
        v["FAIL_TO_PASS"] = json!("not json");
        let err = instance_from_value(v).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("FAIL_TO_PASS"));
        assert_eq!(err.instance_id.as_deref(), Some("psf__requests-1"));
        let mut v = row();
        v.as_object_mut().unwrap().remove("base_commit");
        let err = instance_from_value(v).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("base_commit"));
    }

    #[test]
    fn jsonl_keeps_good_rows_and_reports_bad_ones_by_line() {
        let mut bad = row();
        bad["version"] = json!(["x"]);
        let text = format!("{}\n\n{}\n{{not json\n", row(), bad);
        let loaded = load_jsonl_str(&text);
        assert_eq!(loaded.instances.len(), 1);
        assert_eq!(loaded.errors.len(), 2);
        assert_eq!(loaded.errors[0].row, 3);
        assert_eq!(loaded.errors[0].field.as_deref(), Some("version"));
        assert_eq!(
            loaded.errors[0].to_string(),
            "row 3 (psf__requests-1): field `version`: expected a string or number, found a list"
        );
        assert_eq!(loaded.errors[1].row, 4);
    }

    #[test]
    fn json_accepts_list_dict_and_rows_wrappers() {
        let list = json!([row()]).to_string();
        assert_eq!(load_json_str(&list).unwrap().instances.len(), 1);
        let mut r = row();
        r.as_object_mut().unwrap().remove("instance_id");
        let dict = json!({"psf__requests-9": r}).to_string();
        let loaded = load_json_str(&dict).unwrap();
        assert_eq!(loaded.instances[0].instance_id, "psf__requests-9");
        let rows = json!({"rows": [{"row_idx": 0, "row": row()}]}).to_string();
        assert_eq!(load_json_str(&rows).unwrap().instances.len(), 1);
        let data = json!({"data": [row()]}).to_string();
        assert_eq!(load_json_str(&data).unwrap().instances.len(), 1);
        assert!(matches!(load_json_str("3"), Err(JsonLoadError::Shape)));
    }

    #[test]
    fn duplicate_ids_are_found_with_their_rows_and_reject_the_file() {
        let mut other = row();
        other["instance_id"] = json!("psf__requests-2");
        let text = format!("{}\n{}\n\n{}\n{}\n", row(), other, row(), other);
        let loaded = load_jsonl_str(&text);
        assert_eq!(
            loaded.duplicates(),
            vec![
                DuplicateId {
                    instance_id: "psf__requests-1".into(),
                    rows: vec![1, 4]
                },
                DuplicateId {
                    instance_id: "psf__requests-2".into(),
                    rows: vec![2, 5]
                },
            ]
        );
        let path = std::env::temp_dir().join(format!("swe-env-dup-{}.jsonl", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let err = load_dataset_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, DatasetError::DuplicateIds { .. }));
        let message = err.to_string();
        assert!(
            message.contains("psf__requests-1 (rows 1, 4); psf__requests-2 (rows 2, 5)"),
            "{message}"
        );
        // A JSON list counts rows from 1 too; distinct ids load.
        let list = json!([row(), other, row()]).to_string();
        let dups = load_json_str(&list).unwrap().duplicates();
        assert_eq!(dups[0].rows, vec![1, 3]);
        assert!(load_jsonl_str(&format!("{}\n", row()))
            .duplicates()
            .is_empty());
    }

    #[test]
    fn serde_round_trip_uses_hub_field_names() {
        let inst = instance_from_value(row()).unwrap();
        let text = serde_json::to_string(&inst).unwrap();
        assert!(text.contains("\"FAIL_TO_PASS\":[\"a\",\"b\"]"));
        let back: Instance = serde_json::from_str(&text).unwrap();
        assert_eq!(back, inst);
    }
}
