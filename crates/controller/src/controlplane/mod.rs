//! The TalosControlPlane controller: creates the control-plane Machines of a Cluster,
//! bootstraps etcd through the Talos API exactly once, keeps etcd membership in step with the
//! machines, scales in KubeadmControlPlane's order, writes the workload kubeconfig, and reports
//! status for both Cluster API contracts.
//!
//! Each reconcile observes (caches, then the nodes' Talos API), decides one step without I/O
//! ([`plan::next_step`] over the [`scope::ControlPlane`] model), takes it, and reports. It is
//! driven by events on its objects, Machines, Clusters and cluster Secrets; the Talos API has
//! no events to offer, so while something is in progress it looks again after a second, and
//! otherwise only on a slow resync.

mod config_change;
mod execute;
pub mod expectations;
pub mod infra;
pub mod kubeconfig;
pub mod machines;
pub mod plan;
mod reconcile;
pub mod reconfigure;
pub mod records;
pub mod remediation;
pub mod rollout;
pub mod scope;
pub mod state;
pub mod status;
pub mod step;
pub mod talos;
pub mod upgrade;
pub mod wait_reason;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use api::capi::{Cluster, Machine, annotations, has_annotation, labels};
use api::conditions::{ConditionType, Observation, Status, reason};
use api::controlplane::v1alpha3::TalosControlPlane;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

pub(crate) use crate::cache::talosconfig_resource;
use crate::{Context, Error, cache, report};
pub use records::Annotation;
use scope::{ControlPlane, MachineView};
use state::Ctx;
use status::{Counted, Report};

pub const CONTROLLER: &str = "taloscontrolplane";
/// CACPPT's finalizer, so that control planes it created are adopted as they are.
pub const FINALIZER: &str = "talos.controlplane.cluster.x-k8s.io";
/// How soon to look again while something is in progress (the Talos API has no events): half
/// a second keeps the reaction to a node or member becoming healthy under a second.
const IN_PROGRESS: Duration = Duration::from_millis(500);
/// How soon to look again while a new member settles (a learner, or promoted and not healthy
/// yet; see `ControlPlane::member_settling`): the rollout's next step waits for exactly that.
const SETTLING_LOOK: Duration = Duration::from_millis(100);
/// How soon to look again while waiting for the first node to answer, to bootstrap etcd.
const FIRST_NODE: Duration = Duration::from_millis(200);
/// The longest wait between looks at a control plane while one of its nodes does not answer.
const UNREACHABLE_MAX: Duration = Duration::from_secs(30);

pub fn resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "controlplane.cluster.x-k8s.io",
        "v1alpha3",
        "TalosControlPlane",
    ))
}

fn own_ref(ns: &str, name: &str) -> ObjectRef<DynamicObject> {
    ObjectRef::new_with(name, resource()).within(ns)
}

/// The TalosControlPlane among `obj`'s owners (only as its controller, with `controller`), as
/// the controller's queue names it.
pub(crate) fn owning_control_plane(
    obj: &impl Resource,
    controller: bool,
) -> Option<ObjectRef<DynamicObject>> {
    let ns = obj.meta().namespace.as_deref()?;
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "TalosControlPlane" && (!controller || o.controller == Some(true)))
        .map(|o| own_ref(ns, &o.name))
}

/// The TalosControlPlane a Cluster names as its control plane.
fn of_cluster(cluster: &Cluster) -> Option<ObjectRef<DynamicObject>> {
    let r = cluster.spec.control_plane_ref.as_ref()?;
    (r.kind == "TalosControlPlane" && !r.name.is_empty())
        .then(|| Some(own_ref(&cluster.namespace()?, &r.name)))?
}

