//! Compiles `src/api/proto/*.proto` with protox (pure Rust): no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "src/api/proto/skep.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["src/api/proto"])?;
    tonic_prost_build::configure()
        // These carry a secret's value, a private key, an unlock key or a backup key: their Debug is written by hand
        // (src/api/mod.rs) to hide it.
        .skip_debug([
            "skep.v1.SecretCreateRequest",
            "skep.v1.SecretUpdateRequest",
            "skep.v1.SecretValue",
            "skep.v1.SwarmCaRequest",
            "skep.v1.SwarmInitRequest",
            "skep.v1.SwarmBackupRequest",
            "skep.v1.SwarmBackupChunk",
            "skep.v1.SwarmRestoreChunk",
            "skep.v1.JwtSvidResponse",
        ])
        // Routing-mesh tunnel chunks are `Bytes`: read into and decoded from shared buffers,
        // not copied into a vector of their own.
        .bytes(".skep.v1.TunnelFrame.data")
        // Calls start with small buffers (see `crate::api::codec`).
        .codec_path("crate::api::codec::Compact")
        .compile_fds(fds)?;

    // The SPIFFE Workload API, copied verbatim from spiffe/go-spiffe (Apache-2.0). It has no
    // `package`, so prost writes it to `_.rs` (see `crate::api::spiffe`).
    let workload = "src/api/proto/spiffe/workload.proto";
    println!("cargo:rerun-if-changed={workload}");
    let fds = protox::compile([workload], ["src/api/proto/spiffe"])?;
    tonic_prost_build::configure()
        // These carry a private key or a bearer token: their Debug is written by hand
        // (src/api/mod.rs) to hide it.
        .skip_debug([
            ".X509SVID",
            ".JWTSVID",
            ".ValidateJWTSVIDRequest",
            ".WITSVID",
        ])
        .codec_path("crate::api::codec::Compact")
        .compile_fds(fds)?;
    Ok(())
}
