//! Rolling updates, decided without I/O: which machines must be replaced and why, within which
//! bounds (maxSurge, maxUnavailable, etcd quorum), and whether the Kubernetes and Talos
//! versions allow the step. Nothing here is remembered between reconciles: every decision is a
//! function of the spec and the observed machines and members, so a restarted operator resumes
//! a rollout where the objects say it is.

use api::controlplane::v1alpha3::{
    ConfigReboot, RolloutStrategy, RolloutStrategyType, TalosControlPlaneSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::scope::{Blocked, ControlPlane, MachineView, quorum};
use super::step::Step;
use super::wait_reason::WaitReason;
use crate::SpecError;

/// How outdated machines are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Replace outdated machines, within these (resolved, not yet quorum-capped) bounds.
    RollingUpdate {
        max_surge: usize,
        max_unavailable: usize,
    },
    /// Replace an outdated machine only once someone deletes it.
    OnDelete,
}

/// What the control plane should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub replicas: i32,
    /// The Kubernetes version, e.g. v1.34.1.
    pub version: String,
    /// The Talos version of the machines when the spec says it (talosUpgrade.version or the
    /// controlplane config's talosVersion): the Kubernetes version must be one it supports.
    pub talos_version: Option<String>,
    /// In-place Talos upgrades (talosUpgrade), when asked for.
    pub talos_upgrade: Option<super::upgrade::Target>,
    pub strategy: Strategy,
    /// The digest of the machines' TalosConfig spec (controlPlaneConfig): a machine on another
    /// one is changed in place, or replaced when Talos says the change needs a reboot.
    pub config_digest: Option<String>,
    /// A change Talos applies only with a reboot reboots the nodes in place
    /// (rolloutStrategy.configReboot InPlace) instead of replacing the machines.
    pub reboot_in_place: bool,
}

impl Desired {
    /// The desired state a spec asks for; a strategy the schema should have refused is an error.
    pub fn of(spec: &TalosControlPlaneSpec) -> Result<Desired, SpecError> {
        let replicas = spec.replicas.unwrap_or(1);
        let strategy = match spec.rollout_strategy.as_ref().and_then(|s| s.r#type) {
            Some(RolloutStrategyType::OnDelete) => Strategy::OnDelete,
            _ => {
                let (surge, unavailable) = bounds(spec.rollout_strategy.as_ref(), replicas)?;
                Strategy::RollingUpdate {
                    max_surge: usize::try_from(surge).unwrap_or(0),
                    max_unavailable: usize::try_from(unavailable).unwrap_or(0),
                }
            }
        };
        let talos_version = spec
            .talos_upgrade
            .as_ref()
            .and_then(|u| {
                u.version
                    .clone()
                    .or_else(|| u.image.rsplit_once(':').map(|(_, tag)| tag.to_owned()))
            })
            .or_else(|| spec.control_plane_config.controlplane.talos_version.clone())
            .filter(|v| !v.is_empty());
        let talos_upgrade = match &spec.talos_upgrade {
            None => None,
            Some(u) => Some(super::upgrade::Target::of(u).ok_or_else(|| {
                SpecError::Invalid(format!(
                    "talosUpgrade.version is required: the image {:?} names no tag to read it from",
                    u.image
                ))
            })?),
        };
        Ok(Desired {
            replicas,
            version: spec.version.clone(),
            talos_version,
            talos_upgrade,
            strategy,
            config_digest: super::machines::config_digest(&spec.control_plane_config.controlplane)
                .ok(),
            reboot_in_place: spec.rollout_strategy.as_ref().and_then(|s| s.config_reboot)
                == Some(ConfigReboot::InPlace),
        })
    }
}

/// Bounds of one rolling update, after etcd's limits are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// Machines that may exist above replicas.
    pub surge: usize,
    /// Desired machines the rollout may make unavailable at once.
    pub unavailable: usize,
    /// What was changed from the spec's values and why, for the RollingOut condition.
    pub note: Option<String>,
}

