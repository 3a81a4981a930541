//! Generates the Rust types, client and server stubs from proto/ (our own definitions of the
//! Talos API subset). protoc comes from the protoc-bin-vendored crate, so no system protoc is
//! needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // std::env::set_var is unsafe in edition 2024, so protoc is passed through the Config.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/common/common.proto", "proto/machine/machine.proto"],
        &["proto", &include.to_string_lossy()],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
