//! The control plane as one reconcile sees it, and the questions KubeadmControlPlane's
//! `ControlPlane` answers, without I/O: where the next machine goes, which machine leaves on
//! scale-down, whether a scale or rollout step may start, and which etcd members may go.

use std::collections::{BTreeMap, BTreeSet};

use super::wait_reason::WaitReason;
use api::controlplane::v1alpha3::RemediationStrategy;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A failure domain of the Cluster (`status.failureDomains`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDomain {
    pub name: String,
    /// Only domains marked for control planes take control-plane machines.
    pub control_plane: bool,
}

/// One control-plane Machine, reduced to what decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub name: String,
    /// The hostname the node registers in etcd with.
    pub hostname: String,
    pub created: Timestamp,
    pub failure_domain: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Carries `cluster.x-k8s.io/delete-machine`.
    pub delete_annotated: bool,
    /// The Kubernetes version of the Machine.
    pub version: Option<String>,
    /// Why the machine no longer matches the desired spec (version, infrastructure template,
    /// Talos configuration, rolloutAfter) and must be replaced; `None` when it matches.
    pub outdated: Option<String>,
    /// apiserver, controller-manager, scheduler and etcd report healthy on the node.
    pub components_healthy: bool,
    /// What is wrong with its node as the Talos API tells it (services not healthy, or the
    /// call's own error, e.g. a certificate that cannot be verified); `None` when nothing is.
    pub node_problem: Option<String>,
    /// Carries our pre-terminate hook: its etcd member must leave before the machine goes.
    pub cleanup_hook: bool,
    /// A MachineHealthCheck marked it unhealthy and asks its owner to remediate it.
    pub unhealthy: bool,
    /// The remediation this machine replaced a machine for, if it did.
    pub remediation_for: Option<super::records::Remediation>,
    /// The Talos version its node reports (asked only while talosUpgrade is set).
    pub talos_version: Option<String>,
    /// Its node answered the Talos API.
    pub reachable: bool,
    /// The in-place Talos upgrade recorded on it, if one is under way.
    pub upgrade: Option<super::records::Upgrade>,
    /// The digest of the configuration it runs (controlPlaneConfig), when recorded.
    pub config_digest: Option<String>,
    /// The in-place configuration change recorded on it, if one is under way.
    pub reconfigure: Option<super::records::ConfigChange>,
    /// It runs another controlPlaneConfig than the spec's, to be changed in place.
    pub config_pending: bool,
    /// Its node runs another Talos version than talosUpgrade asks for, to be upgraded in
    /// place: why, for conditions.
    pub talos_pending: Option<String>,
    /// Why its workload Node is not Ready; `None` when it is, or when its Node is not known
    /// (not registered yet, or the workload cluster cannot be read).
    pub node_not_ready: Option<String>,
}

#[cfg(test)]
impl MachineView {
    /// A healthy, up-to-date machine (its hostname is its name) with our hook, for tests.
    pub(crate) fn test(name: &str, created: Timestamp) -> MachineView {
        MachineView {
            name: name.into(),
            hostname: name.into(),
            created,
            failure_domain: None,
            deleting: false,
            delete_annotated: false,
            version: None,
            outdated: None,
            components_healthy: true,
            node_problem: None,
            cleanup_hook: true,
            unhealthy: false,
            remediation_for: None,
            talos_version: None,
            reachable: true,
            upgrade: None,
            config_digest: None,
            reconfigure: None,
            config_pending: false,
            talos_pending: None,
            node_not_ready: None,
        }
    }
}

#[cfg(test)]
impl ControlPlane {
    /// Tests: `machines`, each with a healthy voting etcd member named after its host.
    pub(crate) fn test(machines: Vec<MachineView>) -> ControlPlane {
        let etcd = machines
            .iter()
            .enumerate()
            .map(|(i, m)| EtcdMember {
                id: i as u64 + 1,
                name: m.hostname.clone(),
                healthy: true,
                learner: false,
            })
            .collect();
        ControlPlane {
            machines,
            etcd: Some(etcd),
            ..ControlPlane::default()
        }
    }
}

