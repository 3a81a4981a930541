//! Typed conditions, written in every shape a Cluster API contract reads.
//!
//! Cluster API v1.12+ (contract v1beta2) reads `status.conditions` as `metav1.Condition`s; the
//! v1beta1 shape (with `severity`) is kept under `status.deprecated.v1beta1.conditions`, as
//! Cluster API's own providers do, for tools that still read it. Controllers never build either
//! shape by hand: they describe an [`Observation`] and call [`set`], which keeps
//! `lastTransitionTime` while the status is unchanged and updates both lists together.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A condition in metav1.Condition's shape, which Cluster API v1.12+ reads in
/// `status.conditions`. Unlike metav1's schema, only type and status are required, so status
/// written by other tools (or CABPT, or the seed manifests) still reads; what we write always
/// carries reason, message and lastTransitionTime.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase, e.g. Ready, DataSecretAvailable, EtcdClusterHealthy.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// Machine-readable reason for the last transition, in CamelCase.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Human-readable details about the last transition.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the condition last changed status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The condition types our kinds report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// Summary: mirrored by Cluster API to Machine BootstrapConfigReady / Cluster ControlPlaneReady.
    Ready,
    /// Whether reconciliation is paused (never part of Ready).
    Paused,
    /// TalosConfig: the bootstrap data Secret is written.
    DataSecretAvailable,
    /// TalosConfig: the `<cluster>-talosconfig` client configuration is written.
    ClientConfigAvailable,
    /// TalosConfig: the running machine's configuration matches the spec.
    ConfigUpToDate,
    /// TalosConfig (contract v1.14 on): its patches set no v1alpha1 field Talos v1.14 moved into
    /// a document of its own. Advice only: never part of Ready.
    ConfigFieldsCurrent,
    /// TalosControlPlane: mirrored by Cluster API to Cluster ControlPlaneAvailable.
    Available,
    Initialized,
    /// TalosControlPlane, CACPPT's v1alpha3 condition beside `status.bootstrapped`: etcd is
    /// bootstrapped. CACPPT sets it only while it bootstraps etcd itself, so a control plane it
    /// takes back would never be Ready without it.
    MachinesBootstrapped,
    CertificatesAvailable,
    EtcdClusterHealthy,
    ControlPlaneComponentsHealthy,
    MachinesReady,
    MachinesUpToDate,
    RollingOut,
    ScalingUp,
    ScalingDown,
    Remediating,
    Deleting,
    /// Machine (set by the TalosControlPlane controller on its machines): the machine matches
    /// the control plane's spec.
    UpToDate,
    /// Machine (set by the TalosControlPlane controller on its machines): its etcd member is a
    /// healthy voter.
    EtcdMemberHealthy,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Paused => "Paused",
            ConditionType::DataSecretAvailable => "DataSecretAvailable",
            ConditionType::ClientConfigAvailable => "ClientConfigAvailable",
            ConditionType::ConfigUpToDate => "ConfigUpToDate",
            ConditionType::ConfigFieldsCurrent => "ConfigFieldsCurrent",
            ConditionType::Available => "Available",
            ConditionType::Initialized => "Initialized",
            ConditionType::MachinesBootstrapped => "MachinesBootstrapped",
            ConditionType::CertificatesAvailable => "CertificatesAvailable",
            ConditionType::EtcdClusterHealthy => "EtcdClusterHealthy",
            ConditionType::ControlPlaneComponentsHealthy => "ControlPlaneComponentsHealthy",
            ConditionType::MachinesReady => "MachinesReady",
            ConditionType::MachinesUpToDate => "MachinesUpToDate",
            ConditionType::RollingOut => "RollingOut",
            ConditionType::ScalingUp => "ScalingUp",
            ConditionType::ScalingDown => "ScalingDown",
            ConditionType::Remediating => "Remediating",
            ConditionType::Deleting => "Deleting",
            ConditionType::UpToDate => "UpToDate",
            ConditionType::EtcdMemberHealthy => "EtcdMemberHealthy",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True, False or Unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    pub fn from_bool(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

/// How bad a False v1beta1 condition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        }
    }
}

/// Reasons, one constant per condition outcome, in CamelCase as metav1 requires.
/// The most a condition message holds, in bytes. Messages echo what users wrote (a patch's
/// path, a parse error), and the API server refuses a status whose message is over 32,768
/// bytes (our schema) or 10,240 (Cluster API's); a longer one is cut, with a marker.
pub const MESSAGE_LIMIT: usize = 4096;

