//! 1,000 TalosConfigs (100 clusters × 10 machines by default) through the real CABPT v0.6.12 and
//! through `talos-capi manager`, one after the other on the same local control plane with the
//! real Cluster API core (the first run's objects deleted before the second starts): time
//! until every TalosConfig is ready, CPU seconds, peak RSS and API requests (from the API
//! server's audit log, by user agent) of each provider process.
//!
//!   cargo bench -p talos-capi-benches --bench bootstrap_vs_cabpt   (make bench-bootstrap)
//!   BENCH_CLUSTERS=10 BENCH_MACHINES=10 cargo bench …              (a smaller run)
//!   BENCH_ONLY=talos-capi cargo bench …                            (without the peer)
//!   BENCH_MANAGER=target/release-static/talos-capi cargo bench …   (that binary; by default
//!       `cargo build --release -p talos-capi`'s, built first: `talos_capi_benches::manager_binary`)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testkit::bench::{audit_events, component_pid, env_number, lines, usage};
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

/// Waits until `total` TalosConfigs in `ns` match `pred`. A watch, not a list every few
/// hundred milliseconds: listing 1,000 objects four times a second costs the API server (on the
/// same 2 cores) more CPU than the providers being measured.
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
    let mut matching = std::collections::HashSet::new();
    let mut listed = false;
    let mut initial = std::collections::HashSet::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let events = watcher(api, watcher::Config::default());
    let mut events = std::pin::pin!(events);
    let deadline = tokio::time::sleep(Duration::from_secs(1800));
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let event = tokio::select! {
            e = events.next() => e.expect("the watch ends only when dropped"),
            () = &mut deadline => panic!("{what}: {} of {total} after 30 minutes", matching.len()),
        };
        let (obj, deleted) = match event {
            Ok(watcher::Event::Apply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Ok(watcher::Event::Init) => {
                initial.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                if pred(&o) {
                    initial.insert(o.metadata.name.clone().unwrap_or_default());
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                matching = std::mem::take(&mut initial);
                listed = true;
                if matching.len() == total {
                    return;
                }
                continue;
            }
            Err(e) => {
                eprintln!("{what}: watch error {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        if !deleted && pred(&obj) {
            matching.insert(name);
        } else {
            matching.remove(&name);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "  {what}: {} of {total} at {:.0} s",
                matching.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if listed && matching.len() == total {
            return;
        }
    }
}

#[derive(Default)]
struct Figures {
    seconds: f64,
    cpu: f64,
    rss: f64,
    requests: usize,
}

/// The figures of one provider's run, and the namespace it ran in.
async fn run(
    cp: &LocalControlPlane,
    provider: &str,
    clusters: usize,
    machines: usize,
) -> (Figures, String) {
    let client = cp.client().await.unwrap();
    contract_labels(&client, provider).await;
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
    settle(&audit).await;
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
    // Everyone's requests in the same window: the API server's load shares the 2 cores.
    let mut by_agent = std::collections::BTreeMap::<String, usize>::new();
    for e in audit_events(&audit, offset, "") {
        let a = e["userAgent"].as_str().unwrap_or("?");
        *by_agent
            .entry(a.split(['/', ' ']).next().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    eprintln!("{provider} run: requests by every client: {by_agent:?}");
    let events = audit_events(&audit, offset, agent);
    let requests = events.len();
    // Where the requests went, and when (for finding what the provider waits on).
    eprintln!(
        "{provider}: requests by verb and resource: {:?}",
        by_kind(&events)
    );
    eprintln!(
        "{provider} run: Cluster API's requests by verb and resource: {:?}",
        by_kind(&audit_events(&audit, offset, "cluster-api/"))
    );
    print_timeline(provider, &events);
    let figures = Figures {
        seconds,
        cpu,
        rss,
        requests,
    };
    (figures, ns)
}

/// Deletes every object of a run's namespace and waits until they are gone (Cluster API
/// finishes deleting its Clusters and Machines), so the next provider's watches list only its
/// own run's objects: the peer's Secrets, Machines and Clusters would otherwise sit in its
/// caches. (No namespace controller runs here, so the objects go one kind at a time.)
async fn empty_namespace(cp: &LocalControlPlane, ns: &str) {
    let client = cp.client().await.unwrap();
    let started = Instant::now();
    let kinds = [
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        ("cluster.x-k8s.io/v1beta2", "Machine"),
        ("bootstrap.cluster.x-k8s.io/v1alpha3", "TalosConfig"),
        ("infrastructure.cluster.x-k8s.io/v1alpha1", "SimMachine"),
        ("infrastructure.cluster.x-k8s.io/v1alpha1", "SimCluster"),
        ("v1", "Secret"),
    ];
    for (api_version, kind) in kinds {
        dynamic(&client, ns, api_version, kind)
            .delete_collection(&Default::default(), &Default::default())
            .await
            .unwrap();
    }
    for (api_version, kind) in kinds {
        let api = dynamic(&client, ns, api_version, kind);
        let left = async || {
            let list = api.list_metadata(&Default::default()).await.unwrap();
            list.items.len()
        };
        let explain = async || format!("{} left", left().await);
        testkit::eventually_explained(
            &format!("every {kind} gone from {ns}"),
            Duration::from_secs(900).saturating_sub(started.elapsed()),
            async || (left().await == 0).then_some(()),
            explain,
        )
        .await;
    }
    eprintln!(
        "namespace {ns} emptied in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The TalosConfig CRD's contract labels as each provider ships them. CABPT v0.6.12's CRD
/// names only the v1beta1 contract, so Cluster API reads its `status.ready`; ours also names
/// v1beta2, whose `status.initialization.dataSecretCreated` CABPT does not write. Without the
/// swap Cluster API would never see CABPT's configs as ready, and would skip for CABPT the work
/// (Machine spec and status patches) it does for us in the same window.
async fn contract_labels(client: &kube::Client, provider: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let v1beta2 = if provider == "cabpt" {
        Value::Null
    } else {
        json!("v1alpha3")
    };
    crds.patch(
        "talosconfigs.bootstrap.cluster.x-k8s.io",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"labels": {"cluster.x-k8s.io/v1beta2": v1beta2}}}),
        ),
    )
    .await
    .unwrap();
}

/// Waits (up to 10 minutes) until Cluster API's manager is quiet: fewer than 20 requests in 5
/// s. It works through its backlog after every burst of Machines (the previous provider's
/// too), and that work must not fall in the next provider's measured window.
async fn settle(audit: &Path) {
    let started = Instant::now();
    let mut seen = audit_events(audit, 0, "cluster-api/").len();
    while started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = audit_events(audit, 0, "cluster-api/").len();
        if now - seen < 20 {
            break;
        }
        seen = now;
    }
    eprintln!(
        "Cluster API settled after {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

fn by_kind(events: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for e in events {
        let sub = e["objectRef"]["subresource"]
            .as_str()
            .map(|s| format!("/{s}"));
        *by_kind
            .entry(format!(
                "{} {}{}{}",
                e["verb"].as_str().unwrap_or("?"),
                e["objectRef"]["resource"].as_str().unwrap_or("?"),
                sub.unwrap_or_default(),
                match e["responseStatus"]["code"].as_i64() {
                    Some(c) if c >= 300 => format!(" ({c})"),
                    _ => String::new(),
                }
            ))
            .or_default() += 1;
    }
    by_kind
}

/// Requests per 10 s from the first one (audit `requestReceivedTimestamp`).
fn print_timeline(provider: &str, events: &[Value]) {
    let seconds: Vec<f64> = events
        .iter()
        .filter_map(|e| e["requestReceivedTimestamp"].as_str())
        .filter_map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond() as f64 / 1000.0)
        .collect();
    let Some(first) = seconds.iter().copied().reduce(f64::min) else {
        return;
    };
    let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
    for s in &seconds {
        *buckets.entry(((s - first) / 10.0) as u64).or_default() += 1;
    }
    let line: Vec<String> = buckets
        .iter()
        .map(|(b, n)| format!("{}s:{n}", b * 10))
        .collect();
    eprintln!("{provider}: requests per 10 s {}", line.join(" "));
}

async fn start(cp: &LocalControlPlane, provider: &str) -> ManagedProcess {
    if provider == "cabpt" {
        return testkit::peers::start_cabpt(cp, provider).await.unwrap();
    }
    let binary = talos_capi_benches::manager_binary();
    let args = vec![
        "manager".to_owned(),
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--watch-filter={provider}"),
        "--log-level=warn".to_owned(),
    ];
    let log = cp.dir().join("talos-capi-manager.log");
    // The manager's environment in its image (the Dockerfile's ENV). BENCH_WRAP runs it under a
    // profiler, e.g. `heaptrack -o /tmp/manager` (its figures are then the profiler's, not the
    // manager's alone).
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let args: Vec<String> = ["MALLOC_ARENA_MAX=2"]
        .into_iter()
        .chain(wrap.split_whitespace())
        .map(str::to_owned)
        .chain([binary.display().to_string()])
        .chain(args)
        .collect();
    ManagedProcess::spawn("talos-capi", Path::new("env"), &args, &log, None).unwrap()
}

fn main() {
    // Built (or found) before anything is timed.
    talos_capi_benches::manager_binary();
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
        // BENCH_ONLY=talos-capi skips the peer (for quick iterations; the published figures
        // come from runs of both).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let cabpt = if only == "talos-capi" {
            Figures::default()
        } else {
            let (figures, ns) = run(&cp, "cabpt", clusters, machines).await;
            empty_namespace(&cp, &ns).await;
            figures
        };
        let (ours, _) = run(&cp, "talos-capi", clusters, machines).await;
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
