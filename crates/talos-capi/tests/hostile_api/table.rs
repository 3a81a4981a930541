//! The table's cases on the API server: each hostile object in its own namespace, with what
//! consumes it (a Machine, a MachineDeployment, a Cluster whose control plane it is), then
//! what came of it checked from the conditions the manager wrote.

use api::conditions::{MESSAGE_LIMIT, reason};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use testkit::secrets_scan::Haystack;
use testkit::unique_namespace;

use super::classes::{CLUSTER, Case, Expect, Kind, SecretCase, SecretKind};
use super::common;
use super::{conditions_of, post, raw_object};

const TALOSCONFIGS: Kind = Kind::TalosConfig;

/// How long a case may take to be reported: generous, as Cluster API and the manager reconcile
/// every case's objects at once on a machine others share.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Where the condition about a hostile object is written.
#[derive(Clone, Debug)]
pub enum On {
    /// On this object (`path` of its collection, `name`).
    Object(String, String),
    /// On the one TalosConfig of the namespace, which Cluster API or the control plane made.
    Clone,
}

/// A hostile object the API server stored, and what must come of it.
#[derive(Clone, Debug)]
pub struct Placed {
    pub what: String,
    pub ns: String,
    pub on: On,
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: &'static str,
    /// Its message is cut to [`MESSAGE_LIMIT`], with the marker.
    pub cut: bool,
    /// Whether bootstrap data may be written in its namespace (the hostile object is a
    /// talosconfig Secret, not the spec).
    pub data_allowed: bool,
    /// Whether a change of its TalosConfig's spec is the tenant's to make (it is not when the
    /// control plane made the TalosConfig).
    pub respec: bool,
}

/// `ns`'s TalosConfig `c-0` on a control-plane Machine of a Cluster `c` (SimMachine and all).
async fn machine_for(client: &kube::Client, ns: &str) {
    common::cluster(client, ns, CLUSTER, false).await;
    let infra = testkit::infra::api_version();
    common::apply(
        client,
        ns,
        json!({"apiVersion": infra, "kind": "SimMachine", "metadata": {"name": "c-0"}, "spec": {}}),
    )
    .await;
    common::apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "c-0", "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
        "spec": {
            "clusterName": CLUSTER, "version": "v1.35.0",
            "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "c-0"}},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": "c-0"}
        }
    }))
    .await;
}

/// A MachineDeployment of one Machine in Cluster `c`, its TalosConfig cloned from the
/// TalosConfigTemplate `c`.
async fn deployment_for(client: &kube::Client, ns: &str) {
    common::cluster(client, ns, CLUSTER, false).await;
    let infra = testkit::infra::api_version();
    common::apply(client, ns, json!({"apiVersion": infra, "kind": "SimMachineTemplate", "metadata": {"name": CLUSTER}, "spec": {"template": {"spec": {}}}})).await;
    common::apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": CLUSTER},
        "spec": {
            "clusterName": CLUSTER, "replicas": 1,
            "selector": {"matchLabels": {"pool": CLUSTER}},
            "template": {
                "metadata": {"labels": {"pool": CLUSTER}},
                "spec": {
                    "clusterName": CLUSTER, "version": "v1.35.0",
                    "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfigTemplate", "name": CLUSTER}},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": CLUSTER}
                }
            }
        }
    }))
    .await;
}

/// A provisioned Cluster `c` whose control plane is the TalosControlPlane `c`.
async fn control_plane_for(client: &kube::Client, ns: &str) {
    let infra = testkit::infra::api_version();
    common::apply(client, ns, json!({"apiVersion": infra, "kind": "SimMachineTemplate", "metadata": {"name": CLUSTER}, "spec": {"template": {"spec": {}}}})).await;
    common::apply(client, ns, json!({"apiVersion": infra, "kind": "SimCluster", "metadata": {"name": CLUSTER}, "spec": {}})).await;
    testkit::infra::mark_provisioned(client, ns, "SimCluster", CLUSTER)
        .await
        .unwrap();
    common::apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "controlPlaneEndpoint": {"host": "192.168.1.100", "port": 6443},
            "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]}, "services": {"cidrBlocks": ["10.96.0.0/12"]}},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": CLUSTER},
            "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "TalosControlPlane", "name": CLUSTER}
        }
    }))
    .await;
}

