//! `make demo`: the whole product on this machine, with real components and simulated Talos
//! nodes.
//! 1. A local management cluster: etcd, kube-apiserver and the Cluster API core manager, with
//!    talos-capi's CRDs.
//! 2. `talos-capi manager` as a process, and the test infrastructure provider, which boots a
//!    simulated Talos node per machine and gives the cluster a real workload kube-apiserver.
//! 3. The seeds' HA topology: 3 control planes (with the Spanish walkthrough's VIP patch) and 3
//!    workers from a MachineDeployment and a TalosConfigTemplate. Live progress, then
//!    `kubectl get` of what was made, and the talosconfig and kubeconfig to keep using.
//! 4. A Kubernetes rolling upgrade, then an in-place Talos upgrade, both with live progress.
//!
//! `--keep` leaves everything running until Ctrl-C or `make down`.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use testkit::process::{ManagedProcess, free_port};
use testkit::tools::{Tool, locate, repo_root};
use testkit::{LocalControlPlane, apply_manifest, dynamic_api, sim_infra};

const NS: &str = "demo";
const CLUSTER: &str = "mi-cluster";
const CP: &str = "mi-cluster-cp";
const FIRST: &str = "v1.35.0";
const NEXT: &str = "v1.36.0";
/// The Talos release the machines boot (their image's), on the v1.14 configuration contract…
const TALOS_FIRST: &str = "v1.14.0";
/// …and the one they are upgraded to in place, from the Image Factory's installer with no
/// customization.
const TALOS_NEXT: &str = "v1.14.1";
const INSTALLER: &str = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

#[derive(Parser)]
#[command(about = "The talos-capi demo: an HA Talos cluster, then live upgrades")]
struct Args {
    /// Where the management cluster, logs, kubeconfig and talosconfig go.
    #[arg(long, default_value = "target/demo")]
    dir: PathBuf,
    /// The talos-capi binary to run as the manager.
    #[arg(long, default_value = "target/debug/talos-capi")]
    talos_capi: PathBuf,
    /// Keep everything running at the end, until Ctrl-C or `make down`.
    #[arg(long)]
    keep: bool,
    /// Run the manager at debug level and, at the end, search its log, the Events, every
    /// object's status and metadata and its metrics for every secret the cluster holds; fail
    /// on any hit.
    #[arg(long)]
    scan_secrets: bool,
    /// Restart the management cluster's kube-apiserver (down 5 s) during the bootstrap, the
    /// rolling upgrade and the Talos upgrade; at the end, check that the manager is still running,
    /// etcd was bootstrapped once, quorum was kept, and the bundle and kubeconfig were written once.
    #[arg(long)]
    faults: bool,
    /// With --faults: also SIGKILL the manager (and start it again) once per phase, at a point
    /// drawn from this seed.
    #[arg(long)]
    kill_seed: Option<u64>,
}

type Failure = String;

