//! Generates the gRPC and queue schema from `proto/` with protox (a Rust protobuf compiler), so a
//! fresh machine builds with cargo alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it compiles: a build cache shared between
    // clones (CI clones afresh each time) reuses the compiled script from another clone's path.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is unset")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let file = root.join("cloudimg/v1/image_service.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        // Payloads are `bytes::Bytes`: decoding a chunk or a job slices the received buffer instead
        // of copying megabytes.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
