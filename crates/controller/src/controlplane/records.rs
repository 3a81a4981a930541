//! The records the controller keeps on objects, as JSON in annotations: an upgrade or a
//! configuration change under way on a Machine, a remediation. What survives a restart lives
//! on the objects; this module depends on nothing else of the controller, so the model and
//! every planner can name them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A record the controller keeps as JSON in an annotation (an upgrade or a configuration
/// change under way on a Machine, a remediation): what survives a restart lives on the objects.
/// One that does not read as a record (a hand edit) is ignored.
pub trait Annotation: serde::Serialize + serde::de::DeserializeOwned {
    /// The record in an annotation's value; `None` when it does not read as one.
    fn parse(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }

    /// The annotation's value.
    fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The Machine annotation of an upgrade asked for and not finished: a JSON [`Upgrade`].
/// Removing it from a machine whose upgrade failed asks for another attempt.
pub const UPGRADE: &str = "controlplane.cluster.x-k8s.io/talos-upgrade";

/// An upgrade of one node, as recorded on its Machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    /// The Talos version asked for, and the installer image.
    pub version: String,
    pub image: String,
    /// The version the node ran when it was asked.
    pub from: String,
    /// When it was asked.
    pub at: Timestamp,
    /// The node accepted the upgrade (install and reboot were asked for).
    #[serde(default)]
    pub issued: bool,
    /// The node was seen down since (rebooting).
    #[serde(default)]
    pub down: bool,
    /// Why it failed, once it did: the rollout halts until the node recovers, the marker is
    /// removed, or talosUpgrade changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl Annotation for Upgrade {}

/// The Machine annotation of a configuration change tried on its node: a JSON [`ConfigChange`].
/// Removing it from a machine whose change failed asks for another attempt.
pub const CONFIG_CHANGE: &str = "controlplane.cluster.x-k8s.io/talos-config-apply";

/// A configuration change of one node, as recorded on its Machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigChange {
    /// The digest of the controlPlaneConfig it applies.
    pub digest: String,
    /// When it was asked for.
    pub at: Timestamp,
    /// The node took it in TRY mode: it runs it, and rolls it back unless confirmed.
    #[serde(default)]
    pub tried: bool,
    /// Talos can apply it only with a reboot (its answer, kept): the machine is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_reboot: Option<String>,
    /// The node was asked to apply it with a reboot (configReboot InPlace).
    #[serde(default)]
    pub rebooting: bool,
    /// The rebooting node was seen down since.
    #[serde(default)]
    pub down: bool,
    /// Why it failed, once it did: nothing else is changed in place until the marker is
    /// removed or controlPlaneConfig changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl Annotation for ConfigChange {}

impl ConfigChange {
    /// The node was asked to reboot into it, and that has not failed: it is watched closely.
    pub fn reboot_under_way(&self) -> bool {
        self.rebooting && self.failed.is_none()
    }
}

/// One remediation, as both annotations carry it (KubeadmControlPlane's RemediationData).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    pub machine: String,
    pub timestamp: Time,
    pub retry_count: i32,
}

impl Annotation for Remediation {}
