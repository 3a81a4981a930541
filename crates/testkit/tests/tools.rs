//! The tools `hack/tools/tool.sh` builds are the releases `hack/tools/versions.env` pins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;

use testkit::tools::{Tool, locate};

/// The Talos 1.14 oracle is the real talosctl v1.14.1 (TALOS_114_VERSION).
#[test]
fn talosctl_1_14_reports_v1_14_1() {
    let talosctl = locate(Tool::Talosctl114).expect("talosctl-1.14 (make tools)");
    let out = Command::new(&talosctl)
        .args(["version", "--client"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tag = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tag:"))
        .map(str::trim);
    assert_eq!(tag, Some("v1.14.1"), "{stdout}");
}
