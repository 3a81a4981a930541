//! talos-capi's benchmarks that need the test harness (`benches/`): they run `talos-capi
//! manager` as a process against testkit's local control plane, beside the real CABPT and
//! CACPPT and the simulator. They live here, not in crates/talos-capi, so that the shipped
//! binary's crate depends on nothing test-only; this library finds them the binary.
//!
//!   cargo bench --locked -p talos-capi-benches --bench bootstrap_vs_cabpt   (make bench-bootstrap)
//!   cargo bench --locked -p talos-capi-benches --bench controlplane         (make bench-controlplane)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The `talos-capi` binary the benchmarks run, found once: BENCH_MANAGER if set (e.g.
/// `target/release-static/talos-capi`, the image's binary from `make release-binary`), else
/// what `cargo build --release --locked -p talos-capi --bin talos-capi` builds, i.e. the
/// binary as shipped, with its own features (not unified with the harness's). A benchmark
/// calls this before it starts timing, so that the build is never part of a figure.
///
/// # Panics
///
/// If BENCH_MANAGER is not a file, or the build fails: the benchmark cannot run.
pub fn manager_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match locate() {
        Ok(binary) => binary,
        Err(e) => panic!("the talos-capi binary: {e}"),
    })
}

/// Why the manager binary cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("BENCH_MANAGER={} is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("running cargo: {0}")]
    Cargo(#[from] std::io::Error),
    #[error("`cargo build --release -p talos-capi` failed ({0})")]
    BuildFailed(std::process::ExitStatus),
    #[error("cargo reported no talos-capi executable")]
    NoExecutable,
}

fn locate() -> Result<PathBuf, LocateError> {
    if let Some(binary) = std::env::var_os("BENCH_MANAGER") {
        let binary = PathBuf::from(binary);
        return if binary.is_file() {
            Ok(binary)
        } else {
            Err(LocateError::NotAFile(binary))
        };
    }
    build()
}

/// `cargo build` of the manager, with the cargo that runs the benchmark (CARGO) and the same
/// target directory (CARGO_TARGET_DIR, inherited); the path is the one cargo reports.
fn build() -> Result<PathBuf, LocateError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = testkit::tools::repo_root().join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "talos-capi"])
        .args([
            "--bin",
            "talos-capi",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(LocateError::BuildFailed(output.status));
    }
    executable(&output.stdout).ok_or(LocateError::NoExecutable)
}

/// The `talos-capi` executable among cargo's JSON messages.
fn executable(messages: &[u8]) -> Option<PathBuf> {
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "talos-capi")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_the_one_cargo_reports_for_the_talos_capi_binary() {
        let messages = br#"{"reason":"compiler-artifact","target":{"name":"talos_capi_api","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"talos-capi","kind":["bin"]},"executable":"/t/release/talos-capi"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(messages),
            Some(PathBuf::from("/t/release/talos-capi"))
        );
        assert_eq!(executable(br#"{"reason":"build-finished"}"#), None);
    }
}
