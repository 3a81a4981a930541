//! Table tests for the configuration validator (`src/validate.rs`): every rule there has a case
//! that applies one edit to a valid rendered configuration and states the problem it must cause,
//! in every mode and with and without `strict`. The same edits are then given to the real
//! `talosctl validate`, which must agree (or the difference must be listed in
//! [`KNOWN_DIFFERENCES`]).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use machineconfig::validate::Problem;
use machineconfig::{Contract, Input, MachineType, Mode, Report, SecretsBundle, render, validate};
use serde_json::{Value, json};
use testkit::tools::{Tool, locate};

const MODES: [Mode; 3] = [Mode::Metal, Mode::Cloud, Mode::Container];
const STRICT: [bool; 2] = [false, true];

/// The configuration a case starts from: rendered for the default contract (v1.13), or for
/// v1.14 (`…114`, checked against talosctl v1.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Controlplane,
    Worker,
    Controlplane114,
    Worker114,
}

impl Base {
    const ALL: [Base; 4] = [
        Base::Controlplane,
        Base::Worker,
        Base::Controlplane114,
        Base::Worker114,
    ];

    fn contract(self) -> Contract {
        match self {
            Base::Controlplane | Base::Worker => Contract::DEFAULT,
            Base::Controlplane114 | Base::Worker114 => Contract::NEWEST,
        }
    }

    fn talosctl(self) -> Tool {
        match self {
            Base::Controlplane | Base::Worker => Tool::Talosctl,
            Base::Controlplane114 | Base::Worker114 => Tool::Talosctl114,
        }
    }
}

/// What the edit must cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Error,
    Warning,
    /// Nothing: a control showing where a rule deliberately does not fire.
    Clean,
}

/// The (mode, strict) combinations a rule (or a known difference) applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    MetalOnly,
    NotMetal,
    StrictOnly,
    NotStrict,
}

impl When {
    fn applies(self, mode: Mode, strict: bool) -> bool {
        match self {
            When::Always => true,
            When::MetalOnly => mode == Mode::Metal,
            When::NotMetal => mode != Mode::Metal,
            When::StrictOnly => strict,
            When::NotStrict => !strict,
        }
    }
}

type Edit = fn(&mut Vec<Value>);

struct Case {
    name: &'static str,
    base: Base,
    edit: Edit,
    outcome: Outcome,
    /// The `path` of the one new Problem.
    path: &'static str,
    /// A substring of its message.
    message: &'static str,
    /// Where the rule fires; elsewhere the edit must cause no problem at all.
    when: When,
    /// What talosctl's output contains when it flags the same thing (all of these); empty when
    /// talosctl has no such check (the case must then be in KNOWN_DIFFERENCES).
    talosctl: &'static [&'static str],
}

/// Where `talosctl validate` (v1.13) and our validator disagree on a case, in the combinations
/// `when` selects. The talosctl test checks that these really differ and that nothing else does.
struct Difference {
    case: &'static str,
    when: When,
    why: &'static str,
}

const KNOWN_DIFFERENCES: &[Difference] = &[
    Difference {
        case: "hostname not a DNS name",
        when: When::Always,
        why: "talosctl only rejects over-long hostnames; we require a DNS name",
    },
    Difference {
        case: "unknown machine field",
        when: When::NotStrict,
        why: "talosctl's decoder refuses unknown keys always (--strict only escalates warnings); we only with strict",
    },
    Difference {
        case: "unknown root field",
        when: When::NotStrict,
        why: "talosctl's decoder refuses unknown keys always; we only with strict",
    },
    Difference {
        case: "unknown install field",
        when: When::NotStrict,
        why: "talosctl's decoder refuses unknown keys always; we only with strict",
    },
    Difference {
        case: "unknown interface field",
        when: When::NotStrict,
        why: "talosctl's decoder refuses unknown keys always; we only with strict",
    },
    Difference {
        case: "unknown field in an unchecked section",
        when: When::Always,
        why: "we look for unknown keys only in some sections; talosctl refuses them everywhere",
    },
    Difference {
        case: "unknown field in HostnameConfig",
        when: When::Always,
        why: "we do not decode the fields of other documents; talosctl refuses unknown keys there",
    },
    Difference {
        case: "unknown config version",
        when: When::Always,
        why: "talosctl does not look at the version field's value",
    },
    Difference {
        case: "missing config version",
        when: When::Always,
        why: "talosctl accepts a v1alpha1 document without version",
    },
    Difference {
        case: "empty machine token",
        when: When::Always,
        why: "talosctl accepts an empty machine.token",
    },
    Difference {
        case: "control plane without OS CA certificate",
        when: When::Always,
        why: "talosctl requires only machine.ca.key on control planes, not the certificate",
    },
    Difference {
        case: "extraKernelArgs with grubUseUKICmdline",
        when: When::NotMetal,
        why: "talosctl checks this only in metal mode; we in every mode",
    },
    Difference {
        case: "invalid install image",
        when: When::Always,
        why: "talosctl does not check image references",
    },
    Difference {
        case: "invalid kubelet image",
        when: When::Always,
        why: "talosctl does not check image references",
    },
    Difference {
        case: "non-string label value",
        when: When::Always,
        why: "talosctl decodes the number 5 as the label value \"5\"",
    },
    Difference {
        case: "nameserver not an IP address",
        when: When::Always,
        why: "our advisory warning only (validate.rs: Talos accepts this)",
    },
    Difference {
        case: "pod subnet without prefix",
        when: When::Always,
        why: "our advisory warning only (validate.rs: Talos's validator accepts this)",
    },
    Difference {
        case: "service subnet not an address",
        when: When::Always,
        why: "our advisory warning only (validate.rs: Talos's validator accepts this)",
    },
    Difference {
        case: "pod subnet prefix too long",
        when: When::Always,
        why: "our advisory warning only (validate.rs: Talos's validator accepts this)",
    },
    Difference {
        case: "endpoint with ftp scheme",
        when: When::Always,
        why: "talosctl accepts any URL scheme for the control plane endpoint",
    },
    Difference {
        case: "dnsDomain with underscore",
        when: When::Always,
        why: "talosctl accepts '_' in cluster.network.dnsDomain",
    },
    Difference {
        case: "custom CNI without URLs",
        when: When::NotStrict,
        why: "talosctl only warns (an error with --strict); we always error",
    },
    Difference {
        case: "control plane without Kubernetes CA key",
        when: When::Always,
        why: "talosctl does not require cluster.ca on control planes",
    },
    Difference {
        case: "control plane without etcd CA",
        when: When::Always,
        why: "talosctl does not require cluster.etcd.ca on control planes",
    },
    Difference {
        case: "worker without Kubernetes CA certificate",
        when: When::Always,
        why: "talosctl does not require cluster.ca.crt (or acceptedCAs) on workers",
    },
];

/// Set the value at `pointer`, whose first segment is the document index; the parent must exist.
fn set(docs: &mut [Value], pointer: &str, value: Value) {
    let (parent, key) = split(pointer);
    let (doc, rest) = doc_of(docs, parent);
    match doc.pointer_mut(rest) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => {
            let i: usize = key.parse().unwrap();
            items[i] = value;
        }
        other => panic!("{pointer}: parent is {other:?}"),
    }
}

/// Remove the value at `pointer`; it must exist.
fn remove(docs: &mut [Value], pointer: &str) {
    let (parent, key) = split(pointer);
    let (doc, rest) = doc_of(docs, parent);
    let removed = doc
        .pointer_mut(rest)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(&key));
    assert!(removed.is_some(), "{pointer} does not exist");
}

fn split(pointer: &str) -> (&str, String) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    (parent, key.replace("~1", "/").replace("~0", "~"))
}

