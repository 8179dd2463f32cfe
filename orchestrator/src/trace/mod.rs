//! `swe-env trace`: Python execution traces in the CWM format, harvested from task images.
//!
//! A stdlib-only tracer ([`TRACER_PY`]) is piped into a task container at run time (the image is not changed); it
//! writes the events of repo code as JSON lines ([`event`]); [`split`] turns the event stream into one trace per
//! call of a repo function (entry scope = that call), with its source context ([`context`]); [`format`] holds the
//! structured frames and renders the exact CWM string; [`items`] derives output-prediction items; [`run`] drives
//! containers; [`store`] and [`harvest`] write a resumable, sharded dataset with a manifest and a data card.

pub mod context;
pub mod event;
pub mod format;
pub mod harvest;
pub mod items;
pub mod run;
pub mod split;
pub mod store;

/// The tracer, piped on stdin into `python - MODE …` inside a task container.
pub const TRACER_PY: &str = include_str!("tracer.py");
