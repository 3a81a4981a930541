//! Validation of machine configurations, mirroring Talos's v1alpha1 rules in metal, cloud and
//! container modes. Every problem carries its field path; deprecations are warnings, kept apart.
//! Where talosctl and this validator disagree, talosctl is right (tests compare them).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde_json::Value;

use crate::patch::known_kind;

mod endpoint;
mod kinds;
pub(crate) mod multidoc;
mod shapes;
mod subnets;

/// Where the machine runs; only metal requires an install disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Metal,
    Cloud,
    Container,
}

/// A mode [`Mode`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?}: use metal, cloud or container")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Mode, UnknownMode> {
        match s {
            "metal" => Ok(Mode::Metal),
            "cloud" => Ok(Mode::Cloud),
            "container" => Ok(Mode::Container),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Metal => "metal",
            Mode::Cloud => "cloud",
            Mode::Container => "container",
        })
    }
}

/// One validation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Errors make a configuration invalid; warnings do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }
}

/// Validate a configuration (all its documents). `strict` makes unknown fields of the v1alpha1
/// document errors; unknown fields of the documents new in v1.14 are errors always, as talosctl
/// has them. (talosctl refuses unknown fields in every mode; its `--strict` turns the v1alpha1
/// document's warnings into errors.
/// The differences between these rules and talosctl's are listed, each tested, in
/// tests/validator_table.rs.)
pub fn validate(docs: &[Value], mode: Mode, strict: bool) -> Report {
    let mut r = Report::default();
    let mut seen = BTreeSet::new();
    let mut v1alpha1 = 0;
    let v114 = multidoc::is_v114(docs);
    for (i, doc) in docs.iter().enumerate() {
        let Some(map) = doc.as_object() else {
            r.error(&format!("document {i}"), "must be a YAML mapping");
            continue;
        };
        if map.is_empty() {
            // Talos reads an empty document as another v1alpha1 document.
            v1alpha1 += 1;
            continue;
        }
        match map.get("kind").and_then(Value::as_str) {
            None => {
                v1alpha1 += 1;
                validate_v1alpha1(doc, mode, strict, v114, &mut r);
            }
            Some(kind) => {
                if !known_kind(kind) {
                    r.error(kind, format!("unknown document kind {kind:?}"));
                    continue;
                }
                let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
                if !seen.insert((kind.to_owned(), name.to_owned())) {
                    r.error(
                        kind,
                        format!("duplicate document {kind} {name}")
                            .trim_end()
                            .to_owned(),
                    );
                }
                if kind == "HostnameConfig" {
                    validate_hostname_config(doc, v114, &mut r);
                    hostname_conflicts(docs, &mut r);
                }
                kinds::validate(doc, kind, &mut r);
            }
        }
    }
    if v1alpha1 > 1 {
        r.error("v1alpha1", "duplicate v1alpha1 document");
    }
    multidoc::validate(docs, &mut r);
    r
}

