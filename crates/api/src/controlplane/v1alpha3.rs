//! controlplane.cluster.x-k8s.io/v1alpha3: CACPPT v0.5's schema plus what Cluster API's
//! contracts and ClusterClass need (machineTemplate, both status shapes) and what we add
//! (maxUnavailable, in-place Talos OS upgrades, TalosControlPlaneTemplate).
// Repeated `printcolumn(type_ = ...)` keys are separate columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bootstrap::v1alpha3::{ObjectMetaTemplate, TalosConfigSpec};
use crate::conditions::{Condition, HasConditions, V1Beta1Condition};

/// The TalosConfig specs used for control-plane machines.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct ControlPlaneConfig {
    /// The configuration of every control-plane machine. generateType may be omitted (it is
    /// always controlplane).
    pub controlplane: TalosConfigSpec,
    /// Deprecated and ignored, as in CACPPT v0.4+: every control-plane machine uses
    /// `controlplane`, and etcd is bootstrapped through the Talos API on the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<TalosConfigSpec>,
}

/// How machines are replaced when their spec changes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategyType {
    /// Replace outdated machines automatically, within maxSurge and maxUnavailable.
    #[default]
    RollingUpdate,
    /// Replace an outdated machine only after someone deletes it.
    OnDelete,
}

/// Bounds of a rolling update. Whatever the bounds, etcd quorum is never broken: a machine is
/// only removed while the remaining etcd members keep quorum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.maxSurge) && has(self.maxUnavailable) && (type(self.maxSurge) == string ? self.maxSurge == '0%' : self.maxSurge == 0) && (type(self.maxUnavailable) == string ? self.maxUnavailable == '0%' : self.maxUnavailable == 0))").message("maxSurge and maxUnavailable cannot both be zero: the rollout could never replace a machine"))]
pub struct RollingUpdate {
    /// How many machines may exist above the desired replicas during a rollout: a number or a
    /// percentage of replicas (rounded up). Defaults to 1. With 0, a machine is removed before its
    /// replacement is created (needs maxUnavailable >= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_percent")]
    pub max_surge: Option<IntOrString>,
    /// How many desired machines may be unavailable during a rollout: a number or a percentage
    /// of replicas (rounded down). When unset: 0 if maxSurge is above 0, else 1 (CACPPT's
    /// delete-first behaviour). The provider never goes below etcd quorum, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_percent")]
    pub max_unavailable: Option<IntOrString>,
}

/// What a controlPlaneConfig change that Talos can only apply with a reboot does to the
/// machines: Replace them (when unset), or reboot them InPlace one at a time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConfigReboot {
    /// Replace the machines, as for a Kubernetes version change (within maxSurge and
    /// maxUnavailable).
    #[default]
    Replace,
    /// Keep the machines: apply the change to one node at a time with a reboot
    /// (ApplyConfiguration REBOOT), etcd leadership moved away first, and go on once that node
    /// is back healthy. Only while every other node is healthy, so etcd keeps quorum.
    InPlace,
}

/// How control-plane machines are replaced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// RollingUpdate (default) or OnDelete.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::de::empty_as_none"
    )]
    #[schemars(extend("default" = "RollingUpdate"))]
    pub r#type: Option<RolloutStrategyType>,
    /// Bounds for RollingUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
    /// A controlPlaneConfig change Talos applies live is always made in place. One Talos
    /// applies only with a reboot replaces the machines (Replace, the default), or reboots
    /// them in place one at a time (InPlace).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::de::empty_as_none"
    )]
    pub config_reboot: Option<ConfigReboot>,
}

