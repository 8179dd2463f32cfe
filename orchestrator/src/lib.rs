//! swe-env: sandboxes, episodes, trajectories, grading runs and the CLI's building blocks.

pub mod agent;
pub mod benchmark;
pub mod cli;
pub mod client;
pub mod datasets;
pub mod episode;
pub mod grade;
pub mod server;
pub mod task;
pub mod trajectory;
