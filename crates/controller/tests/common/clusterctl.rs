//! `clusterctl move` between two local management clusters: clusterctl's inventory as
//! `clusterctl init` leaves it, a target management cluster, and the move itself.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::{apply, sim_infra};

/// One Provider of clusterctl's inventory: name, provider name, type, namespace, version.
type Provider = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const PROVIDERS: [Provider; 4] = [
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
];

/// The in-cluster IPAM provider ([`testkit::Builder::ipam_in_cluster`]).
const IPAM_PROVIDER: Provider = (
    "ipam-in-cluster",
    "in-cluster",
    "IPAMProvider",
    "capi-ipam-in-cluster-system",
    "v1.1.0",
);

/// The labels `clusterctl init` leaves on CRD `name`: every provider's CRDs carry clusterctl's
/// label; the in-cluster IPAM provider's pool CRDs also carry `move-hierarchy`, as its release's
/// CRD patches set it (a pool is no Cluster's descendant: without it, clusterctl would not
/// move a pool, nor the addresses it owns).
fn crd_labels(name: &str) -> Value {
    if name.ends_with("pools.ipam.cluster.x-k8s.io") {
        json!({"clusterctl.cluster.x-k8s.io": "", "clusterctl.cluster.x-k8s.io/move-hierarchy": ""})
    } else {
        json!({"clusterctl.cluster.x-k8s.io": ""})
    }
}

/// clusterctl's inventory in a management cluster: its Provider CRD and one Provider per
/// provider installed (Cluster API core, ours, the test infrastructure, and with `ipam` the
/// in-cluster IPAM provider), and every CRD labelled for clusterctl's move discovery, as
/// `clusterctl init` leaves them.
pub async fn inventory(client: &kube::Client, ipam: bool) {
    let config = testkit::tools::locate(testkit::tools::Tool::ClusterApiConfig).unwrap();
    let inventory = testkit::crds_from_dir(&config.join("clusterctl-crd")).unwrap();
    testkit::install_crds(client, &inventory).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&ListParams::default()).await.unwrap() {
        let labels = crd_labels(&crd.name_any());
        crds.patch(
            &crd.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
    }
    let ipam = ipam.then_some(IPAM_PROVIDER);
    for (name, provider, kind, ns, version) in PROVIDERS.into_iter().chain(ipam) {
        namespace(client, ns).await;
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

/// Namespace `name`, created if missing.
pub async fn namespace(client: &kube::Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("move-test"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            ),
        )
        .await
        .unwrap();
}

/// Starts a second management cluster with Cluster API core (and with `ipam` the in-cluster
/// IPAM provider), our CRDs, clusterctl's inventory (in `source` too) and namespace `ns`;
/// returns it and its client.
pub async fn target_management_cluster(
    source: &kube::Client,
    ns: &str,
    ipam: bool,
) -> (testkit::LocalControlPlane, kube::Client) {
    let mut builder = testkit::LocalControlPlane::builder()
        .name("move-target")
        .cluster_api();
    if ipam {
        builder = builder.ipam_in_cluster();
    }
    let target_cp = builder
        .crds(testkit::tools::repo_root().join("config/crd/bases"))
        .start()
        .await
        .unwrap();
    let target = target_cp.client().await.unwrap();
    inventory(source, ipam).await;
    inventory(&target, ipam).await;
    namespace(&target, ns).await;
    (target_cp, target)
}

/// Pauses the infrastructure, runs `clusterctl move` of namespace `ns` from `source_cp` to
/// `target_cp`, and serves the infrastructure from the target.
pub async fn clusterctl_move(
    source_cp: &testkit::LocalControlPlane,
    ns: &str,
    infra: &mut sim_infra::SimInfra,
    target_cp: &testkit::LocalControlPlane,
    target: &kube::Client,
) {
    infra.pause();
    let scratch = tempfile::tempdir().unwrap();
    let source_kubeconfig = scratch.path().join("source.kubeconfig");
    source_cp.write_kubeconfig(&source_kubeconfig).unwrap();
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

/// The data of every Secret of cluster `cluster`, by name.
pub async fn cluster_secrets(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
) -> Vec<(String, String)> {
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
