//! The tasks a server offers: the rows of its dataset files, in file order, indexed by id.

use std::collections::HashMap;
use std::path::PathBuf;

use swe_env_grading::dataset::{load_dataset_file, DatasetError, Instance};
use tracing::warn;

/// A task and the dataset file it came from.
#[derive(Debug, Clone)]
pub struct CatalogTask {
    /// The row.
    pub instance: Instance,
    /// File name of its dataset.
    pub dataset: String,
}

/// Loaded tasks.
#[derive(Debug, Default)]
pub struct TaskCatalog {
    tasks: Vec<CatalogTask>,
    by_id: HashMap<String, usize>,
}

impl TaskCatalog {
    /// Loads every file; bad rows are logged and skipped, a duplicate id keeps its first row.
    pub fn load(files: &[PathBuf]) -> Result<Self, DatasetError> {
        let mut catalog = Self::default();
        for path in files {
            let loaded = load_dataset_file(path)?;
            for error in &loaded.errors {
                warn!(file = %path.display(), row = error.row, field = ?error.field, message = %error.message, "skipped a bad task row");
            }
            let dataset = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for instance in loaded.instances {
                if catalog.by_id.contains_key(&instance.instance_id) {
                    warn!(file = %path.display(), instance_id = %instance.instance_id, "duplicate task id; the first row is kept");
                    continue;
                }
                catalog
                    .by_id
                    .insert(instance.instance_id.clone(), catalog.tasks.len());
                catalog.tasks.push(CatalogTask {
                    instance,
                    dataset: dataset.clone(),
                });
            }
        }
        Ok(catalog)
    }

    /// The task with this id.
    pub fn get(&self, instance_id: &str) -> Option<&CatalogTask> {
        self.by_id.get(instance_id).and_then(|&i| self.tasks.get(i))
    }

    /// All tasks, in load order.
    pub fn all(&self) -> &[CatalogTask] {
        &self.tasks
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// No tasks loaded.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