/// In-place Talos OS upgrades: nodes are upgraded over the Talos API (LifecycleService.Upgrade)
/// and keep their machines, etcd data and identity, instead of being replaced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.version) || !self.image.contains('@')").message("version is required when the image is pinned by digest: it tells upgraded nodes from the others"))]
pub struct TalosUpgrade {
    /// The Talos installer image to upgrade to, with a tag or digest. From Talos v1.14 the
    /// installer comes from the Image Factory (ghcr.io/siderolabs/installer is no longer
    /// published): factory.talos.dev/metal-installer/<schematic id>:v1.14.1, the schematic id
    /// naming the extensions (376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba
    /// for none); before, ghcr.io/siderolabs/installer:v1.13.0 or a factory image.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^\\\\s]+(:[0-9A-Za-z_.-]+|@sha256:[0-9a-f]{64})$')").message("image must name a tag or digest, for example ghcr.io/siderolabs/installer:v1.13.0"))]
    pub image: String,
    /// The Talos version the image installs (v-prefixed), used to tell upgraded nodes from
    /// outdated ones. Defaults to the image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(crate::schema::RELEASE_VERSION))]
    #[x_kube(validation = crate::schema::matches(crate::schema::RELEASE_VERSION, "version must look like v1.13.0: numbers of at most 6 digits without leading zeros"))]
    pub version: Option<String>,
    /// How many control-plane nodes may upgrade at the same time. Defaults to 1. The provider
    /// never takes down more etcd members than quorum allows, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), extend("default" = 1))]
    pub max_parallel: Option<i32>,
    /// Stage the upgrade and apply it on the next reboot (talosctl upgrade --stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<bool>,
    /// Seconds a node may take to come back healthy on the new version before its upgrade
    /// counts as failed and the rollout halts. Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: Option<i32>,
}

/// How control-plane machines that a MachineHealthCheck marks unhealthy are remediated
/// (KubeadmControlPlane's knobs). Whatever these say, one machine at a time is remediated, only
/// with at least two machines (or before initialization), and only when etcd keeps quorum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStrategy {
    /// How many times in a row a machine is replaced when its replacements keep failing
    /// (within minHealthyPeriodSeconds of each other). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_retry: Option<i32>,
    /// Seconds to wait after a remediation before remediating its replacement. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retry_period_seconds: Option<i32>,
    /// Seconds a replacement must stay healthy before its failure counts as a new problem
    /// rather than a retry. Defaults to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_healthy_period_seconds: Option<i32>,
}

/// The last remediation the control plane performed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRemediationStatus {
    /// The machine that was remediated (deleted to be replaced).
    #[schemars(length(min = 1, max = 253))]
    pub machine: String,
    /// When.
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// How many times in a row this failure was remediated before (0 the first time).
    #[schemars(range(min = 0))]
    pub retry_count: i32,
}

/// A reference to a template, as Cluster API's v1beta2 contract writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractVersionedObjectReference {
    /// API group of the referenced object, e.g. infrastructure.cluster.x-k8s.io.
    pub api_group: String,
    /// Kind of the referenced object.
    pub kind: String,
    /// Name of the referenced object, in the same namespace.
    pub name: String,
}

/// Deletion timeouts in the v1beta2 contract's shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeletionSpec {
    /// Seconds to wait for a node drain; 0 waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub node_drain_timeout_seconds: Option<i32>,
    /// Seconds to wait for volumes to detach; 0 waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub node_volume_detach_timeout_seconds: Option<i32>,
    /// Seconds to wait before deleting the Node once the Machine is marked for deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub node_deletion_timeout_seconds: Option<i32>,
}

/// machineTemplate.spec, as Cluster API's v1beta2 contract (ClusterClass topology) writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateSpec {
    /// The infrastructure machine template to clone (v1beta2 contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure_ref: Option<ContractVersionedObjectReference>,
    /// Deletion timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<MachineDeletionSpec>,
}

/// The machines' template, at the paths Cluster API's contracts and ClusterClass write.
/// Metadata and timeouts propagate to existing machines in place, without a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplate {
    /// Labels and annotations for the control-plane Machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// The infrastructure machine template to clone (v1beta1 contract). Alternative to
    /// spec.infrastructureTemplate and machineTemplate.spec.infrastructureRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure_ref: Option<ObjectReference>,
    /// How long to drain a node before deleting its machine (e.g. 10m); unset waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_drain_timeout: Option<String>,
    /// How long to wait for volumes to detach (e.g. 5m); unset waits forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_volume_detach_timeout: Option<String>,
    /// How long to wait before deleting the Node of a deleted machine (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_deletion_timeout: Option<String>,
    /// The v1beta2 contract's shape of the same template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<MachineTemplateSpec>,
}

