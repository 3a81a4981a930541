//! `talos-capi manager` as a process on the local control plane (real kube-apiserver and Cluster
//! API core): leader election between replicas, the write fence of a frozen leader, the lease
//! released on SIGTERM, the probes and metrics, and a clear wait for missing CRDs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../../controller/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use api::conditions::ConditionType;
use common::{WAIT, cluster, cluster_labelled, machine, machine_labelled, wait_config};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;
use testkit::bench::{audit_events, component_pid};
use testkit::eventually;
use testkit::faults::{FaultProxy, Faults};
use testkit::process::{ManagedProcess, free_port, http_get as get};
use testkit::tools::repo_root;
use testkit::{LocalControlPlane, sim_infra, unique_namespace};

const LEASE: &str = "talos-capi-manager";

/// A manager process named `name` (its Pod name) with short lease terms (10 s / 8 s / 1 s):
/// short enough for a takeover in seconds, long enough that a leader on a loaded machine still
/// renews in time.
struct Manager {
    name: &'static str,
    process: ManagedProcess,
    pid: u32,
    health: u16,
    metrics: u16,
}

async fn manager(cp: &LocalControlPlane, ns: &str, name: &'static str) -> Manager {
    manager_with(
        cp,
        ns,
        name,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            ns,
            "--leader-elect-lease-duration",
            "10s",
            "--leader-elect-renew-deadline",
            "8s",
            "--leader-elect-retry-period",
            "1s",
        ],
    )
    .await
}

