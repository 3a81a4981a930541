//! In-place Talos OS upgrades.

use super::*;

/// The node address of each machine of `names`, in that order.
async fn node_addresses(client: &kube::Client, ns: &str, names: &[String]) -> Vec<String> {
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(node_of(client, ns, n).await);
    }
    nodes
}

/// The Talos upgrade recorded on each control-plane machine, by machine name.
async fn upgrade_markers(client: &kube::Client, ns: &str) -> Vec<(String, Option<String>)> {
    machines(client, ns)
        .await
        .iter()
        .map(|m| {
            (
                m.name_any(),
                m.annotations()
                    .get("controlplane.cluster.x-k8s.io/talos-upgrade")
                    .cloned(),
            )
        })
        .collect()
}

/// Until every one of `nodes` runs Talos `version` and no machine of `name` is marked upgrading.
async fn all_upgraded(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    nodes: &[String],
    version: &str,
) {
    let running = |node: &str| sim.status(node).map(|(_, v)| v).unwrap_or_default();
    eventually(
        client,
        ns,
        name,
        &format!("every node on Talos {version}"),
        async || {
            let done = nodes.iter().all(|n| running(n) == version);
            let markers = upgrade_markers(client, ns).await;
            (done && markers.iter().all(|(_, m)| m.is_none())).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn five_nodes_upgrade_two_at_a_time_and_a_talos_without_lifecycle_service_takes_the_legacy_call()
 {
    let (client, ns, _controller) = setup("cp-talos-wide").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "u", 5).await;
    settled(&client, &ns, "u", &infra.sim, 5).await;
    let names = machine_names(&client, &ns).await;
    let nodes = node_addresses(&client, &ns, &names).await;
    // Talos before 1.13 has no LifecycleService. An upgraded node stays down until released,
    // so the first upgrade is still on when the controller starts the second, however slow
    // the machine (a 3 s boot was not enough in CI).
    for node in &nodes {
        infra
            .sim
            .set_failures(node, |f| {
                f.api_errors.insert(
                    "LifecycleService.Upgrade".into(),
                    tonic::Code::Unimplemented,
                );
                f.hold_restarts = true;
            })
            .unwrap();
    }
    // Watched while it runs: never more than two machines upgrading at once (five members
    // keep quorum with two down).
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watching = {
        let peak = peak.clone();
        on_every_change(&client, &ns, move |all| {
            let upgrading = all
                .iter()
                .filter(|m| {
                    m.annotations()
                        .contains_key("controlplane.cluster.x-k8s.io/talos-upgrade")
                })
                .count();
            peak.fetch_max(upgrading, std::sync::atomic::Ordering::Relaxed);
        })
        .await
    };
    patch_spec(
        &client,
        &ns,
        "u",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "maxParallel": 2}}),
    )
    .await;
    eventually(
        &client,
        &ns,
        "u",
        "two machines upgrading at once",
        async || {
            let markers = upgrade_markers(&client, &ns).await;
            (markers.iter().filter(|(_, m)| m.is_some()).count() == 2).then_some(())
        },
    )
    .await;
    for node in &nodes {
        infra
            .sim
            .set_failures(node, |f| f.hold_restarts = false)
            .unwrap();
    }
    all_upgraded(&client, &ns, "u", &infra.sim, &nodes, "v1.13.1").await;
    watching.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 2, "{peak} machines upgrading at once");
    assert_eq!(peak, 2, "maxParallel 2 upgrades two at once");
    assert_eq!(
        machine_names(&client, &ns).await,
        names,
        "the same machines"
    );
    settled(&client, &ns, "u", &infra.sim, 5).await;
    assert_etcd_invariants(&client, &ns, "u", &infra.sim).await;
}

#[tokio::test]
async fn talos_upgrades_in_place_node_by_node_and_halts_on_a_rollback_until_retried() {
    let (client, ns, _controller, ctx) =
        setup_context("cp-talos-upgrade", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let (names, nodes, id, start) = settled_with_a_node_that_rolls_back(&client, &ns, &infra).await;
    let version = |node: &str| infra.sim.status(node).map(|(_, v)| v).unwrap_or_default();

    let api = halts_on_the_rollback(&client, &ns, &ctx, &names, &nodes, &version).await;

    retried_until_every_node_upgraded(&client, &ns, &api, &names, &nodes, &version).await;
    in_place_the_same_machines_and_members(&client, &ns, &infra, names, &id, start).await;
}

/// Brings control plane "t" up with three machines and asks for a Talos upgrade that the second
/// node to upgrade rolls back; returns the machines oldest first, their nodes, the etcd cluster
/// id and its history length.
async fn settled_with_a_node_that_rolls_back(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> (Vec<String>, Vec<String>, String, usize) {
    control_plane_cluster(client, ns, "t", 3).await;
    settled(client, ns, "t", &infra.sim, 3).await;
    let mut all = machines(client, ns).await;
    all.sort_by_key(|m| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    });
    let names: Vec<String> = all.iter().map(ResourceExt::name_any).collect();
    let mut nodes = Vec::new();
    for n in &names {
        nodes.push(node_of(client, ns, n).await);
    }
    let id = sim_infra::cluster_id(client, ns, "t").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    // The second node to upgrade fails to boot the new version and rolls back, slowly.
    infra
        .sim
        .set_failures(&nodes[1], |f| {
            f.upgrade_fails = true;
            f.slow_boot = Duration::from_secs(2);
        })
        .unwrap();
    patch_spec(
        client,
        ns,
        "t",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "timeoutSeconds": 900}}),
    )
    .await;
    (names, nodes, id, start)
}