/// The TalosControlPlane that controls a Machine; for a worker Machine on its way out, its
/// cluster's (a control plane being deleted waits for the workers to go first).
fn of_machine(ctx: &Ctx, machine: &Machine) -> Option<ObjectRef<DynamicObject>> {
    if let Some(owner) = owning_control_plane(machine, true) {
        return Some(owner);
    }
    let leaving_worker = machine.meta().deletion_timestamp.is_some() && !machine.is_control_plane();
    leaving_worker
        .then(|| control_plane_of(ctx, &machine.namespace()?, &machine.spec.cluster_name))
        .flatten()
}

/// The TalosControlPlane of the Cluster `cluster` in `ns`, as the cached Cluster names it.
fn control_plane_of(ctx: &Ctx, ns: &str, cluster: &str) -> Option<ObjectRef<DynamicObject>> {
    of_cluster(&ctx.caches.cluster(ns, cluster).ok()??)
}

/// The controller, subscribed to the shared caches; it runs when awaited, until `shutdown`
/// resolves. `None` when the caches' watches have already started.
pub fn controller(
    shared: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Option<impl std::future::Future<Output = ()>> {
    let ctx = Arc::new(Ctx::new(shared));
    let ar = resource();
    let api = cache::raw_api(&ctx.client, &ctx.options, &ar);
    let machines = ctx.caches.subscribe_machines()?;
    let clusters = ctx.caches.subscribe_clusters()?;
    let secrets = ctx.caches.subscribe_secrets()?;
    let configs = ctx.caches.subscribe_configs()?;
    let writer = kube::runtime::reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let own = kube::runtime::reflector(
        writer,
        cache::retried(ctx.caches.tracked(
            "taloscontrolplanes",
            crate::raw::watch(api, cache::filtered(&ctx.options)),
        ))
        .map_ok(|event| crate::raw::map_event(event, cache::dynamic)),
    )
    .applied_objects();
    let lookup = Arc::clone(&ctx);
    let machine_lookup = Arc::clone(&ctx);
    let controller = Controller::for_stream_with(own, reader, ar)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.options.controlplane_concurrency),
        )
        .watches_shared_stream_with(machines, move |m| of_machine(&machine_lookup, &m), ())
        .watches_shared_stream_with(clusters, |c| of_cluster(&c), ())
        // A cluster Secret (its talosconfig, bundle or kubeconfig) concerns the cluster's
        // control plane.
        .watches_shared_stream_with(
            secrets,
            move |secret| {
                let cluster = secret.labels().get(labels::CLUSTER_NAME)?;
                control_plane_of(&lookup, &secret.namespace()?, cluster)
            },
            (),
        )
        // A control-plane TalosConfig of ours that no Machine controls (yet): one a creation
        // cut short may have left behind. (Once its Machine controls it, the Machine's own
        // changes tell what matters.)
        .watches_shared_stream_with(
            configs,
            |config| {
                let controlled = config
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true));
                (!controlled).then(|| owning_control_plane(&*config, false))?
            },
            talosconfig_resource(),
        )
        .graceful_shutdown_on(shutdown);
    // A workload Node's readiness changed.
    let controller = match ctx.workloads.take_wakeups() {
        Some(wakeups) => controller.reconcile_on(wakeups),
        None => controller,
    };
    Some(
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "taloscontrolplane controller");
                }
            }),
    )
}

fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

fn key_of(tcp: &TalosControlPlane) -> String {
    format!("{}/{}", tcp.namespace().unwrap_or_default(), tcp.name_any())
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.reconciled(CONTROLLER, &key(&obj), reconcile::reconcile(&obj, &ctx))
        .await
}

fn error_policy(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.after_error(CONTROLLER, &key(&obj), error)
}

/// The Cluster that owns a TalosControlPlane (Cluster API sets it from controlPlaneRef).
fn owner_cluster(tcp: &TalosControlPlane) -> Option<String> {
    tcp.owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.starts_with("cluster.x-k8s.io/"))
        .map(|o| o.name.clone())
}

fn controlled_by(machine: &Machine, tcp: &TalosControlPlane) -> bool {
    machine.owner_references().iter().any(|o| {
        o.controller == Some(true) && o.kind == "TalosControlPlane" && o.name == tcp.name_any()
    })
}

