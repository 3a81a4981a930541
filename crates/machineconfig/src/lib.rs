//! Talos machine configuration, done in Rust: the secrets bundle, rendering of init /
//! controlplane / worker configurations per version contract, RFC 6902 and strategic merge
//! patches, validation, and talosconfig generation. Pure: no Kubernetes client, no network.
#![forbid(unsafe_code)]

mod contract;
mod error;
pub mod kubeconfig;
pub mod limits;
pub mod migrate;
pub mod model;
pub mod parse;
pub mod patch;
pub mod render;
pub mod secrets;
pub mod talosconfig;
pub mod validate;
pub mod values;

pub use contract::Contract;
pub use error::{BoxError, DecodeError, EndpointProblem, Error, Problems};
pub use limits::{LIMITS, LimitError, Limits, RENDER_LIMITS, RenderBudget, RenderLimits};
pub use patch::{Patch, PatchError, Patcher};
pub use render::{Input, MachineType, render};
pub use secrets::SecretsBundle;
pub use validate::{Mode, Report, validate};

/// Render, patch (in the order given; the bootstrap provider passes JSON 6902 patches before
/// strategic merge patches, as Talos's providers do) and serialize one configuration.
pub fn generate(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
    patches: &[Patch],
) -> Result<String, Error> {
    let docs = render(machine_type, input, bundle)?;
    let docs = patch::apply(docs, patches)?;
    render::to_yaml(&docs)
}
