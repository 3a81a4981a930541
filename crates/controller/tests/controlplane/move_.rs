//! `clusterctl move` to another management cluster.

use super::*;

/// clusterctl's inventory in a management cluster: its Provider CRD and one Provider per
/// provider installed (Cluster API core, ours, the test infrastructure), and every CRD labelled
/// for clusterctl's move discovery, as `clusterctl init` leaves them.
async fn clusterctl_inventory(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let config = testkit::tools::locate(testkit::tools::Tool::ClusterApiConfig).unwrap();
    let inventory = testkit::crds_from_dir(&config.join("clusterctl-crd")).unwrap();
    testkit::install_crds(client, &inventory).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&ListParams::default()).await.unwrap() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"clusterctl.cluster.x-k8s.io": ""}}})),
        )
        .await
        .unwrap();
    }
    for (name, provider, kind, ns, version) in [
        (
            "cluster-api",
            "cluster-api",
            "CoreProvider",
            "capi-system",
            "v1.14.2",
        ),
        (
            "bootstrap-talos",
            "talos",
            "BootstrapProvider",
            "talos-capi-bootstrap-system",
            "v0.1.0",
        ),
        (
            "control-plane-talos",
            "talos",
            "ControlPlaneProvider",
            "talos-capi-control-plane-system",
            "v0.1.0",
        ),
        (
            "infrastructure-sim",
            "sim",
            "InfrastructureProvider",
            "sim-system",
            "v0.1.0",
        ),
    ] {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                ns,
                &PatchParams::apply("move-test"),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                ),
            )
            .await
            .unwrap();
        apply(
            client,
            ns,
            json!({
                "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
                "metadata": {"name": name, "labels": {
                    "cluster.x-k8s.io/provider": name, "clusterctl.cluster.x-k8s.io": ""}},
                "providerName": provider, "type": kind, "version": version
            }),
        )
        .await;
    }
}

/// The data of every Secret of the cluster, by name.
async fn cluster_secrets(client: &kube::Client, ns: &str, cluster: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/cluster-name={cluster}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.name_any(), serde_json::to_string(&s.data).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn clusterctl_move_to_another_management_cluster_keeps_secrets_machines_and_members() {
    // Source: the shared control plane; target: a second one with Cluster API core and our CRDs
    // (clusterctl move takes two management clusters).
    let (source, ns, source_controller) = setup("cp-move").await;
    let mut infra = sim_infra::start_with(&source, &ns, &["a", "b", "c"], true);
    let (id, history_before, names_before, secrets_before) =
        settled_and_linked(&source, &ns, &infra).await;

    let (target_cp, target) = a_target_management_cluster(&source, &ns).await;
    // Our controller runs in both management clusters, as it would; the infrastructure's
    // controller pauses during the move and then serves from the target.
    let (_target_controller, target_ctx) =
        start_controller_context(&target, &ns, Default::default());
    clusterctl_move(&ns, &mut infra, &target_cp, &target).await;

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

/// Starts a second management cluster with Cluster API core, our CRDs, clusterctl's inventory
/// and the namespace; returns it and its client.
async fn a_target_management_cluster(
    source: &kube::Client,
    ns: &str,
) -> (testkit::LocalControlPlane, kube::Client) {
    let target_cp = testkit::LocalControlPlane::builder()
        .name("move-target")
        .cluster_api()
        .crds(testkit::tools::repo_root().join("config/crd/bases"))
        .start()
        .await
        .unwrap();
    let target = target_cp.client().await.unwrap();
    clusterctl_inventory(source).await;
    clusterctl_inventory(&target).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(target.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    (target_cp, target)
}

/// Pauses the infrastructure, runs clusterctl move, and serves the infrastructure from the
/// target.
async fn clusterctl_move(
    ns: &str,
    infra: &mut sim_infra::SimInfra,
    target_cp: &testkit::LocalControlPlane,
    target: &kube::Client,
) {
    infra.pause();
    let scratch = tempfile::tempdir().unwrap();
    let source_kubeconfig = scratch.path().join("source.kubeconfig");
    testkit::shared()
        .await
        .unwrap()
        .write_kubeconfig(&source_kubeconfig)
        .unwrap();
    let clusterctl = testkit::tools::locate(testkit::tools::Tool::Clusterctl).unwrap();
    let home = scratch.path().join("home");
    let moved = testkit::process::run(
        &clusterctl,
        &[
            "move",
            "--kubeconfig",
            source_kubeconfig.to_str().unwrap(),
            "--to-kubeconfig",
            target_cp.kubeconfig_path().to_str().unwrap(),
            "--namespace",
            ns,
        ],
        &[
            ("HOME", home.to_str().unwrap()),
            ("CLUSTERCTL_DISABLE_VERSIONCHECK", "true"),
        ],
        "",
    )
    .unwrap();
    assert!(moved.ok, "clusterctl move: {}", moved.output);
    infra.serve_from(target);
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
