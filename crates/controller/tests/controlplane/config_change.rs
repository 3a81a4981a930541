//! Configuration changes: applied live where Talos can, a machine replaced (or, with `configReboot:
//! InPlace`, its node rebooted) where it needs a reboot, and a node's configuration changed by hand
//! reported and left alone.

use super::*;

#[tokio::test]
async fn a_config_change_talos_applies_live_is_made_in_place_and_one_needing_a_reboot_replaces() {
    let (client, ns, _controller) = setup("cp-reconfigure").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "r", 3).await;
    settled(&client, &ns, "r", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "r").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();
    let before = boots(&client, &ns, &infra.sim).await;
    let (install, label) = a_label_applied_live(&client, &ns, &infra, &id, history, &before).await;
    an_env_change_replaces_the_machines(&client, &ns, &infra, install, label, before).await;
}

/// A node label: Talos applies it live on every node, with the same machines, no reboot and no
/// etcd membership change; returns the install and label patches.
async fn a_label_applied_live(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    id: &str,
    history: usize,
    before: &[(String, u64)],
) -> (&'static str, &'static str) {
    // A node label: Talos applies it live. Every node runs it, tried then confirmed one by
    // one, with the same machines, no reboot and no etcd membership change.
    let install = "machine:\n  install:\n    disk: /dev/sda\n";
    let label = "machine:\n  nodeLabels:\n    example.com/tier: gold\n";
    patch_spec(
        client,
        ns,
        "r",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": [install, label]
        }}}),
    )
    .await;
    let mut nodes = Vec::new();
    for m in machine_names(client, ns).await {
        nodes.push(node_of(client, ns, &m).await);
    }
    changed_in_place(client, ns, "r", &infra.sim, &nodes, "the label", |d| {
        d["machine"]["nodeLabels"]["example.com/tier"] == json!("gold")
    })
    .await;
    assert_eq!(
        boots(client, ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        infra.sim.etcd_history(id).len(),
        history,
        "no etcd membership change"
    );
    assert_eq!(
        events_with_reason(client, ns, "TalosConfigApplied").await,
        3,
        "one TalosConfigApplied event per machine"
    );
    (install, label)
}

/// An environment variable: Talos refuses it live, so the machines are replaced within quorum.
async fn an_env_change_replaces_the_machines(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    install: &str,
    label: &str,
    before: Vec<(String, u64)>,
) {
    // An environment variable: Talos refuses it live (its words are kept), so the machines
    // are replaced, one at a time within quorum.
    patch_spec(
        client,
        ns,
        "r",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": [install, label, PROXY_PATCH]
        }}}),
    )
    .await;
    let old: Vec<String> = before.into_iter().map(|(m, _)| m).collect();
    eventually(client, ns, "r", "every machine replaced", async || {
        let now = machine_names(client, ns).await;
        (now.len() == 3 && now.iter().all(|m| !old.contains(m))).then_some(())
    })
    .await;
    settled(client, ns, "r", &infra.sim, 3).await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let needs_reboot = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("TalosConfigNeedsReboot"))
        .and_then(|e| e.message.clone())
        .expect("a TalosConfigNeedsReboot event");
    assert!(
        needs_reboot.contains("can't be applied in immediate mode")
            && needs_reboot.contains("machine.env.https_proxy"),
        "{needs_reboot}"
    );
    assert_etcd_invariants(client, ns, "r", &infra.sim).await;
}

#[tokio::test]
async fn with_config_reboot_in_place_a_change_needing_a_reboot_reboots_each_node_once_and_keeps_the_machines()
 {
    let (client, ns, _controller) = setup("cp-reboot").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let Watched {
        id,
        history,
        before,
        nodes,
        machine_of,
        most_down,
        watcher,
    } = settled_held_and_watched(&client, &ns, &infra).await;
    rebooted_into_the_proxy(&client, &ns, &infra, &nodes, &machine_of).await;
    the_same_machines_each_rebooted_once(&client, &ns, &infra, &before, &id, history).await;
    one_node_down_at_a_time_and_an_event_each(&client, &ns, watcher, &most_down).await;
}