/// A manager process named `name` (its Pod name) watching `ns`, with `extra` flags.
async fn manager_with(
    cp: &LocalControlPlane,
    ns: &str,
    name: &'static str,
    extra: &[&str],
) -> Manager {
    let (health, metrics) = (free_port().unwrap(), free_port().unwrap());
    let mut args = vec![
        format!("POD_NAME={name}"),
        env!("CARGO_BIN_EXE_talos-capi").to_owned(),
    ];
    args.extend(
        [
            "manager",
            "--namespace",
            ns,
            "--log-level",
            "info,controller=debug",
        ]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned()),
    );
    args.extend([
        "--kubeconfig".to_owned(),
        cp.kubeconfig_path().display().to_string(),
        "--health-probe-bind-address".to_owned(),
        format!("127.0.0.1:{health}"),
        "--metrics-bind-address".to_owned(),
        format!("127.0.0.1:{metrics}"),
    ]);
    let log = cp.dir().join(format!("{name}.log"));
    let process =
        ManagedProcess::spawn(name, Path::new("/usr/bin/env"), &args, &log, None).unwrap();
    let pid = component_pid(process.pid(), "/talos-capi").await;
    Manager {
        name,
        process,
        pid,
        health,
        metrics,
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

async fn lease(client: &kube::Client, ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .unwrap()
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

fn log_of(m: &Manager) -> String {
    std::fs::read_to_string(m.process.log_path()).unwrap_or_default()
}

/// A control plane of its own: the tests read what the manager did from its audit log (the shared
/// one keeps none).
async fn control_plane_with_audit() -> LocalControlPlane {
    LocalControlPlane::builder()
        .name("manager")
        .cluster_api()
        .crds(repo_root().join("config/crd/bases"))
        .audit_log()
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn one_of_two_managers_leads_a_frozen_leader_is_fenced_and_sigterm_hands_over() {
    let cp = control_plane_with_audit().await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "leader").await.unwrap();
    let a = manager(&cp, &ns, "mgr-a").await;
    let b = manager(&cp, &ns, "mgr-b").await;

    let first = eventually("a leader", WAIT, async || {
        holder(&lease(&client, &ns).await?)
    })
    .await;
    let (leader, standby) = if first.starts_with("mgr-a_") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(first.starts_with(&format!("{}_", leader.name)), "{first}");

    // Probes and metrics: both replicas are ready, only one leads.
    for m in [leader, standby] {
        eventually(&format!("{} ready", m.name), WAIT, async || {
            get(m.health, "/readyz").await.filter(|(c, _)| *c == 200)
        })
        .await;
        let (code, _) = get(m.health, "/healthz").await.unwrap();
        assert_eq!(code, 200);
    }
    let (_, leader_metrics) = get(leader.metrics, "/metrics").await.unwrap();
    let (_, standby_metrics) = get(standby.metrics, "/metrics").await.unwrap();
    assert!(
        leader_metrics.contains("talos_capi_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        standby_metrics.contains("talos_capi_leader 0"),
        "{standby_metrics}"
    );
    assert!(leader_metrics.contains("talos_capi_build_info{version=\""));

    // The leader reconciles.
    cluster(&client, &ns, "c", false).await;
    let cp_spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    machine(&client, &ns, "c", "m1", cp_spec.clone(), true).await;
    wait_config(&client, &ns, "m1", ConditionType::Ready, "True").await;
    // The Event about m1 is the leader's last write for it: freezing the leader before that
    // write arrives would leave it on the wire, and no fence can recall a request already sent.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually("the leader's Event about m1", WAIT, async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("m1"))
    })
    .await;

    // Freeze the leader: the standby takes over once the lease expires, and reconciles.
    signal(leader.pid, "STOP");
    let taken = eventually(
        "the standby taking over from a frozen leader",
        WAIT,
        async || {
            let l = lease(&client, &ns).await?;
            holder(&l)
                .filter(|h| h.starts_with(&format!("{}_", standby.name)))
                .map(|_| l)
        },
    )
    .await;
    let acquired = taken.spec.as_ref().unwrap().acquire_time.clone().unwrap().0;
    machine(&client, &ns, "c", "m2", cp_spec.clone(), true).await;
    wait_config(&client, &ns, "m2", ConditionType::Ready, "True").await;
    // Work the frozen leader will see queued when it wakes.
    machine(&client, &ns, "c", "m3", cp_spec, true).await;

    // Thawed, the old leader finds its lease gone and exits without writing.
    signal(leader.pid, "CONT");
    let status = eventually("the old leader exiting", WAIT, async || {
        leader.process.check_running().err()
    })
    .await;
    assert!(
        status.to_string().contains("exit status: 1"),
        "a lost lease exits 1: {status}"
    );
    assert!(
        log_of(leader).contains("leader election lost"),
        "{}",
        log_of(leader)
    );
    wait_config(&client, &ns, "m3", ConditionType::Ready, "True").await;
    let writes_after = late_writes(&cp.audit_log_path(), &first, acquired);
    assert!(
        writes_after.is_empty(),
        "writes by the deposed leader after {acquired}: {writes_after:#?}"
    );

    // SIGTERM: the leader hands the lease back before exiting, so a new replica need not wait
    // for it to expire.
    signal(standby.pid, "TERM");
    let status = eventually("the leader stopping", WAIT, async || {
        standby.process.check_running().err()
    })
    .await;
    assert!(status.to_string().contains("exit status: 0"), "{status}");
    let released = lease(&client, &ns).await.unwrap();
    assert_eq!(holder(&released).filter(|h| !h.is_empty()), None);
    assert_eq!(released.spec.unwrap().lease_duration_seconds, Some(1));
    let c = manager(&cp, &ns, "mgr-c").await;
    eventually("a new replica leading", WAIT, async || {
        holder(&lease(&client, &ns).await?).filter(|h| h.starts_with("mgr-c_"))
    })
    .await;
    assert!(
        !log_of(&c).contains("standing by"),
        "a released lease is taken at the first attempt: {}",
        log_of(&c)
    );
}

/// Mutating requests by the replica `identity` received after `after`, from the audit log.
fn late_writes(audit: &Path, identity: &str, after: Timestamp) -> Vec<String> {
    let agent = format!("talos-capi/{} ({identity})", env!("CARGO_PKG_VERSION"));
    audit_events(audit, 0, &agent)
        .into_iter()
        .filter(|e| {
            let verb = e["verb"].as_str().unwrap_or_default();
            let at = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            !matches!(verb, "get" | "list" | "watch") && at.is_some_and(|t| t > after)
        })
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect()
}

#[tokio::test]
async fn without_the_crds_the_manager_says_what_to_install_and_waits() {
    // A control plane of its own: one without our CRDs (the shared one has them).
    let cp = LocalControlPlane::builder()
        .name("bare")
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "bare").await.unwrap();
    let m = manager(&cp, &ns, "mgr-bare").await;
    let (code, body) = eventually("/readyz naming what is missing", WAIT, async || {
        get(m.health, "/readyz").await.filter(|(c, _)| *c == 503)
    })
    .await;
    assert_eq!(code, 503);
    for needed in [
        "talosconfigs.bootstrap.cluster.x-k8s.io",
        "taloscontrolplanes.controlplane.cluster.x-k8s.io",
        "machines.cluster.x-k8s.io",
        "helm install talos-capi",
        "clusterctl init",
    ] {
        assert!(body.contains(needed), "{needed} in {body}");
    }
    m.process.check_running().unwrap();
    assert!(
        log_of(&m).contains("is not served: install talos-capi's CRDs"),
        "{}",
        log_of(&m)
    );
}

