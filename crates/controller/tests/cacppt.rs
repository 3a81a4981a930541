//! The real CACPPT v0.5.13 and the real CABPT v0.6.12 (each built from its Go module), with
//! their own CRDs and not talos-capi, on the real Cluster API v1.14 core and simulated Talos
//! nodes: the baseline the drop-in is held to. CACPPT brings a three-node TalosControlPlane up
//! with no help (it lists the etcd data directory on every node and bootstraps one of them
//! itself) and rolls it to a new Kubernetes version; every assertion about etcd reads the
//! simulator's own etcd.
//!
//! Then the handovers of docs/migration.md, both ways, with the real peers: a cluster CACPPT
//! brought up is taken over by talos-capi (no machine created or deleted, etcd and every booted
//! machine's bootstrap data untouched, Available under us within a minute, then rolled by us),
//! and one we brought up is taken back by CACPPT and CABPT, which roll it.
//!
//! CACPPT has no watch filter, so each test runs on a control plane of its own, with no
//! TalosControlPlane controller of ours beside CACPPT.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::time::Duration;

use common::sim_infra;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use talos_sim::Simulator;
use talos_sim::etcd::Op;
use testkit::process::ManagedProcess;
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
    common::eventually_logged(
        client,
        ns,
        NAME,
        logs,
        DEADLINE,
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

/// CABPT's and CACPPT's CRDs, as their `clusterctl init` installs them.
fn peers_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = testkit::peers::crds(Tool::CabptConfig).unwrap();
    crds.extend(testkit::peers::crds(Tool::CacpptConfig).unwrap());
    crds
}

/// A control plane of its own (CACPPT has no watch filter, and the peers' CRDs replace ours under
/// the same names) with the Cluster API core and `crds`, a namespace, and simulated nodes with
/// real workload API servers where they register their Nodes (CACPPT reads them through the
/// kubeconfig it writes, and Cluster API sets the node refs from them).
struct Bed {
    infra: sim_infra::SimInfra,
    client: kube::Client,
    ns: String,
    cp: testkit::LocalControlPlane,
}

impl Bed {
    async fn start(name: &str, crds: &[CustomResourceDefinition]) -> Self {
        let cp = testkit::LocalControlPlane::builder()
            .name(name)
            .cluster_api()
            .start()
            .await
            .unwrap();
        let client = cp.client().await.unwrap();
        testkit::install_crds(&client, crds).await.unwrap();
        let ns = testkit::unique_namespace(&client, name).await.unwrap();
        let infra = sim_infra::start_with_workloads_in(&client, &ns, &["a", "b", "c"], cp.etcd());
        Self {
            infra,
            client,
            ns,
            cp,
        }
    }

    /// The Cluster and its three-machine TalosControlPlane [`NAME`] at v1.35.0.
    async fn cluster(&self) {
        let port = testkit::process::free_port().unwrap();
        sim_infra::control_plane_cluster(&self.client, &self.ns, NAME, 3, ("127.0.0.1", port))
            .await
            .unwrap();
    }
}

/// The real CABPT (with no watch filter: CACPPT's TalosConfigs carry no such label) and the
/// real CACPPT, each with its webhooks registered.
async fn start_peers(cp: &testkit::LocalControlPlane) -> (ManagedProcess, ManagedProcess) {
    let cabpt = testkit::peers::start_cabpt_with_webhooks(cp).await.unwrap();
    let cacppt = testkit::peers::start_cacppt(cp).await.unwrap();
    (cabpt, cacppt)
}

/// What a handover must leave as it is: the control-plane machines, the bootstrap data each
/// was booted with, how often each node booted, and etcd's membership history.
#[derive(Debug, PartialEq)]
struct Untouched {
    machines: Vec<String>,
    bootstrap_data: Vec<(String, Option<String>)>,
    boots: Vec<u64>,
    etcd_changes: usize,
}

impl Untouched {
    async fn read(bed: &Bed) -> Self {
        let secrets = Api::<Secret>::namespaced(bed.client.clone(), &bed.ns);
        let mut machines = machines(&bed.client, &bed.ns).await;
        machines.sort_by_key(ResourceExt::name_any);
        let mut bootstrap_data = Vec::new();
        let mut boots = Vec::new();
        for m in &machines {
            let data = m.data["spec"]["bootstrap"]["dataSecretName"]
                .as_str()
                .expect("a booted machine has its bootstrap data");
            let version = secrets.get(data).await.unwrap().resource_version();
            bootstrap_data.push((data.to_owned(), version));
            let address = m.data["status"]["addresses"][0]["address"]
                .as_str()
                .expect("a booted machine has an address");
            boots.push(bed.infra.sim.running(address).map_or(0, |(n, _)| n));
        }
        let id = sim_infra::cluster_id(&bed.client, &bed.ns, NAME)
            .await
            .unwrap();
        Self {
            machines: machines.iter().map(ResourceExt::name_any).collect(),
            bootstrap_data,
            boots,
            etcd_changes: bed.infra.sim.etcd_history(&id).len(),
        }
    }
}

