//! The same clusters through the real Go providers and through talos-capi, side by side: 1 and
//! then 10 TalosControlPlanes of 3 replicas brought up and then rolled to a new Kubernetes
//! version (maxSurge 1), once by the real CACPPT v0.5.13 with the real CABPT v0.6.12, once by
//! `talos-capi manager`.
//!
//! Each side runs on a local control plane of its own (CACPPT has no watch filter; it would
//! reconcile our TalosControlPlanes too), started for it and stopped after it, with only its own
//! CRDs, and the test infrastructure provider serving simulated nodes and a real workload API
//! server per cluster: CACPPT counts a replica ready only once its Node is Ready in the
//! workload cluster, and Cluster API sets the Machines' node refs from there. Both sides wait
//! for the same thing: the control plane reports 3 ready replicas, Available and etcd healthy;
//! its 3 Machines run the version and have a Node; the simulator's etcd has 3 voters.
//!
//! Both sides are measured the same way: CPU seconds (utime + stime) and peak RSS (VmHWM) of
//! each provider process from /proc, requests to the management cluster from its audit log by
//! user agent (`cabpt/`, `cacppt/`, `talos-capi/`), and Talos API calls as the simulator serves
//! them. Requests to the workload API servers are not counted (on either side).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use serde_json::Value;
use talos_sim::Simulator;
use testkit::bench::{audit_events, component_pid, env_number, lines, usage};
use testkit::process::{ManagedProcess, free_port};
use testkit::sim_infra::{self, SimInfra};
use testkit::tools::Tool;
use testkit::{LocalControlPlane, unique_namespace};

/// The Kubernetes versions of the bring-up and of the rolling upgrade.
const FROM: &str = "v1.35.0";
const TO: &str = "v1.36.0";

/// Who reconciles the clusters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The real CACPPT v0.5.13 and CABPT v0.6.12.
    Peers,
    TalosCapi,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Peers => "CACPPT v0.5.13 + CABPT v0.6.12",
            Side::TalosCapi => "talos-capi",
        }
    }
}

/// A provider process being measured.
struct Measured {
    /// Its name in the tables, which is also the start of its user agent.
    name: &'static str,
    pid: u32,
    _process: ManagedProcess,
}

/// What one step (bring-up or rolling upgrade of `clusters` clusters) cost one side.
pub struct Figures {
    pub side: Side,
    pub step: &'static str,
    pub clusters: usize,
    pub seconds: f64,
    /// Per process (CABPT and CACPPT; or talos-capi alone): name, CPU seconds in the step, peak
    /// RSS (MiB) since the process started, API requests in the step.
    pub processes: Vec<(&'static str, f64, f64, usize)>,
    pub talos: u64,
    /// How many of the clusters settled within the deadline (BENCH_PEER_DEADLINE), and what
    /// holds the others.
    pub done: usize,
    pub stuck: String,
}

impl Figures {
    pub fn cpu(&self) -> f64 {
        self.processes.iter().map(|p| p.1).sum()
    }

    pub fn rss(&self) -> f64 {
        self.processes.iter().map(|p| p.2).sum()
    }

    pub fn requests(&self) -> usize {
        self.processes.iter().map(|p| p.3).sum()
    }
}

/// Runs `side` through bring-ups and rollouts of 1 and then 10 clusters, on a control plane of
/// its own that is stopped afterwards.
pub async fn run(side: Side, dir: Option<PathBuf>) -> Vec<Figures> {
    let cp = control_plane(side, dir).await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "bench-peers").await.unwrap();
    let processes = start(side, &cp, &ns).await;
    let infra = sim_infra::start_with_workloads_in(&client, &ns, &["a", "b", "c"], cp.etcd());
    let mut figures = Vec::new();
    for (prefix, n) in [("one", 1), ("ten", 10)] {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let mut ids = BTreeMap::new();
        let step = Step {
            cp: &cp,
            client: &client,
            ns: &ns,
            sim: &infra.sim,
            processes: &processes,
        };
        let bring_up = step
            .measure(side, "bring-up", &names, &mut ids, async || {
                let (client, ns) = (&client, ns.as_str());
                let clusters = names.iter().zip(ports(n)).map(|(name, port)| async move {
                    sim_infra::control_plane_cluster(client, ns, name, 3, ("127.0.0.1", port))
                        .await
                        .unwrap();
                });
                join_all(clusters).await;
            })
            .await;
        eprintln!(
            "{}: {} of {n} clusters up in {:.1} s {}",
            side.name(),
            bring_up.done,
            bring_up.seconds,
            bring_up.stuck
        );
        let all_up = bring_up.done == n;
        figures.push(bring_up);
        if !all_up {
            continue;
        }
        let roll = step
            .measure(side, "rolling upgrade", &names, &mut ids, async || {
                let patch = Patch::Merge(serde_json::json!({"spec": {"version": TO}}));
                for name in &names {
                    tcps(&client, &ns)
                        .patch(name, &PatchParams::default(), &patch)
                        .await
                        .unwrap();
                }
            })
            .await;
        eprintln!(
            "{}: {} of {n} clusters rolled in {:.1} s {}",
            side.name(),
            roll.done,
            roll.seconds,
            roll.stuck
        );
        figures.push(roll);
    }
    stop(infra, processes, cp);
    figures
}

