//! The TalosConfig controller on the local control plane with the real Cluster API core: real
//! Machine and MachineSet controllers own our TalosConfigs and read our status; we render
//! bootstrap data into Secrets the real talosctl validates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::collections::BTreeMap;

use api::bootstrap::v1alpha3::TalosConfig;
use api::capi::Machine;
use api::conditions::{self, ConditionType};
use common::*;
use controller::Options;
use controller::bootstrap::secrets;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

#[tokio::test]
async fn control_planes_and_workers_share_one_bundle_and_machines_get_their_data() {
    let (client, ns, _controller) = setup("bootstrap-ha").await;
    ha_cluster_with_a_worker_deployment(&client, &ns).await;
    let (configs, machines, workers) = wait_for_everyones_data(&client, &ns).await;
    let docs_by_machine = data_secrets_by_machine(&client, &ns, configs, workers).await;
    wait_every_machine_sees_its_data(&machines).await;
    one_cluster_in_every_machines_data(docs_by_machine);
    one_bundle_and_a_talosconfig(&client, &ns).await;
}

/// Creates cluster `ha`, three control plane Machines and a MachineDeployment of four workers.
async fn ha_cluster_with_a_worker_deployment(client: &kube::Client, ns: &str) {
    cluster(client, ns, "ha", false).await;
    let cp_spec = json!({"generateType": "controlplane", "talosVersion": "v1.13", "hostname": {"source": "MachineName"}});
    for i in 0..3 {
        machine(
            client,
            ns,
            "ha",
            &format!("ha-cp-{i}"),
            cp_spec.clone(),
            true,
        )
        .await;
    }
    // Workers through a MachineDeployment and a TalosConfigTemplate: the real MachineSet
    // controller stamps out Machines and TalosConfigs from the templates.
    apply(
        client,
        ns,
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
            "metadata": {"name": "ha-workers"},
            "spec": {"template": {"spec": {"generateType": "worker", "talosVersion": "v1.13"}}}
        }),
    )
    .await;
    apply(
        client,
        ns,
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachineTemplate",
            "metadata": {"name": "ha-workers"}, "spec": {"template": {"spec": {}}}
        }),
    )
    .await;
    apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": "ha-workers"},
        "spec": {
            "clusterName": "ha", "replicas": 4,
            "selector": {"matchLabels": {"pool": "ha-workers"}},
            "template": {
                "metadata": {"labels": {"pool": "ha-workers"}},
                "spec": {
                    "clusterName": "ha", "version": "v1.35.0",
                    "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfigTemplate", "name": "ha-workers"}},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": "ha-workers"}
                }
            }
        }
    }))
    .await;
}

/// Waits for the control plane configs to be ready and the workers to have bootstrap data.
async fn wait_for_everyones_data(
    client: &kube::Client,
    ns: &str,
) -> (Vec<TalosConfig>, Api<Machine>, Vec<Machine>) {
    let mut configs = Vec::new();
    for i in 0..3 {
        configs.push(
            wait_config(
                client,
                ns,
                &format!("ha-cp-{i}"),
                ConditionType::Ready,
                "True",
            )
            .await,
        );
    }
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    let workers = testkit::eventually(
        "the MachineSet's 4 Machines getting bootstrap data through our TalosConfigs",
        WAIT,
        async || {
            let list = machines
                .list(&ListParams::default().labels("pool=ha-workers"))
                .await
                .unwrap();
            let done = list.items.len() == 4
                && list
                    .items
                    .iter()
                    .all(|m| m.spec.bootstrap.data_secret_name.is_some());
            done.then_some(list.items)
        },
    )
    .await;
    (configs, machines, workers)
}

/// Checks the control planes' data Secrets and reads every machine's documents.
async fn data_secrets_by_machine(
    client: &kube::Client,
    ns: &str,
    configs: Vec<TalosConfig>,
    workers: Vec<Machine>,
) -> BTreeMap<String, Vec<Value>> {
    let mut docs_by_machine = BTreeMap::new();
    for config in &configs {
        let status = config.status.as_ref().unwrap();
        assert_eq!(status.ready, Some(true));
        assert_eq!(
            status
                .initialization
                .as_ref()
                .and_then(|i| i.data_secret_created),
            Some(true)
        );
        let name = status.data_secret_name.clone().unwrap();
        let (secret, docs) = secret_value(client, ns, &name).await;
        assert_eq!(secret.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
        assert_eq!(
            secret.data.as_ref().map(BTreeMap::len),
            Some(1),
            "a single key, value"
        );
        assert!(
            secret
                .metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.kind == "TalosConfig" && o.controller == Some(true)),
            "controller-owned by its TalosConfig"
        );
        docs_by_machine.insert(config.metadata.name.clone().unwrap(), docs);
    }
    for worker in &workers {
        let name = worker.spec.bootstrap.data_secret_name.clone().unwrap();
        let (_, docs) = secret_value(client, ns, &name).await;
        docs_by_machine.insert(worker.metadata.name.clone().unwrap(), docs);
    }
    docs_by_machine
}

