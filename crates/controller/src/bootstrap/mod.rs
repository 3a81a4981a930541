//! The TalosConfig controller: renders each TalosConfig into its Machine's bootstrap data
//! Secret, keeps the cluster's secrets bundle, CA and talosconfig Secrets, and reports status
//! for both Cluster API contracts. Event-driven: it reacts to its TalosConfigs, their Secrets,
//! their Machines and their Clusters, never to a timer.

mod addresses;
pub mod plan;
pub mod render;
pub mod scope;
pub mod secrets;
pub mod state;
pub mod status;

use std::sync::Arc;

use api::bootstrap::v1alpha3::{GenerateType, TalosConfig, TalosConfigStatus};
use api::capi::{Machine, labels};
use api::conditions::{ConditionType, Observation, Severity, Status, reason};
use futures::{StreamExt, TryStreamExt};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::{Context, Error, cache, report};
use plan::Gate;
use secrets::DataOutcome;
use state::Ctx;
use status::Report;

pub const CONTROLLER: &str = "talosconfig";

pub(crate) use crate::cache::talosconfig_resource;

/// The controller, subscribed to the shared caches; it runs when awaited, until `shutdown`
/// resolves. `None` when the caches' watches have already started.
pub fn controller(
    shared: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Option<impl std::future::Future<Output = ()>> {
    let ctx = Arc::new(Ctx::new(shared));
    let ar = talosconfig_resource();
    let configs = cache::raw_api(&ctx.client, &ctx.options, &ar);
    let secrets = ctx.caches.subscribe_secrets()?;
    let machines = ctx.caches.subscribe_machines()?;
    let clusters = ctx.caches.subscribe_clusters()?;

    // The controller's own store keeps TalosConfigs typed, decoded once as they arrive and
    // without their managed fields; one that does not decode is kept as its metadata and error.
    let writer = kube::runtime::reflector::store::Writer::<TalosConfig>::default();
    let reader = writer.as_reader();
    let own = kube::runtime::reflector(
        writer,
        cache::retried(ctx.caches.tracked(
            "talosconfigs",
            crate::raw::watch(configs, cache::filtered(&ctx.options)),
        ))
        .map_ok(cache::typed_event::<TalosConfig>),
    )
    .applied_objects();
    let controller = Controller::for_stream_with(own, reader, ()).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.options.concurrency),
    );
    let (machine_store, cluster_store) = (controller.store(), controller.store());
    let controller = controller
        .owns_shared_stream(secrets)
        .watches_shared_stream_with(
            machines,
            move |machine| configs_for_machine(&machine_store, &machine),
            (),
        )
        .watches_shared_stream_with(
            clusters,
            move |cluster| {
                configs_of_cluster(
                    &cluster_store,
                    &cluster.namespace().unwrap_or_default(),
                    &cluster.name_any(),
                    false,
                )
            },
            (),
        )
        .graceful_shutdown_on(shutdown);
    let controller = match ctx.take_wakeups() {
        Some(wakeups) => controller.reconcile_on(wakeups),
        None => controller,
    };
    // MachinePools are few and only watched when asked for (Cluster API's MachinePool feature).
    let controller = if ctx.options.machine_pools {
        let pools = cache::capi_resource("MachinePool");
        let changes = changes(&ctx, &pools, cache::filtered(&ctx.options));
        controller.watches_stream_with(changes, |pool| config_of_pool(&pool), pools)
    } else {
        controller
    };
    // The claims of TalosConfigs that name IPAM pools: one bound to an address renders its
    // TalosConfig.
    let claims = crate::ipam::claim_resource();
    let changes = changes(&ctx, &claims, crate::ipam::watched(&ctx.options));
    let controller =
        controller.watches_stream_with(changes, |claim| config_of_claim(&claim), claims);
    Some(
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "talosconfig controller");
                }
            }),
    )
}

