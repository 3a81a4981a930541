//! One reconcile of a TalosControlPlane, as a list of named steps: read → gate → observe →
//! housekeeping → model → plan → execute → remember → requeue → report. Nothing is written
//! before the plan except what `housekeeping` names; status is written once, at the end (or
//! where a gate stops the reconcile).

use std::time::{Duration, Instant};

use api::capi::{ApiEndpoint as Endpoint, Cluster, Machine, annotations, has_annotation, labels};
use api::conditions::{ConditionType, Observation, Severity, Status, reason};
use api::controlplane::v1alpha3::TalosControlPlane;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::Annotation as _;
use super::execute::{self, Act};
use super::plan;
use super::scope::{ControlPlane, FailureDomain};
use super::state::Ctx;
use super::status::{self, Report};
use super::step::Step;
use super::wait_reason::WaitReason;
use super::{
    IN_PROGRESS, Look, certificates, config_change, controlled_by, counted, ensure_finalizer,
    finalize, key_of, kubeconfig, last_remediation, machines, next_look, own_ref, owner_cluster,
    reconfigure, reconfigure_marker, remediation, resource, rollout, talos, typed, upgrade, view,
    workload, write_status,
};
use crate::bootstrap::secrets::talosconfig_name;
use crate::{Error, cache, report};

pub(super) async fn reconcile(obj: &DynamicObject, ctx: &Ctx) -> Result<Action, Error> {
    let tcp = read(ctx, obj).await?;
    // Until Cluster API links it to its Cluster there is nothing to do (and nothing to say).
    let Some(cluster_name) = owner_cluster(&tcp) else {
        return Ok(Action::await_change());
    };
    let ns = tcp.namespace().unwrap_or_default();
    let Some(cluster) = ctx.caches.cluster(&ns, &cluster_name)? else {
        return Ok(Action::await_change());
    };
    let mut machines: Vec<Machine> = ctx.caches.machines_of(&ns, &cluster_name, true);
    machines.retain(|m| controlled_by(m, &tcp));
    let mut report = first_report(&tcp, &cluster_name, &machines);
    if tcp.meta().deletion_timestamp.is_some() {
        return finalize(ctx, &tcp, &cluster_name, &machines, report).await;
    }
    ensure_finalizer(ctx, &tcp).await?;
    let Some((endpoint, desired)) = gate(&tcp, &cluster, &cluster_name, &mut report) else {
        write_status(ctx, &tcp, &report).await?;
        return Ok(Action::await_change());
    };
    // A step whose result the cache does not show yet is not followed by another.
    if ctx.expectations.pending(&key_of(&tcp), &machines).is_some() {
        return Ok(Action::requeue(IN_PROGRESS));
    }
    report.certificates = Some(housekeep_kubeconfig(ctx, &tcp, &cluster_name, &endpoint).await?);
    let seen = observe(ctx, &tcp, &cluster_name, &desired, &report, &mut machines).await;
    let now = ctx.clock.now().0;
    housekeep_leftovers(ctx, &tcp, &cluster_name, &seen, now).await?;
    let target = target(&tcp, &desired, &machines, &seen, now)?;
    model(
        &mut report,
        &tcp,
        &cluster,
        &desired,
        &machines,
        &target,
        &seen,
    );
    housekeep_machines(ctx, &tcp, &machines, &report).await?;

    let step = plan::next_step(&desired, report.bootstrapped, &report.view);
    let with = Act {
        talosconfig: seen.talosconfig.as_deref(),
        upgrade: desired.talos_upgrade.clone(),
        template: seen.template.ok(),
        cluster: &cluster,
        config_digest: &target.config_digest,
        reboot_in_place: desired.reboot_in_place,
    };
    let step = execute::act(ctx, &tcp, &cluster_name, &machines, with, step, &mut report).await?;
    let settled = remember(ctx, &tcp, &desired, &step, &report, &seen.look);
    report.drift = config_change::drift(
        ctx,
        &tcp,
        (&cluster, &cluster_name),
        &machines,
        seen.talosconfig.as_deref().filter(|_| settled.settled),
        &report.view,
        &target.config_digest,
    )
    .await;
    let wait = requeue(
        ctx,
        &step,
        &report,
        &machines,
        &seen.look.observed,
        settled,
        &target,
    );
    trace(ctx, &tcp, &step, wait, &report);
    report.step = Some(step);
    write_status(ctx, &tcp, &report).await?;
    Ok(Action::requeue(wait))
}