/// Waits for the real Machine controller to report every Machine's bootstrap data created.
async fn wait_every_machine_sees_its_data(machines: &Api<Machine>) {
    // The real Machine controller reads our v1beta2 status (on its own schedule: wait for it).
    let created = |m: &Machine| {
        m.status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .and_then(|i| i.bootstrap_data_secret_created)
            == Some(true)
    };
    let pending = async || {
        let list = machines.list(&ListParams::default()).await.unwrap().items;
        let pending: Vec<_> = list
            .into_iter()
            .filter(|m| !created(m))
            .map(|m| m.metadata.name)
            .collect();
        format!("Machines without bootstrapDataSecretCreated: {pending:?}")
    };
    testkit::eventually_explained(
        "every Machine's bootstrapDataSecretCreated",
        WAIT,
        async || {
            let list = machines.list(&ListParams::default()).await.unwrap().items;
            list.iter().all(created).then_some(())
        },
        pending,
    )
    .await;
}

/// Checks every machine's documents carry one cluster's CA, token and network, by role.
fn one_cluster_in_every_machines_data(docs_by_machine: BTreeMap<String, Vec<Value>>) {
    let first = &docs_by_machine["ha-cp-0"][0];
    for (machine, docs) in &docs_by_machine {
        let d = &docs[0];
        assert_eq!(
            d["cluster"]["ca"]["crt"], first["cluster"]["ca"]["crt"],
            "{machine}: one cluster CA"
        );
        assert_eq!(
            d["machine"]["token"], first["machine"]["token"],
            "{machine}: one token"
        );
        assert_eq!(
            d["cluster"]["controlPlane"]["endpoint"],
            "https://192.168.1.100:6443"
        );
        assert_eq!(d["cluster"]["network"]["dnsDomain"], "corp.local");
        assert_eq!(
            d["cluster"]["network"]["podSubnets"],
            json!(["10.244.0.0/16", "fd00:10:244::/56"])
        );
        if machine.starts_with("ha-cp-") {
            assert_eq!(d["machine"]["type"], "controlplane");
            assert!(
                docs.iter()
                    .any(|d| d["kind"] == "HostnameConfig" && d["hostname"] == machine.as_str()),
                "{machine}: hostname from the machine name"
            );
        } else {
            assert_eq!(d["machine"]["type"], "worker");
            assert!(
                d["cluster"]["ca"]["key"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{machine}: no CA key"
            );
            assert!(
                d["machine"]["ca"]["key"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{machine}: no OS CA key"
            );
        }
        talosctl_validate(docs);
    }
}

/// Checks the cluster has one bundle Secret, a CA Secret and a talosconfig for its context.
async fn one_bundle_and_a_talosconfig(client: &kube::Client, ns: &str) {
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let bundles = secrets_api
        .list(&ListParams::default().labels("cluster.x-k8s.io/cluster-name=ha"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() == Some("ha-talos"))
        .count();
    assert_eq!(bundles, 1);
    assert!(
        secrets_api
            .get_opt(&secrets::ca_name("ha"))
            .await
            .unwrap()
            .is_some()
    );
    let talosconfig = secrets_api
        .get(&secrets::talosconfig_name("ha"))
        .await
        .unwrap();
    let text = String::from_utf8(
        talosconfig.data.unwrap_or_default()["talosconfig"]
            .0
            .clone(),
    )
    .unwrap();
    let parsed = machineconfig::talosconfig::TalosConfig::from_yaml(&text).unwrap();
    assert_eq!(parsed.context, "ha");
}

#[tokio::test]
async fn a_bad_patch_is_reported_and_the_other_configs_still_become_ready() {
    let (client, ns, _controller) = setup("bootstrap-bad").await;
    cluster(&client, &ns, "bad", false).await;
    // Talos refuses JSON 6902 patches on multi-document configurations (contract v1.12+).
    machine(
        &client,
        &ns,
        "bad",
        "bad-0",
        json!({
            "generateType": "worker", "talosVersion": "v1.13",
            "configPatches": [{"op": "add", "path": "/machine/network/hostname", "value": "x"}]
        }),
        false,
    )
    .await;
    machine(
        &client,
        &ns,
        "bad",
        "good-0",
        json!({"generateType": "worker", "talosVersion": "v1.13"}),
        false,
    )
    .await;

    let bad = wait_reason(
        &client,
        &ns,
        "bad-0",
        ConditionType::DataSecretAvailable,
        "PatchFailed",
    )
    .await;
    assert!(bad.message.contains("JSON6902"), "{}", bad.message);
    wait_config(&client, &ns, "good-0", ConditionType::Ready, "True").await;
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets_api
            .get_opt("bad-0-bootstrap-data")
            .await
            .unwrap()
            .is_none(),
        "no partial write"
    );
    wait_warning(&client, &ns, "bad-0", "PatchFailed", |_| true).await;
}

/// A TalosConfig whose render fails for a spec reason is rendered once: its own status write
/// (and status changes of its Machine and Cluster) reconcile it again with the same inputs, and
/// those reconciles report the failure without rendering again. A change to its spec renders it
/// again.
#[tokio::test]
async fn a_config_that_cannot_render_is_not_rendered_again_until_its_spec_changes() {
    let cp = testkit::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = testkit::unique_namespace(&client, "bootstrap-once")
        .await
        .unwrap();
    let (_controller, ctx) = start_controller_context(&client, &ns, controller::Options::default());
    cluster(&client, &ns, "once", false).await;
    let unknown_kind = "apiVersion: v1alpha1\nkind: Evil\n";
    machine(
        &client,
        &ns,
        "once",
        "once-0",
        json!({"generateType": "worker", "talosVersion": "v1.13", "strategicPatches": [unknown_kind]}),
        false,
    )
    .await;
    let cond = wait_reason(
        &client,
        &ns,
        "once-0",
        ConditionType::DataSecretAvailable,
        "PatchFailed",
    )
    .await;
    assert!(cond.message.contains("\"Evil\""), "{}", cond.message);
    // The status write that reported it is seen by the watch, and reconciles the object again.
    testkit::eventually(
        "the object's own status write reconciling it again",
        WAIT,
        async || {
            (ctx.metrics.renders("unchanged") + ctx.metrics.renders("failed") >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(ctx.metrics.renders("failed"), 1, "rendered once");
    assert!(ctx.metrics.renders("unchanged") >= 1);
    assert_eq!(ctx.metrics.renders("rendered"), 0);
    let configs = Api::<TalosConfig>::namespaced(client.clone(), &ns);
    let status = configs.get("once-0").await.unwrap().status.unwrap();
    let still = conditions::get(
        status.conditions.as_deref().unwrap_or_default(),
        ConditionType::DataSecretAvailable,
    )
    .unwrap();
    assert_eq!(
        (still.reason.as_str(), still.message.as_str()),
        (cond.reason.as_str(), cond.message.as_str()),
        "the same failure reported"
    );

    // A new spec is rendered.
    configs
        .patch(
            "once-0",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"strategicPatches": ["machine: {install: {disk: /dev/vda}}"]}}),
            ),
        )
        .await
        .unwrap();
    wait_config(&client, &ns, "once-0", ConditionType::Ready, "True").await;
    assert_eq!(ctx.metrics.renders("failed"), 1);
    assert!(ctx.metrics.renders("rendered") >= 1);
}

/// Hostile TalosConfigs committed to Git: each ends in a condition naming the limit it exceeds
/// and a Warning Event, with no bootstrap data written, while a good config beside them becomes
/// ready. An unusable bundle Secret is reported, and left as it was.
#[tokio::test]
async fn hostile_configs_and_bundles_become_conditions_and_the_rest_still_reconciles() {
    let (client, ns, _controller) = setup("bootstrap-hostile").await;
    let secrets_api = hostile_configs_are_refused(&client, &ns).await;
    tampered_bundle_is_left_as_it_was(&client, &ns, &secrets_api).await;
    leaky_bundle_never_names_its_token(&client, &ns, &secrets_api).await;
    // A Secret planted under a machine's bootstrap data name, owned by nothing, owned by
    // another object, or of a type no bootstrap provider writes: refused, left as it was, and
    // never named as the machine's data.
    let foreign_owner = a_foreign_owner(&client, &ns).await;
    planted_data_secrets_are_refused(&client, &ns, &secrets_api, foreign_owner).await;
}

/// Creates configs that exceed the limits beside a good one: the good one becomes ready, each
/// hostile one a condition and a Warning Event with no data written.
async fn hostile_configs_are_refused(client: &kube::Client, ns: &str) -> Api<Secret> {
    cluster(client, ns, "hostile", false).await;
    let mut bomb = format!("a0: &a0 [{}]\n", vec!["x"; 2000].join(","));
    for level in 1..=8 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    let copy = json!({"op": "copy", "from": "/machine/certSANs", "path": "/machine/certSANs/-"});
    let mut copies = vec![json!({"op": "add", "path": "/machine/certSANs", "value": ["a"]})];
    copies.extend(std::iter::repeat_n(copy, 40));
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!({"a": deep});
    }
    let cases = [
        (
            "bomb-0",
            json!({"generateType": "worker", "strategicPatches": [bomb]}),
            "more than 100000 values, counting each use of a YAML alias in full",
        ),
        (
            "copies-0",
            json!({"generateType": "worker", "talosVersion": "v1.10", "configPatches": copies}),
            "more than 100000 values",
        ),
        (
            "deep-0",
            json!({"generateType": "worker", "talosVersion": "v1.10",
                   "configPatches": [{"op": "add", "path": "/machine/x", "value": deep}]}),
            "nested more than 64 levels deep",
        ),
    ];
    for (name, spec, _) in &cases {
        machine(client, ns, "hostile", name, spec.clone(), false).await;
    }
    machine(
        client,
        ns,
        "hostile",
        "good-0",
        json!({"generateType": "worker"}),
        false,
    )
    .await;
    wait_config(client, ns, "good-0", ConditionType::Ready, "True").await;
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, _, message) in &cases {
        let cond = wait_reason(
            client,
            ns,
            name,
            ConditionType::DataSecretAvailable,
            "PatchFailed",
        )
        .await;
        assert!(cond.message.contains(message), "{name}: {}", cond.message);
        assert!(cond.message.len() < 2048, "{name}: {}", cond.message);
        let data = format!("{name}-bootstrap-data");
        assert!(
            secrets_api.get_opt(&data).await.unwrap().is_none(),
            "{name}: no partial write"
        );
        wait_warning(client, ns, name, "PatchFailed", |m| m.contains(message)).await;
    }
    secrets_api
}

