//! `talos-capi manager` as a process on the local control plane (real kube-apiserver and Cluster
//! API core): leader election between replicas, the write fence of a frozen leader, the lease
//! released on SIGTERM, the probes and metrics, and a clear wait for missing CRDs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../../controller/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use api::conditions::ConditionType;
use common::{WAIT, cluster, machine, wait_config};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;
use testkit::bench::{audit_events, component_pid};
use testkit::process::{ManagedProcess, free_port, http_get as get};
use testkit::tools::repo_root;
use testkit::{LocalControlPlane, unique_namespace};

const LEASE: &str = "talos-capi-manager";

/// A manager process named `name` (its Pod name) with short lease terms (4 s / 3 s / 1 s).
struct Manager {
    name: &'static str,
    process: ManagedProcess,
    pid: u32,
    health: u16,
    metrics: u16,
}

async fn manager(cp: &LocalControlPlane, ns: &str, name: &'static str) -> Manager {
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
            "--leader-elect",
            "--leader-election-namespace",
            ns,
            "--leader-elect-lease-duration",
            "4s",
            "--leader-elect-renew-deadline",
            "3s",
            "--leader-elect-retry-period",
            "1s",
            "--log-level",
            "info,controller=debug",
        ]
        .map(str::to_owned),
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

/// Poll `check` every 200 ms for up to `within`, or fail saying `what`.
async fn until<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    let first = until("a leader", WAIT, async || {
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
        until(&format!("{} ready", m.name), WAIT, async || {
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
    until("the leader's Event about m1", WAIT, async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("m1"))
    })
    .await;

    // Freeze the leader: the standby takes over once the lease expires, and reconciles.
    signal(leader.pid, "STOP");
    let taken = until(
        "the standby taking over from a frozen leader",
        Duration::from_secs(30),
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
    until(
        "the old leader exiting",
        Duration::from_secs(20),
        async || leader.process.check_running().err(),
    )
    .await;
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
    let status = until("the leader stopping", Duration::from_secs(20), async || {
        standby.process.check_running().err()
    })
    .await;
    assert!(status.to_string().contains("exit status: 0"), "{status}");
    let released = lease(&client, &ns).await.unwrap();
    assert_eq!(holder(&released).filter(|h| !h.is_empty()), None);
    assert_eq!(released.spec.unwrap().lease_duration_seconds, Some(1));
    let c = manager(&cp, &ns, "mgr-c").await;
    until("a new replica leading", WAIT, async || {
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
    let cp = LocalControlPlane::builder()
        .name("bare")
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "bare").await.unwrap();
    let m = manager(&cp, &ns, "mgr-bare").await;
    let (code, body) = until("/readyz naming what is missing", WAIT, async || {
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
