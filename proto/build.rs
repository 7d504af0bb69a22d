//! Compiles `drover/v1/*.proto` with protox (pure Rust), so building needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "drover/v1/control.proto",
        "drover/v1/agent.proto",
        "drover/v1/security.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=drover/v1/types.proto");
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("drover_descriptor.bin"))
        .compile_fds(descriptors)?;
    Ok(())
}