fn fail(what: &str) -> impl FnOnce(String) -> Failure + '_ {
    move |e| format!("{what}: {e}")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\ndemo failed: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let root = repo_root();
    let dir = root.join(&args.dir);
    let binary = root.join(&args.talos_capi);
    if !binary.is_file() {
        return Err(format!(
            "{} is missing: build it with `cargo build -p talos-capi` (make demo does)",
            binary.display()
        ));
    }
    let pid_file = dir.join("demo.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file)
        && Path::new(&format!("/proc/{}", pid.trim())).exists()
    {
        return Err(format!(
            "a demo is already running (pid {}): `make down` stops it",
            pid.trim()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(&pid_file, std::process::id().to_string())
        .map_err(|e| format!("writing {}: {e}", pid_file.display()))?;
    let result = demo(&args, &dir, &binary).await;
    let _ = std::fs::remove_file(&pid_file);
    result
}

async fn demo(args: &Args, dir: &Path, binary: &Path) -> Result<(), Failure> {
    let started = Instant::now();
    step("A local management cluster: etcd, kube-apiserver and Cluster API core");
    let _ = std::fs::remove_dir_all(dir.join("cluster"));
    let mut cp = with_spinner(
        "starting etcd, kube-apiserver and the Cluster API manager",
        LocalControlPlane::builder()
            .name("demo")
            .dir(dir.join("cluster"))
            .cluster_api()
            .crds(repo_root().join("config/crd/bases"))
            .start(),
    )
    .await
    .map_err(|e| format!("starting the local management cluster: {e}"))?;
    let client = cp.client().await.map_err(|e| e.to_string())?;
    let kubeconfig = cp.kubeconfig_path();
    println!(
        "management cluster: {}  (kubeconfig {})",
        cp.url(),
        kubeconfig.display()
    );
    create_namespace(&client).await?;

    step("talos-capi manager, and simulated Talos nodes behind a test infrastructure provider");
    let (metrics, health) = (
        free_port().map_err(|e| e.to_string())?,
        free_port().map_err(|e| e.to_string())?,
    );
    let mut manager_args: Vec<String> = [
        "manager".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={NS}"),
        format!("--metrics-bind-address=127.0.0.1:{metrics}"),
        format!("--health-probe-bind-address=127.0.0.1:{health}"),
    ]
    .into();
    if args.scan_secrets {
        manager_args.push("--log-level=debug".to_owned());
    }
    let manager_log = dir.join("talos-capi-manager.log");
    let _ = std::fs::remove_file(&manager_log);
    let mut manager =
        ManagedProcess::spawn("talos-capi", binary, &manager_args, &manager_log, None)
            .map_err(|e| format!("starting the manager: {e}"))?;
    println!(
        "manager: pid {}, log {}, metrics http://127.0.0.1:{metrics}/metrics",
        manager.pid(),
        manager_log.display()
    );
    let infra =
        sim_infra::start_with_workloads_in(&client, NS, &["zone-a", "zone-b", "zone-c"], cp.etcd());
    // Every control-plane node that ever came up, from the simulator's own events: a machine
    // deleted or created once too often shows as one node too many.
    let booted = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let counter = {
        let mut events = infra.sim.events();
        let booted = Arc::clone(&booted);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(talos_sim::SimEvent::NodeUp {
                        address, hostname, ..
                    }) if hostname.starts_with(&format!("{CP}-")) => {
                        booted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(address);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        })
    };

    step("The seeds' HA topology: 3 control planes behind an endpoint, 3 workers");
    let port = free_port().map_err(|e| e.to_string())?;
    for manifest in topology(port) {
        apply_manifest(&client, NS, "demo", &manifest)
            .await
            .map_err(|e| format!("applying {}: {e}", manifest["kind"]))?;
        println!(
            "applied {} {}",
            manifest["kind"].as_str().unwrap_or_default(),
            manifest["metadata"]["name"].as_str().unwrap_or_default()
        );
    }
    let view = View {
        client: client.clone(),
        sim: infra.sim.clone(),
    };
    let mut faults = Faults {
        seed: args.kill_seed,
        state: args.kill_seed,
        manager: (binary.to_owned(), manager_args.clone(), manager_log.clone()),
        ..Faults::default()
    };
    if args.faults {
        progress("first machine", Duration::from_secs(120), async || {
            let s = view.snapshot().await;
            (s.cp_total >= 1, s.line())
        })
        .await?;
        faults.strike(&mut manager, &mut cp, "bootstrap", 8).await?;
    }
    progress("cluster up", Duration::from_secs(300), async || {
        let s = view.snapshot().await;
        let done = s.cp_running == 3 && s.workers_running == 3 && s.voters == 3 && s.etcd_healthy;
        (done, s.line())
    })
    .await?;
    manager.check_running().map_err(|e| e.to_string())?;
    let written_once = WrittenOnce::read(&client).await?;

    step("What was made");
    kubectl(
        &kubeconfig,
        &[
            "get",
            "cluster,taloscontrolplane,machines,talosconfigs",
            "-n",
            NS,
        ],
    );
    let talosconfig = dir.join("talosconfig");
    let workload = dir.join(format!("{CLUSTER}.kubeconfig"));
    write_private(
        &talosconfig,
        &secret(&client, &format!("{CLUSTER}-talosconfig"), "talosconfig").await?,
    )?;
    write_private(
        &workload,
        &secret(&client, &format!("{CLUSTER}-kubeconfig"), "value").await?,
    )?;
    let node = view.first_control_plane_address().await.unwrap_or_default();
    println!(
        "\ntalosconfig: {}\nkubeconfig:  {}",
        talosconfig.display(),
        workload.display()
    );
    let talosctl = locate(Tool::Talosctl114).map_err(|e| e.to_string())?;
    // The real talosctl, with the cluster's talosconfig, at one node.
    let talos = |node: &str, command: &[&str]| {
        let config = talosconfig.to_string_lossy();
        let mut args = vec!["--talosconfig", &config, "-e", node, "-n", node];
        args.extend_from_slice(command);
        run_shown(&talosctl, &args);
    };
    talos(&node, &["etcd", "members"]);
    kubectl(&workload, &["get", "nodes", "-o", "wide"]);

    step(&format!(
        "Kubernetes rolling upgrade {FIRST} → {NEXT} (maxSurge 1: never more than 4 control planes)"
    ));
    patch_control_plane(&client, json!({"version": NEXT})).await?;
    if args.faults {
        progress("surge machine", Duration::from_secs(120), async || {
            let s = view.snapshot().await;
            (s.cp_total > 3, s.line())
        })
        .await?;
        faults
            .strike(&mut manager, &mut cp, "rolling upgrade", 10)
            .await?;
    }
    progress("rolling upgrade", Duration::from_secs(600), async || {
        let s = view.snapshot().await;
        let done =
            s.cp_on(NEXT) == 3 && s.cp_total == 3 && s.voters == 3 && s.etcd_healthy && !s.rolling;
        (
            done,
            format!(
                "{} of 3 control planes on {NEXT}; {}",
                s.cp_on(NEXT),
                s.line()
            ),
        )
    })
    .await?;

    step(&format!(
        "In-place Talos upgrade to {TALOS_NEXT}, node by node, over the Talos API"
    ));
    patch_control_plane(
        &client,
        json!({"talosUpgrade": {"image": format!("{INSTALLER}:{TALOS_NEXT}")}}),
    )
    .await?;
    if args.faults {
        faults
            .strike(&mut manager, &mut cp, "Talos upgrade", 3)
            .await?;
    }
    progress("Talos upgrade", Duration::from_secs(600), async || {
        let s = view.snapshot().await;
        let upgraded = s.talos_versions.iter().filter(|v| *v == TALOS_NEXT).count();
        let done = upgraded == 3 && s.voters == 3 && s.etcd_healthy && !s.rolling;
        (
            done,
            // The counts alone: the control plane's own condition says the same "n of 3".
            format!(
                "{upgraded} of 3 control-plane nodes on Talos {TALOS_NEXT}; {}",
                s.counts()
            ),
        )
    })
    .await?;
    // The first node was replaced by the rolling upgrade: ask one that runs now.
    let node = view.first_control_plane_address().await.unwrap_or_default();
    talos(&node, &["version", "--short"]);
    kubectl(
        &kubeconfig,
        &["get", "taloscontrolplane,machines", "-n", NS],
    );
    step("The Cluster");
    progress("Cluster Available", Duration::from_secs(300), async || {
        let available = cluster_condition(&client, "Available").await;
        (
            available.as_deref() == Some("True"),
            format!(
                "Cluster {CLUSTER} Available: {}",
                available.as_deref().unwrap_or("unknown")
            ),
        )
    })
    .await?;
    kubectl(&kubeconfig, &["get", "cluster", "-n", NS]);
    if args.faults {
        scale_under_fire(&client, &view, &mut faults, &mut manager, &mut cp).await?;
    }
    println!("\ndemo done in {:.0} s", started.elapsed().as_secs_f64());
    if args.faults {
        step("After the faults");
        manager.check_running().map_err(|e| e.to_string())?;
        written_once.check(&client).await?;
        check_etcd_history(&client, &view.sim).await?;
        println!(
            "{} kube-apiserver restarts ({}) and {} manager kills{} survived: the manager needed no restart beyond the kills, etcd was bootstrapped once and kept quorum, the bundle and kubeconfig were written once",
            faults.restarts.len(),
            faults.restarts.join(", "),
            faults.kills.len(),
            match faults.seed {
                Some(seed) => format!(" (seed {seed}: {})", faults.kills.join(", ")),
                None => String::new(),
            }
        );
    }
    if args.scan_secrets {
        step("Secrets scan: the manager's debug log, Events, objects and metrics");
        scan_secrets(&client, &manager_log, metrics, dir).await?;
    }
    if args.faults {
        delete_under_fire(&client, &view, &mut faults, &mut manager, &mut cp).await?;
        counter.abort();
        // 3 at first, 3 by the rolling upgrade, 2 by the scale-up: a machine deleted or
        // replaced once too often would have booted one more.
        let booted = booted.lock().unwrap_or_else(|e| e.into_inner()).len();
        if booted != 8 {
            return Err(format!(
                "{booted} control-plane nodes came up over the run, where 8 machines were asked for: a machine was deleted or created once too often"
            ));
        }
        manager.check_running().map_err(|e| e.to_string())?;
        println!(
            "deleted under fire: no Machine, cluster Secret or node left; 8 control-plane machines over the run, none deleted or created twice; {} kube-apiserver restarts and {} manager kills in all",
            faults.restarts.len(),
            faults.kills.len()
        );
    }

    if args.keep {
        step("Everything keeps running (Ctrl-C or `make down` stops it)");
        println!(
            "kubectl --kubeconfig {} get machines -n {NS}",
            kubeconfig.display()
        );
        println!("kubectl --kubeconfig {} get nodes", workload.display());
        println!(
            "talosctl --talosconfig {} -e {node} -n {node} etcd members",
            talosconfig.display()
        );
        wait_for_stop().await;
    }
    drop(infra);
    drop(manager);
    Ok(())
}

/// Scale the control plane 3 → 5 → 3 with a manager kill and a kube-apiserver restart in each
/// direction; then no etcd member may be left without its machine.
async fn scale_under_fire(
    client: &kube::Client,
    view: &View,
    faults: &mut Faults,
    manager: &mut ManagedProcess,
    cp: &mut LocalControlPlane,
) -> Result<(), Failure> {
    for (to, phase) in [(5, "scale-up"), (3, "scale-down")] {
        step(&format!("Scale the control plane to {to} under fire"));
        patch_control_plane(client, json!({"replicas": to})).await?;
        faults.strike(manager, cp, phase, 4).await?;
        progress(phase, Duration::from_secs(300), async || {
            let s = view.snapshot().await;
            let done = s.cp_total == to && s.cp_running == to && s.voters == to && s.etcd_healthy;
            (done, s.line())
        })
        .await?;
    }
    // Every member on the node of a machine that exists: none orphaned by the scale-down.
    let id = sim_infra::cluster_id(client, NS, CLUSTER)
        .await
        .ok_or("the cluster has no id")?;
    let live = view.control_plane_addresses().await;
    let members = view.sim.etcd_members(&id);
    if let Some((node, member, _)) = members.iter().find(|(node, ..)| !live.contains(node)) {
        return Err(format!(
            "etcd member {member:x} on {node} has no machine after the scale-down"
        ));
    }
    Ok(())
}

/// Delete the Cluster with a manager kill and a kube-apiserver restart on the way; then nothing
/// of it may be left: no Machine, no cluster Secret, no running node.
async fn delete_under_fire(
    client: &kube::Client,
    view: &View,
    faults: &mut Faults,
    manager: &mut ManagedProcess,
    cp: &mut LocalControlPlane,
) -> Result<(), Failure> {
    step("Delete the cluster under fire");
    dynamic_api(client, NS, "cluster.x-k8s.io/v1beta2", "Cluster")
        .delete(CLUSTER, &Default::default())
        .await
        .map(drop)
        .map_err(|e| format!("deleting Cluster {CLUSTER}: {e}"))?;
    faults.strike(manager, cp, "deletion", 4).await?;
    progress("deletion", Duration::from_secs(300), async || {
        let s = view.snapshot().await;
        let kept = secrets_kept(client).await;
        let nodes = view.sim.nodes().len();
        let done = s.cp_total == 0 && s.workers_total == 0 && kept == 0 && nodes == 0;
        (
            done,
            format!(
                "{} control planes, {} workers, {kept} cluster Secrets kept, {nodes} nodes left",
                s.cp_total, s.workers_total
            ),
        )
    })
    .await
}

/// The cluster's Secrets that nothing would delete: without an owner, or with one that still
/// exists. (Secrets go with their owners through the garbage collector of
/// kube-controller-manager, which the local control plane does not run.)
async fn secrets_kept(client: &kube::Client) -> usize {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let of_cluster =
        ListParams::default().labels(&format!("cluster.x-k8s.io/cluster-name={CLUSTER}"));
    let Ok(list) = secrets.list(&of_cluster).await else {
        return usize::MAX;
    };
    let mut kept = 0;
    for secret in &list.items {
        let owners = secret.metadata.owner_references.clone().unwrap_or_default();
        let mut alive = owners.is_empty();
        for owner in &owners {
            let api = dynamic_api(client, NS, &owner.api_version, &owner.kind);
            alive |= api.get_opt(&owner.name).await.map_or(true, |o| {
                o.is_some_and(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str()))
            });
        }
        kept += usize::from(alive);
    }
    kept
}

/// What the demo watches: machines, the control plane's status, and the simulator's etcd.
struct View {
    client: kube::Client,
    sim: talos_sim::Simulator,
}

#[derive(Default)]
struct Snapshot {
    cp_total: usize,
    cp_running: usize,
    cp_versions: Vec<String>,
    workers_running: usize,
    workers_total: usize,
    voters: usize,
    etcd_healthy: bool,
    rolling: bool,
    talos_versions: Vec<String>,
    waiting: String,
}

impl Snapshot {
    fn cp_on(&self, version: &str) -> usize {
        self.cp_versions.iter().filter(|v| *v == version).count()
    }

    /// Machines and etcd, without the condition that waits.
    fn counts(&self) -> String {
        format!(
            "control planes {}/{} running, workers {}/{} running, etcd {} voter(s){}",
            self.cp_running,
            self.cp_total,
            self.workers_running,
            self.workers_total,
            self.voters,
            if self.etcd_healthy { " healthy" } else { "" }
        )
    }

    /// Machines, etcd, and the condition that waits, if any.
    fn line(&self) -> String {
        let mut line = self.counts();
        if !self.waiting.is_empty() {
            line.push_str(&format!(" — {}", self.waiting));
        }
        line
    }
}

impl View {
    async fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        let machines = dynamic_api(&self.client, NS, "cluster.x-k8s.io/v1beta2", "Machine");
        for m in machines
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let running = m.data["status"]["phase"] == "Running";
            if m.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("cluster.x-k8s.io/control-plane"))
            {
                s.cp_total += 1;
                s.cp_running += usize::from(running);
                s.cp_versions.push(
                    m.data["spec"]["version"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            } else {
                s.workers_total += 1;
                s.workers_running += usize::from(running);
            }
        }
        let tcps = dynamic_api(
            &self.client,
            NS,
            "controlplane.cluster.x-k8s.io/v1alpha3",
            "TalosControlPlane",
        );
        if let Ok(tcp) = tcps.get(CP).await {
            let conditions = tcp.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let condition = |t: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == t)
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            s.etcd_healthy = condition("EtcdClusterHealthy")["status"] == "True";
            let rolling = condition("RollingOut");
            s.rolling = rolling["status"] == "True";
            for t in ["RollingOut", "ScalingUp", "ScalingDown", "Available"] {
                let c = condition(t);
                let waiting = (t == "Available") != (c["status"] == "True");
                if waiting && let Some(message) = c["message"].as_str().filter(|m| !m.is_empty()) {
                    s.waiting = format!("{t}: {}", message.lines().next().unwrap_or_default());
                    break;
                }
            }
        }
        if let Some(id) = sim_infra::cluster_id(&self.client, NS, CLUSTER).await {
            s.voters = self
                .sim
                .etcd_members(&id)
                .iter()
                .filter(|(_, _, learner)| !learner)
                .count();
        }
        for address in self.sim.nodes() {
            if let Some((_, version)) = self.sim.status(&address) {
                s.talos_versions.push(version);
            }
        }
        s
    }

    /// The addresses of the control-plane machines that exist now.
    async fn control_plane_addresses(&self) -> Vec<String> {
        let machines = dynamic_api(&self.client, NS, "cluster.x-k8s.io/v1beta2", "Machine");
        let list = machines
            .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.iter()
            .filter_map(|m| m.data["status"]["addresses"][0]["address"].as_str())
            .map(str::to_owned)
            .collect()
    }

    async fn first_control_plane_address(&self) -> Option<String> {
        self.control_plane_addresses().await.into_iter().next()
    }
}