/// The Secret `name` of cluster `c` holding `text` under `key`.
async fn cluster_secret(client: &kube::Client, ns: &str, name: &str, key: &str, text: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
        "stringData": {key: text}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{ns}/{name}: {e}"));
}

/// A label added to the stored object: every CEL rule of its kind runs again on what it holds.
async fn relabel(client: &kube::Client, path: &str, name: &str, what: &str) {
    let patch = json!({"metadata": {"labels": {"hostile.test/updated": "true"}}});
    let request = kube::core::Request::new(path)
        .patch(name, &Default::default(), &kube::api::Patch::Merge(&patch))
        .unwrap();
    if let Err(e) = client.request_text(request).await {
        panic!("{what}: stored, then refused a label: {e}");
    }
}

/// Create `case` as an object of `kind` in a namespace of its own, with its consumer. `None`
/// when there is nothing more to watch: refused at admission (asserted here), or a
/// TalosControlPlaneTemplate (stored and updatable, asserted here).
pub async fn place(client: &kube::Client, bundle: &str, case: &Case, kind: Kind) -> Option<Placed> {
    let what = case.what(kind);
    let ns = unique_namespace(client, "hostile").await.unwrap();
    let name = if kind == Kind::TalosConfig {
        "c-0"
    } else {
        CLUSTER
    };
    let body = serde_json::to_string(&kind.manifest(name, case.spec.clone())).unwrap();
    let created = post(client, &kind.path(&ns), body).await;
    match (&case.expect, created) {
        (Expect::Refused(limit), Err(e)) => {
            assert!(
                e.contains(limit),
                "{what}: refused without naming {limit}: {e:.600}"
            );
            assert!(e.len() < 4096, "{what}: the refusal echoes the value");
            return None;
        }
        (Expect::Refused(_), Ok(())) => panic!("{what}: admitted"),
        (_, Err(e)) => panic!("{what}: refused: {e:.600}"),
        (_, Ok(())) => {}
    }
    relabel(client, &kind.path(&ns), name, &what).await;
    if kind != Kind::TalosControlPlaneTemplate {
        cluster_secret(client, &ns, "c-talos", "bundle", bundle).await;
    }
    let on = match kind {
        Kind::TalosConfig => {
            machine_for(client, &ns).await;
            On::Object(kind.path(&ns), name.to_owned())
        }
        Kind::TalosConfigTemplate => {
            deployment_for(client, &ns).await;
            On::Clone
        }
        Kind::TalosControlPlane => {
            control_plane_for(client, &ns).await;
            match case.expect {
                Expect::Undecodable => On::Object(kind.path(&ns), name.to_owned()),
                _ => On::Clone,
            }
        }
        Kind::TalosControlPlaneTemplate => return None,
    };
    let (type_, reason, message) = match (&case.expect, &on) {
        (Expect::Undecodable, On::Object(..)) if kind == Kind::TalosControlPlane => (
            "Available",
            reason::INVALID_SPEC,
            "recursion limit exceeded",
        ),
        (Expect::Undecodable, _) => (
            "DataSecretAvailable",
            reason::INVALID_SPEC,
            "recursion limit exceeded",
        ),
        (
            Expect::Reported {
                reason: r,
                message: m,
            },
            _,
        ) => ("DataSecretAvailable", *r, *m),
        (Expect::Refused(_), _) => unreachable!("returned above"),
    };
    Some(Placed {
        what,
        ns,
        on,
        type_,
        reason,
        message,
        cut: case.cut,
        data_allowed: false,
        respec: kind != Kind::TalosControlPlane,
    })
}