/// The TalosControlPlane in `obj`; one that does not decode says so on its status.
async fn read(ctx: &Ctx, obj: &DynamicObject) -> Result<TalosControlPlane, Error> {
    let read = match cache::undecodable(&obj.metadata) {
        Some(error) => Err(error),
        None => typed(obj),
    };
    match read {
        Ok(t) => Ok(t),
        Err(source) => {
            report::undecodable(ctx, obj, &resource(), ConditionType::Available, &source).await?;
            Err(Error::Decode {
                kind: "TalosControlPlane",
                source,
            })
        }
    }
}

fn first_report(tcp: &TalosControlPlane, cluster_name: &str, machines: &[Machine]) -> Report {
    Report {
        desired: tcp.spec.replicas.unwrap_or(1),
        selector: Some(format!(
            "{}={cluster_name},{}",
            labels::CLUSTER_NAME,
            labels::CONTROL_PLANE
        )),
        machines: machines.iter().map(counted).collect(),
        bootstrapped: tcp.status.as_ref().and_then(|s| s.bootstrapped) == Some(true),
        ..Report::default()
    }
}

/// Whether anything may be done now: not paused, the Cluster's infrastructure and endpoint
/// there, and a spec that reads. `None` stops the reconcile, with the reason in `report`;
/// otherwise the endpoint and the desired state, with what the spec asks noted in `report`.
fn gate(
    tcp: &TalosControlPlane,
    cluster: &Cluster,
    cluster_name: &str,
    report: &mut Report,
) -> Option<(Endpoint, rollout::Desired)> {
    let paused = cluster.paused_by().or_else(|| {
        has_annotation(tcp.meta(), annotations::PAUSED)
            .then_some("the TalosControlPlane has the cluster.x-k8s.io/paused annotation")
    });
    if let Some(why) = paused {
        report.paused = Some(why.to_owned());
        return None;
    }
    if !cluster.infrastructure_provisioned() {
        report.gate = Some((
            reason::WAITING_FOR_CLUSTER_INFRASTRUCTURE,
            format!("waiting for the infrastructure of Cluster {cluster_name}"),
        ));
        return None;
    }
    let Some(endpoint) = cluster.endpoint().cloned() else {
        report.gate = Some((
            reason::WAITING_FOR_CONTROL_PLANE_ENDPOINT,
            format!("waiting for Cluster {cluster_name} to get a control-plane endpoint"),
        ));
        return None;
    };
    let desired = match rollout::Desired::of(&tcp.spec) {
        Ok(d) => d,
        Err(e) => {
            report.gate = Some((reason::INVALID_SPEC, e.to_string()));
            return None;
        }
    };
    if let rollout::Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    } = desired.strategy
    {
        let want = usize::try_from(desired.replicas).unwrap_or(0);
        report.rollout_note = rollout::effective(max_surge, max_unavailable, want).note;
    } else {
        report.on_delete = true;
    }
    report.talos_target = desired.talos_upgrade.as_ref().map(|t| t.version.clone());
    report.fields_current = status::fields_current(&tcp.spec.control_plane_config.controlplane);
    Some((endpoint, desired))
}

/// Housekeeping: the workload cluster's kubeconfig Secret, made or renewed; its state for
/// CertificatesAvailable.
async fn housekeep_kubeconfig(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster_name: &str,
    endpoint: &Endpoint,
) -> Result<Observation, Error> {
    Ok(
        match kubeconfig::reconcile(ctx, tcp, cluster_name, endpoint).await {
            Ok(outcome) => certificates(ctx, tcp, cluster_name, outcome).await,
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Observation::new(
                ConditionType::CertificatesAvailable,
                Status::False,
                reason::INVALID_SECRET,
            )
            .message(e.to_string())
            .severity(Severity::Error),
        },
    )
}

