//! The code generated from `proto/swe_env/v1/*.proto` (package `swe_env.v1`). Only `server` (and clients of the
//! wire API: tests, benchmarks) use these types; the rest of the crate never sees them.
//!
//! The generated Rust and the encoded descriptor set are committed under `proto/generated/`, so a build compiles
//! neither the proto compiler nor the code generator. The test below regenerates both from `proto/` and fails
//! when the committed copies are stale; `SWE_ENV_UPDATE_PROTO=1 cargo nextest run -p swe-env --lib proto`
//! rewrites them after a `.proto` change.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!("proto/generated/swe_env.v1.rs");
}

pub use generated::*;

/// Encoded `FileDescriptorSet` of the API, registered with gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("proto/generated/swe_env_v1_descriptor.bin");

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Set to write the regenerated files over the committed ones instead of comparing.
    const UPDATE_VAR: &str = "SWE_ENV_UPDATE_PROTO";
    const RUST_FILE: &str = "swe_env.v1.rs";
    const DESCRIPTOR_FILE: &str = "swe_env_v1_descriptor.bin";

    /// Compiles `proto/swe_env/v1/*.proto` with protox (no system `protoc`) and runs the tonic + prost generator
    /// into `out`: the same steps the former build script ran on every clean build.
    fn generate(proto_root: &Path, out: &Path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(proto_root.join("swe_env/v1"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "proto"))
            .collect();
        files.sort();
        let mut compiler = protox::Compiler::new([proto_root]).unwrap();
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(&files).unwrap();
        std::fs::write(
            out.join(DESCRIPTOR_FILE),
            compiler.encode_file_descriptor_set(),
        )
        .unwrap();
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .emit_rerun_if_changed(false)
            .out_dir(out)
            .compile_fds(compiler.file_descriptor_set())
            .unwrap();
    }

    #[test]
    fn committed_generated_code_matches_the_proto_files() {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let proto_root = manifest_dir.join("../proto");
        let committed = manifest_dir.join("src/server/proto/generated");
        let fresh = tempfile::tempdir().unwrap();
        generate(&proto_root, fresh.path());
        let update = std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for name in [RUST_FILE, DESCRIPTOR_FILE] {
            let regenerated = std::fs::read(fresh.path().join(name)).unwrap();
            let path = committed.join(name);
            if update {
                std::fs::write(&path, &regenerated).unwrap();
            } else if std::fs::read(&path).ok().as_deref() != Some(regenerated.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "the committed generated proto code is stale (proto/ changed): {}; regenerate it with \
             `{UPDATE_VAR}=1 cargo nextest run -p swe-env --lib proto` and commit the result",
            stale.join(", ")
        );
    }
}