/// Create the hostile Secret of `case` in a namespace of its own, with a TalosConfig (or, with
/// `control_plane`, a TalosControlPlane) of the cluster that reads it.
pub async fn place_secret(
    client: &kube::Client,
    bundle: &str,
    case: &SecretCase,
    control_plane: bool,
) -> Placed {
    let ns = unique_namespace(client, "hostile").await.unwrap();
    let consumer = if control_plane {
        Kind::TalosControlPlane
    } else {
        TALOSCONFIGS
    };
    let what = format!(
        "{} {:?} Secret read by a {}",
        case.class,
        case.secret,
        consumer.name()
    );
    match case.secret {
        SecretKind::Bundle => cluster_secret(client, &ns, "c-talos", "bundle", &case.text).await,
        SecretKind::Talosconfig => {
            cluster_secret(client, &ns, "c-talos", "bundle", bundle).await;
            cluster_secret(client, &ns, "c-talosconfig", "talosconfig", &case.text).await;
        }
    }
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    let name = if control_plane { CLUSTER } else { "c-0" };
    let body = serde_json::to_string(&consumer.manifest(name, spec)).unwrap();
    post(client, &consumer.path(&ns), body).await.unwrap();
    let (on, type_) = if control_plane {
        control_plane_for(client, &ns).await;
        (
            On::Object(consumer.path(&ns), name.to_owned()),
            "CertificatesAvailable",
        )
    } else {
        machine_for(client, &ns).await;
        let type_ = match case.secret {
            SecretKind::Bundle => "DataSecretAvailable",
            SecretKind::Talosconfig => "ClientConfigAvailable",
        };
        (On::Object(consumer.path(&ns), name.to_owned()), type_)
    };
    Placed {
        what,
        ns,
        on,
        type_,
        reason: reason::INVALID_SECRET,
        message: case.message,
        cut: false,
        data_allowed: case.secret == SecretKind::Talosconfig,
        respec: !control_plane,
    }
}

/// The path and name of the object `placed` is reported on (waiting for the clone).
async fn watched(client: &kube::Client, placed: &Placed) -> (String, String) {
    match &placed.on {
        On::Object(path, name) => (path.clone(), name.clone()),
        On::Clone => {
            let configs = testkit::dynamic_api(
                client,
                &placed.ns,
                TALOSCONFIGS.api_version(),
                TALOSCONFIGS.name(),
            );
            let owner = Kind::TalosControlPlane.path(&placed.ns);
            let name = testkit::eventually_explained(
                &format!("{}: a TalosConfig", placed.what),
                DEADLINE,
                async || {
                    // The clone a Machine uses: a MachineSet that could not create its Machine
                    // deletes the clone it made for it and makes another.
                    let list = configs.list_metadata(&ListParams::default()).await.ok()?;
                    let used = |c: &kube::api::PartialObjectMeta<kube::api::DynamicObject>| {
                        c.metadata.deletion_timestamp.is_none()
                            && (c.metadata.owner_references.iter().flatten())
                                .any(|o| o.kind == "Machine")
                    };
                    let config = list.items.into_iter().find(used)?;
                    Some(config.metadata.name.unwrap_or_default())
                },
                async || {
                    let said = conditions_of(client, &owner, CLUSTER).await;
                    format!("the TalosControlPlane says {said:#?}")
                },
            )
            .await;
            (TALOSCONFIGS.path(&placed.ns), name)
        }
    }
}

/// Until `name` (in the collection at `path`) has `type_` at `status` for `reason`, its
/// message holding `message`, for a generation of at least `generation`: that condition.
pub async fn wait_condition(
    client: &kube::Client,
    at: (&str, &str),
    expected: (&str, &str, &str, &str),
    generation: i64,
) -> Value {
    match condition(client, at, expected, generation).await {
        Ok(c) => c,
        Err(why) => panic!("{}/{}: {why}", at.0, at.1),
    }
}

