//! End-to-end tests against the real Docker engine. They need dockerd and the images from `images/build.sh`;
//! without them they fail loudly (never skip).

#![allow(clippy::unwrap_used)] // Tests panic on unexpected failures by design.

mod apply_reference;
mod bench_programs;
mod benchmark;
mod boundaries;
mod chaos;
mod cli_contract;
mod common;
mod datasets;
mod durability;
mod episode;
mod export;
mod fifo_path;
mod gc;
mod grade;
mod grading_leaks;
mod harvest;
mod harvest_files;
mod harvest_runner;
mod memory_bounds;
mod mine;
mod model_loop;
mod mutate_script;
mod pool;
mod remote_engine;
mod run_integrity;
mod sandbox;
mod scaling;
mod server;
mod server_crash;
mod server_docker_down;
mod server_grade;
mod server_limits;
mod server_load;
mod server_python;
mod server_testgen;
mod shell_hijack;
mod step_survival;
mod submission;
mod task_sources;
mod testgen;
mod trace;
mod trace_cli;
mod trace_harvest;
mod tracer_script;