/// A bundle Secret whose Kubernetes CA key belongs to another CA is reported and left as it was.
async fn tampered_bundle_is_left_as_it_was(
    client: &kube::Client,
    ns: &str,
    secrets_api: &Api<Secret>,
) {
    // A bundle Secret whose Kubernetes CA key belongs to another CA (committed by hand, or
    // tampered with): InvalidSecret, and the Secret is neither used nor overwritten.
    let mut bundle =
        machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST).unwrap();
    bundle.certs.k8s.key = bundle.certs.etcd.key.clone();
    let before = create_bundle_secret(client, ns, "tampered", &bundle).await;
    cluster(client, ns, "tampered", false).await;
    machine(
        client,
        ns,
        "tampered",
        "tampered-0",
        json!({"generateType": "controlplane"}),
        true,
    )
    .await;
    let cond = wait_reason(
        client,
        ns,
        "tampered-0",
        ConditionType::DataSecretAvailable,
        "InvalidSecret",
    )
    .await;
    assert!(
        cond.message
            .contains("certs.k8s.crt and certs.k8s.key do not belong together"),
        "{}",
        cond.message
    );
    let after = secrets_api.get("tampered-talos").await.unwrap();
    assert_eq!(
        before.data, after.data,
        "the bundle Secret is left as it was"
    );
    assert!(
        secrets_api
            .get_opt("tampered-0-bootstrap-data")
            .await
            .unwrap()
            .is_none()
    );
}

