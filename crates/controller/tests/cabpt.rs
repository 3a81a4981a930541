//! Side by side with the real CABPT v0.6.12 (built from its Go module) on the same control plane
//! and Cluster API core: the same TalosConfigs, Clusters and secrets bundle give the same
//! bootstrap documents, and a cluster CABPT brought up is adopted without rewriting a booted
//! machine's data.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use api::bootstrap::v1alpha3::TalosConfig;
use api::conditions::ConditionType;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use testkit::{shared, unique_namespace};

const FILTER: &str = "cabpt-peer";

/// The machines both providers render: a control plane and a worker with both patch kinds.
fn specs() -> Vec<(&'static str, Value, bool)> {
    vec![
        (
            "cp-0",
            json!({
                "generateType": "controlplane", "talosVersion": "v1.11",
                "configPatches": [{"op": "add", "path": "/machine/install/extraKernelArgs", "value": ["console=ttyS0"]}],
                "strategicPatches": ["machine:\n  kubelet:\n    extraArgs:\n      rotate-server-certificates: \"true\"\n"]
            }),
            true,
        ),
        (
            "w-0",
            json!({"generateType": "worker", "talosVersion": "v1.11"}),
            false,
        ),
    ]
}

async fn bring_up(client: &kube::Client, ns: &str, bundle: &str, labels: Value) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "peer-talos", "labels": {"cluster.x-k8s.io/cluster-name": "peer"}},
        "stringData": {"bundle": bundle}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    cluster_labelled(client, ns, "peer", false, labels.clone()).await;
    for (name, spec, cp) in specs() {
        machine_labelled(client, ns, "peer", name, spec, cp, labels.clone()).await;
    }
}

async fn wait_ready(client: &kube::Client, ns: &str, name: &str) -> TalosConfig {
    let api: Api<TalosConfig> = Api::namespaced(client.clone(), ns);
    tokio::time::timeout(
        WAIT,
        await_condition(api, name, |c: Option<&TalosConfig>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.ready == Some(true) && s.data_secret_name.is_some())
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("TalosConfig {ns}/{name} did not become ready"))
    .unwrap()
    .unwrap()
}

/// Every path where `a` and `b` differ, with both values. An empty map and an absent key are
/// the same configuration to Talos (CABPT's encoder drops some empty sections, talosctl's keeps
/// them), so they are not a difference.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(|m| m.is_empty());
    match (a, b) {
        _ if empty(a) && empty(b) => {}
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                diff(
                    &x.get(k).cloned().unwrap_or(Value::Null),
                    &y.get(k).cloned().unwrap_or(Value::Null),
                    &format!("{path}/{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                diff(x, y, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} | {b}")),
        _ => {}
    }
}

#[tokio::test]
async fn same_inputs_same_documents_and_a_cabpt_cluster_is_adopted() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let bundle = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST)
        .unwrap()
        .to_yaml()
        .unwrap();

    let theirs = unique_namespace(&client, "cabpt-theirs").await.unwrap();
    let ours = unique_namespace(&client, "cabpt-ours").await.unwrap();
    let cabpt = testkit::peers::start_cabpt(cp, FILTER).await.unwrap();
    let _controller = start_controller(&client, &ours);
    bring_up(
        &client,
        &theirs,
        &bundle,
        json!({"cluster.x-k8s.io/watch-filter": FILTER}),
    )
    .await;
    bring_up(&client, &ours, &bundle, json!({})).await;

    same_documents_from_both(&client, &theirs, &ours).await;

    // Adoption: CABPT stops, the machines have booted (their infrastructure is provisioned),
    // and our controller takes over the namespace CABPT reconciled.
    let before = booted_and_edited_once_cabpt_stops(&client, &theirs, cabpt).await;
    wait_infrastructure_provisioned(&client, &theirs).await;
    let _adopting = start_controller(&client, &theirs);
    adopted_configs_report_cabpts_secrets(&client, &theirs).await;
    only_the_edited_worker_is_said_to_differ(&client, &theirs).await;
    no_booted_secret_is_rewritten(&client, &theirs, before).await;
}

