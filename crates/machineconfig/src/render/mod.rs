//! Rendering of controlplane and worker configurations, field for field what
//! `talosctl gen config` writes for each version contract (checked against talosctl in tests).

mod multidoc;
mod v1alpha1;

use serde_json::{Value, json};

use crate::secrets::{SecretsBundle, decode_pem};
use crate::{Contract, EndpointProblem, Error};

/// The Talos release whose installer image and defaults we use when none is given.
pub const DEFAULT_TALOS_VERSION: &str = "v1.13.0";
/// The Kubernetes version talosctl v1.13 defaults to.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.36.0";

/// What `talosctl gen config` of the Talos release that introduced a contract uses when it is
/// not told: that release, its Kubernetes version and its installer image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub talos_version: &'static str,
    pub kubernetes_version: &'static str,
    pub installer_image: &'static str,
}

impl Defaults {
    pub fn of(contract: Contract) -> Defaults {
        if contract.at_least(1, 14) {
            // From v1.14 the installer comes from the Image Factory (the empty schematic):
            // ghcr.io/siderolabs/installer is no longer published.
            Defaults {
                talos_version: "v1.14.1",
                kubernetes_version: "1.37.0",
                installer_image: "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.14.1",
            }
        } else {
            Defaults {
                talos_version: DEFAULT_TALOS_VERSION,
                kubernetes_version: DEFAULT_KUBERNETES_VERSION,
                installer_image: "ghcr.io/siderolabs/installer:v1.13.0",
            }
        }
    }
}

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
    /// Defaults as `talosctl gen config <cluster> <endpoint>` uses them, for
    /// [`Contract::DEFAULT`].
    pub fn new(cluster_name: &str, endpoint: &str) -> Input {
        Input::for_contract(cluster_name, endpoint, Contract::DEFAULT)
    }

    /// Defaults as `talosctl gen config --talos-version <contract>` of the release that
    /// introduced `contract` uses them ([`Defaults::of`]).
    pub fn for_contract(cluster_name: &str, endpoint: &str, contract: Contract) -> Input {
        let defaults = Defaults::of(contract);
        Input {
            cluster_name: cluster_name.to_owned(),
            endpoint: endpoint.to_owned(),
            kubernetes_version: defaults.kubernetes_version.to_owned(),
            contract,
            dns_domain: "cluster.local".to_owned(),
            pod_subnets: vec!["10.244.0.0/16".to_owned()],
            service_subnets: vec!["10.96.0.0/12".to_owned()],
            install_disk: "/dev/sda".to_owned(),
            install_image: defaults.installer_image.to_owned(),
            hostname: None,
        }
    }

    /// The Kubernetes version without its leading `v`.
    fn kubernetes_version(&self) -> &str {
        self.kubernetes_version.trim_start_matches('v')
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
            crate::validate::parse_cidr(cidr).map_err(|r| input("CIDR", cidr, &r.to_string()))?;
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

/// Render the configuration documents for `machine_type`: for contracts v1.10 to v1.13 the
/// v1alpha1 document, then (v1.12 on) a HostnameConfig document; from v1.14 the v1alpha1
/// document's remainder and the multi-documents that replaced the rest of it.
pub fn render(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
) -> Result<Vec<Value>, Error> {
    let endpoint = input.check()?;
    // Fail early on a bundle whose PEM fields are unreadable, naming the field.
    decode_pem(&bundle.certs.os.crt).map_err(|source| Error::BundleField {
        field: "certs.os.crt".into(),
        source,
    })?;
    if input.contract.at_least(1, 14) {
        multidoc::render(machine_type, input, bundle)
    } else {
        Ok(v1alpha1::render(machine_type, input, &endpoint, bundle))
    }
}

/// HostnameConfig: a given hostname, else a stable generated one (Talos refuses both).
fn hostname_document(hostname: Option<&str>) -> Value {
    match hostname {
        Some(h) => json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "hostname": h}),
        None => json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}),
    }
}

/// The PodSecurity admission plugin's configuration Talos generates.
fn pod_security_configuration() -> Value {
    json!({
        "apiVersion": "pod-security.admission.config.k8s.io/v1alpha1",
        "defaults": {
            "audit": "restricted", "audit-version": "latest",
            "enforce": "baseline", "enforce-version": "latest",
            "warn": "restricted", "warn-version": "latest",
        },
        "exemptions": {"namespaces": ["kube-system"], "runtimeClasses": [], "usernames": []},
        "kind": "PodSecurityConfiguration",
    })
}

/// The API server's audit policy Talos generates.
fn audit_policy() -> Value {
    json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]})
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
