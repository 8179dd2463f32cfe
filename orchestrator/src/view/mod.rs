//! Reading runs and trajectories: the static HTML report of `swe-env view` and the terminal tables of `swe-env show`.
//!
//! [`load::load_report`] reads a run directory (`results.jsonl`, `manifest.json`, `trajectories/`, `logs/`) or
//! trajectory files through the readers of `benchmark` and `trajectory` (no parser of its own) into a [`Report`]:
//! one index row per instance (or per episode for trajectory files) and the episodes behind them. [`html`] renders
//! it as self-contained pages (inline CSS, no script, no external URL, every text escaped by the templates),
//! [`table`] as terminal tables and JSON, and [`serve`] serves the generated pages from memory.
//!
//! Display limits ([`ViewConfig`]): long texts are shown as a head and a tail with the size of the whole and of
//! what was left out; the files on disk are never changed.

pub mod html;
pub mod load;
pub mod serve;
pub mod table;

use std::path::PathBuf;

pub use load::{load_report, EpisodeView, IndexRow, Report, Summary};

/// How much of each text a page shows (the rest is counted and left out, the middle of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewConfig {
    /// Bytes of an action or an observation shown on an episode page (default 16 KiB).
    pub max_step_text_bytes: usize,
    /// Bytes of a submitted patch shown (default 256 KiB).
    pub max_patch_bytes: usize,
    /// Bytes of the grading's test output shown (default 256 KiB).
    pub max_test_output_bytes: usize,
    /// Bytes of a problem statement, reasoning or final answer shown (default 64 KiB).
    pub max_note_bytes: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            max_step_text_bytes: 16 * 1024,
            max_patch_bytes: 256 * 1024,
            max_test_output_bytes: 256 * 1024,
            max_note_bytes: 64 * 1024,
        }
    }
}

/// Reading the inputs of `view` / `show`, or writing the pages, failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// No input path was given.
    #[error("no input given: name a run directory (runs/RUN), trajectory .jsonl files, or a directory of them")]
    NoInput,
    /// An input is none of the accepted kinds.
    #[error(
        "{path}: not a run directory (no results.jsonl or manifest.json), a trajectory file (.jsonl) or a \
         directory holding trajectory files; give a run directory (runs/RUN), trajectory .jsonl files, or a \
         directory of them"
    )]
    NotAnInput {
        /// The input.
        path: PathBuf,
    },
    /// A run directory was given together with other inputs.
    #[error(
        "{path} is a run directory: give it alone (swe-env view RUN_DIR), not with other inputs"
    )]
    RunWithOthers {
        /// The run directory.
        path: PathBuf,
    },
    /// An input could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A trajectory file given on the command line does not read.
    #[error(transparent)]
    Trajectory(#[from] crate::trajectory::TrajectoryReadError),
    /// `show RUN_DIR INSTANCE` named an instance the report does not hold.
    #[error("{input}: no instance or episode {instance:?}; known: {known}")]
    UnknownInstance {
        /// The input as given.
        input: PathBuf,
        /// The instance asked for.
        instance: String,
        /// The instance ids it holds (the first few).
        known: String,
    },
    /// `show RUN_DIR INSTANCE`: the instance has a result but no readable trajectory.
    #[error("{instance}: no trajectory in {input} (the instance ran no episode, or its file is unreadable)")]
    NoTrajectory {
        /// The input as given.
        input: PathBuf,
        /// The instance.
        instance: String,
    },
    /// Writing the pages failed.
    #[error("cannot write the report to {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ViewError {
    /// The error is about the input the user gave (exit 2), not the machine (exit 3).
    pub fn is_input(&self) -> bool {
        match self {
            Self::Write { .. } => false,
            Self::Read { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::InvalidData
            ),
            Self::Trajectory(crate::trajectory::TrajectoryReadError::Io { source, .. }) => {
                source.kind() == std::io::ErrorKind::NotFound
            }
            _ => true,
        }
    }
}

/// Writes `pages` under `out_dir` (each file replaced whole, `crate::fsio`), and removes the episode pages an
/// earlier run of `view` left there that this report no longer has: the same input gives the same directory.
pub async fn write_site(pages: &html::Pages, out_dir: &std::path::Path) -> Result<(), ViewError> {
    let pages = pages.clone();
    let out_dir = out_dir.to_owned();
    let joined = tokio::task::spawn_blocking(move || write_site_blocking(&pages, &out_dir)).await;
    match joined {
        Ok(result) => result,
        Err(error) => Err(ViewError::Write {
            path: PathBuf::new(),
            source: std::io::Error::other(error),
        }),
    }
}

fn write_site_blocking(pages: &html::Pages, out_dir: &std::path::Path) -> Result<(), ViewError> {
    let write_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ViewError::Write { path, source }
    };
    let episodes_dir = out_dir.join(html::EPISODES_DIR);
    std::fs::create_dir_all(&episodes_dir).map_err(write_error(&episodes_dir))?;
    for (relative, text) in pages {
        let path = out_dir.join(relative);
        crate::fsio::write_atomically(&path, text.as_bytes()).map_err(write_error(&path))?;
    }
    let entries = std::fs::read_dir(&episodes_dir).map_err(write_error(&episodes_dir))?;
    for entry in entries {
        let entry = entry.map_err(write_error(&episodes_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{}/{name}", html::EPISODES_DIR);
        if name.ends_with(".html") && !pages.contains_key(&relative) {
            std::fs::remove_file(entry.path()).map_err(write_error(&entry.path()))?;
        }
    }
    Ok(())
}
