//! bootstrap.cluster.x-k8s.io: TalosConfig and TalosConfigTemplate.
pub mod v1alpha3;

pub const GROUP: &str = "bootstrap.cluster.x-k8s.io";
