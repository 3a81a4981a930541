//! Talos v1.14's rules for its multi-document configuration (checked against talosctl v1.14.1):
//! a setting given both in the v1alpha1 document and in the document that replaced it is refused
//! (each document's `V1Alpha1ConflictValidate`, which reports its first conflict only), and the
//! rules that span documents (`container/validate.go`).

use serde_json::Value;

use super::{Report, at};
use crate::patch::KINDS_NEW_IN_1_14;

/// How a v1alpha1 field counts as set.
#[derive(Clone, Copy)]
enum Held {
    /// Present and not null (Talos decodes it into a non-nil pointer).
    Present,
    /// A non-empty string, or a non-zero number.
    NonZero,
    /// A non-empty list.
    NonEmptyList,
    /// `true`.
    True,
    /// A non-empty mapping (Talos decodes an empty one as unset).
    NonEmptyMap,
    /// A list holding at least one IP address (Talos's `Resolvers()` skips what does not parse).
    Addresses,
}

/// A document of `kind` conflicts with the v1alpha1 field at `field` when it is `held`.
struct Conflict {
    kind: &'static str,
    field: &'static [&'static str],
    held: Held,
    says: &'static str,
}

const fn present(
    kind: &'static str,
    field: &'static [&'static str],
    says: &'static str,
) -> Conflict {
    Conflict {
        kind,
        field,
        held: Held::Present,
        says,
    }
}

