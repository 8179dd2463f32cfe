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