/// `n` distinct free ports on loopback, for the clusters' workload API servers.
fn ports(n: usize) -> Vec<u16> {
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < n {
        ports.insert(free_port().unwrap());
    }
    ports.into_iter().collect()
}

/// The side's control plane: the Cluster API core with an audit log, and the side's CRDs.
async fn control_plane(side: Side, dir: Option<PathBuf>) -> LocalControlPlane {
    let mut builder = LocalControlPlane::builder()
        .name(if side == Side::Peers {
            "bench-cacppt"
        } else {
            "bench-talos-capi"
        })
        .cluster_api()
        .audit_log();
    if let Some(dir) = dir {
        builder = builder.dir(dir);
    }
    if side == Side::TalosCapi {
        builder = builder.crds(testkit::tools::repo_root().join("config/crd/bases"));
    }
    let cp = builder.start().await.unwrap();
    if side == Side::Peers {
        let mut crds = testkit::peers::crds(Tool::CabptConfig).unwrap();
        crds.extend(testkit::peers::crds(Tool::CacpptConfig).unwrap());
        testkit::install_crds(&cp.client().await.unwrap(), &crds)
            .await
            .unwrap();
    }
    cp
}

/// The side's provider processes, started and found by their binaries.
async fn start(side: Side, cp: &LocalControlPlane, ns: &str) -> Vec<Measured> {
    match side {
        Side::Peers => {
            // CACPPT's TalosConfigs carry no watch-filter label: CABPT reconciles them all.
            let cabpt = testkit::peers::start_cabpt(cp, "").await.unwrap();
            let cacppt = testkit::peers::start_cacppt(cp).await.unwrap();
            vec![
                measured("cabpt", cabpt).await,
                measured("cacppt", cacppt).await,
            ]
        }
        Side::TalosCapi => {
            let log = cp.dir().join("talos-capi-manager.log");
            let manager = super::start_manager(&cp.kubeconfig_path(), ns, &log);
            vec![measured("talos-capi", manager).await]
        }
    }
}

async fn measured(name: &'static str, process: ManagedProcess) -> Measured {
    let pid = component_pid(process.pid(), &format!("/{name}")).await;
    Measured {
        name,
        pid,
        _process: process,
    }
}

/// Stops the providers first (by their own ids, as their ManagedProcesses are dropped), then
/// the simulated nodes and workload API servers, then the control plane.
fn stop(infra: SimInfra, processes: Vec<Measured>, cp: LocalControlPlane) {
    drop(processes);
    drop(infra);
    drop(cp);
}

/// What a measured step runs against.
struct Step<'a> {
    cp: &'a LocalControlPlane,
    client: &'a kube::Client,
    ns: &'a str,
    sim: &'a Simulator,
    processes: &'a [Measured],
}