fn doc_of<'a, 'p>(docs: &'a mut [Value], pointer: &'p str) -> (&'a mut Value, &'p str) {
    let rest = pointer.strip_prefix('/').unwrap();
    let (index, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (&mut docs[index.parse::<usize>().unwrap()], rest)
}

/// A copy of the value at `pointer` (first segment: document index).
fn get(docs: &[Value], pointer: &str) -> Value {
    let rest = pointer.strip_prefix('/').unwrap();
    let (index, rest) = rest.split_once('/').unwrap();
    docs[index.parse::<usize>().unwrap()]
        .pointer(&format!("/{rest}"))
        .unwrap()
        .clone()
}

fn cases() -> Vec<Case> {
    let mut cases = cases_v113();
    cases.extend(cases_v114());
    cases.extend(cases_v114_documents());
    cases.extend(cases_v114_v1alpha1());
    cases
}

fn cases_v113() -> Vec<Case> {
    use Base::{Controlplane as Cp, Worker};
    use Outcome::{Clean, Error, Warning};
    use When::{Always, MetalOnly, StrictOnly};
    vec![
        // ---- documents ----
        Case {
            name: "non-mapping document",
            base: Worker,
            edit: |d| d.push(json!("x")),
            outcome: Error,
            path: "document 2",
            message: "must be a YAML mapping",
            when: Always,
            talosctl: &["expected a YAML document"],
        },
        Case {
            name: "unknown document kind",
            base: Worker,
            edit: |d| d.push(json!({"apiVersion": "v1alpha1", "kind": "FooConfig"})),
            outcome: Error,
            path: "FooConfig",
            message: "unknown document kind \"FooConfig\"",
            when: Always,
            talosctl: &["\"FooConfig\" \"v1alpha1\": not registered"],
        },
        Case {
            name: "duplicate HostnameConfig",
            base: Worker,
            edit: |d| d.push(d[1].clone()),
            outcome: Error,
            path: "HostnameConfig",
            message: "duplicate document HostnameConfig",
            when: Always,
            talosctl: &["duplicate document v1alpha1/HostnameConfig/ is not allowed"],
        },
        Case {
            name: "duplicate v1alpha1 document",
            base: Worker,
            edit: |d| d.push(d[0].clone()),
            outcome: Error,
            path: "v1alpha1",
            message: "duplicate v1alpha1 document",
            when: Always,
            talosctl: &["duplicate document /v1alpha1/ is not allowed"],
        },
        Case {
            name: "empty document counts as v1alpha1",
            base: Cp,
            edit: |d| d.push(json!({})),
            outcome: Error,
            path: "v1alpha1",
            message: "duplicate v1alpha1 document",
            when: Always,
            talosctl: &["duplicate document /v1alpha1/ is not allowed"],
        },
        // ---- HostnameConfig ----
        Case {
            name: "HostnameConfig with auto and hostname",
            base: Worker,
            edit: |d| set(d, "/1/hostname", json!("h")),
            outcome: Error,
            path: "HostnameConfig",
            message: "'auto' and 'hostname' cannot be set at the same time",
            when: Always,
            talosctl: &["HostnameConfig: 'auto' and 'hostname' cannot be set at the same time"],
        },
        Case {
            name: "HostnameConfig with neither",
            base: Worker,
            edit: |d| remove(d, "/1/auto"),
            outcome: Error,
            path: "HostnameConfig",
            message: "either 'auto' or 'hostname' must be set",
            when: Always,
            talosctl: &["HostnameConfig: either 'auto' or 'hostname' must be set"],
        },
        Case {
            name: "HostnameConfig auto off is unset",
            base: Cp,
            edit: |d| set(d, "/1/auto", json!("off")),
            outcome: Error,
            path: "HostnameConfig",
            message: "either 'auto' or 'hostname' must be set",
            when: Always,
            talosctl: &["HostnameConfig: either 'auto' or 'hostname' must be set"],
        },
        Case {
            name: "HostnameConfig unknown auto",
            base: Worker,
            edit: |d| set(d, "/1/auto", json!("bogus")),
            outcome: Error,
            path: "HostnameConfig.auto",
            message: "unknown value \"bogus\"",
            when: Always,
            talosctl: &["bogus does not belong to AutoHostnameKind values"],
        },
        Case {
            name: "hostname too long",
            base: Worker,
            edit: |d| {
                remove(d, "/1/auto");
                set(d, "/1/hostname", json!("a".repeat(300)));
            },
            outcome: Error,
            path: "HostnameConfig.hostname",
            message: " is not a valid hostname",
            when: Always,
            talosctl: &["HostnameConfig: fqdn is too long: 300", "invalid hostname"],
        },
        Case {
            name: "hostname not a DNS name",
            base: Worker,
            edit: |d| {
                remove(d, "/1/auto");
                set(d, "/1/hostname", json!("-bad-"));
            },
            outcome: Error,
            path: "HostnameConfig.hostname",
            message: "\"-bad-\" is not a valid hostname",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "stableHostname with HostnameConfig",
            base: Worker,
            edit: |d| set(d, "/0/machine/features/stableHostname", json!(true)),
            outcome: Error,
            path: "machine.features.stableHostname",
            message: "stable hostname is already set in v1alpha1 config",
            when: Always,
            talosctl: &["stable hostname is already set in v1alpha1 config"],
        },
        Case {
            name: "static hostname with HostnameConfig",
            base: Worker,
            edit: |d| set(d, "/0/machine/network", json!({"hostname": "h"})),
            outcome: Error,
            path: "machine.network.hostname",
            message: "static hostname is already set in v1alpha1 config",
            when: Always,
            talosctl: &["static hostname is already set in v1alpha1 config"],
        },
        // ---- decoding ----
        Case {
            name: "unknown machine field",
            base: Cp,
            edit: |d| set(d, "/0/machine/bogus", json!(1)),
            outcome: Error,
            path: "machine.bogus",
            message: "unknown field",
            when: StrictOnly,
            talosctl: &["unknown keys found during decoding", "machine:", "bogus: 1"],
        },
        Case {
            name: "unknown root field",
            base: Worker,
            edit: |d| set(d, "/0/bogus", json!(1)),
            outcome: Error,
            path: "bogus",
            message: "unknown field",
            when: StrictOnly,
            talosctl: &["unknown keys found during decoding", "bogus: 1"],
        },
        Case {
            name: "unknown install field",
            base: Cp,
            edit: |d| set(d, "/0/machine/install/bogus", json!(1)),
            outcome: Error,
            path: "machine.install.bogus",
            message: "unknown field",
            when: StrictOnly,
            talosctl: &["unknown keys found during decoding", "install:", "bogus: 1"],
        },
        Case {
            name: "unknown interface field",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"interface": "eth0", "bogus": 1}]}),
                );
            },
            outcome: Error,
            path: "machine.network.interfaces[0].bogus",
            message: "unknown field",
            when: StrictOnly,
            talosctl: &[
                "unknown keys found during decoding",
                "interfaces:",
                "bogus: 1",
            ],
        },
        Case {
            name: "unknown field in an unchecked section",
            base: Cp,
            edit: |d| set(d, "/0/cluster/discovery/bogus", json!(1)),
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[
                "unknown keys found during decoding",
                "discovery:",
                "bogus: 1",
            ],
        },
        Case {
            name: "unknown field in HostnameConfig",
            base: Worker,
            edit: |d| set(d, "/1/bogus", json!(1)),
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &["unknown keys found during decoding", "bogus: 1"],
        },
        Case {
            name: "illegal base64",
            base: Cp,
            edit: |d| set(d, "/0/machine/ca/crt", json!("!!!")),
            outcome: Error,
            path: "machine.ca.crt",
            message: "illegal base64 data",
            when: Always,
            talosctl: &["illegal base64 data at input byte 0"],
        },
        Case {
            name: "map field not a mapping",
            base: Cp,
            edit: |d| set(d, "/0/machine/sysctls", json!("x")),
            outcome: Error,
            path: "machine.sysctls",
            message: "must be a mapping",
            when: Always,
            talosctl: &["cannot construct !!str `x` into map[string]string"],
        },
        Case {
            name: "list field not a list",
            base: Worker,
            edit: |d| set(d, "/0/machine/certSANs", json!("x")),
            outcome: Error,
            path: "machine.certSANs",
            message: "must be a list",
            when: Always,
            talosctl: &["cannot construct !!str `x` into []string"],
        },
        // ---- v1alpha1 document ----
        Case {
            name: "unknown config version",
            base: Cp,
            edit: |d| set(d, "/0/version", json!("v2")),
            outcome: Error,
            path: "version",
            message: "unknown config version \"v2\"",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "missing config version",
            base: Cp,
            edit: |d| remove(d, "/0/version"),
            outcome: Error,
            path: "version",
            message: "missing config version (v1alpha1)",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "persist false",
            base: Cp,
            edit: |d| set(d, "/0/persist", json!(false)),
            outcome: Error,
            path: "persist",
            message: "persist must be true",
            when: Always,
            talosctl: &[".persist should be enabled"],
        },
        Case {
            name: "no machine section",
            base: Cp,
            edit: |d| remove(d, "/0/machine"),
            outcome: Error,
            path: "machine",
            message: "machine instructions are required",
            when: Always,
            talosctl: &["machine instructions are required"],
        },
        Case {
            name: "no cluster section",
            base: Worker,
            edit: |d| remove(d, "/0/cluster"),
            outcome: Error,
            path: "cluster",
            message: "cluster instructions are required",
            when: Always,
            talosctl: &["cluster instructions are required"],
        },
        Case {
            name: "machine type join",
            base: Worker,
            edit: |d| set(d, "/0/machine/type", json!("join")),
            outcome: Warning,
            path: "machine.type",
            message: "treated as worker; set machine.type: worker explicitly",
            when: Always,
            talosctl: &["use \"worker\" instead of \"join\" for machine type"],
        },
        Case {
            name: "machine type missing",
            base: Worker,
            edit: |d| remove(d, "/0/machine/type"),
            outcome: Warning,
            path: "machine.type",
            message: "treated as worker",
            when: Always,
            talosctl: &["use \"worker\" instead of \"\" for machine type"],
        },
        Case {
            name: "unknown machine type",
            base: Worker,
            edit: |d| set(d, "/0/machine/type", json!("bogus")),
            outcome: Error,
            path: "machine.type",
            message: "unknown machine type \"bogus\"",
            when: Always,
            talosctl: &["unknown machine type \"bogus\""],
        },
        Case {
            name: "machine type init is a control plane",
            base: Cp,
            edit: |d| set(d, "/0/machine/type", json!("init")),
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "empty machine token",
            base: Cp,
            edit: |d| set(d, "/0/machine/token", json!("")),
            outcome: Error,
            path: "machine.token",
            message: "a machine token is required",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "control plane without OS CA key",
            base: Cp,
            edit: |d| set(d, "/0/machine/ca/key", json!("")),
            outcome: Error,
            path: "machine.ca",
            message: "control plane machines need the OS CA certificate and key",
            when: Always,
            talosctl: &["issuing CA key is required for controlplane nodes (.machine.ca.key)"],
        },
        Case {
            name: "control plane without OS CA certificate",
            base: Cp,
            edit: |d| set(d, "/0/machine/ca/crt", json!("")),
            outcome: Error,
            path: "machine.ca",
            message: "control plane machines need the OS CA certificate and key",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "worker with OS CA key",
            base: Worker,
            edit: |d| {
                let crt = get(d, "/0/machine/ca/crt");
                set(d, "/0/machine/ca/key", crt);
            },
            outcome: Error,
            path: "machine.ca.key",
            message: "worker machines must not carry the OS CA key",
            when: Always,
            talosctl: &["CA key is not allowed on non-controlplane nodes (.machine.ca)"],
        },
        Case {
            name: "worker without OS CA certificate",
            base: Worker,
            edit: |d| set(d, "/0/machine/ca/crt", json!("")),
            outcome: Error,
            path: "machine.ca.crt",
            message: "a trusted OS CA certificate is required",
            when: Always,
            talosctl: &[
                "trusted CA certificates are required on non-controlplane nodes (.machine.ca.crt",
            ],
        },
        Case {
            name: "worker with acceptedCAs instead of machine.ca.crt",
            base: Worker,
            edit: |d| {
                let crt = get(d, "/0/cluster/ca/crt");
                set(d, "/0/machine/ca/crt", json!(""));
                set(d, "/0/machine/acceptedCAs", json!([{"crt": crt}]));
            },
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        // ---- install ----
        Case {
            name: "no install disk",
            base: Cp,
            edit: |d| remove(d, "/0/machine/install/disk"),
            outcome: Error,
            path: "machine.install",
            message: "an install disk or diskSelector is required in metal mode",
            when: MetalOnly,
            talosctl: &["either install disk or diskSelector should be defined"],
        },
        Case {
            name: "diskSelector instead of disk",
            base: Worker,
            edit: |d| {
                remove(d, "/0/machine/install/disk");
                set(
                    d,
                    "/0/machine/install/diskSelector",
                    json!({"size": ">10GB"}),
                );
            },
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "extraKernelArgs with grubUseUKICmdline",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/machine/install/extraKernelArgs",
                    json!(["console=ttyS0"]),
                )
            },
            outcome: Error,
            path: "machine.install.extraKernelArgs",
            message: "extraKernelArgs and grubUseUKICmdline can't be used together",
            when: Always,
            talosctl: &[
                "install.extraKernelArgs and install.grubUseUKICmdline can't be used together",
            ],
        },
        Case {
            name: "install extensions",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/machine/install/extensions",
                    json!([{"image": "ghcr.io/siderolabs/gvisor:20250505.0"}]),
                );
            },
            outcome: Warning,
            path: "machine.install.extensions",
            message: "deprecated: use a boot asset with extensions instead",
            when: Always,
            talosctl: &[".machine.install.extensions is deprecated"],
        },
        Case {
            name: "invalid install image",
            base: Cp,
            edit: |d| set(d, "/0/machine/install/image", json!("bad image")),
            outcome: Error,
            path: "machine.install.image",
            message: "invalid image reference \"bad image\"",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "invalid kubelet image",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/machine/kubelet/image",
                    json!("ghcr.io/siderolabs/kubelet:"),
                )
            },
            outcome: Error,
            path: "machine.kubelet.image",
            message: "invalid image reference \"ghcr.io/siderolabs/kubelet:\"",
            when: Always,
            talosctl: &[],
        },
        // ---- node labels ----
        Case {
            name: "invalid label key",
            base: Cp,
            edit: |d| set(d, "/0/machine/nodeLabels/-bad", json!("x")),
            outcome: Error,
            path: "machine.nodeLabels.-bad",
            message: "invalid label key",
            when: Always,
            talosctl: &["invalid machine node labels", "name \"-bad\" is invalid"],
        },
        Case {
            name: "invalid label value",
            base: Cp,
            edit: |d| set(d, "/0/machine/nodeLabels/ok", json!("-bad")),
            outcome: Error,
            path: "machine.nodeLabels.ok",
            message: "invalid label value",
            when: Always,
            talosctl: &[
                "invalid machine node labels",
                "label value \"-bad\" is invalid",
            ],
        },
        Case {
            name: "non-string label value",
            base: Worker,
            edit: |d| set(d, "/0/machine/nodeLabels", json!({"ok": 5})),
            outcome: Error,
            path: "machine.nodeLabels.ok",
            message: "invalid label value",
            when: Always,
            talosctl: &[],
        },
        // ---- machine network ----
        Case {
            name: "vip on worker",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"interface": "eth0", "vip": {"ip": "10.0.0.5"}}]}),
                );
            },
            outcome: Error,
            path: "machine.network.interfaces[0].vip",
            message: "virtual IPs are only allowed on control plane machines",
            when: Always,
            talosctl: &["virtual (shared) IP is not allowed on non-controlplane nodes"],
        },
        Case {
            name: "vip on control plane",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"interface": "eth0", "vip": {"ip": "10.0.0.5"}}]}),
                );
            },
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "invalid interface address",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"interface": "eth0", "addresses": ["10.0.0.300/24"]}]}),
                );
            },
            outcome: Error,
            path: "machine.network.interfaces[0].addresses[0]",
            message: "invalid address \"10.0.0.300/24\"",
            when: Always,
            talosctl: &[
                "[networking.os.device.addresses]",
                "invalid CIDR address: 10.0.0.300/24",
            ],
        },
        Case {
            name: "non-string interface address",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"interface": "eth0", "addresses": [5]}]}),
                );
            },
            outcome: Error,
            path: "machine.network.interfaces[0].addresses[0]",
            message: "invalid address",
            when: Always,
            talosctl: &[
                "[networking.os.device.addresses]",
                "failed to parse IP address \"5\"",
            ],
        },
        Case {
            name: "interface without name or selector",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"interfaces": [{"addresses": ["10.0.0.3/24"]}]}),
                );
            },
            outcome: Error,
            path: "machine.network.interfaces[0]",
            message: "an interface name or deviceSelector is required",
            when: Always,
            talosctl: &[
                "[networking.os.device.interface], [networking.os.device.deviceSelector]: required either config section to be set",
            ],
        },
        Case {
            name: "nameserver not an IP address",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/machine/network",
                    json!({"nameservers": ["dns.example.com"]}),
                )
            },
            outcome: Warning,
            path: "machine.network.nameservers[0]",
            message: "not an IP address; it will not be used",
            when: Always,
            talosctl: &[],
        },
        // ---- cluster ----
        Case {
            name: "no control plane endpoint",
            base: Worker,
            edit: |d| remove(d, "/0/cluster/controlPlane/endpoint"),
            outcome: Error,
            path: "cluster.controlPlane.endpoint",
            message: "a control plane endpoint is required",
            when: Always,
            talosctl: &["cluster controlplane endpoint is required"],
        },
        Case {
            name: "empty control plane endpoint",
            base: Cp,
            edit: |d| set(d, "/0/cluster/controlPlane/endpoint", json!("")),
            outcome: Error,
            path: "cluster.controlPlane.endpoint",
            message: "a control plane endpoint is required",
            when: Always,
            talosctl: &["invalid controlplane endpoint: hostname must not be blank"],
        },
        Case {
            name: "endpoint without scheme",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/controlPlane/endpoint",
                    json!("10.0.0.1:6443"),
                )
            },
            outcome: Error,
            path: "cluster.controlPlane.endpoint",
            message: "invalid URL \"10.0.0.1:6443\"",
            when: Always,
            talosctl: &["parse \"10.0.0.1:6443\"", "URL cannot contain colon"],
        },
        Case {
            name: "endpoint with ftp scheme",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/controlPlane/endpoint",
                    json!("ftp://10.0.0.1:6443"),
                )
            },
            outcome: Error,
            path: "cluster.controlPlane.endpoint",
            message: "invalid URL \"ftp://10.0.0.1:6443\"",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "invalid dnsDomain",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/dnsDomain", json!("-bad.local")),
            outcome: Error,
            path: "cluster.network.dnsDomain",
            message: "\"-bad.local\" is not a valid DNS name",
            when: Always,
            talosctl: &["\"-bad.local\" is not a valid DNS name"],
        },
        Case {
            name: "dnsDomain with underscore",
            base: Worker,
            edit: |d| set(d, "/0/cluster/network/dnsDomain", json!("my_cluster.local")),
            outcome: Error,
            path: "cluster.network.dnsDomain",
            message: "\"my_cluster.local\" is not a valid DNS name",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "pod subnet without prefix",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/podSubnets", json!(["10.244.0.0"])),
            outcome: Warning,
            path: "cluster.network.podSubnets[0]",
            message: "\"10.244.0.0\" is not a CIDR (expected 10.244.0.0/16)",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "service subnet not an address",
            base: Worker,
            edit: |d| set(d, "/0/cluster/network/serviceSubnets", json!(["x/12"])),
            outcome: Warning,
            path: "cluster.network.serviceSubnets[0]",
            message: "\"x/12\": \"x\" is not an IP address",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "pod subnet prefix too long",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/podSubnets", json!(["10.244.0.0/40"])),
            outcome: Warning,
            path: "cluster.network.podSubnets[0]",
            message: "\"10.244.0.0/40\": prefix must be 0 to 32",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "unknown CNI",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/cni", json!({"name": "weave"})),
            outcome: Error,
            path: "cluster.network.cni.name",
            message: "unknown CNI \"weave\": use flannel, custom or none",
            when: Always,
            talosctl: &["cni name should be one of [\"flannel\", \"custom\", \"none\"]"],
        },
        Case {
            name: "CNI without name",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/cni", json!({})),
            outcome: Error,
            path: "cluster.network.cni.name",
            message: "the CNI needs a name: flannel, custom or none",
            when: Always,
            talosctl: &["cni name should be one of [\"flannel\", \"custom\", \"none\"]"],
        },
        Case {
            name: "unknown CNI on worker is not checked",
            base: Worker,
            edit: |d| set(d, "/0/cluster/network/cni", json!({"name": "weave"})),
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "custom CNI without URLs",
            base: Cp,
            edit: |d| set(d, "/0/cluster/network/cni", json!({"name": "custom"})),
            outcome: Error,
            path: "cluster.network.cni.urls",
            message: "a custom CNI needs at least one manifest URL",
            when: Always,
            talosctl: &["\"urls\" field should not be empty for \"custom\" CNI"],
        },
        Case {
            name: "control plane without Kubernetes CA key",
            base: Cp,
            edit: |d| set(d, "/0/cluster/ca/key", json!("")),
            outcome: Error,
            path: "cluster.ca",
            message: "control plane machines need the Kubernetes CA certificate and key",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "control plane without etcd CA",
            base: Cp,
            edit: |d| set(d, "/0/cluster/etcd/ca/crt", json!("")),
            outcome: Error,
            path: "cluster.etcd.ca",
            message: "the etcd CA is required on control plane machines",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "worker with Kubernetes CA key",
            base: Worker,
            edit: |d| {
                let crt = get(d, "/0/cluster/ca/crt");
                set(d, "/0/cluster/ca/key", crt);
            },
            outcome: Error,
            path: "cluster.ca.key",
            message: "worker machines must not carry the Kubernetes CA key",
            when: Always,
            talosctl: &["CA key is not allowed on non-controlplane nodes (.cluster.ca)"],
        },
        Case {
            name: "worker without Kubernetes CA certificate",
            base: Worker,
            edit: |d| set(d, "/0/cluster/ca/crt", json!("")),
            outcome: Error,
            path: "cluster.ca.crt",
            message: "a trusted Kubernetes CA certificate is required",
            when: Always,
            talosctl: &[],
        },
        Case {
            name: "etcd on worker",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/etcd",
                    json!({"advertisedSubnets": ["10.0.0.0/8"]}),
                )
            },
            outcome: Error,
            path: "cluster.etcd",
            message: "etcd configuration is only allowed on control plane machines",
            when: Always,
            talosctl: &["etcd config is only allowed on control plane machines"],
        },
        Case {
            name: "discovery without cluster id",
            base: Cp,
            edit: |d| remove(d, "/0/cluster/id"),
            outcome: Error,
            path: "cluster.discovery",
            message: "discovery requires cluster.id and cluster.secret",
            when: Always,
            talosctl: &["cluster discovery service requires .cluster.id"],
        },
        Case {
            name: "discovery without cluster secret",
            base: Worker,
            edit: |d| set(d, "/0/cluster/secret", json!("")),
            outcome: Error,
            path: "cluster.discovery",
            message: "discovery requires cluster.id and cluster.secret",
            when: Always,
            talosctl: &["cluster discovery service requires .cluster.secret"],
        },
        Case {
            name: "inline manifest without name",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/inlineManifests",
                    json!([{"name": "", "contents": "x"}]),
                );
            },
            outcome: Error,
            path: "cluster.inlineManifests[0].name",
            message: "inline manifest name can't be empty",
            when: Always,
            talosctl: &["inline manifest name can't be empty"],
        },
        Case {
            name: "duplicate inline manifest",
            base: Cp,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/inlineManifests",
                    json!([{"name": "a", "contents": "x"}, {"name": "a", "contents": "y"}]),
                );
            },
            outcome: Error,
            path: "cluster.inlineManifests[1].name",
            message: "inline manifest name \"a\" is duplicate",
            when: Always,
            talosctl: &["inline manifest name \"a\" is duplicate"],
        },
    ]
}

