//! talos-capi's Kubernetes API, drop-in compatible with CABPT/CACPPT v1alpha3 and serving both
//! Cluster API contracts (v1beta1 and v1beta2).
//!
//! Types live in versioned modules (`bootstrap::v1alpha3`, `controlplane::v1alpha3`) so that a
//! later version (v1beta1) can be added beside them and converted by a webhook; the kinds'
//! behaviour (validation rules, contract labels) is described once in [`crds`].
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod capi;
pub mod conditions;
pub mod controlplane;
pub mod crds;
mod de;
pub mod docs;
mod schema;

pub use crds::{all as all_crds, to_yaml};