fn condition_is(machine: &Machine, type_: &str, status: &str) -> bool {
    debug_assert!(
        crate::cache::MACHINE_CONDITIONS_READ.contains(&type_),
        "the cache drops {type_}"
    );
    machine
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == status))
}

/// The TalosControlPlane `obj` holds, read from its fields where they are: a spec carries the
/// control plane's patches (up to a MiB of values), which a round trip through one JSON value
/// would copy once more on every reconcile.
fn typed(obj: &DynamicObject) -> Result<TalosControlPlane, serde_json::Error> {
    use serde::Deserialize;
    let field = |name: &str| obj.data.get(name).filter(|v| !v.is_null());
    let spec = field("spec").ok_or_else(|| serde::de::Error::missing_field("spec"))?;
    Ok(TalosControlPlane {
        metadata: obj.metadata.clone(),
        spec: Deserialize::deserialize(spec)?,
        status: field("status").map(Deserialize::deserialize).transpose()?,
    })
}

fn counted(m: &Machine) -> Counted {
    Counted {
        name: m.name_any(),
        version: m.spec.version.clone(),
        ready: condition_is(m, "Ready", "True"),
        available: condition_is(m, "Available", "True"),
    }
}

/// What `m` was made from, as recorded on it.
fn made(m: &Machine) -> rollout::Made {
    let annotation = |key: &str| m.annotations().get(key).cloned();
    rollout::Made {
        version: m.spec.version.clone(),
        template: annotation(machines::MADE_FROM_TEMPLATE),
        template_digest: annotation(machines::MADE_FROM_TEMPLATE_DIGEST),
        config_digest: annotation(machines::MADE_FROM_CONFIG_DIGEST)
            .filter(|d| d != machines::UNKNOWN_DIGEST),
        pools: annotation(machines::MADE_WITH_POOLS).filter(|p| p != machines::UNKNOWN_DIGEST),
        created: m
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    }
}

fn view(
    m: &Machine,
    target: &rollout::Target,
    talos_target: Option<&str>,
    observed: &talos::Observed,
    nodes: Option<&workload::Nodes>,
) -> MachineView {
    let made = made(m);
    let other_pools = made.pools.as_ref().is_some_and(|p| *p != target.pools);
    MachineView {
        node_not_ready: nodes
            .and_then(|n| n.find(&talos::hostname(m), m.spec.provider_id.as_deref()))
            .and_then(|n| n.why.clone().filter(|_| !n.ready)),
        name: m.name_any(),
        hostname: talos::hostname(m),
        created: m
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        failure_domain: m.spec.failure_domain.clone(),
        deleting: m.meta().deletion_timestamp.is_some(),
        delete_annotated: has_annotation(m.meta(), annotations::DELETE_MACHINE),
        version: m.spec.version.clone(),
        outdated: rollout::outdated(&made, target),
        components_healthy: observed
            .health
            .get(&m.name_any())
            .is_some_and(|h| h.components),
        node_problem: observed
            .health
            .get(&m.name_any())
            .and_then(|h| h.problem.clone()),
        cleanup_hook: has_annotation(m.meta(), &machines::cleanup_hook()),
        unhealthy: condition_is(m, "HealthCheckSucceeded", "False")
            && condition_is(m, "OwnerRemediated", "False"),
        remediation_for: m
            .annotations()
            .get(remediation::FOR)
            .and_then(|v| remediation::Record::parse(v)),
        talos_version: observed
            .health
            .get(&m.name_any())
            .and_then(|h| h.talos_version.clone()),
        reachable: observed
            .health
            .get(&m.name_any())
            .is_some_and(|h| h.reachable),
        upgrade: m
            .annotations()
            .get(upgrade::MARKER)
            .and_then(|v| upgrade::Marker::parse(v)),
        // A machine on other pools is replaced, not changed in place: it has no claim to
        // render the new configuration with.
        config_pending: !other_pools
            && made
                .config_digest
                .as_ref()
                .is_some_and(|d| *d != target.config_digest),
        config_digest: made.config_digest.clone().filter(|_| !other_pools),
        reconfigure: reconfigure_marker(m),
        talos_pending: talos_target.and_then(|want| {
            let runs = observed
                .health
                .get(&m.name_any())?
                .talos_version
                .as_deref()?;
            (runs.trim_start_matches('v') != want.trim_start_matches('v'))
                .then(|| format!("Talos {runs} → {want}, to be upgraded in place"))
        }),
    }
}