/// How long after a machine's creation its etcd member is watched closely while it settles
/// (see [`ControlPlane::member_settling`]).
pub const SETTLING: std::time::Duration = std::time::Duration::from_secs(120);

/// An etcd member as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    /// The member name: the node's hostname.
    pub name: String,
    pub healthy: bool,
    pub learner: bool,
}

/// Why a scale or rollout step may not start now (KubeadmControlPlane's preflight checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// A reason for conditions, e.g. `MachineDeleting`.
    pub check: WaitReason,
    pub message: String,
}

/// The retry limits, with KubeadmControlPlane's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_retry: Option<i32>,
    pub retry_period: SignedDuration,
    pub min_healthy_period: SignedDuration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_retry: None,
            retry_period: SignedDuration::ZERO,
            min_healthy_period: SignedDuration::from_secs(3600),
        }
    }
}

impl Policy {
    pub fn of(strategy: Option<&RemediationStrategy>) -> Policy {
        let default = Policy::default();
        let Some(s) = strategy else { return default };
        let secs = |v: Option<i32>, d: SignedDuration| {
            v.map_or(d, |s| SignedDuration::from_secs(i64::from(s.max(0))))
        };
        Policy {
            max_retry: s.max_retry,
            retry_period: secs(s.retry_period_seconds, default.retry_period),
            min_healthy_period: secs(s.min_healthy_period_seconds, default.min_healthy_period),
        }
    }
}

/// The observed control plane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlPlane {
    pub failure_domains: Vec<FailureDomain>,
    pub machines: Vec<MachineView>,
    /// The etcd members, or `None` when no node answered.
    pub etcd: Option<Vec<EtcdMember>>,
    /// Remediation limits from the spec.
    pub remediation: Policy,
    /// The time of the observation.
    pub now: Timestamp,
}

impl MachineView {
    /// Needs no replacement to match the desired spec.
    pub fn up_to_date(&self) -> bool {
        self.outdated.is_none()
    }

    /// Matches the desired spec: up to date, on the spec's configuration and on the Talos
    /// version talosUpgrade asks for.
    pub fn current(&self) -> bool {
        self.up_to_date() && !self.config_pending && self.talos_pending.is_none()
    }

    /// Why it does not match the desired spec (see [`MachineView::current`]).
    pub fn not_current(&self) -> Option<String> {
        self.outdated
            .clone()
            .or_else(|| {
                self.config_pending
                    .then(|| "controlPlaneConfig changed, to be applied in place".to_owned())
            })
            .or_else(|| self.talos_pending.clone())
    }
}

/// The members needed for quorum among `members` voting members.
pub fn quorum(members: usize) -> usize {
    members / 2 + 1
}

impl ControlPlane {
    fn live(&self) -> impl Iterator<Item = &MachineView> {
        self.machines.iter().filter(|m| !m.deleting)
    }

