//! Report: the TalosControlPlane's status for both Cluster API contracts, computed without I/O
//! from what a reconcile observed and decided. Conditions follow KubeadmControlPlane's, each
//! with a reason and a message that says what a person can do.

use api::bootstrap::v1alpha3::TalosConfigSpec;
use api::conditions::{self, ConditionType, Observation, Severity, Status, reason};
use api::controlplane::v1alpha3::{
    ControlPlaneDeprecated, ControlPlaneInitialization, ControlPlaneV1Beta1Status, StatusVersion,
    TalosControlPlaneStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::scope::{ControlPlane, MachineView, quorum};
use super::step::Step;

/// ConfigFieldsCurrent (contract v1.14 on): what each machine's TalosConfig says of the same
/// patches, each named where it is in the control plane's spec. Patches that do not parse say
/// nothing here; the machines' TalosConfigs report them.
pub fn fields_current(config: &TalosConfigSpec) -> Option<Observation> {
    let moved = crate::bootstrap::render::moved_fields(config).ok()?;
    let moved = moved
        .iter()
        .map(|n| n.replacen("spec.", "spec.controlPlaneConfig.controlplane.", 1))
        .collect();
    crate::bootstrap::status::fields_current(config, moved)
}

/// One control-plane Machine as status counts it.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    pub name: String,
    pub version: Option<String>,
    /// The Machine's own Ready and Available conditions are True.
    pub ready: bool,
    pub available: bool,
}

/// What one reconcile observed and decided.
#[derive(Debug, Default)]
pub struct Report {
    pub paused: Option<String>,
    pub deleting: Option<String>,
    /// Nothing was done yet, and why (waiting for infrastructure, an endpoint, ...).
    pub gate: Option<(&'static str, String)>,
    pub selector: Option<String>,
    pub desired: i32,
    pub machines: Vec<Counted>,
    pub view: ControlPlane,
    pub bootstrapped: bool,
    pub step: Option<Step>,
    /// Why the Talos API told us nothing, when it did not.
    pub talos_problem: Option<String>,
    /// The kubeconfig's state (CertificatesAvailable).
    pub certificates: Option<Observation>,
    /// The last remediation (in progress, or answered by a replacement).
    pub last_remediation: Option<super::remediation::Record>,
    /// How the rolling update's bounds differ from the spec's, and why.
    pub rollout_note: Option<String>,
    /// The rollout strategy is OnDelete.
    pub on_delete: bool,
    /// The Talos version of an in-place upgrade (talosUpgrade), when asked for.
    pub talos_target: Option<String>,
    /// ConfigFieldsCurrent (contract v1.14 on).
    pub fields_current: Option<Observation>,
    /// Machines whose node runs another configuration than controlPlaneConfig renders, with
    /// the fields that differ.
    pub drift: super::state::Drifted,
}

fn semver(v: &str) -> (u64, u64, u64, String) {
    let v = v.trim_start_matches('v');
    let (core, rest) = v.split_once(['-', '+']).unwrap_or((v, ""));
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        rest.to_owned(),
    )
}

/// Machines per Kubernetes version, oldest first.
pub fn versions(machines: &[Counted]) -> Vec<StatusVersion> {
    let mut counts: Vec<(String, i32)> = Vec::new();
    for v in machines.iter().filter_map(|m| m.version.as_deref()) {
        match counts.iter_mut().find(|(known, _)| known == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v.to_owned(), 1)),
        }
    }
    counts.sort_by_key(|(v, _)| semver(v));
    counts
        .into_iter()
        .map(|(version, n)| StatusVersion {
            version,
            replicas: Some(n),
        })
        .collect()
}

