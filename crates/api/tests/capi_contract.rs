//! What the real Cluster API core (v1.14 by default, v1.12 on the floor lane) does with our
//! kinds and its own: v1beta1 objects convert to v1beta2 and back through Cluster API's
//! conversion webhook without losing a field, and the Machine controller reads our v1beta2
//! bootstrap status with no code of ours copying it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::time::Duration;

use api::bootstrap::v1alpha3::{BootstrapInitialization, TalosConfig, TalosConfigStatus};
use api::capi::{Machine, labels};
use api::conditions::{self, ConditionType, Observation, Status, reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use testkit::{install_crds, shared, unique_namespace};

const WAIT: Duration = Duration::from_secs(60);
const MANAGER: &str = "capi-contract-test";

async fn client() -> kube::Client {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    install_crds(&client, &api::all_crds()).await.unwrap();
    client
}

fn capi(client: &kube::Client, ns: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("cluster.x-k8s.io", version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn create(api: &Api<DynamicObject>, manifest: Value) -> DynamicObject {
    let obj: DynamicObject = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

/// Every leaf of `expected` is in `actual` with the same value (lists compared whole).
fn assert_contains(actual: &Value, expected: &Value, path: &str) {
    match expected {
        Value::Object(fields) => {
            for (k, v) in fields {
                assert_contains(&actual[k], v, &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn v1beta1_cluster() -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "conv", "labels": {"team": "platform"}},
        "spec": {
            "paused": true,
            "clusterNetwork": {
                "apiServerPort": 6443,
                "pods": {"cidrBlocks": ["10.244.0.0/16", "fd00:10:244::/56"]},
                "services": {"cidrBlocks": ["10.96.0.0/12"]},
                "serviceDomain": "cluster.local",
            },
            "controlPlaneEndpoint": {"host": "192.168.1.100", "port": 6443},
            "controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane", "name": "conv-cp"},
        }
    })
}

fn v1beta1_machine_spec() -> Value {
    json!({
        "clusterName": "conv", "version": "v1.35.0",
        "bootstrap": {"configRef": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig", "name": "conv-0"}},
        "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "conv-0"},
        "providerID": "proxmox://1234",
        "failureDomain": "zone-a",
        "nodeDrainTimeout": "5m0s",
        "nodeDeletionTimeout": "30s",
    })
}

#[tokio::test]
async fn v1beta1_objects_convert_to_v1beta2_and_back_without_losing_a_field() {
    let client = client().await;
    let ns = unique_namespace(&client, "conversion").await.unwrap();

    let cluster = v1beta1_cluster();
    create(&capi(&client, &ns, "v1beta1", "Cluster"), cluster.clone()).await;
    let machine = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
        "metadata": {"name": "conv-0", "labels": {"cluster.x-k8s.io/cluster-name": "conv"}},
        "spec": v1beta1_machine_spec(),
    });
    create(&capi(&client, &ns, "v1beta1", "Machine"), machine.clone()).await;
    let md = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment",
        "metadata": {"name": "conv-workers"},
        "spec": {
            "clusterName": "conv", "replicas": 0, "minReadySeconds": 10,
            "selector": {"matchLabels": {"pool": "workers"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"pool": "workers"}},
                "spec": {
                    "clusterName": "conv", "version": "v1.35.0",
                    "bootstrap": {"configRef": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate", "name": "conv-workers"}},
                    "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachineTemplate", "name": "conv-workers"},
                    "nodeDrainTimeout": "1m0s",
                }
            }
        }
    });
    create(
        &capi(&client, &ns, "v1beta1", "MachineDeployment"),
        md.clone(),
    )
    .await;

    // Read as v1beta2: the converted shape.
    let c2 = capi(&client, &ns, "v1beta2", "Cluster")
        .get("conv")
        .await
        .unwrap();
    let c2 = serde_json::to_value(&c2).unwrap();
    assert_contains(
        &c2["spec"],
        &json!({
            "paused": true,
            "clusterNetwork": {
                "apiServerPort": 6443,
                "pods": {"cidrBlocks": ["10.244.0.0/16", "fd00:10:244::/56"]},
                "services": {"cidrBlocks": ["10.96.0.0/12"]},
                "serviceDomain": "cluster.local",
            },
            "controlPlaneEndpoint": {"host": "192.168.1.100", "port": 6443},
            "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "TalosControlPlane", "name": "conv-cp"},
        }),
        "Cluster(v1beta2).spec",
    );
    let m2 = capi(&client, &ns, "v1beta2", "Machine")
        .get("conv-0")
        .await
        .unwrap();
    let m2 = serde_json::to_value(&m2).unwrap();
    assert_contains(
        &m2["spec"],
        &json!({
            "clusterName": "conv", "version": "v1.35.0",
            "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "conv-0"}},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": "conv-0"},
            "providerID": "proxmox://1234",
            "failureDomain": "zone-a",
            "deletion": {"nodeDrainTimeoutSeconds": 300, "nodeDeletionTimeoutSeconds": 30},
        }),
        "Machine(v1beta2).spec",
    );
    // Our typed view reads the same object.
    let typed: Machine = serde_json::from_value(m2.clone()).unwrap();
    assert_eq!(
        typed
            .spec
            .bootstrap
            .config_ref
            .as_ref()
            .map(|r| r.kind.as_str()),
        Some("TalosConfig")
    );
    let md2 = capi(&client, &ns, "v1beta2", "MachineDeployment")
        .get("conv-workers")
        .await
        .unwrap();
    let md2 = serde_json::to_value(&md2).unwrap();
    assert_contains(
        &md2["spec"],
        &json!({
            "clusterName": "conv", "replicas": 0,
            "selector": {"matchLabels": {"pool": "workers"}},
            "template": {"spec": {
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfigTemplate", "name": "conv-workers"}},
                "deletion": {"nodeDrainTimeoutSeconds": 60},
            }},
        }),
        "MachineDeployment(v1beta2).spec",
    );

    // Read back as v1beta1: every field written is still there, as written.
    for (kind, name, written) in [
        ("Cluster", "conv", &cluster),
        ("Machine", "conv-0", &machine),
        ("MachineDeployment", "conv-workers", &md),
    ] {
        let back = capi(&client, &ns, "v1beta1", kind).get(name).await.unwrap();
        let back = serde_json::to_value(&back).unwrap();
        assert_contains(
            &back["spec"],
            &written["spec"],
            &format!("{kind}(v1beta1).spec"),
        );
        if written["metadata"]["labels"].is_object() {
            assert_contains(
                &back["metadata"]["labels"],
                &written["metadata"]["labels"],
                &format!("{kind}(v1beta1).metadata.labels"),
            );
        }
    }
}

