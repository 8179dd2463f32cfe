//! Where the Hugging Face copies of the SWE-bench datasets live: their ids, the parquet file path on the hub,
//! and where a downloaded copy is cached. The download itself belongs to the orchestrator.

use std::path::{Path, PathBuf};

/// The short names users type for the three public SWE-bench datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetAlias {
    /// `verified`: the 500 human-validated instances.
    Verified,
    /// `lite`: the 300-instance subset.
    Lite,
    /// `full`: the whole benchmark.
    Full,
}

impl DatasetAlias {
    /// Parses `verified`, `lite` or `full` (case-insensitive); anything else is not an alias.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "verified" | "swe-bench-verified" | "swe-bench_verified" => Some(Self::Verified),
            "lite" | "swe-bench-lite" | "swe-bench_lite" => Some(Self::Lite),
            "full" | "swe-bench" => Some(Self::Full),
            _ => None,
        }
    }

    /// The hub dataset id.
    pub fn hf_id(self) -> &'static str {
        match self {
            Self::Verified => "princeton-nlp/SWE-bench_Verified",
            Self::Lite => "princeton-nlp/SWE-bench_Lite",
            Self::Full => "princeton-nlp/SWE-bench",
        }
    }

    /// The split graded by default (`test`).
    pub fn default_split(self) -> &'static str {
        "test"
    }
}

/// One parquet file of a hub dataset: where it is on the hub and where our cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubParquetFile {
    /// Hub dataset id, `owner/name`.
    pub dataset_id: String,
    /// Split name (`test`, `dev`).
    pub split: String,
    /// Path to append to the hub's base URL, starting with `/datasets/`.
    pub url_path: String,
    /// Where the downloaded file is expected: `<cache_root>/<owner>/<name>/<split>.parquet`.
    pub cache_path: PathBuf,
}

/// Locates the single-shard parquet file of `split` in `dataset_id` (the layout the SWE-bench datasets use for
/// `test` and `dev`: `data/<split>-00000-of-00001.parquet` on the `main` revision).
pub fn hub_parquet_file(dataset_id: &str, split: &str, cache_root: &Path) -> HubParquetFile {
    let mut cache_path = cache_root.to_path_buf();
    for part in dataset_id
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
    {
        cache_path.push(part);
    }
    cache_path.push(format!("{split}.parquet"));
    HubParquetFile {
        dataset_id: dataset_id.to_string(),
        split: split.to_string(),
        url_path: format!(
            "/datasets/{dataset_id}/resolve/main/data/{split}-00000-of-00001.parquet"
        ),
        cache_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_hub_ids() {
        assert_eq!(
            DatasetAlias::from_name("Verified").map(DatasetAlias::hf_id),
            Some("princeton-nlp/SWE-bench_Verified")
        );
        assert_eq!(
            DatasetAlias::from_name("lite").map(DatasetAlias::hf_id),
            Some("princeton-nlp/SWE-bench_Lite")
        );
        assert_eq!(
            DatasetAlias::from_name("full").map(DatasetAlias::hf_id),
            Some("princeton-nlp/SWE-bench")
        );
        assert_eq!(DatasetAlias::from_name("tasks.jsonl"), None);
    }

    #[test]
    fn parquet_location_has_url_path_and_cache_path() {
        let f = hub_parquet_file(
            "princeton-nlp/SWE-bench_Verified",
            "test",
            Path::new("/cache"),
        );
        assert_eq!(f.url_path, "/datasets/princeton-nlp/SWE-bench_Verified/resolve/main/data/test-00000-of-00001.parquet");
        assert_eq!(
            f.cache_path,
            PathBuf::from("/cache/princeton-nlp/SWE-bench_Verified/test.parquet")
        );
        let evil = hub_parquet_file("../../etc", "test", Path::new("/cache"));
        assert_eq!(evil.cache_path, PathBuf::from("/cache/etc/test.parquet"));
    }
}
