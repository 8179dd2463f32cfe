//! Where tasks come from: a file path, an alias of the public SWE-bench datasets (`verified`, `lite`, `full`,
//! cached locally and downloaded from the Hugging Face hub when missing), or the embedded fixture tasks.

use std::path::{Path, PathBuf};

use swe_env_grading::dataset::{
    hub_parquet_file, load_dataset_file, load_jsonl_str, DatasetAlias, LoadedDataset,
};
use tracing::info;

/// The fixture tasks, embedded so `run-benchmark fixtures` needs no file (their images come from `images/`).
pub const FIXTURE_TASKS_JSONL: &str = include_str!("../../images/fixtures/tasks.jsonl");

/// Default hub endpoint; `HF_ENDPOINT` overrides it (mirrors, offline proxies).
const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// A dataset could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DatasetSourceError {
    /// Loading a local file failed.
    #[error("cannot load tasks from {path}: {detail}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The alias is not cached and the download failed.
    #[error(
        "dataset {alias} is not cached at {cache} and downloading {url} failed: {detail}. \
         Download it elsewhere (the HF parquet file) and pass its path instead, or set HF_ENDPOINT to a mirror"
    )]
    Download {
        /// The alias.
        alias: String,
        /// The expected cache path.
        cache: PathBuf,
        /// The URL tried.
        url: String,
        /// Why.
        detail: String,
    },
}

/// The cache root: `$SWE_ENV_CACHE`, else `$XDG_CACHE_HOME/swe-env`, else `~/.cache/swe-env`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWE_ENV_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("swe-env");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/swe-env")
}

/// Loads `source`: `fixtures`, an alias (`verified`, `lite`, `full`), or a path. The one way every command reads
/// its `--tasks` / dataset argument.
pub async fn load_source(source: &str) -> Result<LoadedDataset, DatasetSourceError> {
    if source == "fixtures" {
        return Ok(load_jsonl_str(FIXTURE_TASKS_JSONL));
    }
    load_path(&source_path(source).await?).await
}

/// The file behind `source` (for consumers that take paths, like the server's config): an alias is downloaded
/// into the cache when missing, `fixtures` is the embedded file written to `<cache>/fixtures/tasks.jsonl`.
pub async fn source_path(source: &str) -> Result<PathBuf, DatasetSourceError> {
    if source == "fixtures" {
        let path = cache_root().join("fixtures/tasks.jsonl");
        let current = tokio::fs::read_to_string(&path).await.ok();
        if current.as_deref() != Some(FIXTURE_TASKS_JSONL) {
            write_atomically(&path, FIXTURE_TASKS_JSONL.as_bytes())
                .await
                .map_err(|detail| DatasetSourceError::Load {
                    path: path.clone(),
                    detail: format!("cannot write the embedded fixture tasks: {detail}"),
                })?;
        }
        return Ok(path);
    }
    if let Some(alias) = DatasetAlias::from_name(source) {
        let file = hub_parquet_file(
            alias.hf_id(),
            alias.default_split(),
            &cache_root().join("datasets"),
        );
        if !file.cache_path.exists() {
            let endpoint =
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_HF_ENDPOINT.to_owned());
            let url = format!("{}{}", endpoint.trim_end_matches('/'), file.url_path);
            download(&url, &file.cache_path).await.map_err(|detail| {
                DatasetSourceError::Download {
                    alias: source.to_owned(),
                    cache: file.cache_path.clone(),
                    url: url.clone(),
                    detail,
                }
            })?;
        }
        return Ok(file.cache_path);
    }
    Ok(PathBuf::from(source))
}

/// Writes `bytes` to `dest` through a temporary file and a rename (concurrent readers see old or new, never half).
async fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| e.to_string())?;
    }
    let partial = dest.with_extension(format!("partial.{}", std::process::id()));
    tokio::fs::write(&partial, bytes)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(|e| e.to_string())
}

async fn load_path(path: &Path) -> Result<LoadedDataset, DatasetSourceError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || load_dataset_file(&owned))
        .await
        .map_err(|e| DatasetSourceError::Load {
            path: path.to_owned(),
            detail: e.to_string(),
        })?
        .map_err(|e| DatasetSourceError::Load {
            path: path.to_owned(),
            detail: with_sources(&e),
        })
}

/// An error with its chain of causes, `outer: inner: …`.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn download(url: &str, dest: &Path) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    info!(url, dest = %dest.display(), "downloading dataset");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    write_atomically(dest, &bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixtures_are_embedded_and_valid() {
        let loaded = load_source("fixtures").await.unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.instances.len() >= 5);
        assert!(loaded.instances.iter().all(|i| i.image.is_some()));
    }

    #[tokio::test]
    async fn fixtures_have_a_path_for_path_consumers() {
        let path = source_path("fixtures").await.unwrap();
        let from_path = load_dataset_file(&path).unwrap();
        let embedded = load_source("fixtures").await.unwrap();
        assert_eq!(from_path.instances.len(), embedded.instances.len());
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let error = load_source("/no/such/tasks.jsonl").await.unwrap_err();
        assert!(
            error.to_string().contains("/no/such/tasks.jsonl"),
            "{error}"
        );
        assert!(error.to_string().contains("No such file"), "{error}");
    }
}