/// The Talos API's answers this reconcile: kept from a steady look, or asked now.
pub(super) struct Looked {
    pub observed: talos::Observed,
    fingerprint: u64,
    at: Instant,
    /// The nodes were asked now (not a kept look).
    asked: bool,
}

/// What one reconcile sees besides the caches.
struct Seen {
    /// The infrastructure template, read on every reconcile (a change of its content rolls the
    /// machines too); one that cannot be read judges no machine on content.
    template: Result<machines::Template, Error>,
    talosconfig: Option<String>,
    look: Looked,
    /// The workload cluster's control-plane Nodes, once it has an API server to ask.
    nodes: Option<workload::Nodes>,
}

/// Observe: the infrastructure template and the machines' addresses, the Talos API (or the
/// kept steady look), and the workload cluster's Nodes.
async fn observe(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster_name: &str,
    desired: &rollout::Desired,
    report: &Report,
    machines: &mut [Machine],
) -> Seen {
    let ns = tcp.namespace().unwrap_or_default();
    let template = machines::Template::read(ctx, tcp).await;
    // A new node is asked as soon as its infrastructure machine reports its address.
    if let Ok(t) = &template {
        ctx.infra.fill_addresses(
            &ctx.client,
            &ctx.options,
            &t.infra_resource(),
            (ctx.workloads.waker(), ctx.caches.machine_store()),
            machines,
        );
    }
    let talosconfig = ctx
        .caches
        .secret(&ns, &talosconfig_name(cluster_name))
        .and_then(|s| s.data.as_ref()?.get("talosconfig").cloned())
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    let look = look(
        ctx,
        tcp,
        cluster_name,
        desired,
        talosconfig.as_deref(),
        machines,
    )
    .await;
    let nodes = match ctx.caches.secret(&ns, &kubeconfig::name(cluster_name)) {
        Some(secret) if report.bootstrapped || look.observed.members.is_some() => {
            let own = own_ref(&ns, &tcp.name_any());
            match ctx.workloads.nodes(&ns, cluster_name, &secret, own).await {
                Ok(nodes) => Some(nodes),
                Err(why) => {
                    tracing::debug!(cluster = %cluster_name, %why, "workload Nodes");
                    None
                }
            }
        }
        _ => None,
    };
    Seen {
        template,
        talosconfig,
        look,
        nodes,
    }
}

/// The nodes' answers: a steady look kept while nothing changed, else asked now.
async fn look(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster_name: &str,
    desired: &rollout::Desired,
    talosconfig: Option<&str>,
    machines: &[Machine],
) -> Looked {
    let at = Instant::now();
    let steady = talosconfig.map(|tc| {
        let fingerprint = talos::fingerprint(tcp.meta().generation, tc, machines);
        let kept = ctx
            .steady_looks
            .fresh(&key_of(tcp), fingerprint, at, ctx.options.health_check);
        (fingerprint, kept)
    });
    let (fingerprint, kept) = steady.unwrap_or_default();
    let asked = kept.is_none();
    let observed = match (talosconfig, kept) {
        (_, Some(kept)) => kept,
        (Some(tc), None) if machines.iter().any(|m| talos::address(m).is_some()) => {
            // A node rebooting into an upgrade or a new configuration is asked at once,
            // whatever its backoff.
            let urgent: Vec<String> = machines
                .iter()
                .filter(|m| {
                    m.annotations()
                        .get(upgrade::MARKER)
                        .and_then(|v| upgrade::Marker::parse(v))
                        .is_some_and(|u| u.failed.is_none())
                        || reconfigure_marker(m).is_some_and(|r| r.reboot_under_way())
                })
                .map(ResourceExt::name_any)
                .collect();
            let versions = desired.talos_upgrade.is_some();
            talos::observe(ctx, &ctx.node_backoff, tc, machines, versions, &urgent).await
        }
        (Some(_), None) => talos::Observed {
            problem: Some("no control-plane machine has an address yet".into()),
            ..talos::Observed::default()
        },
        (None, None) => talos::Observed {
            problem: Some(format!(
                "Secret {} does not exist yet",
                talosconfig_name(cluster_name)
            )),
            ..talos::Observed::default()
        },
    };
    Looked {
        observed,
        fingerprint,
        at,
        asked,
    }
}