/// [`wait_condition`], or why not: the object is gone, or what it said until the deadline.
async fn condition(
    client: &kube::Client,
    (path, name): (&str, &str),
    (type_, status, reason, message): (&str, &str, &str, &str),
    generation: i64,
) -> Result<Value, String> {
    let mut last = Vec::new();
    let found = testkit::poll(DEADLINE, async || {
        last = match conditions_of(client, path, name).await {
            Some(seen) => seen,
            None => return Some(Err("gone".to_owned())),
        };
        let c = last.iter().find(|c| {
            c["type"] == type_
                && c["status"] == status
                && c["reason"] == reason
                && c["observedGeneration"].as_i64() >= Some(generation)
                && c["message"].as_str().is_some_and(|m| m.contains(message))
        })?;
        Some(Ok(c.clone()))
    })
    .await;
    found.unwrap_or_else(|| {
        let seen: Vec<String> = last
            .iter()
            .map(|c| c.to_string().chars().take(600).collect())
            .collect();
        Err(format!(
            "no {type_} {status} {reason} ({message}); seen: {seen:#?}"
        ))
    })
}

/// What came of `placed`: its condition and Warning Event, and no bootstrap data. Returns the
/// object the condition is on. A clone that Cluster API replaces is looked for again.
pub async fn check(client: &kube::Client, placed: &Placed) -> (String, String) {
    let expected = (placed.type_, "False", placed.reason, placed.message);
    let mut tries = 0;
    let (path, name, condition) = loop {
        let (path, name) = watched(client, placed).await;
        match condition(client, (&path, &name), expected, 1).await {
            Ok(c) => break (path, name, c),
            Err(why) if why == "gone" && tries < 3 => tries += 1,
            Err(why) => panic!("{}: {path}/{name}: {why}", placed.what),
        }
    };
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.len() <= MESSAGE_LIMIT,
        "{}: {} bytes",
        placed.what,
        message.len()
    );
    if placed.cut {
        assert!(
            message.ends_with(" more bytes]"),
            "{}: {message:.200}",
            placed.what
        );
    }
    common::wait_warning(client, &placed.ns, &name, placed.reason, |m| {
        m.contains(placed.message)
    })
    .await;
    if !placed.data_allowed {
        no_bootstrap_data(client, placed).await;
    }
    (path, name)
}

/// No bootstrap data Secret in `placed`'s namespace.
pub async fn no_bootstrap_data(client: &kube::Client, placed: &Placed) {
    let secrets = Api::<Secret>::namespaced(client.clone(), &placed.ns)
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    let data: Vec<String> = secrets
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.ends_with("-bootstrap-data"))
        .collect();
    assert!(data.is_empty(), "{}: bootstrap data {data:?}", placed.what);
}

/// Change the spec of the TalosConfig `name` (where its hostname comes from): the manager
/// renders it again and must report it again, for the new generation.
pub async fn respec(client: &kube::Client, placed: &Placed, (path, name): (&str, &str)) {
    // A clone is looked up again: its MachineSet may have made another since.
    let (path, name) = match placed.on {
        On::Clone => watched(client, placed).await,
        On::Object(..) => (path.to_owned(), name.to_owned()),
    };
    let (path, name) = (path.as_str(), name.as_str());
    let patch = json!({"spec": {"hostname": {"source": "MachineName"}}});
    let request = kube::core::Request::new(path)
        .patch(name, &Default::default(), &kube::api::Patch::Merge(&patch))
        .unwrap();
    let text = client
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("{}: a spec change refused: {e}", placed.what));
    let generation = raw_object(&text).metadata.generation.unwrap_or_default();
    let expected = (placed.type_, "False", placed.reason, placed.message);
    wait_condition(client, (path, name), expected, generation).await;
}

/// The Events of `ns` and the status of `(path, name)`, for the secrets scan.
pub async fn haystacks(
    client: &kube::Client,
    ns: &str,
    (path, name): (&str, &str),
) -> Vec<Haystack> {
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let status = conditions_of(client, path, name).await;
    vec![
        Haystack {
            name: format!("Events of {ns}"),
            text: serde_json::to_string(&events.items).unwrap(),
        },
        Haystack {
            name: format!("conditions of {path}/{name}"),
            text: serde_json::to_string(&status).unwrap(),
        },
    ]
}
