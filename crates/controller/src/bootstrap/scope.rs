//! Observe: every read a TalosConfig reconcile needs, into a plain [`Scope`].

use api::bootstrap::v1alpha3::TalosConfig;
use api::capi::{Cluster, GROUP as CAPI_GROUP, Machine, labels};
use kube::ResourceExt;

use crate::{Context, Error};

/// What one reconcile knows about the world.
#[derive(Debug, Clone)]
pub struct Scope {
    pub config: TalosConfig,
    /// The Machine that owns the config (Cluster API makes it the controller owner).
    pub machine: Option<Machine>,
    pub cluster_name: Option<String>,
    /// `None` when the Cluster does not exist (yet).
    pub cluster: Option<Cluster>,
}

impl Scope {
    pub fn namespace(&self) -> String {
        self.config.namespace().unwrap_or_default()
    }
}

/// The name of the Machine that owns `config`, matched by group and kind so that either
/// apiVersion (v1beta1 or v1beta2) works.
pub fn owner_machine(config: &TalosConfig) -> Option<String> {
    config.owner_references().iter().find_map(|o| {
        let group = o.api_version.split('/').next().unwrap_or_default();
        (o.kind == "Machine" && group == CAPI_GROUP).then(|| o.name.clone())
    })
}

/// Everything comes from the shared caches, which the triggering change has already reached.
pub fn observe(ctx: &Context, config: TalosConfig) -> Result<Scope, Error> {
    let ns = config.namespace().unwrap_or_default();
    let machine = match owner_machine(&config) {
        Some(name) => ctx.caches.machine(&ns, &name)?,
        None => None,
    };
    let cluster_name = config
        .labels()
        .get(labels::CLUSTER_NAME)
        .cloned()
        .or_else(|| machine.as_ref().map(|m| m.spec.cluster_name.clone()))
        .filter(|n| !n.is_empty());
    let cluster = match &cluster_name {
        Some(name) => ctx.caches.cluster(&ns, name)?,
        None => None,
    };
    Ok(Scope {
        config,
        machine,
        cluster_name,
        cluster,
    })
}