/// Remove every document of `kind`; there must be one.
fn drop_kind(docs: &mut Vec<Value>, kind: &str) {
    let before = docs.len();
    docs.retain(|d| d.get("kind").and_then(Value::as_str) != Some(kind));
    assert!(docs.len() < before, "no {kind} document");
}

/// A conflict case: `field` (under the v1alpha1 document) set to `value` beside the document that
/// replaced it, in the v1.14 `base`.
macro_rules! conflict {
    ($name:literal, $base:expr, $pointer:literal, $value:expr, $path:literal, $says:literal) => {
        Case {
            name: $name,
            base: $base,
            edit: |d| set(d, $pointer, $value),
            outcome: Outcome::Error,
            path: $path,
            message: $says,
            when: When::Always,
            talosctl: &[$says],
        }
    };
}

/// Talos v1.14's rules for multi-document configurations: a v1alpha1 field beside the document
/// that replaced it, and the rules that span documents.
fn cases_v114() -> Vec<Case> {
    use Base::{Controlplane114 as Cp, Worker114 as Worker};
    use Outcome::{Clean, Error};
    use When::{Always, MetalOnly};
    vec![
        conflict!(
            "v1.14: machine.install beside UnattendedInstallConfig",
            Worker,
            "/0/machine/install",
            json!({"disk": "/dev/vda"}),
            "machine.install",
            "UnattendedInstallConfig config is incompatible with v1alpha1 config (.machine.install)"
        ),
        conflict!(
            "v1.14: machine.kubelet beside KubeletConfig",
            Worker,
            "/0/machine/kubelet",
            json!({"extraArgs": {"v": "2"}}),
            "machine.kubelet",
            "kubelet config is already set in v1alpha1 config (.machine.kubelet)"
        ),
        conflict!(
            "v1.14: cluster.clusterName beside KubeClusterConfig",
            Worker,
            "/0/cluster/clusterName",
            json!("c"),
            "cluster.clusterName",
            "cluster name is already set in the v1alpha1 config (.cluster.clusterName). Please remove it and use only the new KubeClusterConfig document to avoid conflicts"
        ),
        conflict!(
            "v1.14: cluster.controlPlane.endpoint beside KubeClusterConfig",
            Worker,
            "/0/cluster/controlPlane",
            json!({"endpoint": "https://10.0.0.1:6443"}),
            "cluster.controlPlane.endpoint",
            "cluster endpoint is already set in the v1alpha1 config (.cluster.controlPlane.endpoint). Please remove it and use only the new KubeClusterConfig document to avoid conflicts"
        ),
        conflict!(
            "v1.14: cluster.network beside KubeNetworkConfig",
            Worker,
            "/0/cluster/network",
            json!({"podSubnets": ["10.244.0.0/16"]}),
            "cluster.network",
            "cluster network config is already set in the v1alpha1 config (.machine.cluster.network). Please remove it and use only the new KubeNetworkConfig document to avoid conflicts"
        ),
        Case {
            name: "v1.14: cluster.network beside KubeFlannelCNIConfig",
            base: Cp,
            edit: |d| {
                set(d, "/0/cluster/network", json!({"cni": {"name": "flannel"}}));
                drop_kind(d, "KubeNetworkConfig");
            },
            outcome: Error,
            path: "cluster.network",
            message: "cluster network config in v1alpha1 config (.machine.cluster.network) can't be used with KubeFlannelCNIConfig document, please remove it to avoid conflicts",
            when: Always,
            talosctl: &["can't be used with KubeFlannelCNIConfig document"],
        },
        conflict!(
            "v1.14: cluster.ca beside KubeAPIServerCAConfig",
            Worker,
            "/0/cluster/ca",
            get(&base(Base::Worker114), "/0/machine/ca"),
            "cluster.ca",
            "kube-apiserver CA is already set in v1alpha1 config (.cluster.ca)"
        ),
        conflict!(
            "v1.14: cluster.apiServer beside KubeAPIServerConfig",
            Cp,
            "/0/cluster/apiServer",
            json!({"extraArgs": {"v": "2"}}),
            "cluster.apiServer",
            "kube-apiserver config is already set in v1alpha1 config (.cluster.apiServer)"
        ),
        conflict!(
            "v1.14: an encryption secret beside KubeEtcdEncryptionConfig",
            Cp,
            "/0/cluster/secretboxEncryptionSecret",
            json!("z6Z8DzXD0uUVRULvPq4YvnZbsHy2GC8q0Xl23JC8WSI="),
            "cluster.secretboxEncryptionSecret",
            "etcd encryption config is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: allowSchedulingOnControlPlanes beside KubeNodeConfig",
            Cp,
            "/0/cluster/allowSchedulingOnControlPlanes",
            json!(true),
            "cluster.allowSchedulingOnControlPlanes",
            ".cluster.allowSchedulingOnControlPlanes is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.nodeLabels beside KubeNodeConfig",
            Worker,
            "/0/machine/nodeLabels",
            json!({"a": "b"}),
            "machine.nodeLabels",
            ".machine.nodeLabels is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.nodeAnnotations beside KubeNodeConfig",
            Worker,
            "/0/machine/nodeAnnotations",
            json!({"a": "b"}),
            "machine.nodeAnnotations",
            ".machine.nodeAnnotations is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.nodeTaints beside KubeNodeConfig",
            Worker,
            "/0/machine/nodeTaints",
            json!({"a": "NoSchedule"}),
            "machine.nodeTaints",
            ".machine.nodeTaints is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: cluster.id beside DiscoveryIdentityConfig",
            Worker,
            "/0/cluster/id",
            json!("c29tZSBpZA=="),
            "cluster.id",
            "cluster identity is already configured in .cluster.id/.cluster.secret of the v1alpha1 config"
        ),
        conflict!(
            "v1.14: cluster.discovery beside DiscoveryServiceConfig",
            Worker,
            "/0/cluster/discovery",
            json!({"enabled": false}),
            "cluster.discovery",
            "discovery service is already configured in .cluster.discovery of the v1alpha1 config"
        ),
        conflict!(
            "v1.14: features.kubePrism beside KubePrismConfig",
            Worker,
            "/0/machine/features/kubePrism",
            json!({"enabled": true, "port": 7445}),
            "machine.features.kubePrism",
            "KubePrism config in v1alpha1 config (.machine.features.kubePrism) can't be used with KubePrismConfig document, please remove it to avoid conflicts"
        ),
        Case {
            name: "v1.14: cluster.serviceAccount beside KubeServiceAccountConfig",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeClusterConfig");
                set(
                    d,
                    "/0/cluster/controlPlane",
                    json!({"endpoint": "https://10.0.0.1:6443"}),
                );
                set(d, "/0/cluster/clusterName", json!("c"));
                let key = bundle().certs.k8sserviceaccount.key.clone();
                set(d, "/0/cluster/serviceAccount", json!({"key": key}));
            },
            outcome: Error,
            path: "cluster.serviceAccount",
            message: "service account is already set in v1alpha1 config (.cluster.serviceAccount)",
            when: Always,
            talosctl: &[
                "service account is already set in v1alpha1 config (.cluster.serviceAccount)",
            ],
        },
        conflict!(
            "v1.14: cluster.aggregatorCA beside KubeAggregatorCAConfig",
            Cp,
            "/0/cluster/aggregatorCA",
            get(&base(Base::Controlplane114), "/0/machine/ca"),
            "cluster.aggregatorCA",
            "kube-apiserver aggregator CA is already set in v1alpha1 config (.cluster.aggregatorCA), please remove it and use the new KubeAggregatorCAConfig document instead"
        ),
        conflict!(
            "v1.14: cluster.controllerManager beside KubeControllerManagerConfig",
            Cp,
            "/0/cluster/controllerManager",
            json!({"image": "registry.k8s.io/kube-controller-manager:v1.37.0"}),
            "cluster.controllerManager",
            "kube-controller-manager config is already set in v1alpha1 config (.cluster.controllerManager)"
        ),
        conflict!(
            "v1.14: cluster.scheduler beside KubeSchedulerConfig",
            Cp,
            "/0/cluster/scheduler",
            json!({"image": "registry.k8s.io/kube-scheduler:v1.37.0"}),
            "cluster.scheduler",
            "kube-scheduler config is already set in v1alpha1 config (.cluster.scheduler)"
        ),
        conflict!(
            "v1.14: cluster.proxy beside KubeProxyConfig",
            Cp,
            "/0/cluster/proxy",
            json!({"image": "registry.k8s.io/kube-proxy:v1.37.0"}),
            "cluster.proxy",
            "cluster proxy config in v1alpha1 config (.machine.cluster.proxy) can't be used with KubeProxyConfig document, please remove it to avoid conflicts"
        ),
        Case {
            name: "v1.14: an audit policy beside KubeAuditPolicyConfig",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeAPIServerConfig");
                set(
                    d,
                    "/0/cluster/apiServer",
                    json!({"auditPolicy": {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "None"}]}}),
                );
            },
            outcome: Error,
            path: "cluster.apiServer.auditPolicy",
            message: "audit policy config is already set in v1alpha1 config",
            when: Always,
            talosctl: &["audit policy config is already set in v1alpha1 config"],
        },
        Case {
            name: "v1.14: admission plugins beside KubeAdmissionControlConfig",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeAPIServerConfig");
                drop_kind(d, "KubeAuthorizerConfig");
                let plugins = json!([{"name": "PodSecurity", "configuration": {}}]);
                set(
                    d,
                    "/0/cluster/apiServer",
                    json!({"admissionControl": plugins}),
                );
            },
            outcome: Error,
            path: "cluster.apiServer.admissionControl",
            message: "admission control plugin config is already set in v1alpha1 config",
            when: Always,
            talosctl: &["admission control plugin config is already set in v1alpha1 config"],
        },
        conflict!(
            "v1.14: cluster.coreDNS beside KubeCoreDNSConfig",
            Cp,
            "/0/cluster/coreDNS",
            json!({"disabled": false}),
            "cluster.coreDNS",
            "CoreDNS config is already set in v1alpha1 config (.cluster.coreDNS)"
        ),
        conflict!(
            "v1.14: features.hostDNS beside ResolverConfig's hostDNS",
            Worker,
            "/0/machine/features/hostDNS",
            json!({"enabled": true, "forwardKubeDNSToHost": true}),
            "machine.features.hostDNS",
            ".machine.features.hostDNS is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.network.nameservers beside ResolverConfig",
            Worker,
            "/0/machine/network",
            json!({"nameservers": ["1.1.1.1"]}),
            "machine.network.nameservers",
            ".machine.network.nameservers is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.network.searchDomains beside ResolverConfig",
            Worker,
            "/0/machine/network",
            json!({"searchDomains": ["example.org"]}),
            "machine.network.searchDomains",
            ".machine.network.searchDomains is already set in v1alpha1 config"
        ),
        conflict!(
            "v1.14: machine.network.disableSearchDomain beside ResolverConfig",
            Worker,
            "/0/machine/network",
            json!({"disableSearchDomain": true}),
            "machine.network.disableSearchDomain",
            ".machine.network.disableSearchDomain is already set in v1alpha1 config"
        ),
        Case {
            name: "v1.14: HostnameConfig auto off without a hostname",
            base: Worker,
            edit: |d| {
                let i = d
                    .iter()
                    .position(|x| x["kind"] == "HostnameConfig")
                    .unwrap();
                d[i] = json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "off"});
            },
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
        // ---- rules that span documents ----
        Case {
            name: "v1.14: neither KubeClusterConfig nor an endpoint",
            base: Worker,
            edit: |d| drop_kind(d, "KubeClusterConfig"),
            outcome: Error,
            path: "KubeClusterConfig",
            message: "cluster name and endpoint are required when Kubernetes is configured: either .cluster.clusterName/.cluster.controlPlane.endpoint or the KubeClusterConfig document",
            when: Always,
            talosctl: &["cluster name and endpoint are required when Kubernetes is configured"],
        },
        Case {
            name: "v1.14: a control plane without etcd encryption",
            base: Cp,
            edit: |d| drop_kind(d, "KubeEtcdEncryptionConfig"),
            outcome: Error,
            path: "KubeEtcdEncryptionConfig",
            message: "etcd encryption config is required for control plane machines running kube-apiserver",
            when: Always,
            talosctl: &[
                "etcd encryption config is required for control plane machines running kube-apiserver",
            ],
        },
        Case {
            name: "v1.14: discovery without a cluster id",
            base: Worker,
            edit: |d| {
                drop_kind(d, "DiscoveryIdentityConfig");
                set(d, "/0/cluster/secret", json!(bundle().cluster.secret));
            },
            outcome: Error,
            path: "DiscoveryIdentityConfig.clusterID",
            message: "cluster ID (.cluster.id or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled",
            when: Always,
            talosctl: &["cluster ID (.cluster.id or DiscoveryIdentityConfig) should be set"],
        },
        Case {
            name: "v1.14: discovery without a cluster secret",
            base: Worker,
            edit: |d| {
                drop_kind(d, "DiscoveryIdentityConfig");
                set(d, "/0/cluster/id", json!(bundle().cluster.id));
            },
            outcome: Error,
            path: "DiscoveryIdentityConfig.clusterSecret",
            message: "cluster secret (.cluster.secret or DiscoveryIdentityConfig) should be set when cluster discovery (DiscoveryServiceConfig) is enabled",
            when: Always,
            talosctl: &[
                "cluster secret (.cluster.secret or DiscoveryIdentityConfig) should be set",
            ],
        },
        Case {
            name: "v1.14: a control-plane document on a worker",
            base: Worker,
            edit: |d| {
                d.push(json!({"apiVersion": "v1alpha1", "kind": "KubeAPIServerConfig", "image": "registry.k8s.io/kube-apiserver:v1.37.0"}))
            },
            outcome: Error,
            path: "KubeAPIServerConfig",
            message: "the following document kinds are only allowed on control plane machines: [KubeAPIServerConfig]",
            when: Always,
            talosctl: &[
                "the following document kinds are only allowed on control plane machines: [KubeAPIServerConfig]",
            ],
        },
        Case {
            name: "v1.14: machine.install without a disk",
            base: Worker,
            edit: |d| {
                drop_kind(d, "UnattendedInstallConfig");
                set(
                    d,
                    "/0/machine/install",
                    json!({"image": "ghcr.io/siderolabs/installer:v1.14.1"}),
                );
            },
            outcome: Error,
            path: "machine.install",
            message: "an install disk or diskSelector is required in metal mode",
            when: MetalOnly,
            talosctl: &["either install disk or diskSelector should be defined"],
        },
        Case {
            name: "v1.14: no install anywhere is valid in every mode",
            base: Cp,
            edit: |d| drop_kind(d, "UnattendedInstallConfig"),
            outcome: Clean,
            path: "",
            message: "",
            when: Always,
            talosctl: &[],
        },
    ]
}