/// The identity the throttled manager runs as: not in system:masters, which API Priority and
/// Fairness exempts.
const THROTTLED: &str = "talos-capi-throttled";

/// Give `THROTTLED` cluster-admin, and a priority level of one nominal seat that neither lends
/// nor borrows and rejects what does not fit: kube-apiserver's own API Priority and Fairness
/// answers the manager's surplus requests 429.
async fn throttle(client: &kube::Client) {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": THROTTLED},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": THROTTLED}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&Default::default(), &crb)
        .await
        .unwrap();
    let level: PriorityLevelConfiguration = serde_json::from_value(json!({
        "metadata": {"name": THROTTLED},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"},
        }},
    }))
    .unwrap();
    Api::<PriorityLevelConfiguration>::all(client.clone())
        .create(&Default::default(), &level)
        .await
        .unwrap();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": {"name": THROTTLED},
        "spec": {
            "matchingPrecedence": 100,
            "priorityLevelConfiguration": {"name": THROTTLED},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": THROTTLED}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
    .unwrap();
    let schemas: Api<FlowSchema> = Api::all(client.clone());
    schemas.create(&Default::default(), &schema).await.unwrap();
    // In force once the API server's configuration controller has digested it.
    eventually("the FlowSchema in force", WAIT, async || {
        let s = schemas.get(THROTTLED).await.ok()?;
        s.status?.conditions?.into_iter().find(|c| {
            c.type_.as_deref() == Some("Dangling") && c.status.as_deref() == Some("False")
        })
    })
    .await;
}

/// `talos-capi manager` watching `ns` through `kubeconfig`, without probes or metrics; its log is
/// `<cp dir>/<name>.log`.
fn storm_manager(
    cp: &LocalControlPlane,
    ns: &str,
    kubeconfig: &Path,
    name: &str,
) -> ManagedProcess {
    let args: Vec<String> = [
        "manager",
        "--namespace",
        ns,
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--health-probe-bind-address",
        "0",
        "--metrics-bind-address",
        "0",
        "--log-level",
        "info,controller=debug",
    ]
    .map(str::to_owned)
    .into();
    let log = cp.dir().join(format!("{name}.log"));
    let binary = Path::new(env!("CARGO_BIN_EXE_talos-capi"));
    ManagedProcess::spawn(name, binary, &args, &log, None).unwrap()
}

