//! In-place Talos OS upgrades, decided without I/O: which node upgrades next, whether one in
//! progress succeeded or failed, and when to wait. What an upgrade needs to survive a restart
//! of the operator lives on its Machine ([`MARKER`]); nothing is kept in memory.

use std::time::Duration;

use super::scope::{ControlPlane, MachineView, quorum};
use super::step::Step;
use super::wait_reason::WaitReason;

pub use super::records::{UPGRADE as MARKER, Upgrade as Marker};

/// The Talos version the control plane should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub image: String,
    /// v-prefixed, e.g. v1.13.1.
    pub version: String,
    pub max_parallel: usize,
    pub timeout: Duration,
}

impl Target {
    /// The target of a spec's talosUpgrade; `None` when its version cannot be told (an image
    /// pinned by digest without a version, which admission refuses).
    pub fn of(u: &api::controlplane::v1alpha3::TalosUpgrade) -> Option<Target> {
        let version = u.version.clone().or_else(|| {
            let (name, tag) = u.image.rsplit_once(':')?;
            (!tag.contains('/') && !name.ends_with("@sha256")).then(|| tag.to_owned())
        })?;
        Some(Target {
            image: u.image.clone(),
            version,
            max_parallel: usize::try_from(u.max_parallel.unwrap_or(1))
                .unwrap_or(1)
                .max(1),
            timeout: Duration::from_secs(
                u64::try_from(u.timeout_seconds.unwrap_or(600)).unwrap_or(600),
            ),
        })
    }
}

/// Versions compare without their leading v.
fn same_version(a: &str, b: &str) -> bool {
    a.trim_start_matches('v') == b.trim_start_matches('v')
}

/// How many nodes may be upgrading at once: maxParallel, capped at what etcd with `n` members
/// survives losing; one at a time with one or two members, which cannot keep quorum through a
/// reboot whatever is done (as `talosctl upgrade` would).
pub fn parallel(target: &Target, n: usize) -> usize {
    target.max_parallel.min(n.saturating_sub(quorum(n))).max(1)
}

/// The next step of an in-place upgrade towards `target`, or `None` when every node runs it (or
/// the versions are not known yet). Called once no machine needs replacing.
pub fn step(target: &Target, cp: &ControlPlane) -> Option<Step> {
    let live: Vec<&MachineView> = cp.machines.iter().filter(|m| !m.deleting).collect();
    let on_target = |m: &MachineView| {
        m.talos_version
            .as_deref()
            .is_some_and(|v| same_version(v, &target.version))
    };
    // Markers of another target (the spec changed): forgotten, and the node judged afresh.
    if let Some(m) = live.iter().find(|m| {
        m.upgrade
            .as_ref()
            .is_some_and(|u| u.version != target.version || u.image != target.image)
    }) {
        return Some(Step::ForgetUpgrade {
            machine: m.name.clone(),
        });
    }
    for m in &live {
        if let Some(step) = m.upgrade.as_ref().and_then(|u| follow(target, cp, m, u)) {
            return Some(step);
        }
    }
    let pending: Vec<&&MachineView> = live
        .iter()
        .filter(|m| m.upgrade.is_none() && m.talos_version.is_some() && !on_target(m))
        .collect();
    let upgrading: Vec<&str> = live
        .iter()
        .filter(|m| m.upgrade.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if pending.is_empty() && upgrading.is_empty() {
        return None;
    }
    let done = live.iter().filter(|m| on_target(m)).count();
    let progress = format!("{done} of {} nodes on Talos {}", live.len(), target.version);
    if upgrading.len() >= parallel(target, live.len()) || pending.is_empty() {
        let still = live
            .iter()
            .filter(|m| m.upgrade.is_some() && on_target(m))
            .find_map(|m| Some(format!(" ({}: {})", m.name, cp.unavailable_because(m)?)))
            .unwrap_or_default();
        return Some(Step::Wait {
            reason: WaitReason::TalosUpgradeInProgress,
            message: format!(
                "{progress}; waiting for {} to be back healthy on {}{still}",
                upgrading.join(", "),
                target.version
            ),
        });
    }
    if let Some(wait) = cp.in_place_blocked(
        live.iter().copied().filter(|m| m.upgrade.is_none()),
        &progress,
        "no node is upgraded now",
    ) {
        return Some(wait);
    }
    let first = pending
        .iter()
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))?;
    Some(Step::UpgradeTalos {
        machine: first.name.clone(),
    })
}