impl Step<'_> {
    /// Runs `act`, then waits until the clusters `names` are settled at the step's version;
    /// `ids` caches the clusters' ids (for the simulator's etcd).
    async fn measure(
        &self,
        side: Side,
        step: &'static str,
        names: &[String],
        ids: &mut BTreeMap<String, String>,
        act: impl AsyncFnOnce(),
    ) -> Figures {
        let version = if step == "bring-up" { FROM } else { TO };
        let audit = self.cp.audit_log_path();
        let offset = lines(&audit);
        let talos0 = self.sim.requests();
        let cpu0: Vec<f64> = self.processes.iter().map(|p| usage(p.pid).0).collect();
        let started = Instant::now();
        act().await;
        // A side that wedges (the real CACPPT can, see docs/benchmarks.md) is reported, not
        // waited for.
        let deadline = started + Duration::from_secs(env_number("BENCH_PEER_DEADLINE", 600) as u64);
        let mut done = 0;
        testkit::poll(
            deadline.saturating_duration_since(Instant::now()),
            async || {
                done = self.settled(names, version, ids).await;
                (done == names.len()).then_some(())
            },
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let stuck = if done < names.len() {
            self.stuck(names, version).await
        } else {
            String::new()
        };
        let talos = self.sim.requests() - talos0;
        let events = audit_events(&audit, offset, "");
        eprintln!(
            "{}: {step}: requests by agent {:?}",
            side.name(),
            by_agent(&events)
        );
        let processes = self
            .processes
            .iter()
            .zip(cpu0)
            .map(|(p, cpu0)| {
                let (cpu, rss) = usage(p.pid);
                let agent = format!("{}/", p.name);
                let requests = events
                    .iter()
                    .filter(|e| {
                        e["userAgent"]
                            .as_str()
                            .is_some_and(|a| a.starts_with(&agent))
                    })
                    .count();
                (p.name, cpu - cpu0, rss, requests)
            })
            .collect();
        Figures {
            side,
            step,
            clusters: names.len(),
            seconds,
            processes,
            talos,
            done,
            stuck,
        }
    }

    /// What the clusters not settled at `version` look like: how many have how many
    /// control-plane machines, and how many have etcd bootstrapped.
    async fn stuck(&self, names: &[String], version: &str) -> String {
        let machines = self.machines().await.unwrap_or_default();
        let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
        for name in names {
            let mine: Vec<&DynamicObject> = machines
                .iter()
                .filter(|m| super::cluster_of(m) == Some(name))
                .collect();
            if machines_at(&mine, version) {
                continue;
            }
            let bootstrapped = match sim_infra::cluster_id(self.client, self.ns, name).await {
                Some(id) => self
                    .sim
                    .etcd_history(&id)
                    .iter()
                    .any(|c| c.op == talos_sim::etcd::Op::Bootstrap),
                None => false,
            };
            let shape = format!(
                "{} machines, etcd {}",
                mine.len(),
                if bootstrapped {
                    "bootstrapped"
                } else {
                    "not bootstrapped"
                }
            );
            *shapes.entry(shape).or_default() += 1;
        }
        let shapes: Vec<String> = shapes
            .iter()
            .map(|(shape, n)| format!("{n} with {shape}"))
            .collect();
        shapes.join("; ")
    }

    async fn machines(&self) -> Option<Vec<DynamicObject>> {
        testkit::dynamic_api(self.client, self.ns, "cluster.x-k8s.io/v1beta2", "Machine")
            .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
            .await
            .ok()
            .map(|l| l.items)
    }

    /// How many clusters of `names` are settled at `version`.
    async fn settled(
        &self,
        names: &[String],
        version: &str,
        ids: &mut BTreeMap<String, String>,
    ) -> usize {
        let Ok(tcps) = tcps(self.client, self.ns)
            .list(&ListParams::default())
            .await
        else {
            return 0;
        };
        let Some(machines) = self.machines().await else {
            return 0;
        };
        let mut done = 0;
        for name in names {
            let Some(tcp) = tcps
                .items
                .iter()
                .find(|t| t.metadata.name.as_ref() == Some(name))
            else {
                continue;
            };
            let mine: Vec<&DynamicObject> = machines
                .iter()
                .filter(|m| super::cluster_of(m) == Some(name))
                .collect();
            if !control_plane_ready(&tcp.data["status"]) || !machines_at(&mine, version) {
                continue;
            }
            if !ids.contains_key(name)
                && let Some(id) = sim_infra::cluster_id(self.client, self.ns, name).await
            {
                ids.insert(name.clone(), id);
            }
            let Some(id) = ids.get(name) else {
                continue;
            };
            let members = self.sim.etcd_members(id);
            if members.len() == 3 && members.iter().all(|(_, _, learner)| !learner) {
                done += 1;
            }
        }
        done
    }
}