#[tokio::test]
async fn v1beta2_objects_read_as_v1beta1_and_back() {
    let client = client().await;
    let ns = unique_namespace(&client, "conversion-rev").await.unwrap();
    let spec = json!({
        "clusterName": "rev", "version": "v1.35.0",
        "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "rev-0"}},
        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": "rev-0"},
        "failureDomain": "zone-b",
        "deletion": {"nodeDrainTimeoutSeconds": 120},
    });
    create(
        &capi(&client, &ns, "v1beta2", "Machine"),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "metadata": {"name": "rev-0"}, "spec": spec}),
    )
    .await;
    let v1 = capi(&client, &ns, "v1beta1", "Machine")
        .get("rev-0")
        .await
        .unwrap();
    let v1 = serde_json::to_value(&v1).unwrap();
    assert_contains(
        &v1["spec"],
        &json!({
            "clusterName": "rev", "version": "v1.35.0", "failureDomain": "zone-b",
            "nodeDrainTimeout": "2m0s",
        }),
        "Machine(v1beta1).spec",
    );
    assert_eq!(
        v1["spec"]["bootstrap"]["configRef"]["kind"], "TalosConfig",
        "the bootstrap reference survives as v1beta1"
    );
    // v1beta1 configRef carries an apiVersion: resolved from our CRD's contract label.
    assert_eq!(
        v1["spec"]["bootstrap"]["configRef"]["apiVersion"],
        "bootstrap.cluster.x-k8s.io/v1alpha3"
    );
    let back = capi(&client, &ns, "v1beta2", "Machine")
        .get("rev-0")
        .await
        .unwrap();
    assert_contains(
        &serde_json::to_value(&back).unwrap()["spec"],
        &spec,
        "Machine(v1beta2).spec",
    );
}