/// Create `clusters` control planes of 3 simulated nodes at once, and wait up to 240 s until
/// every one is Available with its 3 members healthy, while `manager` keeps running.
async fn storm_clusters(
    cp: &LocalControlPlane,
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    clusters: usize,
    manager: &ManagedProcess,
) -> Vec<String> {
    let names: Vec<String> = (0..clusters).map(|i| format!("{prefix}-{i}")).collect();
    for name in &names {
        let port = free_port().unwrap();
        sim_infra::control_plane_cluster(client, ns, name, 3, ("127.0.0.1", port))
            .await
            .unwrap();
    }
    let tcps = testkit::dynamic_api(
        client,
        ns,
        "controlplane.cluster.x-k8s.io/v1alpha3",
        "TalosControlPlane",
    );
    let available = |t: &kube::api::DynamicObject| {
        let s = &t.data["status"];
        let holds = |type_: &str| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == type_ && c["status"] == "True")
            })
        };
        // No workload API server runs here, so no Node makes a Machine Ready: the control
        // plane is done when its three members are healthy and it is Available.
        s["replicas"] == 3 && holds("Available") && holds("EtcdClusterHealthy")
    };
    let tail = || {
        let log = std::fs::read_to_string(manager.log_path()).unwrap_or_default();
        // Leaving out the workload clients' connection errors (no workload API server runs).
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("kube_client::client::builder") && !l.contains("workload"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let all_available = async || {
        if let Err(e) = manager.check_running() {
            panic!("the manager exited ({e}):\n{}", tail());
        }
        // The management cluster may be down for a moment (a fault the caller injects).
        let list = tcps.list(&Default::default()).await.ok()?;
        (list.items.iter().filter(|t| available(t)).count() == clusters).then_some(())
    };
    let explain = async || {
        // The logs outlive the control plane's directory, for whoever looks into it.
        let keep = repo_root().join("target/test-artifacts").join(ns);
        std::fs::create_dir_all(&keep).unwrap();
        let _ = std::fs::copy(manager.log_path(), keep.join("manager.log"));
        let _ = std::fs::copy(cp.audit_log_path(), keep.join("audit.log"));
        eprintln!("logs kept in {}", keep.display());
        let list = tcps.list(&Default::default()).await.map(|l| l.items);
        let list = list.unwrap_or_default();
        format!(
            "{} Available: {:#?}\nthe manager's log ends:\n{}",
            list.iter().filter(|t| available(t)).count(),
            list.iter()
                .map(|t| (
                    t.metadata.name.clone(),
                    t.data["status"]["conditions"].clone()
                ))
                .collect::<Vec<_>>(),
            tail()
        )
    };
    testkit::eventually_explained(
        &format!("{clusters} clusters Available"),
        common::WAIT * 2,
        all_available,
        explain,
    )
    .await;
    names
}

/// What must be written once was: from the audit log (`events`, the manager's requests), each
/// cluster's bundle and kubeconfig Secrets were created exactly once; from the simulator, each
/// cluster's etcd was bootstrapped exactly once.
async fn written_once(
    client: &kube::Client,
    ns: &str,
    names: &[String],
    events: &[serde_json::Value],
    sim: &talos_sim::Simulator,
) {
    let created = |name: &str| {
        events
            .iter()
            .filter(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "secrets"
                    && e["objectRef"]["name"] == name
                    && e["responseStatus"]["code"] == 201
            })
            .count()
    };
    for name in names {
        assert_eq!(created(&format!("{name}-talos")), 1, "{name}'s bundle");
        assert_eq!(
            created(&format!("{name}-kubeconfig")),
            1,
            "{name}'s kubeconfig"
        );
        let id = sim_infra::cluster_id(client, ns, name).await.unwrap();
        let bootstraps = sim
            .etcd_history(&id)
            .iter()
            .filter(|c| c.op == talos_sim::etcd::Op::Bootstrap)
            .count();
        assert_eq!(bootstraps, 1, "{name}'s etcd bootstrapped once");
    }
}