/// A Machine's own TalosConfig; for a control-plane Machine also every control-plane
/// TalosConfig of its cluster (their talosconfig endpoints follow the machine's addresses).
fn configs_for_machine(
    store: &Store<TalosConfig>,
    machine: &Machine,
) -> Vec<ObjectRef<TalosConfig>> {
    let ns = machine.namespace().unwrap_or_default();
    let mut refs = Vec::new();
    if let Some(config_ref) = &machine.spec.bootstrap.config_ref
        && config_ref.kind == "TalosConfig"
        && !config_ref.name.is_empty()
    {
        refs.push(ObjectRef::new(&config_ref.name).within(&ns));
    }
    let cluster = &machine.spec.cluster_name;
    if machine.labels().contains_key(labels::CONTROL_PLANE) && !cluster.is_empty() {
        refs.extend(configs_of_cluster(store, &ns, cluster, true));
    }
    refs
}

/// The TalosConfig a MachinePool's template boots its instances with.
fn config_of_pool(pool: &DynamicObject) -> Option<ObjectRef<TalosConfig>> {
    let config_ref = &pool.data["spec"]["template"]["spec"]["bootstrap"]["configRef"];
    let name = config_ref["name"]
        .as_str()
        .filter(|_| config_ref["kind"] == "TalosConfig")?;
    Some(ObjectRef::new(name).within(&pool.namespace()?))
}

/// The objects of kind `ar` that `watched` selects, as they change.
fn changes(
    ctx: &Ctx,
    ar: &kube::api::ApiResource,
    watched: kube::runtime::watcher::Config,
) -> impl futures::Stream<Item = Result<DynamicObject, kube::runtime::watcher::Error>> + use<> {
    let events = crate::raw::watch(cache::raw_api(&ctx.client, &ctx.options, ar), watched);
    cache::retried(events)
        .touched_objects()
        .map_ok(cache::dynamic)
}

/// The TalosConfig that made an IPAddressClaim.
fn config_of_claim(claim: &DynamicObject) -> Option<ObjectRef<TalosConfig>> {
    let owner = claim
        .owner_references()
        .iter()
        .find(|o| o.kind == "TalosConfig" && o.controller == Some(true))?;
    Some(ObjectRef::new(&owner.name).within(&claim.namespace()?))
}

