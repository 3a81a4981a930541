//! controlplane.cluster.x-k8s.io: TalosControlPlane and TalosControlPlaneTemplate.
pub mod v1alpha3;

pub const GROUP: &str = "controlplane.cluster.x-k8s.io";