/// In Talos's order per kind: the first that holds is the one reported.
const CONFLICTS: &[Conflict] = &[
    present(
        "UnattendedInstallConfig",
        &["machine", "install"],
        "UnattendedInstallConfig config is incompatible with v1alpha1 config (.machine.install)",
    ),
    present(
        "KubeletConfig",
        &["machine", "kubelet"],
        "kubelet config is already set in v1alpha1 config (.machine.kubelet)",
    ),
    Conflict {
        kind: "KubeClusterConfig",
        field: &["cluster", "clusterName"],
        held: Held::NonZero,
        says: "cluster name is already set in the v1alpha1 config (.cluster.clusterName). Please remove it and use only the new KubeClusterConfig document to avoid conflicts",
    },
    present(
        "KubeClusterConfig",
        &["cluster", "controlPlane", "endpoint"],
        "cluster endpoint is already set in the v1alpha1 config (.cluster.controlPlane.endpoint). Please remove it and use only the new KubeClusterConfig document to avoid conflicts",
    ),
    present(
        "KubeNetworkConfig",
        &["cluster", "network"],
        "cluster network config is already set in the v1alpha1 config (.machine.cluster.network). Please remove it and use only the new KubeNetworkConfig document to avoid conflicts",
    ),
    present(
        "KubeFlannelCNIConfig",
        &["cluster", "network"],
        "cluster network config in v1alpha1 config (.machine.cluster.network) can't be used with KubeFlannelCNIConfig document, please remove it to avoid conflicts",
    ),
    present(
        "KubeAPIServerCAConfig",
        &["cluster", "ca"],
        "kube-apiserver CA is already set in v1alpha1 config (.cluster.ca)",
    ),
    present(
        "KubeAPIServerConfig",
        &["cluster", "apiServer"],
        "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)",
    ),
    Conflict {
        kind: "KubeAPIServerConfig",
        field: &["cluster", "controlPlane", "localAPIServerPort"],
        held: Held::NonZero,
        says: "kube-apiserver API port is already set in v1alpha1 config (.cluster.controlPlane.localAPIServerPort)",
    },
    Conflict {
        kind: "KubeEtcdEncryptionConfig",
        field: &["cluster", "secretboxEncryptionSecret"],
        held: Held::NonZero,
        says: "etcd encryption config is already set in v1alpha1 config",
    },
    Conflict {
        kind: "KubeEtcdEncryptionConfig",
        field: &["cluster", "aescbcEncryptionSecret"],
        held: Held::NonZero,
        says: "etcd encryption config is already set in v1alpha1 config",
    },
    present(
        "KubeNodeConfig",
        &["cluster", "allowSchedulingOnControlPlanes"],
        ".cluster.allowSchedulingOnControlPlanes is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "kubelet", "skipNodeRegistration"],
        ".machine.kubelet.skipNodeRegistration is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "kubelet", "registerWithFQDN"],
        ".machine.kubelet.registerWithFQDN is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "kubelet", "nodeIP"],
        ".machine.kubelet.nodeIP is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "nodeLabels"],
        ".machine.nodeLabels is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "nodeAnnotations"],
        ".machine.nodeAnnotations is already set in v1alpha1 config",
    ),
    present(
        "KubeNodeConfig",
        &["machine", "nodeTaints"],
        ".machine.nodeTaints is already set in v1alpha1 config",
    ),
    Conflict {
        kind: "DiscoveryIdentityConfig",
        field: &["cluster", "id"],
        held: Held::NonZero,
        says: "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config",
    },
    Conflict {
        kind: "DiscoveryIdentityConfig",
        field: &["cluster", "secret"],
        held: Held::NonZero,
        says: "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config",
    },
    present(
        "DiscoveryServiceConfig",
        &["cluster", "discovery"],
        "discovery service is already configured in .cluster.discovery of the v1alpha1 config",
    ),
    present(
        "KubePrismConfig",
        &["machine", "features", "kubePrism"],
        "KubePrism config in v1alpha1 config (.machine.features.kubePrism) can't be used with KubePrismConfig document, please remove it to avoid conflicts",
    ),
    present(
        "KubeServiceAccountConfig",
        &["cluster", "serviceAccount"],
        "service account is already set in v1alpha1 config (.cluster.serviceAccount)",
    ),
    present(
        "KubeAggregatorCAConfig",
        &["cluster", "aggregatorCA"],
        "kube-apiserver aggregator CA is already set in v1alpha1 config (.cluster.aggregatorCA), please remove it and use the new KubeAggregatorCAConfig document instead",
    ),
    present(
        "KubeControllerManagerConfig",
        &["cluster", "controllerManager"],
        "kube-controller-manager config is already set in v1alpha1 config (.cluster.controllerManager)",
    ),
    present(
        "KubeSchedulerConfig",
        &["cluster", "scheduler"],
        "kube-scheduler config is already set in v1alpha1 config (.cluster.scheduler)",
    ),
    present(
        "KubeProxyConfig",
        &["cluster", "proxy"],
        "cluster proxy config in v1alpha1 config (.machine.cluster.proxy) can't be used with KubeProxyConfig document, please remove it to avoid conflicts",
    ),
    present(
        "KubeAuditPolicyConfig",
        &["cluster", "apiServer", "auditPolicy"],
        "audit policy config is already set in v1alpha1 config",
    ),
    Conflict {
        kind: "KubeAdmissionControlConfig",
        field: &["cluster", "apiServer", "admissionControl"],
        held: Held::NonEmptyList,
        says: "admission control plugin config is already set in v1alpha1 config",
    },
    Conflict {
        kind: "KubeAuthorizerConfig",
        field: &["cluster", "apiServer", "admissionControl"],
        held: Held::NonEmptyList,
        says: "admission control plugin config is already set in v1alpha1 config",
    },
    present(
        "KubeCoreDNSConfig",
        &["cluster", "coreDNS"],
        "CoreDNS config is already set in v1alpha1 config (.cluster.coreDNS)",
    ),
    present(
        "ResolverConfig",
        &["machine", "network", "searchDomains"],
        ".machine.network.searchDomains is already set in v1alpha1 config",
    ),
    Conflict {
        kind: "ResolverConfig",
        field: &["machine", "network", "nameservers"],
        held: Held::Addresses,
        says: ".machine.network.nameservers is already set in v1alpha1 config",
    },
    Conflict {
        kind: "ResolverConfig",
        field: &["machine", "network", "disableSearchDomain"],
        held: Held::True,
        says: ".machine.network.disableSearchDomain is already set in v1alpha1 config",
    },
    Conflict {
        kind: "CRIBaseRuntimeSpecConfig",
        field: &["machine", "baseRuntimeSpecOverrides"],
        held: Held::NonEmptyMap,
        says: "base runtime spec overrides are already set in v1alpha1 config",
    },
    // Only when the ResolverConfig sets hostDNS (see `validate`).
    present(
        "ResolverConfig",
        &["machine", "features", "hostDNS"],
        ".machine.features.hostDNS is already set in v1alpha1 config",
    ),
];

/// The v1.14 document that replaced the v1alpha1 field at `path` (or the nearest field above it
/// that was replaced), and that field's path.
pub(crate) fn replacement(path: &[&str]) -> Option<(&'static [&'static str], &'static str)> {
    CONFLICTS
        .iter()
        .rev() // of two documents for one field, the first listed
        .filter(|c| path.starts_with(c.field))
        .max_by_key(|c| c.field.len())
        .map(|c| (c.field, c.kind))
}

/// Kinds Talos allows only on control-plane machines (its `ControlplaneOnlyConfig`).
const CONTROL_PLANE_ONLY: &[&str] = &[
    "KubeAPIServerConfig",
    "KubeAdmissionControlConfig",
    "KubeAggregatorCAConfig",
    "KubeAuditPolicyConfig",
    "KubeAuthenticationConfig",
    "KubeAuthorizerConfig",
    "KubeControllerManagerConfig",
    "KubeCoreDNSConfig",
    "KubeEtcdEncryptionConfig",
    "KubeFlannelCNIConfig",
    "KubeProxyConfig",
    "KubeSchedulerConfig",
    "KubeServiceAccountConfig",
    "KubeTalosAPIAccessConfig",
];