/// The next step for node `m` under way with upgrade `u`, if it has one: done, halted on a
/// failure, asked again, seen down, rolled back or out of time.
fn follow(target: &Target, cp: &ControlPlane, m: &MachineView, u: &Marker) -> Option<Step> {
    let machine = m.name.clone();
    let on = |version: &str| {
        m.talos_version
            .as_deref()
            .is_some_and(|v| same_version(v, version))
    };
    if on(&target.version) && cp.available(m) {
        return Some(Step::UpgradeDone { machine });
    }
    if let Some(why) = &u.failed {
        return Some(Step::Wait {
            reason: WaitReason::TalosUpgradeFailed,
            message: format!(
                "the Talos upgrade of machine {} to {} failed: {why}; nothing else is upgraded until it recovers: fix the node and remove the annotation {MARKER} from machine {} to try again, or change talosUpgrade",
                m.name, u.version, m.name
            ),
        });
    }
    if !u.issued {
        // Asked for, but not known to have reached the node (an operator restart in between):
        // asked again.
        return Some(Step::UpgradeTalos { machine });
    }
    if !m.reachable && !u.down {
        return Some(Step::UpgradeSeenDown { machine });
    }
    if u.down && m.reachable && m.components_healthy && on(&u.from) {
        return Some(Step::UpgradeFailed {
            machine,
            why: format!(
                "the node rebooted and came back on {} (rolled back)",
                u.from
            ),
        });
    }
    (cp.now > u.at + target.timeout).then(|| Step::UpgradeFailed {
        machine,
        why: format!(
            "the node was not back healthy on {} within {}s",
            u.version,
            target.timeout.as_secs()
        ),
    })
}