/// 3 replicas, all ready, Available and etcd healthy (CACPPT names its condition
/// EtcdClusterHealthyCondition).
fn control_plane_ready(status: &Value) -> bool {
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    status["replicas"] == 3
        && status["readyReplicas"] == 3
        && cond("Available")
        && (cond("EtcdClusterHealthy") || cond("EtcdClusterHealthyCondition"))
}

/// Three machines, each at `version` with a Node.
fn machines_at(machines: &[&DynamicObject], version: &str) -> bool {
    machines.len() == 3
        && machines.iter().all(|m| {
            m.data["spec"]["version"] == version && m.data["status"]["nodeRef"].is_object()
        })
}

fn tcps(client: &kube::Client, ns: &str) -> kube::Api<DynamicObject> {
    super::tcps(client, ns)
}

/// Requests by client (the user agent up to its first `/`).
fn by_agent(events: &[Value]) -> BTreeMap<String, usize> {
    let mut by_agent = BTreeMap::new();
    for e in events {
        let agent = e["userAgent"].as_str().unwrap_or("?");
        *by_agent
            .entry(agent.split(['/', ' ']).next().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    by_agent
}

/// The side-by-side tables: each side's figures, then the ratios.
pub fn print(figures: &[Figures]) {
    println!(
        "Side by side: TalosControlPlanes of 3 replicas, brought up ({FROM}) and rolled to {TO} (maxSurge 1), each side on a local control plane of its own with a workload API server per cluster"
    );
    println!(
        "| provider | step | clusters | time | CPU seconds | peak RSS | API requests (per cluster) | Talos API calls (per cluster) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in figures {
        print_row(f);
    }
    println!();
    println!(
        "| (CACPPT + CABPT) / talos-capi | clusters | time | CPU seconds | peak RSS | API requests | Talos API calls |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for peer in figures.iter().filter(|f| f.side == Side::Peers) {
        let Some(ours) = figures.iter().find(|f| {
            f.side == Side::TalosCapi && f.step == peer.step && f.clusters == peer.clusters
        }) else {
            continue;
        };
        let ratio = |a: f64, b: f64| format!("{:.2}×", a / b.max(0.01));
        // Until the deadline, for a side that did not finish: a bound, not a ratio.
        let time = match (peer.done == peer.clusters, ours.done == ours.clusters) {
            (true, true) => ratio(peer.seconds, ours.seconds),
            (false, true) => format!("> {}", ratio(peer.seconds, ours.seconds)),
            (true, false) => format!("< {}", ratio(peer.seconds, ours.seconds)),
            (false, false) => "neither finished".to_owned(),
        };
        println!(
            "| {} | {} | {time} | {} | {} | {} | {} |",
            peer.step,
            peer.clusters,
            ratio(peer.cpu(), ours.cpu()),
            ratio(peer.rss(), ours.rss()),
            ratio(peer.requests() as f64, ours.requests() as f64),
            ratio(peer.talos as f64, ours.talos as f64),
        );
    }
}

/// One side's row: sums, with each process's share where the side has two.
fn print_row(f: &Figures) {
    let n = f.clusters as f64;
    let each = |values: Vec<String>, unit: &str| {
        if values.len() > 1 {
            format!(" ({}{unit})", values.join(" + "))
        } else {
            String::new()
        }
    };
    let cpus = each(
        f.processes.iter().map(|p| format!("{:.1}", p.1)).collect(),
        " s",
    );
    let rsss = each(
        f.processes.iter().map(|p| format!("{:.0}", p.2)).collect(),
        " MiB",
    );
    let reqs = each(f.processes.iter().map(|p| p.3.to_string()).collect(), "");
    let time = if f.done == f.clusters {
        format!("{:.1} s", f.seconds)
    } else {
        format!(
            "not done in {:.0} s: {} of {} settled; {}",
            f.seconds, f.done, f.clusters, f.stuck
        )
    };
    println!(
        "| {} | {} | {} | {time} | {:.1} s{cpus} | {:.0} MiB{rsss} | {} ({:.0}){reqs} | {} ({:.0}) |",
        f.side.name(),
        f.step,
        f.clusters,
        f.cpu(),
        f.rss(),
        f.requests(),
        f.requests() as f64 / n,
        f.talos,
        f.talos as f64 / n,
    );
}
