//! Each v1.14 document's own rules, as Talos v1.14.1's `Validate()` methods have them
//! (`config/types/k8s/*.go`, `config/types/runtime/unattended_install.go`), checked as
//! `talosctl validate` runs them (`WithLocal`: image tags are not checked against the Talos
//! version). First the fields Talos decodes (see [`super::shapes`]): a document Talos cannot
//! decode is refused for that alone, so its other rules are not run.
//!
//! Problems are named `<kind>.<field>`; the messages are Talos's. Every loop is one pass over a
//! list or mapping of the document.

use serde_json::{Map, Value};

use super::endpoint::{self, EndpointProblem};
use super::shapes::{UNKNOWN_KEYS, unknown_fields};
use super::subnets::{self, DEFAULT_NODE_MASK, Prefix, Subnets};
use super::{Report, valid_label_key, valid_label_value};

/// A kind whose image Talos requires, and what it says when the image is empty.
struct Image {
    kind: &'static str,
    says: &'static str,
}

const IMAGE_REQUIRED: &[Image] = &[
    Image {
        kind: "KubeAPIServerConfig",
        says: "kube-apiserver image cannot be empty",
    },
    Image {
        kind: "KubeControllerManagerConfig",
        says: "kube-controller-manager image cannot be empty",
    },
    Image {
        kind: "KubeSchedulerConfig",
        says: "scheduler image cannot be empty",
    },
    Image {
        kind: "KubeProxyConfig",
        says: "proxy image cannot be empty",
    },
    Image {
        kind: "KubeletConfig",
        says: "kubelet image cannot be empty",
    },
];

/// Kinds whose `enabled: false` skips every other rule of the document.
const CAN_BE_DISABLED: &[&str] = &[
    "KubeControllerManagerConfig",
    "KubeSchedulerConfig",
    "KubeProxyConfig",
];

/// Kinds with a `resources` section (`ResourcesConfig`: only `cpu` and `memory`).
const WITH_RESOURCES: &[&str] = &[
    "KubeAPIServerConfig",
    "KubeControllerManagerConfig",
    "KubeSchedulerConfig",
    "KubeProxyConfig",
];

/// kube-apiserver argument prefixes Talos refuses, and why (`deniedArgPrefixes`; the longest
/// matching prefix gives the reason).
const DENIED_API_SERVER_ARGS: &[(&str, &str)] = &[
    ("anonymous-auth", "use KubeAuthenticationConfig"),
    ("oidc-", "use KubeAuthenticationConfig"),
    ("authentication-config", "use KubeAuthenticationConfig"),
    ("authorization-config", "use KubeAuthorizerConfig"),
    ("authorization-mode", "use KubeAuthorizerConfig"),
    ("authorization-webhook-", "use KubeAuthorizerConfig"),
    (
        "oidc-signing-algs",
        "not supported with KubeAuthenticationConfig: kube-apiserver rejects --oidc-* flags when structured authentication configuration is used, and the configuration has no equivalent setting (all RFC 7518 asymmetric algorithms are accepted)",
    ),
];

/// KubeletConfiguration fields Talos sets itself (`kubelet.ProtectedConfigurationFields`).
const PROTECTED_KUBELET_FIELDS: &[&str] = &[
    "apiVersion",
    "authentication",
    "authorization",
    "cgroupRoot",
    "kind",
    "kubeletCgroups",
    "port",
    "protectKernelDefaults",
    "resolvConf",
    "rotateCertificates",
    "systemCgroups",
    "staticPodPath",
    "seccompDefault",
];

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A string field Go decodes as empty: absent, null or "".
fn blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

fn map<'a>(doc: &'a Value, field: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    doc.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::iter)
}

fn list<'a>(doc: &'a Value, field: &str) -> &'a [Value] {
    doc.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The rules of the document `doc`, of a kind new in Talos v1.14.