const ROOT_FIELDS: &[&str] = &["version", "debug", "persist", "machine", "cluster"];
const MACHINE_FIELDS: &[&str] = &[
    "type",
    "token",
    "ca",
    "acceptedCAs",
    "certSANs",
    "controlPlane",
    "kubelet",
    "pods",
    "network",
    "disks",
    "install",
    "files",
    "env",
    "time",
    "sysctls",
    "sysfs",
    "registries",
    "systemDiskEncryption",
    "features",
    "udev",
    "logging",
    "kernel",
    "seccompProfiles",
    "nodeLabels",
    "nodeAnnotations",
    "nodeTaints",
    "baseRuntimeSpecOverrides",
];
const CLUSTER_FIELDS: &[&str] = &[
    "id",
    "secret",
    "controlPlane",
    "clusterName",
    "network",
    "token",
    "aescbcEncryptionSecret",
    "secretboxEncryptionSecret",
    "ca",
    "acceptedCAs",
    "aggregatorCA",
    "serviceAccount",
    "apiServer",
    "controllerManager",
    "proxy",
    "scheduler",
    "discovery",
    "etcd",
    "coreDNS",
    "externalCloudProvider",
    "extraManifests",
    "extraManifestHeaders",
    "inlineManifests",
    "adminKubeconfig",
    "allowSchedulingOnControlPlanes",
];
const INSTALL_FIELDS: &[&str] = &[
    "disk",
    "diskSelector",
    "extraKernelArgs",
    "image",
    "extensions",
    "wipe",
    "legacyBIOSSupport",
    "grubUseUKICmdline",
];
const KUBELET_FIELDS: &[&str] = &[
    "image",
    "clusterDNS",
    "extraArgs",
    "extraMounts",
    "extraConfig",
    "credentialProviderConfig",
    "defaultRuntimeSeccompProfileEnabled",
    "registerWithFQDN",
    "nodeIP",
    "skipNodeRegistration",
    "disableManifestsDirectory",
];
const FEATURES_FIELDS: &[&str] = &[
    "rbac",
    "stableHostname",
    "kubernetesTalosAPIAccess",
    "apidCheckExtKeyUsage",
    "diskQuotaSupport",
    "kubePrism",
    "hostDNS",
    "imageCache",
    "nodeAddressSortAlgorithm",
];
const MACHINE_NETWORK_FIELDS: &[&str] = &[
    "hostname",
    "interfaces",
    "nameservers",
    "searchDomains",
    "extraHostEntries",
    "kubespan",
    "disableSearchDomain",
];
const CLUSTER_NETWORK_FIELDS: &[&str] = &["cni", "dnsDomain", "podSubnets", "serviceSubnets"];
const CA_FIELDS: &[&str] = &["crt", "key"];