/// Whether a running node's Talos version is missing from the last look (its reply lost, or
/// the call that asks every node failed as a whole). [`step`] passes over such a node, so with
/// an upgrade asked for, a plan with nothing to do is not known to be done: it is looked at
/// again soon, never kept as a steady look.
pub fn versions_unknown(cp: &ControlPlane) -> bool {
    cp.machines
        .iter()
        .any(|m| !m.deleting && m.reachable && m.talos_version.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn target(max_parallel: usize) -> Target {
        Target {
            image: "ghcr.io/siderolabs/installer:v1.13.1".into(),
            version: "v1.13.1".into(),
            max_parallel,
            timeout: Duration::from_secs(600),
        }
    }

    fn cp(n: usize) -> ControlPlane {
        let machines: Vec<MachineView> = (0..n)
            .map(|i| MachineView {
                talos_version: Some("v1.13.0".into()),
                ..MachineView::test(
                    &format!("m{i}"),
                    Timestamp::from_second(i as i64).unwrap_or(Timestamp::UNIX_EPOCH),
                )
            })
            .collect();
        ControlPlane {
            now: Timestamp::from_second(1000).unwrap_or(Timestamp::UNIX_EPOCH),
            ..ControlPlane::test(machines)
        }
    }

    fn marker(issued: bool) -> Marker {
        Marker {
            version: "v1.13.1".into(),
            image: "ghcr.io/siderolabs/installer:v1.13.1".into(),
            from: "v1.13.0".into(),
            at: Timestamp::from_second(900).unwrap_or(Timestamp::UNIX_EPOCH),
            issued,
            down: false,
            failed: None,
        }
    }

    fn set(cp: &mut ControlPlane, i: usize, f: impl FnOnce(&mut Marker)) {
        if let Some(u) = cp.machines[i].upgrade.as_mut() {
            f(u);
        }
    }

    fn upgrading(cp: &mut ControlPlane, i: usize, issued: bool) {
        cp.machines[i].upgrade = Some(marker(issued));
        cp.machines[i].components_healthy = false;
        cp.machines[i].reachable = false;
    }

    #[test]
    fn one_node_at_a_time_oldest_first_and_only_when_the_others_are_healthy() {
        let mut c = cp(3);
        assert_eq!(
            step(&target(1), &c),
            Some(Step::UpgradeTalos {
                machine: "m0".into()
            })
        );
        upgrading(&mut c, 0, true);
        match step(&target(3), &c) {
            Some(Step::UpgradeSeenDown { machine }) => assert_eq!(machine, "m0"),
            other => panic!("{other:?}"),
        }
        set(&mut c, 0, |u| u.down = true);
        // maxParallel 3 is capped at 1 by quorum with three members.
        match step(&target(3), &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, WaitReason::TalosUpgradeInProgress);
                assert!(
                    message.contains("0 of 3 nodes on Talos v1.13.1"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Back on the new version and healthy: done, then the next one.
        c.machines[0].talos_version = Some("v1.13.1".into());
        c.machines[0].components_healthy = true;
        c.machines[0].reachable = true;
        assert_eq!(
            step(&target(1), &c),
            Some(Step::UpgradeDone {
                machine: "m0".into()
            })
        );
        c.machines[0].upgrade = None;
        c.machines[2].components_healthy = false;
        assert!(matches!(
            step(&target(1), &c),
            Some(Step::Wait { reason: WaitReason::WaitingForHealthyNodes, message }) if message.contains("m2")
        ));
        c.machines[2].components_healthy = true;
        assert_eq!(
            step(&target(1), &c),
            Some(Step::UpgradeTalos {
                machine: "m1".into()
            })
        );
        for m in &mut c.machines {
            m.talos_version = Some("v1.13.1".into());
        }
        assert_eq!(step(&target(1), &c), None, "every node upgraded");
    }

    /// Found by the rollout_plan fuzz target: one replica, and a machine being deleted without
    /// our hook whose member still votes. Rebooting the one running node would leave one
    /// healthy voter of two.
    #[test]
    fn a_vote_held_by_no_running_machine_holds_the_upgrade_back() {
        let mut c = cp(2);
        c.machines[1].deleting = true;
        c.machines[1].cleanup_hook = false;
        match step(&target(2), &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, WaitReason::WaitingForHealthyNodes);
                assert!(
                    message.contains("etcd member m1 (2) belongs to no running machine"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Once its member has left, the running node is upgraded.
        c.etcd.as_mut().unwrap().retain(|e| e.name != "m1");
        assert_eq!(
            step(&target(2), &c),
            Some(Step::UpgradeTalos {
                machine: "m0".into()
            })
        );
    }

    #[test]
    fn a_node_back_on_the_new_version_waits_for_its_workload_node_to_be_ready() {
        let mut c = cp(3);
        upgrading(&mut c, 0, true);
        set(&mut c, 0, |u| u.down = true);
        // Services and etcd are back, the kubelet has not reported Ready yet.
        c.machines[0].talos_version = Some("v1.13.1".into());
        c.machines[0].components_healthy = true;
        c.machines[0].reachable = true;
        c.machines[0].node_not_ready = Some("Ready is False (KubeletNotReady)".into());
        match step(&target(1), &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, WaitReason::TalosUpgradeInProgress);
                assert!(
                    message.contains("its Node m0 is not Ready: Ready is False (KubeletNotReady)"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        c.machines[0].node_not_ready = None;
        assert_eq!(
            step(&target(1), &c),
            Some(Step::UpgradeDone {
                machine: "m0".into()
            })
        );
        // A NotReady Node elsewhere holds the next upgrade back, and says which.
        c.machines[0].upgrade = None;
        c.machines[2].node_not_ready = Some("Ready is Unknown (NodeStatusUnknown)".into());
        assert!(matches!(
            step(&target(1), &c),
            Some(Step::Wait { reason: WaitReason::WaitingForHealthyNodes, message })
                if message.contains("machine m2 is not healthy (its Node m2 is not Ready")
        ));
    }

    #[test]
    fn five_nodes_upgrade_two_at_once_and_never_more_than_quorum_allows() {
        let mut c = cp(5);
        assert_eq!(parallel(&target(2), 5), 2);
        assert_eq!(parallel(&target(9), 5), 2);
        assert_eq!(parallel(&target(9), 1), 1);
        upgrading(&mut c, 0, true);
        set(&mut c, 0, |u| u.down = true);
        assert_eq!(
            step(&target(2), &c),
            Some(Step::UpgradeTalos {
                machine: "m1".into()
            })
        );
        upgrading(&mut c, 1, true);
        set(&mut c, 1, |u| u.down = true);
        assert!(matches!(
            step(&target(9), &c),
            Some(Step::Wait {
                reason: WaitReason::TalosUpgradeInProgress,
                ..
            })
        ));
    }

    #[test]
    fn a_rollback_or_a_timeout_fails_the_upgrade_and_halts_until_cleared_or_changed() {
        let mut c = cp(3);
        upgrading(&mut c, 0, true);
        // Back, healthy, on the old version after a reboot: rolled back.
        c.machines[0].reachable = true;
        c.machines[0].components_healthy = true;
        set(&mut c, 0, |u| u.down = true);
        match step(&target(1), &c) {
            Some(Step::UpgradeFailed { machine, why }) => {
                assert_eq!(machine, "m0");
                assert!(why.contains("rolled back"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Not seen down, but never back on the new version: the timeout fails it.
        let mut slow = cp(3);
        upgrading(&mut slow, 0, true);
        slow.machines[0].reachable = true;
        slow.now = Timestamp::from_second(2000).unwrap_or(Timestamp::UNIX_EPOCH);
        assert!(matches!(
            step(&target(1), &slow),
            Some(Step::UpgradeFailed { why, .. }) if why.contains("within 600s")
        ));
        // Failed: everything waits, naming the machine and how to retry.
        set(&mut c, 0, |u| u.failed = Some("rolled back".into()));
        match step(&target(1), &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, WaitReason::TalosUpgradeFailed);
                assert!(
                    message.contains("m0") && message.contains(MARKER),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A new target forgets the marker.
        let newer = Target {
            version: "v1.13.2".into(),
            image: "ghcr.io/siderolabs/installer:v1.13.2".into(),
            ..target(1)
        };
        assert_eq!(
            step(&newer, &c),
            Some(Step::ForgetUpgrade {
                machine: "m0".into()
            })
        );
        // A marker asked for but not issued (a restart in between) is issued again.
        let mut restarted = cp(3);
        upgrading(&mut restarted, 1, false);
        assert_eq!(
            step(&target(1), &restarted),
            Some(Step::UpgradeTalos {
                machine: "m1".into()
            })
        );
    }

    #[test]
    fn the_target_version_comes_from_the_image_tag_unless_given() {
        let spec = |image: &str, version: Option<&str>| api::controlplane::v1alpha3::TalosUpgrade {
            image: image.into(),
            version: version.map(Into::into),
            ..Default::default()
        };
        let t = Target::of(&spec("ghcr.io/siderolabs/installer:v1.13.1", None));
        assert_eq!(t.map(|t| t.version), Some("v1.13.1".into()));
        let pinned = "factory.talos.dev/installer/abc@sha256:0123";
        assert_eq!(Target::of(&spec(pinned, None)), None);
        assert_eq!(
            Target::of(&spec(pinned, Some("v1.13.1"))).map(|t| t.version),
            Some("v1.13.1".into())
        );
        assert_eq!(
            Target::of(&spec("registry:5000/installer", None)),
            None,
            "a registry port is not a tag"
        );
    }

    #[test]
    fn a_node_whose_version_was_not_heard_leaves_the_upgrade_unjudged() {
        let mut c = cp(3);
        c.machines[0].talos_version = Some("v1.13.1".into());
        c.machines[1].talos_version = Some("v1.13.1".into());
        assert!(!versions_unknown(&c));
        // The reply of the one node still to upgrade is lost: no step is taken on it...
        c.machines[2].talos_version = None;
        assert_eq!(step(&target(1), &c), None);
        // ...and the look says so, so that it is not kept as done.
        assert!(versions_unknown(&c));
        // A node that does not answer at all is judged by its backoff instead.
        c.machines[2].reachable = false;
        assert!(!versions_unknown(&c));
    }
}