pub(super) fn validate(doc: &Value, kind: &str, r: &mut Report) {
    let unknown = unknown_fields(doc, kind);
    for field in &unknown {
        r.error(&format!("{kind}.{field}"), UNKNOWN_KEYS);
    }
    if !unknown.is_empty() || !decodes(doc, kind, r) {
        return;
    }
    if CAN_BE_DISABLED.contains(&kind) && doc.get("enabled") == Some(&Value::Bool(false)) {
        return;
    }
    if let Some(image) = IMAGE_REQUIRED.iter().find(|i| i.kind == kind)
        && blank(doc.get("image"))
    {
        r.error(&format!("{kind}.image"), image.says);
    }
    if WITH_RESOURCES.contains(&kind) {
        resources(doc, kind, r);
    }
    match kind {
        "KubeClusterConfig" => cluster(doc, r),
        "KubeAPIServerConfig" => api_server_args(doc, r),
        "KubeProxyConfig" => proxy(doc, r),
        "KubeletConfig" => kubelet(doc, r),
        "KubeNodeConfig" => node(doc, r),
        "KubeNetworkConfig" => network(doc, r),
        "KubeEtcdEncryptionConfig"
            if doc
                .get("config")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty) =>
        {
            r.error(
                "KubeEtcdEncryptionConfig.config",
                "etcd encryption config is required",
            );
        }
        "UnattendedInstallConfig" => unattended_install(doc, r),
        _ => {}
    }
}

/// The values Talos fails to decode (before any rule runs): the endpoint's URL and the
/// network's prefixes. Whether the document decodes.
fn decodes(doc: &Value, kind: &str, r: &mut Report) -> bool {
    let before = r.errors.len();
    match kind {
        "KubeClusterConfig" => {
            if let Some(url) = doc.get("endpoint").and_then(Value::as_str)
                && let Some(EndpointProblem::Decode(decode)) = endpoint::check(url)
            {
                r.error("KubeClusterConfig.endpoint", decode);
            }
        }
        "KubeNetworkConfig" => {
            for field in ["podSubnets", "serviceSubnets"] {
                for (i, s) in list(doc, field).iter().enumerate() {
                    let text = s.as_str().unwrap_or_default();
                    if subnets::parse_prefix(text).is_none() {
                        r.error(
                            &format!("KubeNetworkConfig.{field}[{i}]"),
                            format!("cannot decode {text:?} as a subnet (address/bits)"),
                        );
                    }
                }
            }
        }
        _ => {}
    }
    r.errors.len() == before
}

/// `ResourcesConfig.Validate`: the first key other than cpu and memory, requests first.
fn resources(doc: &Value, kind: &str, r: &mut Report) {
    let Some(resources) = doc.get("resources") else {
        return;
    };
    for section in ["requests", "limits"] {
        let mut keys: Vec<&String> = map(resources, section).map(|(k, _)| k).collect();
        keys.sort_unstable();
        if let Some(key) = keys.into_iter().find(|k| *k != "cpu" && *k != "memory") {
            r.error(
                &format!("{kind}.resources.{section}.{key}"),
                format!("unsupported pod resource {key:?}"),
            );
            return;
        }
    }
}

fn cluster(doc: &Value, r: &mut Report) {
    if blank(doc.get("clusterName")) {
        r.error(
            "KubeClusterConfig.clusterName",
            "clusterName must be specified",
        );
    }
    match doc.get("endpoint").and_then(Value::as_str) {
        None | Some("") => r.error("KubeClusterConfig.endpoint", "endpoint must be specified"),
        Some(url) => {
            if let Some(EndpointProblem::Invalid(why)) = endpoint::check(url) {
                r.error(
                    "KubeClusterConfig.endpoint",
                    format!("cluster endpoint is invalid: {why}"),
                );
            }
        }
    }
}

fn api_server_args(doc: &Value, r: &mut Report) {
    let mut args: Vec<&String> = map(doc, "extraArgs").map(|(k, _)| k).collect();
    args.sort_unstable();
    for arg in args {
        let denied = DENIED_API_SERVER_ARGS
            .iter()
            .filter(|(prefix, _)| arg.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len());
        if let Some((_, reason)) = denied {
            r.error(
                &format!("KubeAPIServerConfig.extraArgs.{arg}"),
                format!("kube-apiserver extra argument {arg:?} is not allowed: {reason}"),
            );
        }
    }
}

fn proxy(doc: &Value, r: &mut Report) {
    match doc.get("mode").and_then(Value::as_str).unwrap_or_default() {
        "" | "nftables" => {}
        mode @ ("iptables" | "ipvs") => r.warn(
            "KubeProxyConfig.mode",
            format!(
                "proxy mode {mode:?} is not recommended, please switch to nftables if possible"
            ),
        ),
        mode => r.error(
            "KubeProxyConfig.mode",
            format!("invalid proxy mode {mode:?}: supported modes are iptables, ipvs and nftables"),
        ),
    }
    if map(doc, "extraArgs").next().is_some() {
        r.warn(
            "KubeProxyConfig.extraArgs",
            "extra arguments for kube-proxy may not work as expected, please use configuration instead",
        );
    }
}

