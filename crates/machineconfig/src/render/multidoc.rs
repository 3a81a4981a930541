//! Contract v1.14 on: the Kubernetes, discovery, install and resolver settings leave the
//! v1alpha1 document for documents of their own, as `talosctl gen config` v1.14.1 writes them
//! (`generate/init.go`, `worker.go` and `kubernetes.go` of Talos's machinery). Certificates in
//! these documents are PEM text, not base64 as in v1alpha1.

use serde_json::{Map, Value, json};

use super::{Input, MachineType, hostname_document, pod_security_configuration};
use crate::Error;
use crate::secrets::{SecretsBundle, decode_pem};

/// Where the discovery service is, as Talos's `DefaultDiscoveryServiceEndpoint` spells it.
const DISCOVERY_ENDPOINT: &str = "https://discovery.talos.dev/";

pub(super) fn render(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
) -> Result<Vec<Value>, Error> {
    let cp = machine_type == MachineType::Controlplane;
    let mut docs = vec![v1alpha1(machine_type, bundle)];
    docs.push(doc(
        "DiscoveryServiceConfig",
        json!({"name": "default", "endpoint": DISCOVERY_ENDPOINT}),
    ));
    docs.push(doc(
        "DiscoveryIdentityConfig",
        json!({"clusterID": bundle.cluster.id, "clusterSecret": bundle.cluster.secret}),
    ));
    // Talos writes no install document without a disk, even when an image is given.
    if !input.install_disk.is_empty() {
        docs.push(unattended_install(input));
    }
    docs.push(doc(
        "ResolverConfig",
        json!({"hostDNS": {"enabled": true, "forwardKubeDNSToHost": true}}),
    ));
    docs.push(doc(
        "VolumeConfig",
        json!({"name": "EPHEMERAL", "mount": {"secure": true}}),
    ));
    docs.push(doc("FilesystemTrimConfig", json!({"interval": "168h0m0s"})));
    docs.push(doc(
        "SecurityProfileConfig",
        json!({"workloadIsolation": true}),
    ));
    docs.push(hostname_document(input.hostname.as_deref()));
    docs.extend(kubernetes_universal(cp, input, bundle)?);
    if cp {
        docs.extend(kubernetes_control_plane(input, bundle)?);
    }
    Ok(docs)
}

/// A multi-document of `kind` with the fields of `body`.
fn doc(kind: &str, body: Value) -> Value {
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!("v1alpha1"));
    doc.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = body {
        doc.extend(fields);
    }
    Value::Object(doc)
}

/// What is left of v1alpha1: the machine's identity and trust, the bootstrap token, etcd's CA.
fn v1alpha1(machine_type: MachineType, bundle: &SecretsBundle) -> Value {
    let cp = machine_type == MachineType::Controlplane;
    let os_key = if cp { bundle.certs.os.key.as_str() } else { "" };
    let mut cluster = json!({"token": bundle.secrets.bootstraptoken});
    if cp {
        cluster["etcd"] =
            json!({"ca": {"crt": bundle.certs.etcd.crt, "key": bundle.certs.etcd.key}});
    }
    json!({
        "version": "v1alpha1",
        "debug": false,
        "persist": true,
        "machine": {
            "type": machine_type.as_str(),
            "token": bundle.trustdinfo.token,
            "ca": {"crt": bundle.certs.os.crt, "key": os_key},
            "certSANs": [],
            "features": {"diskQuotaSupport": true},
        },
        "cluster": cluster,
    })
}

/// UnattendedInstallConfig: the disk becomes a CEL selector, `disk.dev_path == "<disk>"` with
/// Go's `%q` quoting; an empty image leaves `installer` empty.
fn unattended_install(input: &Input) -> Value {
    let installer = if input.install_image.is_empty() {
        json!({})
    } else {
        json!({"image": input.install_image})
    };
    doc(
        "UnattendedInstallConfig",
        json!({
            "installer": installer,
            "provisioning": {
                "diskSelector": {"match": format!("disk.dev_path == {}", go_quote(&input.install_disk))},
                "wipe": false,
            },
        }),
    )
}

