//! TalosControlPlanes of 3 replicas from `kubectl apply` to Available, through `talos-capi
//! manager` on a local control plane with the real Cluster API core and simulated Talos nodes
//! that boot at once (the test infrastructure provider of `testkit::sim_infra`):
//!
//! 1. one cluster: time to Available, API requests to the management cluster (audit log, by
//!    user agent) and to the Talos API (served by the simulator), the controller's CPU time, and
//!    its reaction to each gate — a node coming up (→ etcd bootstrap) and a member becoming a
//!    healthy voter (→ the next machine);
//! 2. then 10 and BENCH_CLUSTERS (default 100) clusters at once through the same manager: time
//!    to all Available, CPU seconds, peak RSS, requests, and the gate reactions' p50 and p99;
//! 3. after the 1- and 10-cluster phases, a Kubernetes rolling upgrade of those clusters
//!    (maxSurge 1): time, controller CPU, requests, and the reaction from each new member
//!    becoming a healthy voter to the controller's next machine create or delete;
//! 4. then an in-place Talos upgrade (v1.13.0 → v1.13.1) of the same clusters: time,
//!    controller CPU, requests, Talos API calls, and the reaction from each node coming back
//!    up to the controller's next step (the Machine patch that records it);
//! 5. side by side with the Go providers (module `peers`): the same 1 and 10 clusters brought
//!    up and rolled by the real CACPPT v0.5.13 + CABPT v0.6.12, then by talos-capi, each on a
//!    control plane of its own with a workload API server per cluster: time, CPU seconds and
//!    peak RSS of each provider process, API requests and Talos API calls, and the ratios.
//!
//!   cargo bench -p talos-capi-benches --bench controlplane    (make bench-controlplane)
//!   BENCH_CLUSTERS=20 BENCH_DIR=/tmp/bench-cp cargo bench …   (smaller; keep the logs)
//!   BENCH_PEERS=only cargo bench …                            (only the side-by-side run)
//!   BENCH_PEERS=skip cargo bench …                            (without it)
//!   BENCH_MANAGER=<talos-capi binary> cargo bench …           (that binary; by default
//!       `cargo build --release -p talos-capi`'s, built first: `talos_capi_benches::manager_binary`)
//!   BENCH_FAULTS=<seed> cargo bench …                         (only the BENCH_CLUSTERS phase,
//!       with the manager behind testkit's fault proxy: 10% of requests answered 500, 10% of
//!       updates 409, 10% of writes done but answered 500, every watch cut after 5 s)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use kube::api::{Api, DynamicObject};
use serde_json::Value;
use talos_sim::etcd::Op;
use talos_sim::{SimEvent, Simulator};
use testkit::bench::{audit_events, component_pid, env_number, lines, usage};
use testkit::faults::{FaultProxy, Faults};
use testkit::process::ManagedProcess;
use testkit::{LocalControlPlane, sim_infra, unique_namespace};

#[path = "controlplane/peers.rs"]
mod peers;

fn tcps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    testkit::dynamic_api(
        client,
        ns,
        "controlplane.cluster.x-k8s.io/v1alpha3",
        "TalosControlPlane",
    )
}