/// What [`settled_held_and_watched`] hands on to the reboot test's later phases.
struct Watched {
    id: String,
    history: usize,
    before: Vec<(String, u64)>,
    nodes: Vec<String>,
    machine_of: std::collections::BTreeMap<String, String>,
    most_down: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Brings control plane "b" up with three machines, holds their nodes down on restart, and
/// watches the simulator for the most nodes down at once.
async fn settled_held_and_watched(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> Watched {
    control_plane_cluster(client, ns, "b", 3).await;
    settled(client, ns, "b", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(client, ns, "b").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();
    let before = boots(client, ns, &infra.sim).await;
    let nodes: Vec<String> = {
        let mut out = Vec::new();
        for (m, _) in &before {
            out.push(node_of(client, ns, m).await);
        }
        out
    };
    // A rebooting node stays down until the controller has seen it down (its marker says so):
    // the simulator's reboot takes 300 ms, which a loaded machine's controller can miss.
    for node in &nodes {
        infra
            .sim
            .set_failures(node, |f| f.hold_restarts = true)
            .unwrap();
    }
    // The simulator's own record of nodes going down and up: never two of ours at once.
    let mut sim_events = infra.sim.events();
    let watched = nodes.clone();
    let machine_of: std::collections::BTreeMap<String, String> = nodes
        .iter()
        .cloned()
        .zip(before.iter().map(|(m, _)| m.clone()))
        .collect();
    let most_down = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = most_down.clone();
    let watcher = tokio::spawn(async move {
        let mut down = std::collections::BTreeSet::new();
        loop {
            let e = match sim_events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            match e {
                talos_sim::SimEvent::NodeDown { address } if watched.contains(&address) => {
                    down.insert(address);
                }
                talos_sim::SimEvent::NodeUp { address, .. } => {
                    down.remove(&address);
                }
                _ => {}
            }
            most.fetch_max(down.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    Watched {
        id,
        history,
        before,
        nodes,
        machine_of,
        most_down,
        watcher,
    }
}

/// An environment variable with configReboot InPlace: each node reboots into it in turn.
async fn rebooted_into_the_proxy(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    nodes: &[String],
    machine_of: &std::collections::BTreeMap<String, String>,
) {
    // An environment variable: Talos applies it only with a reboot. With configReboot InPlace
    // each node reboots into it in turn; no machine is replaced.
    let install = "machine:\n  install:\n    disk: /dev/sda\n";
    patch_spec(
        client,
        ns,
        "b",
        json!({
            "rolloutStrategy": {"type": "RollingUpdate", "configReboot": "InPlace"},
            "controlPlaneConfig": {"controlplane": {
                "generateType": "controlplane", "talosVersion": "v1.13",
                "strategicPatches": [install, PROXY_PATCH]
            }}
        }),
    )
    .await;
    let changed = changed_in_place(client, ns, "b", &infra.sim, nodes, "the proxy", |d| {
        d["machine"]["env"]["https_proxy"] == json!("http://proxy.example:3128")
    });
    tokio::join!(
        changed,
        release_when_seen_down(client, ns, &infra.sim, machine_of)
    );
}

/// The same machines, each rebooted exactly once, with no etcd membership change.
async fn the_same_machines_each_rebooted_once(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    before: &[(String, u64)],
    id: &str,
    history: usize,
) {
    let after = boots(client, ns, &infra.sim).await;
    assert_eq!(
        after.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        before.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        "the same machines"
    );
    for ((m, was), (_, now)) in before.iter().zip(&after) {
        assert_eq!(*now, was + 1, "machine {m} rebooted exactly once");
    }
    assert_eq!(
        infra.sim.etcd_history(id).len(),
        history,
        "no etcd membership change"
    );
}

/// One node was down at a time, and each machine got one reboot and one applied event.
async fn one_node_down_at_a_time_and_an_event_each(
    client: &kube::Client,
    ns: &str,
    watcher: tokio::task::JoinHandle<()>,
    most_down: &std::sync::atomic::AtomicUsize,
) {
    watcher.abort();
    let most = most_down.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 1, "one node down at a time, and a reboot seen");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let count = |reason: &str| {
        events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    };
    assert_eq!(
        count("TalosConfigRebooting"),
        3,
        "one reboot event per machine"
    );
    assert_eq!(
        count("TalosConfigApplied"),
        3,
        "one applied event per machine"
    );
    assert_eq!(count("MachineDeleted"), 0, "no machine deleted");
}

/// Release each held node (`hold_restarts`) of `machine_of` (node → machine) once the
/// controller has recorded, on its machine's configuration-change marker, that it saw the
/// rebooting node down.
async fn release_when_seen_down(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    machine_of: &std::collections::BTreeMap<String, String>,
) {
    let machines = Api::<Machine>::namespaced(client.clone(), ns);
    let mut held: Vec<&String> = machine_of.keys().collect();
    while !held.is_empty() {
        let node = testkit::eventually("the controller sees a held node down", WAIT, async || {
            for node in &held {
                let Ok(m) = machines.get(&machine_of[*node]).await else {
                    continue;
                };
                let marker = m
                    .annotations()
                    .get(controller::controlplane::reconfigure::MARKER);
                let marker = marker.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
                if marker.is_some_and(|m| m["down"] == json!(true)) {
                    return Some(*node);
                }
            }
            None
        })
        .await;
        sim.set_failures(node, |f| f.hold_restarts = false).unwrap();
        held.retain(|n| *n != node);
    }
}

#[tokio::test]
async fn a_node_configuration_changed_by_hand_is_reported_and_left_alone() {
    let (client, ns, _controller, ctx) = setup_context(
        "cp-drift",
        controller::Options {
            drift_check: Duration::from_secs(1),
            ..controller::Options::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    let (machine, address) = a_label_added_by_hand(&client, &ns, &infra).await;
    drift_reported(&client, &ns, &machine).await;
    drift_left_alone(&client, &ns, &infra, &ctx, &machine, &address).await;
    the_machines_own_conditions(&client, &ns, machine).await;
}

/// Brings control plane "d" up with one machine, then adds a label to its node with the Talos
/// API as talosctl would; returns the machine and its node's address.
async fn a_label_added_by_hand(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> (String, String) {
    control_plane_cluster(client, ns, "d", 1).await;
    settled(client, ns, "d", &infra.sim, 1).await;
    let machine = machine_names(client, ns).await.remove(0);
    let address = node_of(client, ns, &machine).await;

    // Someone adds a node label with talosctl (apply-config --mode no-reboot).
    let (_, mut docs) = infra.sim.running(&address).unwrap();
    for doc in docs.iter_mut().filter(|d| d["version"] == "v1alpha1") {
        doc["machine"]["nodeLabels"]["by-hand"] = json!("yes");
    }
    let talosconfig = Api::<Secret>::namespaced(client.clone(), ns)
        .get("d-talosconfig")
        .await
        .unwrap();
    let talosconfig =
        String::from_utf8(talosconfig.data.unwrap()["talosconfig"].0.clone()).unwrap();
    use controller::nodes::{Grpc, TalosNodes};
    Grpc::default()
        .connect(&talosconfig, vec![address.clone()])
        .unwrap()
        .apply_configuration(
            &talos_api::Nodes::Endpoint,
            machineconfig::render::to_yaml(&docs).unwrap().into_bytes(),
            talos_api::machine::apply_configuration_request::Mode::NoReboot,
        )
        .await
        .unwrap();
    (machine, address)
}

/// The drift is reported in a condition naming the machine, never the values, and an Event.
async fn drift_reported(client: &kube::Client, ns: &str, machine: &str) {
    let drift = wait_condition(
        client,
        ns,
        "d",
        ConditionType::MachinesUpToDate,
        "False",
        "by-hand",
    )
    .await;
    assert_eq!(drift.reason, "RunningConfigDiffers");
    assert!(drift.message.contains(machine), "{}", drift.message);
    assert!(
        !drift.message.contains("yes"),
        "values never: {}",
        drift.message
    );
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TalosConfigDrift")),
        "a TalosConfigDrift event"
    );
}

/// Checked again since, the drift is still reported and the node's change left alone.
async fn drift_left_alone(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    ctx: &controller::Context,
    machine: &str,
    address: &str,
) {
    // Checked again a few times since (dry-run applies), the last check's reconcile ended:
    // still reported, and the node's change is left alone.
    const APPLY: &str = "/machine.MachineService/ApplyConfiguration";
    let applies = || infra.sim.calls().get(APPLY).map_or(0, |c| c.received);
    let checked = applies();
    eventually(client, ns, "d", "two more drift checks", async || {
        (applies() >= checked + 2).then_some(())
    })
    .await;
    reconciled_since(ctx, client, ns, "d").await;
    let (_, running) = infra.sim.running(address).unwrap();
    assert!(
        running
            .iter()
            .any(|d| d["machine"]["nodeLabels"]["by-hand"] == json!("yes")),
        "talos-capi overwrote the node's configuration"
    );
    assert_eq!(machine_names(client, ns).await, vec![machine.to_owned()]);
    wait_condition(
        client,
        ns,
        "d",
        ConditionType::MachinesUpToDate,
        "False",
        "by-hand",
    )
    .await;
}

/// The control plane sets UpToDate and EtcdMemberHealthy on its machine, and UpToDate False once
/// the machine is outdated.
async fn the_machines_own_conditions(client: &kube::Client, ns: &str, machine: String) {
    // The control plane's own conditions on its machine, which Cluster API shows and counts:
    // UpToDate and EtcdMemberHealthy, as KubeadmControlPlane sets them.
    let machine_condition = async |type_: &str| {
        Api::<Machine>::namespaced(client.clone(), ns)
            .get(&machine)
            .await
            .ok()?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
    };
    eventually(
        client,
        ns,
        "d",
        "the machine's own conditions",
        async || {
            let up = machine_condition("UpToDate").await?;
            let etcd = machine_condition("EtcdMemberHealthy").await?;
            (up.status == "True" && etcd.status == "True").then_some(())
        },
    )
    .await;
    patch_spec(
        client,
        ns,
        "d",
        json!({"version": "v1.36.0", "rolloutStrategy": {"type": "OnDelete"}}),
    )
    .await;
    let outdated = eventually(client, ns, "d", "the machine outdated", async || {
        let up = machine_condition("UpToDate").await?;
        (up.status == "False").then_some(up)
    })
    .await;
    assert_eq!(outdated.reason, "NotUpToDate");
    assert!(outdated.message.contains("v1.36.0"), "{}", outdated.message);
}