/// Wait until talos-capi manages the control plane: our own conditions (`EtcdClusterHealthy`,
/// not CACPPT's `EtcdClusterHealthyCondition`), Available, every machine up to date with our
/// pre-terminate hook, `n` machines at `version` with nodes, and `n` voting etcd members.
async fn ours_settled(bed: &Bed, version: &str) -> Vec<String> {
    let (client, ns) = (&bed.client, bed.ns.as_str());
    let hook = controller::controlplane::machines::cleanup_hook();
    common::eventually_logged(
        client,
        ns,
        NAME,
        &[],
        DEADLINE,
        &format!("talos-capi reports 3 machines at {version}, Available"),
        async || {
            let tcp = tcp_api(client, ns).get(NAME).await.ok()?;
            let status = &tcp.data["status"];
            let ours = ["EtcdClusterHealthy", "Available", "MachinesUpToDate"]
                .iter()
                .all(|t| condition(status, t).is_some_and(|c| c["status"] == "True"));
            let machines = machines(client, ns).await;
            let managed = machines.len() == 3
                && machines.iter().all(|m| {
                    m.annotations().contains_key(&hook)
                        && m.data["spec"]["version"] == version
                        && m.data["status"]["nodeRef"].is_object()
                });
            if !(ours && managed && status["readyReplicas"] == 3) {
                return None;
            }
            let id = sim_infra::cluster_id(client, ns, NAME).await?;
            let members = bed.infra.sim.etcd_members(&id);
            (members.len() == 3 && members.iter().all(|(_, _, learner)| !learner))
                .then(|| machines.iter().map(ResourceExt::name_any).collect())
        },
    )
    .await
}

/// Bump the Kubernetes version of the TalosControlPlane.
async fn upgrade(bed: &Bed, version: &str) {
    tcp_api(&bed.client, &bed.ns)
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": version}})),
        )
        .await
        .unwrap();
}

/// Etcd was bootstrapped once and no member removal lost quorum.
fn assert_etcd_kept(bed: &Bed, id: &str) {
    let history = bed.infra.sim.etcd_history(id);
    assert_eq!(
        history.iter().filter(|c| c.op == Op::Bootstrap).count(),
        1,
        "etcd bootstrapped exactly once: {history:?}"
    );
    assert!(
        history
            .iter()
            .filter(|c| c.op == Op::Remove)
            .all(|c| c.quorum_after != Some(false)),
        "a removal lost quorum: {history:?}"
    );
}

/// docs/migration.md, CACPPT to talos-capi, on a cluster the real CACPPT and CABPT brought up.
/// Step 1 stops them; their webhook configurations stay behind with nothing serving them, so
/// the API server refuses every write of a TalosControlPlane (a user's version bump too) and of
/// a TalosConfig (ours, for each new machine) until they are deleted: the procedure deletes
/// them in step 1. Then our CRDs and our controller:
/// no machine is created or deleted, no node boots again, etcd membership and every booted
/// machine's bootstrap data stay as they are, the control plane is Available under us within a
/// minute, and we roll a Kubernetes upgrade.
#[tokio::test]
async fn a_cluster_cacppt_brought_up_is_taken_over_untouched_and_rolled_by_us() {
    let bed = Bed::start("to-ours", &peers_crds()).await;
    let (client, ns) = (&bed.client, bed.ns.as_str());
    let (cabpt, cacppt) = start_peers(&bed.cp).await;
    bed.cluster().await;
    let logs = [cacppt.log_path(), cabpt.log_path()];
    let first = settled(client, ns, &logs, &bed.infra.sim, 3, "v1.35.0").await;
    let before = Untouched::read(&bed).await;
    assert_eq!(before.machines.len(), 3);

    // Step 1: the Sidero providers stop.
    drop((cabpt, cacppt));
    let config = machines(client, ns).await[0].data["spec"]["bootstrap"]["configRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let configs = testkit::dynamic_api(
        client,
        ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    );
    let writes = [(tcp_api(client, ns), NAME), (configs, config.as_str())];
    let edit = Patch::Merge(json!({"metadata": {"labels": {"example.com/edited": "yes"}}}));
    let dry_run = PatchParams::default().dry_run();
    for (api, name) in &writes {
        let refused = api
            .patch(name, &dry_run, &edit)
            .await
            .expect_err("the peer's webhooks, left with nothing behind them, refuse the write");
        assert!(refused.to_string().contains("webhook"), "{name}: {refused}");
    }
    for prefix in ["cabpt-", "cacppt-"] {
        testkit::peers::delete_webhooks(client, prefix)
            .await
            .unwrap();
    }
    for (api, name) in &writes {
        api.patch(name, &dry_run, &edit)
            .await
            .expect("with the webhooks deleted, the object is writable");
    }

    // Step 2: our CRDs replace theirs, and our controller starts.
    testkit::install_crds(client, &api::all_crds())
        .await
        .unwrap();
    let _ours = common::start_controller(client, ns);
    let adopted = ours_settled(&bed, "v1.35.0").await;
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(before.machines, sorted);
    assert_eq!(
        Untouched::read(&bed).await,
        before,
        "the handover touched nothing"
    );
    assert_eq!(adopted.len(), 3);

    // A rolling upgrade under us replaces every machine.
    upgrade(&bed, "v1.35.1").await;
    let rolled = ours_settled(&bed, "v1.35.1").await;
    assert!(
        rolled.iter().all(|m| !first.contains(m)),
        "every machine replaced: {first:?} -> {rolled:?}"
    );
    let id = sim_infra::cluster_id(client, ns, NAME).await.unwrap();
    assert_etcd_kept(&bed, &id);
}

