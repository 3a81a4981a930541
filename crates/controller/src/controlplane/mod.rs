//! The TalosControlPlane controller's decisions. `scope` is the pure control-plane model
//! (KubeadmControlPlane's `ControlPlane`): failure-domain placement, scale-down order,
//! preflight checks and quorum-safe etcd membership, all without I/O.

pub mod plan;
pub mod scope;