/// TalosControlPlane manages the control-plane Machines of one Cluster: it creates them from
/// an infrastructure template with a TalosConfig each, bootstraps etcd through the Talos API,
/// keeps etcd membership in step with the machines, and rolls out changes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "controlplane.cluster.x-k8s.io",
    version = "v1alpha3",
    kind = "TalosControlPlane",
    namespaced,
    status = "TalosControlPlaneStatus",
    shortname = "tcp",
    category = "cluster-api",
    derive = "PartialEq",
    doc = "TalosControlPlane manages the Talos control-plane machines of one Cluster: creation, etcd bootstrap and membership, health, rolling updates and in-place Talos upgrades.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels['cluster\\.x-k8s\\.io/cluster-name']",
        description = "Cluster this control plane belongs to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "The control plane's API server is ready to receive requests"
    ),
    printcolumn(
        name = "Initialized",
        type_ = "boolean",
        json_path = ".status.initialized",
        description = "etcd is bootstrapped and the control plane answers"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Non-terminated control-plane machines"
    ),
    printcolumn(
        name = "Ready Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Control-plane machines whose Ready condition is True"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Control-plane machines whose Available condition is True"
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.upToDateReplicas",
        description = "Control-plane machines with the desired spec"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "Desired Kubernetes version"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.infrastructureTemplate), has(self.machineTemplate) && has(self.machineTemplate.infrastructureRef), has(self.machineTemplate) && has(self.machineTemplate.spec) && has(self.machineTemplate.spec.infrastructureRef)].filter(x, x).size() == 1").message("exactly one infrastructure reference is required: spec.infrastructureTemplate, spec.machineTemplate.infrastructureRef or spec.machineTemplate.spec.infrastructureRef"))]
pub struct TalosControlPlaneSpec {
    /// Number of control-plane machines. Defaults to 1. Use an odd number: etcd keeps quorum
    /// with (n-1)/2 members down, so 3 tolerates one failure and 4 still only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), extend("default" = 1))]
    pub replicas: Option<i32>,
    /// Kubernetes version of the control plane, with a leading v, e.g. v1.33.2.
    #[schemars(length(min = 2, max = 64), pattern(crate::schema::RELEASE_VERSION))]
    #[x_kube(validation = crate::schema::matches(crate::schema::RELEASE_VERSION, "version must be a Kubernetes version with a leading v, for example v1.33.2: numbers of at most 6 digits without leading zeros"))]
    #[x_kube(validation = crate::schema::no_skipped_minor())]
    pub version: String,
    /// The infrastructure machine template to clone for control-plane machines (CACPPT's
    /// field). Alternative to machineTemplate.infrastructureRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure_template: Option<ObjectReference>,
    /// Machine template at Cluster API's contract paths, written by ClusterClass topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_template: Option<MachineTemplate>,
    /// Talos configuration of the control-plane machines.
    pub control_plane_config: ControlPlaneConfig,
    /// How machines are replaced on changes. Defaults to RollingUpdate with maxSurge 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}))]
    pub rollout_strategy: Option<RolloutStrategy>,
    /// Optional in-place Talos OS upgrades of the control-plane nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talos_upgrade: Option<TalosUpgrade>,
    /// How machines marked unhealthy by a MachineHealthCheck are remediated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_strategy: Option<RemediationStrategy>,
    /// Replace every control-plane machine created before this time once it has passed
    /// (KubeadmControlPlane's rolloutAfter), e.g. to renew machines without a spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// v1beta2 contract: `controlPlaneInitialized` once the control plane answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct ControlPlaneInitialization {
    /// etcd is bootstrapped and the API server answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_initialized: Option<bool>,
}

/// How many control-plane machines run one Kubernetes version (Cluster API's StatusVersion).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct StatusVersion {
    /// The Kubernetes version.
    #[schemars(length(min = 1, max = 256))]
    pub version: String,
    /// Machines at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<i32>,
}

