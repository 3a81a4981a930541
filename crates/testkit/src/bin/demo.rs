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
//!
//! `--static-addresses` (`make demo DEMO_ARGS=--static-addresses`; docs/ipam.md): the same
//! topology with static node addresses from Cluster API IPAM. The management cluster also runs
//! the real in-cluster IPAM provider; an InClusterIPPool `nodes` hands out 127.250.0.10–.29
//! (second octet 250: `talos_sim::loopback_address` uses 20–219); the control planes'
//! `controlPlaneConfig` and the workers' TalosConfigTemplate name it in `addressesFromPools`,
//! and a patch sets eth0 to `((ipam.nodes.address))/((ipam.nodes.prefix))` (a Talos 1.14
//! LinkConfig; the control planes' VIP becomes a Layer2VIPConfig). Each simulated node takes
//! its address from its configuration, as a real Talos node would. After the bring-up and
//! again after the upgrades, the demo checks that every Machine's address is an IPAddress of
//! the pool, that the talosconfig's endpoints are the control planes' addresses, and that the
//! real talosctl reaches every node at its address.
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
    /// Static node addresses from Cluster API IPAM: the real in-cluster IPAM provider runs, an
    /// InClusterIPPool `nodes` hands out 127.250.0.10-127.250.0.29, and every machine's
    /// configuration sets eth0 to its address from the pool; checked on every Machine, the
    /// talosconfig endpoints and the real talosctl.
    #[arg(long)]
    static_addresses: bool,
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
    let cp = management_cluster(args, dir).await?;
    let client = cp.client().await.map_err(|e| e.to_string())?;
    create_namespace(&client).await?;
    step("talos-capi manager, and simulated Talos nodes behind a test infrastructure provider");
    let (manager, manager_args, metrics) = start_manager(args, &cp, dir, binary)?;
    log_infrastructure(dir)?;
    let infra =
        sim_infra::start_with_workloads_in(&client, NS, &["zone-a", "zone-b", "zone-c"], cp.etcd());
    let (counter, booted) = count_control_plane_boots(&infra.sim);
    let mut d = Demo {
        args,
        dir: dir.to_owned(),
        kubeconfig: cp.kubeconfig_path(),
        talosconfig: dir.join("talosconfig"),
        workload: dir.join(format!("{CLUSTER}.kubeconfig")),
        view: View {
            client: client.clone(),
            sim: infra.sim.clone(),
        },
        faults: Faults {
            seed: args.kill_seed,
            state: args.kill_seed,
            manager: (binary.to_owned(), manager_args, dir.join(MANAGER_LOG)),
            ..Faults::default()
        },
        client,
        cp,
        manager,
        metrics,
    };
    d.bring_up().await?;
    let written_once = WrittenOnce::read(&d.client).await?;
    d.what_was_made().await?;
    d.upgrades().await?;
    if args.faults {
        scale_under_fire(&d.client, &d.view, &mut d.faults, &mut d.manager, &mut d.cp).await?;
    }
    println!("\ndemo done in {:.0} s", started.elapsed().as_secs_f64());
    if args.faults {
        d.after_the_faults(&written_once).await?;
    }
    if args.scan_secrets {
        step("Secrets scan: the manager's debug log, Events, objects and metrics");
        let log = d.dir.join(MANAGER_LOG);
        scan_secrets(&d.client, &log, d.metrics, &d.dir).await?;
    }
    if args.faults {
        d.delete_under_fire(counter, &booted).await?;
    }
    if args.keep {
        d.keep().await;
    }
    drop(infra);
    drop(d);
    Ok(())
}

/// The manager's log, in the demo's directory.
const MANAGER_LOG: &str = "talos-capi-manager.log";

