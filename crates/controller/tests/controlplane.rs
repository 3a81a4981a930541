//! The TalosControlPlane controller on the local control plane with the real Cluster API v1.14
//! core and simulated Talos nodes: machines are created and spread over failure domains, etcd
//! is bootstrapped exactly once, membership follows the machines through scale up, scale down
//! and deletions, and the kubeconfig is issued and rotated. Every assertion about etcd reads the
//! simulator's own etcd, not our status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use api::capi::Machine;
use api::conditions::{self, ConditionType};
use api::controlplane::v1alpha3::TalosControlPlane;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use talos_sim::{SimEvent, Simulator};

/// The cluster id Talos nodes of `cluster` carry (from its secrets bundle).
async fn cluster_id(client: &kube::Client, ns: &str, cluster: &str) -> String {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{cluster}-talos"))
        .await
        .unwrap();
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    machineconfig::SecretsBundle::from_cabpt_secret(&data)
        .unwrap()
        .cluster
        .id
}

/// Poll `check` until it returns Some, or fail with `what` and the control plane's status.
async fn eventually<T>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()
                .flatten();
            panic!(
                "{what}: not reached in {WAIT:?}; TalosControlPlane status: {}",
                serde_json::to_string_pretty(&tcp.and_then(|t| t.status)).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition(tcp: &TalosControlPlane, t: ConditionType) -> Option<conditions::Condition> {
    tcp.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::get(cs, t))
        .cloned()
}

async fn machines(client: &kube::Client, ns: &str) -> Vec<Machine> {
    Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
        .await
        .unwrap()
        .items
}

/// Wait until the control plane has `n` machines, each with a healthy voting etcd member (read
/// from the simulator), and the status says so.
async fn settled(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    n: usize,
) -> Vec<(String, u64, bool)> {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{n} machines with healthy etcd members"),
        async || {
            let tcp = api.get(name).await.ok()?;
            let healthy = condition(&tcp, ConditionType::EtcdClusterHealthy)?.status == "True";
            let status = tcp.status.as_ref()?;
            let machines = machines(client, ns).await;
            if !healthy || status.replicas != Some(n as i32) || machines.len() != n {
                return None;
            }
            let id = cluster_id(client, ns, name).await;
            let members = sim.etcd_members(&id);
            (members.len() == n && members.iter().all(|(_, _, learner)| !learner))
                .then_some(members)
        },
    )
    .await
}

async fn scale(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn scales_one_to_three_over_zones_and_back_to_one_without_orphan_members() {
    let (client, ns, _controller) = setup("cp-scale").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let mut events = infra.sim.events();
    control_plane_cluster(&client, &ns, "s", 1).await;
    settled(&client, &ns, "s", &infra.sim, 1).await;

    let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .get("s")
        .await
        .unwrap();
    let status = tcp.status.clone().unwrap();
    assert_eq!(status.initialized, Some(true));
    assert_eq!(
        status
            .initialization
            .and_then(|i| i.control_plane_initialized),
        Some(true)
    );
    assert_eq!(
        status.selector.as_deref(),
        Some("cluster.x-k8s.io/cluster-name=s,cluster.x-k8s.io/control-plane")
    );
    assert_eq!(
        condition(&tcp, ConditionType::Available)
            .map(|c| c.status)
            .as_deref(),
        Some("True")
    );
    assert!(
        tcp.finalizers()
            .iter()
            .any(|f| f == "talos.controlplane.cluster.x-k8s.io")
    );

    scale(&client, &ns, "s", 3).await;
    settled(&client, &ns, "s", &infra.sim, 3).await;
    let mut zones: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .filter_map(|m| m.spec.failure_domain.clone())
        .collect();
    zones.sort();
    assert_eq!(zones, ["a", "b", "c"], "one machine per failure domain");
    // Each machine got its infrastructure cloned from the template, and its own TalosConfig.
    for m in machines(&client, &ns).await {
        let infra_machine = dynamic(
            &client,
            &ns,
            "infrastructure.cluster.x-k8s.io/v1alpha1",
            "SimMachine",
        )
        .get(&m.name_any())
        .await
        .unwrap();
        assert_eq!(
            infra_machine
                .annotations()
                .get("cluster.x-k8s.io/cloned-from-name")
                .map(String::as_str),
            Some("s")
        );
        assert_eq!(m.spec.version.as_deref(), Some("v1.35.0"));
        assert_eq!(
            m.labels()
                .get("cluster.x-k8s.io/control-plane-name")
                .map(String::as_str),
            Some("s")
        );
    }

    // Straight to one, without waiting between steps.
    scale(&client, &ns, "s", 1).await;
    let members = settled(&client, &ns, "s", &infra.sim, 1).await;
    let survivor = machines(&client, &ns).await;
    assert_eq!(survivor.len(), 1);
    assert_eq!(members.len(), 1, "no orphan members: {members:?}");

    // Exactly one bootstrap in the cluster's life.
    let mut bootstraps = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, SimEvent::Bootstrapped { .. }) {
            bootstraps += 1;
        }
    }
    assert_eq!(bootstraps, 1);

    // Zero replicas is refused at admission, with a message that says why.
    let refused = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect_err("0 replicas is refused");
    assert!(refused.to_string().contains("replicas"), "{refused}");
}