/// docs/migration.md in reverse: a cluster talos-capi brought up is taken back by the real
/// CACPPT and CABPT. Our controller stops and our pre-terminate hook comes off the machines
/// (CACPPT does not know it, and Cluster API would hold a machine CACPPT deletes on it forever);
/// their CRDs and webhooks go back. CACPPT reports the control plane ready with no machine
/// created or deleted, nothing booted again and etcd untouched, then rolls it.
#[tokio::test]
async fn a_cluster_we_brought_up_is_taken_back_untouched_by_cacppt_and_rolled_by_it() {
    let bed = Bed::start("to-peers", &api::all_crds()).await;
    let (client, ns) = (&bed.client, bed.ns.as_str());
    let ours = common::start_controller(client, ns);
    bed.cluster().await;
    let first = ours_settled(&bed, "v1.35.0").await;
    let before = Untouched::read(&bed).await;
    drop(ours);

    let hook = controller::controlplane::machines::cleanup_hook();
    let machine_api = testkit::dynamic_api(client, ns, "cluster.x-k8s.io/v1beta2", "Machine");
    for name in &before.machines {
        machine_api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {&hook: null}}})),
            )
            .await
            .unwrap();
    }
    testkit::install_crds(client, &peers_crds()).await.unwrap();
    let (cabpt, cacppt) = start_peers(&bed.cp).await;
    let logs = [cacppt.log_path(), cabpt.log_path()];
    settled(client, ns, &logs, &bed.infra.sim, 3, "v1.35.0").await;
    assert_eq!(
        Untouched::read(&bed).await,
        before,
        "the handover touched nothing"
    );

    upgrade(&bed, "v1.35.1").await;
    let rolled = settled(client, ns, &logs, &bed.infra.sim, 3, "v1.35.1").await;
    assert!(
        rolled.iter().all(|m| !first.contains(m)),
        "every machine replaced by CACPPT: {first:?} -> {rolled:?}"
    );
    let id = sim_infra::cluster_id(client, ns, NAME).await.unwrap();
    assert_etcd_kept(&bed, &id);
}

#[tokio::test]
async fn real_cacppt_and_cabpt_bring_up_three_nodes_and_roll_a_kubernetes_upgrade() {
    let started = std::time::Instant::now();
    let bed = Bed::start("cacppt", &peers_crds()).await;
    let (client, ns, infra) = (&bed.client, &bed.ns, &bed.infra);
    let (cabpt, cacppt) = start_peers(&bed.cp).await;
    bed.cluster().await;

    let logs = [cacppt.log_path(), cabpt.log_path()];
    let first = settled(client, ns, &logs, &infra.sim, 3, "v1.35.0").await;
    let id = sim_infra::cluster_id(client, ns, NAME).await.unwrap();
    let history = infra.sim.etcd_history(&id);
    assert_eq!(
        history.iter().filter(|c| c.op == Op::Bootstrap).count(),
        1,
        "etcd bootstrapped exactly once: {history:?}"
    );
    eprintln!("brought up by CACPPT in {:?}", started.elapsed());

    rolled_by_cacppt(client, ns, &logs, infra, &first, &id).await;
    every_talos_call_served(infra);
}

/// Rolls a Kubernetes upgrade: CACPPT replaces each machine, each leaving etcd with quorum.
async fn rolled_by_cacppt(
    client: &kube::Client,
    ns: &str,
    logs: &[&std::path::Path],
    infra: &sim_infra::SimInfra,
    first: &[String],
    id: &str,
) {
    // A Kubernetes upgrade: CACPPT replaces each machine (surge one, then remove the oldest,
    // which leaves etcd from itself).
    let upgrade = std::time::Instant::now();
    tcp_api(client, ns)
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "v1.35.1"}})),
        )
        .await
        .unwrap();
    let second = settled(client, ns, logs, &infra.sim, 3, "v1.35.1").await;
    assert!(
        second.iter().all(|m| !first.contains(m)),
        "every machine replaced: {first:?} -> {second:?}"
    );
    let history = infra.sim.etcd_history(id);
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
        common::eventually_logged(
            client,
            ns,
            NAME,
            logs,
            DEADLINE,
            "the removed member's node terminated",
            async || (!infra.sim.nodes().contains(&change.node)).then_some(()),
        )
        .await;
    }
    eprintln!("rolled by CACPPT in {:?}", upgrade.elapsed());
}

/// Every Talos API call CACPPT made was served, and each expected method was called.
fn every_talos_call_served(infra: &sim_infra::SimInfra) {
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