#[tokio::test]
async fn answered_with_429_storms_the_manager_converges_every_cluster_and_writes_once() {
    let cp = control_plane_with_audit().await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "storm").await.unwrap();
    throttle(&client).await;
    let kubeconfig = cp.dir().join("throttled.kubeconfig");
    cp.write_kubeconfig_for(THROTTLED, &[], &kubeconfig)
        .unwrap();
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let manager = storm_manager(&cp, &ns, &kubeconfig, "throttled-manager");
    let names = storm_clusters(&cp, &client, &ns, "storm", 6, &manager).await;

    // The storm happened: the manager's requests were answered 429, and it never needed a
    // restart. What must be written once was written once.
    let events: Vec<serde_json::Value> = audit_events(&cp.audit_log_path(), 0, "talos-capi/")
        .into_iter()
        .filter(|e| e["user"]["username"] == THROTTLED)
        .collect();
    let rejected = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 429)
        .count();
    println!(
        "{} requests by the manager, {rejected} answered 429",
        events.len()
    );
    assert!(
        rejected > 0,
        "no request was throttled: the storm did not happen"
    );
    written_once(&client, &ns, &names, &events, &infra.sim).await;
}

/// The management API server on a bad day, through testkit's fault proxy: a tenth of requests
/// answered 500, a tenth of updates and patches answered 409, a tenth of writes done but
/// answered 500 (the reply lost), and every watch cut after 5 s. The manager converges every
/// cluster without a restart and writes nothing twice that must be written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_500s_409s_lost_replies_and_cut_watches_the_manager_converges_and_writes_once() {
    let cp = control_plane_with_audit().await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "faults").await.unwrap();
    let proxy = FaultProxy::start(
        cp.client().await.unwrap(),
        Faults {
            // FAULT_SEED=n draws other faults (the same seed, the same draws).
            seed: std::env::var("FAULT_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            internal_error: 0.1,
            conflict: 0.1,
            lost_reply: 0.1,
            cut_watches_after: Some(Duration::from_secs(5)),
        },
    )
    .await
    .unwrap();
    let kubeconfig = cp.dir().join("faults.kubeconfig");
    proxy.write_kubeconfig(&kubeconfig).unwrap();
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let manager = storm_manager(&cp, &ns, &kubeconfig, "faulted-manager");
    let names = storm_clusters(&cp, &client, &ns, "faults", 6, &manager).await;

    let (forwarded, errors, conflicts, lost, cut) = proxy.counts().snapshot();
    println!(
        "{forwarded} requests forwarded; injected: {errors} answered 500, {conflicts} answered \
         409, {lost} writes with their reply lost, {cut} watches cut"
    );
    assert!(
        errors > 0 && conflicts > 0 && lost > 0 && cut > 0,
        "every fault happened: {:?}",
        proxy.counts().snapshot()
    );
    let events = audit_events(&cp.audit_log_path(), 0, "talos-capi/");
    written_once(&client, &ns, &names, &events, &infra.sim).await;
}

