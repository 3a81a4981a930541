//! Observe: every read a TalosConfig reconcile needs, into a plain [`Scope`].

use api::bootstrap::v1alpha3::TalosConfig;
use api::capi::{Cluster, GROUP as CAPI_GROUP, Machine, MachineSpec, labels};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};

use super::state::Ctx;
use crate::Error;
use crate::cache::capi_resource;

/// What one reconcile knows about the world.
#[derive(Debug, Clone)]
pub struct Scope {
    pub config: TalosConfig,
    /// The Machine that owns the config (Cluster API makes it the controller owner).
    pub machine: Option<Machine>,
    pub cluster_name: Option<String>,
    /// `None` when the Cluster does not exist (yet).
    pub cluster: Option<Cluster>,
    /// A MachinePool owns the config but MachinePool support is off (`--machine-pools`).
    pub unsupported_pool: Option<String>,
}

impl Scope {
    pub fn namespace(&self) -> String {
        self.config.namespace().unwrap_or_default()
    }
}

/// The name of the Cluster API object of `kind` (Machine or MachinePool) that owns `config`,
/// matched by group and kind so that either apiVersion (v1beta1 or v1beta2) works.
pub fn owner(config: &TalosConfig, kind: &str) -> Option<String> {
    config.owner_references().iter().find_map(|o| {
        let group = o.api_version.split('/').next().unwrap_or_default();
        (o.kind == kind && group == CAPI_GROUP).then(|| o.name.clone())
    })
}

/// A MachinePool as the Machine each of its instances boots as: its name, cluster, Kubernetes
/// version and the data Secret its template names. It never counts as booted, so the pool's
/// data follows its spec (the infrastructure provider rolls the instances).
pub fn pool_as_machine(pool: &DynamicObject) -> Machine {
    let spec = &pool.data["spec"];
    let template = &spec["template"]["spec"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let mut machine = Machine::new(
        &pool.name_any(),
        MachineSpec {
            cluster_name: text(&spec["clusterName"]).unwrap_or_default(),
            version: text(&template["version"]),
            ..MachineSpec::default()
        },
    );
    machine.spec.bootstrap.data_secret_name = text(&template["bootstrap"]["dataSecretName"]);
    machine.metadata.namespace = pool.namespace();
    machine.metadata.labels = Some(pool.labels().clone());
    machine
}

/// Machines come from the shared caches, which the triggering change has already reached; a
/// MachinePool (rarer, and only with `--machine-pools`) is read from the API server.
pub async fn observe(ctx: &Ctx, config: TalosConfig) -> Result<Scope, Error> {
    let ns = config.namespace().unwrap_or_default();
    let mut unsupported_pool = None;
    let machine = match (owner(&config, "Machine"), owner(&config, "MachinePool")) {
        (Some(name), _) => ctx.caches.machine(&ns, &name)?,
        (None, Some(pool)) if ctx.options.machine_pools => Api::<DynamicObject>::namespaced_with(
            ctx.client.clone(),
            &ns,
            &capi_resource("MachinePool"),
        )
        .get_opt(&pool)
        .await
        .map_err(Error::kube(format!("reading MachinePool {ns}/{pool}")))?
        .map(|p| pool_as_machine(&p)),
        (None, Some(pool)) => {
            unsupported_pool = Some(pool);
            None
        }
        (None, None) => None,
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
        unsupported_pool,
    })
}
