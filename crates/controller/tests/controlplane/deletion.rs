//! Pause, and deletion of the control plane: every machine removed, after the workers.

use super::*;

#[tokio::test]
async fn pause_stops_changes_and_deletion_removes_every_machine() {
    let (client, ns, _controller, ctx) = setup_context("cp-lifecycle", Default::default()).await;
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
    reconciled_since(&ctx, &client, &ns, "l").await;
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

#[tokio::test]
async fn deletion_waits_for_the_worker_machines_and_only_then_removes_the_control_plane() {
    let (client, ns, _controller, ctx) =
        setup_context("cp-delete-workers", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "w", 1).await;
    settled(&client, &ns, "w", &infra.sim, 1).await;
    let worker = json!({"generateType": "worker", "talosVersion": "v1.13"});
    machine(&client, &ns, "w", "w-worker-0", worker, false).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.delete("w", &Default::default()).await.unwrap();
    wait_condition(
        &client,
        &ns,
        "w",
        ConditionType::Deleting,
        "True",
        "waiting for the worker machines of Cluster w to be deleted first (1 left)",
    )
    .await;
    // The workers still run on this control plane: nothing of it goes yet.
    reconciled_since(&ctx, &client, &ns, "w").await;
    let control_planes: Vec<Machine> = machines(&client, &ns)
        .await
        .into_iter()
        .filter(|m| m.labels().contains_key("cluster.x-k8s.io/control-plane"))
        .collect();
    assert_eq!(control_planes.len(), 1);
    assert!(
        control_planes[0].metadata.deletion_timestamp.is_none(),
        "the control-plane machine is not deleted while a worker exists"
    );
    assert!(
        api.get_opt("w").await.unwrap().is_some(),
        "the finalizer holds"
    );

    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete("w-worker-0", &Default::default())
        .await
        .unwrap();
    eventually(
        &client,
        &ns,
        "w",
        "the control plane and its machines gone once the worker is",
        async || {
            let gone = api.get_opt("w").await.ok()?.is_none();
            (gone && machines(&client, &ns).await.is_empty()).then_some(())
        },
    )
    .await;
}