/// Each machine's bootstrap documents are the same from CABPT and from us.
async fn same_documents_from_both(client: &kube::Client, theirs: &str, ours: &str) {
    for (name, _, _) in specs() {
        let a = wait_ready(client, theirs, name).await;
        let b = wait_ready(client, ours, name).await;
        let (_, theirs_docs) = secret_value(
            client,
            theirs,
            a.status
                .as_ref()
                .unwrap()
                .data_secret_name
                .as_deref()
                .unwrap(),
        )
        .await;
        let (_, ours_docs) = secret_value(
            client,
            ours,
            b.status
                .as_ref()
                .unwrap()
                .data_secret_name
                .as_deref()
                .unwrap(),
        )
        .await;
        let mut differences = Vec::new();
        diff(&json!(theirs_docs), &json!(ours_docs), "", &mut differences);
        assert!(
            differences.is_empty(),
            "{name}: CABPT's and our bootstrap documents differ (path: CABPT | ours):\n{}",
            differences.join("\n")
        );
    }
}

/// Stops CABPT, marks the machines booted and edits the worker after boot; returns the data
/// Secrets CABPT wrote.
async fn booted_and_edited_once_cabpt_stops(
    client: &kube::Client,
    theirs: &str,
    cabpt: testkit::process::ManagedProcess,
) -> Vec<Secret> {
    let before: Vec<Secret> = {
        let api: Api<Secret> = Api::namespaced(client.clone(), theirs);
        let mut v = Vec::new();
        for (name, _, _) in specs() {
            v.push(api.get(&format!("{name}-bootstrap-data")).await.unwrap());
        }
        v
    };
    drop(cabpt);
    for (name, _, _) in specs() {
        dynamic(
            client,
            theirs,
            "infrastructure.cluster.x-k8s.io/v1alpha1",
            "SimMachine",
        )
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": format!("sim://{name}")}})),
        )
        .await
        .unwrap();
        testkit::infra::mark_provisioned(client, theirs, "SimMachine", name)
            .await
            .unwrap();
    }
    // An edit after boot must not reach the booted machine.
    dynamic(
        client,
        theirs,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    )
    .patch(
        "w-0",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"strategicPatches": ["machine:\n  install:\n    disk: /dev/vdb\n"]}}),
        ),
    )
    .await
    .unwrap();
    before
}

/// Waits for Cluster API to see every machine's infrastructure provisioned.
async fn wait_infrastructure_provisioned(client: &kube::Client, theirs: &str) {
    // Cluster API sees the provisioned infrastructure before we take over.
    let machines: Api<api::capi::Machine> = Api::namespaced(client.clone(), theirs);
    for (name, _, _) in specs() {
        tokio::time::timeout(
            WAIT,
            await_condition(machines.clone(), name, |m: Option<&api::capi::Machine>| {
                m.and_then(|m| m.status.as_ref())
                    .and_then(|s| s.initialization.as_ref())
                    .and_then(|i| i.infrastructure_provisioned)
                    == Some(true)
            }),
        )
        .await
        .expect("Cluster API marks the machine's infrastructure provisioned")
        .unwrap();
    }
}

/// Our controller reports each config ready with the data Secret CABPT wrote.
async fn adopted_configs_report_cabpts_secrets(client: &kube::Client, theirs: &str) {
    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), theirs);
    for (name, _, _) in specs() {
        // CABPT wrote ready and a v1beta1 Ready; ours adds the v1beta2 contract's fields.
        let c = tokio::time::timeout(
            WAIT,
            await_condition(configs.clone(), name, |c: Option<&TalosConfig>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.initialization.as_ref())
                    .and_then(|i| i.data_secret_created)
                    == Some(true)
            }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        let Some(c) = c else {
            let last = configs
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status);
            panic!("{name}: our controller reports the adopted Secret; status: {last:#?}");
        };
        let s = c.status.unwrap();
        assert_eq!(s.ready, Some(true), "{name}: statuses converge");
        assert_eq!(
            s.data_secret_name,
            Some(format!("{name}-bootstrap-data")),
            "{name}: the Secret CABPT wrote"
        );
    }
}

