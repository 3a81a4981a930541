//! The hostile classes as a table: each class of value (depth, size, count, expansion, a
//! message that would be huge, a value past the CRD's bounds) in each field that carries
//! configuration (`configPatches`, `strategicPatches`, `data`), for each of the four kinds; and
//! the shapes of a hostile Secret a cluster's objects read (its secrets bundle, its
//! talosconfig).

use api::conditions::reason;
use serde_json::{Value, json};

/// The cluster of every case, each in its own namespace.
pub const CLUSTER: &str = "c";

/// Our four kinds, as a tenant writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the kinds' own names
pub enum Kind {
    /// Rendered by the TalosConfig controller.
    TalosConfig,
    /// Cloned into a TalosConfig by Cluster API's MachineSet controller (a MachineDeployment).
    TalosConfigTemplate,
    /// Copied into the TalosConfig of each machine it creates.
    TalosControlPlane,
    /// Reconciled by nobody: ClusterClass stamps TalosControlPlanes out of it (that consumer
    /// is the TalosControlPlane case); admission stores or refuses it, and it stays updatable.
    TalosControlPlaneTemplate,
}

pub const KINDS: [Kind; 4] = [
    Kind::TalosConfig,
    Kind::TalosConfigTemplate,
    Kind::TalosControlPlane,
    Kind::TalosControlPlaneTemplate,
];

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::TalosConfig | Kind::TalosConfigTemplate => "bootstrap.cluster.x-k8s.io/v1alpha3",
            _ => "controlplane.cluster.x-k8s.io/v1alpha3",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::TalosConfig => "TalosConfig",
            Kind::TalosConfigTemplate => "TalosConfigTemplate",
            Kind::TalosControlPlane => "TalosControlPlane",
            Kind::TalosControlPlaneTemplate => "TalosControlPlaneTemplate",
        }
    }

    /// The collection's path in `ns`.
    pub fn path(self, ns: &str) -> String {
        format!(
            "/apis/{}/namespaces/{ns}/{}s",
            self.api_version(),
            self.name().to_lowercase()
        )
    }

    /// The object of this kind named `name` carrying `spec` (a TalosConfigSpec).
    pub fn manifest(self, name: &str, spec: Value) -> Value {
        let infra = json!({"apiVersion": testkit::infra::api_version(), "kind": "SimMachineTemplate", "name": CLUSTER});
        let spec = match self {
            Kind::TalosConfig => spec,
            Kind::TalosConfigTemplate => json!({"template": {"spec": spec}}),
            Kind::TalosControlPlane => json!({
                "replicas": 1, "version": kubernetes_for(&spec), "infrastructureTemplate": infra,
                "controlPlaneConfig": {"controlplane": spec}
            }),
            Kind::TalosControlPlaneTemplate => json!({"template": {"spec": {
                "controlPlaneConfig": {"controlplane": spec}
            }}}),
        };
        let labels = match self {
            Kind::TalosConfig => json!({"cluster.x-k8s.io/cluster-name": CLUSTER}),
            _ => json!({}),
        };
        json!({
            "apiVersion": self.api_version(), "kind": self.name(),
            "metadata": {"name": name, "labels": labels}, "spec": spec
        })
    }
}

/// A Kubernetes version the Talos version of `spec` supports (the control plane checks).
fn kubernetes_for(spec: &Value) -> &'static str {
    match spec["talosVersion"].as_str() {
        Some("v1.10") => "v1.33.0",
        _ => "v1.35.0",
    }
}

/// What must come of a hostile object.
#[derive(Clone, Debug)]
pub enum Expect {
    /// The API server refuses it, naming this (the field's bound).
    Refused(&'static str),
    /// The TalosConfig it renders into is False for `reason`, its message holding `message`.
    Reported {
        reason: &'static str,
        message: &'static str,
    },
    /// It cannot be decoded at all: the object itself says so (`InvalidSpec`).
    Undecodable,
}

/// One class of hostile value in one field.
pub struct Case {
    pub class: &'static str,
    pub field: &'static str,
    pub spec: Value,
    pub expect: Expect,
    /// The message is cut to the condition's bound, with the marker.
    pub cut: bool,
}

impl Case {
    /// What the case is, for reports and for `HOSTILE_CASES` (run only the cases whose name
    /// holds it).
    pub fn what(&self, kind: Kind) -> String {
        format!("{} in {} of a {}", self.class, self.field, kind.name())
    }

