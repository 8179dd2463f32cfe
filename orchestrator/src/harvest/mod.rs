//! `swe-env harvest`: K graded rollouts per task for mid-training data, exactly once and resumable, written as
//! size-bounded zstd shards with a manifest (JSONL + parquet) and a data card.
//!
//! - [`config`]: `HarvestConfig` (YAML `--config` + flags), validation, per-sample temperatures and seeds, the
//!   config hash (which fields: see the module).
//! - [`runner`]: the plan (dataset rows × K minus committed and given-up), rollouts on the benchmark's worker loop
//!   and attempt path (`benchmark::Attempts`, `benchmark::run_workers`), budgets, commit / failure, the circuit
//!   breaker on infrastructure failures, Ctrl-C / SIGTERM.
//! - [`store`]: the output directory and its crash rules; [`parquet`] and [`card`]: the end-of-invocation files.

pub mod card;
pub mod config;
pub mod parquet;
pub mod runner;
pub mod store;