/// The documents every machine gets: cluster, node, kubelet, network, the API server's CA
/// and KubePrism.
fn kubernetes_universal(
    cp: bool,
    input: &Input,
    bundle: &SecretsBundle,
) -> Result<Vec<Value>, Error> {
    let k8s = input.kubernetes_version();
    let mut node = json!({"nodeIP": {}});
    if cp {
        node["labels"] = json!({
            "node-role.kubernetes.io/control-plane": "",
            "node.kubernetes.io/exclude-from-external-load-balancers": "",
        });
        node["taints"] = json!({"node-role.kubernetes.io/control-plane": "NoSchedule"});
    }
    let ca = if cp {
        json!({"issuingCA": issuing("certs.k8s", &bundle.certs.k8s.crt, &bundle.certs.k8s.key)?})
    } else {
        json!({"acceptedCAs": [pem("certs.k8s.crt", &bundle.certs.k8s.crt)?]})
    };
    Ok(vec![
        doc(
            "KubeClusterConfig",
            json!({"clusterName": input.cluster_name, "endpoint": input.endpoint}),
        ),
        doc("KubeNodeConfig", node),
        doc(
            "KubeletConfig",
            json!({
                "image": format!("ghcr.io/siderolabs/kubelet:v{k8s}"),
                "config": {},
                "defaultRuntimeSeccompProfileEnabled": true,
            }),
        ),
        doc(
            "KubeNetworkConfig",
            json!({
                "dnsDomain": input.dns_domain,
                "podSubnets": input.pod_subnets,
                "serviceSubnets": input.service_subnets,
            }),
        ),
        doc("KubeAPIServerCAConfig", ca),
        doc("KubePrismConfig", json!({"port": 7445})),
    ])
}

/// The control plane's documents, in talosctl's order.
fn kubernetes_control_plane(input: &Input, bundle: &SecretsBundle) -> Result<Vec<Value>, Error> {
    let k8s = input.kubernetes_version();
    let image = |name: &str| format!("registry.k8s.io/{name}:v{k8s}");
    let aggregator = &bundle.certs.k8saggregator;
    Ok(vec![
        doc(
            "KubeAggregatorCAConfig",
            json!({"issuingCA": issuing("certs.k8saggregator", &aggregator.crt, &aggregator.key)?}),
        ),
        doc(
            "KubeAdmissionControlConfig",
            json!({"name": "PodSecurity", "configuration": pod_security_configuration()}),
        ),
        doc(
            "KubeAuditPolicyConfig",
            json!({"configuration": super::audit_policy()}),
        ),
        doc("KubeAuthenticationConfig", authentication()),
        doc(
            "KubeAuthorizerConfig",
            json!({"name": "node", "type": "Node"}),
        ),
        doc(
            "KubeAuthorizerConfig",
            json!({"name": "rbac", "type": "RBAC"}),
        ),
        doc("KubeEtcdEncryptionConfig", etcd_encryption(bundle)),
        doc(
            "KubeServiceAccountConfig",
            json!({"issuer": {
                "privateKey": pem("certs.k8sserviceaccount.key", &bundle.certs.k8sserviceaccount.key)?,
                "issuerURL": input.endpoint,
            }}),
        ),
        doc(
            "KubeAPIServerConfig",
            json!({"image": image("kube-apiserver")}),
        ),
        doc(
            "KubeControllerManagerConfig",
            json!({"image": image("kube-controller-manager")}),
        ),
        doc(
            "KubeSchedulerConfig",
            json!({"image": image("kube-scheduler"), "config": {}}),
        ),
        doc(
            "KubeProxyConfig",
            json!({"image": image("kube-proxy"), "config": {}}),
        ),
        doc(
            "KubeFlannelCNIConfig",
            json!({"backendType": "vxlan", "backendPort": 4789}),
        ),
        doc("KubeCoreDNSConfig", json!({"enabled": true})),
    ])
}

fn authentication() -> Value {
    json!({"configuration": {
        "anonymous": {
            "conditions": [{"path": "/livez"}, {"path": "/readyz"}, {"path": "/healthz"}],
            "enabled": true,
        },
        "jwt": [],
    }})
}

