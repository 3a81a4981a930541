//! Regressions of the Go CACPPT, each test named after its issue (CACPPT #225, #237, #262):
//! scaling down past a dead node, a restart between member removal and machine deletion, and an
//! unhealthy member that blocks growth but not its own removal.

use super::*;

#[tokio::test]
async fn cacppt_225_scale_down_removes_a_machine_whose_node_is_down() {
    let (client, ns, _controller) = setup("cp-225").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "d", 3).await;
    settled(&client, &ns, "d", &infra.sim, 3).await;
    let victim = machines(&client, &ns).await.remove(2).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"cluster.x-k8s.io/delete-machine": ""}}}),
            ),
        )
        .await
        .unwrap();
    let address = node_of(&client, &ns, &victim).await;
    infra.sim.set_failures(&address, |f| f.down = true).unwrap();
    scale(&client, &ns, "d", 2).await;
    settled(&client, &ns, "d", &infra.sim, 2).await;
    let names: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(
        !names.contains(&victim),
        "the annotated machine with the dead node went: {names:?}"
    );
    assert_etcd_invariants(&client, &ns, "d", &infra.sim).await;
}

#[tokio::test]
async fn cacppt_237_a_restart_between_member_removal_and_machine_deletion_resumes() {
    let (client, ns, controller) = setup("cp-237").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "g", 3).await;
    settled(&client, &ns, "g", &infra.sim, 3).await;
    // The manager stops; the machine is being deleted and its member already left etcd.
    drop(controller);
    let all = machines(&client, &ns).await;
    let victim = all[0].name_any();
    let victim_node = node_of(&client, &ns, &victim).await;
    let other_node = node_of(&client, &ns, &all[1].name_any()).await;
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&victim, &Default::default())
        .await
        .unwrap();
    let id = sim_infra::cluster_id(&client, &ns, "g").await.unwrap();
    let member = member_on(&infra.sim.etcd_members(&id), &victim_node).unwrap();
    let talosconfig = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("g-talosconfig")
        .await
        .unwrap();
    let talosconfig =
        String::from_utf8(talosconfig.data.unwrap()["talosconfig"].0.clone()).unwrap();
    use controller::nodes::{Grpc, TalosNodes};
    let talos = Grpc::default()
        .connect(&talosconfig, vec![other_node])
        .unwrap();
    talos
        .etcd_remove_member(&talos_api::Nodes::Endpoint, member)
        .await
        .unwrap();
    // Still there: Cluster API's deletion of it waits on our pre-terminate hook.
    let held = eventually(
        &client,
        &ns,
        "g",
        "the deletion held by our hook",
        async || {
            let machine = Api::<Machine>::namespaced(client.clone(), &ns)
                .get(&victim)
                .await
                .ok()?;
            let deleting = machine
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Deleting")?
                .clone();
            (deleting.status == "True" && deleting.reason == "WaitingForPreTerminateHook")
                .then_some(deleting)
        },
    )
    .await;
    assert!(
        held.message
            .contains(&controller::controlplane::machines::cleanup_hook()),
        "{held:?}"
    );

    let _controller = start_controller(&client, &ns);
    replaced_and_settled(&client, &ns, "g", &infra.sim, &victim).await;
    assert_etcd_invariants(&client, &ns, "g", &infra.sim).await;
}

#[tokio::test]
async fn cacppt_262_one_unhealthy_member_blocks_growth_but_not_its_own_removal() {
    let (client, ns, _controller) = setup("cp-262").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "h", 3).await;
    settled(&client, &ns, "h", &infra.sim, 3).await;
    let sick = machines(&client, &ns).await.remove(1).name_any();
    let address = node_of(&client, &ns, &sick).await;
    infra
        .sim
        .set_failures(&address, |f| f.etcd_unhealthy = true)
        .unwrap();
    wait_condition(
        &client,
        &ns,
        "h",
        ConditionType::EtcdClusterHealthy,
        "False",
        &sick,
    )
    .await;
    // Growing waits, and says for which member.
    scale(&client, &ns, "h", 4).await;
    wait_condition(&client, &ns, "h", ConditionType::ScalingUp, "True", &sick).await;
    assert_eq!(machines(&client, &ns).await.len(), 3);
    // Shrinking removes the sick machine rather than blocking on it.
    scale(&client, &ns, "h", 2).await;
    settled(&client, &ns, "h", &infra.sim, 2).await;
    let names: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(!names.contains(&sick), "{names:?}");
    assert_etcd_invariants(&client, &ns, "h", &infra.sim).await;
}