const INTERFACE_FIELDS: &[&str] = &[
    "interface",
    "deviceSelector",
    "addresses",
    "routes",
    "bond",
    "bridge",
    "bridgePort",
    "vlans",
    "mtu",
    "dhcp",
    "ignore",
    "dummy",
    "dhcpOptions",
    "wireguard",
    "vip",
];
pub(crate) const UNKNOWN_FIELD: &str = "unknown field";
/// Fields holding base64-encoded PEM.
const BASE64_FIELDS: &[&[&str]] = &[
    &["machine", "ca", "crt"],
    &["machine", "ca", "key"],
    &["cluster", "ca", "crt"],
    &["cluster", "ca", "key"],
    &["cluster", "aggregatorCA", "crt"],
    &["cluster", "aggregatorCA", "key"],
    &["cluster", "serviceAccount", "key"],
    &["cluster", "etcd", "ca", "crt"],
    &["cluster", "etcd", "ca", "key"],
];
const MAP_FIELDS: &[&[&str]] = &[
    &["machine", "kubelet", "extraArgs"],
    &["machine", "sysctls"],
    &["machine", "nodeLabels"],
    &["machine", "nodeAnnotations"],
    &["cluster", "apiServer", "extraArgs"],
    &["cluster", "controllerManager", "extraArgs"],
    &["cluster", "scheduler", "extraArgs"],
    &["cluster", "proxy", "extraArgs"],
];
const LIST_FIELDS: &[&[&str]] = &[
    &["machine", "certSANs"],
    &["cluster", "apiServer", "certSANs"],
    &["machine", "network", "interfaces"],
    &["machine", "network", "nameservers"],
    &["cluster", "network", "podSubnets"],
    &["cluster", "network", "serviceSubnets"],
    &["cluster", "extraManifests"],
    &["cluster", "inlineManifests"],
];

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// What Talos's strict decoder refuses when it reads a v1alpha1 document (a configuration or a
/// strategic patch): unknown fields, undecodable base64, and values of the wrong shape.
pub fn decode_problems(doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |path: String, message: &str| {
        problems.push(Problem {
            path,
            message: message.to_owned(),
        })
    };
    let sections: [(&[&str], &[&str]); 10] = [
        (&[], ROOT_FIELDS),
        (&["machine"], MACHINE_FIELDS),
        (&["cluster"], CLUSTER_FIELDS),
        (&["machine", "install"], INSTALL_FIELDS),
        (&["machine", "kubelet"], KUBELET_FIELDS),
        (&["machine", "features"], FEATURES_FIELDS),
        (&["machine", "network"], MACHINE_NETWORK_FIELDS),
        (&["cluster", "network"], CLUSTER_NETWORK_FIELDS),
        (&["machine", "ca"], CA_FIELDS),
        (&["cluster", "ca"], CA_FIELDS),
    ];
    let mut unknown = |value: &Value, path: &str, known: &[&str]| {
        for key in value.as_object().into_iter().flat_map(|m| m.keys()) {
            if !known.contains(&key.as_str()) && key != "$patch" {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                push(field, UNKNOWN_FIELD);
            }
        }
    };
    for (path, known) in sections {
        if let Some(v) = at(doc, path) {
            unknown(v, &path.join("."), known);
        }
    }
    for (i, iface) in at(doc, &["machine", "network", "interfaces"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        unknown(
            iface,
            &format!("machine.network.interfaces[{i}]"),
            INTERFACE_FIELDS,
        );
    }
    for path in BASE64_FIELDS {
        if let Some(Value::String(s)) = at(doc, path)
            && base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).is_err()
        {
            push(path.join("."), "illegal base64 data");
        }
    }
    for path in MAP_FIELDS {
        if at(doc, path).is_some_and(|v| !v.is_object() && !v.is_null()) {
            push(path.join("."), "must be a mapping");
        }
    }
    for path in LIST_FIELDS {
        if at(doc, path).is_some_and(|v| !v.is_array() && !v.is_null()) {
            push(path.join("."), "must be a list");
        }
    }
    problems
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

/// The v1alpha1 document. `v114`: the configuration is written for Talos v1.14 (it holds a
/// document kind new in v1.14), whose v1alpha1 rules leave to the new documents what moved there:
/// the install disk is required only where `machine.install` is given, the endpoint only where
/// `cluster.controlPlane` is, and the Kubernetes CA not at all.
fn validate_v1alpha1(doc: &Value, mode: Mode, strict: bool, v114: bool, r: &mut Report) {
    for p in decode_problems(doc) {
        if strict || p.message != UNKNOWN_FIELD {
            r.errors.push(p);
        }
    }
    match doc.get("version").and_then(Value::as_str) {
        Some("v1alpha1") => {}
        Some(other) => r.error("version", format!("unknown config version {other:?}")),
        None => r.error("version", "missing config version (v1alpha1)"),
    }
    if doc.get("persist") == Some(&Value::Bool(false)) {
        r.error("persist", "persist must be true");
    }
    let Some(machine) = doc.get("machine").filter(|m| m.is_object()) else {
        r.error("machine", "machine instructions are required");
        return;
    };
    let cluster = doc.get("cluster").filter(|c| c.is_object());
    if cluster.is_none() {
        r.error("cluster", "cluster instructions are required");
    }
    let machine_type = machine.get("type").and_then(Value::as_str).unwrap_or("");
    let control_plane = match machine_type {
        "init" | "controlplane" => true,
        "worker" => false,
        "join" | "" => {
            r.warn(
                "machine.type",
                "treated as worker; set machine.type: worker explicitly",
            );
            false
        }
        other => {
            r.error("machine.type", format!("unknown machine type {other:?}"));
            return;
        }
    };
    if machine
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        r.error("machine.token", "a machine token is required");
    }
    let machine_ca_crt = str_at(machine, &["ca", "crt"]).unwrap_or("");
    let machine_ca_key = str_at(machine, &["ca", "key"]).unwrap_or("");
    if control_plane {
        if machine_ca_crt.is_empty() || machine_ca_key.is_empty() {
            r.error(
                "machine.ca",
                "control plane machines need the OS CA certificate and key",
            );
        }
    } else {
        if !machine_ca_key.is_empty() {
            r.error(
                "machine.ca.key",
                "worker machines must not carry the OS CA key",
            );
        }
        if machine_ca_crt.is_empty() && machine.get("acceptedCAs").is_none() {
            r.error("machine.ca.crt", "a trusted OS CA certificate is required");
        }
    }
    if v114
        && machine
            .get("baseRuntimeSpecOverrides")
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
    {
        r.warn(
            "machine.baseRuntimeSpecOverrides",
            ".machine.baseRuntimeSpecOverrides is deprecated; use a CRIBaseRuntimeSpecConfig document instead",
        );
    }
    validate_install(machine, mode, v114, r);
    validate_images(machine, r);
    validate_labels(machine, r);
    validate_network(machine, control_plane, r);
    if let Some(cluster) = cluster {
        validate_cluster(cluster, control_plane, v114, r);
    }
}