/// The document of `kind` in `docs`; there must be one.
fn doc_mut<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} document"))
}

/// Set `field` (a top-level key) of the document of `kind`.
fn set_field(docs: &mut [Value], kind: &str, field: &str, value: Value) {
    doc_mut(docs, kind)
        .as_object_mut()
        .unwrap()
        .insert(field.to_owned(), value);
}

/// A case that sets `$field` of the `$kind` document to `$value` in the v1.14 `$base`, and the
/// one problem it must cause: `$outcome` at `$path`, whose message contains `$says`, and
/// talosctl's output containing each of `$talosctl`.
macro_rules! field_case {
    ($name:literal, $base:expr, $kind:literal, $field:literal, $value:expr,
     $outcome:expr, $path:literal, $says:literal, $talosctl:expr) => {
        Case {
            name: $name,
            base: $base,
            edit: |d| set_field(d, $kind, $field, $value),
            outcome: $outcome,
            path: $path,
            message: $says,
            when: When::Always,
            talosctl: $talosctl,
        }
    };
}

/// The documents new in Talos v1.14: their fields (unknown ones are refused while decoding) and
/// each kind's own `Validate()` rules.
fn cases_v114_documents() -> Vec<Case> {
    use Base::{Controlplane114 as Cp, Worker114 as Worker};
    use Outcome::{Clean, Error, Warning};
    const UNKNOWN: &[&str] = &["unknown keys found during decoding", "bogus: 1"];
    vec![
        // ---- unknown fields ----
        field_case!(
            "v1.14: unknown field in KubeClusterConfig",
            Worker,
            "KubeClusterConfig",
            "bogus",
            json!(1),
            Error,
            "KubeClusterConfig.bogus",
            "unknown keys found during decoding",
            UNKNOWN
        ),
        field_case!(
            "v1.14: unknown field in KubeNodeConfig's nodeIP",
            Worker,
            "KubeNodeConfig",
            "nodeIP",
            json!({"bogus": 1}),
            Error,
            "KubeNodeConfig.nodeIP.bogus",
            "unknown keys found during decoding",
            &["unknown keys found during decoding", "nodeIP:", "bogus: 1"]
        ),
        field_case!(
            "v1.14: unknown field in KubeAPIServerConfig's resources",
            Cp,
            "KubeAPIServerConfig",
            "resources",
            json!({"bogus": 1}),
            Error,
            "KubeAPIServerConfig.resources.bogus",
            "unknown keys found during decoding",
            &[
                "unknown keys found during decoding",
                "resources:",
                "bogus: 1"
            ]
        ),
        field_case!(
            "v1.14: unknown field in KubeNetworkConfig",
            Worker,
            "KubeNetworkConfig",
            "bogus",
            json!(1),
            Error,
            "KubeNetworkConfig.bogus",
            "unknown keys found during decoding",
            UNKNOWN
        ),
        field_case!(
            "v1.14: unknown field in KubeProxyConfig",
            Cp,
            "KubeProxyConfig",
            "bogus",
            json!(1),
            Error,
            "KubeProxyConfig.bogus",
            "unknown keys found during decoding",
            UNKNOWN
        ),
        field_case!(
            "v1.14: unknown field in KubeCoreDNSConfig",
            Cp,
            "KubeCoreDNSConfig",
            "bogus",
            json!(1),
            Error,
            "KubeCoreDNSConfig.bogus",
            "unknown keys found during decoding",
            UNKNOWN
        ),
        field_case!(
            "v1.14: unknown field in UnattendedInstallConfig's diskSelector",
            Worker,
            "UnattendedInstallConfig",
            "provisioning",
            json!({"diskSelector": {"match": "disk.dev_path == \"/dev/sda\"", "bogus": 1}}),
            Error,
            "UnattendedInstallConfig.provisioning.diskSelector.bogus",
            "unknown keys found during decoding",
            &[
                "unknown keys found during decoding",
                "diskSelector:",
                "bogus: 1"
            ]
        ),
        Case {
            name: "v1.14: unknown field in CRIBaseRuntimeSpecConfig",
            base: Worker,
            edit: |d| {
                d.push(json!({"apiVersion": "v1alpha1", "kind": "CRIBaseRuntimeSpecConfig", "bogus": 1}))
            },
            outcome: Error,
            path: "CRIBaseRuntimeSpecConfig.bogus",
            message: "unknown keys found during decoding",
            when: When::Always,
            talosctl: UNKNOWN,
        },
        // ---- KubeClusterConfig ----
        field_case!(
            "v1.14: KubeClusterConfig without a cluster name",
            Worker,
            "KubeClusterConfig",
            "clusterName",
            json!(""),
            Error,
            "KubeClusterConfig.clusterName",
            "clusterName must be specified",
            &["KubeClusterConfig: clusterName must be specified"]
        ),
        field_case!(
            "v1.14: KubeClusterConfig without an endpoint",
            Cp,
            "KubeClusterConfig",
            "endpoint",
            json!(""),
            Error,
            "KubeClusterConfig.endpoint",
            "endpoint must be specified",
            &["KubeClusterConfig: endpoint must be specified"]
        ),
        field_case!(
            "v1.14: KubeClusterConfig endpoint without a host",
            Worker,
            "KubeClusterConfig",
            "endpoint",
            json!("example.com"),
            Error,
            "KubeClusterConfig.endpoint",
            "cluster endpoint is invalid: hostname must not be blank",
            &["KubeClusterConfig: cluster endpoint is invalid: hostname must not be blank"]
        ),
        field_case!(
            "v1.14: KubeClusterConfig endpoint port out of range",
            Worker,
            "KubeClusterConfig",
            "endpoint",
            json!("https://example.com:70000"),
            Error,
            "KubeClusterConfig.endpoint",
            "cluster endpoint is invalid: port number must be between 1 and 65535",
            &[
                "KubeClusterConfig: cluster endpoint is invalid: port number must be between 1 and 65535"
            ]
        ),
        field_case!(
            "v1.14: KubeClusterConfig endpoint without a scheme",
            Cp,
            "KubeClusterConfig",
            "endpoint",
            json!("10.0.0.1:6443"),
            Error,
            "KubeClusterConfig.endpoint",
            "parse \"10.0.0.1:6443\": first path segment in URL cannot contain colon",
            &[
                "error decoding document v1alpha1/KubeClusterConfig/",
                "parse \"10.0.0.1:6443\": first path segment in URL cannot contain colon"
            ]
        ),
        field_case!(
            "v1.14: KubeClusterConfig endpoint with a non-numeric port",
            Worker,
            "KubeClusterConfig",
            "endpoint",
            json!("https://example.com:x"),
            Error,
            "KubeClusterConfig.endpoint",
            "parse \"https://example.com:x\": invalid port \":x\" after host",
            &["parse \"https://example.com:x\": invalid port \":x\" after host"]
        ),
        field_case!(
            "v1.14: KubeClusterConfig endpoint with any scheme",
            Worker,
            "KubeClusterConfig",
            "endpoint",
            json!("ftp://10.0.0.1:6443"),
            Clean,
            "",
            "",
            &[]
        ),
        // ---- images, resources, enabled ----
        field_case!(
            "v1.14: KubeAPIServerConfig without an image",
            Cp,
            "KubeAPIServerConfig",
            "image",
            json!(""),
            Error,
            "KubeAPIServerConfig.image",
            "kube-apiserver image cannot be empty",
            &["KubeAPIServerConfig: kube-apiserver image cannot be empty"]
        ),
        field_case!(
            "v1.14: KubeControllerManagerConfig without an image",
            Cp,
            "KubeControllerManagerConfig",
            "image",
            json!(""),
            Error,
            "KubeControllerManagerConfig.image",
            "kube-controller-manager image cannot be empty",
            &["KubeControllerManagerConfig: kube-controller-manager image cannot be empty"]
        ),
        field_case!(
            "v1.14: KubeSchedulerConfig without an image",
            Cp,
            "KubeSchedulerConfig",
            "image",
            json!(null),
            Error,
            "KubeSchedulerConfig.image",
            "scheduler image cannot be empty",
            &["KubeSchedulerConfig: scheduler image cannot be empty"]
        ),
        field_case!(
            "v1.14: KubeProxyConfig without an image",
            Cp,
            "KubeProxyConfig",
            "image",
            json!(""),
            Error,
            "KubeProxyConfig.image",
            "proxy image cannot be empty",
            &["KubeProxyConfig: proxy image cannot be empty"]
        ),
        field_case!(
            "v1.14: KubeletConfig without an image",
            Worker,
            "KubeletConfig",
            "image",
            json!(""),
            Error,
            "KubeletConfig.image",
            "kubelet image cannot be empty",
            &["KubeletConfig: kubelet image cannot be empty"]
        ),
        Case {
            name: "v1.14: a disabled KubeSchedulerConfig is not checked",
            base: Cp,
            edit: |d| {
                set_field(d, "KubeSchedulerConfig", "enabled", json!(false));
                set_field(d, "KubeSchedulerConfig", "image", json!(""));
            },
            outcome: Clean,
            path: "",
            message: "",
            when: When::Always,
            talosctl: &[],
        },
        field_case!(
            "v1.14: an unsupported pod resource",
            Cp,
            "KubeControllerManagerConfig",
            "resources",
            json!({"requests": {"cpu": "1", "gpu": 1}}),
            Error,
            "KubeControllerManagerConfig.resources.requests.gpu",
            "unsupported pod resource \"gpu\"",
            &["KubeControllerManagerConfig: unsupported pod resource \"gpu\""]
        ),
        // ---- KubeAPIServerConfig ----
        field_case!(
            "v1.14: a kube-apiserver argument KubeAuthorizerConfig replaces",
            Cp,
            "KubeAPIServerConfig",
            "extraArgs",
            json!({"authorization-mode": "AlwaysAllow", "v": "2"}),
            Error,
            "KubeAPIServerConfig.extraArgs.authorization-mode",
            "kube-apiserver extra argument \"authorization-mode\" is not allowed: use KubeAuthorizerConfig",
            &[
                "kube-apiserver extra argument \"authorization-mode\" is not allowed: use KubeAuthorizerConfig"
            ]
        ),
        field_case!(
            "v1.14: the longest denied kube-apiserver prefix gives the reason",
            Cp,
            "KubeAPIServerConfig",
            "extraArgs",
            json!({"oidc-signing-algs": "RS256"}),
            Error,
            "KubeAPIServerConfig.extraArgs.oidc-signing-algs",
            "kube-apiserver extra argument \"oidc-signing-algs\" is not allowed: not supported with KubeAuthenticationConfig",
            &[
                "kube-apiserver extra argument \"oidc-signing-algs\" is not allowed: not supported with KubeAuthenticationConfig"
            ]
        ),
        // ---- KubeProxyConfig ----
        field_case!(
            "v1.14: an unknown kube-proxy mode",
            Cp,
            "KubeProxyConfig",
            "mode",
            json!("userspace"),
            Error,
            "KubeProxyConfig.mode",
            "invalid proxy mode \"userspace\": supported modes are iptables, ipvs and nftables",
            &[
                "KubeProxyConfig: invalid proxy mode \"userspace\": supported modes are iptables, ipvs and nftables"
            ]
        ),
        field_case!(
            "v1.14: kube-proxy mode ipvs",
            Cp,
            "KubeProxyConfig",
            "mode",
            json!("ipvs"),
            Warning,
            "KubeProxyConfig.mode",
            "proxy mode \"ipvs\" is not recommended, please switch to nftables if possible",
            &["proxy mode \"ipvs\" is not recommended, please switch to nftables if possible"]
        ),
        field_case!(
            "v1.14: kube-proxy extra arguments",
            Cp,
            "KubeProxyConfig",
            "extraArgs",
            json!({"v": "2"}),
            Warning,
            "KubeProxyConfig.extraArgs",
            "extra arguments for kube-proxy may not work as expected, please use configuration instead",
            &[
                "extra arguments for kube-proxy may not work as expected, please use configuration instead"
            ]
        ),
        // ---- KubeletConfig ----
        field_case!(
            "v1.14: a protected kubelet configuration field",
            Worker,
            "KubeletConfig",
            "config",
            json!({"port": 10251, "maxPods": 200}),
            Error,
            "KubeletConfig.config.port",
            "kubelet configuration field \"port\" can't be overridden",
            &["KubeletConfig: kubelet configuration field \"port\" can't be overridden"]
        ),
        // ---- KubeNodeConfig ----
        field_case!(
            "v1.14: a node IP subnet that does not parse",
            Worker,
            "KubeNodeConfig",
            "nodeIP",
            json!({"validSubnets": ["10.0.0.0/8", "!x"]}),
            Error,
            "KubeNodeConfig.nodeIP.validSubnets[1]",
            "nodeIP subnet is not valid: \"x\"",
            &["KubeNodeConfig: nodeIP subnet is not valid: \"x\""]
        ),
        field_case!(
            "v1.14: node IP subnets may be negated or bare addresses",
            Worker,
            "KubeNodeConfig",
            "nodeIP",
            json!({"validSubnets": ["!10.0.0.0/8", "10.0.0.1", "fd00::/8"]}),
            Clean,
            "",
            "",
            &[]
        ),
        field_case!(
            "v1.14: an invalid node label",
            Worker,
            "KubeNodeConfig",
            "labels",
            json!({"-bad": "x"}),
            Error,
            "KubeNodeConfig.labels.-bad",
            "invalid node labels: not a valid label name and value",
            &["KubeNodeConfig: invalid node labels"]
        ),
        field_case!(
            "v1.14: an invalid taint effect",
            Worker,
            "KubeNodeConfig",
            "taints",
            json!({"dedicated": "gpu:Sometimes"}),
            Error,
            "KubeNodeConfig.taints.dedicated",
            "invalid node taints: invalid taint effect: \"Sometimes\"",
            &[
                "KubeNodeConfig: invalid node taints",
                "invalid taint effect: \"Sometimes\""
            ]
        ),
        field_case!(
            "v1.14: an invalid taint key",
            Worker,
            "KubeNodeConfig",
            "taints",
            json!({"a/b/c": "NoSchedule"}),
            Error,
            "KubeNodeConfig.taints.a/b/c",
            "invalid node taints: not a valid taint key",
            &["KubeNodeConfig: invalid node taints", "too many slashes"]
        ),
        field_case!(
            "v1.14: an invalid taint value",
            Worker,
            "KubeNodeConfig",
            "taints",
            json!({"dedicated": "-gpu-:NoSchedule"}),
            Error,
            "KubeNodeConfig.taints.dedicated",
            "invalid node taints: not a valid taint value",
            &[
                "KubeNodeConfig: invalid node taints",
                "label value \"-gpu-\" is invalid"
            ]
        ),
        // ---- KubeNetworkConfig ----
        field_case!(
            "v1.14: a per-node pod mask out of range",
            Worker,
            "KubeNetworkConfig",
            "nodeCIDRMaskSizeIPv4",
            json!(40),
            Error,
            "KubeNetworkConfig.nodeCIDRMaskSizeIPv4",
            "nodeCIDRMaskSizeIPv4 must be between 1 and 32",
            &["KubeNetworkConfig: nodeCIDRMaskSizeIPv4 must be between 1 and 32"]
        ),
        field_case!(
            "v1.14: a pod subnet that does not decode",
            Worker,
            "KubeNetworkConfig",
            "podSubnets",
            json!(["x"]),
            Error,
            "KubeNetworkConfig.podSubnets[0]",
            "cannot decode \"x\" as a subnet (address/bits)",
            &[
                "error decoding document v1alpha1/KubeNetworkConfig/",
                "netip.ParsePrefix(\"x\")"
            ]
        ),
        field_case!(
            "v1.14: a pod subnet with host bits set",
            Cp,
            "KubeNetworkConfig",
            "podSubnets",
            json!(["10.244.0.1/16"]),
            Error,
            "KubeNetworkConfig.podSubnets",
            "pod subnets: invalid subnet: 10.244.0.1/16 is not a valid CIDR",
            &["KubeNetworkConfig: pod subnets: invalid subnet: 10.244.0.1/16 is not a valid CIDR"]
        ),
        field_case!(
            "v1.14: a service subnet too small",
            Worker,
            "KubeNetworkConfig",
            "serviceSubnets",
            json!(["10.96.0.0/30"]),
            Error,
            "KubeNetworkConfig.serviceSubnets",
            "service subnets: invalid subnet: /30 is too small, it must be larger than /26",
            &[
                "KubeNetworkConfig: service subnets: invalid subnet: /30 is too small, it must be larger than /26"
            ]
        ),
        field_case!(
            "v1.14: a service subnet too large",
            Worker,
            "KubeNetworkConfig",
            "serviceSubnets",
            json!(["10.0.0.0/8"]),
            Error,
            "KubeNetworkConfig.serviceSubnets",
            "service subnets: invalid subnet: 10.0.0.0/8 is too large, it must be at least /12 (at most 20 host identifier bits)",
            &[
                "KubeNetworkConfig: service subnets: invalid subnet: 10.0.0.0/8 is too large, it must be at least /12 (at most 20 host identifier bits)"
            ]
        ),
        field_case!(
            "v1.14: a pod subnet smaller than the per-node mask",
            Cp,
            "KubeNetworkConfig",
            "podSubnets",
            json!(["10.244.0.0/26"]),
            Error,
            "KubeNetworkConfig.podSubnets",
            "pod subnets: invalid subnet: 10.244.0.0/26 is smaller than the per-node pod CIDR mask size /24",
            &[
                "KubeNetworkConfig: pod subnets: invalid subnet: 10.244.0.0/26 is smaller than the per-node pod CIDR mask size /24"
            ]
        ),
        field_case!(
            "v1.14: a pod subnet too large for the per-node mask",
            Worker,
            "KubeNetworkConfig",
            "podSubnets",
            json!(["10.0.0.0/7"]),
            Error,
            "KubeNetworkConfig.podSubnets",
            "pod subnets: invalid subnet: 10.0.0.0/7 is too large for the per-node pod CIDR mask size /24, the difference must be at most 16 bits",
            &[
                "KubeNetworkConfig: pod subnets: invalid subnet: 10.0.0.0/7 is too large for the per-node pod CIDR mask size /24, the difference must be at most 16 bits"
            ]
        ),
        Case {
            name: "v1.14: two IPv4 pod subnets",
            base: Worker,
            edit: |d| {
                set_field(
                    d,
                    "KubeNetworkConfig",
                    "podSubnets",
                    json!(["10.244.0.0/16", "10.245.0.0/16"]),
                );
                set_field(
                    d,
                    "KubeNetworkConfig",
                    "serviceSubnets",
                    json!(["10.96.0.0/12", "fd00:10:96::/112"]),
                );
            },
            outcome: Error,
            path: "KubeNetworkConfig.podSubnets",
            message: "pod subnets: at most one IPv4 and one IPv6 subnet can be specified for dual-stack clusters",
            when: When::Always,
            talosctl: &[
                "KubeNetworkConfig: pod subnets: at most one IPv4 and one IPv6 subnet can be specified for dual-stack clusters",
            ],
        },
        field_case!(
            "v1.14: more pod subnets than service subnets",
            Cp,
            "KubeNetworkConfig",
            "podSubnets",
            json!(["10.244.0.0/16", "fd00:10:244::/56"]),
            Error,
            "KubeNetworkConfig",
            "the number of pod subnets must match the number of service subnets",
            &[
                "KubeNetworkConfig: the number of pod subnets must match the number of service subnets"
            ]
        ),
        // ---- KubeEtcdEncryptionConfig ----
        field_case!(
            "v1.14: an empty etcd encryption config",
            Cp,
            "KubeEtcdEncryptionConfig",
            "config",
            json!({}),
            Error,
            "KubeEtcdEncryptionConfig.config",
            "etcd encryption config is required",
            &["KubeEtcdEncryptionConfig: etcd encryption config is required"]
        ),
        // ---- UnattendedInstallConfig ----
        field_case!(
            "v1.14: UnattendedInstallConfig without a disk selector",
            Worker,
            "UnattendedInstallConfig",
            "provisioning",
            json!({"wipe": false}),
            Error,
            "UnattendedInstallConfig.provisioning.diskSelector.match",
            "provisioning.diskSelector.match is required",
            &["UnattendedInstallConfig: provisioning.diskSelector.match is required"]
        ),
        field_case!(
            "v1.14: UnattendedInstallConfig without an installer image",
            Cp,
            "UnattendedInstallConfig",
            "installer",
            json!({}),
            Warning,
            "UnattendedInstallConfig.installer.image",
            "installer.image is not set, if Talos is not booted from asset built by Image Factory, installation will fail",
            &[
                "installer.image is not set, if Talos is not booted from asset built by Image Factory, installation will fail"
            ]
        ),
    ]
}