/// The bounds for `replicas` members: maxUnavailable is capped at what etcd with that many
/// members tolerates losing ((n-1)/2), and when that leaves neither surge nor unavailability
/// (maxSurge 0 with one or two replicas), one machine surges: the rollout completes instead of
/// waiting forever, as CACPPT does with one replica and maxSurge 0 (#193, #153).
pub fn effective(max_surge: usize, max_unavailable: usize, replicas: usize) -> Bounds {
    let tolerated = replicas.saturating_sub(quorum(replicas));
    let unavailable = max_unavailable.min(tolerated);
    let mut notes = Vec::new();
    if unavailable < max_unavailable {
        notes.push(format!(
            "maxUnavailable {max_unavailable} is capped at {unavailable}: etcd with {replicas} members keeps quorum with at most {tolerated} down"
        ));
    }
    let surge = if max_surge == 0 && unavailable == 0 {
        notes.push(format!(
            "maxSurge 0 with {replicas} replica(s): no machine can go before its replacement has joined etcd without losing quorum, so one machine is added first"
        ));
        1
    } else {
        max_surge
    };
    Bounds {
        surge,
        unavailable,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// `(major, minor)` of a version such as v1.34.1 or 1.13.
pub fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The Kubernetes minor versions each Talos 1.x supports, as (Talos minor, lowest Kubernetes
/// minor, highest Kubernetes minor). Source: Talos's pkg/machinery/compatibility/talos1NN
/// packages (MinimumKubernetesVersion and MaximumKubernetesVersion), for Talos 1.8 to 1.15.
const SUPPORTED_KUBERNETES: &[(u64, u64, u64)] = &[
    (8, 26, 31),
    (9, 27, 32),
    (10, 28, 33),
    (11, 29, 34),
    (12, 30, 35),
    (13, 31, 36),
    (14, 32, 37),
    (15, 33, 38),
];

/// The Kubernetes minor versions Talos `talos` supports, when the table knows it.
pub fn supported_kubernetes(talos: &str) -> Option<(u64, u64)> {
    let (major, minor) = major_minor(talos)?;
    if major != 1 {
        return None;
    }
    SUPPORTED_KUBERNETES
        .iter()
        .find(|(t, _, _)| *t == minor)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// The version preflight of any step that creates a machine at the desired version: the Talos
/// version supports it, and no live machine is more than one minor version away from it (an
/// upgrade may not skip a minor version; a downgrade may go back at most one).
pub fn version_check(desired: &Desired, cp: &ControlPlane) -> Result<(), Blocked> {
    let Some((major, minor)) = major_minor(&desired.version) else {
        return Err(Blocked {
            check: WaitReason::InvalidVersion,
            message: format!(
                "spec.version {:?} is not a Kubernetes version such as v1.34.1",
                desired.version
            ),
        });
    };
    if let Some(talos) = &desired.talos_version
        && let Some((lo, hi)) = supported_kubernetes(talos)
        && (major != 1 || minor < lo || minor > hi)
    {
        return Err(Blocked {
            check: WaitReason::VersionUnsupported,
            message: format!(
                "Kubernetes {} is not supported by Talos {talos}, which supports v1.{lo} to v1.{hi}: choose a version in that range, or upgrade Talos first",
                desired.version
            ),
        });
    }
    for m in cp.machines.iter().filter(|m| !m.deleting) {
        let Some((m_major, m_minor)) = m.version.as_deref().and_then(major_minor) else {
            continue;
        };
        if m_major != major {
            continue;
        }
        // Saturating: a Machine's version is Cluster API's to validate, and its minor may be
        // any u64.
        if minor > m_minor.saturating_add(1) {
            return Err(Blocked {
                check: WaitReason::VersionSkew,
                message: format!(
                    "machine {} runs Kubernetes {}; {} would skip v{major}.{}: set spec.version to v{major}.{}.x first, then to {} once that rollout is done",
                    m.name,
                    m.version.as_deref().unwrap_or_default(),
                    desired.version,
                    m_minor.saturating_add(1),
                    m_minor.saturating_add(1),
                    desired.version
                ),
            });
        }
        if minor.saturating_add(1) < m_minor {
            return Err(Blocked {
                check: WaitReason::VersionSkew,
                message: format!(
                    "machine {} runs Kubernetes {}; going back to {} skips more than one minor version, which Kubernetes does not support",
                    m.name,
                    m.version.as_deref().unwrap_or_default(),
                    desired.version
                ),
            });
        }
    }
    Ok(())
}

/// What a machine was made from, as recorded on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made {
    pub version: Option<String>,
    /// `Kind.group/name` of the infrastructure template it was cloned from.
    pub template: Option<String>,
    /// Digest of that template's spec.template when it was cloned.
    pub template_digest: Option<String>,
    /// Digest of its TalosConfig spec.
    pub config_digest: Option<String>,
    /// The address pools its TalosConfig claims from (`machines::pools_key`).
    pub pools: Option<String>,
    pub created: Timestamp,
}

/// What a machine made now would be made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub version: String,
    pub template: Option<String>,
    /// `None` when the template could not be read (content changes are then not judged).
    pub template_digest: Option<String>,
    pub config_digest: String,
    /// Talos said the change to `config_digest` needs a reboot (see
    /// [`super::reconfigure::needs_reboot`]): machines on another configuration are replaced.
    /// Otherwise they are changed in place, and not outdated for it.
    pub config_needs_reboot: bool,
    /// The address pools a machine made now claims from: a machine claims its addresses when it
    /// is made, so one recorded with other pools is replaced (never changed in place).
    pub pools: String,
    pub rollout_after: Option<Timestamp>,
    pub now: Timestamp,
}

/// Why a machine `made` so must be replaced to match `target`, or `None`. What a machine does
/// not record (machines made by CACPPT or an older talos-capi) is not held against it.
pub fn outdated(made: &Made, target: &Target) -> Option<String> {
    let mut why = Vec::new();
    if made.version.as_deref() != Some(target.version.as_str()) {
        why.push(format!(
            "Kubernetes {} → {}",
            made.version.as_deref().unwrap_or("unset"),
            target.version
        ));
    }
    if let (Some(was), Some(now)) = (&made.template, &target.template) {
        if was != now {
            why.push(format!("infrastructure template {was} → {now}"));
        } else if let (Some(a), Some(b)) = (&made.template_digest, &target.template_digest)
            && a != b
        {
            why.push(format!("infrastructure template {now} changed"));
        }
    }
    if target.config_needs_reboot
        && made
            .config_digest
            .as_ref()
            .is_some_and(|d| *d != target.config_digest)
    {
        why.push(
            "controlPlaneConfig changed, and Talos applies the change only with a reboot".into(),
        );
    }
    if let Some(was) = made.pools.as_ref().filter(|p| **p != target.pools) {
        let named = |p: &str| match p {
            "" => "none".to_owned(),
            p => p.to_owned(),
        };
        why.push(format!(
            "addressesFromPools {} → {}, and addresses are claimed when a machine is made",
            named(was),
            named(&target.pools)
        ));
    }
    if let Some(after) = target.rollout_after
        && after <= target.now
        && made.created < after
    {
        why.push(format!("created before rolloutAfter {after}"));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The scaling or rolling-update step towards `desired`, once etcd exists and its membership
/// has been audited.
pub fn step(desired: &Desired, cp: &ControlPlane) -> Step {
    match replace(desired, cp) {
        // Machines in place are upgraded once none needs replacing.
        Step::Steady => desired
            .config_digest
            .as_deref()
            .and_then(|d| super::reconfigure::step(d, desired.reboot_in_place, cp))
            .or_else(|| {
                let step = super::upgrade::step(desired.talos_upgrade.as_ref()?, cp)?;
                // The Talos version a node upgrades to must support the Kubernetes it runs.
                Some(match (&step, version_check(desired, cp)) {
                    (Step::UpgradeTalos { .. }, Err(blocked)) => blocked.into(),
                    _ => step,
                })
            })
            .unwrap_or(Step::Steady),
        step => step,
    }
}

/// The scaling or replacement step.
fn replace(desired: &Desired, cp: &ControlPlane) -> Step {
    let want = usize::try_from(desired.replicas).unwrap_or(0);
    let live: Vec<&MachineView> = cp.machines.iter().filter(|m| !m.deleting).collect();
    let any_outdated = live.iter().any(|m| !m.up_to_date());
    match desired.strategy {
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } if any_outdated => roll(
            desired,
            cp,
            &live,
            &effective(max_surge, max_unavailable, want),
        ),
        _ => scale(desired, cp, &live),
    }
}

/// Scaling without replacing anything (no machine outdated, or OnDelete).
fn scale(desired: &Desired, cp: &ControlPlane, live: &[&MachineView]) -> Step {
    let want = usize::try_from(desired.replicas).unwrap_or(0);
    if live.len() == want {
        return Step::Steady;
    }
    if live.len() < want {
        if let Err(blocked) = cp.preflight(None).and_then(|()| version_check(desired, cp)) {
            return blocked.into();
        }
        return Step::CreateMachine {
            failure_domain: cp.next_failure_domain(),
            limit: want,
        };
    }
    let Some(victim) = cp.machine_to_scale_down() else {
        return Step::Steady;
    };
    if let Err(blocked) = cp.preflight(Some(&victim.name)) {
        return blocked.into();
    }
    Step::ScaleDown {
        machine: victim.name.clone(),
    }
}

/// One step of a rolling update within `b`. In order: an outdated machine that is unavailable
/// anyway goes first (it costs no availability, and left alone it blocks every other step:
/// CACPPT #262); surplus machines go (outdated first); an up-to-date machine is added while
/// there is room to surge; an outdated machine goes within maxUnavailable. Each removal keeps
/// etcd quorum counting every member already leaving.
fn roll(desired: &Desired, cp: &ControlPlane, live: &[&MachineView], b: &Bounds) -> Step {
    let want = usize::try_from(desired.replicas).unwrap_or(0);
    let mut waits = Vec::new();
    if let Some(sick) = cp.pick(|m| !m.up_to_date() && !cp.available(m)) {
        match removal(cp, live, sick, want, b.unavailable) {
            Ok(()) => {
                return Step::ScaleDown {
                    machine: sick.name.clone(),
                };
            }
            Err(w) => waits.push(w),
        }
    }
    if live.len() > want
        && let Some(victim) = cp.machine_to_scale_down()
    {
        return match removal(cp, live, victim, want, b.unavailable) {
            Ok(()) => Step::ScaleDown {
                machine: victim.name.clone(),
            },
            Err(w) => w.into(),
        };
    }
    if cp.machines.len() < want + b.surge {
        return match cp
            .rollout_preflight(None)
            .and_then(|()| version_check(desired, cp))
        {
            Ok(()) => Step::CreateMachine {
                failure_domain: cp.next_failure_domain(),
                limit: want + b.surge,
            },
            Err(w) => w.into(),
        };
    }
    if b.unavailable > 0
        && let Some(victim) = cp.pick(|m| !m.up_to_date())
    {
        match removal(cp, live, victim, want, b.unavailable) {
            Ok(()) => {
                return Step::ScaleDown {
                    machine: victim.name.clone(),
                };
            }
            Err(w) => waits.push(w),
        }
    }
    if let Some(d) = cp.machines.iter().find(|m| m.deleting) {
        return Step::Wait {
            reason: WaitReason::WaitingForDeletion,
            message: format!(
                "waiting for machine {} to finish deleting before the next machine is replaced",
                d.name
            ),
        };
    }
    waits.pop().map_or_else(
        || Step::Wait {
            reason: WaitReason::RollingOut,
            message: "waiting for the rollout's next step".into(),
        },
        Step::from,
    )
}

/// Whether `victim` may be deleted now in a rolling update: every other live machine passes
/// the preflight checks, no more than `unavailable` desired machines end up unavailable because
/// of the rollout, and etcd keeps quorum once the victim's member and those of machines already
/// being deleted have left.
fn removal(
    cp: &ControlPlane,
    live: &[&MachineView],
    victim: &MachineView,
    want: usize,
    unavailable: usize,
) -> Result<(), Blocked> {
    cp.rollout_preflight(Some(&victim.name))?;
    let available = live.iter().filter(|m| cp.available(m)).count();
    if cp.available(victim) && available - 1 + unavailable < want {
        return Err(Blocked {
            check: WaitReason::WaitingForAvailableMachines,
            message: format!(
                "{available} of {want} machines are available; replacing machine {} now would leave fewer than {} (maxUnavailable {unavailable})",
                victim.name,
                want - unavailable
            ),
        });
    }
    let leaving: Vec<u64> = cp
        .machines
        .iter()
        .filter(|m| m.deleting || m.name == victim.name)
        .filter_map(|m| cp.member_of(m))
        .map(|e| e.id)
        .collect();
    if !cp.can_remove_members(&leaving) {
        return Err(Blocked {
            check: WaitReason::EtcdQuorumAtRisk,
            message: format!(
                "replacing machine {} now would leave etcd without a healthy quorum; waiting for the other members",
                victim.name
            ),
        });
    }
    Ok(())
}

/// The effective (maxSurge, maxUnavailable) for `replicas`, applying the defaults documented on
/// `RollingUpdate`: maxSurge 1; maxUnavailable 0 unless maxSurge is 0, then 1. Percentages round
/// up for surge and down for unavailability, as Deployments do. A value the schema should have
/// refused is an error, never a silent 0.
pub fn bounds(strategy: Option<&RolloutStrategy>, replicas: i32) -> Result<(i32, i32), SpecError> {
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let resolve = |field: &str,
                   v: Option<&IntOrString>,
                   round_up: bool|
     -> Result<Option<i32>, SpecError> {
        let Some(v) = v else { return Ok(None) };
        let n = match v {
            IntOrString::Int(n) if *n >= 0 => *n,
            IntOrString::String(s) => {
                let pct: i64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (0..=100).contains(p))
                    .ok_or_else(|| SpecError::Invalid(format!(
                        "{field} {s:?} must be a non-negative integer or a percentage from 0% to 100%"
                    )))?;
                let scaled = pct * i64::from(replicas.max(0));
                let n = if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                i32::try_from(n).unwrap_or(i32::MAX)
            }
            IntOrString::Int(n) => {
                return Err(SpecError::Invalid(format!(
                    "{field} {n} must not be negative"
                )));
            }
        };
        Ok(Some(n))
    };
    let surge = resolve("maxSurge", rolling.and_then(|r| r.max_surge.as_ref()), true)?.unwrap_or(1);
    let unavailable = resolve(
        "maxUnavailable",
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        false,
    )?
    .unwrap_or(if surge > 0 { 0 } else { 1 });
    Ok((surge, unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::controlplane::v1alpha3::RollingUpdate;

    fn strategy(surge: Option<IntOrString>, unavailable: Option<IntOrString>) -> RolloutStrategy {
        RolloutStrategy {
            r#type: None,
            rolling_update: Some(RollingUpdate {
                max_surge: surge,
                max_unavailable: unavailable,
            }),
            config_reboot: None,
        }
    }

    #[test]
    fn defaults_match_cacppt() {
        assert_eq!(bounds(None, 3).ok(), Some((1, 0)));
        let delete_first = strategy(Some(IntOrString::Int(0)), None);
        assert_eq!(bounds(Some(&delete_first), 3).ok(), Some((0, 1)));
    }

    #[test]
    fn percentages_round_like_deployments() {
        let s = strategy(
            Some(IntOrString::String("34%".into())),
            Some(IntOrString::String("34%".into())),
        );
        assert_eq!(bounds(Some(&s), 3).ok(), Some((2, 1)));
        assert_eq!(bounds(Some(&s), 5).ok(), Some((2, 1)));
    }

    #[test]
    fn bad_values_are_errors_not_zero() {
        for bad in [
            IntOrString::String("lots".into()),
            IntOrString::String("150%".into()),
            IntOrString::Int(-1),
        ] {
            let s = strategy(Some(bad.clone()), None);
            assert!(bounds(Some(&s), 3).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bounds_are_capped_by_quorum_and_say_so() {
        // (maxSurge, maxUnavailable, replicas) → (surge, unavailable, noted)
        for (surge, unavailable, replicas, want, noted) in [
            (1, 0, 3, (1, 0), false),
            (0, 1, 3, (0, 1), false),
            (0, 2, 3, (0, 1), true),
            (0, 2, 5, (0, 2), false),
            (0, 3, 5, (0, 2), true),
            (2, 2, 7, (2, 2), false),
            (0, 0, 3, (1, 0), true),
            (0, 1, 1, (1, 0), true),
            (0, 1, 2, (1, 0), true),
            (3, 0, 1, (3, 0), false),
        ] {
            let b = effective(surge, unavailable, replicas);
            assert_eq!(
                (b.surge, b.unavailable),
                want,
                "{surge} {unavailable} {replicas}"
            );
            assert_eq!(b.note.is_some(), noted, "{b:?}");
        }
        assert!(
            effective(0, 2, 3)
                .note
                .is_some_and(|n| n.contains("capped at 1"))
        );
    }

    fn cp_at(versions: &[&str]) -> ControlPlane {
        ControlPlane {
            machines: versions
                .iter()
                .enumerate()
                .map(|(i, v)| MachineView {
                    version: Some((*v).into()),
                    ..MachineView::test(&format!("m{i}"), Timestamp::UNIX_EPOCH)
                })
                .collect(),
            ..ControlPlane::default()
        }
    }

    fn desired(version: &str, talos: Option<&str>) -> Desired {
        Desired {
            replicas: 3,
            version: version.into(),
            talos_version: talos.map(Into::into),
            talos_upgrade: None,
            strategy: Strategy::OnDelete,
            config_digest: None,
            reboot_in_place: false,
        }
    }

    #[test]
    fn an_in_place_talos_upgrade_to_a_version_that_does_not_support_the_kubernetes_is_refused() {
        let upgrade = |tag: &str| {
            super::super::upgrade::Target::of(&api::controlplane::v1alpha3::TalosUpgrade {
                image: format!("ghcr.io/siderolabs/installer:{tag}"),
                ..Default::default()
            })
        };
        let mut cp = cp_at(&["v1.34.1", "v1.34.1", "v1.34.1"]);
        for m in &mut cp.machines {
            m.talos_version = Some("v1.12.0".into());
        }
        let mut cp = ControlPlane::test(cp.machines);
        let mut want = desired("v1.34.1", Some("v1.13.0"));
        want.talos_upgrade = upgrade("v1.13.0");
        assert!(
            matches!(step(&want, &cp), Step::UpgradeTalos { .. }),
            "{:?}",
            step(&want, &cp)
        );
        want.version = "v1.30.0".into();
        for m in &mut cp.machines {
            m.version = Some("v1.30.0".into());
        }
        want.talos_version = Some("v1.13.0".into());
        assert!(
            matches!(step(&want, &cp), Step::Wait { reason: WaitReason::VersionUnsupported, ref message } if message.contains("Talos v1.13.0")),
            "{:?}",
            step(&want, &cp)
        );
    }

    #[test]
    fn versions_may_not_skip_a_minor_or_leave_talos_support() {
        let ok = |v: &str, talos: Option<&str>, machines: &[&str]| {
            version_check(&desired(v, talos), &cp_at(machines)).map_err(|b| (b.check, b.message))
        };
        assert!(ok("v1.34.1", None, &["v1.33.4", "v1.34.0"]).is_ok());
        assert!(ok("v1.34.1", Some("v1.13.0"), &[]).is_ok());
        let (check, message) = ok("v1.35.0", None, &["v1.33.4"]).err().unwrap();
        assert_eq!(check, WaitReason::VersionSkew);
        assert!(message.contains("v1.34"), "{message}");
        let (check, _) = ok("v1.32.0", None, &["v1.34.0"]).err().unwrap();
        assert_eq!(check, WaitReason::VersionSkew);
        assert!(
            ok("v1.33.0", None, &["v1.34.0"]).is_ok(),
            "one minor back is allowed"
        );
        let (check, message) = ok("v1.37.0", Some("v1.13.2"), &[]).err().unwrap();
        assert_eq!(check, WaitReason::VersionUnsupported);
        assert!(message.contains("v1.31 to v1.36"), "{message}");
        let (check, _) = ok("v1.30.0", Some("1.13"), &[]).err().unwrap();
        assert_eq!(check, WaitReason::VersionUnsupported);
        // Talos 1.14 runs Kubernetes 1.32 to 1.37: 1.37 (its default) is accepted, 1.31 is not.
        assert!(ok("v1.37.0", Some("v1.14.1"), &["v1.36.2"]).is_ok());
        assert!(ok("v1.32.0", Some("v1.14"), &[]).is_ok());
        let (check, message) = ok("v1.31.4", Some("v1.14.1"), &[]).err().unwrap();
        assert_eq!(check, WaitReason::VersionUnsupported);
        assert!(message.contains("v1.32 to v1.37"), "{message}");
        // A Talos version the table does not know yet is not held against the spec.
        assert!(ok("v1.40.0", Some("v1.16.0"), &[]).is_ok());
        assert_eq!(supported_kubernetes("v1.9.5"), Some((27, 32)));
        assert_eq!(supported_kubernetes("v1.15.0"), Some((33, 38)));
    }

    /// A Machine's version is Cluster API's to validate (any number of digits): the preflight
    /// compares minors at u64's maximum without overflowing.
    #[test]
    fn the_skew_check_is_total_on_the_largest_minor_versions() {
        let check = |v: &str, machines: &[&str]| {
            version_check(&desired(v, None), &cp_at(machines)).map_err(|b| b.check)
        };
        let max = "v1.18446744073709551615.0";
        assert_eq!(check(max, &[max]), Ok(()));
        assert_eq!(check("v1.33.0", &[max]), Err(WaitReason::VersionSkew));
        assert_eq!(check(max, &["v1.33.0"]), Err(WaitReason::VersionSkew));
        assert_eq!(major_minor(max), Some((1, u64::MAX)));
        assert_eq!(major_minor("v1.18446744073709551616.0"), None);
    }

    #[test]
    fn a_machine_is_outdated_for_each_recorded_difference() {
        let made = Made {
            version: Some("v1.34.0".into()),
            template: Some("MachineTemplate.infra/a".into()),
            template_digest: Some("t1".into()),
            config_digest: Some("c1".into()),
            pools: Some("InClusterIPPool.ipam.cluster.x-k8s.io/nodes".into()),
            created: Timestamp::from_second(100).unwrap_or(Timestamp::UNIX_EPOCH),
        };
        let target = Target {
            version: "v1.34.0".into(),
            template: Some("MachineTemplate.infra/a".into()),
            template_digest: Some("t1".into()),
            config_digest: "c1".into(),
            config_needs_reboot: false,
            pools: "InClusterIPPool.ipam.cluster.x-k8s.io/nodes".into(),
            rollout_after: None,
            now: Timestamp::from_second(200).unwrap_or(Timestamp::UNIX_EPOCH),
        };
        assert_eq!(outdated(&made, &target), None);
        let why = |t: Target| outdated(&made, &t).unwrap_or_default();
        assert!(
            why(Target {
                version: "v1.35.0".into(),
                ..target.clone()
            })
            .contains("v1.34.0 → v1.35.0")
        );
        assert!(
            why(Target {
                template: Some("MachineTemplate.infra/b".into()),
                ..target.clone()
            })
            .contains("→ MachineTemplate.infra/b")
        );
        assert!(
            why(Target {
                template_digest: Some("t2".into()),
                ..target.clone()
            })
            .contains("changed")
        );
        // A configuration change is made in place, unless Talos said it needs a reboot.
        assert_eq!(
            outdated(
                &made,
                &Target {
                    config_digest: "c2".into(),
                    ..target.clone()
                }
            ),
            None
        );
        assert!(
            why(Target {
                config_digest: "c2".into(),
                config_needs_reboot: true,
                ..target.clone()
            })
            .contains(
                "controlPlaneConfig changed, and Talos applies the change only with a reboot"
            )
        );
        // Other pools: the machine has no claim on the new one, so it is replaced.
        assert!(
            why(Target {
                config_digest: "c2".into(),
                pools: String::new(),
                ..target.clone()
            })
            .contains("addressesFromPools InClusterIPPool.ipam.cluster.x-k8s.io/nodes → none")
        );
        let after = |s| Timestamp::from_second(s).ok();
        assert!(
            why(Target {
                rollout_after: after(150),
                ..target.clone()
            })
            .contains("rolloutAfter")
        );
        // Not yet due, or the machine is newer: nothing to do.
        assert_eq!(
            outdated(
                &made,
                &Target {
                    rollout_after: after(300),
                    ..target.clone()
                }
            ),
            None
        );
        assert_eq!(
            outdated(
                &made,
                &Target {
                    rollout_after: after(50),
                    ..target.clone()
                }
            ),
            None
        );
        // An unreadable template judges nothing on content; unrecorded facts are not held
        // against a machine (CACPPT's machines).
        assert_eq!(
            outdated(
                &made,
                &Target {
                    template_digest: None,
                    ..target.clone()
                }
            ),
            None
        );
        let adopted = Made {
            template: None,
            template_digest: None,
            config_digest: None,
            pools: None,
            ..made.clone()
        };
        assert_eq!(
            outdated(
                &adopted,
                &Target {
                    config_digest: "c2".into(),
                    template: Some("X.y/z".into()),
                    pools: "InClusterIPPool.ipam.cluster.x-k8s.io/other".into(),
                    ..target
                }
            ),
            None
        );
    }

    #[test]
    fn on_delete_replaces_nothing_by_itself() {
        let mut cp = cp_at(&["v1.33.0", "v1.33.0", "v1.33.0"]);
        cp.etcd = Some(
            cp.machines
                .iter()
                .enumerate()
                .map(|(i, m)| super::super::scope::EtcdMember {
                    id: i as u64 + 1,
                    name: m.hostname.clone(),
                    healthy: true,
                    learner: false,
                })
                .collect(),
        );
        for m in &mut cp.machines {
            m.outdated = Some("Kubernetes v1.33.0 → v1.34.0".into());
        }
        assert_eq!(step(&desired("v1.34.0", None), &cp), Step::Steady);
        // Someone deletes one: it is replaced by an up-to-date machine.
        cp.machines.remove(0);
        assert!(matches!(
            step(&desired("v1.34.0", None), &cp),
            Step::CreateMachine { limit: 3, .. }
        ));
    }
}

/// The rolling-update properties the issue asks for, over generated control planes and event
/// sequences (ROLLOUT_CASES cases each, 4,096 by default: 12,288 with the three below).
#[cfg(test)]
mod properties {
    use super::super::plan::{Step, next_step};
    use super::super::reconfigure::{self, Marker as ConfigMarker};
    use super::super::scope::{ControlPlane, EtcdMember, MachineView};
    use super::super::upgrade::{Marker, Target};
    use super::{Desired, Strategy as Rollout, Timestamp, effective};

    /// The Talos version every machine of the model starts on, and the in-place target.
    const TALOS_FROM: &str = "v1.13.0";
    const TALOS_TO: &str = "v1.13.1";
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("ROLLOUT_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096)
    }

    /// A model world: the planner's view plus what Cluster API and the nodes would do.
    #[derive(Debug, Clone)]
    struct World {
        cp: ControlPlane,
        desired: Desired,
        next: usize,
        /// What Talos answers a TRY of the current controlPlaneConfig: it needs a reboot.
        config_needs_reboot: bool,
        /// controlPlaneConfig changes so far (the digest is `c<n>`).
        config_changes: usize,
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// Run the planner and take its step.
        Plan,
        /// The oldest joining machine's node joins etcd and its components come up.
        Join,
        /// Cluster API finishes deleting a released machine.
        Finish,
        /// Fault: machine i's etcd member or components fail.
        Break(usize),
        /// Machine i recovers.
        Heal(usize),
        /// spec changes again (a new version): every machine is outdated.
        SpecChange,
        /// talosUpgrade asks for an in-place upgrade to TALOS_TO, this many nodes at once.
        TalosChange(usize),
        /// The oldest upgrading node that is down comes back: on the target, or rolled back.
        Boot { rolled_back: bool },
        /// A MachineHealthCheck marks machine i unhealthy.
        MarkUnhealthy(usize),
        /// controlPlaneConfig changes; Talos applies the change live, or only with a reboot.
        ConfigChange { needs_reboot: bool },
    }

    fn at(i: usize) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + i as i64).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn world(
        replicas: usize,
        surge: usize,
        unavailable: usize,
        outdated: &[bool],
        reboot_in_place: bool,
    ) -> World {
        let mut cp = ControlPlane::default();
        let mut members = Vec::new();
        for (i, old) in outdated.iter().take(replicas).enumerate() {
            let mut m = MachineView::test(&format!("m{i}"), at(i));
            m.talos_version = Some(TALOS_FROM.into());
            m.config_digest = Some("c0".into());
            m.outdated = old.then(|| "Kubernetes v1.33.0 → v1.34.1".into());
            m.version = Some(if *old { "v1.33.0" } else { "v1.34.1" }.into());
            members.push(EtcdMember {
                id: i as u64 + 1,
                name: m.hostname.clone(),
                healthy: true,
                learner: false,
            });
            cp.machines.push(m);
        }
        cp.etcd = Some(members);
        World {
            cp,
            desired: Desired {
                replicas: replicas as i32,
                version: "v1.34.1".into(),
                talos_version: None,
                talos_upgrade: None,
                strategy: Rollout::RollingUpdate {
                    max_surge: surge,
                    max_unavailable: unavailable,
                },
                config_digest: Some("c0".into()),
                reboot_in_place,
            },
            next: replicas,
            config_needs_reboot: false,
            config_changes: 0,
        }
    }

    impl World {
        fn replicas(&self) -> usize {
            self.desired.replicas as usize
        }

        /// (surge, unavailable) as the issue defines them, computed here independently of
        /// [`effective`]: unavailability capped at (n-1)/2, one machine of surge when neither.
        fn limits(&self) -> (usize, usize) {
            let Rollout::RollingUpdate {
                max_surge,
                max_unavailable,
            } = self.desired.strategy
            else {
                return (0, 0);
            };
            let unavailable = max_unavailable.min((self.replicas() - 1) / 2);
            let surge = if max_surge == 0 && unavailable == 0 {
                1
            } else {
                max_surge
            };
            (surge, unavailable)
        }

        fn members(&mut self) -> &mut Vec<EtcdMember> {
            self.cp.etcd.get_or_insert_with(Vec::new)
        }

        fn healthy_quorum(&self) -> bool {
            let voters: Vec<_> = self
                .cp
                .etcd
                .iter()
                .flatten()
                .filter(|e| !e.learner)
                .collect();
            let healthy = voters.iter().filter(|e| e.healthy).count();
            healthy > voters.len() / 2
        }

        fn available(&self, m: &MachineView) -> bool {
            !m.deleting
                && m.components_healthy
                && self
                    .cp
                    .etcd
                    .iter()
                    .flatten()
                    .any(|e| e.name == m.hostname && e.healthy && !e.learner)
        }

        fn apply(&mut self, step: &Step) {
            match step {
                Step::CreateMachine { .. } => {
                    let mut m = MachineView::test(&format!("m{}", self.next), at(self.next));
                    m.talos_version = Some(TALOS_FROM.into());
                    m.config_digest = self.desired.config_digest.clone();
                    m.components_healthy = false;
                    m.version = Some(self.desired.version.clone());
                    self.next += 1;
                    self.cp.machines.push(m);
                }
                Step::ScaleDown { machine } | Step::Remediate { machine, .. } => {
                    for m in self.cp.machines.iter_mut().filter(|m| &m.name == machine) {
                        m.deleting = true;
                    }
                }
                Step::ReleaseMachine { machine, member } => {
                    if let Some(id) = member {
                        self.members().retain(|e| e.id != *id);
                    }
                    // Cluster API goes on to remove the infrastructure ([`World::finish`]).
                    for m in self.cp.machines.iter_mut().filter(|m| &m.name == machine) {
                        m.cleanup_hook = false;
                    }
                }
                Step::RemoveOrphanMember { id, .. } => self.members().retain(|e| e.id != *id),
                // The node accepts at once and goes down to install and reboot.
                Step::UpgradeTalos { machine } => {
                    let now = self.cp.now;
                    let Some(m) = self.machine(machine) else {
                        return;
                    };
                    m.upgrade = Some(Marker {
                        version: TALOS_TO.into(),
                        image: format!("ghcr.io/siderolabs/installer:{TALOS_TO}"),
                        from: m.talos_version.clone().unwrap_or_default(),
                        at: now,
                        issued: true,
                        down: false,
                        failed: None,
                    });
                    m.reachable = false;
                    let host = m.hostname.clone();
                    self.set_health_of(&host, false);
                }
                Step::UpgradeSeenDown { machine } => {
                    if let Some(u) = self.machine(machine).and_then(|m| m.upgrade.as_mut()) {
                        u.down = true;
                    }
                }
                Step::UpgradeDone { machine } | Step::ForgetUpgrade { machine } => {
                    if let Some(m) = self.machine(machine) {
                        m.upgrade = None;
                    }
                }
                Step::UpgradeFailed { machine, why } => {
                    if let Some(u) = self.machine(machine).and_then(|m| m.upgrade.as_mut()) {
                        u.failed = Some(why.clone());
                    }
                }
                // Talos takes a live change at once, or answers that it needs a reboot.
                Step::TryConfig { machine } => {
                    let (now, needs_reboot) = (self.cp.now, self.config_needs_reboot);
                    let digest = self.desired.config_digest.clone().unwrap_or_default();
                    if let Some(m) = self.machine(machine) {
                        m.reconfigure = Some(ConfigMarker {
                            digest,
                            at: now,
                            tried: !needs_reboot,
                            needs_reboot: needs_reboot.then(|| "the kernel changes".into()),
                            rebooting: false,
                            down: false,
                            failed: None,
                        });
                    }
                }
                Step::ConfirmConfig { machine } => {
                    if let Some(m) = self.machine(machine) {
                        m.config_digest = m.reconfigure.take().map(|r| r.digest);
                    }
                }
                Step::RebootConfig { machine } => {
                    let now = self.cp.now;
                    let Some(m) = self.machine(machine) else {
                        return;
                    };
                    if let Some(r) = m.reconfigure.as_mut() {
                        r.rebooting = true;
                        r.at = now;
                    }
                    m.reachable = false;
                    let host = m.hostname.clone();
                    self.set_health_of(&host, false);
                }
                Step::ConfigRebootSeenDown { machine } => {
                    if let Some(r) = self.machine(machine).and_then(|m| m.reconfigure.as_mut()) {
                        r.down = true;
                    }
                }
                Step::ConfigChangeFailed { machine, why } => {
                    if let Some(r) = self.machine(machine).and_then(|m| m.reconfigure.as_mut()) {
                        r.failed = Some(why.clone());
                    }
                }
                Step::ForgetConfigChange { machine } => {
                    if let Some(m) = self.machine(machine) {
                        m.reconfigure = None;
                    }
                }
                _ => {}
            }
        }

        fn machine(&mut self, name: &str) -> Option<&mut MachineView> {
            self.cp.machines.iter_mut().find(|m| m.name == name)
        }

        fn find(&self, name: &str) -> Result<&MachineView, TestCaseError> {
            let found = self.cp.machines.iter().find(|m| m.name == name);
            prop_assert!(found.is_some(), "a step for {name}, which does not exist");
            found.ok_or_else(|| TestCaseError::fail(name.to_owned()))
        }

        fn talos_change(&mut self, max_parallel: usize) {
            self.desired.talos_upgrade = Some(Target {
                image: format!("ghcr.io/siderolabs/installer:{TALOS_TO}"),
                version: TALOS_TO.into(),
                max_parallel,
                timeout: std::time::Duration::from_secs(600),
            });
        }

        /// The oldest upgrading node that is down boots again: healthy, on the target (or on
        /// the version it came from). False if none is down.
        fn boot(&mut self, rolled_back: bool) -> bool {
            let Some(i) = self.cp.machines.iter().position(|m| {
                !m.reachable
                    && (m.upgrade.as_ref().is_some_and(|u| u.issued)
                        || m.reconfigure.as_ref().is_some_and(|r| r.rebooting))
            }) else {
                return false;
            };
            let m = &mut self.cp.machines[i];
            m.reachable = true;
            if !rolled_back && m.upgrade.is_some() {
                m.talos_version = Some(TALOS_TO.into());
            }
            let host = m.hostname.clone();
            self.set_health_of(&host, true);
            true
        }

        fn config_change(&mut self, needs_reboot: bool) {
            self.config_changes += 1;
            self.desired.config_digest = Some(format!("c{}", self.config_changes));
            self.config_needs_reboot = needs_reboot;
        }

        /// What the controller's view derives from the machines' records (as `view` does): once
        /// Talos said the change needs a reboot and the nodes do not reboot in place, every
        /// machine on another configuration is outdated (replaced).
        fn refresh(&mut self) {
            let digest = self.desired.config_digest.clone().unwrap_or_default();
            let live = self.cp.machines.iter().filter(|m| !m.deleting).count();
            let replace = !reconfigure::reboots_in_place(self.desired.reboot_in_place, live)
                && reconfigure::needs_reboot(
                    self.cp
                        .machines
                        .iter()
                        .filter_map(|m| m.reconfigure.as_ref()),
                    &digest,
                );
            for m in &mut self.cp.machines {
                let other = m.config_digest.as_ref().is_some_and(|d| *d != digest);
                m.config_pending = other;
                if replace && other && m.outdated.is_none() {
                    m.outdated = Some("controlPlaneConfig needs a reboot".into());
                }
            }
        }

        fn mark_unhealthy(&mut self, i: usize) {
            let n = self.cp.machines.len();
            if n > 0 {
                self.cp.machines[i % n].unhealthy = true;
            }
        }

        fn upgrading(&self) -> usize {
            self.cp
                .machines
                .iter()
                .filter(|m| !m.deleting && m.upgrade.is_some())
                .count()
        }

        /// World progress that needs no planner: the next joining node joins. False if none.
        fn join(&mut self) -> bool {
            let joined: Vec<String> = self
                .cp
                .etcd
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect();
            let Some(i) = self
                .cp
                .machines
                .iter()
                .position(|m| !m.deleting && !joined.contains(&m.hostname))
            else {
                return false;
            };
            self.cp.machines[i].components_healthy = true;
            let host = self.cp.machines[i].hostname.clone();
            let id = 1000 + self.next as u64 + i as u64 * 7919;
            self.members().push(EtcdMember {
                id,
                name: host,
                healthy: true,
                learner: false,
            });
            true
        }

        /// Cluster API removes a released machine's infrastructure: its node, and any member
        /// it still had, are gone. False if none was released.
        fn finish(&mut self) -> bool {
            let Some(i) = self
                .cp
                .machines
                .iter()
                .position(|m| m.deleting && !m.cleanup_hook)
            else {
                return false;
            };
            let host = self.cp.machines.remove(i).hostname;
            for e in self.members().iter_mut().filter(|e| e.name == host) {
                e.healthy = false;
            }
            true
        }

        fn set_health(&mut self, i: usize, healthy: bool) {
            let n = self.cp.machines.len();
            if n > 0 {
                let host = self.cp.machines[i % n].hostname.clone();
                self.set_health_of(&host, healthy);
            }
        }

        fn set_health_of(&mut self, host: &str, healthy: bool) {
            for m in self.cp.machines.iter_mut().filter(|m| m.hostname == host) {
                m.components_healthy = healthy;
            }
            for e in self.members().iter_mut().filter(|e| e.name == host) {
                e.healthy = healthy;
            }
        }

        fn spec_change(&mut self) {
            self.desired.version = "v1.34.2".into();
            for m in &mut self.cp.machines {
                m.outdated = Some("Kubernetes → v1.34.2".into());
            }
        }

        /// Plan one step and check every safety property on it; returns the step.
        fn plan_checked(&mut self) -> Result<Step, TestCaseError> {
            self.refresh();
            let step = next_step(&self.desired, true, &self.cp);
            let (surge, unavailable) = self.limits();
            let r = self.replicas();
            match &step {
                // CACPPT #237: a fourth machine beside three members deadlocked a rollout.
                Step::CreateMachine { .. } => prop_assert!(
                    self.cp.machines.len() < r + surge,
                    "created a machine with {} machines for {r} replicas and surge {surge}",
                    self.cp.machines.len()
                ),
                // CACPPT #262: a destructive step on a sick cluster.
                Step::ScaleDown { machine } => {
                    let victim = self.cp.machines.iter().find(|m| &m.name == machine);
                    prop_assert!(victim.is_some_and(|v| !v.deleting));
                    for m in self
                        .cp
                        .machines
                        .iter()
                        .filter(|m| !m.deleting && &m.name != machine)
                    {
                        prop_assert!(
                            self.available(m),
                            "deleted {machine} while {} is unavailable",
                            m.name
                        );
                    }
                    let available = self
                        .cp
                        .machines
                        .iter()
                        .filter(|m| self.available(m))
                        .count();
                    if victim.is_some_and(|v| self.available(v)) {
                        prop_assert!(
                            available - 1 + unavailable >= r,
                            "deleting {machine} leaves {} available of {r}, maxUnavailable {unavailable}",
                            available - 1
                        );
                    }
                }
                // An in-place upgrade: never above maxParallel nodes at once, and never while a
                // node that is not upgrading is unavailable (CACPPT never upgrades in place;
                // `talosctl upgrade` by hand has no such guard).
                Step::UpgradeTalos { machine } => {
                    let target = self.desired.talos_upgrade.as_ref();
                    let more = usize::from(self.find(machine)?.upgrade.is_none());
                    prop_assert!(
                        self.upgrading() + more <= target.map_or(0, |t| t.max_parallel),
                        "{} nodes upgrading at once, maxParallel {:?}",
                        self.upgrading() + more,
                        target.map(|t| t.max_parallel)
                    );
                    for other in self
                        .cp
                        .machines
                        .iter()
                        .filter(|o| !o.deleting && o.upgrade.is_none() && &o.name != machine)
                    {
                        prop_assert!(
                            self.available(other),
                            "upgraded {machine} while {} is unavailable",
                            other.name
                        );
                    }
                }
                // An in-place configuration change: one node at a time, only while every node
                // is available; a reboot into it only while every other node is.
                Step::TryConfig { machine } | Step::RebootConfig { machine } => {
                    let trying = matches!(step, Step::TryConfig { .. });
                    for other in self.cp.machines.iter().filter(|o| !o.deleting) {
                        if &other.name == machine {
                            continue;
                        }
                        prop_assert!(
                            other.reconfigure.is_none(),
                            "{step:?} while {} changes too",
                            other.name
                        );
                        prop_assert!(
                            self.available(other),
                            "{step:?} while {} is unavailable",
                            other.name
                        );
                    }
                    let m = self.find(machine)?;
                    prop_assert!(
                        !trying || m.reconfigure.is_some() || self.available(m),
                        "{step:?} on an unavailable machine"
                    );
                }
                // Remediation (KubeadmControlPlane's rule): one marked machine at a time, never
                // beside another machine being deleted.
                Step::Remediate { machine, .. } => {
                    let m = self.find(machine)?;
                    prop_assert!(m.unhealthy && !m.deleting, "remediated {machine}: {m:?}");
                    prop_assert!(
                        self.cp.machines.iter().all(|o| !o.deleting),
                        "remediated {machine} while another machine is being deleted"
                    );
                }
                _ => {}
            }
            // The one exception, by design and stated in RollingOut: etcd of one or two voters
            // cannot keep quorum through any node's reboot, so an in-place upgrade there
            // reboots one node at a time (as `talosctl upgrade` would) and quorum returns with
            // it; replacing the machine instead would boot the old Talos of the template.
            let voters = self.cp.etcd.iter().flatten().filter(|e| !e.learner).count();
            let reboot_below_three = matches!(step, Step::UpgradeTalos { .. }) && voters < 3;
            if reboot_below_three {
                prop_assert!(
                    self.upgrading() == 0,
                    "a second node rebooting with {voters} voters"
                );
            }
            let had_quorum = self.healthy_quorum() && !reboot_below_three;
            self.apply(&step);
            // No step of ours leaves etcd without a healthy quorum.
            prop_assert!(
                !had_quorum || self.healthy_quorum(),
                "{step:?} broke etcd quorum: {:?}",
                self.cp.etcd
            );
            Ok(step)
        }
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => Just(Event::Plan),
            3 => Just(Event::Join),
            2 => Just(Event::Finish),
            1 => (0usize..8).prop_map(Event::Break),
            1 => (0usize..8).prop_map(Event::Heal),
            1 => Just(Event::SpecChange),
            1 => (1usize..=3).prop_map(Event::TalosChange),
            2 => any::<bool>().prop_map(|rolled_back| Event::Boot { rolled_back }),
            1 => (0usize..8).prop_map(Event::MarkUnhealthy),
            1 => any::<bool>().prop_map(|needs_reboot| Event::ConfigChange { needs_reboot }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// Safety under any interleaving of planner steps, node joins, faults and spec
        /// changes: never above replicas + maxSurge, never more unavailable than
        /// maxUnavailable, never a quorum-breaking step, never a destructive step while
        /// another machine is unavailable.
        #[test]
        fn every_step_is_safe(
            replicas in 1usize..=7,
            surge in 0usize..=3,
            unavailable in 0usize..=3,
            outdated in proptest::collection::vec(any::<bool>(), 7),
            reboot_in_place in any::<bool>(),
            events in proptest::collection::vec(event(), 1..80),
        ) {
            let mut w = world(replicas, surge, unavailable, &outdated, reboot_in_place);
            for e in events {
                match e {
                    Event::Plan => {
                        w.plan_checked()?;
                    }
                    Event::Join => {
                        w.join();
                    }
                    Event::Finish => {
                        w.finish();
                    }
                    Event::Break(i) => w.set_health(i, false),
                    Event::Heal(i) => w.set_health(i, true),
                    Event::SpecChange => w.spec_change(),
                    Event::TalosChange(parallel) => w.talos_change(parallel),
                    Event::Boot { rolled_back } => {
                        w.boot(rolled_back);
                    }
                    Event::MarkUnhealthy(i) => w.mark_unhealthy(i),
                    Event::ConfigChange { needs_reboot } => w.config_change(needs_reboot),
                }
            }
        }

        /// Liveness (CACPPT #225: a rollout stuck deleting the old machine; #193/#153: one
        /// replica with maxSurge 0 never finishes): a healthy cluster whose nodes join always
        /// finishes the rollout, also when the spec changes mid-rollout, with every machine up
        /// to date and the desired count, never waiting with nothing left to wait for.
        #[test]
        fn a_healthy_rollout_always_completes(
            replicas in 1usize..=7,
            surge in 0usize..=3,
            unavailable in 0usize..=3,
            outdated in proptest::collection::vec(any::<bool>(), 7),
            change_at in proptest::option::of(0usize..30),
            talos_at in proptest::option::of((0usize..30, 1usize..=3)),
            config_at in proptest::option::of((0usize..30, any::<bool>())),
            reboot_in_place in any::<bool>(),
        ) {
            let mut w = world(replicas, surge, unavailable, &outdated, reboot_in_place);
            let mut steps = Vec::new();
            let mut done = false;
            for i in 0..400 {
                if change_at == Some(i) {
                    w.spec_change();
                }
                if let Some((_, parallel)) = talos_at.filter(|(at, _)| *at == i) {
                    w.talos_change(parallel);
                }
                if let Some((_, needs_reboot)) = config_at.filter(|(at, _)| *at == i) {
                    w.config_change(needs_reboot);
                }
                let step = w.plan_checked()?;
                match &step {
                    Step::Steady if w.finish() => {}
                    Step::Steady => {
                        done = change_at.is_none_or(|c| c < i)
                            && talos_at.is_none_or(|(t, _)| t < i)
                            && config_at.is_none_or(|(c, _)| c < i);
                        if done {
                            break;
                        }
                    }
                    Step::Wait { reason, message } => {
                        prop_assert!(
                            w.finish() || w.join() || w.boot(false),
                            "stuck: {reason}: {message}; machines {:?}; steps {steps:?}",
                            w.cp.machines
                        );
                    }
                    _ => {}
                }
                steps.push(step);
            }
            prop_assert!(done, "no convergence after 400 steps: {steps:?}");
            prop_assert!(w.cp.machines.iter().all(|m| m.up_to_date() && !m.deleting));
            if talos_at.is_some() {
                prop_assert!(
                    w.cp.machines
                        .iter()
                        .all(|m| m.talos_version.as_deref() == Some(TALOS_TO) && m.upgrade.is_none()),
                    "not every node upgraded in place: {:?}",
                    w.cp.machines
                );
            }
            prop_assert!(
                w.cp.machines.iter().all(|m| m.config_digest == w.desired.config_digest
                    && m.reconfigure.is_none()),
                "not every machine on controlPlaneConfig {:?}: {:?}",
                w.desired.config_digest,
                w.cp.machines
            );
            prop_assert_eq!(w.cp.machines.len(), replicas);
            prop_assert!(w.healthy_quorum());
        }

        /// With maxSurge 0 and one or two replicas, the rollout surges one machine and the
        /// RollingOut note says why (CACPPT #193, #153).
        #[test]
        fn too_few_replicas_to_lose_one_surge_and_say_why(replicas in 1usize..=2, unavailable in 0usize..=3) {
            let b = effective(0, unavailable, replicas);
            prop_assert_eq!((b.surge, b.unavailable), (1, 0));
            let note = b.note.unwrap_or_default();
            prop_assert!(note.contains("added first"), "{}", note);
        }
    }
}
