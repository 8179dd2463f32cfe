//! Trajectories: one append-only JSONL file per episode, every record durable before its `append` returns (fsynced
//! per record by default, or group-committed, or left to the OS: [`Durability`]), so a crash loses at most the step
//! in flight. A reader that tolerates a torn last line (and refuses two episodes in one file), exporters to training
//! formats, and the export-time filters and dedup (`filter`).
//!
//! **Stability:** the record schema is a public contract ([`SCHEMA_VERSION`]); add fields, never repurpose them.

pub mod commit;
pub mod digest;
pub mod export;
pub mod filter;
pub mod reader;
pub mod record;
pub mod recover;
pub mod writer;

pub use commit::{CommitStats, Durability, GroupCommitter};
pub use reader::{read_trajectory, ReadTrajectory, RecordOrderError, TrajectoryReadError};
pub use record::{
    EpisodeEnd, EpisodeStart, EpisodeStatus, PromptMessage, Record, StepRecord, StepTokens,
    SCHEMA_VERSION,
};
pub use recover::{close_crashed, TrajectoryCloseError};
pub use writer::{TrajectoryWriteError, TrajectoryWriter};