/// RollingOut: how far a rollout is ("2 of 3 machines up to date"), what it does or waits for
/// now, and how the spec's bounds were adjusted.
fn rolling_out(r: &Report, outdated: usize) -> Observation {
    let live: Vec<_> = r.view.machines.iter().filter(|m| !m.deleting).collect();
    let talos_done = |t: &str| {
        live.iter()
            .filter(|m| {
                m.talos_version
                    .as_deref()
                    .is_some_and(|v| v.trim_start_matches('v') == t.trim_start_matches('v'))
            })
            .count()
    };
    let talos_pending = r
        .talos_target
        .as_deref()
        .is_some_and(|t| talos_done(t) < live.len());
    if outdated == 0 && !talos_pending {
        return Observation::new(
            ConditionType::RollingOut,
            Status::False,
            reason::NOT_ROLLING_OUT,
        );
    }
    let total = live.len();
    // Only the Talos version differs: the rollout is the in-place upgrade.
    let replacing_or_reconfiguring = live.iter().any(|m| !m.up_to_date() || m.config_pending);
    let mut message = match r.talos_target.as_deref() {
        Some(t) if !replacing_or_reconfiguring => {
            format!("{} of {total} nodes on Talos {t}", talos_done(t))
        }
        _ => format!(
            "{} of {total} machines up to date",
            live.iter().filter(|m| m.current()).count()
        ),
    };
    match &r.step {
        Some(Step::Wait { message: why, .. }) => message.push_str(&format!("; {why}")),
        Some(Step::Steady) if r.on_delete => message.push_str(
            "; rolloutStrategy OnDelete: each outdated machine is replaced once it is deleted",
        ),
        Some(Step::CreateMachine { .. }) => message.push_str("; creating an up-to-date machine"),
        Some(Step::ScaleDown { machine }) => {
            message.push_str(&format!("; deleting outdated machine {machine}"));
        }
        Some(Step::UpgradeTalos { machine }) => {
            message.push_str(&format!("; upgrading Talos on machine {machine}"));
            if r.view.machines.iter().filter(|m| !m.deleting).count() < 3 {
                // Nothing keeps quorum through the reboot of one of one or two members.
                message.push_str(
                    " (with fewer than 3 etcd members, etcd is unavailable while it reboots)",
                );
            }
        }
        Some(Step::TryConfig { machine }) => {
            message.push_str(&format!(
                "; trying the new configuration on machine {machine} without a reboot"
            ));
        }
        Some(Step::RebootConfig { machine }) => {
            message.push_str(&format!(
                "; rebooting machine {machine} into the new configuration"
            ));
        }
        Some(Step::ConfirmConfig { machine }) => {
            message.push_str(&format!(
                "; machine {machine} is healthy on the new configuration, confirming it"
            ));
        }
        _ => {}
    }
    if let Some(note) = &r.rollout_note {
        message.push_str(&format!(" ({note})"));
    }
    Observation::new(ConditionType::RollingOut, Status::True, reason::ROLLING_OUT).message(message)
}

/// The conditions the control plane sets on one of its machines, as KubeadmControlPlane does
/// (Cluster API shows UpToDate in `kubectl get machines` and counts it in the control plane's
/// upToDateReplicas): UpToDate, and EtcdMemberHealthy.
pub fn machine_conditions(m: &MachineView, cp: &ControlPlane) -> [Observation; 2] {
    let up_to_date = match m.not_current() {
        None => Observation::new(ConditionType::UpToDate, Status::True, reason::UP_TO_DATE),
        Some(why) => Observation::new(
            ConditionType::UpToDate,
            Status::False,
            reason::NOT_UP_TO_DATE,
        )
        .message(why),
    };
    let etcd = match (&cp.etcd, cp.member_of(m)) {
        (None, _) => Observation::new(
            ConditionType::EtcdMemberHealthy,
            Status::Unknown,
            reason::HEALTH_UNKNOWN,
        )
        .message("no node answered for the etcd member list"),
        (Some(_), None) => Observation::new(
            ConditionType::EtcdMemberHealthy,
            Status::False,
            reason::NOT_HEALTHY,
        )
        .message("the machine has no etcd member"),
        (Some(_), Some(e)) if e.learner => Observation::new(
            ConditionType::EtcdMemberHealthy,
            Status::False,
            reason::NOT_HEALTHY,
        )
        .message(format!("etcd member {:x} is still a learner", e.id)),
        (Some(_), Some(e)) if !e.healthy => Observation::new(
            ConditionType::EtcdMemberHealthy,
            Status::False,
            reason::NOT_HEALTHY,
        )
        .message(format!(
            "etcd member {:x} is not healthy{}",
            e.id,
            because(m)
        )),
        (Some(_), Some(_)) => Observation::new(
            ConditionType::EtcdMemberHealthy,
            Status::True,
            reason::HEALTHY,
        ),
    };
    [up_to_date, etcd]
}

