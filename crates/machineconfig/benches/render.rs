//! `cargo bench -p machineconfig`: render + patch + serialize one controlplane configuration
//! from an existing bundle, and secrets bundle generation (dominated by RSA 4096).
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use machineconfig::{Contract, Input, MachineType, Patch, SecretsBundle};

/// Render, patch and serialize one controlplane configuration of `contract`.
fn bench_render(c: &mut Criterion, name: &str, contract: Contract, patches: &[&str]) {
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let input = Input::for_contract("bench", "https://10.0.0.1:6443", contract);
    let patches: Vec<Patch> = patches.iter().map(|p| Patch::parse(p).unwrap()).collect();
    c.bench_function(name, |b| {
        b.iter(|| {
            machineconfig::generate(
                MachineType::Controlplane,
                black_box(&input),
                &bundle,
                &patches,
            )
            .unwrap()
        })
    });
}

fn render_patch_serialize(c: &mut Criterion) {
    bench_render(
        c,
        "render+patch+serialize controlplane (v1.13)",
        Contract::DEFAULT,
        &[
            "machine:\n  install:\n    disk: /dev/vda\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vip:\n          ip: 10.0.0.1\n",
            "cluster:\n  network:\n    podSubnets: [10.32.0.0/12]\n",
        ],
    );
}

/// The same two changes, as v1.14 documents: 29 documents rendered instead of 2.
fn render_patch_serialize_v114(c: &mut Criterion) {
    bench_render(
        c,
        "render+patch+serialize controlplane (v1.14)",
        Contract::NEWEST,
        &[
            "apiVersion: v1alpha1\nkind: UnattendedInstallConfig\nprovisioning:\n  diskSelector:\n    match: disk.dev_path == \"/dev/vda\"\n",
            "apiVersion: v1alpha1\nkind: KubeNetworkConfig\npodSubnets: [10.32.0.0/12]\n",
        ],
    );
}

/// The v1.13 case with the node's address from a pool (docs/ipam.md): the patches are cloned
/// and given the machine's values in every iteration, as the controller does for each render.
fn render_patch_serialize_with_values(c: &mut Criterion) {
    use machineconfig::values::{MachineValues, Pool, PoolAddress, substitute};
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let input = Input::for_contract("bench", "https://10.0.0.1:6443", Contract::DEFAULT);
    let patches: Vec<Patch> = [
        "machine:\n  install:\n    disk: /dev/vda\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [\"((ipam.nodes.address))/((ipam.nodes.prefix))\"]\n        routes:\n          - network: 0.0.0.0/0\n            gateway: \"((ipam.nodes.gateway))\"\n        vip:\n          ip: 10.0.0.1\n",
        "cluster:\n  network:\n    podSubnets: [10.32.0.0/12]\n",
    ]
    .iter()
    .map(|p| Patch::parse(p).unwrap())
    .collect();
    let address = PoolAddress::new("10.0.0.12", 24, Some("10.0.0.1")).unwrap();
    let values = MachineValues {
        machine_name: Some("bench-cp-x7k2p".into()),
        pools: [("nodes".to_owned(), Pool::Bound(address))].into(),
        ..MachineValues::default()
    };
    c.bench_function(
        "render+patch+serialize controlplane (v1.13) with per-machine values",
        |b| {
            b.iter(|| {
                let mut patches = patches.clone();
                for patch in &mut patches {
                    substitute(patch, black_box(&values)).unwrap();
                }
                machineconfig::generate(MachineType::Controlplane, &input, &bundle, &patches)
                    .unwrap()
            })
        },
    );
}

fn bundle_generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("secrets bundle");
    group.sample_size(10);
    group.bench_function("generate (RSA 4096 + 3 ECDSA CAs + Ed25519 CA)", |b| {
        b.iter(|| SecretsBundle::generate(Contract::NEWEST).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    render_patch_serialize,
    render_patch_serialize_v114,
    render_patch_serialize_with_values,
    bundle_generation
);
criterion_main!(benches);