/// The in-place configuration change recorded on `m`.
fn reconfigure_marker(m: &Machine) -> Option<reconfigure::Marker> {
    m.annotations()
        .get(reconfigure::MARKER)
        .and_then(|v| reconfigure::Marker::parse(v))
}

/// The remediation in progress, else the newest one a machine answers.
fn last_remediation(tcp: &TalosControlPlane, view: &ControlPlane) -> Option<remediation::Record> {
    tcp.annotations()
        .get(remediation::IN_PROGRESS)
        .and_then(|v| remediation::Record::parse(v))
        .or_else(|| {
            view.machines
                .iter()
                .filter_map(|m| m.remediation_for.clone())
                .max_by(|a, b| a.timestamp.cmp(&b.timestamp))
        })
}

/// The CertificatesAvailable condition for a kubeconfig outcome, with an Event when it was
/// (re)issued.
async fn certificates(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: &str,
    outcome: kubeconfig::Outcome,
) -> Observation {
    let name = kubeconfig::name(cluster);
    let note = match &outcome {
        kubeconfig::Outcome::NoBundle => {
            return Observation::new(
                ConditionType::CertificatesAvailable,
                Status::False,
                reason::NOT_AVAILABLE,
            )
            .message(format!(
                "waiting for the cluster's secrets bundle ({}), created with the first machine's TalosConfig",
                crate::bootstrap::secrets::bundle_name(cluster)
            ));
        }
        kubeconfig::Outcome::Created => {
            Some(format!("issued the admin kubeconfig in Secret {name}"))
        }
        kubeconfig::Outcome::Rotated(why) => Some(format!(
            "issued the admin kubeconfig in Secret {name} again: {why}"
        )),
        kubeconfig::Outcome::Current => None,
    };
    if let Some(note) = note {
        report::event(
            ctx,
            &tcp.object_ref(&()),
            EventType::Normal,
            "KubeconfigIssued",
            &note,
        )
        .await;
    }
    Observation::new(
        ConditionType::CertificatesAvailable,
        Status::True,
        reason::AVAILABLE,
    )
    .message(format!("admin kubeconfig in Secret {name}"))
}

/// Set (or, with null values, remove) `annotations` on `tcp`'s `machine`, and expect the cache
/// to show them before the next step; `what` is for the error.
async fn annotate_machine(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    machine: &str,
    annotations: serde_json::Value,
    what: &str,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let patch = json!({"metadata": {"annotations": &annotations}});
    Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &ns,
        &cache::capi_resource("Machine"),
    )
    .patch(machine, &PatchParams::default(), &Patch::Merge(&patch))
    .await
    .map_err(Error::kube(format!("{what} machine {ns}/{machine}")))?;
    for (key, value) in annotations.as_object().into_iter().flatten() {
        let value = match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        ctx.expectations
            .annotated(&key_of(tcp), machine, key, value.as_deref());
    }
    Ok(())
}

/// Addresses of machines whose etcd is healthy (other than `except`), to send etcd calls
/// through.
fn healthy_addresses(machines: &[Machine], report: &Report, except: Option<&str>) -> Vec<String> {
    machines
        .iter()
        .filter(|m| Some(m.name_any().as_str()) != except)
        .filter(|m| {
            report
                .view
                .machines
                .iter()
                .any(|v| v.name == m.name_any() && v.components_healthy)
        })
        .filter_map(talos::address)
        .collect()
}

