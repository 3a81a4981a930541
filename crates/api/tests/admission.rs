//! Our CRDs on a real kube-apiserver (with the real Cluster API manager): the admission table
//! of tests/manifests.yaml, kubectl's scale / printer columns / explain, and Cluster API objects
//! referencing our kinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
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

/// One version-like field: the object that carries it and a change of another spec field.
struct VersionField {
    /// The field's path, as the API server names it.
    path: &'static str,
    /// The object, with `value` at `path`.
    manifest: fn(&str, Value) -> Value,
    /// A merge patch that changes some other spec field.
    other_change: Value,
}

fn version_fields() -> Vec<VersionField> {
    fn tcp(name: &str) -> Value {
        tcp_manifest(name)
    }
    fn tcpt(name: &str) -> Value {
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlaneTemplate",
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"controlPlaneConfig": {"controlplane": {}}}}}
        })
    }
    fn tc(name: &str) -> Value {
        talosconfig_manifest(name)
    }
    fn tct(name: &str) -> Value {
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
            "metadata": {"name": name}, "spec": {"template": {"spec": {"generateType": "worker"}}}
        })
    }
    let tcp_change = json!({"spec": {"replicas": 5}});
    let tcpt_change =
        json!({"spec": {"template": {"spec": {"remediationStrategy": {"maxRetry": 2}}}}});
    let tc_change = json!({"spec": {"strategicPatches": ["machine: {}"]}});
    let tct_change = json!({"spec": {"template": {"spec": {"strategicPatches": ["machine: {}"]}}}});
    vec![
        VersionField {
            path: "spec.version",
            manifest: |name, v| {
                let mut m = tcp(name);
                m["spec"]["version"] = v;
                m
            },
            other_change: tcp_change.clone(),
        },
        VersionField {
            path: "spec.controlPlaneConfig.controlplane.talosVersion",
            manifest: |name, v| {
                let mut m = tcp(name);
                m["spec"]["controlPlaneConfig"]["controlplane"]["talosVersion"] = v;
                m
            },
            other_change: tcp_change.clone(),
        },
        VersionField {
            path: "spec.controlPlaneConfig.init.talosVersion",
            manifest: |name, v| {
                let mut m = tcp(name);
                m["spec"]["controlPlaneConfig"]["init"] = json!({"talosVersion": v});
                m
            },
            other_change: tcp_change.clone(),
        },
        VersionField {
            path: "spec.talosUpgrade.version",
            manifest: |name, v| {
                let mut m = tcp(name);
                m["spec"]["talosUpgrade"] =
                    json!({"image": "ghcr.io/siderolabs/installer:v1.13.0", "version": v});
                m
            },
            other_change: tcp_change.clone(),
        },
        VersionField {
            // Without talosUpgrade.version, the image's tag is the version.
            path: "spec.talosUpgrade.image",
            manifest: |name, v| {
                let mut m = tcp(name);
                let image = match v.as_str() {
                    Some(tag) => json!(format!("ghcr.io/siderolabs/installer:{tag}")),
                    None => v,
                };
                m["spec"]["talosUpgrade"] = json!({"image": image});
                m
            },
            other_change: tcp_change,
        },
        VersionField {
            path: "spec.template.spec.controlPlaneConfig.controlplane.talosVersion",
            manifest: |name, v| {
                let mut m = tcpt(name);
                m["spec"]["template"]["spec"]["controlPlaneConfig"]["controlplane"]["talosVersion"] =
                    v;
                m
            },
            other_change: tcpt_change.clone(),
        },
        VersionField {
            path: "spec.template.spec.talosUpgrade.version",
            manifest: |name, v| {
                let mut m = tcpt(name);
                m["spec"]["template"]["spec"]["talosUpgrade"] =
                    json!({"image": "ghcr.io/siderolabs/installer:v1.13.0", "version": v});
                m
            },
            other_change: tcpt_change,
        },
        VersionField {
            path: "spec.talosVersion",
            manifest: |name, v| {
                let mut m = tc(name);
                m["spec"]["talosVersion"] = v;
                m
            },
            other_change: tc_change,
        },
        VersionField {
            path: "spec.template.spec.talosVersion",
            manifest: |name, v| {
                let mut m = tct(name);
                m["spec"]["template"]["spec"]["talosVersion"] = v;
                m
            },
            other_change: tct_change,
        },
    ]
}