/// Step 1: the local management cluster (with the in-cluster IPAM provider for
/// `--static-addresses`).
async fn management_cluster(args: &Args, dir: &Path) -> Result<LocalControlPlane, Failure> {
    step(if args.static_addresses {
        "A local management cluster: etcd, kube-apiserver, Cluster API core and the in-cluster IPAM provider"
    } else {
        "A local management cluster: etcd, kube-apiserver and Cluster API core"
    });
    let _ = std::fs::remove_dir_all(dir.join("cluster"));
    let mut builder = LocalControlPlane::builder()
        .name("demo")
        .dir(dir.join("cluster"))
        .cluster_api()
        .crds(repo_root().join("config/crd/bases"));
    if args.static_addresses {
        builder = builder.ipam_in_cluster();
    }
    let cp = with_spinner(
        "starting etcd, kube-apiserver and the Cluster API manager",
        builder.start(),
    )
    .await
    .map_err(|e| format!("starting the local management cluster: {e}"))?;
    println!(
        "management cluster: {}  (kubeconfig {})",
        cp.url(),
        cp.kubeconfig_path().display()
    );
    if let Some(ipam) = cp.ipam_in_cluster() {
        println!(
            "in-cluster IPAM provider: log {}",
            ipam.log_path().display()
        );
    }
    Ok(cp)
}

/// `talos-capi manager` against the management cluster: the process, its arguments (to start
/// it again after a kill) and its metrics port.
fn start_manager(
    args: &Args,
    cp: &LocalControlPlane,
    dir: &Path,
    binary: &Path,
) -> Result<(ManagedProcess, Vec<String>, u16), Failure> {
    let (metrics, health) = (
        free_port().map_err(|e| e.to_string())?,
        free_port().map_err(|e| e.to_string())?,
    );
    let mut manager_args: Vec<String> = [
        "manager".to_owned(),
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--namespace={NS}"),
        format!("--metrics-bind-address=127.0.0.1:{metrics}"),
        format!("--health-probe-bind-address=127.0.0.1:{health}"),
    ]
    .into();
    if args.scan_secrets {
        manager_args.push("--log-level=debug".to_owned());
    }
    let manager_log = dir.join(MANAGER_LOG);
    let _ = std::fs::remove_file(&manager_log);
    let manager = ManagedProcess::spawn("talos-capi", binary, &manager_args, &manager_log, None)
        .map_err(|e| format!("starting the manager: {e}"))?;
    println!(
        "manager: pid {}, log {}, metrics http://127.0.0.1:{metrics}/metrics",
        manager.pid(),
        manager_log.display()
    );
    Ok((manager, manager_args, metrics))
}