/// The first node upgrades, the second rolls back: the rollout halts, says which machine and
/// why, and leaves the third alone; returns the TalosControlPlane API.
async fn halts_on_the_rollback(
    client: &kube::Client,
    ns: &str,
    ctx: &controller::Context,
    names: &[String],
    nodes: &[String],
    version: &impl Fn(&str) -> String,
) -> Api<TalosControlPlane> {
    // The first node upgrades; the second rolls back: the rollout halts, says which machine and
    // why, and leaves the third alone.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    let halted = eventually(client, ns, "t", "the upgrade halted", async || {
        let tcp = api.get("t").await.ok()?;
        let c = condition(&tcp, ConditionType::RollingOut)?;
        (c.status == "True" && c.message.contains("failed")).then_some(c.message)
    })
    .await;
    assert!(
        halted.contains(&names[1]) && halted.contains("rolled back"),
        "{halted}"
    );
    assert!(halted.contains("1 of 3 nodes on Talos v1.13.1"), "{halted}");
    assert_eq!(version(&nodes[0]), "v1.13.1");
    assert_eq!(version(&nodes[1]), "v1.13.0");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TalosUpgradeFailed")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains(&names[1]))),
        "a Warning event names the machine"
    );
    reconciled_since(ctx, client, ns, "t").await;
    assert_eq!(
        version(&nodes[2]),
        "v1.13.0",
        "nothing else is touched while halted"
    );
    api
}

/// Once the marker is removed, another attempt upgrades every node.
async fn retried_until_every_node_upgraded(
    client: &kube::Client,
    ns: &str,
    api: &Api<TalosControlPlane>,
    names: &[String],
    nodes: &[String],
    version: &impl Fn(&str) -> String,
) {
    // Someone fixes the node and asks for another attempt by removing the marker.
    Api::<Machine>::namespaced(client.clone(), ns)
        .patch(
            &names[1],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"controlplane.cluster.x-k8s.io/talos-upgrade": null}}})),
        )
        .await
        .unwrap();
    eventually(client, ns, "t", "every node on v1.13.1", async || {
        let tcp = api.get("t").await.ok()?;
        let done = nodes.iter().all(|n| version(n) == "v1.13.1")
            && condition(&tcp, ConditionType::RollingOut)?.status == "False"
            && upgrade_markers(client, ns)
                .await
                .iter()
                .all(|(_, m)| m.is_none());
        done.then_some(())
    })
    .await;
}

/// In place: the same machines, the same members, none removed.
async fn in_place_the_same_machines_and_members(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    names: Vec<String>,
    id: &str,
    start: usize,
) {
    // In place: the same machines, the same members, none removed.
    let mut after = machine_names(client, ns).await;
    after.sort();
    let mut before = names.clone();
    before.sort();
    assert_eq!(after, before, "no machine replaced");
    let history = infra.sim.etcd_history(id);
    assert!(
        history[start..].iter().all(|c| c.op != Op::Remove),
        "no member left etcd: {history:?}"
    );
    settled(client, ns, "t", &infra.sim, 3).await;
}

/// The installer of Talos v1.14 from the Image Factory (the empty schematic): ghcr.io's
/// installer is no longer published from v1.14.
const FACTORY_INSTALLER_V1_14_1: &str = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.14.1";

/// Talos v1.13 → v1.14 in place with the Image Factory's installer reference, then the
/// configuration contract moved to v1.14. The machines keep their v1.13 configuration through the
/// upgrade (the spec did not ask for another); the contract change is a configuration change,
/// which Talos v1.14 applies live: every node runs the v1.14 documents, with the same machines,
/// none rebooted, one TalosConfigApplied Event each. Moving the contract back to v1.13 is the same
/// kind of change, applied live the same way.
#[tokio::test]
async fn talos_1_13_to_1_14_in_place_with_a_factory_installer_then_the_v1_14_contract_applied_live_and_back()
 {
    let (client, ns, _controller) = setup("cp-talos-114").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let (nodes, v1alpha1_kubelet) =
        upgraded_to_1_14_keeping_the_1_13_contract(&client, &ns, &infra).await;
    let (before, tcps, fields) = the_1_14_contract_applied_live(&client, &ns, &infra, &nodes).await;

    back_to_the_1_13_contract(&client, &ns, &infra, nodes, v1alpha1_kubelet).await;
    applied_live_again_with_nothing_to_say(&client, &ns, &infra, &before, &tcps, &fields).await;
}

