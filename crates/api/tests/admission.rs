//! Our CRDs on a real kube-apiserver (with the real Cluster API manager): the admission table
//! of tests/manifests.yaml, kubectl's scale / printer columns / explain, and Cluster API objects
//! referencing our kinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde::Deserialize;
use serde_json::{Value, json};
use testkit::{LocalControlPlane, install_crds, shared, unique_namespace};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Case {
    name: String,
    expect: String,
    manifest: Value,
    #[serde(default)]
    status: Option<Value>,
    #[serde(rename = "patchOf", default)]
    patch_of: Option<String>,
}

async fn control_plane() -> (&'static LocalControlPlane, kube::Client) {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    // What we test is what the code generates, whatever config/crd/bases holds.
    install_crds(&client, &api::all_crds()).await.unwrap();
    (cp, client)
}

fn api_for(client: &kube::Client, ns: &str, manifest: &Value) -> Api<DynamicObject> {
    let (group, version) = manifest["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let kind = manifest["kind"].as_str().unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A minimal valid TalosControlPlane with 3 replicas.
fn tcp_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
        "metadata": {"name": name},
        "spec": {
            "version": "v1.33.2", "replicas": 3,
            "infrastructureTemplate": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "x"},
            "controlPlaneConfig": {"controlplane": {}}
        }
    })
}

/// A worker TalosConfig.
fn talosconfig_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
        "metadata": {"name": name}, "spec": {"generateType": "worker"}
    })
}

/// Server-side apply `manifest` (any kind) in `ns`.
async fn apply(client: &kube::Client, ns: &str, manifest: &Value) -> DynamicObject {
    let name = manifest["metadata"]["name"].as_str().unwrap();
    api_for(client, ns, manifest)
        .patch(
            name,
            &PatchParams::apply("admission-test").force(),
            &Patch::Apply(manifest),
        )
        .await
        .unwrap()
}

/// `Err(path)` of the first field of `expected` that `actual` lacks or holds differently.
fn contains(actual: &Value, expected: &Value, path: &str) -> Result<(), String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().try_for_each(|(k, v)| {
            let child = format!("{path}.{k}");
            a.get(k)
                .ok_or_else(|| format!("{child} missing"))
                .and_then(|av| contains(av, v, &child))
        }),
        (Value::Array(a), Value::Array(e)) if a.len() == e.len() => a
            .iter()
            .zip(e)
            .enumerate()
            .try_for_each(|(i, (av, ev))| contains(av, ev, &format!("{path}[{i}]"))),
        _ if actual == expected => Ok(()),
        _ => Err(format!("{path}: wrote {expected}, read back {actual}")),
    }
}

#[tokio::test]
async fn admission_table() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "admission").await.unwrap();
    let cases: Vec<Case> = serde_yaml_ng::from_str(include_str!("manifests.yaml")).unwrap();
    let (accepted, rejected) = cases
        .iter()
        .partition::<Vec<&Case>, _>(|c| c.expect == "accept");
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    assert!(accepted.len() >= 20 && rejected.len() >= 15);

    let mut failures = Vec::new();
    // Objects that patches build on come first.
    for case in accepted
        .iter()
        .filter(|c| c.patch_of.is_none())
        .chain(accepted.iter().filter(|c| c.patch_of.is_some()))
    {
        let api = api_for(&client, &ns, &case.manifest);
        let name = case.manifest["metadata"]["name"].as_str().unwrap();
        let manager = if case.patch_of.is_some() {
            "second-manager"
        } else {
            "admission-test"
        };
        let result = api
            .patch(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&case.manifest),
            )
            .await;
        if let Err(e) = result {
            failures.push(format!("{}: rejected: {e}", case.name));
            continue;
        }
        if let Some(status) = &case.status {
            let body = json!({
                "apiVersion": case.manifest["apiVersion"], "kind": case.manifest["kind"], "status": status,
            });
            if let Err(e) = api
                .patch_status(
                    name,
                    &PatchParams::apply("admission-test").force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                failures.push(format!("{}: status rejected: {e}", case.name));
                continue;
            }
        }
        let got = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        if let Err(e) = contains(&got["spec"], &case.manifest["spec"], "spec") {
            failures.push(format!("{}: {e}", case.name));
        }
        if let Some(status) = &case.status
            && let Err(e) = contains(&got["status"], status, "status")
        {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    for case in &rejected {
        let api = api_for(&client, &ns, &case.manifest);
        let name = case.manifest["metadata"]["name"].as_str().unwrap();
        match api
            .patch(
                name,
                &PatchParams::apply("admission-test").force(),
                &Patch::Apply(&case.manifest),
            )
            .await
        {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected a rejection with {:?}",
                case.name, case.expect
            )),
            Err(e) if !e.to_string().contains(&case.expect) => failures.push(format!(
                "{}: rejected without {:?}: {e}",
                case.name, case.expect
            )),
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "defaults").await.unwrap();
    let manifest = json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
        "metadata": {"name": "d"},
        "spec": {
            "version": "v1.33.2",
            "infrastructureTemplate": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "x"},
            "controlPlaneConfig": {"controlplane": {}}
        }
    });
    let api = api_for(&client, &ns, &manifest);
    let got = api
        .patch("d", &PatchParams::apply("t"), &Patch::Apply(&manifest))
        .await
        .unwrap();
    assert_eq!(got.data["spec"]["replicas"], json!(1));
    assert_eq!(
        got.data["spec"]["rolloutStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
    );
}