/// ": <what the node's Talos API said>", when it said something.
fn because(m: &MachineView) -> String {
    m.node_problem
        .as_deref()
        .map(|p| format!(": {p}"))
        .unwrap_or_default()
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

/// CACPPT's MachinesBootstrapped, with `status.bootstrapped`: what CACPPT needs to find when
/// it takes a control plane back (it sets the condition only while bootstrapping etcd itself).
fn machines_bootstrapped(r: &Report) -> Observation {
    if r.bootstrapped {
        Observation::new(
            ConditionType::MachinesBootstrapped,
            Status::True,
            reason::BOOTSTRAPPED,
        )
        .message("etcd is bootstrapped")
    } else {
        Observation::new(
            ConditionType::MachinesBootstrapped,
            Status::False,
            reason::WAITING_FOR_MACHINES,
        )
        .message("etcd is not bootstrapped yet")
    }
}

/// etcd's health: every machine a healthy voting member and no member without a machine.
fn etcd_health(r: &Report) -> Observation {
    let obs = |status, why: &'static str| {
        Observation::new(ConditionType::EtcdClusterHealthy, status, why)
    };
    if !r.bootstrapped {
        return obs(Status::Unknown, reason::HEALTH_UNKNOWN)
            .message("etcd is not bootstrapped yet");
    }
    let Some(members) = &r.view.etcd else {
        return obs(Status::Unknown, reason::HEALTH_UNKNOWN).message(format!(
            "etcd did not answer: {}",
            r.talos_problem.as_deref().unwrap_or("no node was asked")
        ));
    };
    let mut problems = Vec::new();
    for m in &r.view.machines {
        match members.iter().find(|e| e.name == m.hostname) {
            None if m.deleting => {}
            None => problems.push(format!("machine {} has no etcd member yet", m.name)),
            Some(e) if e.learner => problems.push(format!(
                "the member of machine {} is still a learner",
                m.name
            )),
            Some(e) if !e.healthy => problems.push(format!(
                "the member of machine {} ({:x}) is not healthy{}",
                m.name,
                e.id,
                because(m)
            )),
            Some(_) => {}
        }
    }
    for orphan in r.view.orphan_members() {
        problems.push(format!(
            "member {} ({:x}) belongs to no machine and is removed once quorum allows",
            orphan.name, orphan.id
        ));
    }
    if problems.is_empty() {
        obs(Status::True, reason::HEALTHY).message(format!("{} healthy members", members.len()))
    } else {
        obs(Status::False, reason::NOT_HEALTHY)
            .message(problems.join("; "))
            .severity(Severity::Warning)
    }
}

/// Whether the etcd members the machines run keep quorum.
fn etcd_quorum(view: &ControlPlane) -> bool {
    view.etcd.as_ref().is_some_and(|members| {
        let voters: Vec<_> = members.iter().filter(|e| !e.learner).collect();
        let healthy = voters.iter().filter(|e| e.healthy).count();
        !voters.is_empty() && healthy >= quorum(voters.len())
    })
}

fn remediating(r: &Report) -> Observation {
    let unhealthy: Vec<String> = r
        .view
        .machines
        .iter()
        .filter(|m| m.unhealthy)
        .map(|m| m.name.clone())
        .collect();
    if unhealthy.is_empty() {
        return Observation::new(
            ConditionType::Remediating,
            Status::False,
            reason::NOT_REMEDIATING,
        );
    }
    let message = match &r.step {
        Some(Step::Remediate {
            machine,
            retry_count,
        }) => {
            format!("remediating machine {machine} (retry {retry_count})")
        }
        Some(Step::Wait { message, .. }) => message.clone(),
        _ => format!("machines {} are marked unhealthy", list(&unhealthy)),
    };
    Observation::new(
        ConditionType::Remediating,
        Status::True,
        reason::REMEDIATING,
    )
    .message(message)
}

fn scaling(r: &Report, up: bool) -> Observation {
    let live = r.view.machines.iter().filter(|m| !m.deleting).count();
    let want = usize::try_from(r.desired).unwrap_or(0);
    let (type_, yes, no) = if up {
        (
            ConditionType::ScalingUp,
            reason::SCALING_UP,
            reason::NOT_SCALING_UP,
        )
    } else {
        (
            ConditionType::ScalingDown,
            reason::SCALING_DOWN,
            reason::NOT_SCALING_DOWN,
        )
    };
    let active = if up {
        live < want
    } else {
        live > want || r.view.machines.iter().any(|m| m.deleting)
    };
    if !active {
        return Observation::new(type_, Status::False, no);
    }
    let mut message = format!(
        "scaling {} from {live} to {want} replicas",
        if up { "up" } else { "down" }
    );
    if let Some(Step::Wait { message: why, .. }) = &r.step {
        message.push_str(&format!("; waiting: {why}"));
    }
    Observation::new(type_, Status::True, yes).message(message)
}

