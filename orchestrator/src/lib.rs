//! swe-env: sandboxes, episodes, trajectories, grading runs and the CLI's building blocks.

pub mod agent;
pub mod benchmark;
pub mod cli;
pub mod client;
pub mod config;
pub mod datasets;
pub mod episode;
pub mod fsio;
pub mod grade;
pub mod harvest;
pub mod mine;
pub mod pool;
pub mod scaling;
pub mod server;
pub mod task;
pub mod trace;
pub mod trajectory;
pub mod view;

/// The text of a panic payload (`panic!` with a message gives a `&str` or a `String`), for reporting a caught
/// panic: a benchmark instance's, a server step's, the binary's panic hook.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "a panic without a message"
    }
}
