//! Scaling over failure domains, and machines replaced after a deletion or a zone outage.

use super::*;

#[tokio::test]
async fn scales_one_to_three_over_zones_and_back_to_one_without_orphan_members() {
    let (client, ns, _controller) = setup("cp-scale").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    one_machine_up_and_available(&client, &ns, &infra).await;
    three_over_zones_from_the_template(&client, &ns, &infra).await;
    template_metadata_reaches_the_machines_in_place(&client, &ns).await;
    straight_to_one_and_zero_refused(&client, &ns, &infra).await;
}

/// Brings control plane "s" up with one machine: initialized, Available, with our finalizer.
async fn one_machine_up_and_available(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) {
    control_plane_cluster(client, ns, "s", 1).await;
    settled(client, ns, "s", &infra.sim, 1).await;

    let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), ns)
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
}

/// Scales to three: one machine per failure domain, each cloned from the template.
async fn three_over_zones_from_the_template(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) {
    scale(client, ns, "s", 3).await;
    settled(client, ns, "s", &infra.sim, 3).await;
    let mut zones: Vec<String> = machines(client, ns)
        .await
        .iter()
        .filter_map(|m| m.spec.failure_domain.clone())
        .collect();
    zones.sort();
    assert_eq!(zones, ["a", "b", "c"], "one machine per failure domain");
    // Each machine got its infrastructure cloned from the template, and its own TalosConfig.
    for m in machines(client, ns).await {
        let infra_machine = dynamic(
            client,
            ns,
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
}

/// Template labels and timeouts reach the machines in place; a dropped label leaves them, one
/// set by someone else stays.
async fn template_metadata_reaches_the_machines_in_place(client: &kube::Client, ns: &str) {
    // Template metadata and timeouts reach the machines in place.
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"machineTemplate": {
                "metadata": {"labels": {"team": "platform"}}, "nodeDrainTimeout": "5m"
            }}})),
        )
        .await
        .unwrap();
    eventually(
        client,
        ns,
        "s",
        "template metadata on every machine",
        async || {
            let all = machines(client, ns).await;
            all.iter()
                .all(|m| {
                    m.labels().get("team").map(String::as_str) == Some("platform")
                        && m.spec
                            .deletion
                            .as_ref()
                            .and_then(|d| d.node_drain_timeout_seconds)
                            == Some(300)
                })
                .then_some(())
        },
    )
    .await;
    // A label dropped from the template leaves the machines; one set by someone else stays.
    let first = machines(client, ns).await.remove(0).name_any();
    Api::<Machine>::namespaced(client.clone(), ns)
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owner": "someone-else"}}})),
        )
        .await
        .unwrap();
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"machineTemplate": {"metadata": {"labels": null}}}})),
        )
        .await
        .unwrap();
    eventually(
        client,
        ns,
        "s",
        "the dropped template label gone from every machine",
        async || {
            let all = machines(client, ns).await;
            all.iter()
                .all(|m| !m.labels().contains_key("team"))
                .then_some(all)
        },
    )
    .await;
    let kept = Api::<Machine>::namespaced(client.clone(), ns)
        .get(&first)
        .await
        .unwrap();
    assert_eq!(
        kept.labels().get("owner").map(String::as_str),
        Some("someone-else")
    );
}

/// Scales straight to one with no orphan members; zero replicas is refused at admission.
async fn straight_to_one_and_zero_refused(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) {
    // Straight to one, without waiting between steps.
    scale(client, ns, "s", 1).await;
    let members = settled(client, ns, "s", &infra.sim, 1).await;
    let survivor = machines(client, ns).await;
    assert_eq!(survivor.len(), 1);
    assert_eq!(members.len(), 1, "no orphan members: {members:?}");

    assert_etcd_invariants(client, ns, "s", &infra.sim).await;

    // Zero replicas is refused at admission, with a message that says why.
    let refused = Api::<TalosControlPlane>::namespaced(client.clone(), ns)
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
    let after = replaced_and_settled(&client, &ns, "r", &infra.sim, &victim).await;
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
async fn a_zone_outage_moves_the_replacement_to_a_surviving_zone() {
    let (client, ns, _controller) = setup("cp-zones").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "z", 3).await;
    settled(&client, &ns, "z", &infra.sim, 3).await;
    let in_a = machines(&client, &ns)
        .await
        .into_iter()
        .find(|m| m.spec.failure_domain.as_deref() == Some("a"))
        .unwrap()
        .name_any();
    // Zone a fails: its node goes dark and the infrastructure stops offering it.
    let address = node_of(&client, &ns, &in_a).await;
    infra.sim.set_failures(&address, |f| f.down = true).unwrap();
    dynamic(&client, &ns, "infrastructure.cluster.x-k8s.io/v1alpha1", "SimCluster")
        .patch_status("z", &PatchParams::default(), &Patch::Merge(json!({"status": {"failureDomains": [
            {"name": "a", "controlPlane": false}, {"name": "b", "controlPlane": true}, {"name": "c", "controlPlane": true}
        ]}})))
        .await
        .unwrap();
    let clusters = dynamic(&client, &ns, "cluster.x-k8s.io/v1beta2", "Cluster");
    eventually(
        &client,
        &ns,
        "z",
        "Cluster API copies the failure domains",
        async || {
            let c = clusters.get("z").await.ok()?;
            (c.data["status"]["failureDomains"][0]["controlPlane"] == json!(false)).then_some(())
        },
    )
    .await;
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&in_a, &Default::default())
        .await
        .unwrap();
    replaced_and_settled(&client, &ns, "z", &infra.sim, &in_a).await;
    let zones: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .filter_map(|m| m.spec.failure_domain.clone())
        .collect();
    assert!(!zones.contains(&"a".to_owned()), "{zones:?}");
    assert_etcd_invariants(&client, &ns, "z", &infra.sim).await;
}