fn validate_install(machine: &Value, mode: Mode, v114: bool, r: &mut Report) {
    let install = machine.get("install").filter(|i| !i.is_null());
    if mode == Mode::Metal && (install.is_some() || !v114) {
        let has_disk = install
            .and_then(|i| i.get("disk"))
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty());
        let has_selector = install
            .and_then(|i| i.get("diskSelector"))
            .is_some_and(|s| s.is_object());
        if !has_disk && !has_selector {
            r.error(
                "machine.install",
                "an install disk or diskSelector is required in metal mode",
            );
        }
    }
    if let Some(install) = install {
        let args = install
            .get("extraKernelArgs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if args && install.get("grubUseUKICmdline") == Some(&Value::Bool(true)) {
            r.error(
                "machine.install.extraKernelArgs",
                "extraKernelArgs and grubUseUKICmdline can't be used together",
            );
        }
        if install
            .get("extensions")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            r.warn(
                "machine.install.extensions",
                "deprecated: use a boot asset with extensions instead",
            );
        }
    }
}

fn validate_images(machine: &Value, r: &mut Report) {
    for (path, keys) in [
        ("machine.install.image", ["install", "image"]),
        ("machine.kubelet.image", ["kubelet", "image"]),
    ] {
        if let Some(image) = str_at(machine, &keys)
            && !valid_image_reference(image)
        {
            r.error(path, format!("invalid image reference {image:?}"));
        }
    }
}

fn valid_image_reference(image: &str) -> bool {
    !image.is_empty()
        && !image.contains(char::is_whitespace)
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !image.starts_with(['/', ':', '@'])
        && !image.ends_with(['/', ':', '@'])
}

fn validate_labels(machine: &Value, r: &mut Report) {
    for (key, value) in machine
        .get("nodeLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let path = format!("machine.nodeLabels.{key}");
        if !valid_label_key(key) {
            r.error(&path, "invalid label key");
        }
        match value.as_str() {
            Some(v) if valid_label_value(v) => {}
            _ => r.error(&path, "invalid label value"),
        }
    }
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(|p| valid_dns_name(p) && p.len() <= 253)
        && !name.is_empty()
        && valid_label_value(name)
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// A DNS subdomain: dot-separated labels of [a-z0-9-], not starting or ending with '-'.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn validate_network(machine: &Value, control_plane: bool, r: &mut Report) {
    let Some(network) = machine.get("network") else {
        return;
    };
    for (i, iface) in network
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("machine.network.interfaces[{i}]");
        if iface.get("vip").is_some() && !control_plane {
            r.error(
                &format!("{path}.vip"),
                "virtual IPs are only allowed on control plane machines",
            );
        }
        for (j, addr) in iface
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let a = addr.as_str().unwrap_or("");
            let ok = parse_cidr(a).is_ok() || a.parse::<IpAddr>().is_ok();
            if !ok {
                r.error(
                    &format!("{path}.addresses[{j}]"),
                    format!("invalid address {a:?}"),
                );
            }
        }
        if iface.get("interface").is_none() && iface.get("deviceSelector").is_none() {
            r.error(&path, "an interface name or deviceSelector is required");
        }
    }
    for (i, ns) in network
        .get("nameservers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // Talos accepts this; the resolver ignores it.
        if ns.as_str().and_then(|s| s.parse::<IpAddr>().ok()).is_none() {
            r.warn(
                &format!("machine.network.nameservers[{i}]"),
                "not an IP address; it will not be used",
            );
        }
    }
}