/// Observed state of a TalosControlPlane, for both Cluster API contracts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosControlPlaneStatus {
    /// Label selector of the control-plane Machines, in query-parameter form (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// v1beta2 contract: initialization progress (`controlPlaneInitialized`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ControlPlaneInitialization>,
    /// Non-terminated control-plane machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Control-plane machines whose Ready condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Control-plane machines whose Available condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Control-plane machines whose UpToDate condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_date_replicas: Option<i32>,
    /// The Kubernetes versions of the control-plane machines, oldest first, with how many
    /// machines run each (read by Cluster API v1.14+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub versions: Option<Vec<StatusVersion>>,
    /// Deprecated by the contract in favour of versions: the lowest Kubernetes version among
    /// the control-plane machines (read by Cluster API v1.12 and v1.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (metav1.Condition): Available (mirrored to Cluster ControlPlaneAvailable),
    /// Initialized, EtcdClusterHealthy, MachinesReady, RollingOut, ScalingUp, ScalingDown, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub conditions: Option<Vec<Condition>>,
    /// CACPPT and v1beta1 contract: etcd is bootstrapped and the control plane answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialized: Option<bool>,
    /// CACPPT and v1beta1 contract: the control plane's API server is ready to receive requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// CACPPT: the Talos Bootstrap call succeeded on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapped: Option<bool>,
    /// CACPPT and v1beta1 contract: control-plane machines with the desired spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// CACPPT and v1beta1 contract: desired machines not available yet (not ready or not
    /// created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_replicas: Option<i32>,
    /// v1beta1 contract: a token for a problem the control plane cannot recover from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// v1beta1 contract: a human-readable problem the control plane cannot recover from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
    /// Status in the shapes of the deprecated v1beta1 contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<ControlPlaneDeprecated>,
    /// The last remediation of a control-plane machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediation: Option<LastRemediationStatus>,
}

/// Fields kept for readers of the deprecated v1beta1 contract.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ControlPlaneDeprecated {
    /// The v1beta1-contract view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1beta1: Option<ControlPlaneV1Beta1Status>,
}

/// The v1beta1-contract view of a TalosControlPlane's status where it differs from the fields
/// above: conditions with severity, and readyReplicas counting Ready nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneV1Beta1Status {
    /// Conditions in Cluster API's v1beta1 shape (with severity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub conditions: Option<Vec<V1Beta1Condition>>,
    /// Control-plane machines whose node is Ready (the v1beta1 meaning of readyReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

impl HasConditions for TalosControlPlaneStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        self.conditions.get_or_insert_with(Vec::new)
    }

    fn v1beta1_conditions_mut(&mut self) -> &mut Vec<V1Beta1Condition> {
        self.deprecated
            .get_or_insert_with(ControlPlaneDeprecated::default)
            .v1beta1
            .get_or_insert_with(ControlPlaneV1Beta1Status::default)
            .conditions
            .get_or_insert_with(Vec::new)
    }
}

/// machineTemplate of a TalosControlPlaneTemplate: ClusterClass supplies the infrastructure
/// reference, so the template carries only metadata and timeouts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMachineTemplate {
    /// Labels and annotations for the control-plane Machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// How long to drain a node before deleting its machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_drain_timeout: Option<String>,
    /// How long to wait for volumes to detach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_volume_detach_timeout: Option<String>,
    /// How long to wait before deleting the Node of a deleted machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_deletion_timeout: Option<String>,
}

/// The TalosControlPlane spec a ClusterClass stamps out (replicas and version come from the
/// Cluster's topology).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosControlPlaneTemplateResourceSpec {
    /// Machine metadata and timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_template: Option<TemplateMachineTemplate>,
    /// Talos configuration of the control-plane machines.
    pub control_plane_config: ControlPlaneConfig,
    /// How machines are replaced on changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,
    /// Optional in-place Talos OS upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talos_upgrade: Option<TalosUpgrade>,
    /// How machines marked unhealthy by a MachineHealthCheck are remediated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_strategy: Option<RemediationStrategy>,
}

/// The TalosControlPlane a template stamps out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct TalosControlPlaneTemplateResource {
    /// Labels and annotations for the generated TalosControlPlane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// The generated TalosControlPlane's spec, without replicas and version.
    pub spec: TalosControlPlaneTemplateResourceSpec,
}

/// TalosControlPlaneTemplate is the control-plane blueprint of a ClusterClass.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "controlplane.cluster.x-k8s.io",
    version = "v1alpha3",
    kind = "TalosControlPlaneTemplate",
    namespaced,
    category = "cluster-api",
    derive = "PartialEq",
    doc = "TalosControlPlaneTemplate is the control-plane blueprint of a ClusterClass.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct TalosControlPlaneTemplateSpec {
    /// The TalosControlPlane to stamp out.
    pub template: TalosControlPlaneTemplateResource,
}