/// `text` if it fits in `limit` bytes; otherwise its start, cut at a character boundary, and a
/// marker saying how many bytes were left out, all within `limit`.
pub fn bounded(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let marker = |cut: usize| format!(" … [{cut} more bytes]");
    // The marker's own length depends on the count; the longest one fits any cut.
    let keep = limit.saturating_sub(marker(text.len()).len());
    let keep = (0..=keep)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let cut = text.len() - keep;
    text.truncate(keep);
    text.push_str(&marker(cut));
    text
}

pub mod reason {
    // Shared.
    pub const READY: &str = "Ready";
    pub const NOT_READY: &str = "NotReady";
    pub const PAUSED: &str = "Paused";
    pub const NOT_PAUSED: &str = "NotPaused";
    pub const INTERNAL_ERROR: &str = "InternalError";
    pub const DELETING: &str = "Deleting";
    pub const NOT_DELETING: &str = "NotDeleting";
    // TalosConfig.
    pub const AVAILABLE: &str = "Available";
    pub const NOT_AVAILABLE: &str = "NotAvailable";
    pub const WAITING_FOR_OWNER: &str = "WaitingForOwner";
    pub const WAITING_FOR_CLUSTER_INFRASTRUCTURE: &str = "WaitingForClusterInfrastructure";
    pub const WAITING_FOR_CONTROL_PLANE_ENDPOINT: &str = "WaitingForControlPlaneEndpoint";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PATCH_FAILED: &str = "PatchFailed";
    pub const RENDER_FAILED: &str = "RenderFailed";
    pub const INVALID_SECRET: &str = "InvalidSecret";
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const RUNNING_CONFIG_DIFFERS: &str = "RunningConfigDiffers";
    pub const FIELDS_CURRENT: &str = "FieldsCurrent";
    pub const FIELDS_MOVED: &str = "FieldsMoved";
    /// A patch names a per-machine value that is unknown, or that the machine does not have.
    pub const VALUE_UNRESOLVED: &str = "ValueUnresolved";
    /// An IPAddressClaim of the machine is not bound yet (`message` names pool and claim).
    pub const WAITING_FOR_IP_ADDRESS: &str = "WaitingForIPAddress";
    /// The pool a claim waits on has no free address.
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    // TalosControlPlane.
    pub const INITIALIZED: &str = "Initialized";
    pub const NOT_INITIALIZED: &str = "NotInitialized";
    pub const BOOTSTRAPPED: &str = "Bootstrapped";
    /// CACPPT's reason for MachinesBootstrapped False.
    pub const WAITING_FOR_MACHINES: &str = "WaitingForMachines";
    pub const HEALTHY: &str = "Healthy";
    pub const NOT_HEALTHY: &str = "NotHealthy";
    pub const HEALTH_UNKNOWN: &str = "HealthUnknown";
    pub const NOT_UP_TO_DATE: &str = "NotUpToDate";
    pub const SCALING_UP: &str = "ScalingUp";
    pub const NOT_SCALING_UP: &str = "NotScalingUp";
    pub const SCALING_DOWN: &str = "ScalingDown";
    pub const NOT_SCALING_DOWN: &str = "NotScalingDown";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const NOT_ROLLING_OUT: &str = "NotRollingOut";
    pub const NO_MACHINES: &str = "NoMachines";
    pub const REMEDIATING: &str = "Remediating";
    pub const NOT_REMEDIATING: &str = "NotRemediating";
    pub const TALOS_API_UNREACHABLE: &str = "TalosApiUnreachable";
    pub const WAITING_FOR_WORKERS: &str = "WaitingForWorkersDeletion";
    /// The API server refused a status write (an Event's reason: the status cannot say it).
    pub const STATUS_REFUSED: &str = "StatusRefused";
    // Why a TalosControlPlane takes no step now (the planner's WaitReason).
    pub const INVALID_REPLICAS: &str = "InvalidReplicas";
    pub const MACHINE_DELETING: &str = "MachineDeleting";
    pub const ETCD_UNKNOWN: &str = "EtcdUnknown";
    pub const ETCD_QUORUM_AT_RISK: &str = "EtcdQuorumAtRisk";
    pub const ETCD_MEMBER_MISSING: &str = "EtcdMemberMissing";
    pub const ETCD_MEMBER_UNHEALTHY: &str = "EtcdMemberUnhealthy";
    pub const CONTROL_PLANE_COMPONENTS_UNHEALTHY: &str = "ControlPlaneComponentsUnhealthy";
    pub const WAITING_FOR_AVAILABLE_MACHINES: &str = "WaitingForAvailableMachines";
    pub const INVALID_VERSION: &str = "InvalidVersion";
    pub const VERSION_SKEW: &str = "VersionSkew";
    pub const VERSION_UNSUPPORTED: &str = "VersionUnsupported";
    pub const WAITING_FOR_DELETION: &str = "WaitingForDeletion";
    pub const REMEDIATION_WAITING: &str = "RemediationWaiting";
    pub const REMEDIATION_BLOCKED: &str = "RemediationBlocked";
    pub const REMEDIATION_RETRY_PERIOD: &str = "RemediationRetryPeriod";
    pub const REMEDIATION_RETRIES_EXHAUSTED: &str = "RemediationRetriesExhausted";
    pub const TALOS_UPGRADE_FAILED: &str = "TalosUpgradeFailed";
    pub const TALOS_UPGRADE_IN_PROGRESS: &str = "TalosUpgradeInProgress";
    pub const TALOS_CONFIG_CHANGE_FAILED: &str = "TalosConfigChangeFailed";
    pub const TALOS_CONFIG_CHANGE_IN_PROGRESS: &str = "TalosConfigChangeInProgress";
    pub const TALOS_CONFIG_REBOOT_IN_PROGRESS: &str = "TalosConfigRebootInProgress";
    pub const WAITING_FOR_HEALTHY_NODES: &str = "WaitingForHealthyNodes";
    pub const WAITING_FOR_NODE: &str = "WaitingForNode";
    pub const WAITING_FOR_CACHE: &str = "WaitingForCache";
}