/// Version values of every adversarial class, with a name for the failure report.
fn adversarial_versions() -> Vec<(&'static str, Value)> {
    let s = |v: &str| json!(v);
    vec![
        ("valid", s("v1.33.2")),
        ("valid at the digit bound", s("v1.999999.0")),
        ("prerelease and build", s("v1.34.0-rc.1+build.7")),
        ("above u64", s("v1.18446744073709551616.0")),
        ("u64 max (issue #28)", s("v1.18446744073709551615.0")),
        (
            "int64 max: int() parses, +1 overflows",
            s("v1.9223372036854775807.0"),
        ),
        ("int64 max + 1", s("v1.9223372036854775808.0")),
        ("huge major", s("v99999999999999999999.33.0")),
        ("huge patch", s("v1.33.99999999999999999999")),
        ("seven digits", s("v1.1000000.0")),
        ("leading zero major", s("v01.33.0")),
        ("leading zero minor", s("v1.033.0")),
        ("leading zero patch", s("v1.33.00")),
        (
            "long prerelease at the length limit",
            json!(format!("v1.33.0-{}", "a".repeat(56))),
        ),
        (
            "long prerelease over the limit",
            json!(format!("v1.33.0-{}", "a".repeat(57))),
        ),
        ("very long", json!(format!("v1.33.{}", "1".repeat(10_000)))),
        ("empty", s("")),
        ("v alone", s("v")),
        ("dot alone", s(".")),
        ("empty minor", s("v1..0")),
        ("empty major", s("v.33.0")),
        ("empty patch", s("v1.33.")),
        ("two components", s("v1.33")),
        ("dots only", s("v..")),
        ("four components", s("v1.33.0.1")),
        ("trailing dot", s("v1.33.0.")),
        ("empty prerelease", s("v1.33.0-")),
        ("empty build", s("v1.33.0+")),
        ("empty prerelease identifier", s("v1.33.0-rc..1")),
        ("no v", s("1.33.0")),
        ("capital V", s("V1.33.0")),
        ("fullwidth digits", s("v1.３３.0")),
        ("arabic-indic digits", s("v1.٣٣.0")),
        ("fullwidth v", s("ｖ1.33.0")),
        ("unicode prerelease", s("v1.33.0-ünï")),
        ("zero-width space", s("v1.33.0\u{200b}")),
        ("leading space", s(" v1.33.0")),
        ("trailing newline", s("v1.33.0\n")),
        ("inner space", s("v1. 33.0")),
        ("plus sign", s("v1.+33.0")),
        ("minus sign", s("v1.-33.0")),
        ("hex", s("v1.0x21.0")),
        ("exponent", s("v1.3e3.0")),
        ("underscore suffix", s("v1.33.0_1")),
        ("a number", json!(1.33)),
        ("null", Value::Null),
    ]
}

/// Words of a CEL rule that failed to evaluate rather than refused the value.
const RULE_BROKE: &[&str] = &[
    "type conversion error",
    "overflow",
    "no such key",
    "index out of bounds",
    "Internal error",
    "internal error",
];