/// Housekeeping: control-plane TalosConfigs and infrastructure machines no Machine owns any
/// more, removed once their grace has passed.
async fn housekeep_leftovers(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster_name: &str,
    seen: &Seen,
    now: Timestamp,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    for leftover in machines::leftovers(
        &ctx.caches.control_plane_configs(&ns, cluster_name),
        tcp,
        &ctx.caches.machines_of(&ns, cluster_name, false),
        now,
        ctx.options.leftover_grace,
    ) {
        machines::remove_leftover(ctx, tcp, seen.template.as_ref().ok(), &leftover).await?;
    }
    Ok(())
}

/// What every machine is judged against: the spec's version, template and configuration.
fn target(
    tcp: &TalosControlPlane,
    desired: &rollout::Desired,
    machines: &[Machine],
    seen: &Seen,
    now: Timestamp,
) -> Result<rollout::Target, Error> {
    let config_digest = machines::config_digest(&tcp.spec.control_plane_config.controlplane)?;
    let live = machines
        .iter()
        .filter(|m| m.meta().deletion_timestamp.is_none())
        .count();
    let markers: Vec<_> = machines.iter().filter_map(reconfigure_marker).collect();
    Ok(rollout::Target {
        version: tcp.spec.version.clone(),
        template: machines::TemplateRef::of(tcp).map(|r| r.identity()),
        template_digest: seen.template.as_ref().ok().map(machines::Template::digest),
        config_needs_reboot: !reconfigure::reboots_in_place(desired.reboot_in_place, live)
            && reconfigure::needs_reboot(&markers, &config_digest),
        config_digest,
        pools: machines::pools_key(&tcp.spec.control_plane_config.controlplane),
        rollout_after: tcp.spec.rollout_after.as_ref().map(|t| t.0),
        now,
    })
}