/// The edited worker is said to differ, with a Warning; the control plane is up to date.
async fn only_the_edited_worker_is_said_to_differ(client: &kube::Client, theirs: &str) {
    // The edited worker renders other documents than it booted with: said, with a Warning.
    wait_config(
        client,
        theirs,
        "w-0",
        ConditionType::ConfigUpToDate,
        "False",
    )
    .await;
    wait_warning(client, theirs, "w-0", "RunningConfigDiffers", |_| true).await;
    // The control plane's spec is unchanged: CABPT's bytes (its YAML encoder's layout) are the
    // documents we render, so it is up to date, and nothing was said against it.
    wait_config_where(
        client,
        theirs,
        "cp-0",
        ConditionType::ConfigUpToDate,
        "True",
        |c| c.reason == "UpToDate",
    )
    .await;
    let warned = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), theirs)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("cp-0"))
        .filter(|e| e.reason.as_deref() == Some("RunningConfigDiffers"))
        .count();
    assert_eq!(warned, 0, "no RunningConfigDiffers Event on cp-0");
}

/// No data Secret CABPT wrote is rewritten.
async fn no_booted_secret_is_rewritten(client: &kube::Client, theirs: &str, before: Vec<Secret>) {
    let api: Api<Secret> = Api::namespaced(client.clone(), theirs);
    for old in before {
        let now = api
            .get(old.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(
            now.metadata.resource_version, old.metadata.resource_version,
            "{:?} is not rewritten",
            old.metadata.name
        );
        assert_eq!(now.data, old.data);
    }
}

/// Where [`capture_cabpt_bytes`] writes, and the bootstrap controller's unit tests read.
const FIXTURE: &str = "crates/controller/tests/fixtures/cabpt-v0.6.12";

/// Writes the fixture of CABPT's exact bytes (run by hand, with the real CABPT v0.6.12):
/// the throwaway secrets bundle, the Cluster, Machines and TalosConfig specs of [`specs`], and
/// the value of each bootstrap data Secret CABPT wrote for them. The unit tests render the same
/// inputs and compare (crates/controller/src/bootstrap/render.rs).
#[tokio::test]
#[ignore = "writes a fixture: make cabpt-fixture"]
async fn capture_cabpt_bytes() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let bundle = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST)
        .unwrap()
        .to_yaml()
        .unwrap();
    let ns = unique_namespace(&client, "cabpt-capture").await.unwrap();
    let _cabpt = testkit::peers::start_cabpt(cp, FILTER).await.unwrap();
    bring_up(
        &client,
        &ns,
        &bundle,
        json!({"cluster.x-k8s.io/watch-filter": FILTER}),
    )
    .await;
    let dir = testkit::tools::repo_root().join(FIXTURE);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bundle.yaml"), &bundle).unwrap();
    let spec_of =
        |o: Value| json!({"metadata": {"name": o["metadata"]["name"]}, "spec": o["spec"]});
    let cluster = dynamic(&client, &ns, "cluster.x-k8s.io/v1beta2", "Cluster")
        .get("peer")
        .await
        .unwrap();
    let mut inputs = json!({"cluster": spec_of(serde_json::to_value(cluster).unwrap())});
    for (name, spec, _) in specs() {
        let config = wait_ready(&client, &ns, name).await;
        let data = config.status.unwrap().data_secret_name.unwrap();
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&data)
            .await
            .unwrap();
        let value = &secret.data.unwrap()["value"].0;
        std::fs::write(dir.join(format!("{name}.yaml")), value).unwrap();
        let machine = dynamic(&client, &ns, "cluster.x-k8s.io/v1beta2", "Machine")
            .get(name)
            .await
            .unwrap();
        inputs["machines"][name] = spec_of(serde_json::to_value(machine).unwrap());
        inputs["configs"][name] = spec;
    }
    std::fs::write(
        dir.join("inputs.json"),
        serde_json::to_string_pretty(&inputs).unwrap() + "\n",
    )
    .unwrap();
}

