//! `manifest.parquet`: the manifest rows as a parquet file (the low-level writer, no arrow). Strings are
//! `BYTE_ARRAY (UTF8)`, u64 `INT64`, u32 `INT32`, bools `BOOLEAN`, options `OPTIONAL`; `rewards` is its JSON text.
//! Written to a temp file and renamed, so a reader never sees half a file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::store::{ManifestRow, StoreError};

/// Rows per row group: also the most rows held in memory while writing (a parsed row takes ~2.7 KB, so ~27 MB).
pub const ROW_GROUP_ROWS: usize = 10_000;

/// The schema of `manifest.parquet` (field order = column order).
pub const SCHEMA: &str = "message manifest {
  required binary rollout_id (UTF8);
  required binary dataset_sha256 (UTF8);
  required binary config_hash (UTF8);
  required binary instance_id (UTF8);
  required binary repo (UTF8);
  required int32 sample_idx;
  optional int64 seed;
  optional double temperature;
  required binary model (UTF8);
  required binary episode_id (UTF8);
  required binary status (UTF8);
  required boolean resolved;
  optional double reward;
  optional binary rewards (UTF8);
  required int32 n_turns;
  required int32 n_format_errors;
  required int32 n_length_cut;
  required int64 prompt_tokens;
  required int64 completion_tokens;
  required int64 total_tokens;
  required int64 obs_bytes_total;
  required int64 obs_bytes_max;
  required int64 patch_bytes;
  optional binary patch_hash (UTF8);
  required binary trajectory_hash (UTF8);
  required int64 wall_ms;
  required int64 start_ms;
  required int64 model_ms;
  required int64 tool_ms;
  required int64 grade_ms;
  required int64 bytes;
  required binary shard (UTF8);
  required int64 offset;
  required int64 length;
  required binary created_at (UTF8);
}";

/// One column's values, in the schema's order.
enum Column {
    Str(fn(&ManifestRow) -> String),
    OptStr(fn(&ManifestRow) -> Option<String>),
    I32(fn(&ManifestRow) -> u32),
    I64(fn(&ManifestRow) -> u64),
    OptI64(fn(&ManifestRow) -> Option<u64>),
    OptF64(fn(&ManifestRow) -> Option<f64>),
    Bool(fn(&ManifestRow) -> bool),
}

fn columns() -> Vec<Column> {
    use Column::*;
    vec![
        Str(|r| r.rollout_id.clone()),
        Str(|r| r.dataset_sha256.clone()),
        Str(|r| r.config_hash.clone()),
        Str(|r| r.instance_id.clone()),
        Str(|r| r.repo.clone()),
        I32(|r| r.sample_idx),
        OptI64(|r| r.seed),
        OptF64(|r| r.temperature),
        Str(|r| r.model.clone()),
        Str(|r| r.episode_id.clone()),
        Str(|r| r.status.clone()),
        Bool(|r| r.resolved),
        OptF64(|r| r.reward),
        OptStr(|r| r.rewards.as_ref().map(|v| v.to_string())),
        I32(|r| r.n_turns),
        I32(|r| r.n_format_errors),
        I32(|r| r.n_length_cut),
        I64(|r| r.prompt_tokens),
        I64(|r| r.completion_tokens),
        I64(|r| r.total_tokens),
        I64(|r| r.obs_bytes_total),
        I64(|r| r.obs_bytes_max),
        I64(|r| r.patch_bytes),
        OptStr(|r| r.patch_hash.clone()),
        Str(|r| r.trajectory_hash.clone()),
        I64(|r| r.wall_ms),
        I64(|r| r.start_ms),
        I64(|r| r.model_ms),
        I64(|r| r.tool_ms),
        I64(|r| r.grade_ms),
        I64(|r| r.bytes),
        Str(|r| r.shard.clone()),
        I64(|r| r.offset),
        I64(|r| r.length),
        Str(|r| r.created_at.clone()),
    ]
}

