//! Why a TalosControlPlane takes no step now: typed, each mapped to the condition reason that
//! reports it. Depends on nothing but the API's reason constants, so the model and every
//! planner can name one.

use api::conditions::reason;

/// Why nothing may change now: the reason a condition reports it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    InvalidReplicas,
    MachineDeleting,
    EtcdUnknown,
    EtcdQuorumAtRisk,
    EtcdMemberMissing,
    EtcdMemberUnhealthy,
    ControlPlaneComponentsUnhealthy,
    WaitingForAvailableMachines,
    InvalidVersion,
    VersionSkew,
    VersionUnsupported,
    WaitingForDeletion,
    RollingOut,
    RemediationWaiting,
    RemediationBlocked,
    RemediationRetryPeriod,
    RemediationRetriesExhausted,
    TalosUpgradeFailed,
    TalosUpgradeInProgress,
    TalosConfigChangeFailed,
    TalosConfigChangeInProgress,
    TalosConfigRebootInProgress,
    WaitingForHealthyNodes,
    WaitingForNode,
    WaitingForCache,
}

impl WaitReason {
    /// The condition reason (`api::conditions::reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::InvalidReplicas => reason::INVALID_REPLICAS,
            WaitReason::MachineDeleting => reason::MACHINE_DELETING,
            WaitReason::EtcdUnknown => reason::ETCD_UNKNOWN,
            WaitReason::EtcdQuorumAtRisk => reason::ETCD_QUORUM_AT_RISK,
            WaitReason::EtcdMemberMissing => reason::ETCD_MEMBER_MISSING,
            WaitReason::EtcdMemberUnhealthy => reason::ETCD_MEMBER_UNHEALTHY,
            WaitReason::ControlPlaneComponentsUnhealthy => {
                reason::CONTROL_PLANE_COMPONENTS_UNHEALTHY
            }
            WaitReason::WaitingForAvailableMachines => reason::WAITING_FOR_AVAILABLE_MACHINES,
            WaitReason::InvalidVersion => reason::INVALID_VERSION,
            WaitReason::VersionSkew => reason::VERSION_SKEW,
            WaitReason::VersionUnsupported => reason::VERSION_UNSUPPORTED,
            WaitReason::WaitingForDeletion => reason::WAITING_FOR_DELETION,
            WaitReason::RollingOut => reason::ROLLING_OUT,
            WaitReason::RemediationWaiting => reason::REMEDIATION_WAITING,
            WaitReason::RemediationBlocked => reason::REMEDIATION_BLOCKED,
            WaitReason::RemediationRetryPeriod => reason::REMEDIATION_RETRY_PERIOD,
            WaitReason::RemediationRetriesExhausted => reason::REMEDIATION_RETRIES_EXHAUSTED,
            WaitReason::TalosUpgradeFailed => reason::TALOS_UPGRADE_FAILED,
            WaitReason::TalosUpgradeInProgress => reason::TALOS_UPGRADE_IN_PROGRESS,
            WaitReason::TalosConfigChangeFailed => reason::TALOS_CONFIG_CHANGE_FAILED,
            WaitReason::TalosConfigChangeInProgress => reason::TALOS_CONFIG_CHANGE_IN_PROGRESS,
            WaitReason::TalosConfigRebootInProgress => reason::TALOS_CONFIG_REBOOT_IN_PROGRESS,
            WaitReason::WaitingForHealthyNodes => reason::WAITING_FOR_HEALTHY_NODES,
            WaitReason::WaitingForNode => reason::WAITING_FOR_NODE,
            WaitReason::WaitingForCache => reason::WAITING_FOR_CACHE,
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
