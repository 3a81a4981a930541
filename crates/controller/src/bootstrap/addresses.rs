//! A TalosConfig's addresses from IPAM pools ([`crate::ipam`]): claimed before its bootstrap
//! data is rendered, held by a finalizer, released once its machine's infrastructure is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use api::bootstrap::v1alpha3::TalosConfig;
use api::capi::annotations;
use api::conditions::{ConditionType, Observation, Status, reason};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use machineconfig::values::Pool;
use serde_json::json;

use super::scope::Scope;
use super::state::Ctx;
use super::status::Report;
use crate::Error;
use crate::ipam::{self, Claims, FINALIZER};

/// How often a TalosConfig being deleted looks again for its machine's infrastructure, besides
/// the Machine's own changes (which reconcile it at once).
const RELEASE_RECHECK: Duration = Duration::from_secs(10);

/// The addresses of the pools `scope`'s TalosConfig names, by pool, once every claim is bound
/// (none named: none). `None` while one waits: `report` then says which, and why.
pub(super) async fn claimed(
    ctx: &Ctx,
    scope: &Scope,
    cluster_name: &str,
    report: &mut Report,
) -> Result<Option<BTreeMap<String, Pool>>, Error> {
    let config = &scope.config;
    if ipam::pools(config).is_empty() {
        return Ok(Some(BTreeMap::new()));
    }
    // The finalizer first: no claim exists that the TalosConfig's deletion would not release.
    if !config.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = config.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        patch_finalizers(ctx, config, finalizers).await?;
    }
    match ipam::claim(&ctx.client, config, cluster_name).await? {
        Claims::Bound(pools) => Ok(Some(pools)),
        Claims::Waiting { reason, message } => {
            report.data = Some(
                Observation::new(ConditionType::DataSecretAvailable, Status::False, reason)
                    .message(message),
            );
            Ok(None)
        }
    }
}

/// A TalosConfig being deleted: once its machine's infrastructure is gone, delete its claims
/// and let it go. Paused (its own annotation, or its Cluster): nothing is released.
pub(super) async fn finalize(ctx: &Ctx, scope: &Scope) -> Result<Action, Error> {
    let config = &scope.config;
    if !config.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let paused = config.annotations().contains_key(annotations::PAUSED)
        || scope.cluster.as_ref().and_then(|c| c.paused_by()).is_some();
    if paused {
        return Ok(Action::await_change());
    }
    if let Some(waiting) = ipam::still_running(&ctx.client, scope.machine.as_ref()).await? {
        let deleting = Observation::new(
            ConditionType::Deleting,
            Status::True,
            reason::WAITING_FOR_DELETION,
        )
        .message(waiting);
        let report = Report {
            deleting: Some(deleting),
            ..Report::default()
        };
        super::write_status(ctx, config, &report).await?;
        return Ok(Action::requeue(RELEASE_RECHECK));
    }
    ipam::release(&ctx.client, config).await?;
    let finalizers = config
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, config, finalizers).await?;
    Ok(Action::await_change())
}

/// Set the finalizers, guarded by resourceVersion.
async fn patch_finalizers(
    ctx: &Ctx,
    config: &TalosConfig,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let ns = config.namespace().unwrap_or_default();
    let name = config.name_any();
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &super::talosconfig_resource());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": config.meta().resource_version,
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "setting the finalizers of TalosConfig {ns}/{name}"
        )))?;
    Ok(())
}
