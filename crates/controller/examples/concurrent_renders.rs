//! Peak memory of renders run at once, as the manager's TalosConfig reconciles (10 at once by
//! default) may run them: `cargo run -p talos-capi-controller --example concurrent_renders --
//! <renders> <object>`, where `<object>` is
//!
//! - `refused`: 64 strategic patches that each expand through YAML aliases to 89,545 values
//!   (as many patches as the CRD admits), refused for the render budget;
//! - `admitted`: the most the budget admits of such patches (137,000 values in two), rendered
//!   and refused only for its output's size;
//! - `plain`: an ordinary TalosConfig, for the baseline.
//!
//! It prints each render's outcome and the process's peak RSS (VmHWM); figures in
//! docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement: a panic is a failure

use std::sync::{Arc, Barrier};

use api::bootstrap::v1alpha3::{GenerateType, TalosConfigSpec};
use api::capi::{ApiEndpoint, Cluster, ClusterSpec, Machine, MachineSpec};
use controller::bootstrap::render::machine_config;
use machineconfig::{Contract, SecretsBundle};

/// A strategic patch of 2.4 KB that expands to 89,545 values and 4.06 MB of text (47,322
/// values without `x`): one-entry mappings with 190-byte keys, about 20 MB once parsed.
fn expanding_patch(top: bool) -> String {
    let mut text = "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: x\n".to_owned();
    text.push_str(&format!("a0: &a0 {{{}: {{}}}}\n", "k".repeat(190)));
    for level in 1..=4 {
        let refs: Vec<String> = (0..10).map(|j| format!("b{j}: *a{}", level - 1)).collect();
        text.push_str(&format!("a{level}: &a{level} {{{}}}\n", refs.join(", ")));
    }
    let padding: Vec<String> = (0..200).map(|j| format!("p{j}: 0")).collect();
    text.push_str(&format!("p: {{{}}}\n", padding.join(", ")));
    if top {
        text.push_str("x: {c0: *a4}\n");
    }
    text
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let renders: usize = args.next().map_or(10, |n| n.parse().expect("a number"));
    let object = args.next().unwrap_or_else(|| "refused".to_owned());
    let patches = match object.as_str() {
        "refused" => vec![expanding_patch(true); 64],
        "admitted" => vec![expanding_patch(true), expanding_patch(false)],
        "plain" => vec!["machine: {install: {disk: /dev/vda}}".to_owned()],
        other => panic!("unknown object {other:?}: refused, admitted or plain"),
    };
    let spec = TalosConfigSpec {
        generate_type: Some(GenerateType::Controlplane),
        talos_version: Some("v1.13".into()),
        strategic_patches: Some(patches),
        ..TalosConfigSpec::default()
    };
    let mut cluster = Cluster::new("c", ClusterSpec::default());
    cluster.spec.control_plane_endpoint = Some(ApiEndpoint {
        host: "10.0.0.1".into(),
        port: 6443,
    });
    let machine = Machine::new(
        "c-cp-0",
        MachineSpec {
            cluster_name: "c".into(),
            ..MachineSpec::default()
        },
    );
    let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
    let before = peak_rss_kib();
    let shared = Arc::new((spec, machine, cluster, bundle));
    let start = Arc::new(Barrier::new(renders));
    let threads: Vec<_> = (0..renders)
        .map(|_| {
            let (shared, start) = (Arc::clone(&shared), Arc::clone(&start));
            std::thread::spawn(move || {
                let (spec, machine, cluster, bundle) = &*shared;
                start.wait();
                machine_config(spec, machine, cluster, "c", bundle, &Default::default())
                    .map(|c| c.len())
            })
        })
        .collect();
    for (n, t) in threads.into_iter().enumerate() {
        match t.join().expect("a render") {
            Ok(bytes) => println!("render {n}: {bytes} bytes"),
            Err(e) => println!("render {n}: {e}"),
        }
    }
    println!(
        "{renders} renders of {object} at once: peak RSS {} KiB ({} KiB before rendering)",
        peak_rss_kib().unwrap_or_default(),
        before.unwrap_or_default()
    );
}
