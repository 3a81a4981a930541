//! The `gen` and `validate` commands as a shell user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::process::{Command, Output};

use testkit::tools::{Tool, locate};

fn talos_capi(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_talos-capi"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn seed_walkthrough_gen_config_then_talosctl_validates() {
    let dir = tempfile::tempdir().unwrap();
    let o = talos_capi(
        dir.path(),
        &["gen", "config", "mi-cluster", "https://192.168.1.41:6443"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let talosctl = locate(Tool::Talosctl).unwrap();
    for file in ["controlplane.yaml", "worker.yaml"] {
        let v = Command::new(&talosctl)
            .args(["validate", "--config", file, "--mode", "metal", "--strict"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "talosctl validate {file}: {}",
            stderr(&v)
        );
    }
    let info = Command::new(&talosctl)
        .args(["--talosconfig", "talosconfig", "config", "info"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("mi-cluster"),
        "{}",
        stderr(&info)
    );

    // A second run refuses to overwrite, and changes nothing.
    let before = std::fs::read_to_string(dir.path().join("worker.yaml")).unwrap();
    let again = talos_capi(
        dir.path(),
        &["gen", "config", "mi-cluster", "https://192.168.1.41:6443"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists, use --force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("worker.yaml")).unwrap(),
        before
    );
}

#[test]
fn secrets_and_patches_from_files_and_inline() {
    let dir = tempfile::tempdir().unwrap();
    assert!(talos_capi(dir.path(), &["gen", "secrets"]).status.success());
    std::fs::write(dir.path().join("vip.yaml"), "machine:\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vip:\n          ip: 192.168.1.50\n").unwrap();
    let o = talos_capi(
        dir.path(),
        &[
            "gen",
            "config",
            "ha",
            "https://192.168.1.50:6443",
            "--with-secrets",
            "secrets.yaml",
            "--config-patch-control-plane",
            "@vip.yaml",
            "--config-patch",
            "machine:\n  install:\n    disk: /dev/vda\n",
            "--talos-version",
            "v1.11",
            "--kubernetes-version",
            "1.33.2",
            "-o",
            "out",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cp = std::fs::read_to_string(dir.path().join("out/controlplane.yaml")).unwrap();
    let worker = std::fs::read_to_string(dir.path().join("out/worker.yaml")).unwrap();
    assert!(
        cp.contains("192.168.1.50") && !worker.contains("vip"),
        "the VIP goes to control planes only"
    );
    assert!(cp.contains("/dev/vda") && worker.contains("/dev/vda"));
    assert!(worker.contains("kubelet:v1.33.2"));
    let ok = talos_capi(
        dir.path(),
        &[
            "validate",
            "--config",
            "out/controlplane.yaml",
            "--mode",
            "metal",
            "--strict",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn mistakes_get_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for (args, code, text) in [
        (
            vec![
                "gen",
                "config",
                "c",
                "[https://192.168.1.41:6443](https://192.168.1.41:6443)",
            ],
            1,
            "Markdown link",
        ),
        (
            vec!["gen", "config", "c", "https://10.0.0.1"],
            1,
            "must include a port",
        ),
        (
            vec!["gen", "config", "c", "10.0.0.1:6443"],
            1,
            "must start with https://",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--talos-version",
                "v1.7",
            ],
            1,
            "unsupported Talos version",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--config-patch",
                "[{\"op\": \"merge\", \"path\": \"/x\"}]",
            ],
            1,
            "valid operations",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--config-patch",
                "- op: add\n  path: /machine/x\n  value: 1",
            ],
            1,
            "JSON6902 patches are not supported for multi-document",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--with-secrets",
                "missing.yaml",
            ],
            1,
            "missing.yaml",
        ),
        (
            vec!["validate", "--config", "x.yaml", "--mode", "baremetal"],
            2,
            "unknown mode",
        ),
        (vec!["gen", "config"], 2, "required"),
    ] {
        let o = talos_capi(dir.path(), &args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(text), "{args:?}: {}", stderr(&o));
    }
    std::fs::write(
        dir.path().join("bad.yaml"),
        "version: v1alpha1\nmachine:\n  type: worker\n  installer: {}\ncluster: {}\n",
    )
    .unwrap();
    let o = talos_capi(
        dir.path(),
        &[
            "validate", "--config", "bad.yaml", "--mode", "metal", "--strict",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("errors occurred")
            && e.contains("machine.installer: unknown field")
            && e.contains("machine.token"),
        "{e}"
    );
}