/// The model: the control plane as the planner sees it.
fn model(
    report: &mut Report,
    tcp: &TalosControlPlane,
    cluster: &Cluster,
    desired: &rollout::Desired,
    machines: &[Machine],
    target: &rollout::Target,
    seen: &Seen,
) {
    let observed = &seen.look.observed;
    report.bootstrapped |= observed.members.as_ref().is_some_and(|m| !m.is_empty());
    report.talos_problem = observed.problem.clone();
    let talos = desired.talos_upgrade.as_ref().map(|t| t.version.as_str());
    report.view = ControlPlane {
        failure_domains: cluster
            .status
            .as_ref()
            .and_then(|s| s.failure_domains.as_ref())
            .map(|fds| {
                fds.iter()
                    .map(|fd| FailureDomain {
                        name: fd.name.clone(),
                        control_plane: fd.control_plane == Some(true),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        machines: machines
            .iter()
            .map(|m| view(m, target, talos, observed, seen.nodes.as_ref()))
            .collect(),
        etcd: observed.members.clone(),
        remediation: remediation::Policy::of(tcp.spec.remediation_strategy.as_ref()),
        now: target.now,
    };
    report.last_remediation = last_remediation(tcp, &report.view);
}

/// Housekeeping on the machines that stay: template metadata and timeouts follow in place (no
/// rollout for them), the configuration digest each was made from is recorded, and
/// KubeadmControlPlane's per-machine conditions (UpToDate, EtcdMemberHealthy) are set.
async fn housekeep_machines(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    machines: &[Machine],
    report: &Report,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let live = || {
        machines
            .iter()
            .filter(|m| m.meta().deletion_timestamp.is_none())
    };
    let fields = machines::template_fields(tcp);
    for m in live() {
        if let Some(patch) = machines::template_patch(m, &fields) {
            machines::sync(ctx, &ns, &m.name_any(), &patch).await?;
        }
    }
    for m in live().filter(|m| machines::unrecorded(m)) {
        machines::record_config_digest(ctx, m).await?;
    }
    for m in live() {
        if let Some(v) = report.view.machines.iter().find(|v| v.name == m.name_any()) {
            machines::set_conditions(ctx, m, &status::machine_conditions(v, &report.view)).await?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Settled {
    /// Nothing to do and every node answered (though a member may be unhealthy).
    steady: bool,
    /// Steady, and every node healthy with a healthy voting member.
    settled: bool,
}

/// Settled: nothing to do, and every node answered with healthy components and a healthy
/// voting member; only then is the look kept. A steady plan beside a learner not yet promoted,
/// or a member not healthy, is looked at again and at any change. With a Talos upgrade asked
/// for, nothing to do is known only once every running node's version was heard: a lost reply
/// would otherwise be kept as a finished upgrade.
fn remember(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    desired: &rollout::Desired,
    step: &Step,
    report: &Report,
    look: &Looked,
) -> Settled {
    let steady = matches!(step, Step::Steady)
        && report.talos_problem.is_none()
        && !(desired.talos_upgrade.is_some() && upgrade::versions_unknown(&report.view));
    let settled = steady && report.view.preflight(None).is_ok();
    match (settled, look.asked) {
        (true, true) => {
            ctx.steady_looks
                .keep(&key_of(tcp), look.fingerprint, look.at, &look.observed)
        }
        (true, false) => {}
        (false, _) => ctx.steady_looks.forget(&key_of(tcp)),
    }
    Settled { steady, settled }
}

/// When to look again.
fn requeue(
    ctx: &Ctx,
    step: &Step,
    report: &Report,
    machines: &[Machine],
    observed: &talos::Observed,
    settled: Settled,
    target: &rollout::Target,
) -> Duration {
    // A node that does not answer is asked again less and less often (up to every 30 s, each
    // node on its own backoff), not every half second for as long as it is down.
    let checked = Instant::now();
    let resting: Option<Duration> = machines
        .iter()
        .filter(|m| {
            observed
                .health
                .get(&m.name_any())
                .is_none_or(|h| !h.reachable)
        })
        .filter_map(talos::address)
        .map(|a| {
            ctx.node_backoff
                .resting(&a, checked)
                .map_or(Duration::ZERO, |r| r.left)
        })
        .min();
    // A node upgrading or rebooting into a new configuration in place is watched closely: its
    // reboot is seen, and its return acted on.
    let upgrading = report.view.machines.iter().any(|m| {
        m.upgrade.as_ref().is_some_and(|u| u.failed.is_none())
            || m.reconfigure
                .as_ref()
                .is_some_and(reconfigure::Marker::reboot_under_way)
    });
    let halted = matches!(
        step,
        Step::Wait {
            reason: WaitReason::TalosUpgradeFailed,
            ..
        }
    );
    let now = target.now;
    let wait = next_look(
        Look {
            settled: settled.settled,
            halted,
            upgrading,
            member_settling: report.view.member_settling(now),
            bootstrapped: report.bootstrapped,
            resting: resting.filter(|_| matches!(step, Step::Steady | Step::Wait { .. })),
            steady: settled.steady,
        },
        ctx.options.health_check,
    );
    // A rolloutAfter in the future is acted on when it comes, not at the next resync.
    match target.rollout_after.filter(|t| *t > now) {
        Some(at) => Duration::try_from(at.duration_since(now))
            .map_or(wait, |until| wait.min(until + Duration::from_millis(100))),
        None => wait,
    }
}

/// The rollout metric, and the plan in the debug log.
fn trace(ctx: &Ctx, tcp: &TalosControlPlane, step: &Step, wait: Duration, report: &Report) {
    let ns = tcp.namespace().unwrap_or_default();
    let outdated = report
        .view
        .machines
        .iter()
        .filter(|m| !m.deleting && !m.current())
        .count();
    ctx.metrics.rollout(&ns, &tcp.name_any(), Some(outdated));
    if tracing::enabled!(tracing::Level::DEBUG) {
        let unavailable: Vec<(&str, String)> = report
            .view
            .machines
            .iter()
            .filter_map(|m| Some((m.name.as_str(), report.view.unavailable_because(m)?)))
            .collect();
        tracing::debug!(taloscontrolplane = %key_of(tcp), ?step, ?wait, ?unavailable, "planned");
    }
}