/// A bundle Secret with a misplaced trustd token is reported without quoting the token.
async fn leaky_bundle_never_names_its_token(
    client: &kube::Client,
    ns: &str,
    secrets_api: &Api<Secret>,
) {
    // A bundle Secret whose trustd token stands where trustdinfo's mapping belongs (serde's
    // message quoted it): the condition and the Event name the field, never the token.
    let leaky = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST).unwrap();
    let token = leaky.trustdinfo.token.clone();
    let yaml = leaky.to_yaml().unwrap().replacen(
        &format!("trustdinfo:\n  token: {token}\n"),
        &format!("trustdinfo: {token}\n"),
        1,
    );
    let hostile_bundle: Secret = serde_json::from_value(json!({
        "metadata": {"name": "leaky-talos", "labels": {"cluster.x-k8s.io/cluster-name": "leaky"}},
        "stringData": {"bundle": yaml}
    }))
    .unwrap();
    secrets_api
        .create(&Default::default(), &hostile_bundle)
        .await
        .unwrap();
    cluster(client, ns, "leaky", false).await;
    machine(
        client,
        ns,
        "leaky",
        "leaky-0",
        json!({"generateType": "controlplane"}),
        true,
    )
    .await;
    let cond = wait_reason(
        client,
        ns,
        "leaky-0",
        ConditionType::DataSecretAvailable,
        "InvalidSecret",
    )
    .await;
    assert!(
        cond.message
            .contains("field `trustdinfo` is a string, expected a map (line "),
        "{}",
        cond.message
    );
    assert!(!cond.message.contains(&token), "{}", cond.message);
    wait_warning(client, ns, "leaky-0", "InvalidSecret", |m| {
        m.contains("field `trustdinfo`")
    })
    .await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap();
    for event in &events.items {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(&token), "a secret in an Event: {text}");
    }
    let configs = Api::<TalosConfig>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap();
    let text = serde_json::to_string(&configs.items).unwrap();
    assert!(!text.contains(&token), "a secret in a TalosConfig");
}

/// Creates a ConfigMap and returns an owner reference to it.
async fn a_foreign_owner(
    client: &kube::Client,
    ns: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    let foreign = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "someone-else"}})).unwrap(),
        )
        .await
        .unwrap();

    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "someone-else".into(),
        uid: foreign.metadata.uid.clone().unwrap(),
        ..Default::default()
    }
}

/// Plants data Secrets owned by nothing, by another object or of another type: each refused.
async fn planted_data_secrets_are_refused(
    client: &kube::Client,
    ns: &str,
    secrets_api: &Api<Secret>,
    foreign_owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) {
    for (machine_name, type_, owners, says) in [
        ("planted-0", "Opaque", None, "owned by nothing"),
        (
            "foreign-0",
            "cluster.x-k8s.io/secret",
            Some(vec![foreign_owner]),
            "owned by ConfigMap someone-else",
        ),
        (
            "typed-0",
            "example.com/other",
            None,
            "of type example.com/other",
        ),
    ] {
        let planted = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{machine_name}-bootstrap-data")),
                owner_references: owners,
                ..Default::default()
            },
            type_: Some(type_.into()),
            string_data: Some([("value".to_owned(), "not ours".to_owned())].into()),
            ..Default::default()
        };
        let planted = secrets_api
            .create(&Default::default(), &planted)
            .await
            .unwrap();
        machine(
            client,
            ns,
            "hostile",
            machine_name,
            json!({"generateType": "worker"}),
            false,
        )
        .await;
        let cond = wait_reason(
            client,
            ns,
            machine_name,
            ConditionType::DataSecretAvailable,
            "InvalidSecret",
        )
        .await;
        assert!(
            cond.message.contains(says) && cond.message.contains("not used as bootstrap data"),
            "{machine_name}: {}",
            cond.message
        );
        assert!(
            !cond.message.contains("not ours"),
            "content is never quoted"
        );
        let after = secrets_api
            .get(&format!("{machine_name}-bootstrap-data"))
            .await
            .unwrap();
        assert_eq!(after.data, planted.data, "{machine_name}: left as it was");
        let config = Api::<TalosConfig>::namespaced(client.clone(), ns)
            .get(machine_name)
            .await
            .unwrap();
        assert!(
            config
                .status
                .as_ref()
                .and_then(|s| s.data_secret_name.as_ref())
                .is_none(),
            "{machine_name}: not named as bootstrap data"
        );
    }
}

