//! `clusterctl move` to another management cluster.

use super::*;
use common::clusterctl::{self, cluster_secrets};

#[tokio::test]
async fn clusterctl_move_to_another_management_cluster_keeps_secrets_machines_and_members() {
    // Source: the shared control plane; target: a second one with Cluster API core and our CRDs
    // (clusterctl move takes two management clusters).
    let (source, ns, source_controller) = setup("cp-move").await;
    let mut infra = sim_infra::start_with(&source, &ns, &["a", "b", "c"], true);
    let (id, history_before, names_before, secrets_before) =
        settled_and_linked(&source, &ns, &infra).await;

    let (target_cp, target) = clusterctl::target_management_cluster(&source, &ns, false).await;
    // Our controller runs in both management clusters, as it would; the infrastructure's
    // controller pauses during the move and then serves from the target.
    let (_target_controller, target_ctx) =
        start_controller_context(&target, &ns, Default::default());
    let source_cp = testkit::shared().await.unwrap();
    clusterctl::clusterctl_move(source_cp, &ns, &mut infra, &target_cp, &target).await;

    the_same_machines_and_secrets_in_the_target(
        &target,
        &ns,
        &infra,
        &names_before,
        &secrets_before,
    )
    .await;
    nothing_late(
        &target,
        &ns,
        &infra,
        &target_ctx,
        &id,
        history_before,
        &secrets_before,
    )
    .await;
    the_source_keeps_nothing(&source, &ns).await;
    drop(source_controller);
}

/// Brings control plane "mv" up with three machines linked to their Nodes; returns the etcd
/// cluster id, its history length, the machines' names and the cluster's Secrets.
async fn settled_and_linked(
    source: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> (String, usize, Vec<String>, Vec<(String, String)>) {
    let port = testkit::process::free_port().unwrap();
    control_plane_cluster_at(source, ns, "mv", 3, ("127.0.0.1", port)).await;
    settled(source, ns, "mv", &infra.sim, 3).await;
    // clusterctl moves only what has finished provisioning: every Machine has its Node.
    eventually(
        source,
        ns,
        "mv",
        "every machine linked to its Node",
        async || {
            let all = machines(source, ns).await;
            let linked = all.iter().filter(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.node_ref.as_ref())
                    .is_some()
            });
            (linked.count() == 3).then_some(())
        },
    )
    .await;
    let id = sim_infra::cluster_id(source, ns, "mv").await.unwrap();
    let history_before = infra.sim.etcd_history(&id).len();
    let mut names_before = machine_names(source, ns).await;
    names_before.sort();
    let secrets_before = cluster_secrets(source, ns, "mv").await;
    assert!(secrets_before.len() >= 4, "{secrets_before:?}");
    (id, history_before, names_before, secrets_before)
}

/// In the target: the same machines, healthy members, and not one Secret written anew.
async fn the_same_machines_and_secrets_in_the_target(
    target: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    names_before: &[String],
    secrets_before: &[(String, String)],
) {
    // In the target: the same machines, healthy members, and not one Secret written anew.
    settled(target, ns, "mv", &infra.sim, 3).await;
    let mut names_after = machine_names(target, ns).await;
    names_after.sort();
    assert_eq!(names_after, names_before, "no machine replaced");
    assert_eq!(cluster_secrets(target, ns, "mv").await, secrets_before);
}

/// Once the target's controllers have reconciled everything: no machine, member or Secret late.
async fn nothing_late(
    target: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    target_ctx: &controller::Context,
    id: &str,
    history_before: usize,
    secrets_before: &[(String, String)],
) {
    // Once the target's controllers have reconciled the control plane and every TalosConfig
    // as they are now: nothing late.
    reconciled_since(target_ctx, target, ns, "mv").await;
    configs_reconciled_since(target_ctx, target, ns).await;
    assert_eq!(
        machine_names(target, ns).await.len(),
        3,
        "no machine created after the move"
    );
    let history = infra.sim.etcd_history(id);
    assert_eq!(
        history.len(),
        history_before,
        "no etcd membership change across the move: {history:?}"
    );
    assert_eq!(cluster_secrets(target, ns, "mv").await, secrets_before);
}

/// The source management cluster keeps no machine.
async fn the_source_keeps_nothing(source: &kube::Client, ns: &str) {
    assert!(
        machines(source, ns).await.is_empty(),
        "the source keeps nothing"
    );
}