/// The management cluster's etcd stops for 5 s while six control planes come up (once the first
/// bundle is stored), and starts again with its data: the API server answers errors meanwhile
/// and every watch breaks. The manager converges every cluster without a restart and writes
/// nothing twice that must be written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_management_etcd_restart_the_manager_converges_and_writes_once() {
    let dir = tempfile::tempdir().unwrap();
    // A control plane of its own: its etcd is restarted (and its audit log read).
    let cp = LocalControlPlane::builder()
        .name("etcd-restart")
        .dir(dir.path())
        .cluster_api()
        .crds(repo_root().join("config/crd/bases"))
        .audit_log()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "etcd-restart").await.unwrap();
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let manager = storm_manager(&cp, &ns, &cp.kubeconfig_path(), "etcd-restart-manager");
    let etcd = cp.etcd();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    // etcd goes away for 5 s once the first cluster's bundle is written.
    let restart = async {
        eventually("the first cluster's bundle Secret", WAIT, async || {
            secrets.get_opt("etcd-0-talos").await.ok().flatten()
        })
        .await;
        etcd.restart(Duration::from_secs(5)).await.unwrap();
        tokio::time::Instant::now()
    };
    let storm = async {
        let names = storm_clusters(&cp, &client, &ns, "etcd", 6, &manager).await;
        (names, tokio::time::Instant::now())
    };
    let (restarted, (names, converged)) = tokio::join!(restart, storm);
    assert!(restarted <= converged, "converged before etcd came back");
    let events = audit_events(&cp.audit_log_path(), 0, "talos-capi/");
    // kube-apiserver holds requests while etcd is away: the outage shows as requests that took
    // seconds (or failed), not as a manager restart.
    let at = |e: &serde_json::Value, field: &str| {
        e[field].as_str().and_then(|t| t.parse::<Timestamp>().ok())
    };
    let held = events
        .iter()
        .filter(|e| e["verb"] != "watch")
        .filter(
            |e| match (at(e, "requestReceivedTimestamp"), at(e, "stageTimestamp")) {
                (Some(a), Some(b)) => b.duration_since(a).as_secs_f64() > 2.0,
                _ => false,
            },
        )
        .count();
    let failed = events
        .iter()
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c >= 500)
        })
        .count();
    println!(
        "{} requests by the manager: {held} held over 2 s and {failed} answered 5xx while etcd was down",
        events.len()
    );
    assert!(held + failed > 0, "the outage touched no request");
    written_once(&client, &ns, &names, &events, &infra.sim).await;
}