/// What a controller observed for one condition type.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub type_: ConditionType,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
    /// For the v1beta1 shape; ignored unless the status is False.
    pub severity: Severity,
}

impl Observation {
    pub fn new(type_: ConditionType, status: Status, reason: &'static str) -> Self {
        Observation {
            type_,
            status,
            reason,
            message: String::new(),
            severity: Severity::Info,
        }
    }

    /// The condition's message, cut to [`MESSAGE_LIMIT`] bytes (see [`bounded`]).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = bounded(message.into(), MESSAGE_LIMIT);
        self
    }

    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

/// A condition in Cluster API's v1beta1 shape (`severity`, optional reason), kept under
/// `status.deprecated.v1beta1.conditions`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Beta1Condition {
    /// Type of condition in CamelCase, e.g. Ready, DataSecretAvailable, EtcdClusterHealthy.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: String,
    /// Severity (Error, Warning or Info) classifies a False condition; empty otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Machine-readable reason for the last transition, in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition last changed status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// A status that carries conditions in both shapes.
pub trait HasConditions {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn v1beta1_conditions_mut(&mut self) -> &mut Vec<V1Beta1Condition>;
}

/// Record `observation` in both condition lists of `status`. `lastTransitionTime` changes only
/// when the condition's status changes; reason, message and observedGeneration always follow
/// the observation.
pub fn set(
    status: &mut impl HasConditions,
    observation: &Observation,
    generation: Option<i64>,
    now: &Time,
) {
    let type_ = observation.type_.as_str();
    let status_str = observation.status.as_str();

    let metav1 = status.conditions_mut();
    let transition = match metav1.iter().find(|c| c.type_ == type_) {
        Some(old) if old.status == status_str => old
            .last_transition_time
            .clone()
            .unwrap_or_else(|| now.clone()),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status: status_str.to_owned(),
        reason: observation.reason.to_owned(),
        message: observation.message.clone(),
        observed_generation: generation,
        last_transition_time: Some(transition.clone()),
    };
    upsert(metav1, condition, |c| c.type_ == type_);

    let severity = (observation.status == Status::False).then(|| observation.severity.as_str());
    let legacy = V1Beta1Condition {
        type_: type_.to_owned(),
        status: status_str.to_owned(),
        severity: severity.map(str::to_owned),
        reason: Some(observation.reason.to_owned()),
        message: (!observation.message.is_empty()).then(|| observation.message.clone()),
        last_transition_time: Some(transition),
    };
    upsert(status.v1beta1_conditions_mut(), legacy, |c| {
        c.type_ == type_
    });
}