/// Entropy for a machine name: the clock's nanoseconds mixed with the object's uid.
fn entropy(tcp: &TalosControlPlane) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tcp.meta().uid.hash(&mut h);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Merge `metadata` into the TalosControlPlane's metadata (`what` names the change in errors).
async fn patch_metadata(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    metadata: serde_json::Value,
    what: &str,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &resource());
    api.patch(
        &tcp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "metadata": metadata })),
    )
    .await
    .map(drop)
    .map_err(Error::kube(format!(
        "updating the {what} of TalosControlPlane {ns}/{}",
        tcp.name_any()
    )))
}

/// Set (or with `None` remove) an annotation of the TalosControlPlane.
async fn annotate(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    key: &str,
    value: Option<&str>,
) -> Result<(), Error> {
    patch_metadata(
        ctx,
        tcp,
        json!({"annotations": {key: value}}),
        "annotations",
    )
    .await
}

async fn ensure_finalizer(ctx: &Ctx, tcp: &TalosControlPlane) -> Result<(), Error> {
    if tcp.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = tcp.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    patch_finalizers(ctx, tcp, finalizers).await
}

/// Set the finalizers, guarded by resourceVersion.
async fn patch_finalizers(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let metadata = json!({"finalizers": finalizers, "resourceVersion": tcp.resource_version()});
    patch_metadata(ctx, tcp, metadata, "finalizers").await
}

/// A TalosControlPlane being deleted: once the cluster's worker machines are gone, delete every
/// control-plane machine (releasing our hooks: etcd goes with the cluster), then let go.
async fn finalize(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: &str,
    machines: &[Machine],
    mut report: Report,
) -> Result<Action, Error> {
    if !tcp.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = tcp.namespace().unwrap_or_default();
    ctx.steady_looks.forget(&key_of(tcp));
    // The workload cluster goes with it: its Nodes are not watched any more.
    ctx.workloads.forget(&ns, cluster);
    ctx.drift
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key_of(tcp));
    let workers = ctx
        .caches
        .machines_of(&ns, cluster, false)
        .into_iter()
        .filter(|m| !m.is_control_plane())
        .count();
    if workers > 0 {
        report.deleting = Some(format!(
            "waiting for the worker machines of Cluster {cluster} to be deleted first ({workers} left)"
        ));
        write_status(ctx, tcp, &report).await?;
        return Ok(Action::await_change());
    }
    if machines.is_empty() {
        ctx.metrics.rollout(&ns, &tcp.name_any(), None);
        let finalizers = tcp
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        return patch_finalizers(ctx, tcp, finalizers)
            .await
            .map(|()| Action::await_change());
    }
    for m in machines {
        let name = m.name_any();
        if m.meta().deletion_timestamp.is_none() {
            machines::delete(ctx, &ns, &name).await?;
        }
        if has_annotation(m.meta(), &machines::cleanup_hook()) {
            machines::release(ctx, &ns, &name).await?;
        }
    }
    report.deleting = Some(format!(
        "deleting {} control-plane machines",
        machines.len()
    ));
    write_status(ctx, tcp, &report).await?;
    Ok(Action::await_change())
}

async fn write_status(ctx: &Ctx, tcp: &TalosControlPlane, report: &Report) -> Result<(), Error> {
    let old = tcp.status.clone().unwrap_or_default();
    let new = status::status(&old, report, tcp.meta().generation, &ctx.clock.now());
    if api::conditions::equal_ignoring_time(&old, &new) {
        return Ok(());
    }
    let value = serde_json::to_value(&new).map_err(|source| Error::Decode {
        kind: "TalosControlPlaneStatus",
        source,
    })?;
    report::apply_status(
        ctx,
        &resource(),
        &tcp.namespace().unwrap_or_default(),
        &tcp.name_any(),
        value,
    )
    .await?;
    let changed = report::transitions(old.conditions.as_deref(), new.conditions.as_deref());
    report::publish(
        ctx,
        &tcp.object_ref(&()),
        changed,
        ConditionType::Available,
        |r| {
            [
                reason::INVALID_SPEC,
                reason::INVALID_SECRET,
                reason::INTERNAL_ERROR,
            ]
            .contains(&r)
        },
    )
    .await;
    Ok(())
}