/// The sum of the `metric` series whose labels include `labels`, in a /metrics body (0 when none).
fn counted(body: &str, metric: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The providers split over two processes (`--controllers`), as the release manifests install
/// them, both serving one shard (`--watch-filter`): each reconciles only its own kind and only
/// labelled objects, the Secrets are watched by the cluster-name label, and the metrics count
/// reconciles and errors by category.
#[tokio::test]
async fn split_providers_serve_only_their_shard_and_count_errors_by_category() {
    const SHARD: &str = "shard-a";
    let cp = control_plane_with_audit().await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "shard").await.unwrap();
    let for_shard = ["--watch-filter", SHARD, "--controllers"];
    let bootstrap = manager_with(
        &cp,
        &ns,
        "mgr-bootstrap",
        &[&for_shard[..], &["bootstrap"]].concat(),
    )
    .await;
    let controlplane = manager_with(
        &cp,
        &ns,
        "mgr-controlplane",
        &[&for_shard[..], &["controlplane"]].concat(),
    )
    .await;
    let filter = json!({"cluster.x-k8s.io/watch-filter": SHARD});

    // TalosConfigs: in the shard, a good one and one with a patch Talos refuses; outside, one.
    cluster_labelled(&client, &ns, "in", false, filter.clone()).await;
    cluster(&client, &ns, "out", false).await;
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    machine_labelled(
        &client,
        &ns,
        "in",
        "in-0",
        spec.clone(),
        true,
        filter.clone(),
    )
    .await;
    let bad = json!({"generateType": "worker", "talosVersion": "v1.13",
        "configPatches": [{"op": "add", "path": "/machine/network/hostname", "value": "x"}]});
    machine_labelled(&client, &ns, "in", "in-bad", bad, false, filter.clone()).await;
    machine(&client, &ns, "out", "out-0", spec, true).await;
    // TalosControlPlanes: one labelled into the shard (with its Cluster), one not.
    for name in ["cp-in", "cp-out"] {
        sim_infra::control_plane_cluster(&client, &ns, name, 1, ("127.0.0.1", 6443))
            .await
            .unwrap();
    }
    for kind in [
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        (
            "controlplane.cluster.x-k8s.io/v1alpha3",
            "TalosControlPlane",
        ),
    ] {
        testkit::dynamic_api(&client, &ns, kind.0, kind.1)
            .patch(
                "cp-in",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": filter}})),
            )
            .await
            .unwrap();
    }

    wait_config(&client, &ns, "in-0", ConditionType::Ready, "True").await;
    common::wait_reason(
        &client,
        &ns,
        "in-bad",
        ConditionType::DataSecretAvailable,
        "PatchFailed",
    )
    .await;
    let tcps = testkit::dynamic_api(
        &client,
        &ns,
        "controlplane.cluster.x-k8s.io/v1alpha3",
        "TalosControlPlane",
    );
    let reconciled = |t: &kube::api::DynamicObject| t.data["status"]["conditions"].is_array();
    eventually(
        "the labelled TalosControlPlane reconciled",
        WAIT,
        async || tcps.get("cp-in").await.ok().filter(reconciled),
    )
    .await;

    // Outside the shard nothing was touched, by either process.
    let configs: Api<api::bootstrap::v1alpha3::TalosConfig> = Api::namespaced(client.clone(), &ns);
    let out = configs.get("out-0").await.unwrap();
    assert!(out.status.is_none(), "out of the shard: {:?}", out.status);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("out-talos").await.unwrap().is_none());
    let cp_out = tcps.get("cp-out").await.unwrap();
    assert!(!reconciled(&cp_out), "{:?}", cp_out.data["status"]);
    assert!(
        cp_out.metadata.finalizers.is_none(),
        "{:?}",
        cp_out.metadata.finalizers
    );

    // Each process reconciled its own kind only, and counted the refused patch as a spec error.
    let (_, b) = get(bootstrap.metrics, "/metrics").await.unwrap();
    let (_, c) = get(controlplane.metrics, "/metrics").await.unwrap();
    let reconciles = "talos_capi_reconciles_total";
    let errors = "talos_capi_reconcile_errors_total";
    assert!(
        counted(&b, reconciles, "controller=\"talosconfig\"") >= 2.0,
        "{b}"
    );
    assert_eq!(
        counted(&b, reconciles, "controller=\"taloscontrolplane\""),
        0.0,
        "{b}"
    );
    assert!(
        counted(&c, reconciles, "controller=\"taloscontrolplane\"") >= 1.0,
        "{c}"
    );
    assert_eq!(
        counted(&c, reconciles, "controller=\"talosconfig\""),
        0.0,
        "{c}"
    );
    assert!(
        counted(&b, errors, "category=\"spec\"") >= 1.0,
        "the refused patch, counted: {b}"
    );
    assert_eq!(counted(&b, errors, "category=\"kubernetes\""), 0.0, "{b}");

    // Every watch is scoped in the API server, not after: Secrets by the cluster-name label (so
    // other programs' Secrets never enter the caches), everything else by the shard's label. (The
    // audit log holds a watch once it ends, and the list that starts it at once.)
    let requests: Vec<(String, String)> = audit_events(&cp.audit_log_path(), 0, "talos-capi/")
        .into_iter()
        .filter(|e| e["verb"] == "list" || e["verb"] == "watch")
        .filter_map(|e| {
            let resource = e["objectRef"]["resource"].as_str()?.to_owned();
            Some((resource, e["requestURI"].as_str()?.to_owned()))
        })
        .collect();
    let shard = format!("labelSelector=cluster.x-k8s.io%2Fwatch-filter%3D{SHARD}");
    let labelled = "labelSelector=cluster.x-k8s.io%2Fcluster-name";
    for kind in [
        "secrets",
        "machines",
        "clusters",
        "talosconfigs",
        "taloscontrolplanes",
        "ipaddressclaims",
    ] {
        let selector = if kind == "secrets" { labelled } else { &shard };
        assert!(
            requests
                .iter()
                .any(|(r, uri)| r == kind && uri.contains(selector)),
            "no {kind} listed with {selector}: {requests:#?}"
        );
    }
    for (resource, uri) in &requests {
        let scoped = match resource.as_str() {
            "secrets" => uri.contains(labelled),
            // A control plane counts its own machines from the API server, by cluster.
            "machines" => {
                uri.contains(&shard) || uri.contains("cluster.x-k8s.io%2Fcluster-name%3D")
            }
            _ => uri.contains(&shard),
        };
        assert!(scoped, "{resource}: {uri}");
    }
}