/// Drop condition `type_` from both condition lists of `status`: for a condition that only
/// exists while it has something to say.
pub fn remove(status: &mut impl HasConditions, type_: ConditionType) {
    let type_ = type_.as_str();
    status.conditions_mut().retain(|c| c.type_ != type_);
    status.v1beta1_conditions_mut().retain(|c| c.type_ != type_);
}

fn upsert<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|c| same(c)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

/// The condition of `type_` in a metav1 list.
pub fn get(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

/// Whether two statuses are equal once every `lastTransitionTime` is ignored, so that a
/// controller never writes a status that only differs by a timestamp.
pub fn equal_ignoring_time<T: Serialize>(a: &T, b: &T) -> bool {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("lastTransitionTime");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(mut a), Ok(mut b)) => {
            strip(&mut a);
            strip(&mut b);
            a == b
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[derive(Default, Serialize)]
    struct Both {
        conditions: Vec<Condition>,
        v1beta1: Vec<V1Beta1Condition>,
    }

    impl HasConditions for Both {
        fn conditions_mut(&mut self) -> &mut Vec<Condition> {
            &mut self.conditions
        }
        fn v1beta1_conditions_mut(&mut self) -> &mut Vec<V1Beta1Condition> {
            &mut self.v1beta1
        }
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut s = Both::default();
        let waiting = Observation::new(
            ConditionType::DataSecretAvailable,
            Status::False,
            reason::WAITING_FOR_OWNER,
        )
        .message("no Machine owns this TalosConfig yet")
        .severity(Severity::Info);
        set(&mut s, &waiting, Some(1), &at(10));
        let reworded = waiting.clone().message("still waiting");
        set(&mut s, &reworded, Some(2), &at(20));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].last_transition_time, Some(at(10)));
        assert_eq!(s.conditions[0].message, "still waiting");
        assert_eq!(s.conditions[0].observed_generation, Some(2));
        assert_eq!(s.v1beta1[0].severity.as_deref(), Some("Info"));

        let ready = Observation::new(
            ConditionType::DataSecretAvailable,
            Status::True,
            reason::AVAILABLE,
        );
        set(&mut s, &ready, Some(2), &at(30));
        assert_eq!(s.conditions[0].last_transition_time, Some(at(30)));
        assert_eq!(s.v1beta1[0].last_transition_time, Some(at(30)));
        assert_eq!(s.v1beta1[0].severity, None, "severity is only set on False");
        assert_eq!(s.v1beta1[0].message, None);
        assert!(is_true(&s.conditions, ConditionType::DataSecretAvailable));
    }

    #[test]
    fn equality_ignores_only_time() {
        let obs = Observation::new(ConditionType::Ready, Status::True, reason::READY);
        let mut a = Both::default();
        let mut b = Both::default();
        set(&mut a, &obs, Some(1), &at(1));
        set(&mut b, &obs, Some(1), &at(99));
        assert!(equal_ignoring_time(&a, &b));
        set(&mut b, &obs.clone().message("different"), Some(1), &at(99));
        assert!(!equal_ignoring_time(&a, &b));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_with_a_marker_within_the_limit() {
        assert_eq!(bounded("short".into(), 16), "short");
        for text in ["x".repeat(40_000), "é".repeat(20_000), "€a".repeat(9_000)] {
            let cut = bounded(text.clone(), MESSAGE_LIMIT);
            assert!(cut.len() <= MESSAGE_LIMIT, "{} bytes", cut.len());
            assert!(cut.len() > MESSAGE_LIMIT - 32, "{} bytes", cut.len());
            let kept = cut.split(" … [").next().unwrap_or_default();
            assert!(text.starts_with(kept));
            assert!(
                cut.ends_with(&format!(" … [{} more bytes]", text.len() - kept.len())),
                "{}",
                &cut[cut.len() - 40..]
            );
        }
        let observed = Observation::new(ConditionType::Ready, Status::False, reason::INVALID_SPEC)
            .message("m".repeat(100_000));
        assert!(observed.message.len() <= MESSAGE_LIMIT);
    }
}