    /// Live machines per failure domain (machines without one count under "").
    fn per_domain(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for m in self.live() {
            *counts
                .entry(m.failure_domain.as_deref().unwrap_or(""))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Where the next machine goes: the control-plane failure domain with the fewest live
    /// machines, ties broken by fewer up-to-date machines, then by name. Never random (CACPPT
    /// chose at random and users found every control plane in one zone). `None` when the
    /// Cluster has no control-plane failure domains.
    pub fn next_failure_domain(&self) -> Option<String> {
        let counts = self.per_domain();
        let up_to_date = |fd: &str| {
            self.live()
                .filter(|m| m.up_to_date() && m.failure_domain.as_deref() == Some(fd))
                .count()
        };
        self.failure_domains
            .iter()
            .filter(|fd| fd.control_plane)
            .min_by_key(|fd| {
                (
                    counts.get(fd.name.as_str()).copied().unwrap_or(0),
                    up_to_date(&fd.name),
                    fd.name.clone(),
                )
            })
            .map(|fd| fd.name.clone())
    }

    /// The machine that leaves on scale-down, in KubeadmControlPlane's order: delete-annotated
    /// outdated machines, then other delete-annotated machines, then outdated machines with
    /// unhealthy components, then other outdated machines, then (beyond KubeadmControlPlane,
    /// which would pick a healthy machine and then block on the sick one: CACPPT #262) machines
    /// with unhealthy components, then any machine. Within the first non-empty class: the
    /// failure domain with the most live machines, then the oldest machine there (ties by name).
    pub fn machine_to_scale_down(&self) -> Option<&MachineView> {
        self.pick(|_| true)
    }

    /// The first live machine in scale-down order among those `eligible`.
    pub fn pick(&self, eligible: impl Fn(&MachineView) -> bool) -> Option<&MachineView> {
        let classes: [&dyn Fn(&MachineView) -> bool; 6] = [
            &|m| m.delete_annotated && !m.up_to_date(),
            &|m| m.delete_annotated,
            &|m| !m.up_to_date() && !m.components_healthy,
            &|m| !m.up_to_date(),
            &|m| !m.components_healthy,
            &|_| true,
        ];
        let counts = self.per_domain();
        classes.iter().find_map(|class| {
            let candidates: Vec<&MachineView> =
                self.live().filter(|m| eligible(m) && class(m)).collect();
            let domain = candidates
                .iter()
                .map(|m| m.failure_domain.as_deref().unwrap_or(""))
                .collect::<BTreeSet<_>>()
                .into_iter()
                // Most machines first; among equals, the first name.
                .min_by_key(|fd| (std::cmp::Reverse(counts.get(fd).copied().unwrap_or(0)), *fd))?;
            candidates
                .into_iter()
                .filter(|m| m.failure_domain.as_deref().unwrap_or("") == domain)
                .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))
        })
    }

    /// KubeadmControlPlane's preflight checks before a scale or rollout step: no machine is
    /// being deleted, etcd answered with every machine a healthy voting member, and every
    /// machine's control-plane components are healthy. The machine `leaving` (the one a
    /// scale-down removes) is exempt from the health checks, so an unhealthy machine can still
    /// be scaled away. The first failing check names what blocks.
    pub fn preflight(&self, leaving: Option<&str>) -> Result<(), Blocked> {
        if let Some(m) = self.machines.iter().find(|m| m.deleting) {
            return Err(Blocked {
                check: WaitReason::MachineDeleting,
                message: format!("waiting for machine {} to finish deleting", m.name),
            });
        }
        self.health_checks(leaving)
    }

    /// The preflight checks of a rolling-update step: as [`ControlPlane::preflight`], except
    /// that machines being deleted are left out instead of blocking, so a rollout with
    /// maxUnavailable above 1 can replace several machines at once. Their members still leave
    /// one at a time, each only while quorum survives ([`ControlPlane::can_remove_member`]).
    pub fn rollout_preflight(&self, leaving: Option<&str>) -> Result<(), Blocked> {
        self.health_checks(leaving)
    }