#[tokio::test]
async fn pause_holds_everything_until_lifted() {
    let (client, ns, _controller) = setup("bootstrap-pause").await;
    cluster(&client, &ns, "p", true).await;
    // Cluster API does not adopt objects of a paused Cluster; the label names it.
    let label = json!({"cluster.x-k8s.io/cluster-name": "p"});
    machine_labelled(
        &client,
        &ns,
        "p",
        "p-0",
        json!({"generateType": "worker"}),
        false,
        label,
    )
    .await;
    let paused = wait_config(&client, &ns, "p-0", ConditionType::Paused, "True").await;
    let cond = conditions::get(
        paused
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_deref()
            .unwrap(),
        ConditionType::Paused,
    )
    .cloned()
    .unwrap();
    assert!(cond.message.contains("spec.paused"), "{}", cond.message);
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets_api
            .get_opt("p-0-bootstrap-data")
            .await
            .unwrap()
            .is_none()
    );
    assert!(secrets_api.get_opt("p-talos").await.unwrap().is_none());

    dynamic(&client, &ns, "cluster.x-k8s.io/v1beta2", "Cluster")
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    wait_config(&client, &ns, "p-0", ConditionType::Ready, "True").await;
    wait_config(&client, &ns, "p-0", ConditionType::Paused, "False").await;
}

#[tokio::test]
async fn a_legacy_bundle_secret_is_reused() {
    let (client, ns, _controller) = setup("bootstrap-legacy").await;
    let bundle = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST).unwrap();
    // What CABPT writes: the bundle under key `bundle`.
    create_bundle_secret(&client, &ns, "legacy", &bundle).await;
    cluster(&client, &ns, "legacy", false).await;
    machine(
        &client,
        &ns,
        "legacy",
        "legacy-0",
        json!({"generateType": "controlplane"}),
        true,
    )
    .await;
    wait_config(&client, &ns, "legacy-0", ConditionType::Ready, "True").await;
    let (_, docs) = secret_value(&client, &ns, "legacy-0-bootstrap-data").await;
    assert_eq!(
        docs[0]["cluster"]["ca"]["crt"],
        json!(bundle.certs.k8s.crt),
        "the existing CA is used"
    );
    assert_eq!(docs[0]["machine"]["token"], json!(bundle.trustdinfo.token));
}

#[tokio::test]
async fn strategic_patches_add_and_delete_and_generate_type_none_patches_given_data() {
    let (client, ns, _controller) = setup("bootstrap-patches").await;
    let (secret, docs) = patches_add_and_delete(&client, &ns).await;
    generate_type_none_patches_given_data(&client, &ns, secret, docs).await;
}

/// Renders a worker's strategic patches: a map entry added, an earlier addition deleted.
async fn patches_add_and_delete(client: &kube::Client, ns: &str) -> (Secret, Vec<Value>) {
    cluster(client, ns, "p", false).await;
    let spec = json!({
        "generateType": "worker", "talosVersion": "v1.13",
        "strategicPatches": [
            "machine:\n  nodeLabels:\n    tier: edge\n  network:\n    nameservers: [\"9.9.9.9\"]\n",
            "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: remote-log\nurl: udp://127.0.0.1:3000/\n",
            "machine:\n  network:\n    $patch: delete\n"
        ]
    });
    machine(client, ns, "p", "p-w", spec, false).await;
    wait_config(client, ns, "p-w", ConditionType::Ready, "True").await;
    let (secret, docs) = secret_value(client, ns, "p-w-bootstrap-data").await;
    assert_eq!(
        docs[0]["machine"]["nodeLabels"]["tier"], "edge",
        "a patch adds a map entry"
    );
    assert!(
        docs[0]["machine"].get("network").is_none(),
        "$patch: delete removes what an earlier patch added: {:?}",
        docs[0]["machine"]["network"]
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "KmsgLogConfig" && d["name"] == "remote-log"),
        "a patch adds a document"
    );
    talosctl_validate(&docs);
    (secret, docs)
}

