//! What the planners decide: one step, or why none is taken. Depends only on the wait
//! reasons, so the model and every planner can name a step.

use super::wait_reason::WaitReason;

/// One step, or why none is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create a control-plane machine (with its TalosConfig and infrastructure), in this
    /// failure domain when the Cluster has control-plane domains, unless `limit` machines
    /// (counting those being deleted) exist already.
    CreateMachine {
        failure_domain: Option<String>,
        limit: usize,
    },
    /// Bootstrap etcd on this machine's node: exactly once per cluster.
    BootstrapEtcd { machine: String },
    /// Remove an etcd member that belongs to no machine (quorum survives its removal).
    RemoveOrphanMember { id: u64, name: String },
    /// A machine being deleted still carries our pre-terminate hook: move etcd leadership away
    /// and remove its member (when `member` is set), then release the hook so Cluster API
    /// can finish the deletion.
    ReleaseMachine {
        machine: String,
        member: Option<u64>,
    },
    /// Remediate this unhealthy machine: record the remediation, then delete it (its member
    /// leaves through [`Step::ReleaseMachine`]); scaling up replaces it.
    Remediate { machine: String, retry_count: i32 },
    /// Delete this machine (scale-down, or replacement in a rolling update); its etcd member
    /// leaves through [`Step::ReleaseMachine`] before Cluster API removes its infrastructure.
    ScaleDown { machine: String },
    /// Upgrade this machine's node to the target Talos version in place: record the upgrade
    /// on the Machine, move etcd leadership away, install and reboot.
    UpgradeTalos { machine: String },
    /// Record that the upgrading node was seen down (rebooting).
    UpgradeSeenDown { machine: String },
    /// The upgrade of this machine's node failed: record why; the rollout halts.
    UpgradeFailed { machine: String, why: String },
    /// The node is back, healthy, on the target version: clear the record.
    UpgradeDone { machine: String },
    /// The record is for another target (talosUpgrade changed): clear it.
    ForgetUpgrade { machine: String },
    /// Try the new configuration on this machine's node (ApplyConfiguration TRY): record it
    /// on the Machine, then ask.
    TryConfig { machine: String },
    /// The node is healthy on the tried configuration (or back from rebooting into it): make it
    /// permanent (NO_REBOOT), record the new digest on the Machine and clear the record.
    ConfirmConfig { machine: String },
    /// Apply the new configuration to this machine's node with a reboot (rolloutStrategy
    /// configReboot InPlace, once Talos said the change needs one): move etcd leadership
    /// away, then ask, and record it on the Machine.
    RebootConfig { machine: String },
    /// Record that the node rebooting into its new configuration was seen down.
    ConfigRebootSeenDown { machine: String },
    /// The tried configuration failed on this machine: record why; in-place changes halt.
    ConfigChangeFailed { machine: String, why: String },
    /// The record is for another configuration (controlPlaneConfig changed): clear it.
    ForgetConfigChange { machine: String },
    /// Nothing may change now; the reason and message say why, for a condition.
    Wait { reason: WaitReason, message: String },
    /// The control plane has the desired shape.
    Steady,
}