/// Issue #28: no value of a version field makes an object unchangeable. Each value is refused
/// at admission with a message naming the field, or admitted; then the object reads as our
/// type, and a label, a change of another spec field and a status write all go through (an
/// admitted `v1.18446744073709551615.0` used to break the no-skipped-minor rule on every
/// update, so that Cluster API could not even set its owner reference).
#[tokio::test]
async fn no_version_value_makes_an_object_unchangeable() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "versions").await.unwrap();
    let mut failures = Vec::new();
    let (mut refused, mut admitted) = (0, 0);
    for (f, field) in version_fields().iter().enumerate() {
        for (v, (class, value)) in adversarial_versions().into_iter().enumerate() {
            let name = format!("f{f}-v{v}");
            let manifest = (field.manifest)(&name, value.clone());
            let api = api_for(&client, &ns, &manifest);
            let case = format!("{} = {class} ({})", field.path, truncated(&value));
            let result = api
                .patch(
                    &name,
                    &PatchParams::apply("admission-test").force(),
                    &Patch::Apply(&manifest),
                )
                .await;
            let object = match result {
                Err(e) => {
                    refused += 1;
                    let message = e.to_string();
                    if !message.contains(field.path) {
                        failures.push(format!(
                            "{case}: refused without naming the field: {}",
                            truncated(&json!(message))
                        ));
                    }
                    if let Some(word) = RULE_BROKE.iter().find(|w| message.contains(*w)) {
                        failures.push(format!(
                            "{case}: refused by a rule that broke ({word}): {}",
                            truncated(&json!(message))
                        ));
                    }
                    continue;
                }
                Ok(object) => object,
            };
            admitted += 1;
            if let Err(e) = reads_as_our_type(&object) {
                failures.push(format!("{case}: admitted, but does not read: {e}"));
            }
            let label = json!({"metadata": {"labels": {"touched": "yes"}}});
            for (what, patch) in [
                ("a label", &label),
                ("another spec field", &field.other_change),
            ] {
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    failures.push(format!("{case}: admitted, then {what} was refused: {e}"));
                }
            }
            if manifest["kind"]
                .as_str()
                .is_some_and(|k| !k.ends_with("Template"))
            {
                let status = json!({"status": {"observedGeneration": 1}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                {
                    failures.push(format!(
                        "{case}: admitted, then a status write was refused: {e}"
                    ));
                }
            }
        }
    }
    assert!(
        refused > 0 && admitted > 0,
        "{refused} refused, {admitted} admitted"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn truncated(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// The object decodes as the Rust type of its kind.
fn reads_as_our_type(object: &DynamicObject) -> Result<(), serde_json::Error> {
    use api::bootstrap::v1alpha3::{TalosConfig, TalosConfigTemplate};
    use api::controlplane::v1alpha3::{TalosControlPlane, TalosControlPlaneTemplate};
    let value = serde_json::to_value(object)?;
    match object.types.as_ref().map(|t| t.kind.as_str()) {
        Some("TalosControlPlane") => serde_json::from_value::<TalosControlPlane>(value).map(drop),
        Some("TalosControlPlaneTemplate") => {
            serde_json::from_value::<TalosControlPlaneTemplate>(value).map(drop)
        }
        Some("TalosConfig") => serde_json::from_value::<TalosConfig>(value).map(drop),
        _ => serde_json::from_value::<TalosConfigTemplate>(value).map(drop),
    }
}

/// Issue #27: objects as the Go providers store them, with unset enums written as `""`, are
/// admitted by our CRDs, read as our types, and stay updatable. The TalosControlPlanes are
/// exactly what CACPPT v0.5.13's defaulting webhook makes of two manifests (its `Default()`,
/// then Go's json.Marshal): `controlPlaneConfig.init: {generateType: ""}` always, and
/// `controlplane.generateType: ""` when the manifest left it out. CABPT's webhook accepts
/// `hostname.source: ""`, and CACPPT's `rolloutStrategy.type: ""`.
#[tokio::test]
async fn objects_as_the_go_providers_store_them_are_admitted_read_and_updated() {
    use api::bootstrap::v1alpha3::{TalosConfig, TalosConfigTemplate};
    use api::controlplane::v1alpha3::{
        RolloutStrategyType, TalosControlPlane, TalosControlPlaneTemplate,
    };

    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "go-stored").await.unwrap();
    let infra = json!({
        "kind": "SimMachineTemplate", "namespace": ns, "name": "c1-cp",
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1"
    });
    let cacppt = |name: &str, control_plane_config: Value| {
        json!({
            "kind": "TalosControlPlane",
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": {
                "replicas": 3,
                "version": "v1.33.2",
                "infrastructureTemplate": infra,
                "controlPlaneConfig": control_plane_config,
                "rolloutStrategy": {"rollingUpdate": {"maxSurge": 1}, "type": "RollingUpdate"}
            },
            "status": {"initialized": false, "ready": false}
        })
    };
    // `controlplane: {generateType: controlplane, talosVersion: v1.13}` through the webhook.
    let with_type = cacppt(
        "with-type",
        json!({
            "init": {"generateType": "", "hostname": {}},
            "controlplane": {"talosVersion": "v1.13", "generateType": "controlplane", "hostname": {}}
        }),
    );
    // `controlplane: {configPatches: [{op: remove, path: /machine/install}]}` through it.
    let without_type = cacppt(
        "without-type",
        json!({
            "init": {"generateType": "", "hostname": {}},
            "controlplane": {
                "generateType": "",
                "configPatches": [{"op": "remove", "path": "/machine/install", "value": null}],
                "hostname": {}
            }
        }),
    );
    let mut empty_rollout_type = cacppt(
        "empty-rollout-type",
        json!({"controlplane": {"generateType": "controlplane", "hostname": {"source": ""}}}),
    );
    empty_rollout_type["spec"]["rolloutStrategy"] = json!({"type": ""});
    let template = json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlaneTemplate",
        "metadata": {"name": "cc"},
        "spec": {"template": {"spec": {
            "controlPlaneConfig": {
                "init": {"generateType": "", "hostname": {}},
                "controlplane": {"generateType": "", "hostname": {"source": ""}}
            },
            "rolloutStrategy": {"type": ""}
        }}}
    });
    let config = json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
        "metadata": {"name": "w"},
        "spec": {"generateType": "worker", "hostname": {"source": ""}}
    });
    let config_template = json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
        "metadata": {"name": "ws"},
        "spec": {"template": {"spec": {"generateType": "worker", "hostname": {"source": ""}}}}
    });

    let mut failures = Vec::new();
    for manifest in [
        &with_type,
        &without_type,
        &empty_rollout_type,
        &template,
        &config,
        &config_template,
    ] {
        let name = manifest["metadata"]["name"].as_str().unwrap();
        let kind = manifest["kind"].as_str().unwrap();
        let api = api_for(&client, &ns, manifest);
        if let Err(e) = api
            .patch(
                name,
                &PatchParams::apply("cacppt").force(),
                &Patch::Apply(manifest),
            )
            .await
        {
            failures.push(format!("{kind}/{name}: refused: {e}"));
            continue;
        }
        let label = json!({"metadata": {"labels": {"touched": "yes"}}});
        let change = if kind.ends_with("Template") {
            json!({"spec": {"template": {"metadata": {"labels": {"changed": "yes"}}}}})
        } else if kind == "TalosConfig" {
            json!({"spec": {"strategicPatches": ["machine: {}"]}})
        } else {
            json!({"spec": {"replicas": 5}})
        };
        for (what, patch) in [("a label", &label), ("a spec change", &change)] {
            if let Err(e) = api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                failures.push(format!("{kind}/{name}: {what} refused: {e}"));
            }
        }
        if !kind.ends_with("Template") {
            let status = json!({"status": {"observedGeneration": 1}});
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                failures.push(format!("{kind}/{name}: a status write refused: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Read through the typed API, as the controllers read them.
    let tcps: Api<TalosControlPlane> = Api::namespaced(client.clone(), &ns);
    for name in ["with-type", "without-type", "empty-rollout-type"] {
        let tcp = tcps
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} reads: {e}"));
        let config = &tcp.spec.control_plane_config;
        assert_eq!(
            config.init.as_ref().and_then(|i| i.generate_type),
            None,
            "{name}"
        );
        assert_eq!(
            tcp.spec.replicas,
            Some(5),
            "{name}: the spec change is stored"
        );
    }
    let tcp = tcps.get("empty-rollout-type").await.unwrap();
    assert_eq!(tcp.spec.rollout_strategy.and_then(|r| r.r#type), None);
    let tcp = tcps.get("with-type").await.unwrap();
    assert_eq!(
        tcp.spec.rollout_strategy.and_then(|r| r.r#type),
        Some(RolloutStrategyType::RollingUpdate)
    );
    let template = Api::<TalosControlPlaneTemplate>::namespaced(client.clone(), &ns)
        .get("cc")
        .await
        .unwrap();
    let spec = &template.spec.template.spec;
    assert_eq!(spec.control_plane_config.controlplane.generate_type, None);
    assert_eq!(
        spec.control_plane_config
            .controlplane
            .hostname
            .as_ref()
            .and_then(|h| h.source),
        None
    );
    let config = Api::<TalosConfig>::namespaced(client.clone(), &ns)
        .get("w")
        .await
        .unwrap();
    assert_eq!(config.spec.hostname.and_then(|h| h.source), None);
    Api::<TalosConfigTemplate>::namespaced(client.clone(), &ns)
        .get("ws")
        .await
        .unwrap();

    // A standalone TalosConfig still needs a generateType: `""` there is refused, as CABPT's
    // controller refuses it ("unknown generate type").
    let err = apply_err(
        &client,
        &ns,
        &json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": "no-type"}, "spec": {"generateType": ""}
        }),
    )
    .await;
    assert!(err.contains("spec.generateType"), "{err}");
}

async fn apply_err(client: &kube::Client, ns: &str, manifest: &Value) -> String {
    let name = manifest["metadata"]["name"].as_str().unwrap();
    api_for(client, ns, manifest)
        .patch(
            name,
            &PatchParams::apply("admission-test").force(),
            &Patch::Apply(manifest),
        )
        .await
        .map(|_| ())
        .expect_err("refused")
        .to_string()
}

/// The rules of TalosControlPlane's spec.version that read `oldSelf` (the no-skipped-minor
/// rule), as the code generates them.
fn version_transition_rules() -> Vec<Value> {
    let crd = api::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "TalosControlPlane")
        .unwrap();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let rules = schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["version"]
        ["x-kubernetes-validations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rules
        .into_iter()
        .filter(|r| r["rule"].as_str().is_some_and(|r| r.contains("oldSelf")))
        .collect()
}

/// The no-skipped-minor rule is total on any string, not only on those spec.version's pattern
/// admits: a TalosControlPlane stored before the pattern existed (say at
/// `v1.18446744073709551615.0`) stays updatable. A probe kind carries the rule alone on a
/// string field, so every value is stored; then a label, and changes of the version from and
/// to each value, either go through or are refused by the rule's own message, never because
/// the rule failed to evaluate.
#[tokio::test]
async fn the_no_skipped_minor_rule_is_total_on_values_stored_before_the_pattern() {
    let (_, client) = control_plane().await;
    let rules = version_transition_rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "versionprobes.probe.talos-capi.test"},
            "spec": {
                "group": "probe.talos-capi.test", "scope": "Namespaced",
                "names": {"kind": "VersionProbe", "plural": "versionprobes", "singular": "versionprobe", "listKind": "VersionProbeList"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                        "type": "object",
                        "properties": {"version": {
                            "type": "string", "maxLength": 64,
                            "x-kubernetes-validations": rules,
                        }}
                    }}}}
                }]
            }
        }))
        .unwrap();
    install_crds(&client, &[crd]).await.unwrap();
    let ns = unique_namespace(&client, "version-probe").await.unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "probe.talos-capi.test",
        "v1",
        "VersionProbe",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let set = |version: &str| json!({"spec": {"version": version}});
    let refused_properly = |e: &kube::Error| {
        let message = e.to_string();
        message.contains("may not skip a minor version")
            && !RULE_BROKE.iter().any(|w| message.contains(w))
    };

    let values: Vec<String> = adversarial_versions()
        .into_iter()
        .filter_map(|(_, v)| v.as_str().map(str::to_owned))
        .filter(|v| v.len() <= 64)
        .collect();
    let create = |name: String, version: &str| {
        let object = json!({
            "apiVersion": "probe.talos-capi.test/v1", "kind": "VersionProbe",
            "metadata": {"name": name}, "spec": {"version": version}
        });
        let api = api.clone();
        async move {
            api.create(
                &PostParams::default(),
                &serde_json::from_value(object).unwrap(),
            )
            .await
        }
    };
    let mut failures = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let case = truncated(&json!(value));
        let stored = format!("stored-{i}");
        if let Err(e) = create(stored.clone(), value).await {
            failures.push(format!("{case}: the probe refused it: {e}"));
            continue;
        }
        let label = json!({"metadata": {"labels": {"touched": "yes"}}});
        if let Err(e) = api
            .patch(&stored, &PatchParams::default(), &Patch::Merge(&label))
            .await
        {
            failures.push(format!("{case}: stored, then a label was refused: {e}"));
        }
        // From the value to valid versions, and from a valid version to the value.
        for (t, target) in ["v1.33.2", "v1.0.0", "v2.0.0"].into_iter().enumerate() {
            let name = format!("stored-{i}-{t}");
            create(name.clone(), value).await.unwrap();
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&set(target)))
                .await
            {
                Ok(_) => {}
                Err(e) if refused_properly(&e) => {}
                Err(e) => failures.push(format!("{case} -> {target}: {e}")),
            }
            let name = format!("fresh-{i}-{t}");
            create(name.clone(), target).await.unwrap();
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&set(value)))
                .await
            {
                Ok(_) => {}
                Err(e) if refused_properly(&e) => {}
                Err(e) => failures.push(format!("{target} -> {case}: {e}")),
            }
        }
    }
    assert!(values.len() >= 30, "{} values", values.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The API server stores any int64 in an `int32` field; ours are bounded, so that no admitted
/// TalosControlPlane is one the controllers cannot read (a maxSurge of 3000000000 used to be
/// admitted and then reported as an unreadable spec).
#[tokio::test]
async fn every_admitted_number_reads_as_our_type() {
    let (_, client) = control_plane().await;
    let ns = unique_namespace(&client, "numbers").await.unwrap();
    type Set = fn(&mut Value, Value);
    let fields: &[(&str, Set)] = &[
        ("spec.replicas", |m, v| m["spec"]["replicas"] = v),
        ("spec.rolloutStrategy.rollingUpdate.maxSurge", |m, v| {
            m["spec"]["rolloutStrategy"] = json!({"rollingUpdate": {"maxSurge": v}})
        }),
        (
            "spec.rolloutStrategy.rollingUpdate.maxUnavailable",
            |m, v| m["spec"]["rolloutStrategy"] = json!({"rollingUpdate": {"maxUnavailable": v}}),
        ),
        (
            "spec.talosUpgrade.maxParallel",
            |m, v| {
                m["spec"]["talosUpgrade"] =
                    json!({"image": "ghcr.io/siderolabs/installer:v1.13.0", "maxParallel": v})
            },
        ),
        ("spec.remediationStrategy.maxRetry", |m, v| {
            m["spec"]["remediationStrategy"] = json!({"maxRetry": v})
        }),
        ("spec.remediationStrategy.retryPeriodSeconds", |m, v| {
            m["spec"]["remediationStrategy"] = json!({"retryPeriodSeconds": v})
        }),
        (
            "spec.remediationStrategy.minHealthyPeriodSeconds",
            |m, v| m["spec"]["remediationStrategy"] = json!({"minHealthyPeriodSeconds": v}),
        ),
        (
            "spec.machineTemplate.spec.deletion.nodeDrainTimeoutSeconds",
            |m, v| {
                m["spec"]["machineTemplate"] =
                    json!({"spec": {"deletion": {"nodeDrainTimeoutSeconds": v}}})
            },
        ),
    ];
    let mut failures = Vec::new();
    for (f, (path, set)) in fields.iter().enumerate() {
        for (v, value) in [
            json!(i64::from(i32::MAX) + 1),
            json!(3_000_000_000i64),
            json!(i64::from(i32::MIN) - 1),
            json!(i32::MAX),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("n{f}-{v}");
            let mut manifest = tcp_manifest(&name);
            set(&mut manifest, value.clone());
            let result = api_for(&client, &ns, &manifest)
                .patch(
                    &name,
                    &PatchParams::apply("admission-test").force(),
                    &Patch::Apply(&manifest),
                )
                .await;
            match result {
                Ok(object) => {
                    if let Err(e) = reads_as_our_type(&object) {
                        failures.push(format!(
                            "{path} = {value}: admitted, but does not read: {e}"
                        ));
                    }
                }
                Err(e) if value == json!(i32::MAX) => {
                    failures.push(format!("{path} = {value}: refused: {e}"))
                }
                Err(e) if !e.to_string().contains(path) => failures.push(format!(
                    "{path} = {value}: refused without naming the field: {e}"
                )),
                Err(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A TalosControlPlane stored before spec.version had a pattern (the old rules admitted
/// `v1.18446744073709551615.0`) stays updatable under our CRD: the pattern and the format rule
/// ratchet on an unchanged value, and the no-skipped-minor rule does not parse what its own
/// regex did not bound. Our TalosControlPlane CRD is copied to a probe group, beside a served
/// version `v1alpha2` whose spec.version has neither pattern nor rules (as before): objects
/// written through it are stored as v1alpha3 unchecked, and then updated through v1alpha3,
/// without replacing a CRD under other tests.
#[tokio::test]
async fn a_version_stored_before_the_pattern_stays_updatable() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let (_, client) = control_plane().await;
    let mut crd: CustomResourceDefinition = api::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "TalosControlPlane")
        .unwrap();
    crd.metadata.name = Some("taloscontrolplanes.probe.talos-capi.test".into());
    crd.metadata.labels = None;
    crd.spec.group = "probe.talos-capi.test".into();
    let mut legacy = crd.spec.versions[0].clone();
    legacy.name = "v1alpha2".into();
    legacy.storage = false;
    let version = legacy
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut()?.get_mut("spec"))
        .and_then(|s| s.properties.as_mut()?.get_mut("version"))
        .unwrap();
    assert!(version.pattern.is_some() && version.x_kubernetes_validations.is_some());
    version.pattern = None;
    version.x_kubernetes_validations = None;
    crd.spec.versions.push(legacy);
    install_crds(&client, &[crd]).await.unwrap();
    let ns = unique_namespace(&client, "version-legacy").await.unwrap();
    let api_at = |version: &str| {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "probe.talos-capi.test",
            version,
            "TalosControlPlane",
        ));
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar)
    };
    let (legacy, current) = (api_at("v1alpha2"), api_at("v1alpha3"));

    let mut failures = Vec::new();
    for (i, stored) in [
        "v1.18446744073709551615.0",
        "v1.9223372036854775807.0",
        "v99999999999999999999.1.0",
        "v01.033.0",
        "v1.33.2_custom",
        "v1.33.2",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("legacy-{i}");
        let mut manifest = tcp_manifest(&name);
        manifest["apiVersion"] = json!("probe.talos-capi.test/v1alpha2");
        manifest["spec"]["version"] = json!(stored);
        legacy
            .create(
                &PostParams::default(),
                &serde_json::from_value(manifest).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{stored} is stored through v1alpha2: {e}"));
        let got = current.get(&name).await.unwrap();
        assert_eq!(
            got.data["spec"]["version"],
            json!(stored),
            "read as v1alpha3"
        );

        let status = json!({"status": {"observedGeneration": 1}});
        let updates = [
            (
                "a label",
                json!({"metadata": {"labels": {"touched": "yes"}}}),
            ),
            (
                "an owner reference",
                json!({"metadata": {"ownerReferences": [{
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "name": "c1",
                "uid": "5b0e6a4e-7c1b-4f7e-9a53-2f3f7b1f0c11"}]}}),
            ),
            ("replicas", json!({"spec": {"replicas": 5}})),
        ];
        for (what, patch) in &updates {
            if let Err(e) = current
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                failures.push(format!("{stored}: {what} refused: {e}"));
            }
        }
        if let Err(e) = current
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            failures.push(format!("{stored}: a status write refused: {e}"));
        }
        // A new invalid value is refused by the pattern, never by a rule that broke.
        let to = json!({"spec": {"version": "v1.18446744073709551616.0"}});
        match current
            .patch(&name, &PatchParams::default(), &Patch::Merge(&to))
            .await
        {
            Ok(_) => failures.push(format!("{stored}: changed to an invalid version")),
            Err(e) if RULE_BROKE.iter().any(|w| e.to_string().contains(w)) => {
                failures.push(format!("{stored}: a rule broke on a change: {e}"))
            }
            Err(_) => {}
        }
        // And it can be repaired.
        let to = json!({"spec": {"version": "v1.33.3"}});
        if let Err(e) = current
            .patch(&name, &PatchParams::default(), &Patch::Merge(&to))
            .await
        {
            failures.push(format!("{stored}: the change to v1.33.3 was refused: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