fn int32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn int64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Definition levels and the present values of an optional column.
fn optional<T, U>(
    rows: &[ManifestRow],
    get: impl Fn(&ManifestRow) -> Option<T>,
    map: impl Fn(T) -> U,
) -> (Vec<U>, Vec<i16>) {
    let mut values = Vec::with_capacity(rows.len());
    let mut levels = Vec::with_capacity(rows.len());
    for row in rows {
        match get(row) {
            Some(value) => {
                values.push(map(value));
                levels.push(1);
            }
            None => levels.push(0),
        }
    }
    (values, levels)
}

/// Writes `rows` to `path` (temp file in the same directory, fsync, rename).
pub fn write_manifest_parquet(path: &Path, rows: &[ManifestRow]) -> Result<(), StoreError> {
    let mut sink = ParquetSink::create(path)?;
    for row in rows {
        sink.push(row.clone())?;
    }
    sink.finish()
}

/// `manifest.parquet` written row by row: at most one row group of rows ([`ROW_GROUP_ROWS`]) is held, so a
/// manifest of millions of rows is converted in bounded memory. Rows go to a temp file beside `path`, renamed over
/// it by [`finish`](ParquetSink::finish); dropped unfinished, the temp file is removed.
pub struct ParquetSink {
    path: PathBuf,
    temp: PathBuf,
    writer: Option<SerializedFileWriter<File>>,
    columns: Vec<Column>,
    buffer: Vec<ManifestRow>,
}

impl ParquetSink {
    /// Starts the temp file of `path`.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let temp = crate::fsio::temp_path(path);
        let writer = (|| {
            let schema = Arc::new(parse_message_type(SCHEMA).map_err(std::io::Error::other)?);
            let properties = Arc::new(
                WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build(),
            );
            let file = File::create(&temp)?;
            SerializedFileWriter::new(file, schema, properties).map_err(std::io::Error::other)
        })();
        let mut sink = Self {
            path: path.to_path_buf(),
            temp,
            writer: None,
            columns: columns(),
            buffer: Vec::new(),
        };
        sink.writer = Some(writer.map_err(|source| sink.error(source))?);
        Ok(sink)
    }

    /// Adds a row (a row group is written once [`ROW_GROUP_ROWS`] are buffered).
    pub fn push(&mut self, row: ManifestRow) -> Result<(), StoreError> {
        self.buffer.push(row);
        if self.buffer.len() >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer, fsyncs, renames over the target and fsyncs the directory.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.flush()?;
        let Some(writer) = self.writer.take() else {
            return Err(self.error(std::io::Error::other("the parquet writer is gone")));
        };
        let result = writer
            .into_inner()
            .map_err(std::io::Error::other)
            .and_then(|file| crate::fsio::replace_with(file, &self.temp, &self.path));
        result.map_err(|source| self.error(source))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = match self.writer.as_mut() {
            Some(writer) => write_group(writer, &self.columns, &self.buffer),
            None => Err(std::io::Error::other("the parquet writer is gone")),
        };
        self.buffer.clear();
        result.map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        // Unfinished (an error, or never finished): the temp file must not stay behind. After a rename it is gone.
        let _ = std::fs::remove_file(&self.temp);
    }
}