#[tokio::test]
async fn a_deleted_machine_is_replaced_with_a_new_member() {
    let (client, ns, _controller) = setup("cp-replace").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "r", 3).await;
    let before = settled(&client, &ns, "r", &infra.sim, 3).await;
    let victim = machines(&client, &ns).await.remove(1).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&victim, &Default::default())
        .await
        .unwrap();
    let after = eventually(&client, &ns, "r", "the machine replaced", async || {
        let names: Vec<String> = machines(&client, &ns)
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        if names.contains(&victim) {
            return None;
        }
        Some(settled(&client, &ns, "r", &infra.sim, 3).await)
    })
    .await;
    let ids = |m: &[(String, u64, bool)]| m.iter().map(|(_, id, _)| *id).collect::<Vec<_>>();
    let new: Vec<u64> = ids(&after)
        .into_iter()
        .filter(|id| !ids(&before).contains(id))
        .collect();
    assert_eq!(
        new.len(),
        1,
        "one new member: before {before:?}, after {after:?}"
    );
    assert_eq!(after.len(), 3);
}

#[tokio::test]
async fn kubeconfig_is_issued_and_rotated_on_request() {
    let (client, ns, _controller) = setup("cp-kubeconfig").await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "k", 1).await;
    settled(&client, &ns, "k", &infra.sim, 1).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let first = secrets.get("k-kubeconfig").await.unwrap();
    assert_eq!(first.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    let value =
        |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["value"].0.clone()).unwrap();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&value(&first)).unwrap();
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        "https://192.168.1.100:6443"
    );

    Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "talos.controlplane.cluster.x-k8s.io/rotate-kubeconfig": "2026-11-23"
            }}})),
        )
        .await
        .unwrap();
    let rotated = eventually(&client, &ns, "k", "the kubeconfig rotated", async || {
        let s = secrets.get("k-kubeconfig").await.ok()?;
        (value(&s) != value(&first)).then_some(s)
    })
    .await;
    assert_eq!(
        rotated
            .annotations()
            .get("talos.controlplane.cluster.x-k8s.io/kubeconfig-rotated-for")
            .map(String::as_str),
        Some("2026-11-23")
    );
}

#[tokio::test]
async fn pause_stops_changes_and_deletion_removes_every_machine() {
    let (client, ns, _controller) = setup("cp-lifecycle").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "l", 1).await;
    settled(&client, &ns, "l", &infra.sim, 1).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.patch(
        "l",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": ""}}})),
    )
    .await
    .unwrap();
    eventually(&client, &ns, "l", "Paused", async || {
        let tcp = api.get("l").await.ok()?;
        (condition(&tcp, ConditionType::Paused)?.status == "True").then_some(())
    })
    .await;
    scale(&client, &ns, "l", 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        machines(&client, &ns).await.len(),
        1,
        "nothing changes while paused"
    );
    api.patch(
        "l",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": null}}})),
    )
    .await
    .unwrap();
    settled(&client, &ns, "l", &infra.sim, 3).await;

    api.delete("l", &Default::default()).await.unwrap();
    eventually(
        &client,
        &ns,
        "l",
        "the control plane and its machines gone",
        async || {
            let gone = api.get_opt("l").await.ok()?.is_none();
            (gone && machines(&client, &ns).await.is_empty()).then_some(())
        },
    )
    .await;
}