    pub fn selected(what: &str) -> bool {
        std::env::var("HOSTILE_CASES").map_or(true, |only| what.contains(&only))
    }

    /// Whether the class reaches `kind`'s consumer: a control plane's machines are always
    /// `controlplane`, so `data` reaches them only through its size (the render bounds data and
    /// strategic patches together, whatever generateType).
    pub fn applies(&self, kind: Kind) -> bool {
        !(kind == Kind::TalosControlPlane
            && self.field == "data"
            && matches!(self.expect, Expect::Reported { .. })
            && self.class != "size")
    }
}

/// `[[[…1…]]]`, `depth` lists deep, as a JSON value (past 128 levels serde_json cannot read it
/// back, but writes it).
pub fn nested_value(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

/// `[[[…1…]]]`, `depth` lists deep, as YAML flow text.
pub fn nested_text(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Anchors each repeating the previous one ten times over a base list: 3 KB of YAML that
/// expands to 2×10^8 values.
pub fn alias_bomb() -> String {
    let mut text = format!("a0: &a0 [{}]\n", vec!["x"; 2000].join(","));
    for level in 1..=8 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text
}

/// A flow list of `n` zeros.
fn zeros(n: usize) -> String {
    format!("[{}]", vec!["0"; n].join(","))
}

fn worker(fields: Value) -> Value {
    let mut spec = json!({"generateType": "worker", "talosVersion": "v1.13"});
    spec.as_object_mut()
        .expect("a mapping")
        .extend(fields.as_object().expect("a mapping").clone());
    spec
}

/// JSON patches apply to single-document configurations: contract v1.10.
fn json_patch(ops: Vec<Value>) -> Value {
    worker(json!({ "talosVersion": "v1.10", "configPatches": ops }))
}

fn strategic(patches: Vec<String>) -> Value {
    worker(json!({ "strategicPatches": patches }))
}

fn data(text: String) -> Value {
    json!({"generateType": "none", "talosVersion": "v1.13", "data": text})
}

fn reported(reason: &'static str, message: &'static str) -> Expect {
    Expect::Reported { reason, message }
}

/// 40 `copy` operations, each doubling the list it copies into itself.
fn copy_chain() -> Vec<Value> {
    let copy = json!({"op": "copy", "from": "/machine/certSANs", "path": "/machine/certSANs/-"});
    let mut ops = vec![json!({"op": "add", "path": "/machine/certSANs", "value": ["a"]})];
    ops.extend(std::iter::repeat_n(copy, 40));
    ops
}

/// `n` operations, each adding `value` at its own path.
fn adds(n: usize, value: &Value) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"op": "add", "path": format!("/machine/x{i}"), "value": value}))
        .collect()
}

/// `n` operations adding certificate SANs of `len` bytes each.
fn sans(n: usize, len: usize) -> Vec<Value> {
    let san = "y".repeat(len);
    let mut ops = vec![json!({"op": "add", "path": "/machine/certSANs", "value": []})];
    ops.extend((1..n).map(|_| json!({"op": "add", "path": "/machine/certSANs/-", "value": san})));
    ops
}

/// A case of `class` in `field`.
fn case(class: &'static str, field: &'static str, spec: Value, expect: Expect) -> Case {
    let cut = class == "status-size";
    Case {
        class,
        field,
        spec,
        expect,
        cut,
    }
}

/// Over the render's 512 KiB of input, within the CRD's 1 MiB.
const OVER_INPUT: usize = 600 << 10;

