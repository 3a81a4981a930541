//! The real CACPPT v0.5.13 and the real CABPT v0.6.12 (each built from its Go module), with
//! their own CRDs and not talos-capi, on the real Cluster API v1.14 core and simulated Talos
//! nodes: the baseline the drop-in is held to. CACPPT brings a three-node TalosControlPlane up
//! with no help (it lists the etcd data directory on every node and bootstraps one of them
//! itself) and rolls it to a new Kubernetes version; every assertion about etcd reads the
//! simulator's own etcd.
//!
//! CACPPT has no watch filter, so this test runs on a control plane of its own, with no
//! TalosControlPlane controller of ours beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::time::Duration;

use common::sim_infra;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use talos_sim::Simulator;
use talos_sim::etcd::Op;
use testkit::tools::Tool;

/// CACPPT requeues every 10 to 20 seconds while it waits (for node refs, for etcd health), so
/// a bring-up takes several of its rounds.
const DEADLINE: Duration = Duration::from_secs(300);

const NAME: &str = "peer";

fn tcp_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    testkit::dynamic_api(
        client,
        ns,
        "controlplane.cluster.x-k8s.io/v1alpha3",
        "TalosControlPlane",
    )
}

async fn machines(client: &kube::Client, ns: &str) -> Vec<DynamicObject> {
    testkit::dynamic_api(client, ns, "cluster.x-k8s.io/v1beta2", "Machine")
        .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Poll `check` until it returns Some, or fail with `what`, the TalosControlPlane's status and
/// where CACPPT's log is.
async fn eventually<T>(
    client: &kube::Client,
    ns: &str,
    logs: &[&std::path::Path],
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let tcp = tcp_api(client, ns).get_opt(NAME).await.ok().flatten();
            let names: Vec<String> = machines(client, ns)
                .await
                .iter()
                .map(|m| {
                    format!(
                        "{} version={} nodeRef={}",
                        m.name_any(),
                        m.data["spec"]["version"],
                        m.data["status"]["nodeRef"]
                    )
                })
                .collect();
            let tails: Vec<String> = logs
                .iter()
                .map(|log| format!("{}:\n{}", log.display(), testkit::process::tail(log, 40)))
                .collect();
            panic!(
                "{what}: not reached in {DEADLINE:?}\nmachines: {names:#?}\nTalosControlPlane status: {}\n{}",
                serde_json::to_string_pretty(&tcp.map(|t| t.data["status"].clone()))
                    .unwrap_or_default(),
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Wait until CACPPT reports the control plane ready and initialized with `n` ready replicas
/// and healthy etcd, its `n` machines have nodes at `version`, and the simulator's etcd has
/// `n` voting members. Returns the machines' names.
async fn settled(
    client: &kube::Client,
    ns: &str,
    logs: &[&std::path::Path],
    sim: &Simulator,
    n: usize,
    version: &str,
) -> Vec<String> {
    eventually(
        client,
        ns,
        logs,
        &format!("{n} machines at {version}, ready, with {n} etcd members"),
        async || {
            let tcp = tcp_api(client, ns).get(NAME).await.ok()?;
            let status = &tcp.data["status"];
            // CACPPT names its etcd condition EtcdClusterHealthyCondition (sic).
            let healthy = ["EtcdClusterHealthyCondition", "Ready", "Available"]
                .iter()
                .all(|t| condition(status, t).is_some_and(|c| c["status"] == "True"));
            let ready = status["ready"] == true
                && status["initialized"] == true
                && status["bootstrapped"] == true
                && status["readyReplicas"] == n
                && status["replicas"] == n;
            let machines = machines(client, ns).await;
            let at_version = machines.len() == n
                && machines.iter().all(|m| {
                    m.data["spec"]["version"] == version && m.data["status"]["nodeRef"].is_object()
                });
            if !(healthy && ready && at_version) {
                return None;
            }
            let id = sim_infra::cluster_id(client, ns, NAME).await?;
            let members = sim.etcd_members(&id);
            (members.len() == n && members.iter().all(|(_, _, learner)| !learner))
                .then(|| machines.iter().map(ResourceExt::name_any).collect())
        },
    )
    .await
}

#[tokio::test]
async fn real_cacppt_and_cabpt_bring_up_three_nodes_and_roll_a_kubernetes_upgrade() {
    let started = std::time::Instant::now();
    let cp = testkit::LocalControlPlane::builder()
        .name("cacppt")
        .cluster_api()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let mut crds = testkit::peers::crds(Tool::CabptConfig).unwrap();
    crds.extend(testkit::peers::crds(Tool::CacpptConfig).unwrap());
    testkit::install_crds(&client, &crds).await.unwrap();
    let ns = testkit::unique_namespace(&client, "cacppt").await.unwrap();
    // CACPPT's TalosConfigs carry no watch-filter label: CABPT reconciles them all.
    let cabpt = testkit::peers::start_cabpt(&cp, "").await.unwrap();
    let cacppt = testkit::peers::start_cacppt(&cp).await.unwrap();
    // Simulated nodes, and a real workload API server where they register their Nodes (CACPPT
    // reads them through the kubeconfig it writes, and Cluster API sets the node refs from them).
    let infra = sim_infra::start_with_workloads_in(&client, &ns, &["a", "b", "c"], cp.etcd());
    let port = testkit::process::free_port().unwrap();
    sim_infra::control_plane_cluster(&client, &ns, NAME, 3, ("127.0.0.1", port))
        .await
        .unwrap();

    let logs = [cacppt.log_path(), cabpt.log_path()];
    let first = settled(&client, &ns, &logs, &infra.sim, 3, "v1.35.0").await;
    let id = sim_infra::cluster_id(&client, &ns, NAME).await.unwrap();
    let history = infra.sim.etcd_history(&id);
    assert_eq!(
        history.iter().filter(|c| c.op == Op::Bootstrap).count(),
        1,
        "etcd bootstrapped exactly once: {history:?}"
    );
    eprintln!("brought up by CACPPT in {:?}", started.elapsed());

    // A Kubernetes upgrade: CACPPT replaces each machine (surge one, then remove the oldest,
    // which leaves etcd from itself).
    let upgrade = std::time::Instant::now();
    tcp_api(&client, &ns)
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "v1.35.1"}})),
        )
        .await
        .unwrap();
    let second = settled(&client, &ns, &logs, &infra.sim, 3, "v1.35.1").await;
    assert!(
        second.iter().all(|m| !first.contains(m)),
        "every machine replaced: {first:?} -> {second:?}"
    );
    let history = infra.sim.etcd_history(&id);
    assert_eq!(
        history.iter().filter(|c| c.op == Op::Bootstrap).count(),
        1,
        "{history:?}"
    );
    // Each replaced machine left etcd (CACPPT has it leave from itself) without losing quorum,
    // and its node was terminated with it.
    let removals: Vec<_> = history.iter().filter(|c| c.op == Op::Remove).collect();
    assert_eq!(removals.len(), 3, "{history:?}");
    for change in removals {
        assert_ne!(
            change.quorum_after,
            Some(false),
            "a removal lost quorum: {history:?}"
        );
        eventually(
            &client,
            &ns,
            &logs,
            "the removed member's node terminated",
            async || (!infra.sim.nodes().contains(&change.node)).then_some(()),
        )
        .await;
    }
    eprintln!("rolled by CACPPT in {:?}", upgrade.elapsed());

    // Everything CACPPT asked of the Talos API (only CACPPT talks to the nodes here), and the
    // simulator served every call: the machine client calls in CACPPT's controllers are LS
    // (List) and Bootstrap, ServiceInfo and ServiceList (ServiceList), EtcdMemberList,
    // EventsWatchV2 (Events), EtcdForfeitLeadership and EtcdLeaveCluster on scale down, and
    // EtcdRemoveMemberByID for a member with no machine (not reached here).
    let calls = infra.sim.calls();
    eprintln!("Talos API calls by CACPPT: {calls:#?}");
    let unserved: Vec<_> = calls.iter().filter(|(_, c)| c.unimplemented > 0).collect();
    assert!(unserved.is_empty(), "unserved: {unserved:?}");
    for method in [
        "List",
        "Bootstrap",
        "ServiceList",
        "EtcdMemberList",
        "Events",
        "EtcdForfeitLeadership",
        "EtcdLeaveCluster",
    ] {
        let path = format!("/machine.MachineService/{method}");
        assert!(calls.contains_key(&path), "{path} never called: {calls:?}");
    }
}