/// Talos keeps the provider names and order of its legacy path, so that a cluster whose
/// configuration moves to the v1.14 contract still decrypts its Secrets: the secretbox key as
/// `key2`, then an older bundle's aescbc secret as `key1`, also under `secretbox` (as Talos
/// v1.14.1 writes it).
fn etcd_encryption(bundle: &SecretsBundle) -> Value {
    let secrets = &bundle.secrets;
    let providers: Vec<Value> = [
        ("key2", &secrets.secretboxencryptionsecret),
        ("key1", &secrets.aescbcencryptionsecret),
    ]
    .into_iter()
    .filter_map(|(name, secret)| {
        secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| (name, s))
    })
    .map(|(name, secret)| json!({"secretbox": {"keys": [{"name": name, "secret": secret}]}}))
    .collect();
    json!({"config": {"resources": [{"providers": providers, "resources": ["secrets"]}]}})
}

/// `{cert, key}` as PEM text.
fn issuing(field: &str, crt: &str, key: &str) -> Result<Value, Error> {
    Ok(json!({
        "cert": pem(&format!("{field}.crt"), crt)?,
        "key": pem(&format!("{field}.key"), key)?,
    }))
}

/// A bundle field (base64 PEM) as the PEM text the multi-documents carry; an unreadable field
/// is refused by name, never quoted.
fn pem(field: &str, b64: &str) -> Result<String, Error> {
    decode_pem(b64).map_err(|source| Error::BundleField {
        field: field.to_owned(),
        source,
    })
}

/// Go's `strconv.Quote`: double quotes, with `"`, `\` and control characters escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(machine_type: MachineType) -> Vec<String> {
        let bundle = SecretsBundle::generate(crate::Contract::NEWEST).unwrap();
        let input = Input::for_contract("demo", "https://10.0.0.1:6443", crate::Contract::NEWEST);
        super::super::render(machine_type, &input, &bundle)
            .unwrap()
            .iter()
            .map(|d| {
                d.get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("v1alpha1")
                    .to_owned()
            })
            .collect()
    }

    /// talosctl v1.14.1's documents, in its order (the oracle test compares their contents).
    #[test]
    fn a_control_plane_gets_29_documents_and_a_worker_the_first_15() {
        let cp = kinds(MachineType::Controlplane);
        assert_eq!(cp.len(), 29, "{cp:?}");
        assert_eq!(
            &cp[..4],
            [
                "v1alpha1",
                "DiscoveryServiceConfig",
                "DiscoveryIdentityConfig",
                "UnattendedInstallConfig"
            ]
        );
        assert_eq!(cp[28], "KubeCoreDNSConfig");
        assert_eq!(kinds(MachineType::Worker), cp[..15]);
    }

    #[test]
    fn disks_are_quoted_as_go_quotes_them() {
        assert_eq!(go_quote("/dev/sda"), r#""/dev/sda""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("x\ny\u{1}"), r#""x\ny\x01""#);
        assert_eq!(go_quote("/dev/disk/by-id/ä"), "\"/dev/disk/by-id/ä\"");
    }

    #[test]
    fn an_older_bundle_keeps_its_aescbc_key_under_secretbox_as_key1() {
        let mut bundle = SecretsBundle::generate(crate::Contract::NEWEST).unwrap();
        bundle.secrets.aescbcencryptionsecret = Some("old".into());
        let providers = etcd_encryption(&bundle)["config"]["resources"][0]["providers"].clone();
        assert_eq!(providers[0]["secretbox"]["keys"][0]["name"], "key2");
        assert_eq!(
            providers[1],
            json!({"secretbox": {"keys": [{"name": "key1", "secret": "old"}]}})
        );
        bundle.secrets.secretboxencryptionsecret = None;
        let providers = etcd_encryption(&bundle)["config"]["resources"][0]["providers"].clone();
        assert_eq!(
            providers,
            json!([{"secretbox": {"keys": [{"name": "key1", "secret": "old"}]}}])
        );
    }
}
