//! The tasks a server offers: the rows of its task sources, in order, indexed by id.

use std::collections::HashMap;

use swe_env_grading::dataset::Instance;
use tracing::warn;

use crate::datasets::{dataset_file_name, load_source, DatasetSourceError};

/// A task and the dataset file it came from.
#[derive(Debug, Clone)]
pub struct CatalogTask {
    /// The row.
    pub instance: Instance,
    /// File name (not path) of its dataset.
    pub dataset: String,
}

/// Loaded tasks.
#[derive(Debug, Default)]
pub struct TaskCatalog {
    tasks: Vec<CatalogTask>,
    by_id: HashMap<String, usize>,
}

impl TaskCatalog {
    /// Loads every source (`fixtures`, an alias, a path: see [`load_source`], the loader of every command); bad
    /// rows are logged and skipped, an id already loaded from an earlier source keeps its first row.
    pub async fn load(sources: &[String]) -> Result<Self, DatasetSourceError> {
        let mut catalog = Self::default();
        for source in sources {
            let loaded = load_source(source).await?;
            for error in &loaded.errors {
                warn!(source = %source, row = error.row, field = ?error.field, message = %error.message, "skipped a bad task row");
            }
            let dataset = dataset_file_name(source);
            for instance in loaded.instances {
                if catalog.by_id.contains_key(&instance.instance_id) {
                    warn!(source = %source, instance_id = %instance.instance_id, "duplicate task id; the first row is kept");
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