/// Brings control plane "f" up with three machines and upgrades them to Talos v1.14.1 with the
/// factory installer: every node keeps the v1.13 contract's documents; returns their nodes and
/// how to tell a v1.13 contract's document.
async fn upgraded_to_1_14_keeping_the_1_13_contract(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> (
    Vec<String>,
    impl Fn(&serde_json::Value) -> bool + Copy + use<>,
) {
    control_plane_cluster(client, ns, "f", 3).await;
    settled(client, ns, "f", &infra.sim, 3).await;
    let names = machine_names(client, ns).await;
    let nodes = node_addresses(client, ns, &names).await;
    patch_spec(
        client,
        ns,
        "f",
        json!({"talosUpgrade": {"image": FACTORY_INSTALLER_V1_14_1}}),
    )
    .await;
    all_upgraded(client, ns, "f", &infra.sim, &nodes, "v1.14.1").await;
    let v1alpha1_kubelet = |d: &serde_json::Value| d["machine"].get("kubelet").is_some();
    for n in &nodes {
        let (_, docs) = infra.sim.running(n).unwrap();
        assert!(
            docs.iter().any(v1alpha1_kubelet),
            "{n} keeps the v1.13 contract"
        );
    }
    (nodes, v1alpha1_kubelet)
}

/// The v1.14 contract is applied live, and the control plane names the moved field; returns the
/// machines' boots, the TalosControlPlane API and how to read the fields condition.
async fn the_1_14_contract_applied_live(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    nodes: &[String],
) -> (
    Vec<(String, u64)>,
    Api<TalosControlPlane>,
    impl Fn(&TalosControlPlane) -> Option<(String, String, String)> + use<>,
) {
    let before = boots(client, ns, &infra.sim).await;
    patch_spec(
        client,
        ns,
        "f",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.14"
        }}}),
    )
    .await;
    changed_in_place(
        client,
        ns,
        "f",
        &infra.sim,
        nodes,
        "the v1.14 documents",
        |d| d["kind"] == "KubeletConfig",
    )
    .await;
    assert_eq!(
        boots(client, ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        events_with_reason(client, ns, "TalosConfigApplied").await,
        3,
        "one TalosConfigApplied event per machine"
    );
    // The control plane names the field its patch sets that Talos v1.14 moved, without blocking.
    let tcps = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    let fields = |tcp: &TalosControlPlane| {
        condition(tcp, ConditionType::ConfigFieldsCurrent)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (status, reason, message) = fields(&tcps.get("f").await.unwrap()).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FieldsMoved"));
    assert_eq!(
        message,
        "spec.controlPlaneConfig.controlplane.strategicPatches[0] sets .machine.install, which Talos v1.14 moved to the UnattendedInstallConfig document"
    );
    settled(client, ns, "f", &infra.sim, 3).await;
    (before, tcps, fields)
}

/// Back to the v1.13 contract on v1.14 nodes: a configuration change, applied live.
async fn back_to_the_1_13_contract(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    nodes: Vec<String>,
    v1alpha1_kubelet: impl Fn(&serde_json::Value) -> bool + Copy,
) {
    // And back: the v1.13 contract on v1.14 nodes is again a configuration change, applied live.
    patch_spec(
        client,
        ns,
        "f",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13"
        }}}),
    )
    .await;
    changed_in_place(
        client,
        ns,
        "f",
        &infra.sim,
        &nodes,
        "the v1.13 document",
        v1alpha1_kubelet,
    )
    .await;
    for n in &nodes {
        let (_, docs) = infra.sim.running(n).unwrap();
        assert!(
            !docs.iter().any(|d| d["kind"] == "KubeletConfig"),
            "{n} runs no v1.14 document"
        );
    }
}

/// No node rebooted, one more Event each, and nothing said of the fields before v1.14.
async fn applied_live_again_with_nothing_to_say(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    before: &[(String, u64)],
    tcps: &Api<TalosControlPlane>,
    fields: &impl Fn(&TalosControlPlane) -> Option<(String, String, String)>,
) {
    assert_eq!(
        boots(client, ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        events_with_reason(client, ns, "TalosConfigApplied").await,
        6,
        "one more TalosConfigApplied event per machine"
    );
    assert_eq!(
        fields(&tcps.get("f").await.unwrap()),
        None,
        "nothing to say of the fields before v1.14"
    );
    settled(client, ns, "f", &infra.sim, 3).await;
    assert_etcd_invariants(client, ns, "f", &infra.sim).await;
}