/// A generateType none config gets the given data with its patches applied, nothing else.
async fn generate_type_none_patches_given_data(
    client: &kube::Client,
    ns: &str,
    secret: Secret,
    docs: Vec<Value>,
) {
    // generateType none: the given data, with the patches applied to it.
    let given = String::from_utf8(secret.data.unwrap()["value"].0.clone()).unwrap();
    machine(
        client,
        ns,
        "p",
        "p-none",
        json!({
            "generateType": "none", "data": given,
            "configPatches": [{"op": "add", "path": "/machine/nodeLabels/pool", "value": "given"}]
        }),
        false,
    )
    .await;
    // As in Talos, a JSON 6902 patch cannot apply to a multi-document configuration.
    wait_config_where(
        client,
        ns,
        "p-none",
        ConditionType::DataSecretAvailable,
        "False",
        |c| {
            c.reason == "PatchFailed"
                && c.message
                    .contains("JSON6902 patches are not supported for multi-document")
        },
    )
    .await;
    dynamic(
        client,
        ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    )
    .patch(
        "p-none",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "configPatches": null,
            "strategicPatches": ["machine:\n  nodeLabels:\n    pool: given\n"]
        }})),
    )
    .await
    .unwrap();
    wait_config(client, ns, "p-none", ConditionType::Ready, "True").await;
    let (_, none_docs) = secret_value(client, ns, "p-none-bootstrap-data").await;
    let mut expected = docs.clone();
    expected[0]["machine"]["nodeLabels"]["pool"] = json!("given");
    assert_eq!(
        none_docs, expected,
        "nothing but the patch changes the given data"
    );
}

#[tokio::test]
async fn a_machine_pool_gets_its_data_only_with_machine_pools_on() {
    for enabled in [false, true] {
        let (client, ns, _controller) = setup_with(
            "bootstrap-pool",
            Options {
                machine_pools: enabled,
                ..Options::default()
            },
        )
        .await;
        config_owned_by_a_machine_pool(&client, &ns).await;
        pool_data_only_when_enabled(&client, &ns, enabled).await;
    }
}

/// Creates a TalosConfig and a MachinePool made its owner, as Cluster API does.
async fn config_owned_by_a_machine_pool(client: &kube::Client, ns: &str) {
    cluster(client, ns, "mp", false).await;
    apply(
        client,
        ns,
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": "mp-0", "labels": {"cluster.x-k8s.io/cluster-name": "mp"}},
            "spec": {"generateType": "worker", "talosVersion": "v1.13"}
        }),
    )
    .await;
    let pools = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "MachinePool");
    let pool: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachinePool",
            "metadata": {"name": "mp"},
            "spec": {
                "clusterName": "mp", "replicas": 2,
                "template": {"spec": {
                    "clusterName": "mp", "version": "v1.34.2",
                    "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "mp-0"}},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": "mp"}
                }}
            }
        }))
        .unwrap();
    let pool = pools.create(&PostParams::default(), &pool).await.unwrap();
    // Cluster API's MachinePool controller makes the pool the config's owner.
    dynamic(
        client,
        ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    )
    .patch(
        "mp-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": [{
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachinePool",
            "name": "mp", "uid": pool.metadata.uid, "controller": true
        }]}})),
    )
    .await
    .unwrap();
}

/// With machine pools on the config gets its data; without, it waits and names the flag.
async fn pool_data_only_when_enabled(client: &kube::Client, ns: &str, enabled: bool) {
    if enabled {
        let config = wait_config(client, ns, "mp-0", ConditionType::Ready, "True").await;
        assert_eq!(
            config.status.unwrap().data_secret_name.as_deref(),
            Some("mp-bootstrap-data")
        );
        let (_, docs) = secret_value(client, ns, "mp-bootstrap-data").await;
        // The pool template's Kubernetes version (a worker config has no apiServer).
        assert_eq!(
            docs[0]["machine"]["kubelet"]["image"]
                .as_str()
                .and_then(|i| i.rsplit(':').next()),
            Some("v1.34.2")
        );
    } else {
        // Without the flag the config waits and says which flag serves it.
        wait_config_where(
            client,
            ns,
            "mp-0",
            ConditionType::DataSecretAvailable,
            "False",
            |c| c.reason == "WaitingForOwner" && c.message.contains("--machine-pools"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_bundle_that_cannot_be_stored_is_reported_and_stored_once_it_can() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let (client, ns, _controller) = setup("bootstrap-quota").await;
    // A quota of no Secrets makes the API server refuse every Secret created in the namespace
    // (its status is written here: no quota controller runs).
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-secrets"},
        "spec": {"hard": {"count/secrets": "0"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    quotas
        .patch_status(
            "no-secrets",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "hard": {"count/secrets": "0"}, "used": {"count/secrets": "0"}
            }})),
        )
        .await
        .unwrap();
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Admission sees a new quota after a moment: until a probe is refused.
    let probe: Secret = serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap();
    testkit::eventually("the quota taking effect", WAIT, async || match secrets_api
        .create(&PostParams::default(), &probe)
        .await
    {
        Ok(_) => {
            secrets_api
                .delete("probe", &Default::default())
                .await
                .unwrap();
            None
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Some(()),
        Err(e) => panic!("{e}"),
    })
    .await;
    cluster(&client, &ns, "q", false).await;
    machine(
        &client,
        &ns,
        "q",
        "q-0",
        json!({"generateType": "controlplane"}),
        true,
    )
    .await;
    let refused = wait_reason(
        &client,
        &ns,
        "q-0",
        ConditionType::DataSecretAvailable,
        conditions::reason::INTERNAL_ERROR,
    )
    .await;
    assert!(
        refused
            .message
            .contains("the secrets bundle of cluster q: creating Secret q-talos"),
        "{}",
        refused.message
    );
    assert!(secrets_api.get_opt("q-talos").await.unwrap().is_none());

    // Once Secrets can be created, the next attempt stores the bundle and the data.
    quotas
        .delete("no-secrets", &Default::default())
        .await
        .unwrap();
    wait_config(&client, &ns, "q-0", ConditionType::Ready, "True").await;
    assert!(secrets_api.get_opt("q-talos").await.unwrap().is_some());
}

/// An edit reaches a machine's bootstrap data while the machine has not booted (infrastructure
/// not provisioned, no Node). Once it has booted, the data stays what the machine booted with and
/// the TalosConfig says that its spec now renders differently (CABPT ignored such edits
/// silently, its issue #25).
#[tokio::test]
async fn an_edit_is_rendered_again_before_boot_and_only_reported_after() {
    let (client, ns, _controller) = setup("bootstrap-edit").await;
    let first = first_render(&client, &ns).await;

    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), &ns);
    let install_on = async |disk: &str| {
        let patch = format!("machine:\n  install:\n    disk: {disk}\n");
        configs
            .patch(
                "e-0",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"strategicPatches": [patch]}})),
            )
            .await
            .unwrap();
    };
    let disk = async || {
        let (secret, docs) = secret_value(&client, &ns, "e-0-bootstrap-data").await;
        let disk = docs[0]["machine"]["install"]["disk"]
            .as_str()
            .map(str::to_owned);
        (secret, docs, disk)
    };

    let rendered = rendered_again_before_boot(&client, &ns, &install_on, &disk, &first).await;
    boot(&client, &ns).await;
    an_edit_after_boot_is_only_reported(&client, &ns, &install_on, &disk, rendered).await;
}