fn configs_of_cluster(
    store: &Store<TalosConfig>,
    ns: &str,
    cluster: &str,
    control_plane_only: bool,
) -> Vec<ObjectRef<TalosConfig>> {
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .filter(|c| c.labels().get(labels::CLUSTER_NAME).map(String::as_str) == Some(cluster))
        .filter(|c| {
            !control_plane_only
                || matches!(
                    c.spec.generate_type,
                    Some(GenerateType::Controlplane | GenerateType::Init)
                )
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn key(obj: &TalosConfig) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile(obj: Arc<TalosConfig>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.reconciled(CONTROLLER, &key(&obj), reconcile_inner(&obj, &ctx))
        .await
}

fn error_policy(obj: Arc<TalosConfig>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.after_error(CONTROLLER, &key(&obj), error)
}

async fn reconcile_inner(obj: &TalosConfig, ctx: &Arc<Ctx>) -> Result<Action, Error> {
    let config = match cache::decoded(obj) {
        Ok(c) => c,
        Err(Error::Decode { kind, source }) => {
            let ar = talosconfig_resource();
            let mut stand_in = DynamicObject::new(&obj.name_any(), &ar);
            stand_in.metadata = obj.metadata.clone();
            crate::report::undecodable(
                ctx,
                &stand_in,
                &ar,
                ConditionType::DataSecretAvailable,
                &source,
            )
            .await?;
            return Err(Error::Decode { kind, source });
        }
        Err(e) => return Err(e),
    };
    let scope = scope::observe(ctx, config).await?;
    if scope.config.meta().deletion_timestamp.is_some() {
        return addresses::finalize(ctx, &scope).await;
    }
    let mut report = Report::default();
    let waiter = ObjectRef::from_obj(obj);
    let outcome = act(ctx, &scope, waiter, &mut report).await;
    match &outcome {
        // Nothing to report yet: the reconcile runs again once the bundle is stored.
        Ok(Acted::Deferred) => return Ok(Action::await_change()),
        Ok(Acted::Done) => {}
        Err(e) => {
            report.data.get_or_insert_with(|| failure_observation(e));
        }
    }
    write_status(ctx, &scope.config, &report).await?;
    outcome.map(|_| Action::await_change())
}

/// Whether [`act`] got to the end.
enum Acted {
    Done,
    /// Another reconcile is generating the cluster's secrets bundle; this one runs again after.
    Deferred,
}

fn data_available(message: String) -> Observation {
    Observation::new(
        ConditionType::DataSecretAvailable,
        Status::True,
        reason::AVAILABLE,
    )
    .message(message)
}

fn failure_observation(e: &Error) -> Observation {
    let (r, severity) = match e {
        Error::Spec(spec) => (spec.reason(), Severity::Error),
        Error::InvalidSecret { .. }
        | Error::Bundle {
            transient: false, ..
        } => (reason::INVALID_SECRET, Severity::Error),
        Error::Bundle { .. } => (reason::INTERNAL_ERROR, Severity::Warning),
        Error::Kube { .. }
        | Error::Decode { .. }
        | Error::Talos { .. }
        | Error::Missing(_)
        | Error::StatusRefused { .. } => (reason::INTERNAL_ERROR, Severity::Warning),
    };
    Observation::new(ConditionType::DataSecretAvailable, Status::False, r)
        .message(e.to_string())
        .severity(severity)
}

/// Observe → gate → render → write; fills `report` as it goes.
async fn act(
    ctx: &Arc<Ctx>,
    scope: &scope::Scope,
    waiter: ObjectRef<TalosConfig>,
    report: &mut Report,
) -> Result<Acted, Error> {
    let gate = plan::gate(scope);
    let (machine, cluster, cluster_name) =
        match (&gate, &scope.machine, &scope.cluster, &scope.cluster_name) {
            (Gate::Paused(source), ..) => {
                report.paused = Some(source.clone());
                return Ok(Acted::Done);
            }
            (Gate::Wait { reason, message }, ..) => {
                report.data = Some(
                    Observation::new(ConditionType::DataSecretAvailable, Status::False, reason)
                        .message(message.clone()),
                );
                return Ok(Acted::Done);
            }
            (Gate::Reuse(name), ..) => {
                report.data_secret_name = Some(name.clone());
                report.data = Some(data_available(format!(
                    "reusing Secret {name} named by the Machine"
                )));
                return Ok(Acted::Done);
            }
            (Gate::Render, Some(m), Some(c), Some(n)) => (m, c, n),
            // plan::gate only renders once the machine, the cluster and its name are known.
            (Gate::Render, ..) => {
                return Err(Error::Spec(crate::SpecError::Invalid(
                    "the owner Machine or its Cluster is not known yet".into(),
                )));
            }
        };
    let Some(pools) = addresses::claimed(ctx, scope, cluster_name, report).await? else {
        return Ok(Acted::Done);
    };
    let ns = scope.namespace();
    let Some(bundle) = secrets::bundle(ctx, &ns, cluster, waiter).await? else {
        return Ok(Acted::Deferred);
    };
    let values = render::machine_values(machine, cluster_name, pools);
    let (value, moved) = render_once(
        ctx,
        scope,
        (machine, cluster, cluster_name),
        &bundle,
        &values,
    )?;
    let name = scope
        .config
        .status
        .as_ref()
        .and_then(|s| s.data_secret_name.clone())
        .unwrap_or_else(|| plan::data_secret_name(&machine.name_any()));
    let outcome = secrets::data(ctx, &scope.config, machine, cluster_name, &name, &value).await?;
    report.data_secret_name = Some(name.clone());
    report.data = Some(data_available(format!("bootstrap data in Secret {name}")));
    report.config_up_to_date = Some(config_up_to_date(outcome, &name, machine));

    report.fields_current = status::fields_current(&scope.config.spec, moved);

    let client_config = secrets::client_secrets(ctx, &ns, cluster, &bundle).await;
    report.client_config = Some(client_config_available(&client_config, cluster_name));
    client_config.map(|()| Acted::Done)
}

/// ConfigUpToDate: whether the rendered configuration is what Secret `name` holds, or one its
/// machine has already consumed differs.
fn config_up_to_date(outcome: DataOutcome, name: &str, machine: &Machine) -> Observation {
    match outcome {
        DataOutcome::Differs => Observation::new(
            ConditionType::ConfigUpToDate,
            Status::False,
            reason::RUNNING_CONFIG_DIFFERS,
        )
        .message(format!(
            "the spec renders a configuration that differs from Secret {name}, which machine {} has already consumed; \
             the running machine keeps its configuration (replace the machine, or apply the change through the control plane)",
            machine.name_any()
        ))
        .severity(Severity::Warning),
        _ => Observation::new(ConditionType::ConfigUpToDate, Status::True, reason::UP_TO_DATE),
    }
}

/// ClientConfigAvailable. A talosconfig Secret that cannot be read is a person's to fix: said
/// as such, with a Warning Event; anything else (the API server) is retried.
fn client_config_available(written: &Result<(), Error>, cluster_name: &str) -> Observation {
    let type_ = ConditionType::ClientConfigAvailable;
    match written {
        Ok(()) => Observation::new(type_, Status::True, reason::AVAILABLE).message(format!(
            "talosconfig in Secret {}",
            secrets::talosconfig_name(cluster_name)
        )),
        Err(e @ Error::InvalidSecret { .. }) => {
            Observation::new(type_, Status::False, reason::INVALID_SECRET)
                .message(e.to_string())
                .severity(Severity::Error)
        }
        Err(e) => Observation::new(type_, Status::False, reason::NOT_AVAILABLE)
            .message(e.to_string())
            .severity(Severity::Warning),
    }
}

/// The machine configuration of `scope`'s TalosConfig; or, when its last render failed for a
/// spec reason with the same inputs (its spec's generation, its Machine's and Cluster's render
/// inputs, the bundle), that failure again without rendering: a reconcile on the object's own
/// status write, or on a status change of its Machine or Cluster, does not render it again.
fn render_once(
    ctx: &Ctx,
    scope: &scope::Scope,
    (machine, cluster, cluster_name): (&Machine, &api::capi::Cluster, &str),
    bundle: &machineconfig::SecretsBundle,
    values: &machineconfig::values::MachineValues,
) -> Result<(String, Vec<String>), crate::SpecError> {
    let key = key(&scope.config);
    let bundle_version = ctx
        .secret(
            &scope.namespace(),
            &secrets::bundle_name(&cluster.name_any()),
        )
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.uid.as_deref().unwrap_or_default(),
                s.metadata.resource_version.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let digest = render::inputs_digest(
        &scope.config,
        (machine, cluster, cluster_name),
        values,
        &bundle_version,
    );
    if let Some(failed) = digest.and_then(|d| ctx.failed_renders.get(&key, d)) {
        ctx.metrics.rendered("unchanged");
        return Err(failed);
    }
    let rendered = render::machine_config_noting_moved_fields(
        &scope.config.spec,
        machine,
        cluster,
        cluster_name,
        bundle,
        values,
    );
    ctx.metrics.rendered(if rendered.is_ok() {
        "rendered"
    } else {
        "failed"
    });
    ctx.failed_renders
        .set(&key, digest.zip(rendered.as_ref().err()));
    rendered
}

async fn write_status(ctx: &Ctx, config: &TalosConfig, report: &Report) -> Result<(), Error> {
    let old = config.status.clone().unwrap_or_default();
    let now = ctx.clock.now();
    let new: TalosConfigStatus = status::status(&old, report, config.meta().generation, &now);
    if api::conditions::equal_ignoring_time(&old, &new) {
        return Ok(());
    }
    let status = serde_json::to_value(&new).map_err(|source| Error::Decode {
        kind: "TalosConfigStatus",
        source,
    })?;
    let ns = config.namespace().unwrap_or_default();
    let ar = talosconfig_resource();
    report::apply_status(ctx, &ar, &ns, &config.name_any(), status).await?;
    let changed = report::transitions(old.conditions.as_deref(), new.conditions.as_deref());
    report::publish(
        ctx,
        &config.object_ref(&()),
        changed,
        ConditionType::Ready,
        status::is_error_reason,
    )
    .await;
    Ok(())
}
