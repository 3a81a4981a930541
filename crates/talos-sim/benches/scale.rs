//! `cargo bench -p talos-sim --bench scale`: 100 clusters x 3 control-plane nodes in one
//! process; reports resident memory and the latency of Version through talos_api::Client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::time::{Duration, Instant};

use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{Contract, Input, MachineType, Patch, SecretsBundle};
use talos_api::{Client, Nodes};
use talos_sim::{NodeSpec, SimEvent, Simulator, Timing, loopback_address};

const CLUSTERS: u32 = 100;
const PER_CLUSTER: u32 = 3;
const CALLS: usize = 2000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::main]
async fn main() {
    let before = rss_mib();
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let started = Instant::now();
    let mut addresses = Vec::new();
    for cluster in 0..CLUSTERS {
        let first = loopback_address(cluster * PER_CLUSTER);
        let input = Input::new(&format!("c{cluster}"), &format!("https://{first}:6443"));
        let id = Patch::parse(&format!("cluster:\n  id: cluster-{cluster:04}\n")).unwrap();
        let config =
            machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[id]).unwrap();
        for i in 0..PER_CLUSTER {
            let address = loopback_address(cluster * PER_CLUSTER + i);
            addresses.push(address.to_string());
            let spec = NodeSpec {
                address,
                port: 50000,
                hostname: format!("c{cluster}-n{i}"),
                version: "v1.13.0".into(),
                config: Some(config.clone()),
            };
            sim.start(spec).unwrap();
        }
    }
    let mut up = 0;
    while up < CLUSTERS * PER_CLUSTER {
        if let Ok(SimEvent::NodeUp {
            configured: true, ..
        }) = events.recv().await
        {
            up += 1;
        }
    }
    let boot = started.elapsed();
    let after = rss_mib();

    let cfg = talosconfig::generate(
        "bench",
        &bundle,
        &ClientOptions {
            endpoints: vec![addresses[0].clone()],
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let client = Client::from_talosconfig(&cfg.to_yaml().unwrap(), None).unwrap();
    client.version(&Nodes::Endpoint).await.unwrap(); // connect once
    let mut direct = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        client.version(&Nodes::Endpoint).await.unwrap();
        direct.push(t.elapsed());
    }
    let mut proxied = Vec::with_capacity(CALLS);
    let other = Nodes::One(addresses[299].clone());
    for _ in 0..CALLS {
        let t = Instant::now();
        client.version(&other).await.unwrap();
        proxied.push(t.elapsed());
    }
    direct.sort();
    proxied.sort();
    println!(
        "nodes: {} ({CLUSTERS} clusters x {PER_CLUSTER}), all up in {boot:.2?}",
        CLUSTERS * PER_CLUSTER
    );
    println!(
        "resident memory: {before:.1} MiB before, {after:.1} MiB with all nodes up ({:.1} MiB)",
        after - before
    );
    println!("Version via talos_api::Client, {CALLS} calls each:");
    println!(
        "  endpoint itself: p50 {:?}, p99 {:?}",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
    println!(
        "  proxied (node metadata): p50 {:?}, p99 {:?}",
        percentile(&proxied, 0.5),
        percentile(&proxied, 0.99)
    );
}