/// Renders a worker's data, without an install disk.
async fn first_render(client: &kube::Client, ns: &str) -> Secret {
    cluster(client, ns, "edit", false).await;
    let spec = json!({"generateType": "worker", "talosVersion": "v1.13"});
    machine(client, ns, "edit", "e-0", spec, false).await;
    wait_config(client, ns, "e-0", ConditionType::Ready, "True").await;
    let (first, docs) = secret_value(client, ns, "e-0-bootstrap-data").await;
    assert!(docs[0]["machine"]["install"]["disk"].is_null(), "{docs:?}");
    first
}

/// Before boot, an edit renders the Secret again, updated in place.
async fn rendered_again_before_boot(
    client: &kube::Client,
    ns: &str,
    install_on: &impl AsyncFn(&str),
    disk: &impl AsyncFn() -> (Secret, Vec<Value>, Option<String>),
    first: &Secret,
) -> (Secret, Vec<Value>) {
    // Not booted: the Secret is rendered again.
    install_on("/dev/vdb").await;
    let rendered = testkit::eventually(
        "the edit rendered into the Secret before boot",
        WAIT,
        async || {
            let (secret, docs, on) = disk().await;
            (on.as_deref() == Some("/dev/vdb")).then_some((secret, docs))
        },
    )
    .await;
    assert_ne!(
        rendered.0.metadata.resource_version,
        first.metadata.resource_version
    );
    assert_eq!(
        rendered.0.metadata.uid, first.metadata.uid,
        "updated, not recreated"
    );
    talosctl_validate(&rendered.1);
    wait_config(client, ns, "e-0", ConditionType::ConfigUpToDate, "True").await;
    rendered
}

/// Marks the machine's infrastructure provisioned and waits for Cluster API to see it booted.
async fn boot(client: &kube::Client, ns: &str) {
    // Booted: Cluster API sees the machine's infrastructure provisioned.
    dynamic(
        client,
        ns,
        "infrastructure.cluster.x-k8s.io/v1alpha1",
        "SimMachine",
    )
    .patch(
        "e-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"providerID": "sim://e-0"}})),
    )
    .await
    .unwrap();
    testkit::infra::mark_provisioned(client, ns, "SimMachine", "e-0")
        .await
        .unwrap();
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(machines, "e-0", |m: Option<&Machine>| {
            m.is_some_and(secrets::booted)
        }),
    )
    .await
    .expect("Cluster API marks the machine's infrastructure provisioned")
    .unwrap();
}

/// After boot, an edit is reported and the data the machine booted with is kept.
async fn an_edit_after_boot_is_only_reported(
    client: &kube::Client,
    ns: &str,
    install_on: &impl AsyncFn(&str),
    disk: &impl AsyncFn() -> (Secret, Vec<Value>, Option<String>),
    rendered: (Secret, Vec<Value>),
) {
    install_on("/dev/vdc").await;
    let differs = wait_reason(
        client,
        ns,
        "e-0",
        ConditionType::ConfigUpToDate,
        conditions::reason::RUNNING_CONFIG_DIFFERS,
    )
    .await;
    let message = &differs.message;
    assert!(message.contains("machine e-0"), "{message}");
    wait_warning(client, ns, "e-0", "RunningConfigDiffers", |_| true).await;
    let (now, _, on) = disk().await;
    assert_eq!(
        on.as_deref(),
        Some("/dev/vdb"),
        "the booted machine's data is kept"
    );
    assert_eq!(
        now.metadata.resource_version,
        rendered.0.metadata.resource_version
    );
}