/// The kind of a multi-document, if it is one.
fn kind(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

/// Whether `docs` hold a document of `kind`.
pub(super) fn has(docs: &[Value], kind_: &str) -> bool {
    docs.iter().any(|d| kind(d) == Some(kind_))
}

/// Whether `docs` are written for Talos v1.14 or later: they hold a document kind new in v1.14.
pub(super) fn is_v114(docs: &[Value]) -> bool {
    docs.iter()
        .filter_map(kind)
        .any(|k| KINDS_NEW_IN_1_14.contains(&k))
}

fn held(v1alpha1: &Value, c: &Conflict) -> bool {
    match (at(v1alpha1, c.field), c.held) {
        (None | Some(Value::Null), _) => false,
        (Some(_), Held::Present) => true,
        (Some(Value::String(s)), Held::NonZero) => !s.is_empty(),
        (Some(Value::Number(n)), Held::NonZero) => n.as_f64() != Some(0.0),
        (Some(Value::Array(a)), Held::NonEmptyList) => !a.is_empty(),
        (Some(Value::Bool(b)), Held::True) => *b,
        (Some(Value::Object(m)), Held::NonEmptyMap) => !m.is_empty(),
        (Some(Value::Array(a)), Held::Addresses) => a
            .iter()
            .filter_map(Value::as_str)
            .any(|s| s.parse::<std::net::IpAddr>().is_ok()),
        (Some(_), _) => false,
    }
}

/// Every v1.14 rule that spans documents.
pub(super) fn validate(docs: &[Value], r: &mut Report) {
    let v1alpha1 = docs
        .iter()
        .find(|d| d.is_object() && kind(d).is_none())
        .cloned()
        .unwrap_or(Value::Null);
    for doc in docs {
        let Some(k) = kind(doc) else { continue };
        // A ResolverConfig conflicts with .machine.features.hostDNS only when it sets hostDNS.
        let sets_host_dns = doc.get("hostDNS").is_some_and(|h| !h.is_null());
        if let Some(c) = CONFLICTS.iter().find(|c| {
            c.kind == k
                && held(&v1alpha1, c)
                && (c.field != ["machine", "features", "hostDNS"] || sets_host_dns)
        }) {
            r.error(&c.field.join("."), c.says);
        }
    }
    let control_plane = matches!(
        at(&v1alpha1, &["machine", "type"]).and_then(Value::as_str),
        Some("controlplane" | "init")
    );
    let kube_ca = has(docs, "KubeAPIServerCAConfig");
    if kube_ca
        && !has(docs, "KubeClusterConfig")
        && at(&v1alpha1, &["cluster", "controlPlane", "endpoint"]).is_none()
    {
        r.error(
            "KubeClusterConfig",
            "cluster name and endpoint are required when Kubernetes is configured: either .cluster.clusterName/.cluster.controlPlane.endpoint or the KubeClusterConfig document",
        );
    }
    let legacy_encryption = ["secretboxEncryptionSecret", "aescbcEncryptionSecret"]
        .iter()
        .any(|f| {
            at(&v1alpha1, &["cluster", f])
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        });
    if control_plane && kube_ca && !legacy_encryption && !has(docs, "KubeEtcdEncryptionConfig") {
        r.error(
            "KubeEtcdEncryptionConfig",
            "etcd encryption config is required for control plane machines running kube-apiserver",
        );
    }
    discovery_identity(docs, &v1alpha1, r);
    if !control_plane {
        let mut kinds: Vec<&str> = docs
            .iter()
            .filter_map(kind)
            .filter(|k| CONTROL_PLANE_ONLY.contains(k))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        if !kinds.is_empty() {
            r.error(
                kinds[0],
                format!(
                    "the following document kinds are only allowed on control plane machines: [{}]",
                    kinds.join(" ")
                ),
            );
        }
    }
}

/// The discovery service needs the cluster's identity, from either place.
fn discovery_identity(docs: &[Value], v1alpha1: &Value, r: &mut Report) {
    if !has(docs, "DiscoveryServiceConfig") {
        return;
    }
    let identity = docs
        .iter()
        .find(|d| kind(d) == Some("DiscoveryIdentityConfig"));
    let field = |doc_field: &str, v1_field: &str| match identity {
        Some(doc) => doc
            .get(doc_field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        None => at(v1alpha1, &["cluster", v1_field])
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
    };
    if !field("clusterID", "id") {
        r.error(
            "DiscoveryIdentityConfig.clusterID",
            "cluster ID (.cluster.id or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled",
        );
    }
    if !field("clusterSecret", "secret") {
        r.error(
            "DiscoveryIdentityConfig.clusterSecret",
            "cluster secret (.cluster.secret or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled",
        );
    }
}