/// Talos 1.14's install document: the machines' installer and disk.
fn install_patch() -> String {
    format!(
        "apiVersion: v1alpha1\nkind: UnattendedInstallConfig\ninstaller:\n  image: {INSTALLER}:{TALOS_FIRST}\nprovisioning:\n  diskSelector:\n    match: disk.dev_path == \"/dev/sda\"\n"
    )
}

/// The seeds' HA cluster on the test infrastructure provider, its endpoint on loopback `port`
/// (where the provider serves its real workload kube-apiserver).
fn topology(port: u16) -> Vec<Value> {
    let infra = "infrastructure.cluster.x-k8s.io/v1alpha1";
    vec![
        json!({"apiVersion": infra, "kind": "SimCluster", "metadata": {"name": CLUSTER}, "spec": {}}),
        json!({"apiVersion": infra, "kind": "SimMachineTemplate", "metadata": {"name": CP}, "spec": {"template": {"spec": {"talosVersion": TALOS_FIRST}}}}),
        json!({"apiVersion": infra, "kind": "SimMachineTemplate", "metadata": {"name": "mi-cluster-workers"}, "spec": {"template": {"spec": {"talosVersion": TALOS_FIRST}}}}),
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
            "metadata": {"name": CP},
            "spec": {
                "replicas": 3, "version": FIRST,
                "infrastructureTemplate": {"apiVersion": infra, "kind": "SimMachineTemplate", "name": CP},
                "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "controlPlaneConfig": {"controlplane": {
                    "generateType": "controlplane", "talosVersion": "v1.14",
                    // The Spanish walkthrough's VIP, as a strategic patch valid for Talos v1.14.
                    "strategicPatches": [format!("machine:\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vip:\n          ip: 192.168.1.50\n---\n{}", install_patch())]
                }}
            }
        }),
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
            "metadata": {"name": "mi-cluster-workers"},
            "spec": {"template": {"spec": {
                "generateType": "worker", "talosVersion": "v1.14",
                "strategicPatches": [install_patch()]
            }}}
        }),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": CLUSTER},
            "spec": {
                "controlPlaneEndpoint": {"host": "127.0.0.1", "port": port},
                "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]}, "services": {"cidrBlocks": ["10.96.0.0/12"]}},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": CLUSTER},
                "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "TalosControlPlane", "name": CP}
            }
        }),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": {"name": "mi-cluster-workers"},
            "spec": {
                "clusterName": CLUSTER, "replicas": 3,
                "selector": {"matchLabels": {"pool": "mi-cluster-workers"}},
                "template": {
                    "metadata": {"labels": {"pool": "mi-cluster-workers"}},
                    "spec": {
                        "clusterName": CLUSTER, "version": FIRST,
                        "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfigTemplate", "name": "mi-cluster-workers"}},
                        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": "mi-cluster-workers"}
                    }
                }
            }
        }),
    ]
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// Wait for `future`, showing a spinner with the elapsed time on a terminal.
async fn with_spinner<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut future = std::pin::pin!(future);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            v = &mut future => {
                println!("{}{what}: done in {:.1} s", if tty { "\r\x1b[2K" } else { "" }, started.elapsed().as_secs_f64());
                return v;
            }
            _ = tick.tick() => if tty {
                print!("\r\x1b[2K{} {what} ({:.0} s)", spinner(&started), started.elapsed().as_secs_f64());
                let _ = std::io::stdout().flush();
            }
        }
    }
}

