//! Rendering of controlplane and worker configurations, field for field what
//! `talosctl gen config` writes for each version contract (checked against talosctl in tests).

use serde_json::{Map, Value, json};

use crate::secrets::{SecretsBundle, decode_pem};
use crate::{Contract, EndpointProblem, Error};

/// The Talos release whose installer image and defaults we use when none is given.
pub const DEFAULT_TALOS_VERSION: &str = "v1.13.0";
/// The Kubernetes version talosctl v1.13 defaults to.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.36.0";

/// The role a configuration is rendered for. `init` is rendered as controlplane: the
/// control-plane provider bootstraps etcd through the Talos API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineType {
    Controlplane,
    Worker,
}

impl MachineType {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Controlplane => "controlplane",
            MachineType::Worker => "worker",
        }
    }
}

/// What a configuration is rendered from (besides the secrets bundle).
#[derive(Debug, Clone)]
pub struct Input {
    pub cluster_name: String,
    /// `https://host:port`
    pub endpoint: String,
    /// Without the leading `v` (it is stripped if present).
    pub kubernetes_version: String,
    pub contract: Contract,
    pub dns_domain: String,
    pub pod_subnets: Vec<String>,
    pub service_subnets: Vec<String>,
    /// Empty leaves `machine.install.disk` out (platforms that install from an image).
    pub install_disk: String,
    /// Empty leaves `machine.install.image` out.
    pub install_image: String,
    pub hostname: Option<String>,
}

impl Input {
    /// Defaults as `talosctl gen config <cluster> <endpoint>` uses them.
    pub fn new(cluster_name: &str, endpoint: &str) -> Input {
        Input {
            cluster_name: cluster_name.to_owned(),
            endpoint: endpoint.to_owned(),
            kubernetes_version: DEFAULT_KUBERNETES_VERSION.to_owned(),
            contract: Contract::NEWEST,
            dns_domain: "cluster.local".to_owned(),
            pod_subnets: vec!["10.244.0.0/16".to_owned()],
            service_subnets: vec!["10.96.0.0/12".to_owned()],
            install_disk: "/dev/sda".to_owned(),
            install_image: format!("ghcr.io/siderolabs/installer:{DEFAULT_TALOS_VERSION}"),
            hostname: None,
        }
    }

    fn check(&self) -> Result<Endpoint, Error> {
        let input = |field: &'static str, value: &str, reason: &str| Error::Input {
            field,
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if self.cluster_name.is_empty() {
            return Err(input("cluster name", "", "must not be empty"));
        }
        for cidr in self.pod_subnets.iter().chain(&self.service_subnets) {
            crate::validate::parse_cidr(cidr).map_err(|r| input("CIDR", cidr, &r))?;
        }
        let k8s = self.kubernetes_version.trim_start_matches('v');
        if k8s.split('.').count() != 3 || k8s.split('.').any(|p| p.is_empty()) {
            return Err(input(
                "Kubernetes version",
                &self.kubernetes_version,
                "expected 1.33.2",
            ));
        }
        Endpoint::parse(&self.endpoint)
    }
}

