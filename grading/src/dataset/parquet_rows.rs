//! Reads a parquet dataset (as pyarrow / the hub write it) through the `parquet` crate's row API and turns each
//! record into the same JSON row shape the JSON loaders use, so one conversion validates every format.

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};

use super::{DatasetError, LoadedDataset, RowError};

/// Loads every row of a parquet file; a row the reader cannot decode becomes a [`RowError`].
pub(super) fn load_parquet_file(path: &Path) -> Result<LoadedDataset, DatasetError> {
    let parquet_error = |err: parquet::errors::ParquetError| DatasetError::Parquet {
        path: path.to_path_buf(),
        message: err.to_string(),
    };
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let rows = reader.get_row_iter(None).map_err(parquet_error)?;
    let mut loaded = LoadedDataset::default();
    for (idx, row) in rows.enumerate() {
        match row {
            Ok(row) => loaded.push_value(idx + 1, row_to_json(&row)),
            Err(err) => loaded.errors.push(RowError {
                row: idx + 1,
                instance_id: None,
                field: None,
                message: format!("parquet record cannot be decoded: {err}"),
            }),
        }
    }
    Ok(loaded)
}

fn row_to_json(row: &Row) -> Value {
    let map: Map<String, Value> = row
        .get_column_iter()
        .map(|(name, field)| (name.clone(), field_to_json(field)))
        .collect();
    Value::Object(map)
}

/// Converts one parquet value; strings stay strings whether written as Utf8 or LargeUtf8 (both are annotated
/// BYTE_ARRAY in the file), binary that is valid UTF-8 is read as text.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => float_json(f64::from(*x)),
        Field::Double(x) => float_json(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(bytes) => match std::str::from_utf8(bytes.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        },
        Field::Group(row) => row_to_json(row),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| (field_key(k), field_to_json(v)))
                .collect(),
        ),
        // Dates, times, decimals and half floats do not occur in task rows; keep their display form.
        other => Value::String(other.to_string()),
    }
}

fn float_json(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn field_key(field: &Field) -> String {
    match field {
        Field::Str(s) => s.clone(),
        other => other.to_string(),
    }
}