fn spinner(started: &Instant) -> char {
    ['|', '/', '-', '\\'][(started.elapsed().as_millis() / 250 % 4) as usize]
}

/// Poll `check` twice a second until it says done, showing its line live (on a terminal) or
/// each time it changes (in a log), or fail after `limit`.
async fn progress(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> (bool, String),
) -> Result<(), Failure> {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let (done, line) = check().await;
        if tty {
            print!(
                "\r\x1b[2K{} {line} ({:.0} s)",
                spinner(&started),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        } else if line != last {
            println!("[{:>4.0} s] {line}", started.elapsed().as_secs_f64());
        }
        if done {
            println!(
                "{}{what}: done in {:.0} s — {line}",
                if tty { "\r\x1b[2K" } else { "" },
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > limit {
            println!();
            return Err(format!(
                "{what}: not done within {limit:?}; last seen: {line}"
            ));
        }
        last = line;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The faults injected so far, and how to start the manager again after killing it.
#[derive(Default)]
struct Faults {
    restarts: Vec<&'static str>,
    kills: Vec<String>,
    /// Kills are drawn from this seed (none without one); `state` is the sequence's position.
    seed: Option<u64>,
    state: Option<u64>,
    manager: (PathBuf, Vec<String>, PathBuf),
}

impl Faults {
    /// The next number of a xorshift sequence from the seed.
    fn next(&mut self) -> Option<u64> {
        let mut x = self.state?.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = Some(x);
        Some(x)
    }

    /// With a seed: wait a drawn part of `within` seconds, SIGKILL the manager, start it again.
    async fn kill_manager(
        &mut self,
        manager: &mut ManagedProcess,
        during: &str,
        within: u64,
    ) -> Result<(), Failure> {
        let Some(draw) = self.next() else {
            return Ok(());
        };
        let after = Duration::from_millis(draw % (within * 1000));
        tokio::time::sleep(after).await;
        println!(
            "fault: manager SIGKILLed {:.1} s into the {during}",
            after.as_secs_f64()
        );
        manager
            .kill_component()
            .map_err(|e| format!("killing the manager: {e}"))?;
        let (binary, args, log) = &self.manager;
        *manager = ManagedProcess::spawn("talos-capi", binary, args, log, None)
            .map_err(|e| format!("starting the manager again: {e}"))?;
        self.kills
            .push(format!("{:.1} s into the {during}", after.as_secs_f64()));
        Ok(())
    }

    /// A manager kill (see [`Faults::kill_manager`]), then a kube-apiserver restart, during
    /// `during`.
    async fn strike(
        &mut self,
        manager: &mut ManagedProcess,
        cp: &mut LocalControlPlane,
        during: &'static str,
        within: u64,
    ) -> Result<(), Failure> {
        self.kill_manager(manager, during, within).await?;
        self.restart_apiserver(cp, during).await
    }

    async fn restart_apiserver(
        &mut self,
        cp: &mut LocalControlPlane,
        during: &'static str,
    ) -> Result<(), Failure> {
        println!("fault: kube-apiserver killed during the {during}, down for 5 s");
        cp.restart_apiserver(Duration::from_secs(5))
            .await
            .map_err(|e| format!("restarting kube-apiserver: {e}"))?;
        println!("fault: kube-apiserver back");
        self.restarts.push(during);
        Ok(())
    }
}

/// What must be written exactly once: the secrets bundle and the workload kubeconfig, read once
/// the cluster is up and compared at the end.
struct WrittenOnce {
    secrets: Vec<(String, Option<String>, String)>,
}

impl WrittenOnce {
    async fn read(client: &kube::Client) -> Result<WrittenOnce, Failure> {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
        let mut secrets = Vec::new();
        for name in [format!("{CLUSTER}-talos"), format!("{CLUSTER}-kubeconfig")] {
            let secret = api
                .get(&name)
                .await
                .map_err(|e| format!("reading Secret {name}: {e}"))?;
            let data = serde_json::to_string(&secret.data).unwrap_or_default();
            secrets.push((name, secret.metadata.uid, data));
        }
        Ok(WrittenOnce { secrets })
    }

    async fn check(&self, client: &kube::Client) -> Result<(), Failure> {
        let now = WrittenOnce::read(client).await?;
        for (before, after) in self.secrets.iter().zip(&now.secrets) {
            if before != after {
                return Err(format!("Secret {} was written again", before.0));
            }
        }
        Ok(())
    }
}

/// From the simulator's etcd history: bootstrapped once, and no removal lost quorum.
async fn check_etcd_history(
    client: &kube::Client,
    sim: &talos_sim::Simulator,
) -> Result<(), Failure> {
    let id = sim_infra::cluster_id(client, NS, CLUSTER)
        .await
        .ok_or("the cluster has no id")?;
    let history = sim.etcd_history(&id);
    let bootstraps = history
        .iter()
        .filter(|c| c.op == talos_sim::etcd::Op::Bootstrap)
        .count();
    if bootstraps != 1 {
        return Err(format!("etcd was bootstrapped {bootstraps} times"));
    }
    if let Some(lost) = history.iter().find(|c| c.quorum_after == Some(false)) {
        return Err(format!("removing member {} lost quorum", lost.id));
    }
    Ok(())
}

/// Every secret of the namespace's Secrets, searched for in everything the operator emitted.
async fn scan_secrets(
    client: &kube::Client,
    manager_log: &Path,
    metrics: u16,
    dir: &Path,
) -> Result<(), Failure> {
    use k8s_openapi::api::core::v1::Secret;
    use testkit::secrets_scan::{Haystack, Needles};
    let mut needles = Needles::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let list = secrets
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing Secrets: {e}"))?;
    let mut kinds = Vec::new();
    for secret in &list.items {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let text = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let added = if let Some(bundle) = text("bundle") {
            needles.add_bundle(&bundle)
        } else if let Some(config) = text("talosconfig") {
            needles.add_talosconfig(&config)
        } else if name.ends_with("-kubeconfig") {
            needles.add_kubeconfig(&text("value").unwrap_or_default())
        } else {
            continue;
        };
        added.map_err(|e| format!("reading Secret {name}: {e}"))?;
        kinds.push(name);
    }
    if kinds.len() < 3 {
        return Err(format!(
            "the scan needs the bundle, talosconfig and kubeconfig Secrets; found {kinds:?}"
        ));
    }
    let mut haystacks = vec![Haystack {
        name: "manager log".into(),
        text: std::fs::read_to_string(manager_log)
            .map_err(|e| format!("reading {}: {e}", manager_log.display()))?,
    }];
    for (api_version, kind) in [
        ("v1", "Event"),
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        ("cluster.x-k8s.io/v1beta2", "Machine"),
        ("cluster.x-k8s.io/v1beta2", "MachineSet"),
        ("cluster.x-k8s.io/v1beta2", "MachineDeployment"),
        (
            "controlplane.cluster.x-k8s.io/v1alpha3",
            "TalosControlPlane",
        ),
        ("bootstrap.cluster.x-k8s.io/v1alpha3", "TalosConfig"),
        ("bootstrap.cluster.x-k8s.io/v1alpha3", "TalosConfigTemplate"),
    ] {
        let objects = dynamic_api(client, NS, api_version, kind)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing {kind}: {e}"))?;
        haystacks.push(Haystack {
            name: format!("{} {kind} objects", objects.items.len()),
            text: serde_json::to_string(&objects.items).unwrap_or_default(),
        });
    }
    let (_, scraped) = testkit::process::http_get(metrics, "/metrics")
        .await
        .ok_or("scraping the manager's metrics")?;
    haystacks.push(Haystack {
        name: "metrics".into(),
        text: scraped,
    });
    let report = needles.scan(&haystacks);
    let summary = format!(
        "secrets scan: {} bytes in {} haystacks (manager debug log, Events, object status and metadata, metrics) searched for {} secrets ({} fragments) from {} Secrets: {} hits",
        report.bytes,
        report.haystacks,
        report.secrets,
        report.fragments,
        kinds.len(),
        report.hits.len()
    );
    println!("{summary}");
    let _ = std::fs::write(dir.join("secrets-scan.txt"), format!("{summary}\n"));
    if !report.hits.is_empty() {
        let found: Vec<String> = report
            .hits
            .iter()
            .map(|h| format!("{} in the {} at byte {}", h.secret, h.haystack, h.offset))
            .collect();
        return Err(format!("secrets found:\n{}", found.join("\n")));
    }
    Ok(())
}

async fn create_namespace(client: &kube::Client) -> Result<(), Failure> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &PatchParams::apply("demo"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
        )
        .await
        .map(drop)
        .map_err(|e| format!("creating namespace {NS}: {e}"))
}

async fn patch_control_plane(client: &kube::Client, spec: Value) -> Result<(), Failure> {
    let api: Api<DynamicObject> = dynamic_api(
        client,
        NS,
        "controlplane.cluster.x-k8s.io/v1alpha3",
        "TalosControlPlane",
    );
    api.patch(
        CP,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .map(drop)
    .map_err(|e| e.to_string())
    .map_err(fail("patching the TalosControlPlane"))
}

/// The status of the Cluster's condition `type_`, if it has one.
async fn cluster_condition(client: &kube::Client, type_: &str) -> Option<String> {
    let clusters = dynamic_api(client, NS, "cluster.x-k8s.io/v1beta2", "Cluster");
    let cluster = clusters.get_opt(CLUSTER).await.ok()??;
    let conditions = cluster.data["status"]["conditions"].as_array()?.clone();
    conditions
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_owned)
}

async fn secret(client: &kube::Client, name: &str, key: &str) -> Result<String, Failure> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let secret = api
        .get(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| format!("Secret {name} has no {key}"))
}

/// Credentials: mode 0600.
fn write_private(path: &Path, content: &str) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn kubectl(kubeconfig: &Path, args: &[&str]) {
    match locate(Tool::Kubectl) {
        Ok(kubectl) => {
            let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap_or_default()];
            all.extend_from_slice(args);
            run_shown(&kubectl, &all);
        }
        Err(e) => println!("(kubectl: {e})"),
    }
}

/// Run a command, echoing it and its output.
fn run_shown(program: &Path, args: &[&str]) {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("\n$ {name} {}", args.join(" "));
    match std::process::Command::new(program).args(args).output() {
        Ok(o) => {
            print!("{}", String::from_utf8_lossy(&o.stdout));
            print!("{}", String::from_utf8_lossy(&o.stderr));
        }
        Err(e) => println!("({name}: {e})"),
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("\nstopping");
}
