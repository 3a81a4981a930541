//! 1,000 TalosConfigs (100 clusters × 10 machines by default) through the real CABPT v0.6.12 and
//! through `talos-capi manager`, one after the other on the same local control plane with the
//! real Cluster API core: time until every TalosConfig is ready, CPU seconds, peak RSS and API
//! requests (from the API server's audit log, by user agent) of each provider process.
//!
//!   cargo bench -p talos-capi --bench bootstrap_vs_cabpt        (make bench-bootstrap)
//!   BENCH_CLUSTERS=10 BENCH_MACHINES=10 cargo bench …            (a smaller run)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use testkit::bench::{component_pid, count_requests, env_number, lines, usage};
use testkit::process::ManagedProcess;
use testkit::{LocalControlPlane, unique_namespace};

fn dynamic(client: &kube::Client, ns: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    testkit::dynamic_api(client, ns, api_version, kind)
}

async fn apply(client: &kube::Client, ns: &str, manifest: Value) {
    testkit::apply_manifest(client, ns, "bench", &manifest)
        .await
        .unwrap();
}

/// One cluster of `machines` TalosConfigs (the first a control plane), labelled for `filter`.
async fn cluster(client: &kube::Client, ns: &str, name: &str, machines: usize, filter: &str) {
    let labels = json!({"cluster.x-k8s.io/watch-filter": filter});
    apply(client, ns, json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimCluster", "metadata": {"name": name}, "spec": {}})).await;
    testkit::infra::mark_provisioned(client, ns, "SimCluster", name)
        .await
        .unwrap();
    apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": name, "labels": labels},
        "spec": {
            "controlPlaneEndpoint": {"host": "10.0.0.10", "port": 6443},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": name}
        }
    }))
    .await;
    for i in 0..machines {
        let m = format!("{name}-{i}");
        let generate = if i == 0 { "controlplane" } else { "worker" };
        let mut machine_labels =
            json!({"cluster.x-k8s.io/watch-filter": filter, "cluster.x-k8s.io/cluster-name": name});
        if i == 0 {
            machine_labels["cluster.x-k8s.io/control-plane"] = json!("");
        }
        apply(client, ns, json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig", "metadata": {"name": m, "labels": labels}, "spec": {"generateType": generate, "talosVersion": "v1.11"}})).await;
        apply(client, ns, json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "metadata": {"name": m}, "spec": {}})).await;
        apply(client, ns, json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "metadata": {"name": m, "labels": machine_labels},
            "spec": {
                "clusterName": name, "version": "v1.35.0",
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": m}},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": m}
            }
        }))
        .await;
    }
}

/// TalosConfigs in `ns` matching `pred`, polled until `total` do.
async fn wait_for(
    client: &kube::Client,
    ns: &str,
    total: usize,
    what: &str,
    pred: fn(&DynamicObject) -> bool,
) {
    let api = dynamic(
        client,
        ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    );
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let n = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|o| pred(o))
            .count();
        if n == total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} of {total} after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Figures {
    seconds: f64,
    cpu: f64,
    rss: f64,
    requests: usize,
}

async fn run(cp: &LocalControlPlane, provider: &str, clusters: usize, machines: usize) -> Figures {
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, &format!("bench-{provider}"))
        .await
        .unwrap();
    let started = Instant::now();
    join_all((0..clusters).map(|c| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { cluster(&client, &ns, &format!("c{c}"), machines, provider).await }
    }))
    .await;
    let total = clusters * machines;
    wait_for(
        &client,
        &ns,
        total,
        "Cluster API adopts the TalosConfigs",
        |o| {
            o.metadata
                .owner_references
                .as_ref()
                .is_some_and(|r| r.iter().any(|r| r.kind == "Machine"))
        },
    )
    .await;
    eprintln!(
        "{provider}: {total} TalosConfigs created and adopted by Cluster API in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let audit = cp.audit_log_path();
    let offset = lines(&audit);
    let t0 = Instant::now();
    let process = start(cp, provider).await;
    let pid = component_pid(
        process.pid(),
        if provider == "cabpt" {
            "/cabpt"
        } else {
            "/talos-capi"
        },
    )
    .await;
    let sampler = tokio::spawn(async move {
        let mut last = (0.0, 0.0);
        loop {
            let now = usage(pid);
            if now.0 > 0.0 || now.1 > 0.0 {
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return last;
            }
        }
    });
    wait_for(&client, &ns, total, "TalosConfigs ready", |o| {
        o.data["status"]["ready"] == json!(true) && o.data["status"]["dataSecretName"].is_string()
    })
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let (cpu, rss) = usage(pid);
    drop(process);
    let _ = sampler.await;
    let agent = if provider == "cabpt" {
        "cabpt/"
    } else {
        "talos-capi/"
    };
    let requests = count_requests(&audit, offset, agent);
    Figures {
        seconds,
        cpu,
        rss,
        requests,
    }
}

async fn start(cp: &LocalControlPlane, provider: &str) -> ManagedProcess {
    if provider == "cabpt" {
        return testkit::peers::start_cabpt(cp, provider).await.unwrap();
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_talos-capi"));
    let args = vec![
        "manager".to_owned(),
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--watch-filter={provider}"),
        "--log-level=warn".to_owned(),
    ];
    let log = cp.dir().join("talos-capi-manager.log");
    ManagedProcess::spawn("talos-capi", &binary, &args, &log, None).unwrap()
}

fn main() {
    let clusters = env_number("BENCH_CLUSTERS", 100);
    let machines = env_number("BENCH_MACHINES", 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cp = LocalControlPlane::builder()
            .name("bench")
            .cluster_api()
            .crds(testkit::tools::repo_root().join("config/crd/bases"))
            .audit_log()
            .start()
            .await
            .unwrap();
        let cabpt = run(&cp, "cabpt", clusters, machines).await;
        let ours = run(&cp, "talos-capi", clusters, machines).await;
        println!(
            "{} TalosConfigs ({clusters} clusters × {machines} machines), Cluster API {}",
            clusters * machines,
            std::env::var("CLUSTER_API_VERSION").unwrap_or_else(|_| "(versions.env)".into())
        );
        println!("| provider | time until all ready | CPU seconds | peak RSS | API requests |");
        println!("| --- | --- | --- | --- | --- |");
        for (name, f) in [("CABPT v0.6.12", &cabpt), ("talos-capi", &ours)] {
            println!(
                "| {name} | {:.1} s | {:.1} s | {:.0} MiB | {} |",
                f.seconds, f.cpu, f.rss, f.requests
            );
        }
        println!(
            "| ratio (CABPT / talos-capi) | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            cabpt.seconds / ours.seconds,
            cabpt.cpu / ours.cpu.max(0.01),
            cabpt.rss / ours.rss.max(0.01),
            cabpt.requests as f64 / (ours.requests.max(1) as f64)
        );
    });
}
