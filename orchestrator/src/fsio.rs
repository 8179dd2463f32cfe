//! Files replaced whole: a temp file beside the target (`.{name}.tmp.{pid}`), fsynced, renamed over it, the
//! directory fsynced — so a reader (or a crash) sees the old file or the new one, never half of one. The one
//! definition behind run manifests, harvest headers, data cards and manifest.parquet.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temp file that replaces `path`: `.{file name}.tmp.{pid}` in the same directory (same filesystem, so the
/// rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Whether `name` is a temp file [`temp_path`] made for a file called `target` (by any process).
pub fn is_temp_of(name: &str, target: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(target))
        .and_then(|n| n.strip_prefix(".tmp."))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Makes the fully written temp `file` at `temp` the new `path`: fsync, rename, fsync of the directory.
pub fn replace_with(file: File, temp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    std::fs::rename(temp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (see the module documentation); on failure the temp file is removed and
/// `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        replace_with(file, &temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_its_temp_name_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["card.json"], "no temp file left");
        let temp = temp_path(&path);
        let temp_name = temp.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_of(temp_name, "card.json"));
        assert!(!is_temp_of(temp_name, "card.md"));
        assert!(!is_temp_of(".card.json.tmp.", "card.json"));
        assert!(!is_temp_of(".card.json.tmp.12x", "card.json"));
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomically(&dir.path().join("no/such/file"), b"x").is_err());
    }
}