/// A CRIBaseRuntimeSpecConfig document with one override.
fn cri_base_runtime_spec() -> Value {
    json!({
        "apiVersion": "v1alpha1",
        "kind": "CRIBaseRuntimeSpecConfig",
        "overrides": {"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]}},
    })
}

/// Cases whose edit also causes one expected warning (besides the error the case names): the
/// pair of a deprecated v1alpha1 field and its replacement document, where talosctl warns about
/// the field and refuses the pair.
const ALSO_WARNS: &[(&str, &str)] = &[(
    "v1.14: baseRuntimeSpecOverrides beside CRIBaseRuntimeSpecConfig",
    ".machine.baseRuntimeSpecOverrides is deprecated; use a CRIBaseRuntimeSpecConfig document instead",
)];

/// v1alpha1 fields that moved in v1.14, each edit isolated so that it causes one problem.
fn cases_v114_v1alpha1() -> Vec<Case> {
    use Base::{Controlplane114 as Cp, Worker114 as Worker};
    use Outcome::{Clean, Error, Warning};
    vec![
        Case {
            name: "v1.14: baseRuntimeSpecOverrides without CRIBaseRuntimeSpecConfig",
            base: Worker,
            edit: |d| {
                let overrides = cri_base_runtime_spec()["overrides"].clone();
                set(d, "/0/machine/baseRuntimeSpecOverrides", overrides);
            },
            outcome: Warning,
            path: "machine.baseRuntimeSpecOverrides",
            message: ".machine.baseRuntimeSpecOverrides is deprecated; use a CRIBaseRuntimeSpecConfig document instead",
            when: When::Always,
            talosctl: &[
                ".machine.baseRuntimeSpecOverrides is deprecated; use a CRIBaseRuntimeSpecConfig document instead",
            ],
        },
        Case {
            name: "v1.14: baseRuntimeSpecOverrides beside CRIBaseRuntimeSpecConfig",
            base: Cp,
            edit: |d| {
                let overrides = cri_base_runtime_spec()["overrides"].clone();
                set(d, "/0/machine/baseRuntimeSpecOverrides", overrides);
                d.push(cri_base_runtime_spec());
            },
            outcome: Error,
            path: "machine.baseRuntimeSpecOverrides",
            message: "base runtime spec overrides are already set in v1alpha1 config",
            when: When::Always,
            talosctl: &["base runtime spec overrides are already set in v1alpha1 config"],
        },
        Case {
            name: "v1.14: empty baseRuntimeSpecOverrides count as unset",
            base: Worker,
            edit: |d| {
                set(d, "/0/machine/baseRuntimeSpecOverrides", json!({}));
                d.push(cri_base_runtime_spec());
            },
            outcome: Clean,
            path: "",
            message: "",
            when: When::Always,
            talosctl: &[],
        },
        Case {
            name: "v1.14: localAPIServerPort beside KubeAPIServerConfig",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeClusterConfig");
                set(d, "/0/cluster/clusterName", json!("c"));
                set(
                    d,
                    "/0/cluster/controlPlane",
                    json!({"endpoint": "https://10.0.0.1:6443", "localAPIServerPort": 6444}),
                );
            },
            outcome: Error,
            path: "cluster.controlPlane.localAPIServerPort",
            message: "kube-apiserver API port is already set in v1alpha1 config (.cluster.controlPlane.localAPIServerPort)",
            when: When::Always,
            talosctl: &[
                "kube-apiserver API port is already set in v1alpha1 config (.cluster.controlPlane.localAPIServerPort)",
            ],
        },
        Case {
            name: "v1.14: kubelet.nodeIP beside KubeNodeConfig",
            base: Worker,
            edit: |d| {
                drop_kind(d, "KubeletConfig");
                set(
                    d,
                    "/0/machine/kubelet",
                    json!({"nodeIP": {"validSubnets": ["10.0.0.0/8"]}}),
                );
            },
            outcome: Error,
            path: "machine.kubelet.nodeIP",
            message: ".machine.kubelet.nodeIP is already set in v1alpha1 config",
            when: When::Always,
            talosctl: &[".machine.kubelet.nodeIP is already set in v1alpha1 config"],
        },
        Case {
            name: "v1.14: kubelet.skipNodeRegistration beside KubeNodeConfig",
            base: Worker,
            edit: |d| {
                drop_kind(d, "KubeletConfig");
                set(
                    d,
                    "/0/machine/kubelet",
                    json!({"skipNodeRegistration": false}),
                );
            },
            outcome: Error,
            path: "machine.kubelet.skipNodeRegistration",
            message: ".machine.kubelet.skipNodeRegistration is already set in v1alpha1 config",
            when: When::Always,
            talosctl: &[".machine.kubelet.skipNodeRegistration is already set in v1alpha1 config"],
        },
        Case {
            name: "v1.14: kubelet.registerWithFQDN beside KubeNodeConfig",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeletConfig");
                set(d, "/0/machine/kubelet", json!({"registerWithFQDN": true}));
            },
            outcome: Error,
            path: "machine.kubelet.registerWithFQDN",
            message: ".machine.kubelet.registerWithFQDN is already set in v1alpha1 config",
            when: When::Always,
            talosctl: &[".machine.kubelet.registerWithFQDN is already set in v1alpha1 config"],
        },
        Case {
            name: "v1.14: serviceAccount without an endpoint in v1alpha1",
            base: Cp,
            edit: |d| {
                drop_kind(d, "KubeServiceAccountConfig");
                let key = bundle().certs.k8sserviceaccount.key.clone();
                set(d, "/0/cluster/serviceAccount", json!({"key": key}));
            },
            outcome: Error,
            path: "cluster.serviceAccount",
            message: ".cluster.serviceAccount requires the cluster endpoint to be set in the same document (.cluster.controlPlane.endpoint); when the cluster endpoint is migrated to the KubeClusterConfig document, .cluster.serviceAccount should be migrated to the KubeServiceAccountConfig document as well",
            when: When::Always,
            talosctl: &[
                ".cluster.serviceAccount requires the cluster endpoint to be set in the same document (.cluster.controlPlane.endpoint)",
            ],
        },
        Case {
            name: "v1.14: controlPlane without an endpoint",
            base: Worker,
            edit: |d| {
                set(
                    d,
                    "/0/cluster/controlPlane",
                    json!({"localAPIServerPort": 6444}),
                )
            },
            outcome: Error,
            path: "cluster.controlPlane.endpoint",
            message: "a control plane endpoint is required",
            when: When::Always,
            talosctl: &[
                "cluster controlplane endpoint is required (.cluster.controlPlane.endpoint)",
            ],
        },
    ]
}

