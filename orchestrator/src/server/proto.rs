//! The code generated from `proto/swe_env/v1/*.proto` (package `swe_env.v1`). Only `server` (and clients of the
//! wire API: tests, benchmarks) use these types; the rest of the crate never sees them.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("swe_env.v1");

/// Encoded `FileDescriptorSet` of the API, registered with gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("swe_env_v1_descriptor");
