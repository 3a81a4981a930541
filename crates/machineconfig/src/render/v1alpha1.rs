//! Contracts v1.10 to v1.13: everything in the v1alpha1 document, plus (v1.12 on) a
//! HostnameConfig document, as `talosctl gen config` v1.13.0 writes them.

use serde_json::{Map, Value, json};

use super::{Endpoint, Input, MachineType, hostname_document, pod_security_configuration};
use crate::secrets::SecretsBundle;

/// Contract gates, as talosctl v1.13 applies them.
#[derive(Clone, Copy)]
struct Gates {
    /// Greater(1.11): HostnameConfig, no RBAC/PSP/key-usage switches, grubUseUKICmdline.
    v112: bool,
    /// Greater(1.12): no empty `machine.network`.
    v113: bool,
    cp: bool,
}

pub(super) fn render(
    machine_type: MachineType,
    input: &Input,
    endpoint: &Endpoint,
    bundle: &SecretsBundle,
) -> Vec<Value> {
    let g = Gates {
        v112: input.contract.at_least(1, 12),
        v113: input.contract.at_least(1, 13),
        cp: machine_type == MachineType::Controlplane,
    };
    let mut docs = vec![json!({
        "version": "v1alpha1",
        "debug": false,
        "persist": true,
        "machine": Value::Object(machine(machine_type, input, bundle, g)),
        "cluster": Value::Object(cluster(input, endpoint, bundle, g)),
    })];
    if g.v112 {
        docs.push(hostname_document(input.hostname.as_deref()));
    }
    docs
}

fn machine(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
    g: Gates,
) -> Map<String, Value> {
    let k8s = input.kubernetes_version();
    let mut machine = Map::new();
    machine.insert("type".into(), json!(machine_type.as_str()));
    machine.insert("token".into(), json!(bundle.trustdinfo.token));
    machine.insert(
        "ca".into(),
        ca(
            &bundle.certs.os.crt,
            g.cp.then_some(bundle.certs.os.key.as_str()),
        ),
    );
    machine.insert("certSANs".into(), json!([]));
    machine.insert(
        "kubelet".into(),
        json!({
            "image": format!("ghcr.io/siderolabs/kubelet:v{k8s}"),
            "defaultRuntimeSeccompProfileEnabled": true,
            "disableManifestsDirectory": true,
        }),
    );
    if !g.v113 {
        machine.insert("network".into(), json!({}));
    }
    machine.insert("install".into(), install(input, g));
    if !(g.v112 && g.cp) {
        machine.insert("registries".into(), json!({}));
    }
    machine.insert("features".into(), features(g));
    if g.cp {
        machine.insert(
            "nodeLabels".into(),
            json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
        );
    }
    if let (Some(hostname), false) = (&input.hostname, g.v112) {
        machine
            .entry("network")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|n| n.insert("hostname".into(), json!(hostname)));
    }
    machine
}

/// `machine.install`; an empty disk or image means "not set" (as CABPT renders for cloud
/// platforms): the key is left out.
fn install(input: &Input, g: Gates) -> Value {
    let mut install = json!({"wipe": false});
    if !input.install_disk.is_empty() {
        install["disk"] = json!(input.install_disk);
    }
    if !input.install_image.is_empty() {
        install["image"] = json!(input.install_image);
    }
    if g.v112 {
        install["grubUseUKICmdline"] = json!(true);
    }
    install
}

fn features(g: Gates) -> Value {
    let mut features = Map::new();
    if !g.v112 {
        features.insert("rbac".into(), json!(true));
        features.insert("stableHostname".into(), json!(true));
        features.insert("apidCheckExtKeyUsage".into(), json!(true));
    }
    features.insert("diskQuotaSupport".into(), json!(true));
    features.insert("kubePrism".into(), json!({"enabled": true, "port": 7445}));
    features.insert(
        "hostDNS".into(),
        json!({"enabled": true, "forwardKubeDNSToHost": true}),
    );
    Value::Object(features)
}

fn cluster(
    input: &Input,
    endpoint: &Endpoint,
    bundle: &SecretsBundle,
    g: Gates,
) -> Map<String, Value> {
    let mut cluster = Map::new();
    cluster.insert("id".into(), json!(bundle.cluster.id));
    cluster.insert("secret".into(), json!(bundle.cluster.secret));
    cluster.insert("controlPlane".into(), json!({"endpoint": input.endpoint}));
    cluster.insert("clusterName".into(), json!(input.cluster_name));
    cluster.insert(
        "network".into(),
        json!({
            "dnsDomain": input.dns_domain,
            "podSubnets": input.pod_subnets,
            "serviceSubnets": input.service_subnets,
        }),
    );
    cluster.insert("token".into(), json!(bundle.secrets.bootstraptoken));
    if g.cp {
        let (field, secret) = bundle.encryption_secret();
        cluster.insert(field.into(), json!(secret));
    }
    cluster.insert(
        "ca".into(),
        ca(
            &bundle.certs.k8s.crt,
            g.cp.then_some(bundle.certs.k8s.key.as_str()),
        ),
    );
    if g.cp {
        control_plane_components(&mut cluster, input, endpoint, bundle, g);
    }
    cluster.insert(
        "discovery".into(),
        json!({"enabled": true, "registries": {"kubernetes": {"disabled": true}, "service": {}}}),
    );
    if g.cp {
        cluster.insert(
            "etcd".into(),
            json!({"ca": {"crt": bundle.certs.etcd.crt, "key": bundle.certs.etcd.key}}),
        );
        cluster.insert("extraManifests".into(), json!([]));
        cluster.insert("inlineManifests".into(), json!([]));
    }
    cluster
}

/// The control plane's CAs, service-account key and static pods.
fn control_plane_components(
    cluster: &mut Map<String, Value>,
    input: &Input,
    endpoint: &Endpoint,
    bundle: &SecretsBundle,
    g: Gates,
) {
    let k8s = input.kubernetes_version();
    cluster.insert(
        "aggregatorCA".into(),
        json!({"crt": bundle.certs.k8saggregator.crt, "key": bundle.certs.k8saggregator.key}),
    );
    cluster.insert(
        "serviceAccount".into(),
        json!({"key": bundle.certs.k8sserviceaccount.key}),
    );
    let mut api_server = Map::new();
    api_server.insert(
        "image".into(),
        json!(format!("registry.k8s.io/kube-apiserver:v{k8s}")),
    );
    if !g.v112 {
        api_server.insert("certSANs".into(), json!([endpoint.host]));
        api_server.insert("disablePodSecurityPolicy".into(), json!(true));
    }
    api_server.insert(
        "admissionControl".into(),
        json!([{"name": "PodSecurity", "configuration": pod_security_configuration()}]),
    );
    api_server.insert("auditPolicy".into(), super::audit_policy());
    cluster.insert("apiServer".into(), Value::Object(api_server));
    for (field, image) in [
        ("controllerManager", "kube-controller-manager"),
        ("proxy", "kube-proxy"),
        ("scheduler", "kube-scheduler"),
    ] {
        cluster.insert(
            field.into(),
            json!({"image": format!("registry.k8s.io/{image}:v{k8s}")}),
        );
    }
}

/// `{crt, key}`; workers get an empty key, as talosctl writes it.
fn ca(crt: &str, key: Option<&str>) -> Value {
    json!({"crt": crt, "key": key.unwrap_or("")})
}