/// Going back to Sidero's provider: a cluster talos-capi brought up (its bundle, CA, talosconfig
/// and data Secrets are ours) is taken over by CABPT. CABPT leaves our ready TalosConfig and every
/// Secret as they are, and renders a new machine from our bundle: the same CAs and token.
#[tokio::test]
async fn a_cluster_we_brought_up_is_taken_back_by_cabpt_without_a_rewrite() {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = unique_namespace(&client, "cabpt-back").await.unwrap();
    let labels = json!({"cluster.x-k8s.io/watch-filter": FILTER});
    let (name, config, secrets, before) = our_cluster_up(&client, &ns, &labels).await;

    let _cabpt = testkit::peers::start_cabpt(cp, FILTER).await.unwrap();
    cabpt_renders_from_our_bundle(&client, &ns, labels).await;
    cabpt_rewrites_nothing_of_ours(&client, &ns, name, &config, &secrets, before).await;
}

/// Brings a control plane machine up with our controller, then stops it; returns the machine's
/// name, its config, the Secrets API and our Secrets as they were.
async fn our_cluster_up(
    client: &kube::Client,
    ns: &str,
    labels: &Value,
) -> (&'static str, TalosConfig, Api<Secret>, Vec<Secret>) {
    let ours = start_controller(client, ns);
    cluster_labelled(client, ns, "back", false, labels.clone()).await;
    let (name, spec, _) = specs().remove(0);
    machine_labelled(client, ns, "back", name, spec, true, labels.clone()).await;
    let config = wait_ready(client, ns, name).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ours_secrets = [
        "back-talos",
        "back-ca",
        "back-talosconfig",
        "cp-0-bootstrap-data",
    ];
    let mut before = Vec::new();
    for s in ours_secrets {
        before.push(secrets.get(s).await.unwrap());
    }
    drop(ours);
    (name, config, secrets, before)
}

/// CABPT renders a new worker from our bundle: the same CAs and tokens.
async fn cabpt_renders_from_our_bundle(client: &kube::Client, ns: &str, labels: Value) {
    let (_, worker, _) = specs().remove(1);
    machine_labelled(client, ns, "back", "w-back", worker, false, labels).await;
    let theirs = wait_ready(client, ns, "w-back").await;
    let (_, cp_docs) = secret_value(client, ns, "cp-0-bootstrap-data").await;
    let (_, w_docs) = secret_value(
        client,
        ns,
        theirs.status.unwrap().data_secret_name.as_deref().unwrap(),
    )
    .await;
    for path in [
        "/cluster/ca/crt",
        "/machine/ca/crt",
        "/machine/token",
        "/cluster/token",
    ] {
        let ours = cp_docs[0].pointer(path);
        assert!(ours.is_some_and(Value::is_string), "{path} in our config");
        assert_eq!(
            w_docs[0].pointer(path),
            ours,
            "{path}: CABPT renders from our bundle"
        );
    }
}

/// Once CABPT has reconciled our control-plane config, our Secrets and config are as we wrote.
async fn cabpt_rewrites_nothing_of_ours(
    client: &kube::Client,
    ns: &str,
    name: &str,
    config: &TalosConfig,
    secrets: &Api<Secret>,
    before: Vec<Secret>,
) {
    // Once CABPT has reconciled our ready control-plane config to the end: the bundle, the CA and
    // the booted data are as we wrote them. CABPT writes its talosconfig again in each reconcile
    // of a ready control-plane config (endpoints its way, a new client certificate), from the
    // same bundle: the same OS CA.
    cabpt_reconciled(client, ns, name, "back-talosconfig").await;
    let talosconfig_ca = |s: &Secret| -> Value {
        let text = String::from_utf8(s.data.as_ref().unwrap()["talosconfig"].0.clone()).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
        doc["contexts"]["back"]["ca"].clone()
    };
    for old in before {
        let name = old.metadata.name.clone().unwrap();
        let now = secrets.get(&name).await.unwrap();
        if name == "back-talosconfig" {
            let ca = talosconfig_ca(&old);
            assert!(ca.is_string(), "{ca}");
            assert_eq!(talosconfig_ca(&now), ca, "{name}: the same OS CA");
            continue;
        }
        assert_eq!(
            now.metadata.resource_version, old.metadata.resource_version,
            "{name} is not rewritten"
        );
    }
    let now = Api::<TalosConfig>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    assert_eq!(
        now.status.as_ref().and_then(|s| s.data_secret_name.clone()),
        config
            .status
            .as_ref()
            .and_then(|s| s.data_secret_name.clone())
    );
    assert_eq!(now.status.and_then(|s| s.ready), Some(true));
}