fn bundle() -> &'static SecretsBundle {
    static BUNDLE: OnceLock<SecretsBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| SecretsBundle::generate(Contract::DEFAULT).unwrap())
}

fn base(base: Base) -> Vec<Value> {
    let machine_type = match base {
        Base::Controlplane | Base::Controlplane114 => MachineType::Controlplane,
        Base::Worker | Base::Worker114 => MachineType::Worker,
    };
    render(
        machine_type,
        &Input::for_contract("c", "https://10.0.0.1:6443", base.contract()),
        bundle(),
    )
    .unwrap()
}

fn edited(case: &Case) -> Vec<Value> {
    let mut docs = base(case.base);
    (case.edit)(&mut docs);
    docs
}

/// `after` minus `before`, as multisets.
fn new_problems(before: &[Problem], after: &[Problem]) -> Vec<Problem> {
    let mut before = before.to_vec();
    let mut new = Vec::new();
    for p in after {
        match before.iter().position(|b| b == p) {
            Some(i) => {
                before.remove(i);
            }
            None => new.push(p.clone()),
        }
    }
    new
}

fn label(mode: Mode, strict: bool) -> String {
    format!("{mode}{}", if strict { " --strict" } else { "" })
}

/// What the case expects of our validator in one combination.
fn expected(case: &Case, mode: Mode, strict: bool) -> Outcome {
    if case.when.applies(mode, strict) {
        case.outcome
    } else {
        Outcome::Clean
    }
}