fn validate_cluster(cluster: &Value, control_plane: bool, v114: bool, r: &mut Report) {
    match str_at(cluster, &["controlPlane", "endpoint"]) {
        None if v114 && at(cluster, &["controlPlane"]).is_none_or(Value::is_null) => {}
        None | Some("") => r.error(
            "cluster.controlPlane.endpoint",
            "a control plane endpoint is required",
        ),
        Some(e) if !valid_endpoint_url(e) => {
            r.error(
                "cluster.controlPlane.endpoint",
                format!("invalid URL {e:?}"),
            );
        }
        _ => {}
    }
    // The legacy service account derives its issuer from the endpoint of the same document.
    if v114
        && at(cluster, &["serviceAccount"]).is_some_and(|s| !s.is_null())
        && at(cluster, &["controlPlane", "endpoint"]).is_none_or(Value::is_null)
    {
        r.error(
            "cluster.serviceAccount",
            ".cluster.serviceAccount requires the cluster endpoint to be set in the same document (.cluster.controlPlane.endpoint); when the cluster endpoint is migrated to the KubeClusterConfig document, .cluster.serviceAccount should be migrated to the KubeServiceAccountConfig document as well",
        );
    }
    if let Some(domain) = str_at(cluster, &["network", "dnsDomain"])
        && !valid_dns_name(domain)
    {
        r.error(
            "cluster.network.dnsDomain",
            format!("{domain:?} is not a valid DNS name"),
        );
    }
    for field in ["podSubnets", "serviceSubnets"] {
        for (i, s) in cluster
            .get("network")
            .and_then(|n| n.get(field))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            // Talos's validator accepts this; Kubernetes will not start with it.
            if let Err(reason) = parse_cidr(s.as_str().unwrap_or("")) {
                r.warn(&format!("cluster.network.{field}[{i}]"), reason.to_string());
            }
        }
    }
    // Talos checks the CNI only on control planes, which install it.
    if let Some(cni) = cluster
        .get("network")
        .and_then(|n| n.get("cni"))
        .filter(|_| control_plane)
    {
        match cni.get("name").and_then(Value::as_str) {
            Some("flannel" | "none") => {}
            Some("custom") => {
                if cni
                    .get("urls")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    r.error(
                        "cluster.network.cni.urls",
                        "a custom CNI needs at least one manifest URL",
                    );
                }
            }
            Some(other) => r.error(
                "cluster.network.cni.name",
                format!("unknown CNI {other:?}: use flannel, custom or none"),
            ),
            None => r.error(
                "cluster.network.cni.name",
                "the CNI needs a name: flannel, custom or none",
            ),
        }
    }
    let ca_key = str_at(cluster, &["ca", "key"]).unwrap_or("");
    let ca_crt = str_at(cluster, &["ca", "crt"]).unwrap_or("");
    if control_plane {
        if !v114 && (ca_crt.is_empty() || ca_key.is_empty()) {
            r.error(
                "cluster.ca",
                "control plane machines need the Kubernetes CA certificate and key",
            );
        }
        if str_at(cluster, &["etcd", "ca", "crt"])
            .unwrap_or("")
            .is_empty()
        {
            r.error(
                "cluster.etcd.ca",
                "the etcd CA is required on control plane machines",
            );
        }
    } else {
        if !ca_key.is_empty() {
            r.error(
                "cluster.ca.key",
                "worker machines must not carry the Kubernetes CA key",
            );
        }
        if !v114 && ca_crt.is_empty() && cluster.get("acceptedCAs").is_none() {
            r.error(
                "cluster.ca.crt",
                "a trusted Kubernetes CA certificate is required",
            );
        }
        if cluster
            .get("etcd")
            .is_some_and(|e| e.as_object().is_some_and(|m| !m.is_empty()))
        {
            r.error(
                "cluster.etcd",
                "etcd configuration is only allowed on control plane machines",
            );
        }
    }
    if cluster.get("discovery").and_then(|d| d.get("enabled")) == Some(&Value::Bool(true))
        && (str_at(cluster, &["id"]).unwrap_or("").is_empty()
            || str_at(cluster, &["secret"]).unwrap_or("").is_empty())
    {
        r.error(
            "cluster.discovery",
            "discovery requires cluster.id and cluster.secret",
        );
    }
    let mut names = BTreeSet::new();
    for (i, m) in cluster
        .get("inlineManifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            r.error(
                &format!("cluster.inlineManifests[{i}].name"),
                "inline manifest name can't be empty",
            );
        } else if !names.insert(name) {
            r.error(
                &format!("cluster.inlineManifests[{i}].name"),
                format!("inline manifest name {name:?} is duplicate"),
            );
        }
    }
}