/// Until CABPT has run a whole reconcile of the ready control-plane TalosConfig `config` (and
/// everything such a reconcile does to the Secrets). Each of them rewrites the cluster's
/// `talosconfig` Secret (a new client certificate), and CABPT reconciles one object at a time:
/// after a nudge of `config` and a rewrite, a second nudge and a second rewrite mean the
/// reconcile that made the first one had ended.
async fn cabpt_reconciled(client: &kube::Client, ns: &str, config: &str, talosconfig: &str) {
    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let revision = async || {
        secrets
            .get(talosconfig)
            .await
            .unwrap()
            .metadata
            .resource_version
    };
    for n in 1..=2 {
        let before = revision().await;
        nudge(&configs, config).await;
        let what = format!("CABPT rewriting {talosconfig} after nudge {n} of {config}");
        testkit::eventually(&what, WAIT, async || {
            (revision().await != before).then_some(())
        })
        .await;
    }
}

/// Our CRDs replace CABPT's under the same names with objects stored: those objects stay as they
/// are and are served. One CABPT's looser schema let in (a JSON patch operation that does not
/// exist) cannot be read as our type: it is reported in its status and a Warning Event, and the
/// other TalosConfigs of the namespace still become ready.
#[tokio::test]
async fn our_crds_replace_cabpts_over_stored_objects_and_one_we_cannot_read_is_reported() {
    // A control plane of its own: replacing the CRDs of the shared one would disturb other tests.
    let cp = testkit::LocalControlPlane::builder()
        .name("crd-swap")
        .cluster_api()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let theirs = testkit::tools::locate(testkit::tools::Tool::CabptConfig)
        .unwrap()
        .join("crd/bases");
    testkit::install_crds(&client, &testkit::crds_from_dir(&theirs).unwrap())
        .await
        .unwrap();
    let ns = unique_namespace(&client, "crd-swap").await.unwrap();
    cluster(&client, &ns, "swap", false).await;
    let (name, spec, _) = specs().remove(0);
    machine(&client, &ns, "swap", name, spec, true).await;
    let bogus = json!({"generateType": "worker", "talosVersion": "v1.11",
        "configPatches": [{"op": "bogus", "path": "/machine/install"}]});
    machine(&client, &ns, "swap", "w-bogus", bogus, false).await;

    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), &ns);
    let dynamic = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "bootstrap.cluster.x-k8s.io",
            "v1alpha3",
            "TalosConfig",
        )),
    );
    let stored = dynamic.get("w-bogus").await.unwrap();
    assert_eq!(
        stored.data["spec"]["configPatches"][0]["op"], "bogus",
        "stored objects stay as they are"
    );
    let _controller = start_controller(&client, &ns);
    wait_config(&client, &ns, name, ConditionType::Ready, "True").await;
    // Read as it is stored: our type cannot read it.
    let reported = testkit::eventually(
        "the object that cannot be read reported in its status",
        WAIT,
        async || {
            let o = dynamic.get("w-bogus").await.unwrap();
            o.data["status"]["conditions"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == "DataSecretAvailable" && c["reason"] == "InvalidSpec")
                    .cloned()
            })
        },
    )
    .await;
    let message = reported["message"].as_str().unwrap_or_default();
    assert_eq!(reported["status"], "False");
    assert!(
        message.contains("cannot be read as a TalosConfig") && message.contains("bogus"),
        "{message}"
    );
    wait_warning(&client, &ns, "w-bogus", "InvalidSpec", |_| true).await;
    assert!(
        configs.get("w-bogus").await.is_err(),
        "not readable as our type"
    );
}