#[test]
fn bases_are_valid_everywhere() {
    for b in Base::ALL {
        let docs = base(b);
        for mode in MODES {
            for strict in STRICT {
                let report = validate(&docs, mode, strict);
                assert_eq!(
                    report,
                    Report::default(),
                    "{b:?} base, {}",
                    label(mode, strict)
                );
            }
        }
    }
}

#[test]
fn every_case_causes_exactly_its_problem() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name),
            "duplicate case name {:?}",
            case.name
        );
    }
    let mut failures = Vec::new();
    for case in &cases {
        let before_docs = base(case.base);
        let after_docs = edited(case);
        assert_ne!(
            before_docs, after_docs,
            "{}: the edit changes nothing",
            case.name
        );
        for mode in MODES {
            for strict in STRICT {
                let before = validate(&before_docs, mode, strict);
                let after = validate(&after_docs, mode, strict);
                let errors = new_problems(&before.errors, &after.errors);
                let warnings = new_problems(&before.warnings, &after.warnings);
                let gone = new_problems(&after.errors, &before.errors).len()
                    + new_problems(&after.warnings, &before.warnings).len();
                let also_warns = ALSO_WARNS.iter().find(|(c, _)| *c == case.name);
                let (want_errors, want_warnings) = match expected(case, mode, strict) {
                    Outcome::Error => (1, usize::from(also_warns.is_some())),
                    Outcome::Warning => (0, 1),
                    Outcome::Clean => (0, 0),
                };
                let found = errors.iter().chain(&warnings).next();
                let right_problem = found
                    .is_none_or(|p| p.path == case.path && p.message.contains(case.message))
                    && also_warns
                        .is_none_or(|(_, w)| warnings.iter().any(|p| p.message.contains(w)));
                if errors.len() != want_errors
                    || warnings.len() != want_warnings
                    || gone != 0
                    || !right_problem
                {
                    failures.push(format!(
                        "{} ({}): expected {:?} at {:?} containing {:?}; new errors {errors:?}, \
                         new warnings {warnings:?}, {gone} problems of the base gone",
                        case.name,
                        label(mode, strict),
                        expected(case, mode, strict),
                        case.path,
                        case.message,
                    ));
                }
            }
        }
    }
    println!(
        "{} cases x {} combinations (modes x strict)",
        cases.len(),
        MODES.len() * STRICT.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A rule as found in validate.rs: whether it errors or warns, and the literal fragments of its
/// message (format! placeholders cut out).
#[derive(Debug)]
struct Rule {
    warning: bool,
    fragments: Vec<String>,
    site: String,
}

/// Messages passed as variables rather than literals, and what they can say.
const DYNAMIC_MESSAGES: &[(&str, &[&str])] = &[
    (
        // parse_cidr's reasons
        "reason",
        &[
            "is not a CIDR (expected 10.244.0.0/16)",
            "is not an IP address",
            "prefix must be 0 to",
        ],
    ),
    // multidoc.rs's conflicts: each `says` of its table is a rule of its own
    ("c.says", &[]),
    // kinds.rs's table of required images: each `says` is a rule of its own
    ("image.says", &[]),
    // kinds.rs: what Go's URL parser says of an endpoint it cannot decode
    (
        "decode",
        &[
            "first path segment in URL cannot contain colon",
            "invalid port",
            "after host",
        ],
    ),
];

/// Every `.error(`, `.warn(` and (decode_problems') bare `push(` call in validate.rs.
fn rules(src: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (pattern, warning) in [
        (".error(", false),
        (".warn(", true),
        ("push(", false),
        // multidoc.rs's table of conflicts
        ("present(", false),
        ("says: ", false),
    ] {
        for (at, _) in src.match_indices(pattern) {
            // The helper's and the table's declarations, not rules.
            if src[..at].ends_with("fn ") || src[at + pattern.len()..].starts_with('&') {
                continue;
            }
            if pattern == "push("
                && src[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c == '.' || c.is_alphanumeric() || c == '_')
            {
                continue;
            }
            let args = call_arguments(&src[at + pattern.len()..]);
            let message = args.last().expect("a call with arguments").trim();
            let literals = string_literals(message);
            let fragments: Vec<String> = if !literals.is_empty() {
                literals.iter().flat_map(|l| fragments(l)).collect()
            } else if let Some(value) = constant(src, message) {
                vec![value]
            } else if let Some((_, said)) = DYNAMIC_MESSAGES.iter().find(|(n, _)| *n == message) {
                said.iter().map(|s| (*s).to_owned()).collect()
            } else {
                panic!(
                    "validate.rs: message {message:?} is not understood: add it to DYNAMIC_MESSAGES"
                )
            };
            rules.push(Rule {
                warning,
                fragments,
                site: format!("{pattern}{}", args.join(",")),
            });
        }
    }
    rules
}

/// The top-level arguments of a call, from just after its `(`.
fn call_arguments(rest: &str) -> Vec<String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut args = vec![String::new()];
    for c in rest.chars() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else {
            match c {
                '"' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(String::new());
                    continue;
                }
                _ => {}
            }
        }
        args.last_mut().unwrap().push(c);
    }
    args.retain(|a| !a.trim().is_empty());
    args
}

