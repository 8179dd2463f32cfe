//! SWE-bench grading semantics as pure logic (no Docker): datasets, test specs, eval scripts, log parsers,
//! reports and rewards. The orchestrator runs what this crate plans inside containers.

// Owned by the "specs" work: dataset rows and loading, per-repo test specs, test directives, eval scripts.
pub mod dataset;
pub mod diff;
pub mod directives;
pub mod eval_script;
pub mod patch_key;
pub mod specs;

pub use dataset::{load_dataset_file, DatasetAlias, Instance, LoadedDataset, RowError};
pub use eval_script::{make_test_spec, EvalScriptConfig, GradingNetwork, Semantics, TestSpec};
pub use specs::ParserFamily;

// Owned by the "parsing" work: log parsers, FAIL_TO_PASS/PASS_TO_PASS reports, similarity and rewards.
pub mod log_parsers;
pub mod report;
pub mod rewards;
pub mod similarity;
