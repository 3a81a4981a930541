//! Proves the local control plane: real etcd + kube-apiserver + Cluster API core manager.
//! All tests in this binary share one control plane (testkit::shared) and isolate themselves by
//! namespace; the side-by-side and lifecycle tests start their own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use testkit::{LocalControlPlane, install_crds, shared, unique_namespace};

const WAIT: Duration = Duration::from_secs(60);

fn dynamic(
    client: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("test object is valid JSON for DynamicObject")
}

#[tokio::test]
async fn secret_create_get_watch() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "secrets").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let mut events = watcher(secrets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s1"},
        "stringData": {"key": "value-1"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let got = secrets.get("s1").await.unwrap();
    let data = got.data.unwrap();
    assert_eq!(data["key"].0, b"value-1", "stringData is stored as data");

    secrets
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"key": "value-2"}})),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(s) = events.try_next().await.unwrap() {
            if s.data
                .as_ref()
                .and_then(|d| d.get("key"))
                .map(|v| v.0.as_slice())
                == Some(b"value-2")
            {
                return s;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the watch delivers the update");
    assert_eq!(seen.metadata.namespace.as_deref(), Some(ns.as_str()));
}

#[tokio::test]
async fn namespaced_custom_resource_with_status_subresource() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.testkit.talos-capi.dev"},
        "spec": {
            "group": "testkit.talos-capi.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                }}}
            }]
        }
    }))
    .unwrap();
    install_crds(&client, &[crd]).await.unwrap();
    let ns = unique_namespace(&client, "widgets").await.unwrap();
    let widgets = dynamic(&client, &ns, "testkit.talos-capi.dev", "v1", "Widget");

    let w = object(json!({
        "apiVersion": "testkit.talos-capi.dev/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}, "status": {"ready": true}
    }));
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is ignored on create when the status subresource is enabled"
    );

    let pp = PatchParams::default();
    widgets
        .patch_status(
            "w1",
            &pp,
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    let got = widgets.get("w1").await.unwrap();
    assert_eq!(got.data["status"]["ready"], json!(true));
    assert_eq!(
        got.data["spec"]["size"],
        json!(3),
        "spec is not writable through /status"
    );

    let invalid = object(json!({
        "apiVersion": "testkit.talos-capi.dev/v1", "kind": "Widget",
        "metadata": {"name": "w2"}, "spec": {"size": 0}
    }));
    let err = widgets
        .create(&PostParams::default(), &invalid)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.size"),
        "schema validation names the field: {err}"
    );
}

fn cluster(name: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]}},
            "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimCluster", "name": name}
        }
    }))
}

#[tokio::test]
async fn cluster_api_crds_accept_cluster_and_machine() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "capi-objects").await.unwrap();
    let clusters = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta1", "Cluster");
    let machines = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta1", "Machine");

    clusters
        .create(&PostParams::default(), &cluster("c1"))
        .await
        .unwrap();
    let machine = object(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
        "metadata": {"name": "m1"},
        "spec": {
            "clusterName": "c1",
            "version": "v1.33.0",
            "bootstrap": {"dataSecretName": "m1-bootstrap"},
            "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "m1"}
        }
    }));
    let created = machines
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();
    // Cluster API's defaulting webhook (registered by testkit) labels machines with their cluster.
    assert_eq!(
        created
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("cluster.x-k8s.io/cluster-name"))
            .map(String::as_str),
        Some("c1")
    );

    // Cluster API's validating webhook rejects what its schema alone cannot.
    let bad = object(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
        "metadata": {"name": "m2"},
        "spec": {
            "clusterName": "c1",
            "version": "not-a-version",
            "bootstrap": {"dataSecretName": "x"},
            "infrastructureRef": {"kind": "SimMachine", "name": "m2"}
        }
    }));
    let err = machines
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("version"),
        "webhook explains the rejection: {err}"
    );
}