/// What decides when a control plane is looked at again (besides any change it watches).
#[derive(Debug, Clone, Copy, Default)]
struct Look {
    /// Nothing to do, and every node answered healthy with a healthy voting member.
    settled: bool,
    /// An in-place Talos upgrade failed and the rollout halted on it.
    halted: bool,
    /// A node is upgrading or rebooting into a new configuration in place.
    upgrading: bool,
    /// A young machine's member is still a learner or not yet healthy.
    member_settling: bool,
    bootstrapped: bool,
    /// The shortest rest left of a node that does not answer, while the plan waits or rests.
    resting: Option<Duration>,
    /// Nothing to do and every node answered (though a member may be unhealthy).
    steady: bool,
}

/// How long until the next look, in order: a settled or halted control plane at the health
/// check; a node upgrading in place, or the first node to bootstrap, closely; a young member
/// at the settling look; a node that does not answer after its rest (within half a second and
/// half a minute); a steady plan beside a long-unhealthy member at the health check; anything
/// else in progress every half second.
fn next_look(look: Look, health_check: Duration) -> Duration {
    if look.settled || look.halted {
        // A halted upgrade resumes on a change (the marker removed, the spec changed), or when
        // a health check finds the node recovered.
        health_check
    } else if look.upgrading {
        FIRST_NODE
    } else if look.member_settling {
        SETTLING_LOOK
    } else if !look.bootstrapped {
        // The first node is about to answer: it is asked often, so etcd starts without delay.
        FIRST_NODE
    } else if let Some(rest) = look.resting {
        rest.clamp(IN_PROGRESS, UNREACHABLE_MAX)
    } else if look.steady {
        // Nothing to do, but a member has been unhealthy for longer than a new one settles
        // (an alarm, say): the health check looks again, as does any change.
        health_check
    } else {
        IN_PROGRESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTH_CHECK: Duration = Duration::from_secs(3600);

    fn bootstrapped() -> Look {
        Look {
            bootstrapped: true,
            ..Look::default()
        }
    }

    #[test]
    fn each_state_of_a_control_plane_is_looked_at_again_in_its_own_time() {
        let rest = |s| Some(Duration::from_secs(s));
        let cases = [
            (
                "settled",
                Look {
                    settled: true,
                    steady: true,
                    ..bootstrapped()
                },
                HEALTH_CHECK,
            ),
            (
                "halted upgrade",
                Look {
                    halted: true,
                    ..bootstrapped()
                },
                HEALTH_CHECK,
            ),
            (
                "upgrading in place",
                Look {
                    upgrading: true,
                    ..bootstrapped()
                },
                FIRST_NODE,
            ),
            (
                "young learner beside a steady plan",
                Look {
                    member_settling: true,
                    steady: true,
                    ..bootstrapped()
                },
                SETTLING_LOOK,
            ),
            ("before the bootstrap", Look::default(), FIRST_NODE),
            (
                "a node resting 10 s",
                Look {
                    resting: rest(10),
                    ..bootstrapped()
                },
                Duration::from_secs(10),
            ),
            (
                "a node due now",
                Look {
                    resting: rest(0),
                    ..bootstrapped()
                },
                IN_PROGRESS,
            ),
            (
                "a node resting long",
                Look {
                    resting: rest(300),
                    ..bootstrapped()
                },
                UNREACHABLE_MAX,
            ),
            (
                "steady beside a long-unhealthy member",
                Look {
                    steady: true,
                    ..bootstrapped()
                },
                HEALTH_CHECK,
            ),
            ("in progress", bootstrapped(), IN_PROGRESS),
        ];
        for (what, look, expected) in cases {
            assert_eq!(next_look(look, HEALTH_CHECK), expected, "{what}: {look:?}");
        }
    }
}