/// The classes in `configPatches` (RFC 6902 operations whose values are any JSON).
fn config_patch_cases() -> Vec<Case> {
    let add = |value: Value| vec![json!({"op": "add", "path": "/machine/x", "value": value})];
    let field = "configPatches";
    vec![
        case(
            "depth (decoder)",
            field,
            json_patch(add(nested_value(200))),
            Expect::Undecodable,
        ),
        case(
            "depth",
            field,
            json_patch(add(nested_value(100))),
            reported(reason::PATCH_FAILED, "nested more than 64 levels deep"),
        ),
        case(
            "size",
            field,
            json_patch(sans(480, 2200)),
            reported(
                reason::INVALID_SPEC,
                "the rendered machine configuration is",
            ),
        ),
        case(
            "count",
            field,
            json_patch(adds(512, &json!(vec![0; 200]))),
            reported(reason::PATCH_FAILED, "more than 100000 values"),
        ),
        case(
            "expansion",
            field,
            json_patch(copy_chain()),
            reported(reason::PATCH_FAILED, "more than 100000 values"),
        ),
        case(
            "admission",
            field,
            json_patch(vec![
                json!({"op": "remove", "path": "/machine/install"});
                513
            ]),
            Expect::Refused("512"),
        ),
    ]
}

/// The classes in `strategicPatches` (YAML text).
fn strategic_patch_cases() -> Vec<Case> {
    let field = "strategicPatches";
    let one = |text: String| strategic(vec![text]);
    vec![
        case(
            "depth",
            field,
            one(format!("machine:\n  x: {}\n", nested_text(10_000))),
            reported(reason::PATCH_FAILED, "nested more than 64 levels deep"),
        ),
        case(
            "size",
            field,
            one(format!("machine: {{}}\n#{}\n", "x".repeat(OVER_INPUT))),
            reported(reason::INVALID_SPEC, "over the limit of 524288 bytes"),
        ),
        case(
            "count",
            field,
            one(format!("machine:\n  x: {}\n", zeros(150_000))),
            reported(reason::PATCH_FAILED, "more than 100000 values"),
        ),
        case(
            "count",
            field,
            one("machine: {}\n---\n".repeat(65)),
            reported(reason::PATCH_FAILED, "more than 64 YAML documents"),
        ),
        case(
            "expansion",
            field,
            one(alias_bomb()),
            reported(reason::PATCH_FAILED, "counting each use of a YAML alias"),
        ),
        case(
            "status-size",
            field,
            one(format!(
                "apiVersion: v1alpha1\nkind: {}\n",
                "K".repeat(100_000)
            )),
            reported(reason::PATCH_FAILED, "unknown configuration document kind"),
        ),
        case(
            "admission",
            field,
            strategic(vec!["machine: {}".to_owned(); 65]),
            Expect::Refused("64"),
        ),
    ]
}

/// The classes in `data` (a whole machine configuration, YAML text).
fn data_cases() -> Vec<Case> {
    let field = "data";
    let config = |rest: String| data(format!("version: v1alpha1\n{rest}"));
    vec![
        case(
            "depth",
            field,
            config(format!("machine:\n  x: {}\n", nested_text(10_000))),
            reported(reason::RENDER_FAILED, "nested more than 64 levels deep"),
        ),
        case(
            "size",
            field,
            config(format!("#{}\n", "x".repeat(OVER_INPUT))),
            reported(reason::INVALID_SPEC, "over the limit of 524288 bytes"),
        ),
        case(
            "count",
            field,
            config(format!("machine:\n  x: {}\n", zeros(150_000))),
            reported(reason::RENDER_FAILED, "more than 100000 values"),
        ),
        case(
            "expansion",
            field,
            data(alias_bomb()),
            reported(reason::RENDER_FAILED, "counting each use of a YAML alias"),
        ),
        case(
            "admission",
            field,
            data("#".repeat((1 << 20) + 1)),
            Expect::Refused("1048576"),
        ),
    ]
}

/// Every class in every field that carries configuration, as TalosConfigSpecs.
pub fn spec_cases() -> Vec<Case> {
    [config_patch_cases(), strategic_patch_cases(), data_cases()]
        .into_iter()
        .flatten()
        .collect()
}