    fn health_checks(&self, leaving: Option<&str>) -> Result<(), Blocked> {
        let Some(members) = &self.etcd else {
            return Err(Blocked {
                check: WaitReason::EtcdUnknown,
                message: "no control-plane node answered for the etcd member list".into(),
            });
        };
        let staying = || {
            self.machines
                .iter()
                .filter(move |m| !m.deleting && Some(m.name.as_str()) != leaving)
        };
        for m in staying() {
            match members.iter().find(|e| e.name == m.hostname) {
                None => {
                    return Err(Blocked {
                        check: WaitReason::EtcdMemberMissing,
                        message: format!("machine {} has no etcd member", m.name),
                    });
                }
                Some(e) if !e.healthy || e.learner => {
                    return Err(Blocked {
                        check: WaitReason::EtcdMemberUnhealthy,
                        message: format!(
                            "the etcd member of machine {} (id {:x}) is {}",
                            m.name,
                            e.id,
                            if e.learner {
                                "still a learner"
                            } else {
                                "unhealthy"
                            }
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(m) = staying().find(|m| !m.components_healthy) {
            return Err(Blocked {
                check: WaitReason::ControlPlaneComponentsUnhealthy,
                message: format!(
                    "the control-plane components of machine {} are not healthy",
                    m.name
                ),
            });
        }
        Ok(())
    }

    /// Members that belong to no machine (by hostname): leftovers of machines that are gone.
    pub fn orphan_members(&self) -> Vec<&EtcdMember> {
        let hostnames: BTreeSet<&str> = self.machines.iter().map(|m| m.hostname.as_str()).collect();
        self.etcd
            .iter()
            .flatten()
            .filter(|e| !hostnames.contains(e.name.as_str()))
            .collect()
    }

    /// Whether removing member `id` keeps a healthy quorum of the voting members that remain.
    /// Unknown membership or an unknown id is never safe.
    pub fn can_remove_member(&self, id: u64) -> bool {
        self.can_remove_members(&[id])
    }

    /// Whether removing all of `ids` keeps a healthy quorum of the voting members that remain.
    /// Learners have no vote: their removal changes nothing about quorum.
    pub fn can_remove_members(&self, ids: &[u64]) -> bool {
        let Some(members) = &self.etcd else {
            return false;
        };
        if ids.iter().any(|id| !members.iter().any(|e| e.id == *id)) {
            return false;
        }
        if members.iter().all(|e| e.learner || !ids.contains(&e.id)) {
            return true;
        }
        let voting: Vec<&EtcdMember> = members
            .iter()
            .filter(|e| !e.learner && !ids.contains(&e.id))
            .collect();
        let healthy = voting.iter().filter(|e| e.healthy).count();
        !voting.is_empty() && healthy >= quorum(voting.len())
    }

    /// The etcd member of machine `m`, by hostname.
    pub fn member_of(&self, m: &MachineView) -> Option<&EtcdMember> {
        self.etcd.iter().flatten().find(|e| e.name == m.hostname)
    }

    /// Whether a new machine's etcd member is settling: it exists, and is still a learner or
    /// not healthy yet, on a machine that stays and was created less than [`SETTLING`] before
    /// `now`. Talos promotes a learner once it has caught up, and its etcd service turns healthy
    /// soon after; no event announces either, and a rollout's next step waits for both. A member
    /// still unhealthy after that is a failure, not worth looking at this often.
    pub fn member_settling(&self, now: Timestamp) -> bool {
        self.machines
            .iter()
            .filter(|m| !m.deleting)
            .filter(|m| {
                now.duration_since(m.created)
                    .try_into()
                    .is_ok_and(|age: std::time::Duration| age < SETTLING)
            })
            .any(|m| self.member_of(m).is_some_and(|e| e.learner || !e.healthy))
    }

    /// A machine is available when it is not being deleted, its control-plane components are
    /// healthy, its workload Node is not known to be NotReady, and its etcd member is a healthy
    /// voter.
    pub fn available(&self, m: &MachineView) -> bool {
        self.unavailable_because(m).is_none()
    }

    /// Why no more nodes may change in place now, as a Wait step: etcd is unknown, or one of
    /// `others` (the machines not changing already) is not available. `progress` opens the
    /// message and `what` ends it ("so no node is upgraded now").
    pub fn in_place_blocked<'a>(
        &self,
        others: impl IntoIterator<Item = &'a MachineView>,
        progress: &str,
        what: &str,
    ) -> Option<super::step::Step> {
        if self.etcd.is_none() {
            return Some(super::step::Step::Wait {
                reason: WaitReason::EtcdUnknown,
                message: format!("{progress}; no node answered for the etcd member list"),
            });
        }
        // A voting member of no running machine (one being deleted without our hook, or an
        // orphan whose removal would lose quorum) still counts for quorum: with it, one node
        // more down could lose it.
        let running: BTreeSet<&str> = self.live().map(|m| m.hostname.as_str()).collect();
        if let Some(e) = self
            .etcd
            .iter()
            .flatten()
            .find(|e| !e.learner && !running.contains(e.name.as_str()))
        {
            return Some(super::step::Step::Wait {
                reason: WaitReason::WaitingForHealthyNodes,
                message: format!(
                    "{progress}; etcd member {} ({:x}) belongs to no running machine and still votes, so {what}",
                    e.name, e.id
                ),
            });
        }
        // Every machine is healthy, with a healthy voting member, before one more changes.
        let (sick, why) = others
            .into_iter()
            .find_map(|m| Some((m, self.unavailable_because(m)?)))?;
        Some(super::step::Step::Wait {
            reason: WaitReason::WaitingForHealthyNodes,
            message: format!(
                "{progress}; machine {} is not healthy ({why}), so {what}",
                sick.name
            ),
        })
    }

    /// Why `m` is not available (see [`ControlPlane::available`]); `None` when it is.
    pub fn unavailable_because(&self, m: &MachineView) -> Option<String> {
        if m.deleting {
            return Some("it is being deleted".into());
        }
        if !m.components_healthy {
            return Some(
                m.node_problem
                    .clone()
                    .unwrap_or_else(|| "its etcd, kubelet or apid service is not healthy".into()),
            );
        }
        if let Some(why) = &m.node_not_ready {
            return Some(format!("its Node {} is not Ready: {why}", m.hostname));
        }
        match self.member_of(m) {
            None => Some("it has no etcd member".into()),
            Some(e) if !e.healthy => Some("its etcd member is not healthy".into()),
            Some(e) if e.learner => Some("its etcd member is still a learner".into()),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn m(name: &str, fd: &str, age: i64) -> MachineView {
        MachineView {
            failure_domain: (!fd.is_empty()).then(|| fd.into()),
            ..MachineView::test(name, at(-age))
        }
    }

    fn member(id: u64, name: &str, healthy: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            healthy,
            learner: false,
        }
    }

    fn domains(names: &[(&str, bool)]) -> Vec<FailureDomain> {
        names
            .iter()
            .map(|(n, cp)| FailureDomain {
                name: (*n).into(),
                control_plane: *cp,
            })
            .collect()
    }

    fn healthy(machines: Vec<MachineView>) -> ControlPlane {
        ControlPlane {
            failure_domains: domains(&[("a", true), ("b", true), ("c", true)]),
            ..ControlPlane::test(machines)
        }
    }

    #[test]
    fn a_new_member_settling_is_watched_closely_an_old_or_leaving_one_is_not() {
        let now = at(0);
        let mut cp = healthy(vec![m("m1", "a", 3), m("m2", "b", 2), m("m3", "c", 1)]);
        assert!(!cp.member_settling(now), "three healthy voters");
        let set = |cp: &mut ControlPlane, learner: bool, healthy: bool| {
            if let Some(e) = cp.etcd.iter_mut().flatten().find(|e| e.name == "m3") {
                e.learner = learner;
                e.healthy = healthy;
            }
        };
        set(&mut cp, true, false);
        assert!(cp.member_settling(now), "m3 joined as a learner");
        set(&mut cp, false, false);
        assert!(
            cp.member_settling(now),
            "m3 promoted, its etcd not healthy yet"
        );
        let later = at(SETTLING.as_secs() as i64 + 5);
        assert!(
            !cp.member_settling(later),
            "unhealthy for minutes: a failure, not settling"
        );
        cp.machines[2].deleting = true;
        assert!(
            !cp.member_settling(now),
            "m3 is going: nothing waits for it"
        );
        cp.etcd = None;
        assert!(!cp.member_settling(now), "members unknown");
    }

    #[test]
    fn scale_up_fills_the_emptiest_control_plane_domain_deterministically() {
        let mut cp = healthy(vec![]);
        let mut placed = Vec::new();
        for i in 0..6 {
            let fd = cp.next_failure_domain().expect("a domain");
            placed.push(fd.clone());
            cp.machines.push(m(&format!("m{i}"), &fd, 0));
        }
        assert_eq!(placed, ["a", "b", "c", "a", "b", "c"]);
        // Domains not marked for control planes are never chosen.
        let cp = ControlPlane {
            failure_domains: domains(&[("a", false), ("z", true)]),
            ..ControlPlane::default()
        };
        assert_eq!(cp.next_failure_domain().as_deref(), Some("z"));
        assert_eq!(ControlPlane::default().next_failure_domain(), None);
    }

    #[test]
    fn a_deleting_machine_does_not_hold_its_domain() {
        let mut gone = m("m0", "a", 0);
        gone.deleting = true;
        let cp = healthy(vec![gone, m("m1", "b", 0), m("m2", "c", 0)]);
        assert_eq!(cp.next_failure_domain().as_deref(), Some("a"));
    }

    #[test]
    fn scale_down_follows_kubeadm_control_plane_order() {
        let mut machines = vec![
            m("old-a", "a", 300),
            m("a2", "a", 100),
            m("b1", "b", 200),
            m("c1", "c", 50),
        ];
        // Without outdated or annotated machines: the domain with the most machines, oldest first.
        assert_eq!(
            healthy(machines.clone())
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("old-a")
        );
        // Unhealthy components beat age among up-to-date machines (CACPPT #262).
        let mut sick = machines.clone();
        sick[3].components_healthy = false;
        assert_eq!(
            healthy(sick)
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("c1")
        );
        // Outdated beats age.
        machines[2].outdated = Some("old".into());
        assert_eq!(
            healthy(machines.clone())
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("b1")
        );
        // Outdated with unhealthy components beats outdated.
        machines[3].outdated = Some("old".into());
        machines[3].components_healthy = false;
        assert_eq!(
            healthy(machines.clone())
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("c1")
        );
        // A delete annotation beats all of that; an annotated outdated machine beats it.
        machines[1].delete_annotated = true;
        assert_eq!(
            healthy(machines.clone())
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("a2")
        );
        machines[2].delete_annotated = true;
        assert_eq!(
            healthy(machines.clone())
                .machine_to_scale_down()
                .map(|m| m.name.as_str()),
            Some("b1")
        );
    }

    #[test]
    fn preflight_names_the_check_that_blocks() {
        let ok = healthy(vec![m("m0", "a", 0), m("m1", "b", 0), m("m2", "c", 0)]);
        assert_eq!(ok.preflight(None), Ok(()));

        let mut deleting = ok.clone();
        deleting.machines[1].deleting = true;
        assert_eq!(
            deleting.preflight(None).map_err(|b| b.check),
            Err(WaitReason::MachineDeleting)
        );

        let mut unknown = ok.clone();
        unknown.etcd = None;
        assert_eq!(
            unknown.preflight(None).map_err(|b| b.check),
            Err(WaitReason::EtcdUnknown)
        );

        let mut missing = ok.clone();
        if let Some(members) = &mut missing.etcd {
            members.pop();
        }
        let blocked = missing
            .preflight(None)
            .expect_err("a machine without a member");
        assert_eq!(blocked.check, WaitReason::EtcdMemberMissing);
        assert!(blocked.message.contains("m2"), "{}", blocked.message);

        let mut sick = ok.clone();
        if let Some(members) = &mut sick.etcd {
            members[0].healthy = false;
        }
        assert_eq!(
            sick.preflight(None).map_err(|b| b.check),
            Err(WaitReason::EtcdMemberUnhealthy)
        );

        let mut components = ok;
        components.machines[2].components_healthy = false;
        assert_eq!(
            components.preflight(None).map_err(|b| b.check),
            Err(WaitReason::ControlPlaneComponentsUnhealthy)
        );
    }

    #[test]
    fn orphans_are_members_without_a_machine() {
        let mut cp = healthy(vec![m("m0", "a", 0), m("m1", "b", 0)]);
        if let Some(members) = &mut cp.etcd {
            members.push(member(9, "gone", false));
        }
        let orphans: Vec<u64> = cp.orphan_members().iter().map(|e| e.id).collect();
        assert_eq!(orphans, [9]);
    }

    #[test]
    fn a_member_goes_only_when_quorum_survives() {
        let mut cp = healthy(vec![m("m0", "a", 0), m("m1", "b", 0), m("m2", "c", 0)]);
        assert!(cp.can_remove_member(1), "3 healthy → 2 healthy of 2");
        if let Some(members) = &mut cp.etcd {
            members[1].healthy = false;
        }
        // Removing the unhealthy one leaves 2 healthy of 2; removing a healthy one, 1 of 2.
        assert!(cp.can_remove_member(2));
        assert!(!cp.can_remove_member(1));
        // The last member, an unknown id and unknown membership are never removed.
        let single = healthy(vec![m("m0", "a", 0)]);
        assert!(!single.can_remove_member(1));
        assert!(!cp.can_remove_member(42));
        cp.etcd = None;
        assert!(!cp.can_remove_member(1));
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(5)), (1, 2, 2, 3));
    }
}