/// A control-plane endpoint as talosctl accepts it: https, a host, an explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(endpoint: &str) -> Result<Endpoint, Error> {
        let bad = |reason: EndpointProblem| Error::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        if let Some(inner) = markdown_link_target(endpoint) {
            return Err(bad(EndpointProblem::MarkdownLink {
                target: inner.to_owned(),
            }));
        }
        let rest = endpoint
            .strip_prefix("https://")
            .ok_or_else(|| bad(EndpointProblem::NotHttps))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(bad(EndpointProblem::HasPath));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p),
            _ => return Err(bad(EndpointProblem::NoPort)),
        };
        let port = parse_port(port).ok_or_else(|| {
            bad(EndpointProblem::InvalidPort {
                port: port.to_owned(),
            })
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad(EndpointProblem::EmptyHost));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// A TCP port as written in a URL: decimal digits only (no sign, no spaces), 1 to 65535.
pub fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// `[text](target)` as copied from a rendered document: the target.
fn markdown_link_target(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let (_, after) = rest.split_once("](")?;
    after.strip_suffix(')')
}

/// Render the configuration documents for `machine_type`: the v1alpha1 document, then (contracts
/// v1.12 and later) a HostnameConfig document.
pub fn render(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
) -> Result<Vec<Value>, Error> {
    let endpoint = input.check()?;
    let c = input.contract;
    let cp = machine_type == MachineType::Controlplane;
    let k8s = input.kubernetes_version.trim_start_matches('v');
    // Contract gates, as talosctl v1.13 applies them.
    let v112 = c.at_least(1, 12);
    let v113 = c.at_least(1, 13);

    let mut machine = Map::new();
    machine.insert("type".into(), json!(machine_type.as_str()));
    machine.insert("token".into(), json!(bundle.trustdinfo.token));
    machine.insert(
        "ca".into(),
        ca(
            &bundle.certs.os.crt,
            cp.then_some(bundle.certs.os.key.as_str()),
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
    if !v113 {
        machine.insert("network".into(), json!({}));
    }
    // Empty means "not set" (as CABPT renders for cloud platforms): the key is left out.
    let mut install = json!({"wipe": false});
    if !input.install_disk.is_empty() {
        install["disk"] = json!(input.install_disk);
    }
    if !input.install_image.is_empty() {
        install["image"] = json!(input.install_image);
    }
    if v112 {
        install["grubUseUKICmdline"] = json!(true);
    }
    machine.insert("install".into(), install);
    if !(v112 && cp) {
        machine.insert("registries".into(), json!({}));
    }
    let mut features = Map::new();
    if !v112 {
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
    machine.insert("features".into(), Value::Object(features));
    if cp {
        machine.insert(
            "nodeLabels".into(),
            json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
        );
    }
    if let (Some(hostname), false) = (&input.hostname, v112) {
        machine
            .entry("network")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|n| n.insert("hostname".into(), json!(hostname)));
    }

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
    if cp {
        let (field, secret) = bundle.encryption_secret();
        cluster.insert(field.into(), json!(secret));
    }
    cluster.insert(
        "ca".into(),
        ca(
            &bundle.certs.k8s.crt,
            cp.then_some(bundle.certs.k8s.key.as_str()),
        ),
    );
    if cp {
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
        if !v112 {
            api_server.insert("certSANs".into(), json!([endpoint.host]));
            api_server.insert("disablePodSecurityPolicy".into(), json!(true));
        }
        api_server.insert("admissionControl".into(), pod_security_admission());
        api_server.insert(
            "auditPolicy".into(),
            json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}),
        );
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
    cluster.insert(
        "discovery".into(),
        json!({"enabled": true, "registries": {"kubernetes": {"disabled": true}, "service": {}}}),
    );
    if cp {
        cluster.insert(
            "etcd".into(),
            json!({"ca": {"crt": bundle.certs.etcd.crt, "key": bundle.certs.etcd.key}}),
        );
        cluster.insert("extraManifests".into(), json!([]));
        cluster.insert("inlineManifests".into(), json!([]));
    }

    let mut docs = vec![json!({
        "version": "v1alpha1",
        "debug": false,
        "persist": true,
        "machine": Value::Object(machine),
        "cluster": Value::Object(cluster),
    })];
    if v112 {
        docs.push(match &input.hostname {
            // Talos refuses `auto` together with `hostname`.
            Some(h) => json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "hostname": h}),
            None => json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}),
        });
    }
    // Fail early on a bundle whose PEM fields are unreadable, naming the field.
    decode_pem(&bundle.certs.os.crt).map_err(|source| Error::BundleField {
        field: "certs.os.crt".into(),
        source,
    })?;
    Ok(docs)
}

/// `{crt, key}`; workers get an empty key, as talosctl writes it.
fn ca(crt: &str, key: Option<&str>) -> Value {
    json!({"crt": crt, "key": key.unwrap_or("")})
}

fn pod_security_admission() -> Value {
    json!([{
        "name": "PodSecurity",
        "configuration": {
            "apiVersion": "pod-security.admission.config.k8s.io/v1alpha1",
            "defaults": {
                "audit": "restricted", "audit-version": "latest",
                "enforce": "baseline", "enforce-version": "latest",
                "warn": "restricted", "warn-version": "latest",
            },
            "exemptions": {"namespaces": ["kube-system"], "runtimeClasses": [], "usernames": []},
            "kind": "PodSecurityConfiguration",
        },
    }])
}

/// Documents as one YAML stream (`---` between documents), as Talos reads it.
pub fn to_yaml(docs: &[Value]) -> Result<String, Error> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_yaml_ng::to_string(doc).map_err(|source| Error::Serialize {
                what: "machine configuration",
                source,
            })?,
        );
    }
    Ok(out)
}

/// Parse a YAML stream of configuration documents.
pub fn from_yaml(text: &str) -> Result<Vec<Value>, Error> {
    documents(text, |text| {
        crate::limits::documents(text, &crate::limits::LIMITS)
    })
}