fn kubectl(cp: &LocalControlPlane, args: &[&str]) -> String {
    let out = Command::new(testkit::tools::locate(testkit::tools::Tool::Kubectl).unwrap())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_scale_columns_and_explain() {
    let (cp, client) = control_plane().await;
    let ns = unique_namespace(&client, "kubectl").await.unwrap();
    let mut tcp = tcp_manifest("x");
    tcp["metadata"]["labels"] = json!({"cluster.x-k8s.io/cluster-name": "c1"});
    let tc = talosconfig_manifest("w");
    for m in [&tcp, &tc] {
        apply(&client, &ns, m).await;
    }

    kubectl(cp, &["-n", &ns, "scale", "tcp/x", "--replicas=5"]);
    let got = api_for(&client, &ns, &tcp).get("x").await.unwrap();
    assert_eq!(
        got.data["spec"]["replicas"],
        json!(5),
        "scale subresource writes spec.replicas"
    );

    let table = kubectl(cp, &["-n", &ns, "get", "tcp,talosconfigs"]);
    for column in [
        "CLUSTER",
        "READY",
        "INITIALIZED",
        "REPLICAS",
        "READY REPLICAS",
        "AVAILABLE",
        "UP-TO-DATE",
        "VERSION",
        "AGE",
        "TYPE",
        "DATA SECRET",
    ] {
        assert!(table.contains(column), "column {column} in:\n{table}");
    }
    assert!(
        table.contains("c1") && table.contains("v1.33.2"),
        "values in:\n{table}"
    );

    let explained = kubectl(
        cp,
        &[
            "explain",
            "taloscontrolplane.spec.rolloutStrategy.rollingUpdate.maxUnavailable",
        ],
    );
    assert!(
        explained.contains("etcd quorum"),
        "kubectl explain shows our description:\n{explained}"
    );
    let explained = kubectl(cp, &["explain", "talosconfig.spec.configPatches.path"]);
    assert!(explained.contains("JSON pointer"), "{explained}");
}

fn owned_by(kind: &'static str, controller: bool) -> impl Fn(Option<&DynamicObject>) -> bool {
    move |o: Option<&DynamicObject>| {
        o.and_then(|o| o.metadata.owner_references.as_ref())
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.kind == kind && (!controller || r.controller == Some(true)))
            })
    }
}

#[tokio::test]
async fn cluster_api_uses_our_kinds_through_the_contract_labels() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "capi-refs").await.unwrap();
    let tcp = tcp_manifest("c1-cp");
    let tc = talosconfig_manifest("c1-worker-0");
    let tct = json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
        "metadata": {"name": "c1-workers"}, "spec": {"template": {"spec": {"generateType": "worker"}}}
    });
    for m in [&tcp, &tc, &tct] {
        apply(&client, &ns, m).await;
    }
    let cluster = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "c1"},
        "spec": {"controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane", "name": "c1-cp"}}
    });
    apply(&client, &ns, &cluster).await;
    let machine = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine", "metadata": {"name": "c1-worker-0"},
        "spec": {
            "clusterName": "c1", "version": "v1.33.2",
            "bootstrap": {"configRef": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig", "name": "c1-worker-0"}},
            "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "x"}
        }
    });
    apply(&client, &ns, &machine).await;
    let md = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment", "metadata": {"name": "c1-workers"},
        "spec": {
            "clusterName": "c1", "replicas": 0,
            "selector": {"matchLabels": {"pool": "workers"}},
            "template": {
                "metadata": {"labels": {"pool": "workers"}},
                "spec": {
                    "clusterName": "c1", "version": "v1.33.2",
                    "bootstrap": {"configRef": {"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate", "name": "c1-workers"}},
                    "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine", "name": "x"}
                }
            }
        }
    });
    apply(&client, &ns, &md).await;

    // Cluster API resolves our kinds through the CRDs' contract labels, then adopts them.
    let tcps = api_for(&client, &ns, &tcp);
    tokio::time::timeout(
        WAIT,
        await_condition(tcps, "c1-cp", owned_by("Cluster", false)),
    )
    .await
    .expect("the Cluster controller adopts the TalosControlPlane")
    .unwrap();
    let tcs = api_for(&client, &ns, &tc);
    let adopted = tokio::time::timeout(
        WAIT,
        await_condition(tcs, "c1-worker-0", owned_by("Machine", true)),
    )
    .await
    .expect("the Machine controller becomes the TalosConfig's controller")
    .unwrap()
    .unwrap();
    assert_eq!(
        adopted
            .metadata
            .labels
            .unwrap_or_default()
            .get("cluster.x-k8s.io/cluster-name")
            .map(String::as_str),
        Some("c1"),
        "the Machine controller labels the TalosConfig with its cluster"
    );
}