/// The status to write, from the `old` one and this reconcile's report: one function per
/// condition, then the counts.
pub fn status(
    old: &TalosControlPlaneStatus,
    r: &Report,
    generation: Option<i64>,
    now: &Time,
) -> TalosControlPlaneStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    let mut set = |o: Observation| conditions::set(&mut s, &o, generation, now);
    set(paused(r));
    set(deleting(r));
    if r.paused.is_some() {
        return s;
    }
    if let Some(selector) = &r.selector {
        s.selector = Some(selector.clone());
    }
    let healthy_components = r.view.machines.iter().any(|m| m.components_healthy);
    // Initialized never goes back (the contract reads it once).
    let initialized = old.initialized == Some(true)
        || (r.bootstrapped && r.view.etcd.is_some() && healthy_components);
    let available = initialized && etcd_quorum(&r.view) && healthy_components;
    let outdated: Vec<String> = r
        .view
        .machines
        .iter()
        .filter_map(|m| m.not_current().map(|why| format!("{} ({why})", m.name)))
        .collect();

    let mut set = |o: Observation| conditions::set(&mut s, &o, generation, now);
    set(initialized_condition(r, initialized));
    set(machines_bootstrapped(r));
    set(etcd_health(r));
    set(components_healthy(r));
    set(machines_ready(r));
    set(machines_up_to_date(r, &outdated));
    set(rolling_out(r, outdated.len()));
    set(scaling(r, true));
    set(scaling(r, false));
    set(remediating(r));
    if let Some(c) = &r.certificates {
        set(c.clone());
    }
    if let Some(c) = &r.fields_current {
        set(c.clone());
    }
    set(available_condition(r, initialized, available));
    if r.fields_current.is_none() {
        conditions::remove(&mut s, ConditionType::ConfigFieldsCurrent);
    }
    counts(&mut s, r, initialized, available);
    s
}

fn paused(r: &Report) -> Observation {
    match &r.paused {
        Some(why) => Observation::new(ConditionType::Paused, Status::True, reason::PAUSED)
            .message(format!("reconciliation is paused: {why}")),
        None => Observation::new(ConditionType::Paused, Status::False, reason::NOT_PAUSED),
    }
}

fn deleting(r: &Report) -> Observation {
    match &r.deleting {
        Some(why) => Observation::new(ConditionType::Deleting, Status::True, reason::DELETING)
            .message(why.clone()),
        None => Observation::new(ConditionType::Deleting, Status::False, reason::NOT_DELETING),
    }
}

fn initialized_condition(r: &Report, initialized: bool) -> Observation {
    if initialized {
        return Observation::new(
            ConditionType::Initialized,
            Status::True,
            reason::INITIALIZED,
        )
        .message("etcd is bootstrapped and the control plane answers");
    }
    let why = match (&r.gate, &r.step) {
        (Some((_, why)), _) => why.clone(),
        (None, Some(Step::Wait { message, .. })) => message.clone(),
        _ if !r.bootstrapped => {
            "waiting for the first control-plane machine to bootstrap etcd".into()
        }
        _ => format!(
            "waiting for the control plane to answer{}",
            r.talos_problem
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        ),
    };
    Observation::new(
        ConditionType::Initialized,
        Status::False,
        reason::NOT_INITIALIZED,
    )
    .message(why)
}