/// Clusters never share secrets: two clusters of one namespace, and a cluster of the same name
/// in another namespace, each get their own bundle, CA and token, and each machine's data
/// carries its own cluster's.
#[tokio::test]
async fn each_cluster_gets_its_own_bundle_even_under_the_same_name_elsewhere() {
    let (client, ns, _controller) = setup("bootstrap-apart").await;
    let other = testkit::unique_namespace(&client, "bootstrap-apart")
        .await
        .unwrap();
    let _other_controller = start_controller(&client, &other);
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    let placed = [(&ns, "one"), (&ns, "two"), (&other, "one")];
    for (namespace, name) in placed {
        cluster(&client, namespace, name, false).await;
        machine(
            &client,
            namespace,
            name,
            &format!("{name}-0"),
            spec.clone(),
            true,
        )
        .await;
    }
    let mut seen = Vec::new();
    for (namespace, name) in placed {
        let machine = format!("{name}-0");
        wait_config(&client, namespace, &machine, ConditionType::Ready, "True").await;
        let (_, docs) =
            secret_value(&client, namespace, &format!("{machine}-bootstrap-data")).await;
        let ca: Secret = Api::namespaced(client.clone(), namespace)
            .get(&format!("{name}-ca"))
            .await
            .unwrap();
        // A ByteString serializes as base64, as the machine config carries certificates.
        let crt = serde_json::to_value(&ca.data.unwrap()["tls.crt"]).unwrap();
        let d = &docs[0];
        assert_eq!(
            d["cluster"]["ca"]["crt"], crt,
            "{namespace}/{machine}: its own cluster's CA"
        );
        seen.push((
            format!("{namespace}/{name}"),
            [
                d["cluster"]["ca"]["crt"].clone(),
                d["machine"]["ca"]["crt"].clone(),
                d["machine"]["token"].clone(),
                d["cluster"]["token"].clone(),
                d["cluster"]["secretboxEncryptionSecret"].clone(),
            ],
        ));
    }
    for (i, (a, ours)) in seen.iter().enumerate() {
        for (b, theirs) in &seen[i + 1..] {
            for (x, y) in ours.iter().zip(theirs) {
                assert!(x.is_string(), "{a}: {x}");
                assert_ne!(x, y, "{a} and {b} share a secret");
            }
        }
    }
}

/// A TalosConfig moved to Talos v1.14 with a patch written for v1.13: its configuration is
/// rendered (the v1.14 documents, the patch merged as Talos merges it), Ready, and
/// ConfigFieldsCurrent False names the field and the document that replaced it; without such a
/// patch it is True; before v1.14 it is not set.
#[tokio::test]
async fn a_v1_14_config_whose_patch_sets_a_moved_field_says_so_and_renders() {
    let (client, ns, _controller) = setup("bootstrap-moved").await;
    cluster(&client, &ns, "moved", false).await;
    let patch =
        "machine:\n  kubelet:\n    extraArgs:\n      rotate-server-certificates: \"true\"\n";
    for (name, spec) in [
        (
            "moved-0",
            json!({"generateType": "worker", "talosVersion": "v1.14", "strategicPatches": [patch]}),
        ),
        (
            "moved-1",
            json!({"generateType": "worker", "talosVersion": "v1.14"}),
        ),
        (
            "moved-2",
            json!({"generateType": "worker", "talosVersion": "v1.13", "strategicPatches": [patch]}),
        ),
    ] {
        machine(&client, &ns, "moved", name, spec, false).await;
    }
    let config = wait_config_where(
        &client,
        &ns,
        "moved-0",
        ConditionType::ConfigFieldsCurrent,
        "False",
        |c| c.reason == "FieldsMoved",
    )
    .await;
    let condition = config_condition(&config, ConditionType::ConfigFieldsCurrent).unwrap();
    assert_eq!(
        condition.message,
        "spec.strategicPatches[0] sets .machine.kubelet, which Talos v1.14 moved to the KubeletConfig document"
    );
    wait_config(&client, &ns, "moved-0", ConditionType::Ready, "True").await;
    let (_, docs) = secret_value(&client, &ns, "moved-0-bootstrap-data").await;
    assert!(
        docs.iter().any(|d| d["kind"] == "KubeletConfig"),
        "{docs:?}"
    );
    assert_eq!(
        docs[0]["machine"]["kubelet"]["extraArgs"]["rotate-server-certificates"],
        "true"
    );
    wait_config_where(
        &client,
        &ns,
        "moved-1",
        ConditionType::ConfigFieldsCurrent,
        "True",
        |c| c.reason == "FieldsCurrent",
    )
    .await;
    let v113 = wait_config(&client, &ns, "moved-2", ConditionType::Ready, "True").await;
    assert!(
        config_condition(&v113, ConditionType::ConfigFieldsCurrent).is_none(),
        "{:?}",
        v113.status
    );
    // Moved back to the v1.13 contract, moved-0 has nothing to say of the fields any more.
    let configs: Api<TalosConfig> = Api::namespaced(client.clone(), &ns);
    configs
        .patch(
            "moved-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"talosVersion": "v1.13"}})),
        )
        .await
        .unwrap();
    testkit::eventually("moved-0 without ConfigFieldsCurrent", WAIT, async || {
        let config = configs.get("moved-0").await.ok()?;
        config_condition(&config, ConditionType::ConfigFieldsCurrent)
            .is_none()
            .then_some(())
    })
    .await;
}