/// Which Secret of a cluster a hostile shape is put in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `<cluster>-talos`, key `bundle`: read before any render, and by the control plane for
    /// its kubeconfig.
    Bundle,
    /// `<cluster>-talosconfig`, key `talosconfig`: read to keep its endpoints.
    Talosconfig,
}

/// One hostile shape of a Secret the manager reads.
pub struct SecretCase {
    pub class: &'static str,
    pub secret: SecretKind,
    /// The text stored under the Secret's key, built from a valid one.
    pub text: String,
    /// What the condition says (reason InvalidSecret).
    pub message: &'static str,
    /// A secret the text holds where it does not belong: it must never be echoed.
    pub canary: Option<String>,
}

/// A hostile shape of a Secret, naming what its condition says.
fn secret_case(
    class: &'static str,
    secret: SecretKind,
    text: String,
    message: &'static str,
    canary: Option<String>,
) -> SecretCase {
    SecretCase {
        class,
        secret,
        text,
        message,
        canary,
    }
}

/// The text of `key` in the YAML document `doc`, at the JSON pointer `at`.
fn text_at(doc: &Value, at: &str) -> String {
    doc.pointer(at)
        .and_then(Value::as_str)
        .expect(at)
        .to_owned()
}

/// The hostile shapes of the bundle (`bundle`, valid YAML of a cluster's bundle): its secrets
/// where a mapping belongs are canaries.
fn bundle_cases(bundle: &str) -> Vec<SecretCase> {
    let doc: Value = serde_yaml_ng::from_str(bundle).expect("a bundle");
    let token = text_at(&doc, "/trustdinfo/token");
    let key = text_at(&doc, "/certs/os/key");
    let scalar_token = bundle.replacen(
        &format!("trustdinfo:\n  token: {token}\n"),
        &format!("trustdinfo: {token}\n"),
        1,
    );
    let mut scalar_key = doc.clone();
    scalar_key["certs"]["os"] = key.clone().into();
    let scalar_key = serde_yaml_ng::to_string(&scalar_key).expect("YAML");
    let kind = SecretKind::Bundle;
    vec![
        secret_case(
            "depth",
            kind,
            format!("{bundle}x: {}\n", nested_text(10_000)),
            "nested more than 64 levels deep",
            None,
        ),
        secret_case(
            "count",
            kind,
            format!("{bundle}x: {}\n", zeros(200_000)),
            "more than 100000 values",
            None,
        ),
        secret_case(
            "expansion",
            kind,
            format!("{bundle}{}", alias_bomb()),
            "counting each use of a YAML alias",
            None,
        ),
        secret_case(
            "scalar",
            kind,
            scalar_token,
            "field `trustdinfo` is a string, expected a map",
            Some(token),
        ),
        secret_case(
            "scalar",
            kind,
            scalar_key,
            "field `certs.os` is a string, expected a map",
            Some(key),
        ),
    ]
}

/// The hostile shapes of a talosconfig (`talosconfig`, valid YAML).
fn talosconfig_cases(talosconfig: &str) -> Vec<SecretCase> {
    let doc: Value = serde_yaml_ng::from_str(talosconfig).expect("a talosconfig");
    let context = text_at(&doc, "/context");
    let client_key = text_at(&doc, &format!("/contexts/{context}/key"));
    let mut scalar = doc.clone();
    scalar["contexts"][&context] = client_key.clone().into();
    let scalar = serde_yaml_ng::to_string(&scalar).expect("YAML");
    let kind = SecretKind::Talosconfig;
    vec![
        secret_case(
            "depth",
            kind,
            format!("{talosconfig}x: {}\n", nested_text(10_000)),
            "nested more than 64 levels deep",
            None,
        ),
        secret_case(
            "scalar",
            kind,
            scalar,
            "is a string, expected a map",
            Some(client_key),
        ),
    ]
}

/// Every hostile shape of the Secrets a cluster's objects read.
pub fn secret_cases(bundle: &str, talosconfig: &str) -> Vec<SecretCase> {
    [bundle_cases(bundle), talosconfig_cases(talosconfig)]
        .into_iter()
        .flatten()
        .collect()
}
