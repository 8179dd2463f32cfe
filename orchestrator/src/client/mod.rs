//! Wire clients: programs that drive a real `swe-env serve` over gRPC the way a trainer does, through the generated
//! client stubs. With `server/`, the only users of the generated proto code (`tests/it/boundaries.rs` checks it);
//! unlike `server/`, they never make a `tonic::Status`. [`fleet`] is a library client (typed `FleetError`); the others
//! are benchmark programs behind `swe-env bench`, so their errors go straight to the user (`anyhow`, as in `cli/`).
//!
//! - [`fleet`]: the fleet-aware client: CreateEpisode placed on the node with the most free slots, every later call
//!   pinned to the node the episode id names, a dead node's episodes failed at once naming it.
//! - [`fleet_bench`]: placement overhead per CreateEpisode and episodes/s across nodes (`swe-env bench fleet`).
//! - [`grpc_bench`]: Step latency and throughput over the wire (`swe-env bench grpc`), with an in-process baseline.
//! - [`chaos_bench`]: faults a hostile client or operator can cause, each checked against the trajectories
//!   (`swe-env bench chaos`).
//! - [`scale_bench`]: N episodes through one real `swe-env serve` (`swe-env bench scale`): starts, steps under load,
//!   memory, leaks; and the engine's own start ceiling.
//! - [`serve_child`]: a `swe-env serve` child of a bench program (started, drained on stop and on drop).
//! - [`stats`]: the percentile type every bench program prints.

pub mod chaos_bench;
pub mod fleet;
pub mod fleet_bench;
pub mod grpc_bench;
pub mod scale_bench;
pub mod serve_child;
pub mod stats;
