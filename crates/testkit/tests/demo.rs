//! `make demo`'s bad states get a message that says what to do, before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;

fn demo(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_missing_manager_binary_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("talos-capi");
    let (code, e) = demo(&[
        "--talos-capi",
        missing.to_str().unwrap(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains(&format!("{} is missing", missing.display()))
            && e.contains("cargo build -p talos-capi"),
        "{e}"
    );
}

#[test]
fn a_demo_already_running_is_named_with_the_way_to_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    // A live process holds the pid file, as a running demo does.
    std::fs::write(dir.path().join("demo.pid"), std::process::id().to_string()).unwrap();
    let (code, e) = demo(&[
        "--talos-capi",
        env!("CARGO_BIN_EXE_demo"),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "a demo is already running (pid {}): `make down` stops it",
            std::process::id()
        )),
        "{e}"
    );
    assert!(
        dir.path().join("demo.pid").exists(),
        "the running demo's pid file is left alone"
    );
}