#[tokio::test]
async fn the_machine_controller_reads_our_v1beta2_bootstrap_status() {
    let client = client().await;
    let ns = unique_namespace(&client, "bootstrap-status").await.unwrap();
    create(
        &capi(&client, &ns, "v1beta2", "Cluster"),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "st"},
            "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": "st"}}}),
    )
    .await;
    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), &ns);
    let config: TalosConfig = serde_json::from_value(json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
        "metadata": {"name": "st-0"}, "spec": {"generateType": "worker"}
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    create(
        &capi(&client, &ns, "v1beta2", "Machine"),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "st-0", "labels": {labels::CLUSTER_NAME: "st"}},
            "spec": {
                "clusterName": "st", "version": "v1.35.0",
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "st-0"}},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": "st-0"},
            }
        }),
    )
    .await;

    // The status a bootstrap controller reports, built with our typed conditions.
    let mut status = TalosConfigStatus {
        initialization: Some(BootstrapInitialization {
            data_secret_created: Some(true),
        }),
        data_secret_name: Some("st-0-bootstrap-data".into()),
        ready: Some(true),
        observed_generation: Some(1),
        ..TalosConfigStatus::default()
    };
    let now = Time(Timestamp::now());
    conditions::set(
        &mut status,
        &Observation::new(ConditionType::Ready, Status::True, reason::READY),
        Some(1),
        &now,
    );
    configs
        .patch_status(
            "st-0",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "status": status,
            })),
        )
        .await
        .unwrap();

    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let machine = tokio::time::timeout(
        WAIT,
        await_condition(machines, "st-0", |m: Option<&Machine>| {
            m.is_some_and(|m| {
                m.spec.bootstrap.data_secret_name.is_some()
                    && m.status
                        .as_ref()
                        .and_then(|s| s.initialization.as_ref())
                        .and_then(|i| i.bootstrap_data_secret_created)
                        == Some(true)
            })
        }),
    )
    .await
    .expect("the Machine controller copies dataSecretCreated and dataSecretName")
    .unwrap()
    .unwrap();
    assert_eq!(
        machine.spec.bootstrap.data_secret_name.as_deref(),
        Some("st-0-bootstrap-data")
    );
    // Our Ready condition is mirrored to the Machine's BootstrapConfigReady.
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let mirrored = tokio::time::timeout(
        WAIT,
        await_condition(machines, "st-0", |m: Option<&Machine>| {
            m.and_then(|m| m.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "BootstrapConfigReady" && c.status == "True")
                })
        }),
    )
    .await;
    assert!(
        mirrored.is_ok(),
        "the Machine's BootstrapConfigReady mirrors our Ready condition"
    );
    // And the Machine controller made itself our controller owner.
    let config = configs.get("st-0").await.unwrap();
    assert!(
        config
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "Machine" && o.controller == Some(true))
    );
}