/// [`from_yaml`], for the configuration a render starts from: what it holds counts against the
/// render's `budget`.
pub fn from_yaml_within(
    text: &str,
    budget: &crate::limits::RenderBudget,
) -> Result<Vec<Value>, Error> {
    documents(text, |text| {
        crate::limits::documents_within(text, &crate::limits::LIMITS, budget)
    })
}

fn documents(
    text: &str,
    parse: impl FnOnce(&str) -> Result<Vec<Value>, crate::limits::ParseError>,
) -> Result<Vec<Value>, Error> {
    let what = || "machine configuration".to_owned();
    parse(text).map_err(|e| match e {
        crate::limits::ParseError::Yaml(source) => Error::Parse {
            what: what(),
            source: source.into(),
        },
        crate::limits::ParseError::Limit(source) => Error::Limit {
            what: what(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine configuration (the bootstrap data a TalosConfig may carry) whose token sits
    /// behind a tag that does not fit it: the YAML parser's message quoted the token.
    #[test]
    fn unreadable_configurations_never_quote_the_value() {
        let text = "version: v1alpha1\nmachine:\n  type: worker\n  token: !!bool abcdef.0123456789abcdef\n";
        let err = from_yaml(text).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Parse {
                    source: crate::parse::InputError::Syntax(crate::parse::SyntaxError {
                        line: Some(4),
                        column: Some(10),
                        ..
                    }),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("parsing machine configuration: not valid YAML: "),
            "{err}"
        );
        assert!(
            !format!("{err} {err:?}").contains("0123456789abcdef"),
            "{err:?}"
        );
    }

    #[test]
    fn endpoints_are_checked_like_talosctl() {
        assert_eq!(
            Endpoint::parse("https://10.0.0.1:6443").unwrap(),
            Endpoint {
                host: "10.0.0.1".into(),
                port: 6443
            }
        );
        assert_eq!(
            Endpoint::parse("https://[fd00::1]:6443").unwrap().host,
            "fd00::1"
        );
        for (bad, why) in [
            ("10.0.0.1:6443", "https://"),
            ("http://10.0.0.1:6443", "https://"),
            ("https://10.0.0.1", "port"),
            ("https://10.0.0.1:99999", "port must be"),
            ("https://10.0.0.1:99999", "\"99999\""),
            (
                "https://10.0.0.1:0",
                "port must be a number from 1 to 65535, not \"0\"",
            ),
            ("https://10.0.0.1:http", "not \"http\""),
            ("https://10.0.0.1:+6443", "not \"+6443\""),
            ("https://10.0.0.1: 6443", "port must be"),
            ("https://10.0.0.1:", "not \"\""),
            ("https://10.0.0.1:6443/api", "path"),
            (
                "[https://192.168.1.41:6443](https://192.168.1.41:6443)",
                "Markdown link; pass just https://192.168.1.41:6443",
            ),
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn invalid_ports_are_refused_naming_the_port() {
        for port in ["0", "65536", "99999", "http", "+6443", "-1", " 6443", ""] {
            let endpoint = format!("https://10.0.0.1:{port}");
            match Endpoint::parse(&endpoint) {
                Err(Error::Endpoint {
                    reason: EndpointProblem::InvalidPort { port: p },
                    ..
                }) => assert_eq!(p, port),
                other => panic!("{endpoint}: {other:?}"),
            }
        }
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("1"), Some(1));
        assert_eq!(
            Endpoint::parse("https://[fd00::1]:50000").unwrap().port,
            50000
        );
    }

    #[test]
    fn a_bundle_with_an_unreadable_ca_is_refused_naming_the_field() {
        let mut bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        bundle.certs.os.crt = "%%%".into();
        let err = render(
            MachineType::Worker,
            &Input::new("demo", "https://10.0.0.1:6443"),
            &bundle,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::BundleField { field, .. } if field == "certs.os.crt"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let bundle = SecretsBundle::default();
        let mut input = Input::new("demo", "https://10.0.0.1:6443");
        input.pod_subnets = vec!["10.244.0.0/99".into()];
        let err = render(MachineType::Worker, &input, &bundle)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CIDR") && err.contains("10.244.0.0/99"),
            "{err}"
        );
        let mut input = Input::new("", "https://10.0.0.1:6443");
        assert!(render(MachineType::Worker, &input, &bundle).is_err());
        input.cluster_name = "demo".into();
        input.kubernetes_version = "latest".into();
        assert!(
            render(MachineType::Worker, &input, &bundle)
                .unwrap_err()
                .to_string()
                .contains("Kubernetes version")
        );
    }
}