fn kubelet(doc: &Value, r: &mut Report) {
    let Some(config) = doc.get("config").and_then(Value::as_object) else {
        return;
    };
    for field in PROTECTED_KUBELET_FIELDS {
        if config.contains_key(*field) {
            r.error(
                &format!("KubeletConfig.config.{field}"),
                format!("kubelet configuration field {field:?} can't be overridden"),
            );
        }
    }
}

fn node(doc: &Value, r: &mut Report) {
    let valid_subnets = doc
        .get("nodeIP")
        .map_or(&[][..], |n| list(n, "validSubnets"));
    for (i, cidr) in valid_subnets.iter().enumerate() {
        let cidr = cidr.as_str().unwrap_or_default();
        let cidr = cidr.strip_prefix('!').unwrap_or(cidr);
        if !subnets::valid_subnet_or_address(cidr) {
            r.error(
                &format!("KubeNodeConfig.nodeIP.validSubnets[{i}]"),
                format!("nodeIP subnet is not valid: {cidr:?}"),
            );
        }
    }
    for (key, value) in map(doc, "labels") {
        let value_ok = value.as_str().is_some_and(valid_label_value);
        if !valid_label_key(key) || !value_ok {
            r.error(
                &format!("KubeNodeConfig.labels.{key}"),
                "invalid node labels: not a valid label name and value",
            );
        }
    }
    for (key, value) in map(doc, "taints") {
        let (value, effect) = match value.as_str().unwrap_or_default().split_once(':') {
            Some((v, e)) => (v, e),
            None => ("", value.as_str().unwrap_or_default()),
        };
        let path = format!("KubeNodeConfig.taints.{key}");
        if !valid_label_key(key) {
            r.error(&path, "invalid node taints: not a valid taint key");
        } else if !TAINT_EFFECTS.contains(&effect) {
            r.error(
                &path,
                format!("invalid node taints: invalid taint effect: {effect:?}"),
            );
        } else if !valid_label_value(value) {
            r.error(&path, "invalid node taints: not a valid taint value");
        }
    }
}

/// A per-node mask size: `None` when out of range (0 is the default).
fn node_mask(doc: &Value, field: &str, max: i64, default: u8, r: &mut Report) -> Option<u8> {
    match doc.get(field).and_then(Value::as_i64).unwrap_or(0) {
        0 => Some(default),
        n if (1..=max).contains(&n) => u8::try_from(n).ok(),
        _ => {
            r.error(
                &format!("KubeNetworkConfig.{field}"),
                format!("{field} must be between 1 and {max}"),
            );
            None
        }
    }
}

fn network(doc: &Value, r: &mut Report) {
    let v4 = node_mask(doc, "nodeCIDRMaskSizeIPv4", 32, DEFAULT_NODE_MASK.0, r);
    let v6 = node_mask(doc, "nodeCIDRMaskSizeIPv6", 128, DEFAULT_NODE_MASK.1, r);
    let parsed = |field| -> Vec<Prefix> {
        list(doc, field)
            .iter()
            .filter_map(|s| s.as_str().and_then(subnets::parse_prefix))
            .collect()
    };
    let (pods, services) = (parsed("podSubnets"), parsed("serviceSubnets"));
    if let Some(why) = subnets::problem(&pods, Subnets::Pod((v4, v6))) {
        r.error(
            "KubeNetworkConfig.podSubnets",
            format!("pod subnets: {why}"),
        );
    }
    if let Some(why) = subnets::problem(&services, Subnets::Service) {
        r.error(
            "KubeNetworkConfig.serviceSubnets",
            format!("service subnets: {why}"),
        );
    }
    if pods.len() != services.len() {
        r.error(
            "KubeNetworkConfig",
            "the number of pod subnets must match the number of service subnets",
        );
    }
}

fn unattended_install(doc: &Value, r: &mut Report) {
    if blank(doc.get("installer").and_then(|i| i.get("image"))) {
        r.warn(
            "UnattendedInstallConfig.installer.image",
            "installer.image is not set, if Talos is not booted from asset built by Image Factory, installation will fail",
        );
    }
    let selector = doc
        .get("provisioning")
        .and_then(|p| p.get("diskSelector"))
        .and_then(|d| d.get("match"));
    if blank(selector) {
        r.error(
            "UnattendedInstallConfig.provisioning.diskSelector.match",
            "provisioning.diskSelector.match is required",
        );
    }
}