fn components_healthy(r: &Report) -> Observation {
    let sick: Vec<String> = r
        .view
        .machines
        .iter()
        .filter(|m| !m.components_healthy && !m.deleting)
        .map(|m| match &m.node_problem {
            Some(p) => format!("{} ({p})", m.name),
            None => m.name.clone(),
        })
        .collect();
    let nodes_not_ready: Vec<String> = r
        .view
        .machines
        .iter()
        .filter(|m| m.components_healthy && !m.deleting)
        .filter_map(|m| Some(format!("{} ({})", m.hostname, m.node_not_ready.as_ref()?)))
        .collect();
    let type_ = ConditionType::ControlPlaneComponentsHealthy;
    if r.view.machines.is_empty() {
        return Observation::new(type_, Status::Unknown, reason::NO_MACHINES)
            .message("no control-plane machines yet");
    }
    if sick.is_empty() && nodes_not_ready.is_empty() {
        return Observation::new(type_, Status::True, reason::HEALTHY);
    }
    let mut problems = Vec::new();
    if !sick.is_empty() {
        problems.push(format!(
            "control-plane components not healthy on machines {}",
            list(&sick)
        ));
    }
    if !nodes_not_ready.is_empty() {
        problems.push(format!("Nodes not Ready: {}", list(&nodes_not_ready)));
    }
    Observation::new(type_, Status::False, reason::NOT_HEALTHY)
        .message(problems.join("; "))
        .severity(Severity::Warning)
}

fn machines_ready(r: &Report) -> Observation {
    let not_ready: Vec<String> = r
        .machines
        .iter()
        .filter(|m| !m.ready)
        .map(|m| m.name.clone())
        .collect();
    let type_ = ConditionType::MachinesReady;
    if r.machines.is_empty() {
        Observation::new(type_, Status::Unknown, reason::NO_MACHINES)
    } else if not_ready.is_empty() {
        Observation::new(type_, Status::True, reason::READY)
    } else {
        Observation::new(type_, Status::False, reason::NOT_READY)
            .message(format!("machines {} are not Ready", list(&not_ready)))
            .severity(Severity::Info)
    }
}

fn machines_up_to_date(r: &Report, outdated: &[String]) -> Observation {
    let type_ = ConditionType::MachinesUpToDate;
    if !outdated.is_empty() {
        return Observation::new(type_, Status::False, reason::NOT_UP_TO_DATE)
            .message(format!("machines {} do not match the spec", list(outdated)))
            .severity(Severity::Info);
    }
    if r.drift.is_empty() {
        return Observation::new(type_, Status::True, reason::UP_TO_DATE);
    }
    let drifted: Vec<String> = r
        .drift
        .iter()
        .map(|(m, fields)| format!("{m} ({})", fields.join(", ")))
        .collect();
    Observation::new(type_, Status::False, reason::RUNNING_CONFIG_DIFFERS)
        .message(format!(
            "the nodes of machines {} run a configuration that differs from controlPlaneConfig in these fields; it was changed outside talos-capi, which does not overwrite it: apply the spec's configuration to the node, or delete the machine to have it replaced",
            list(&drifted)
        ))
        .severity(Severity::Warning)
}

fn available_condition(r: &Report, initialized: bool, available: bool) -> Observation {
    if available {
        return Observation::new(ConditionType::Available, Status::True, reason::AVAILABLE);
    }
    let why = if !initialized {
        "the control plane is not initialized yet".to_owned()
    } else if !etcd_quorum(&r.view) {
        format!(
            "etcd has no healthy quorum{}",
            r.talos_problem
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        )
    } else {
        "no control-plane machine has healthy components".to_owned()
    };
    Observation::new(
        ConditionType::Available,
        Status::False,
        reason::NOT_AVAILABLE,
    )
    .message(why)
    .severity(Severity::Warning)
}

/// The replica counts, versions and the contract's fields.
fn counts(s: &mut TalosControlPlaneStatus, r: &Report, initialized: bool, available: bool) {
    let total = count(r.machines.len());
    let ready = count(r.machines.iter().filter(|m| m.ready).count());
    let avail = count(r.machines.iter().filter(|m| m.available).count());
    let up_to_date = count(r.view.machines.iter().filter(|m| m.current()).count());
    s.replicas = Some(total);
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(avail);
    s.up_to_date_replicas = Some(up_to_date);
    s.updated_replicas = Some(up_to_date);
    s.unavailable_replicas = Some((r.desired.max(total) - avail).max(0));
    let versions = versions(&r.machines);
    s.version = versions.first().map(|v| v.version.clone());
    s.versions = (!versions.is_empty()).then_some(versions);
    s.bootstrapped = Some(r.bootstrapped);
    if let Some(last) = &r.last_remediation {
        s.last_remediation = Some(api::controlplane::v1alpha3::LastRemediationStatus {
            machine: last.machine.clone(),
            time: last.timestamp.clone(),
            retry_count: last.retry_count,
        });
    }
    s.initialized = Some(initialized);
    s.initialization = Some(ControlPlaneInitialization {
        control_plane_initialized: Some(initialized),
    });
    s.ready = Some(available);
    s.deprecated
        .get_or_insert_with(ControlPlaneDeprecated::default)
        .v1beta1
        .get_or_insert_with(ControlPlaneV1Beta1Status::default)
        .ready_replicas = Some(ready);
}