/// The log of the test infrastructure provider and its simulated nodes (a node powered off, an
/// address conflict…): `infrastructure.log` in the demo's directory, at `RUST_LOG` if set.
fn log_infrastructure(dir: &Path) -> Result<(), Failure> {
    let path = dir.join("infrastructure.log");
    let file =
        std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("testkit=info,talos_sim=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    println!("infrastructure (simulated nodes): log {}", path.display());
    Ok(())
}

/// The machines whose control-plane node ever came up (by hostname, the Machine's name), from
/// the simulator's own events: a machine deleted or created once too often shows as one too
/// many. (Not by address: with static addresses, a machine may take over a freed one.)
fn count_control_plane_boots(
    sim: &talos_sim::Simulator,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<BTreeSet<String>>>) {
    let booted = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let mut events = sim.events();
    let seen = Arc::clone(&booted);
    let counter = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(talos_sim::SimEvent::NodeUp { hostname, .. })
                    if hostname.starts_with(&format!("{CP}-")) =>
                {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(hostname);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    (counter, booted)
}

/// The demo's running parts.
struct Demo<'a> {
    args: &'a Args,
    dir: PathBuf,
    client: kube::Client,
    cp: LocalControlPlane,
    manager: ManagedProcess,
    metrics: u16,
    view: View,
    faults: Faults,
    kubeconfig: PathBuf,
    talosconfig: PathBuf,
    /// The workload cluster's kubeconfig.
    workload: PathBuf,
}

impl Demo<'_> {
    /// Step 3: the topology applied, and every machine running.
    async fn bring_up(&mut self) -> Result<(), Failure> {
        step(if self.args.static_addresses {
            "The seeds' HA topology: 3 control planes behind an endpoint, 3 workers, static addresses from an InClusterIPPool"
        } else {
            "The seeds' HA topology: 3 control planes behind an endpoint, 3 workers"
        });
        let port = free_port().map_err(|e| e.to_string())?;
        let mut manifests = Vec::new();
        if self.args.static_addresses {
            manifests.push(static_addresses::pool());
        }
        manifests.extend(topology(port, self.args.static_addresses));
        for manifest in manifests {
            apply_manifest(&self.client, NS, "demo", &manifest)
                .await
                .map_err(|e| format!("applying {}: {e}", manifest["kind"]))?;
            println!(
                "applied {} {}",
                manifest["kind"].as_str().unwrap_or_default(),
                manifest["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
        let view = &self.view;
        if self.args.faults {
            progress("first machine", Duration::from_secs(120), async || {
                let s = view.snapshot().await;
                (s.cp_total >= 1, s.line())
            })
            .await?;
            let (manager, cp) = (&mut self.manager, &mut self.cp);
            self.faults.strike(manager, cp, "bootstrap", 8).await?;
        }
        progress("cluster up", Duration::from_secs(300), async || {
            let s = view.snapshot().await;
            let done =
                s.cp_running == 3 && s.workers_running == 3 && s.voters == 3 && s.etcd_healthy;
            (done, s.line())
        })
        .await?;
        self.manager.check_running().map_err(|e| e.to_string())
    }

    /// Step 4: what was made, the credentials written, the real talosctl and kubectl with them
    /// (and with `--static-addresses`, every node at its address from the pool).
    async fn what_was_made(&self) -> Result<(), Failure> {
        step("What was made");
        kubectl(
            &self.kubeconfig,
            &[
                "get",
                "cluster,taloscontrolplane,machines,talosconfigs",
                "-n",
                NS,
            ],
        );
        let talosconfig = secret(
            &self.client,
            &format!("{CLUSTER}-talosconfig"),
            "talosconfig",
        )
        .await?;
        write_private(&self.talosconfig, &talosconfig)?;
        let kubeconfig = secret(&self.client, &format!("{CLUSTER}-kubeconfig"), "value").await?;
        write_private(&self.workload, &kubeconfig)?;
        println!(
            "\ntalosconfig: {}\nkubeconfig:  {}",
            self.talosconfig.display(),
            self.workload.display()
        );
        let node = self.view.first_control_plane_address().await;
        self.talos(&node.unwrap_or_default(), &["etcd", "members"])?;
        kubectl(&self.workload, &["get", "nodes", "-o", "wide"]);
        if self.args.static_addresses {
            static_addresses::check(self).await?;
        }
        Ok(())
    }

    /// The real talosctl, with the cluster's talosconfig, at one node.
    fn talos(&self, node: &str, command: &[&str]) -> Result<(), Failure> {
        let talosctl = locate(Tool::Talosctl114).map_err(|e| e.to_string())?;
        let config = self.talosconfig.to_string_lossy();
        let mut args = vec!["--talosconfig", &config, "-e", node, "-n", node];
        args.extend_from_slice(command);
        run_shown(&talosctl, &args);
        Ok(())
    }

    /// Steps 5 and 6: a Kubernetes rolling upgrade, an in-place Talos upgrade, then the Cluster
    /// Available.
    async fn upgrades(&mut self) -> Result<(), Failure> {
        self.rolling_upgrade().await?;
        self.talos_upgrade().await?;
        // The first node was replaced by the rolling upgrade: ask one that runs now.
        let node = self.view.first_control_plane_address().await;
        self.talos(&node.unwrap_or_default(), &["version", "--short"])?;
        kubectl(
            &self.kubeconfig,
            &["get", "taloscontrolplane,machines", "-n", NS],
        );
        if self.args.static_addresses {
            // The machines the rolling upgrade made have theirs from the pool too.
            static_addresses::check(self).await?;
        }
        step("The Cluster");
        let client = &self.client;
        progress("Cluster Available", Duration::from_secs(300), async || {
            let available = cluster_condition(client, "Available").await;
            (
                available.as_deref() == Some("True"),
                format!(
                    "Cluster {CLUSTER} Available: {}",
                    available.as_deref().unwrap_or("unknown")
                ),
            )
        })
        .await?;
        kubectl(&self.kubeconfig, &["get", "cluster", "-n", NS]);
        Ok(())
    }

    async fn rolling_upgrade(&mut self) -> Result<(), Failure> {
        step(&format!(
            "Kubernetes rolling upgrade {FIRST} → {NEXT} (maxSurge 1: never more than 4 control planes)"
        ));
        patch_control_plane(&self.client, json!({"version": NEXT})).await?;
        let view = &self.view;
        if self.args.faults {
            progress("surge machine", Duration::from_secs(120), async || {
                let s = view.snapshot().await;
                (s.cp_total > 3, s.line())
            })
            .await?;
            let (manager, cp) = (&mut self.manager, &mut self.cp);
            self.faults
                .strike(manager, cp, "rolling upgrade", 10)
                .await?;
        }
        progress("rolling upgrade", Duration::from_secs(600), async || {
            let s = view.snapshot().await;
            let done = s.cp_on(NEXT) == 3
                && s.cp_total == 3
                && s.voters == 3
                && s.etcd_healthy
                && !s.rolling;
            (
                done,
                format!(
                    "{} of 3 control planes on {NEXT}; {}",
                    s.cp_on(NEXT),
                    s.line()
                ),
            )
        })
        .await
    }

    async fn talos_upgrade(&mut self) -> Result<(), Failure> {
        step(&format!(
            "In-place Talos upgrade to {TALOS_NEXT}, node by node, over the Talos API"
        ));
        let image = format!("{INSTALLER}:{TALOS_NEXT}");
        patch_control_plane(&self.client, json!({"talosUpgrade": {"image": image}})).await?;
        if self.args.faults {
            let (manager, cp) = (&mut self.manager, &mut self.cp);
            self.faults.strike(manager, cp, "Talos upgrade", 3).await?;
        }
        let view = &self.view;
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
        .await
    }

    /// With `--faults`: the manager still runs, etcd was bootstrapped once and kept quorum, the
    /// bundle and kubeconfig were written once.
    async fn after_the_faults(&self, written_once: &WrittenOnce) -> Result<(), Failure> {
        step("After the faults");
        self.manager.check_running().map_err(|e| e.to_string())?;
        written_once.check(&self.client).await?;
        check_etcd_history(&self.client, &self.view.sim).await?;
        let faults = &self.faults;
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
        Ok(())
    }

    /// With `--faults`: the Cluster deleted under fire, and no machine booted once too often.
    async fn delete_under_fire(
        &mut self,
        counter: tokio::task::JoinHandle<()>,
        booted: &Mutex<BTreeSet<String>>,
    ) -> Result<(), Failure> {
        let (client, view) = (&self.client, &self.view);
        let (faults, manager, cp) = (&mut self.faults, &mut self.manager, &mut self.cp);
        delete_under_fire(client, view, faults, manager, cp).await?;
        counter.abort();
        // 3 at first, 3 by the rolling upgrade, 2 by the scale-up: a machine deleted or
        // replaced once too often would have booted one more.
        let booted = booted.lock().unwrap_or_else(|e| e.into_inner()).len();
        if booted != 8 {
            return Err(format!(
                "{booted} control-plane machines' nodes came up over the run, where 8 machines were asked for: a machine was deleted or created once too often"
            ));
        }
        self.manager.check_running().map_err(|e| e.to_string())?;
        println!(
            "deleted under fire: no Machine, cluster Secret or node left; 8 control-plane machines over the run, none deleted or created twice; {} kube-apiserver restarts and {} manager kills in all",
            self.faults.restarts.len(),
            self.faults.kills.len()
        );
        Ok(())
    }

    /// With `--keep`: what to run against it, then wait for Ctrl-C or `make down`.
    async fn keep(&self) {
        step("Everything keeps running (Ctrl-C or `make down` stops it)");
        let node = self
            .view
            .first_control_plane_address()
            .await
            .unwrap_or_default();
        println!(
            "kubectl --kubeconfig {} get machines -n {NS}",
            self.kubeconfig.display()
        );
        println!("kubectl --kubeconfig {} get nodes", self.workload.display());
        println!(
            "talosctl --talosconfig {} -e {node} -n {node} etcd members",
            self.talosconfig.display()
        );
        wait_for_stop().await;
    }
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

/// The TalosConfig specs of the control planes and of the workers (Talos contract v1.14).
fn configs(static_addresses: bool) -> (Value, Value) {
    let install = install_patch();
    if !static_addresses {
        return (
            json!({
                "generateType": "controlplane", "talosVersion": "v1.14",
                // The Spanish walkthrough's VIP, as a strategic patch valid for Talos v1.14.
                "strategicPatches": [format!("machine:\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vip:\n          ip: 192.168.1.50\n---\n{install}")]
            }),
            json!({
                "generateType": "worker", "talosVersion": "v1.14",
                "strategicPatches": [install]
            }),
        );
    }
    // eth0 at the machine's address from the pool, in Talos 1.14's documents: the same VIP on
    // the control planes as a Layer2VIPConfig (eth0 has a static address, not DHCP).
    let (link, pools) = (
        static_addresses::link_patch(),
        json!([static_addresses::reference()]),
    );
    (
        json!({
            "generateType": "controlplane", "talosVersion": "v1.14",
            "addressesFromPools": pools,
            "strategicPatches": [format!("{link}---\napiVersion: v1alpha1\nkind: Layer2VIPConfig\nname: 192.168.1.50\nlink: eth0\n---\n{install}")]
        }),
        json!({
            "generateType": "worker", "talosVersion": "v1.14",
            "addressesFromPools": pools,
            "strategicPatches": [format!("{link}---\n{install}")]
        }),
    )
}

/// Talos 1.14's install document: the machines' installer and disk.
fn install_patch() -> String {
    format!(
        "apiVersion: v1alpha1\nkind: UnattendedInstallConfig\ninstaller:\n  image: {INSTALLER}:{TALOS_FIRST}\nprovisioning:\n  diskSelector:\n    match: disk.dev_path == \"/dev/sda\"\n"
    )
}

/// The seeds' HA cluster on the test infrastructure provider, its endpoint on loopback `port`
/// (where the provider serves its real workload kube-apiserver); with `static_addresses`, its
/// machines' addresses from [`static_addresses::POOL`].
fn topology(port: u16, static_addresses: bool) -> Vec<Value> {
    let infra = "infrastructure.cluster.x-k8s.io/v1alpha1";
    let (control_plane_config, worker_config) = configs(static_addresses);
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
                "controlPlaneConfig": {"controlplane": control_plane_config}
            }
        }),
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
            "metadata": {"name": "mi-cluster-workers"},
            "spec": {"template": {"spec": worker_config}}
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
    run_captured(program, args);
}

/// [`run_shown`], and whether the command succeeded, with its standard output.
fn run_captured(program: &Path, args: &[&str]) -> (bool, String) {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("\n$ {name} {}", args.join(" "));
    match std::process::Command::new(program).args(args).output() {
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            print!("{stdout}");
            print!("{}", String::from_utf8_lossy(&o.stderr));
            (o.status.success(), stdout)
        }
        Err(e) => {
            println!("({name}: {e})");
            (false, String::new())
        }
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

/// `--static-addresses`: node addresses from Cluster API IPAM (the in-cluster provider's
/// InClusterIPPool [`POOL`]), and the checks that the nodes took them.
mod static_addresses {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use kube::api::ListParams;
    use serde_json::{Value, json};
    use testkit::dynamic_api;
    use testkit::tools::{Tool, locate};

    use super::{CLUSTER, Demo, Failure, NS, progress, secret, write_private};

    /// The pool's name, as the patches reference it (`((ipam.nodes.address))`).
    pub const POOL: &str = "nodes";
    const IPAM: &str = "ipam.cluster.x-k8s.io";
    /// The pool's range: 20 addresses, for the 6 machines, the 3 the rolling upgrade adds and
    /// the 2 of `--faults`' scale-up, should no address be freed on the way. Second octet 250:
    /// `talos_sim::loopback_address` gives 127.<20–219>.x.y.
    const RANGE: (Ipv4Addr, Ipv4Addr) = (
        Ipv4Addr::new(127, 250, 0, 10),
        Ipv4Addr::new(127, 250, 0, 29),
    );
    const GATEWAY: &str = "127.250.0.1";

    /// The InClusterIPPool.
    pub fn pool() -> Value {
        json!({
            "apiVersion": format!("{IPAM}/v1alpha2"), "kind": "InClusterIPPool",
            "metadata": {"name": POOL},
            "spec": {"addresses": [format!("{}-{}", RANGE.0, RANGE.1)], "prefix": 24, "gateway": GATEWAY},
        })
    }

    /// The pool, as `addressesFromPools` names it.
    pub fn reference() -> Value {
        json!({"apiGroup": IPAM, "kind": "InClusterIPPool", "name": POOL})
    }

    /// eth0 at the machine's address from the pool, with the default route through the pool's
    /// gateway (Talos 1.14's LinkConfig; docs/ipam.md).
    pub fn link_patch() -> String {
        format!(
            "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\nup: true\naddresses:\n  - address: ((ipam.{POOL}.address))/((ipam.{POOL}.prefix))\nroutes:\n  - gateway: ((ipam.{POOL}.gateway))\n"
        )
    }

    /// What was observed: each Machine's address, the pool's IPAddresses, the talosconfig's
    /// endpoints.
    #[derive(Default)]
    struct Seen {
        /// Machine name → (control plane, address).
        machines: BTreeMap<String, (bool, Option<String>)>,
        /// Address → IPAddress name, for the pool's IPAddresses.
        allocated: BTreeMap<String, String>,
        endpoints: BTreeSet<String>,
    }

    impl Seen {
        async fn read(client: &kube::Client) -> Seen {
            let mut seen = Seen::default();
            let machines = dynamic_api(client, NS, "cluster.x-k8s.io/v1beta2", "Machine");
            for m in machines
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let cp = m
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("cluster.x-k8s.io/control-plane"));
                let address = m.data["status"]["addresses"][0]["address"]
                    .as_str()
                    .map(str::to_owned);
                seen.machines
                    .insert(m.metadata.name.unwrap_or_default(), (cp, address));
            }
            let addresses = dynamic_api(client, NS, &format!("{IPAM}/v1beta2"), "IPAddress");
            for a in addresses
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let spec = &a.data["spec"];
                if spec["poolRef"]["name"] == POOL
                    && let Some(address) = spec["address"].as_str()
                {
                    seen.allocated
                        .insert(address.to_owned(), a.metadata.name.unwrap_or_default());
                }
            }
            if let Ok(config) =
                secret(client, &format!("{CLUSTER}-talosconfig"), "talosconfig").await
            {
                seen.endpoints = endpoints(&config);
            }
            seen
        }

        /// What is not as it should be yet, if anything.
        fn wrong(&self) -> Option<String> {
            let mut used = BTreeSet::new();
            for (name, (_, address)) in &self.machines {
                let Some(address) = address else {
                    return Some(format!("Machine {name} has no address yet"));
                };
                if !in_range(address) || !self.allocated.contains_key(address) {
                    return Some(format!(
                        "Machine {name} is at {address}, not an address of pool {POOL}"
                    ));
                }
                if !used.insert(address) {
                    return Some(format!("two Machines at {address}"));
                }
            }
            let cps: BTreeSet<String> = self
                .machines
                .values()
                .filter(|(cp, _)| *cp)
                .filter_map(|(_, a)| a.clone())
                .collect();
            if self.endpoints != cps {
                return Some(format!(
                    "talosconfig endpoints {:?}, control planes at {cps:?}",
                    self.endpoints
                ));
            }
            None
        }
    }

    fn in_range(address: &str) -> bool {
        address
            .parse::<Ipv4Addr>()
            .is_ok_and(|a| (RANGE.0..=RANGE.1).contains(&a))
    }

    /// The endpoints of a talosconfig's current context.
    fn endpoints(talosconfig: &str) -> BTreeSet<String> {
        let Ok(config) = serde_yaml_ng::from_str::<Value>(talosconfig) else {
            return BTreeSet::new();
        };
        let context = config["context"].as_str().unwrap_or_default();
        config["contexts"][context]["endpoints"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every Machine at its own address of the pool, the talosconfig's endpoints at the
    /// control planes' addresses, and the real talosctl, through those endpoints, answered by
    /// every node at its address.
    pub async fn check(d: &Demo<'_>) -> Result<(), Failure> {
        super::step(&format!(
            "Static addresses from pool {POOL} ({}-{})",
            RANGE.0, RANGE.1
        ));
        let client = &d.client;
        progress("static addresses", Duration::from_secs(120), async || {
            let seen = Seen::read(client).await;
            match seen.wrong() {
                None => (
                    true,
                    format!(
                        "{} Machines at addresses of pool {POOL}; talosconfig endpoints {:?}",
                        seen.machines.len(),
                        seen.endpoints
                    ),
                ),
                Some(wrong) => (false, wrong),
            }
        })
        .await?;
        let seen = Seen::read(client).await;
        println!("{:<34} {:<14} IPAddress", "Machine", "address");
        for (name, (_, address)) in &seen.machines {
            let address = address.as_deref().unwrap_or_default();
            let claim = seen
                .allocated
                .get(address)
                .map(String::as_str)
                .unwrap_or_default();
            println!("{name:<34} {address:<14} {claim}");
        }
        // The talosconfig as it is now: its endpoints follow the control planes' addresses.
        let talosconfig = secret(client, &format!("{CLUSTER}-talosconfig"), "talosconfig").await?;
        write_private(&d.talosconfig, &talosconfig)?;
        let addresses: BTreeSet<String> = seen
            .machines
            .values()
            .filter_map(|(_, a)| a.clone())
            .collect();
        talosctl_reaches(&d.talosconfig, &addresses)
    }

    /// The real talosctl, through the talosconfig's endpoints, asks every node its version:
    /// each answers (`NODE: <address>`) at its address.
    fn talosctl_reaches(
        talosconfig: &std::path::Path,
        addresses: &BTreeSet<String>,
    ) -> Result<(), Failure> {
        let talosctl = locate(Tool::Talosctl114).map_err(|e| e.to_string())?;
        let nodes = addresses.iter().cloned().collect::<Vec<_>>().join(",");
        let config = talosconfig.to_string_lossy();
        let args = ["--talosconfig", &config, "-n", &nodes, "version", "--short"];
        let (ok, out) = super::run_captured(&talosctl, &args);
        let answered: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("NODE:"))
            .map(|a| a.trim().to_owned())
            .collect();
        if !ok || &answered != addresses {
            return Err(format!(
                "talosctl reached {answered:?}, where the nodes are at {addresses:?}"
            ));
        }
        println!(
            "talosctl reached all {} nodes at their addresses from pool {POOL}",
            answered.len()
        );
        Ok(())
    }
}