fn write_group(
    writer: &mut SerializedFileWriter<File>,
    columns: &[Column],
    chunk: &[ManifestRow],
) -> std::io::Result<()> {
    let mut group = writer.next_row_group().map_err(std::io::Error::other)?;
    for column in columns {
        let Some(mut out) = group.next_column().map_err(std::io::Error::other)? else {
            return Err(std::io::Error::other(
                "parquet schema has fewer columns than the writer",
            ));
        };
        let written = match column {
            Column::Str(get) => {
                let values: Vec<ByteArray> = chunk
                    .iter()
                    .map(|r| ByteArray::from(get(r).into_bytes()))
                    .collect();
                out.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)
            }
            Column::OptStr(get) => {
                let (values, levels) = optional(chunk, get, |s| ByteArray::from(s.into_bytes()));
                out.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&levels), None)
            }
            Column::I32(get) => {
                let values: Vec<i32> = chunk.iter().map(|r| int32(get(r))).collect();
                out.typed::<Int32Type>().write_batch(&values, None, None)
            }
            Column::I64(get) => {
                let values: Vec<i64> = chunk.iter().map(|r| int64(get(r))).collect();
                out.typed::<Int64Type>().write_batch(&values, None, None)
            }
            Column::OptI64(get) => {
                let (values, levels) = optional(chunk, get, int64);
                out.typed::<Int64Type>()
                    .write_batch(&values, Some(&levels), None)
            }
            Column::OptF64(get) => {
                let (values, levels) = optional(chunk, get, |v| v);
                out.typed::<DoubleType>()
                    .write_batch(&values, Some(&levels), None)
            }
            Column::Bool(get) => {
                let values: Vec<bool> = chunk.iter().map(get).collect();
                out.typed::<BoolType>().write_batch(&values, None, None)
            }
        };
        written.map_err(std::io::Error::other)?;
        out.close().map_err(std::io::Error::other)?;
    }
    if group
        .next_column()
        .map_err(std::io::Error::other)?
        .is_some()
    {
        return Err(std::io::Error::other(
            "parquet schema has more columns than the writer",
        ));
    }
    group.close().map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::store::tests::line;
    use crate::harvest::store::{summarize, FrameLocation};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    #[test]
    fn rows_read_back_with_the_parquet_reader() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows: Vec<ManifestRow> = (0..3)
            .map(|k| {
                summarize(
                    &line("inst", k, k + 1, 10),
                    FrameLocation {
                        shard: "shard-00000.jsonl.zst".into(),
                        offset: u64::from(k) * 100,
                        length: 100,
                        bytes: 1000 + u64::from(k),
                    },
                )
            })
            .collect();
        rows[1].temperature = None;
        rows[1].rewards = None;
        rows[1].reward = None;
        rows[2].seed = Some((1 << 53) - 1);
        let path = dir.path().join("manifest.parquet");
        write_manifest_parquet(&path, &rows).unwrap();
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3);
        let read: Vec<BTreeMapRow> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                row.unwrap()
                    .get_column_iter()
                    .map(|(name, field)| (name.clone(), field.clone()))
                    .collect()
            })
            .collect();
        assert_eq!(read[0].len(), 35);
        assert_eq!(
            read[0]["rollout_id"],
            Field::Str(rows[0].rollout_id.clone())
        );
        assert_eq!(read[2]["sample_idx"], Field::Int(2));
        assert_eq!(read[2]["n_turns"], Field::Int(3));
        assert_eq!(read[2]["seed"], Field::Long((1 << 53) - 1));
        assert_eq!(read[1]["temperature"], Field::Null);
        assert_eq!(read[0]["temperature"], Field::Double(0.2));
        assert_eq!(read[0]["resolved"], Field::Bool(true));
        assert_eq!(read[0]["reward"], Field::Double(1.0));
        assert_eq!(read[1]["reward"], Field::Null);
        assert_eq!(read[2]["offset"], Field::Long(200));
        assert_eq!(read[1]["bytes"], Field::Long(1001));
        let Field::Str(rewards) = &read[0]["rewards"] else {
            panic!("{:?}", read[0]["rewards"]);
        };
        let rewards: serde_json::Value = serde_json::from_str(rewards).unwrap();
        assert_eq!(rewards["execution"], 1.0);
        assert_eq!(read[1]["rewards"], Field::Null);

        // An empty manifest is a valid file with the schema and no rows.
        write_manifest_parquet(&path, &[]).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
        assert_eq!(
            reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .num_columns(),
            35
        );
    }

    type BTreeMapRow = std::collections::BTreeMap<String, Field>;
}
