//! Generates the gRPC and queue schema from `proto/` with protox (a Rust protobuf compiler), so a
//! fresh machine builds with cargo alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
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