/// ClusterClass with our templates: Cluster API's topology controller server-side-applies
/// (dry-run first) a TalosControlPlane from our TalosControlPlaneTemplate and MachineDeployment
/// TalosConfigs from our TalosConfigTemplate, writing the contract's machineTemplate paths.
#[tokio::test]
async fn a_cluster_class_with_our_templates_stamps_out_a_talos_control_plane() {
    let client = client().await;
    let ns = unique_namespace(&client, "clusterclass").await.unwrap();
    let apply = |manifest: Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            testkit::apply_manifest(&client, &ns, MANAGER, &manifest)
                .await
                .unwrap_or_else(|e| panic!("applying {}: {e}", manifest["kind"]));
        }
    };
    let sim = "infrastructure.cluster.x-k8s.io/v1alpha1";
    apply(json!({"apiVersion": sim, "kind": "SimClusterTemplate", "metadata": {"name": "talos"}, "spec": {"template": {"spec": {}}}})).await;
    apply(json!({"apiVersion": sim, "kind": "SimMachineTemplate", "metadata": {"name": "talos-cp"}, "spec": {"template": {"spec": {}}}})).await;
    apply(json!({"apiVersion": sim, "kind": "SimMachineTemplate", "metadata": {"name": "talos-workers"}, "spec": {"template": {"spec": {}}}})).await;
    apply(json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlaneTemplate",
        "metadata": {"name": "talos"},
        "spec": {"template": {"spec": {"controlPlaneConfig": {"controlplane": {"generateType": "controlplane", "talosVersion": "v1.13"}}}}}
    }))
    .await;
    apply(json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
        "metadata": {"name": "talos-workers"},
        "spec": {"template": {"spec": {"generateType": "worker", "talosVersion": "v1.13"}}}
    }))
    .await;
    apply(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "ClusterClass", "metadata": {"name": "talos"},
        "spec": {
            "infrastructure": {"ref": {"apiVersion": sim, "kind": "SimClusterTemplate", "name": "talos"}},
            "controlPlane": {
                "ref": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlaneTemplate", "name": "talos"},
                "machineInfrastructure": {"ref": {"apiVersion": sim, "kind": "SimMachineTemplate", "name": "talos-cp"}}
            },
            "workers": {"machineDeployments": [{
                "class": "default",
                "template": {
                    "bootstrap": {"ref": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate", "name": "talos-workers"}},
                    "infrastructure": {"ref": {"apiVersion": sim, "kind": "SimMachineTemplate", "name": "talos-workers"}}
                }
            }]}
        }
    }))
    .await;
    apply(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "cc"},
        "spec": {"topology": {
            "class": "talos", "version": "v1.35.0",
            "controlPlane": {"replicas": 3},
            "workers": {"machineDeployments": [{"class": "default", "name": "md-0", "replicas": 0}]}
        }}
    }))
    .await;

    let tcps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "controlplane.cluster.x-k8s.io",
            "v1alpha3",
            "TalosControlPlane",
        )),
    );
    let tcp = first_created(
        &tcps,
        "the topology controller creating a TalosControlPlane from our template",
    )
    .await;
    let spec = &tcp.data["spec"];
    assert_eq!(spec["version"], "v1.35.0");
    assert_eq!(spec["replicas"], 3);
    assert_eq!(
        spec["controlPlaneConfig"]["controlplane"]["generateType"],
        "controlplane"
    );
    let infra = if spec["machineTemplate"]["spec"]["infrastructureRef"].is_object() {
        &spec["machineTemplate"]["spec"]["infrastructureRef"]
    } else {
        &spec["machineTemplate"]["infrastructureRef"]
    };
    assert_eq!(infra["kind"], "SimMachineTemplate", "{spec}");
    let mds = capi(&client, &ns, "v1beta2", "MachineDeployment");
    let md = first_created(
        &mds,
        "the topology controller creating the MachineDeployment with our bootstrap template",
    )
    .await;
    assert_eq!(
        md.data["spec"]["template"]["spec"]["bootstrap"]["configRef"]["kind"],
        "TalosConfigTemplate"
    );
}

/// The first object in `api` once there is one.
async fn first_created(api: &Api<DynamicObject>, what: &str) -> DynamicObject {
    testkit::eventually(what, WAIT, async || {
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await
}