#[test]
fn crds_carry_contract_and_provider_labels() {
    for crd in api::all_crds() {
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("cluster.x-k8s.io/v1beta1").map(String::as_str),
            Some("v1alpha3")
        );
        assert_eq!(
            labels.get("cluster.x-k8s.io/v1beta2").map(String::as_str),
            Some("v1alpha3")
        );
        let provider = if crd.spec.group.starts_with("bootstrap") {
            "bootstrap-talos"
        } else {
            "control-plane-talos"
        };
        assert_eq!(
            labels.get("cluster.x-k8s.io/provider").map(String::as_str),
            Some(provider)
        );
    }
}

#[test]
fn checked_in_crds_match_the_code() {
    for dir in ["config/crd/bases", "charts/talos-capi/crds"] {
        let dir = testkit::tools::repo_root().join(dir);
        for crd in api::all_crds() {
            let path = dir.join(api::crds::file_name(&crd));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                on_disk,
                api::to_yaml(&crd).unwrap(),
                "{} is stale: run `make crds`",
                path.display()
            );
        }
    }
}

#[test]
fn checked_in_api_reference_matches_the_code() {
    let path = testkit::tools::repo_root().join("docs/api.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        on_disk,
        api::docs::markdown(&api::all_crds()),
        "docs/api.md is stale: run `make crds`"
    );
}

/// Fields that carry a configuration or patches are bounded at admission, with messages that
/// give the limit (the controller bounds what they expand to; see machineconfig::limits).
#[tokio::test]
async fn oversized_configs_and_patch_lists_are_refused_naming_the_limit() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "admission-size").await.unwrap();
    let big = "#".repeat(1024 * 1024 + 1);
    let mut tcp = tcp_manifest("too-many-patches");
    tcp["spec"]["controlPlaneConfig"]["controlplane"]["strategicPatches"] =
        json!(vec!["machine: {}"; 65]);
    for (manifest, field, limit) in [
        (
            json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "too-much-data"},
                "spec": {"generateType": "none", "data": big}
            }),
            "spec.data",
            "1048576",
        ),
        (
            json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "too-big-a-patch"},
                "spec": {"generateType": "worker", "strategicPatches": [big]}
            }),
            "spec.strategicPatches[0]",
            "1048576",
        ),
        (
            tcp,
            "spec.controlPlaneConfig.controlplane.strategicPatches",
            "64",
        ),
        (
            json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "too-many-operations"},
                "spec": {"generateType": "worker", "configPatches":
                    vec![json!({"op": "remove", "path": "/machine/install"}); 513]}
            }),
            "spec.configPatches",
            "512",
        ),
        (
            json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "too-long-a-path"},
                "spec": {"generateType": "worker", "configPatches":
                    [{"op": "remove", "path": format!("/{}", "a".repeat(1024))}]}
            }),
            "spec.configPatches[0].path",
            "1024",
        ),
    ] {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
        let err = api_for(&client, &ns, &manifest)
            .patch(
                &name,
                &PatchParams::apply("admission-test").force(),
                &Patch::Apply(&manifest),
            )
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(field) && err.contains(limit),
            "{name}: {field} and {limit} in {}",
            &err[..err.len().min(600)]
        );
        assert!(
            err.len() < 4096,
            "{name}: the message does not echo the value"
        );
    }
    // At the limits, accepted.
    let mut tcp = tcp_manifest("sixty-four-patches");
    tcp["spec"]["controlPlaneConfig"]["controlplane"]["strategicPatches"] =
        json!(vec!["machine: {}"; 64]);
    apply(&client, &ns, &tcp).await;
    apply(
        &client,
        &ns,
        &json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": "at-the-limits"},
            "spec": {"generateType": "worker", "configPatches":
                vec![json!({"op": "remove", "path": format!("/{}", "a".repeat(1023))}); 512]}
        }),
    )
    .await;
}