/// Available, 3 replicas, etcd healthy.
fn ready(tcp: &DynamicObject) -> bool {
    let s = &tcp.data["status"];
    let cond = |t: &str| {
        s["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    s["replicas"] == 3 && cond("Available") && cond("EtcdClusterHealthy")
}

/// How long a bench waits for a step (a rollout of ten clusters) before it fails.
const STEP: Duration = Duration::from_secs(1800);

async fn wait_ready(client: &kube::Client, ns: &str, names: &[String]) {
    let api = tcps(client, ns);
    let ready_count = async || {
        let list = api.list(&Default::default()).await.unwrap();
        names
            .iter()
            .filter(|n| {
                list.items
                    .iter()
                    .any(|t| &t.metadata.name.clone().unwrap_or_default() == *n && ready(t))
            })
            .count()
    };
    let explain = async || format!("{} ready", ready_count().await);
    testkit::eventually_explained(
        &format!("{} control planes ready", names.len()),
        STEP,
        async || (ready_count().await == names.len()).then_some(()),
        explain,
    )
    .await;
}

/// The Cluster a Machine belongs to (its cluster-name label).
fn cluster_of(machine: &DynamicObject) -> Option<&String> {
    machine
        .metadata
        .labels
        .as_ref()?
        .get("cluster.x-k8s.io/cluster-name")
}

fn received(event: &Value) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp =
        event["requestReceivedTimestamp"].as_str()?.parse().ok()?;
    Some(SystemTime::from(ts))
}

/// When the controller's `verbs` on Machines completed, per cluster (audit events).
fn machine_writes(events: &[Value], verbs: &[&str]) -> BTreeMap<String, Vec<SystemTime>> {
    let mut by_cluster: BTreeMap<String, Vec<SystemTime>> = BTreeMap::new();
    for e in events.iter().filter(|e| {
        e["verb"].as_str().is_some_and(|v| verbs.contains(&v))
            && e["objectRef"]["resource"] == "machines"
            && e["stage"] == "ResponseComplete"
    }) {
        let name = e["objectRef"]["name"]
            .as_str()
            .or_else(|| e["responseObject"]["metadata"]["name"].as_str())
            .unwrap_or_default();
        // Machine names are `<cluster>-<5 characters>`.
        let cluster = name
            .rsplit_once('-')
            .map(|(c, _)| c.to_owned())
            .unwrap_or_default();
        if let Some(t) = received(e) {
            by_cluster.entry(cluster).or_default().push(t);
        }
    }
    by_cluster
}

/// Reaction times (seconds) of one cluster: node up → etcd bootstrap, and each healthy voter →
/// the next machine created by the controller.
fn gates(
    sim: &Simulator,
    id: &str,
    node_up: &BTreeMap<String, SystemTime>,
    creates: &[SystemTime],
) -> (Vec<f64>, Vec<f64>) {
    let history = sim.etcd_history(id);
    let secs =
        |from: SystemTime, to: SystemTime| to.duration_since(from).map_or(0.0, |d| d.as_secs_f64());
    let mut up = Vec::new();
    if let Some(b) = history.iter().find(|c| c.op == Op::Bootstrap)
        && let Some(t) = node_up.get(&b.node)
    {
        up.push(secs(*t, b.at));
    }
    // A member is a healthy voter at bootstrap (the first) or at its promotion.
    let voters: Vec<SystemTime> = history
        .iter()
        .filter(|c| matches!(c.op, Op::Bootstrap | Op::Promote))
        .map(|c| c.at)
        .collect();
    let mut healthy = Vec::new();
    for v in voters.iter().take(voters.len().saturating_sub(1)) {
        if let Some(next) = creates.iter().filter(|c| *c >= v).min() {
            healthy.push(secs(*v, *next));
        }
    }
    (up, healthy)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

struct Phase {
    clusters: usize,
    seconds: f64,
    cpu: f64,
    rss: f64,
    requests: usize,
    talos: u64,
    node_up: Vec<f64>,
    healthy: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    cp: &LocalControlPlane,
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    stamps: &FirstUp,
    pid: u32,
    prefix: &str,
    clusters: usize,
) -> Phase {
    let audit = cp.audit_log_path();
    let offset = lines(&audit);
    let talos0 = sim.requests();
    let cpu0 = usage(pid).0;
    let names: Vec<String> = (0..clusters).map(|i| format!("{prefix}-{i}")).collect();
    let started = Instant::now();
    join_all(
        names
            .iter()
            .map(|n| sim_infra::control_plane_cluster(client, ns, n, 3, ("10.0.0.10", 6443))),
    )
    .await
    .into_iter()
    .for_each(|r| r.unwrap());
    wait_ready(client, ns, &names).await;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, rss) = usage(pid);
    let events = audit_events(&audit, offset, "talos-capi/");
    let creates_by_cluster = machine_writes(&events, &["create"]);
    let node_up = stamps.lock().unwrap().clone();
    let (mut up, mut healthy) = (Vec::new(), Vec::new());
    for n in &names {
        let id = sim_infra::cluster_id(client, ns, n).await.unwrap();
        let (u, h) = gates(
            sim,
            &id,
            &node_up,
            creates_by_cluster
                .get(n)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        up.extend(u);
        healthy.extend(h);
    }
    Phase {
        clusters,
        seconds,
        cpu: cpu - cpu0,
        rss,
        requests: events.len(),
        talos: sim.requests() - talos0,
        node_up: up,
        healthy,
    }
}

/// A Kubernetes rolling upgrade (v1.35.0 → v1.36.0, maxSurge 1) of the clusters `names`.
struct Rollout {
    clusters: usize,
    seconds: f64,
    cpu: f64,
    requests: usize,
    /// Seconds from each member becoming a healthy voter to the controller's next machine
    /// create or delete of that cluster.
    reactions: Vec<f64>,
}

async fn rollout(
    cp: &LocalControlPlane,
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    pid: u32,
    names: &[String],
) -> Rollout {
    let audit = cp.audit_log_path();
    let offset = lines(&audit);
    let cpu0 = usage(pid).0;
    let mut ids = BTreeMap::new();
    for n in names {
        let id = sim_infra::cluster_id(client, ns, n).await.unwrap();
        ids.insert(n.clone(), (sim.etcd_history(&id).len(), id));
    }
    let started = Instant::now();
    let patch = serde_json::json!({"spec": {"version": "v1.36.0"}});
    for n in names {
        tcps(client, ns)
            .patch(
                n,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
    // Rolled out: every machine of every cluster at v1.36.0, three per cluster, Available.
    let machines = testkit::dynamic_api(client, ns, "cluster.x-k8s.io/v1beta2", "Machine");
    testkit::eventually("every machine at v1.36.0", STEP, async || {
        let all = machines.list(&Default::default()).await.unwrap().items;
        let done = names.iter().all(|n| {
            let mine: Vec<_> = all.iter().filter(|m| cluster_of(m) == Some(n)).collect();
            mine.len() == 3 && mine.iter().all(|m| m.data["spec"]["version"] == "v1.36.0")
        });
        done.then_some(())
    })
    .await;
    wait_ready(client, ns, names).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = usage(pid).0 - cpu0;
    let events = audit_events(&audit, offset, "talos-capi/");
    let actions = machine_writes(&events, &["create", "delete"]);
    let mut reactions = Vec::new();
    for (n, (from, id)) in &ids {
        let history = sim.etcd_history(id);
        let acts = actions.get(n).map(Vec::as_slice).unwrap_or_default();
        for promoted in history[*from..].iter().filter(|c| c.op == Op::Promote) {
            if let Some(next) = acts.iter().filter(|t| **t >= promoted.at).min() {
                reactions.push(
                    next.duration_since(promoted.at)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
            }
        }
    }
    Rollout {
        clusters: names.len(),
        seconds,
        cpu,
        requests: events.len(),
        reactions,
    }
}

/// An in-place Talos upgrade (talosUpgrade v1.13.1) of the clusters `names`.
struct Upgrade {
    clusters: usize,
    seconds: f64,
    cpu: f64,
    requests: usize,
    talos: u64,
    /// Seconds from each node coming back up to the controller's next Machine patch of that
    /// cluster.
    reactions: Vec<f64>,
}

async fn talos_upgrade(
    cp: &LocalControlPlane,
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    ups: &EveryUp,
    pid: u32,
    names: &[String],
) -> Upgrade {
    let audit = cp.audit_log_path();
    let offset = lines(&audit);
    let cpu0 = usage(pid).0;
    let talos0 = sim.requests();
    let started = Instant::now();
    let since = SystemTime::now();
    let patch = serde_json::json!({"spec": {"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1"}}});
    for n in names {
        tcps(client, ns)
            .patch(
                n,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
    // Upgraded: every node of every cluster on v1.13.1, no upgrade under way, Available.
    let machines = testkit::dynamic_api(client, ns, "cluster.x-k8s.io/v1beta2", "Machine");
    let upgraded = async || {
        let all = machines.list(&Default::default()).await.unwrap().items;
        let mine: Vec<_> = all
            .iter()
            .filter(|m| cluster_of(m).is_some_and(|c| names.contains(c)))
            .collect();
        let nodes: BTreeMap<String, String> = mine
            .iter()
            .filter_map(|m| {
                let address = m.data["status"]["addresses"][0]["address"].as_str()?;
                Some((address.to_owned(), cluster_of(m)?.clone()))
            })
            .collect();
        let done = mine.len() == 3 * names.len()
            && nodes.len() == mine.len()
            && nodes
                .keys()
                .all(|a| sim.status(a).is_some_and(|(_, v)| v == "v1.13.1"))
            && mine.iter().all(|m| {
                m.metadata
                    .annotations
                    .as_ref()
                    .is_none_or(|a| !a.contains_key("controlplane.cluster.x-k8s.io/talos-upgrade"))
            });
        done.then_some(nodes)
    };
    let nodes = testkit::eventually("every node on v1.13.1", STEP, upgraded).await;
    wait_ready(client, ns, names).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = usage(pid).0 - cpu0;
    let events = audit_events(&audit, offset, "talos-capi/");
    let patches = machine_writes(&events, &["patch"]);
    let mut reactions = Vec::new();
    for (address, at) in ups.lock().unwrap().iter().filter(|(_, at)| *at >= since) {
        let Some(cluster) = nodes.get(address) else {
            continue;
        };
        let acts = patches.get(cluster).map(Vec::as_slice).unwrap_or_default();
        if let Some(next) = acts.iter().filter(|t| *t >= at).min() {
            reactions.push(next.duration_since(*at).map_or(0.0, |d| d.as_secs_f64()));
        }
    }
    Upgrade {
        clusters: names.len(),
        seconds,
        cpu,
        requests: events.len(),
        talos: sim.requests() - talos0,
        reactions,
    }
}

/// `talos-capi manager` for namespace `ns`, with the environment of its image (the Dockerfile's
/// `MALLOC_ARENA_MAX=2`); BENCH_LOG (e.g. controller=debug) for a closer look, with BENCH_DIR.
fn start_manager(kubeconfig: &Path, ns: &str, log: &Path) -> ManagedProcess {
    let binary = talos_capi_benches::manager_binary();
    let args = vec![
        "MALLOC_ARENA_MAX=2".to_owned(),
        binary.display().to_string(),
        "manager".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={ns}"),
        format!(
            "--log-level={}",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())
        ),
    ];
    ManagedProcess::spawn("talos-capi", Path::new("env"), &args, log, None).unwrap()
}

/// Stamps of the simulator's NodeUp events: when each node first came up, and every time a node
/// came up, stamped as the simulator announces it.
type FirstUp = Arc<Mutex<BTreeMap<String, SystemTime>>>;
type EveryUp = Arc<Mutex<Vec<(String, SystemTime)>>>;

fn record_node_ups(sim: &Simulator) -> (FirstUp, EveryUp) {
    let stamps: FirstUp = Arc::default();
    let ups: EveryUp = Arc::default();
    let mut events = sim.events();
    let (recorder, every) = (Arc::clone(&stamps), Arc::clone(&ups));
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let SimEvent::NodeUp {
                address,
                configured: true,
                ..
            } = e
            {
                let now = SystemTime::now();
                recorder
                    .lock()
                    .unwrap()
                    .entry(address.clone())
                    .or_insert(now);
                every.lock().unwrap().push((address, now));
            }
        }
    });
    (stamps, ups)
}

/// testkit's fault proxy in front of the API server, for BENCH_FAULTS=<seed>.
async fn fault_proxy(cp: &LocalControlPlane, seed: u64) -> FaultProxy {
    FaultProxy::start(
        cp.client().await.unwrap(),
        Faults {
            seed,
            internal_error: 0.1,
            conflict: 0.1,
            lost_reply: 0.1,
            cut_watches_after: Some(Duration::from_secs(5)),
        },
    )
    .await
    .unwrap()
}

/// talos-capi alone: 1, 10 and `clusters` clusters through one manager (only `clusters`, behind
/// the fault proxy, with a fault `seed`).
async fn ours(clusters: usize, seed: Option<u64>) {
    let mut builder = LocalControlPlane::builder().name("bench-cp");
    // BENCH_DIR keeps the logs, including the audit log, for a closer look.
    if let Ok(dir) = std::env::var("BENCH_DIR") {
        builder = builder.dir(dir);
    }
    let cp = builder
        .cluster_api()
        .crds(testkit::tools::repo_root().join("config/crd/bases"))
        .audit_log()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "bench-cp").await.unwrap();
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let (stamps, ups) = record_node_ups(&infra.sim);
    let proxy = match seed {
        Some(seed) => Some(fault_proxy(&cp, seed).await),
        None => None,
    };
    let kubeconfig = match &proxy {
        Some(proxy) => {
            let path = cp.dir().join("faults.kubeconfig");
            proxy.write_kubeconfig(&path).unwrap();
            path
        }
        None => cp.kubeconfig_path(),
    };
    let log = cp.dir().join("talos-capi-manager.log");
    let manager = start_manager(&kubeconfig, &ns, &log);
    let pid = component_pid(manager.pid(), "/talos-capi").await;

    let mut phases = Vec::new();
    let mut rollouts = Vec::new();
    let mut upgrades = Vec::new();
    let sizes: &[(&str, usize)] = if proxy.is_some() {
        &[("many", clusters)]
    } else {
        &[("one", 1), ("ten", 10), ("many", clusters)]
    };
    for &(prefix, n) in sizes {
        let p = phase(&cp, &client, &ns, &infra.sim, &stamps, pid, prefix, n).await;
        eprintln!("{n} clusters ready in {:.1} s", p.seconds);
        phases.push(p);
        if n <= 10 {
            let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
            let r = rollout(&cp, &client, &ns, &infra.sim, pid, &names).await;
            eprintln!("{n} clusters rolled out in {:.1} s", r.seconds);
            rollouts.push(r);
            let u = talos_upgrade(&cp, &client, &ns, &infra.sim, &ups, pid, &names).await;
            eprintln!("{n} clusters upgraded in place in {:.1} s", u.seconds);
            upgrades.push(u);
        }
    }
    print_phases(&mut phases);
    print_rollouts(&mut rollouts);
    print_upgrades(&mut upgrades);
    drop(manager);
    match (&proxy, seed) {
        (Some(proxy), Some(seed)) => {
            faults_report(proxy, seed, &client, &ns, &infra.sim, clusters).await
        }
        _ => workload_cost(&cp).await,
    }
}

fn print_phases(phases: &mut [Phase]) {
    println!(
        "TalosControlPlanes of 3 replicas, Cluster API {}, simulated nodes booting in 200 ms",
        std::env::var("CLUSTER_API_VERSION").unwrap_or_else(|_| "(versions.env)".into())
    );
    println!(
        "| clusters | time to all Available | controller CPU | peak RSS | API requests (per cluster) | Talos API calls (per cluster) | node up → bootstrap p50 / p99 | healthy member → next machine p50 / p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for p in phases {
        let n = p.clusters as f64;
        println!(
            "| {} | {:.1} s | {:.1} s | {:.0} MiB | {} ({:.0}) | {} ({:.0}) | {:.2} s / {:.2} s | {:.2} s / {:.2} s |",
            p.clusters,
            p.seconds,
            p.cpu,
            p.rss,
            p.requests,
            p.requests as f64 / n,
            p.talos,
            p.talos as f64 / n,
            percentile(&mut p.node_up, 0.5),
            percentile(&mut p.node_up, 0.99),
            percentile(&mut p.healthy, 0.5),
            percentile(&mut p.healthy, 0.99),
        );
    }
    println!();
}

fn print_rollouts(rollouts: &mut [Rollout]) {
    println!(
        "Kubernetes rolling upgrade v1.35.0 → v1.36.0 (maxSurge 1) of every cluster at once (the real CACPPT's figures: the side-by-side tables)"
    );
    println!(
        "| clusters | time to all rolled out | controller CPU | API requests (per cluster) | healthy member → next machine p50 / p99 | sum of reactions per cluster |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rollouts {
        let n = r.clusters as f64;
        let sum: f64 = r.reactions.iter().sum();
        println!(
            "| {} | {:.1} s | {:.1} s | {} ({:.0}) | {:.2} s / {:.2} s | {:.2} s |",
            r.clusters,
            r.seconds,
            r.cpu,
            r.requests,
            r.requests as f64 / n,
            percentile(&mut r.reactions, 0.5),
            percentile(&mut r.reactions, 0.99),
            sum / n,
        );
    }
    println!();
}

fn print_upgrades(upgrades: &mut [Upgrade]) {
    println!(
        "In-place Talos upgrade v1.13.0 → v1.13.1 (talosUpgrade, one node at a time) of every cluster at once; simulated nodes reboot in 200 ms"
    );
    println!(
        "| clusters | time to all upgraded | controller CPU | API requests (per cluster) | Talos API calls (per cluster) | node back up → next step p50 / p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for u in upgrades {
        let n = u.clusters as f64;
        println!(
            "| {} | {:.1} s | {:.1} s | {} ({:.0}) | {} ({:.0}) | {:.2} s / {:.2} s |",
            u.clusters,
            u.seconds,
            u.cpu,
            u.requests,
            u.requests as f64 / n,
            u.talos,
            u.talos as f64 / n,
            percentile(&mut u.reactions, 0.5),
            percentile(&mut u.reactions, 0.99),
        );
    }
    println!();
}

/// What the fault proxy injected, and that every cluster's etcd was bootstrapped once.
async fn faults_report(
    proxy: &FaultProxy,
    seed: u64,
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    clusters: usize,
) {
    let (forwarded, errors, conflicts, lost, cut) = proxy.counts().snapshot();
    println!(
        "Under faults (seed {seed}): {forwarded} requests forwarded; injected {errors} 500s, {conflicts} 409s, {lost} lost replies, {cut} watches cut"
    );
    let mut twice = Vec::new();
    for i in 0..clusters {
        let name = format!("many-{i}");
        let id = sim_infra::cluster_id(client, ns, &name).await.unwrap();
        let bootstraps = sim
            .etcd_history(&id)
            .iter()
            .filter(|c| c.op == Op::Bootstrap)
            .count();
        if bootstraps != 1 {
            twice.push((name, bootstraps));
        }
    }
    assert!(
        twice.is_empty(),
        "etcd bootstrapped other than once: {twice:?}"
    );
    println!("every cluster's etcd bootstrapped exactly once");
}

/// What one workload cluster's API server costs, served as the test infrastructure serves them
/// (its own prefix on the shared etcd), idle for 10 s after it is ready.
async fn workload_cost(cp: &LocalControlPlane) {
    let workload = LocalControlPlane::builder()
        .name("workload")
        .etcd(cp.etcd(), "/workload/measure")
        .start()
        .await
        .unwrap();
    let lifeline = workload.lifeline_pids()[1];
    let apiserver = component_pid(lifeline, "/kube-apiserver").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, rss) = usage(apiserver);
    println!("One workload kube-apiserver (shared etcd, own prefix), idle: {rss:.0} MiB peak RSS");
    println!();
}

/// The same 1 and 10 clusters through the real CACPPT and CABPT, then through talos-capi, each
/// on a control plane of its own (`peers`).
async fn side_by_side() {
    let dir = |side: &str| {
        std::env::var("BENCH_DIR")
            .ok()
            .map(|d| PathBuf::from(d).join(side))
    };
    let mut figures = peers::run(peers::Side::Peers, dir("cacppt")).await;
    figures.extend(peers::run(peers::Side::TalosCapi, dir("talos-capi")).await);
    peers::print(&figures);
}

fn main() {
    // Built (or found) before anything is timed.
    talos_capi_benches::manager_binary();
    let clusters = env_number("BENCH_CLUSTERS", 100);
    let seed = std::env::var("BENCH_FAULTS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    // BENCH_PEERS=only: only the side-by-side run with the Go providers; BENCH_PEERS=skip:
    // without it (it is skipped under BENCH_FAULTS too).
    let peers = std::env::var("BENCH_PEERS").unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        if peers != "only" {
            ours(clusters, seed).await;
        }
        if peers != "skip" && seed.is_none() {
            side_by_side().await;
        }
    });
}
