//! bootstrap.cluster.x-k8s.io/v1alpha3, schema-compatible with CABPT v0.6.
// Repeated `printcolumn(type_ = ...)` keys are separate columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conditions::{Condition, HasConditions, V1Beta1Condition};

/// Which Talos machine configuration to generate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GenerateType {
    /// A control-plane node (joins or, on the first node, bootstraps etcd).
    Controlplane,
    /// A worker node.
    Worker,
    /// Accepted as a synonym of `worker`, as CABPT does.
    Join,
    /// Deprecated: the first control-plane node. Treated as `controlplane`; the control-plane
    /// provider bootstraps etcd through the Talos API instead.
    Init,
    /// Generate nothing: use `data` verbatim as the machine configuration.
    None,
}

impl GenerateType {
    /// The machine type the configuration is rendered for.
    pub fn machine_type(self) -> Option<&'static str> {
        match self {
            GenerateType::Controlplane | GenerateType::Init => Some("controlplane"),
            GenerateType::Worker | GenerateType::Join => Some("worker"),
            GenerateType::None => None,
        }
    }
}

/// A JSON 6902 operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

/// One RFC 6902 (JSON Patch) operation applied to the generated machine configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
// "value is required for add, replace and test" is added by crate::crds (CEL cannot see an
// untyped property, and an anyOf here would be flattened by kube's schema rewriter).
#[x_kube(validation = kube::core::Rule::new("!(self.op in ['move', 'copy']) || has(self.from)").message("from is required for move and copy operations"))]
pub struct ConfigPatch {
    /// The operation: add, remove, replace, move, copy or test.
    pub op: PatchOp,
    /// JSON pointer to the target location, e.g. /machine/install/disk. Use `-` to append to a
    /// list (/machine/network/interfaces/-) and ~1 for a '/' inside a key.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/') && !self.matches('~([^01]|$)')").message("path must be a JSON pointer starting with '/' (for example /machine/install/disk); escape '~' as ~0 and '/' inside a key as ~1"))]
    pub path: String,
    /// The value for add, replace and test: any JSON (object, list, string, number, bool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_json")]
    pub value: Option<Value>,
    /// The source location for move and copy, as a JSON pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("from must be a JSON pointer starting with '/'"))]
    pub from: Option<String>,
}

/// Where a machine's hostname comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HostnameSource {
    /// The name of the Cluster API Machine.
    MachineName,
    /// The name of the infrastructure machine (e.g. the ProxmoxMachine).
    InfrastructureName,
}

/// How the machine's hostname is set in the generated configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HostnameSpec {
    /// Source of the hostname: MachineName or InfrastructureName. Unset leaves the hostname to
    /// Talos (DHCP or a generated name).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::de::empty_as_none"
    )]
    pub source: Option<HostnameSource>,
}

/// What to generate for a machine and how to patch it. TalosConfig is the bootstrap
/// configuration of one Talos machine; the provider renders it into the Secret named in
/// status.dataSecretName.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "bootstrap.cluster.x-k8s.io",
    version = "v1alpha3",
    kind = "TalosConfig",
    namespaced,
    status = "TalosConfigStatus",
    category = "cluster-api",
    derive = "PartialEq",
    doc = "TalosConfig is the bootstrap configuration of one Talos machine: what to generate and how to patch it.",
    validation = kube::core::Rule::new("has(self.spec.generateType)").message("spec.generateType is required: one of controlplane, worker (or join), init, none"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']", description = "Cluster this config belongs to"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.generateType", description = "Which machine configuration is generated"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready", description = "Bootstrap data Secret is written"),
    printcolumn(name = "Data Secret", type_ = "string", json_path = ".status.dataSecretName", description = "Secret holding the machine configuration"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.generateType) || self.generateType != 'none' || (has(self.data) && size(self.data) > 0)").message("data is required when generateType is none"))]
pub struct TalosConfigSpec {
    /// Which configuration to generate: controlplane, worker (join is a synonym), init
    /// (deprecated; treated as controlplane) or none (use data verbatim). Required on
    /// TalosConfig and TalosConfigTemplate; inside a TalosControlPlane the provider sets it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::de::empty_as_none"
    )]
    pub generate_type: Option<GenerateType>,
    /// Talos version whose configuration format (contract) to generate, e.g. v1.13 or v1.13.0.
    /// Empty means the newest contract this provider knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(crate::schema::CONTRACT_VERSION))]
    #[x_kube(validation = crate::schema::matches(crate::schema::CONTRACT_VERSION, "talosVersion must look like v1.13 or v1.13.0: numbers of at most 6 digits without leading zeros"))]
    pub talos_version: Option<String>,
    /// A complete machine configuration, used when generateType is none. At most 1 MiB: the
    /// bootstrap data Secret that carries it holds no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub data: Option<String>,
    /// RFC 6902 JSON patches applied to the generated configuration, in order, before the
    /// strategic merge patches. Only valid for single-document configurations (Talos refuses
    /// JSON patches on multi-document configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub config_patches: Option<Vec<ConfigPatch>>,
    /// Talos strategic merge patches (YAML, possibly multi-document) applied after configPatches.
    /// At most 64 patches of at most 1 MiB each; the provider also bounds what a patch expands
    /// to (YAML aliases), how deep it nests and how many documents it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 1048576)))]
    pub strategic_patches: Option<Vec<String>>,
    /// How the machine's hostname is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameSpec>,
    /// IP address pools (Cluster API IPAM) to claim one address from each, per machine. The
    /// bootstrap data is written once every claim is bound, and the patches use the address as
    /// `((ipam.<pool name>.address))`, `((ipam.<pool name>.prefix))` and
    /// `((ipam.<pool name>.gateway))` (docs/ipam.md). A claim lives as long as its machine and is
    /// released once the machine's infrastructure is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("each pool may be named once: patches tell pools apart by name"))]
    pub addresses_from_pools: Option<Vec<PoolReference>>,
}