/// The contents of the "..." literals in `text`, unescaped (\" and \\ only).
fn string_literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => literal.extend(chars.next()),
                '"' => break,
                c => literal.push(c),
            }
        }
        out.push(literal);
    }
    out
}

/// The literal parts of a format string, placeholders removed, trimmed, empty ones dropped.
fn fragments(format: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_placeholder = false;
    for c in format.chars() {
        match c {
            '{' => {
                in_placeholder = true;
                out.push(std::mem::take(&mut current));
            }
            '}' if in_placeholder => in_placeholder = false,
            c if !in_placeholder => current.push(c),
            _ => {}
        }
    }
    out.push(current);
    out.into_iter()
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

/// The value of `const NAME: &str = "...";` in `src`.
fn constant(src: &str, name: &str) -> Option<String> {
    let start = src.find(&format!("const {name}: &str = "))?;
    let line = src[start..].lines().next()?;
    string_literals(line).into_iter().next()
}

#[test]
fn every_rule_has_a_case() {
    let src = concat!(
        include_str!("../src/validate.rs"),
        include_str!("../src/validate/multidoc.rs"),
        include_str!("../src/validate/kinds.rs"),
        include_str!("../src/validate/shapes.rs")
    );
    let rules = rules(src);
    // 41 errors, 4 warnings and 3 decode problems when this was written.
    assert!(
        rules.len() >= 45,
        "found only {} rules in validate.rs: is the extraction broken?",
        rules.len()
    );
    let cases = cases();
    let mut missing = Vec::new();
    for rule in &rules {
        for fragment in &rule.fragments {
            let covered = cases.iter().any(|c| {
                let kind = if rule.warning {
                    Outcome::Warning
                } else {
                    Outcome::Error
                };
                c.outcome == kind && c.message.contains(fragment.as_str())
            });
            if !covered {
                missing.push(format!("{fragment:?} (from {})", rule.site));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "rules of validate.rs without a case:\n{}",
        missing.join("\n")
    );
}

/// talosctl's verdict on a file in one combination.
#[derive(Debug)]
enum Verdict {
    Accepts,
    Warns(String),
    Rejects(String),
}

fn talosctl_validate(talosctl: &Path, file: &Path, mode: Mode, strict: bool) -> Verdict {
    let mode = mode.to_string();
    let mut args = vec![
        "validate",
        "--config",
        file.to_str().unwrap(),
        "--mode",
        &mode,
    ];
    if strict {
        args.push("--strict");
    }
    let o = Command::new(talosctl).args(&args).output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        Verdict::Rejects(output)
    } else if output.contains("WARNING") {
        Verdict::Warns(output)
    } else {
        Verdict::Accepts
    }
}

/// Whether talosctl's verdict is ours: an error is a rejection, a warning is talosctl's warning
/// (a rejection with --strict), nothing is acceptance. Err(why) when not.
fn agreement(ours: Outcome, theirs: &Verdict, strict: bool, says: &[&str]) -> Result<(), String> {
    let output = match (ours, theirs) {
        (Outcome::Clean, Verdict::Accepts) => return Ok(()),
        (Outcome::Error, Verdict::Rejects(out)) => out,
        // Documents' warnings stay warnings with --strict (only v1alpha1's become errors).
        (Outcome::Warning, Verdict::Warns(out)) => out,
        (Outcome::Warning, Verdict::Rejects(out)) if strict && out.contains("warning:") => out,
        _ => return Err(format!("we say {ours:?}, talosctl {theirs:?}")),
    };
    if says.is_empty() {
        return Err(format!(
            "talosctl agrees ({theirs:?}) but the case names no talosctl substring"
        ));
    }
    match says.iter().find(|s| !output.contains(**s)) {
        None => Ok(()),
        Some(s) => Err(format!(
            "talosctl agrees but does not say {s:?}: {}",
            output.trim()
        )),
    }
}

#[test]
fn talosctl_agrees_or_the_difference_is_known() {
    let talosctl = |base: Base| {
        locate(base.talosctl())
            .unwrap_or_else(|e| panic!("{:?} (make tools): {e}", base.talosctl()))
    };
    let talosctls: Vec<_> = Base::ALL.iter().map(|b| (*b, talosctl(*b))).collect();
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    for d in KNOWN_DIFFERENCES {
        assert!(
            cases.iter().any(|c| c.name == d.case),
            "KNOWN_DIFFERENCES names no case {:?}",
            d.case
        );
    }
    // Each case's file, written once, then 6 talosctl runs per case on 2 threads.
    let files: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let path = dir.path().join(format!("case-{i}.yaml"));
            std::fs::write(
                &path,
                machineconfig::render::to_yaml(&edited(case)).unwrap(),
            )
            .unwrap();
            path
        })
        .collect();
    let jobs: Vec<(usize, Mode, bool)> = (0..cases.len())
        .flat_map(|i| {
            MODES
                .into_iter()
                .flat_map(move |m| STRICT.map(|s| (i, m, s)))
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let verdicts: Vec<(usize, Mode, bool, Verdict)> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(jobs.len().div_ceil(threads))
            .map(|chunk| {
                let (talosctls, files, cases) = (&talosctls, &files, &cases);
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(i, mode, strict)| {
                            let talosctl = talosctls
                                .iter()
                                .find(|(b, _)| *b == cases[i].base)
                                .map(|(_, path)| path)
                                .unwrap();
                            (
                                i,
                                mode,
                                strict,
                                talosctl_validate(talosctl, &files[i], mode, strict),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let mut failures = Vec::new();
    let mut agreeing_cases = std::collections::BTreeSet::new();
    let mut differing = std::collections::BTreeSet::new();
    for (i, mode, strict, verdict) in &verdicts {
        let case = &cases[*i];
        let known = KNOWN_DIFFERENCES
            .iter()
            .find(|d| d.case == case.name && d.when.applies(*mode, *strict));
        let ours = expected(case, *mode, *strict);
        let result = agreement(ours, verdict, *strict, case.talosctl);
        let where_ = format!("{} ({})", case.name, label(*mode, *strict));
        match (result, known) {
            (Ok(()), None) => {
                if ours != Outcome::Clean {
                    agreeing_cases.insert(case.name);
                }
            }
            (Err(e), None) => failures.push(format!("{where_}: {e}")),
            (Ok(()), Some(d)) => failures.push(format!(
                "{where_}: listed in KNOWN_DIFFERENCES ({}) but talosctl agrees",
                d.why
            )),
            (Err(_), Some(_)) => {
                differing.insert(case.name);
            }
        }
    }
    println!(
        "talosctl: {} runs; {} cases where talosctl flags the same problem, {} cases with known differences",
        verdicts.len(),
        agreeing_cases.len(),
        differing.len()
    );
    for d in KNOWN_DIFFERENCES {
        println!("  known difference: {} ({:?}): {}", d.case, d.when, d.why);
    }
    assert!(
        failures.is_empty(),
        "{} disagreements with talosctl:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
