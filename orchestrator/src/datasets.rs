//! Where tasks come from: a file path, an alias of the public SWE-bench datasets (`verified`, `lite`, `full`,
//! cached locally and downloaded from the Hugging Face hub when missing), or the embedded fixture tasks.

use std::path::{Path, PathBuf};

use swe_env_grading::dataset::{
    hub_parquet_file, load_dataset_file, load_jsonl_str, DatasetAlias, HubParquetFile,
    LoadedDataset,
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

/// The source name of the embedded fixture tasks.
pub const FIXTURES: &str = "fixtures";

/// File name of the embedded fixture tasks.
const FIXTURE_TASKS_FILE_NAME: &str = "tasks.jsonl";

/// Loads `source`: `fixtures`, an alias (`verified`, `lite`, `full`), or a path. The one way every command and the
/// server (`--tasks`, the server config's `tasks:`, dataset arguments) reads tasks, so a source that works in one
/// works in all.
pub async fn load_source(source: &str) -> Result<LoadedDataset, DatasetSourceError> {
    if source == FIXTURES {
        return Ok(load_jsonl_str(FIXTURE_TASKS_JSONL));
    }
    load_path(&file_for(source).await?).await
}

/// Where the file behind `source` is: the cache path of an alias (present or not yet downloaded), or the path
/// itself; `None` for the embedded fixtures, which have no file.
pub fn source_file(source: &str) -> Option<PathBuf> {
    if source == FIXTURES {
        return None;
    }
    Some(match DatasetAlias::from_name(source) {
        Some(alias) => alias_file(alias).cache_path,
        None => PathBuf::from(source),
    })
}

/// The hub file of an alias's default split, and where it is cached.
fn alias_file(alias: DatasetAlias) -> HubParquetFile {
    hub_parquet_file(
        alias.hf_id(),
        alias.default_split(),
        &cache_root().join("datasets"),
    )
}

/// The file name (not path) of the dataset behind `source`, as ListTasks reports it: `tasks.jsonl` for the
/// embedded fixtures (`images/fixtures/tasks.jsonl`), the cached hub file's name for an alias, else the path's.
pub fn dataset_file_name(source: &str) -> String {
    let path = source_file(source).unwrap_or_else(|| PathBuf::from(FIXTURE_TASKS_FILE_NAME));
    path.file_name()
        .map_or_else(|| source.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The file behind an alias (downloaded into the cache when missing) or a path.
async fn file_for(source: &str) -> Result<PathBuf, DatasetSourceError> {
    let Some(alias) = DatasetAlias::from_name(source) else {
        return Ok(PathBuf::from(source));
    };
    let file = alias_file(alias);
    if !file.cache_path.exists() {
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_HF_ENDPOINT.to_owned());
        let url = format!("{}{}", endpoint.trim_end_matches('/'), file.url_path);
        download(&url, &file.cache_path)
            .await
            .map_err(|detail| DatasetSourceError::Download {
                alias: source.to_owned(),
                cache: file.cache_path.clone(),
                url: url.clone(),
                detail,
            })?;
    }
    Ok(file.cache_path)
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

/// Largest dataset file downloaded: 4 GiB (SWE-bench's largest splits are tens of MB).
pub const MAX_DATASET_DOWNLOAD_BYTES: u64 = 4 << 30;

async fn download(url: &str, dest: &Path) -> Result<(), String> {
    download_at_most(url, dest, MAX_DATASET_DOWNLOAD_BYTES).await
}

/// Downloads `url` to `dest` (through a temporary file and a rename), streaming to disk so memory stays bounded
/// by one chunk; more than `max_bytes` is an error and leaves no file.
async fn download_at_most(url: &str, dest: &Path, max_bytes: u64) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    info!(url, dest = %dest.display(), "downloading dataset");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| e.to_string())?;
    }
    let partial = dest.with_extension(format!("partial.{}", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| e.to_string())?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(format!(
                    "the download is over {max_bytes} bytes, the dataset size limit; download the file yourself \
                     and pass its path"
                ));
            }
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one HTTP response of `len` bytes on a loopback port.
    async fn serve_bytes(len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&vec![b'x'; len]).await;
            }
        });
        format!("http://{addr}/data.jsonl")
    }

    #[tokio::test]
    async fn downloads_over_the_limit_fail_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/data.jsonl");
        let url = serve_bytes(3 << 20).await;
        let error = download_at_most(&url, &dest, 1 << 20).await.unwrap_err();
        assert_eq!(
            error,
            "the download is over 1048576 bytes, the dataset size limit; download the file yourself and pass its path"
        );
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            0,
            "no partial file left"
        );
        download_at_most(&url, &dest, 3 << 20).await.unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 3 << 20);
    }

    #[tokio::test]
    async fn fixtures_are_embedded_and_valid() {
        let loaded = load_source("fixtures").await.unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.instances.len() >= 5);
        assert!(loaded.instances.iter().all(|i| i.image.is_some()));
    }

    #[test]
    fn dataset_file_names_are_those_of_the_files_behind_the_sources() {
        assert_eq!(dataset_file_name("fixtures"), "tasks.jsonl");
        assert_eq!(dataset_file_name("verified"), "test.parquet");
        assert_eq!(dataset_file_name("/data/swe/rows.jsonl"), "rows.jsonl");
        assert_eq!(dataset_file_name("rows.parquet"), "rows.parquet");
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
