//! Condition shapes for both Cluster API contracts.
//!
//! `status.conditions` holds [`Condition`]: Cluster API's v1beta1 shape (with `severity`) plus
//! `observedGeneration`, so a v1beta1 reader (Cluster API v1.10) and a v1beta2 reader (v1.11+,
//! which reads `metav1.Condition`) both find what they expect. We always set `reason`, which
//! metav1 requires. `status.v1beta2.conditions` holds plain `metav1.Condition`s for Cluster API
//! v1.10, which looks there first.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as MetaCondition;

/// An observation of the object's state, readable as a Cluster API v1beta1 condition and as a
/// metav1 condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
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
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
