//! What interrupted work leaves behind: replies lost after the call took effect, and the objects of
//! a machine creation cut short.

use super::*;

/// A connection reset can take the reply of a call that did take effect. Every node here loses
/// the reply to its first Bootstrap, member removal, leadership move and Upgrade. Asking again,
/// the controller finds what happened instead of doing it twice: etcd is bootstrapped once,
/// each member is removed once, and each node boots into the new Talos version once.
#[tokio::test]
async fn replies_lost_after_bootstrap_member_removal_and_upgrade_are_not_acted_on_twice() {
    let (client, ns, _controller) = setup("cp-lost-reply").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    infra.sim.set_new_node_failures(|f| {
        for method in [
            "Bootstrap",
            "EtcdRemoveMemberByID",
            "EtcdLeaveCluster",
            "EtcdForfeitLeadership",
            "Upgrade",
        ] {
            f.lost_replies.insert(method.to_owned(), 1);
        }
    });
    control_plane_cluster(&client, &ns, "lr", 3).await;
    settled(&client, &ns, "lr", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "lr").await.unwrap();

    // In place: each node boots once more, into the new version.
    let before = boots(&client, &ns, &infra.sim).await;
    patch_spec(
        &client,
        &ns,
        "lr",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "timeoutSeconds": 60}}),
    )
    .await;
    let nodes: Vec<String> = {
        let mut out = Vec::new();
        for (m, _) in &before {
            out.push(node_of(&client, &ns, m).await);
        }
        out
    };
    eventually(&client, &ns, "lr", "every node on v1.13.1", async || {
        nodes
            .iter()
            .all(|n| infra.sim.status(n).is_some_and(|(_, v)| v == "v1.13.1"))
            .then_some(())
    })
    .await;
    settled(&client, &ns, "lr", &infra.sim, 3).await;
    wait_condition(&client, &ns, "lr", ConditionType::RollingOut, "False", "").await;
    let after = boots(&client, &ns, &infra.sim).await;
    for ((m, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(
            *a,
            b + 1,
            "{m}: booted once into the upgrade ({before:?} -> {after:?})"
        );
    }

    // Scale down: two members leave, each removed once.
    scale(&client, &ns, "lr", 1).await;
    settled(&client, &ns, "lr", &infra.sim, 1).await;
    assert_etcd_invariants(&client, &ns, "lr", &infra.sim).await;
    let history = infra.sim.etcd_history(&id);
    let removed: Vec<u64> = history
        .iter()
        .filter(|c| c.op == Op::Remove)
        .map(|c| c.id)
        .collect();
    let mut distinct = removed.clone();
    distinct.dedup();
    assert_eq!(removed.len(), 2, "{history:?}");
    assert_eq!(distinct, removed, "no member removed twice: {history:?}");

    // The replies were lost: Bootstrap's once, a member removal's, and every node's Upgrade.
    let lost = infra.sim.lost_replies();
    let count = |method: &str| lost.iter().filter(|(_, m)| m == method).count();
    assert_eq!(count("Bootstrap"), 1, "{lost:?}");
    assert!(count("EtcdRemoveMemberByID") >= 1, "{lost:?}");
    for node in &nodes {
        assert!(
            lost.contains(&(node.clone(), "Upgrade".to_owned())),
            "{node}: {lost:?}"
        );
    }
}

#[tokio::test]
async fn what_a_machine_creation_cut_short_left_behind_is_removed_and_nothing_else() {
    let (client, ns, _controller) = setup_with(
        "cp-leftover",
        controller::Options {
            leftover_grace: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "l", 1).await;
    settled(&client, &ns, "l", &infra.sim, 1).await;
    let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .get("l")
        .await
        .unwrap();
    let ours = json!([{
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
        "name": "l", "uid": tcp.metadata.uid, "controller": false,
    }]);
    let labels =
        json!({"cluster.x-k8s.io/cluster-name": "l", "cluster.x-k8s.io/control-plane": ""});
    // What a manager stopped between the TalosConfig and the Machine leaves: both of the
    // machine's first objects, ours and controlled by nothing.
    let infra_version = testkit::infra::api_version();
    apply(
        &client,
        &ns,
        json!({"apiVersion": infra_version, "kind": "SimMachine",
            "metadata": {"name": "l-cut", "labels": labels, "ownerReferences": ours}, "spec": {}}),
    )
    .await;
    let config = |name: &str, owners: serde_json::Value| {
        json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
            "spec": {"generateType": "controlplane"}})
    };
    apply(&client, &ns, config("l-cut", ours.clone())).await;
    // Someone else's config of the same cluster is not ours to remove.
    apply(&client, &ns, config("l-someone-elses", json!([]))).await;
    let configs = dynamic(
        &client,
        &ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    );
    let sim_machines = dynamic(&client, &ns, &infra_version, "SimMachine");
    eventually(&client, &ns, "l", "the leftovers removed", async || {
        let config = configs.get_opt("l-cut").await.ok()?;
        let machine = sim_machines.get_opt("l-cut").await.ok()?;
        (config.is_none() && machine.is_none()).then_some(())
    })
    .await;
    assert!(
        configs.get_opt("l-someone-elses").await.unwrap().is_some(),
        "a config that is not ours stays"
    );
    let left = machines(&client, &ns).await;
    assert_eq!(left.len(), 1, "the machine itself stays");
    let own = left[0].name_any();
    assert!(configs.get_opt(&own).await.unwrap().is_some());
    assert!(sim_machines.get_opt(&own).await.unwrap().is_some());
    settled(&client, &ns, "l", &infra.sim, 1).await;
}