#[cfg(test)]
mod tests {
    use super::super::scope::{EtcdMember, MachineView};
    use super::super::wait_reason::WaitReason;
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn view(name: &str, healthy: bool) -> MachineView {
        MachineView {
            components_healthy: healthy,
            ..MachineView::test(name, Timestamp::UNIX_EPOCH)
        }
    }

    fn report(healthy: &[bool]) -> Report {
        let machines: Vec<MachineView> = healthy
            .iter()
            .enumerate()
            .map(|(i, h)| view(&format!("m{i}"), *h))
            .collect();
        let etcd = machines
            .iter()
            .enumerate()
            .map(|(i, m)| EtcdMember {
                id: i as u64 + 1,
                name: m.name.clone(),
                healthy: m.components_healthy,
                learner: false,
            })
            .collect();
        Report {
            desired: 3,
            machines: machines
                .iter()
                .map(|m| Counted {
                    name: m.name.clone(),
                    version: Some("v1.33.1".into()),
                    ready: true,
                    available: true,
                })
                .collect(),
            view: ControlPlane {
                machines,
                etcd: Some(etcd),
                ..ControlPlane::default()
            },
            bootstrapped: true,
            step: Some(Step::Steady),
            ..Report::default()
        }
    }

    fn cond(s: &TalosControlPlaneStatus, t: ConditionType) -> &conditions::Condition {
        conditions::get(s.conditions.as_deref().unwrap_or_default(), t).expect("the condition")
    }

