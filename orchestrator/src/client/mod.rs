//! Wire clients: programs that drive a real `swe-env serve` over gRPC the way a trainer does, through the generated
//! client stubs. With `server/`, the only users of the generated proto code (`tests/it/boundaries.rs` checks it);
//! unlike `server/`, they never make a `tonic::Status`. They are benchmark programs behind `swe-env bench`, so their
//! errors go straight to the user (`anyhow`, as in `cli/`).
//!
//! - [`grpc_bench`]: Step latency and throughput over the wire (`swe-env bench grpc`), with an in-process baseline.
//! - [`chaos_bench`]: faults a hostile client or operator can cause, each checked against the trajectories
//!   (`swe-env bench chaos`).

pub mod chaos_bench;
pub mod grpc_bench;