fn valid_endpoint_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = host
        .rsplit_once(':')
        .map(|(h, p)| if p.parse::<u16>().is_ok() { h } else { host })
        .unwrap_or(host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty() && (host.parse::<IpAddr>().is_ok() || valid_dns_name(host))
}

/// What is wrong with an `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (expected 10.244.0.0/16)")]
    NoPrefix(String),
    #[error("{cidr:?}: {addr:?} is not an IP address")]
    Address { cidr: String, addr: String },
    #[error("{cidr:?}: prefix must be 0 to {max}")]
    Prefix { cidr: String, max: u8 },
}

/// Parse `address/prefix`, explaining what is wrong.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), CidrError> {
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| CidrError::NoPrefix(cidr.to_owned()))?;
    let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address {
        cidr: cidr.to_owned(),
        addr: addr.to_owned(),
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 =
        prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| CidrError::Prefix {
                cidr: cidr.to_owned(),
                max,
            })?;
    Ok((addr, prefix))
}

/// `v114`: Talos v1.14 accepts `auto: off` without a hostname (v1.13 reads `off` as unset).
fn validate_hostname_config(doc: &Value, v114: bool, r: &mut Report) {
    // `off` is the zero value: Talos treats it as unset.
    let auto = doc
        .get("auto")
        .and_then(Value::as_str)
        .filter(|a| *a != "off");
    let hostname = doc.get("hostname").and_then(Value::as_str);
    let auto_off = doc.get("auto").and_then(Value::as_str) == Some("off");
    match (auto, hostname) {
        (None, None) if v114 && auto_off => {}
        (Some(_), Some(_)) => r.error(
            "HostnameConfig",
            "'auto' and 'hostname' cannot be set at the same time",
        ),
        (None, None) => r.error("HostnameConfig", "either 'auto' or 'hostname' must be set"),
        (Some(a), None) if a != "stable" => {
            r.error("HostnameConfig.auto", format!("unknown value {a:?}"))
        }
        (None, Some(h)) if !valid_dns_name(h) => r.error(
            "HostnameConfig.hostname",
            format!("{h:?} is not a valid hostname"),
        ),
        _ => {}
    }
}

/// A HostnameConfig document conflicts with hostname settings in the v1alpha1 document.
fn hostname_conflicts(docs: &[Value], r: &mut Report) {
    for doc in docs.iter().filter(|d| d.get("kind").is_none()) {
        if at(doc, &["machine", "features", "stableHostname"]) == Some(&Value::Bool(true)) {
            r.error(
                "machine.features.stableHostname",
                "stable hostname is already set in v1alpha1 config",
            );
        }
        if at(doc, &["machine", "network", "hostname"])
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty())
        {
            r.error(
                "machine.network.hostname",
                "static hostname is already set in v1alpha1 config",
            );
        }
    }
}