    #[test]
    fn a_healthy_control_plane_is_initialized_and_available() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let s = status(
            &TalosControlPlaneStatus::default(),
            &report(&[true, true, true]),
            Some(1),
            &now,
        );
        assert_eq!(
            s.initialization
                .as_ref()
                .and_then(|i| i.control_plane_initialized),
            Some(true)
        );
        assert_eq!(cond(&s, ConditionType::Available).status, "True");
        assert_eq!(cond(&s, ConditionType::EtcdClusterHealthy).status, "True");
        assert_eq!(cond(&s, ConditionType::ScalingUp).status, "False");
        assert_eq!((s.replicas, s.ready_replicas), (Some(3), Some(3)));
        assert_eq!(s.version.as_deref(), Some("v1.33.1"));
    }

    /// CACPPT, taking a control plane back, finds `status.bootstrapped` and does not bootstrap
    /// again, but it sets MachinesBootstrapped only while bootstrapping: without ours its Ready
    /// stays False for ever.
    #[test]
    fn bootstrapped_comes_with_cacppts_machines_bootstrapped_condition() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut r = report(&[true, true, true]);
        let s = status(&TalosControlPlaneStatus::default(), &r, Some(1), &now);
        assert_eq!(s.bootstrapped, Some(true));
        let c = cond(&s, ConditionType::MachinesBootstrapped);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Bootstrapped")
        );
        r.bootstrapped = false;
        let s = status(&TalosControlPlaneStatus::default(), &r, Some(1), &now);
        let c = cond(&s, ConditionType::MachinesBootstrapped);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "WaitingForMachines")
        );
    }

    #[test]
    fn losing_quorum_makes_it_unavailable_but_never_uninitialized() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let first = status(
            &TalosControlPlaneStatus::default(),
            &report(&[true, true, true]),
            Some(1),
            &now,
        );
        let s = status(&first, &report(&[true, false, false]), Some(1), &now);
        assert_eq!(s.initialized, Some(true));
        let available = cond(&s, ConditionType::Available);
        assert_eq!(available.status, "False");
        assert!(
            available.message.contains("quorum"),
            "{}",
            available.message
        );
        let etcd = cond(&s, ConditionType::EtcdClusterHealthy);
        assert!(
            etcd.message.contains("m1") && etcd.message.contains("m2"),
            "{}",
            etcd.message
        );
        let components = cond(&s, ConditionType::ControlPlaneComponentsHealthy);
        assert_eq!(components.status, "False");
    }

    #[test]
    fn a_node_that_is_not_ready_makes_components_unhealthy_and_says_which() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut r = report(&[true, true, true]);
        r.view.machines[1].node_not_ready = Some("Ready is False (KubeletNotReady)".into());
        let s = status(&TalosControlPlaneStatus::default(), &r, Some(1), &now);
        let components = cond(&s, ConditionType::ControlPlaneComponentsHealthy);
        assert_eq!(components.status, "False");
        assert_eq!(
            components.message,
            "Nodes not Ready: m1 (Ready is False (KubeletNotReady))"
        );
        // etcd is not the Node: it stays healthy, and so does availability.
        assert_eq!(cond(&s, ConditionType::EtcdClusterHealthy).status, "True");
        assert_eq!(cond(&s, ConditionType::Available).status, "True");
    }

    #[test]
    fn a_blocked_scale_up_says_why() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut r = report(&[true]);
        r.step = Some(Step::Wait {
            reason: WaitReason::EtcdMemberUnhealthy,
            message: "the etcd member of machine m0 is unhealthy".into(),
        });
        let s = status(&TalosControlPlaneStatus::default(), &r, Some(1), &now);
        let up = cond(&s, ConditionType::ScalingUp);
        assert_eq!(up.status, "True");
        assert!(
            up.message.contains("from 1 to 3") && up.message.contains("m0 is unhealthy"),
            "{}",
            up.message
        );
    }

    #[test]
    fn an_in_place_upgrade_of_one_or_two_members_says_etcd_is_down_meanwhile() {
        for (n, warned) in [(1, true), (2, true), (3, false)] {
            let mut r = report(&vec![true; n]);
            r.talos_target = Some("v1.13.1".into());
            r.step = Some(Step::UpgradeTalos {
                machine: "m0".into(),
            });
            let o = rolling_out(&r, 0);
            let text = format!("{o:?}");
            assert!(text.contains("upgrading Talos on machine m0"), "{text}");
            assert_eq!(
                text.contains("etcd is unavailable while it reboots"),
                warned,
                "{n}: {text}"
            );
        }
    }

    #[test]
    fn nodes_not_yet_on_the_talos_version_are_not_up_to_date() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut r = report(&[true, true, true]);
        r.talos_target = Some("v1.13.1".into());
        for (i, m) in r.view.machines.iter_mut().enumerate() {
            let runs = if i == 0 { "v1.13.1" } else { "v1.13.0" };
            m.talos_version = Some(runs.into());
            m.talos_pending =
                (i > 0).then(|| format!("Talos {runs} → v1.13.1, to be upgraded in place"));
        }
        let s = status(&TalosControlPlaneStatus::default(), &r, Some(1), &now);
        assert_eq!(s.up_to_date_replicas, Some(1));
        let machines = cond(&s, ConditionType::MachinesUpToDate);
        assert_eq!(machines.status, "False");
        assert!(
            machines.message.contains("m1 (Talos v1.13.0 → v1.13.1"),
            "{}",
            machines.message
        );
        let rolling = cond(&s, ConditionType::RollingOut);
        assert!(
            rolling.message.starts_with("1 of 3 nodes on Talos v1.13.1"),
            "{}",
            rolling.message
        );
        let [up_to_date, etcd] = machine_conditions(&r.view.machines[1], &r.view);
        assert!(format!("{up_to_date:?}").contains("to be upgraded in place"));
        // The cache keeps them on its Machines: a condition it dropped would read as missing
        // and be written again on every look.
        for set in [up_to_date, etcd] {
            assert!(
                crate::cache::MACHINE_CONDITIONS_READ.contains(&set.type_.as_str()),
                "{set:?}"
            );
        }
    }

    #[test]
    fn versions_are_counted_oldest_first() {
        let m = |v: &str| Counted {
            version: Some(v.into()),
            ..Counted::default()
        };
        let v = versions(&[m("v1.34.0"), m("v1.33.10"), m("v1.33.9"), m("v1.34.0")]);
        let got: Vec<(&str, Option<i32>)> =
            v.iter().map(|s| (s.version.as_str(), s.replicas)).collect();
        assert_eq!(
            got,
            [
                ("v1.33.9", Some(1)),
                ("v1.33.10", Some(1)),
                ("v1.34.0", Some(2))
            ]
        );
    }
}
