//! The management cluster is fit for talos-capi: Cluster API core CRDs are served and its
//! controllers reconcile. Later scenarios (bootstrap, control plane, upgrades) build on this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::conditions::is_crd_established;
use kube::runtime::wait::{Condition, await_condition};
use serde_json::json;
use talos_capi_e2e::client;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn cluster_api_core_crds_are_established() {
    let crds: Api<CustomResourceDefinition> = Api::all(client().await);
    for name in [
        "clusters.cluster.x-k8s.io",
        "machines.cluster.x-k8s.io",
        "machinesets.cluster.x-k8s.io",
        "machinedeployments.cluster.x-k8s.io",
        "clusterclasses.cluster.x-k8s.io",
    ] {
        let crd = crds
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            is_crd_established().matches_object(Some(&crd)),
            "{name} is Established"
        );
    }
}

#[tokio::test]
async fn cluster_api_core_reconciles_a_cluster() {
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": "e2e-capi-"}})).unwrap();
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let ns_name = ns.metadata.name.clone().unwrap();

    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cluster.x-k8s.io",
        "v1beta1",
        "Cluster",
    ));
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns_name, &ar);
    let cluster: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "e2e"},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]}},
            // Cluster API v1.12+ requires a reference; our kind is what every install has.
            "controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane", "name": "e2e-cp"}
        }
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    let reconciled =
        |c: Option<&DynamicObject>| c.is_some_and(|c| c.data["status"]["phase"].is_string());
    tokio::time::timeout(WAIT, await_condition(clusters.clone(), "e2e", reconciled))
        .await
        .expect("Cluster API reconciles the Cluster")
        .unwrap();

    // Cleanup goes through Cluster API's finalizer, proving the deletion path works too.
    clusters
        .delete("e2e", &DeleteParams::default())
        .await
        .unwrap();
    let gone = |c: Option<&DynamicObject>| c.is_none();
    tokio::time::timeout(WAIT, await_condition(clusters, "e2e", gone))
        .await
        .expect("Cluster API removes its finalizer and the Cluster is deleted")
        .unwrap();
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .unwrap();
}

/// Our CRDs are installed and Cluster API resolves our control-plane kind through their
/// contract labels (it adopts a TalosControlPlane referenced by a Cluster).
#[tokio::test]
async fn cluster_api_adopts_a_talos_control_plane() {
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": "e2e-tcp-"}})).unwrap();
    let ns_name = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();

    let tcp_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "controlplane.cluster.x-k8s.io",
        "v1alpha3",
        "TalosControlPlane",
    ));
    let tcps: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns_name, &tcp_ar);
    let tcp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
        "metadata": {"name": "e2e-cp"},
        "spec": {
            "version": "v1.33.2", "replicas": 3,
            "infrastructureTemplate": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "ProxmoxMachineTemplate", "name": "cp"},
            "controlPlaneConfig": {"controlplane": {"generateType": "controlplane"}}
        }
    }))
    .unwrap();
    tcps.create(&PostParams::default(), &tcp).await.unwrap();

    let cluster_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cluster.x-k8s.io",
        "v1beta1",
        "Cluster",
    ));
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns_name, &cluster_ar);
    let cluster: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "e2e"},
        "spec": {"controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane", "name": "e2e-cp"}}
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();

    let adopted = |o: Option<&DynamicObject>| {
        o.and_then(|o| o.metadata.owner_references.as_ref())
            .is_some_and(|refs| refs.iter().any(|r| r.kind == "Cluster" && r.name == "e2e"))
    };
    tokio::time::timeout(WAIT, await_condition(tcps, "e2e-cp", adopted))
        .await
        .expect("Cluster API adopts the TalosControlPlane")
        .unwrap();
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .unwrap();
}