#[tokio::test]
async fn cluster_api_manager_reconciles_a_cluster() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "capi-reconcile").await.unwrap();
    // The test infrastructure provider's cluster, already provisioned (v1beta2 contract).
    let infra = dynamic(
        &client,
        &ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "SimCluster",
    );
    let sim: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimCluster",
        "metadata": {"name": "c2"}, "spec": {}
    }))
    .unwrap();
    infra.create(&PostParams::default(), &sim).await.unwrap();
    infra
        .patch_status(
            "c2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}}})),
        )
        .await
        .unwrap();

    let clusters = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta1", "Cluster");
    let created = clusters
        .create(&PostParams::default(), &cluster("c2"))
        .await
        .unwrap();
    assert!(
        created.data["status"]["phase"].is_null(),
        "no phase before the manager acts"
    );

    let reconciled = |obj: Option<&DynamicObject>| {
        obj.is_some_and(|c| {
            c.data["status"]["observedGeneration"] == json!(1)
                && c.data["status"]["infrastructureReady"] == json!(true)
        })
    };
    let c = tokio::time::timeout(WAIT, await_condition(clusters, "c2", reconciled))
        .await
        .expect("Cluster API reads the infrastructure cluster's status.initialization.provisioned")
        .unwrap()
        .unwrap();
    assert!(
        c.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "cluster.cluster.x-k8s.io"),
        "the manager adds its finalizer"
    );
    let owned = infra.get("c2").await.unwrap();
    assert!(
        owned
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "Cluster" && o.name == "c2"),
        "the Cluster adopts its infrastructure cluster"
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test]
async fn two_control_planes_side_by_side_and_shared_etcd() {
    let a = LocalControlPlane::builder()
        .name("a")
        .start()
        .await
        .unwrap();
    let b = LocalControlPlane::builder()
        .name("b")
        .start()
        .await
        .unwrap();
    assert_ne!(a.url(), b.url());
    // A third API server on a's etcd under its own prefix: one etcd, isolated object stores.
    let c = LocalControlPlane::builder()
        .name("c")
        .etcd(a.etcd(), "/workload-c")
        .start()
        .await
        .unwrap();

    let make = |name: &str| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    Api::<Namespace>::all(a.client().await.unwrap())
        .create(&PostParams::default(), &make("only-in-a"))
        .await
        .unwrap();
    Api::<Namespace>::all(c.client().await.unwrap())
        .create(&PostParams::default(), &make("only-in-c"))
        .await
        .unwrap();

    for (cp, present, absent) in [
        (&a, "only-in-a", "only-in-c"),
        (&b, "", "only-in-a"),
        (&c, "only-in-c", "only-in-a"),
    ] {
        let api = Api::<Namespace>::all(cp.client().await.unwrap());
        if !present.is_empty() {
            assert!(
                api.get_opt(present).await.unwrap().is_some(),
                "{present} in {}",
                cp.name()
            );
        }
        assert!(
            api.get_opt(absent).await.unwrap().is_none(),
            "{absent} not in {}",
            cp.name()
        );
    }
}

#[tokio::test]
async fn dropping_a_control_plane_stops_its_processes_and_removes_its_files() {
    let cp = LocalControlPlane::builder()
        .name("short-lived")
        .start()
        .await
        .unwrap();
    let dir = cp.dir().to_path_buf();
    let kubeconfig = cp.kubeconfig_path();
    assert!(kubeconfig.exists());
    let client = cp.client().await.unwrap();
    Api::<Namespace>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let lifelines = cp.lifeline_pids();
    let mut pids = children_of(&lifelines);
    let mut components: Vec<String> = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| comm != "sh")
        .collect();
    components.sort();
    assert_eq!(
        components,
        ["etcd", "kube-apiserver"],
        "components under their lifelines"
    );
    pids.extend(lifelines);

    drop(cp);
    for pid in &pids {
        assert!(!pid_alive(*pid), "process {pid} still runs after drop");
    }
    assert!(
        !dir.exists(),
        "temporary directory {} removed",
        dir.display()
    );
    assert!(
        Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
            .is_err(),
        "API server is gone"
    );
}

/// Pids of the processes whose parent is one of `parents`.
fn children_of(parents: &[u32]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
                let ppid = after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok());
                ppid.is_some_and(|p| parents.contains(&p))
            })
        })
        .collect()
}

#[test]
fn a_missing_override_binary_is_reported_by_name() {
    let out = std::process::Command::new("/bin/bash")
        .arg(testkit::tools::repo_root().join("hack/tools/tool.sh"))
        .arg("kube-apiserver")
        .env("KUBEBUILDER_ASSETS", "/nonexistent-assets")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KUBEBUILDER_ASSETS=/nonexistent-assets"),
        "{stderr}"
    );
}

#[test]
fn a_missing_go_toolchain_names_the_override() {
    let out = std::process::Command::new("/bin/bash")
        .arg(testkit::tools::repo_root().join("hack/tools/tool.sh"))
        .arg("helm")
        .env("PATH", "/nonexistent")
        .env(
            "TALOS_CAPI_CACHE",
            std::env::temp_dir().join("talos-capi-empty-cache"),
        )
        .env_remove("HELM_BIN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no Go toolchain") && stderr.contains("HELM_BIN"),
        "{stderr}"
    );
}

/// clusterctl is built from the same Cluster API version as the core manager of the lane.
#[test]
fn clusterctl_matches_the_core_manager_version() {
    let clusterctl = testkit::tools::locate(testkit::tools::Tool::Clusterctl).unwrap();
    let manager = testkit::tools::locate(testkit::tools::Tool::ClusterApi).unwrap();
    let out = std::process::Command::new(&clusterctl)
        .args(["version", "-o", "short"])
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(version.starts_with("v1."), "clusterctl version {version:?}");
    // The cache directory of both binaries is named after the version they were built from.
    let dir_of = |p: &Path| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    };
    if std::env::var_os("CLUSTER_API_BIN").is_none() && std::env::var_os("CLUSTERCTL_BIN").is_none()
    {
        assert_eq!(dir_of(&clusterctl), dir_of(&manager));
        assert_eq!(dir_of(&clusterctl), Some(format!("cluster-api-{version}")));
    }
}