/// An IP address pool of a Cluster API IPAM provider, in the TalosConfig's namespace (an
/// InClusterIPPool of `ipam.cluster.x-k8s.io`, say).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolReference {
    /// The pool's API group, e.g. ipam.cluster.x-k8s.io.
    #[schemars(length(min = 1, max = 253))]
    pub api_group: String,
    /// The pool's kind, e.g. InClusterIPPool or GlobalInClusterIPPool.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The pool's name: lowercase letters, digits and '-', starting with a letter (it is also
    /// the `<pool name>` of the values patches use, where a '.' could not be told apart).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// Observed state of a TalosConfig, for both Cluster API contracts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosConfigStatus {
    /// v1beta2 contract: initialization progress (`dataSecretCreated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<BootstrapInitialization>,
    /// Name of the Secret (key `value`) holding the machine configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub data_secret_name: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (metav1.Condition): Ready, DataSecretAvailable, ClientConfigAvailable,
    /// ConfigUpToDate, ConfigFieldsCurrent (contract v1.14 on), Paused, Deleting (while its IPAM claims wait for the machine). Cluster API mirrors Ready to the Machine's BootstrapConfigReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub conditions: Option<Vec<Condition>>,
    /// v1beta1 contract, read by Cluster API until the contract is removed: the bootstrap data
    /// Secret is written. Mirrors initialization.dataSecretCreated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// v1beta1 contract: a token for a problem the machine cannot recover from (informational
    /// since the v1beta2 contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// v1beta1 contract: a human-readable problem the machine cannot recover from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// Deprecated and never written: older providers stored a client configuration here. Use
    /// the `<cluster>-talosconfig` Secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talos_config: Option<String>,
    /// Status in the shapes of the deprecated v1beta1 contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Deprecated>,
}

/// v1beta2 contract: `dataSecretCreated` once the bootstrap data Secret exists.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct BootstrapInitialization {
    /// The bootstrap data Secret is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_secret_created: Option<bool>,
}

/// Fields kept for readers of the deprecated v1beta1 contract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Deprecated {
    /// The v1beta1-contract view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1beta1: Option<V1Beta1Status>,
}

/// The v1beta1-contract view of a TalosConfig's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Beta1Status {
    /// Conditions in Cluster API's v1beta1 shape (with severity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub conditions: Option<Vec<V1Beta1Condition>>,
}

impl HasConditions for TalosConfigStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        self.conditions.get_or_insert_with(Vec::new)
    }

    fn v1beta1_conditions_mut(&mut self) -> &mut Vec<V1Beta1Condition> {
        self.deprecated
            .get_or_insert_with(Deprecated::default)
            .v1beta1
            .get_or_insert_with(V1Beta1Status::default)
            .conditions
            .get_or_insert_with(Vec::new)
    }
}

/// Labels and annotations copied to objects created from a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ObjectMetaTemplate {
    /// Labels to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The TalosConfig a template stamps out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct TalosConfigTemplateResource {
    /// Labels and annotations for the generated TalosConfigs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// The TalosConfig spec every generated TalosConfig gets (optional, as in CABPT's schema;
    /// the TalosConfigs stamped out still need a generateType).
    #[serde(default)]
    pub spec: TalosConfigSpec,
}

/// TalosConfigTemplate is the TalosConfig blueprint for MachineDeployments, MachinePools and
/// ClusterClass worker classes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "bootstrap.cluster.x-k8s.io",
    version = "v1alpha3",
    kind = "TalosConfigTemplate",
    namespaced,
    category = "cluster-api",
    derive = "PartialEq",
    doc = "TalosConfigTemplate is the blueprint of the TalosConfigs of a MachineDeployment, MachinePool or ClusterClass worker class.",
    validation = kube::core::Rule::new("!has(self.spec.template.spec) || has(self.spec.template.spec.generateType)").message("spec.template.spec.generateType is required: one of controlplane, worker (or join), init, none"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.template.spec.generateType"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct TalosConfigTemplateSpec {
    /// The TalosConfig to stamp out for each machine.
    pub template: TalosConfigTemplateResource,
}
