//! The example patches of docs/ipam.md: each is substituted for a machine, rendered into a
//! worker configuration of the v1.14 contract, and validated by the real talosctl v1.14.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::process::Command;

use machineconfig::values::{MachineValues, Pool, PoolAddress, substitute};
use machineconfig::{Contract, Input, MachineType, Patch, SecretsBundle};
use testkit::tools::{Tool, locate, repo_root};

/// The fenced YAML blocks of docs/ipam.md that reference a pool: its example patches.
fn examples() -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/ipam.md")).unwrap();
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                if block.contains("((ipam.") {
                    examples.push(std::mem::take(block));
                }
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    examples
}

#[test]
fn documented_examples_render_and_validate() {
    let examples = examples();
    assert_eq!(
        examples.len(),
        2,
        "the v1alpha1 and the multi-document example"
    );
    let talosctl = locate(Tool::Talosctl114).expect("talosctl-1.14 (make tools)");
    let contract = Contract::parse("v1.14").unwrap();
    let bundle = SecretsBundle::generate(contract).unwrap();
    let input = Input::for_contract("ipam-demo", "https://10.5.0.2:6443", contract);
    let values = MachineValues {
        machine_name: Some("ipam-demo-workers-x7k2p".into()),
        infrastructure_machine_name: Some("ipam-demo-workers-infra-9qz".into()),
        failure_domain: Some("fd-1".into()),
        cluster_name: Some("ipam-demo".into()),
        pools: BTreeMap::from([(
            "nodes".to_owned(),
            Pool::Bound(PoolAddress::new("10.5.0.12", 24, Some("10.5.0.1")).unwrap()),
        )]),
    };
    let dir = tempfile::tempdir().unwrap();
    for (i, example) in examples.iter().enumerate() {
        let mut patch = Patch::parse(example).unwrap();
        substitute(&mut patch, &values).unwrap();
        let config =
            machineconfig::generate(MachineType::Worker, &input, &bundle, &[patch]).unwrap();
        assert!(config.contains("10.5.0.12/24"), "example {i}:\n{config}");
        assert!(config.contains("10.5.0.1\n"), "example {i}:\n{config}");
        assert!(!config.contains("(("), "example {i}:\n{config}");
        let file = dir.path().join(format!("example-{i}.yaml"));
        std::fs::write(&file, &config).unwrap();
        let o = Command::new(&talosctl)
            .args(["validate", "--config", file.to_str().unwrap()])
            .args(["--mode", "metal", "--strict"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "talosctl validate, example {i}: {}{}\n{config}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
