//! The next step of a TalosControlPlane reconcile, decided without I/O from the observed
//! [`ControlPlane`]. As in KubeadmControlPlane, a reconcile takes at most one step that
//! changes the control plane and returns; the next event brings the next step.

use super::rollout::{self, Desired, version_check};
use super::scope::{Blocked, ControlPlane};
pub use super::step::Step;
pub use super::wait_reason::WaitReason;

impl From<Blocked> for Step {
    fn from(b: Blocked) -> Step {
        Step::Wait {
            reason: b.check,
            message: b.message,
        }
    }
}

/// Decide the next step towards `desired`. `bootstrapped` says whether etcd was bootstrapped
/// (the control plane is initialized).
pub fn next_step(desired: &Desired, bootstrapped: bool, cp: &ControlPlane) -> Step {
    let replicas = desired.replicas;
    if replicas < 1 {
        return Step::Wait {
            reason: WaitReason::InvalidReplicas,
            message: format!(
                "refusing to scale to {replicas} replicas: a control plane keeps at least one machine"
            ),
        };
    }
    let live: Vec<_> = cp.machines.iter().filter(|m| !m.deleting).collect();
    if let Some(step) = release_step(cp, bootstrapped) {
        return step;
    }
    if let Some(step) = super::remediation::step(cp, bootstrapped) {
        return step;
    }
    if !bootstrapped {
        // One machine first; etcd is bootstrapped on it before any other joins.
        return match live
            .iter()
            .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))
        {
            None if cp.machines.is_empty() => match version_check(desired, cp) {
                Ok(()) => Step::CreateMachine {
                    failure_domain: cp.next_failure_domain(),
                    limit: 1,
                },
                Err(blocked) => blocked.into(),
            },
            None => Step::Wait {
                reason: WaitReason::MachineDeleting,
                message: "waiting for deleting machines to go before creating the first one".into(),
            },
            Some(first) => Step::BootstrapEtcd {
                machine: first.name.clone(),
            },
        };
    }
    // The etcd membership audit comes before any scaling, as in KubeadmControlPlane.
    if let Some(orphan) = cp
        .orphan_members()
        .into_iter()
        .find(|e| cp.can_remove_member(e.id))
    {
        return Step::RemoveOrphanMember {
            id: orphan.id,
            name: orphan.name.clone(),
        };
    }
    rollout::step(desired, cp)
}

/// The first machine being deleted that still holds our hook, and what its release takes: its
/// member leaves when quorum survives that; a machine whose member is gone, or whose member is
/// the last voter (the cluster goes with it), is released at once, as is any machine before
/// etcd exists. Unknown membership waits.
fn release_step(cp: &ControlPlane, bootstrapped: bool) -> Option<Step> {
    let m = cp.machines.iter().find(|m| m.deleting && m.cleanup_hook)?;
    let release = |member| Step::ReleaseMachine {
        machine: m.name.clone(),
        member,
    };
    if !bootstrapped {
        return Some(release(None));
    }
    let Some(members) = &cp.etcd else {
        return Some(Step::Wait {
            reason: WaitReason::EtcdUnknown,
            message: format!(
                "machine {} is being deleted; waiting for the etcd member list to remove its member first",
                m.name
            ),
        });
    };
    let Some(member) = members.iter().find(|e| e.name == m.hostname) else {
        return Some(release(None));
    };
    let last_voter = !member.learner && members.iter().all(|e| e.id == member.id || e.learner);
    Some(if last_voter {
        release(None)
    } else if cp.can_remove_member(member.id) {
        release(Some(member.id))
    } else {
        Step::Wait {
            reason: WaitReason::EtcdQuorumAtRisk,
            message: format!(
                "machine {} is being deleted, but removing its etcd member {:x} now would lose quorum; waiting for the other members to be healthy",
                m.name, member.id
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::scope::{EtcdMember, FailureDomain, MachineView};
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    pub(crate) fn desired(replicas: i32) -> Desired {
        Desired {
            replicas,
            version: "v1.34.1".into(),
            talos_version: None,
            talos_upgrade: None,
            strategy: rollout::Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 0,
            },
            config_digest: None,
            reboot_in_place: false,
        }
    }

    fn machine(i: usize, fd: &str) -> MachineView {
        let created =
            Timestamp::from_second(1_800_000_000 + i as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        MachineView {
            failure_domain: Some(fd.into()),
            ..MachineView::test(&format!("cp-{i}"), created)
        }
    }

    /// Apply a step to the model as the world would once it completes.
    fn apply(cp: &mut ControlPlane, bootstrapped: &mut bool, step: &Step) {
        let members = cp.etcd.get_or_insert_with(Vec::new);
        match step {
            Step::CreateMachine { failure_domain, .. } => {
                let i = cp
                    .machines
                    .iter()
                    .map(|m| m.name.clone())
                    .max()
                    .map_or(0, |n| {
                        n.trim_start_matches("cp-").parse::<usize>().unwrap_or(0) + 1
                    });
                let m = machine(i, failure_domain.as_deref().unwrap_or(""));
                if *bootstrapped {
                    members.push(EtcdMember {
                        id: i as u64 + 100,
                        name: m.hostname.clone(),
                        healthy: true,
                        learner: false,
                    });
                }
                cp.machines.push(m);
            }
            Step::BootstrapEtcd { machine } => {
                *bootstrapped = true;
                members.push(EtcdMember {
                    id: 100,
                    name: machine.clone(),
                    healthy: true,
                    learner: false,
                });
            }
            Step::RemoveOrphanMember { id, .. } => members.retain(|e| e.id != *id),
            Step::ScaleDown { machine } | Step::Remediate { machine, .. } => {
                for m in cp.machines.iter_mut().filter(|m| &m.name == machine) {
                    m.deleting = true;
                }
            }
            Step::ReleaseMachine { machine, member } => {
                if let Some(id) = member {
                    members.retain(|e| e.id != *id);
                }
                // Cluster API finishes the deletion once the hook is gone.
                cp.machines.retain(|m| &m.name != machine);
            }
            _ => {}
        }
    }

    fn converge(cp: &mut ControlPlane, bootstrapped: &mut bool, replicas: i32) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..20 {
            let step = next_step(&desired(replicas), *bootstrapped, cp);
            if matches!(step, Step::Steady | Step::Wait { .. }) {
                steps.push(step);
                break;
            }
            apply(cp, bootstrapped, &step);
            steps.push(step);
        }
        steps
    }

    fn three_zones() -> ControlPlane {
        ControlPlane {
            failure_domains: ["a", "b", "c"]
                .iter()
                .map(|n| FailureDomain {
                    name: (*n).into(),
                    control_plane: true,
                })
                .collect(),
            ..ControlPlane::default()
        }
    }

    #[test]
    fn a_new_control_plane_bootstraps_once_then_spreads_over_zones() {
        let mut cp = three_zones();
        let mut bootstrapped = false;
        let steps = converge(&mut cp, &mut bootstrapped, 3);
        assert_eq!(
            steps,
            [
                Step::CreateMachine {
                    failure_domain: Some("a".into()),
                    limit: 1
                },
                Step::BootstrapEtcd {
                    machine: "cp-0".into()
                },
                Step::CreateMachine {
                    failure_domain: Some("b".into()),
                    limit: 3
                },
                Step::CreateMachine {
                    failure_domain: Some("c".into()),
                    limit: 3
                },
                Step::Steady,
            ]
        );
        assert_eq!(cp.etcd.as_ref().map(Vec::len), Some(3));
    }

    #[test]
    fn scale_down_to_one_leaves_no_orphan_members_and_never_goes_to_zero() {
        let mut cp = three_zones();
        let mut bootstrapped = false;
        converge(&mut cp, &mut bootstrapped, 3);
        let steps = converge(&mut cp, &mut bootstrapped, 1);
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, Step::ScaleDown { .. }))
                .count(),
            2
        );
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(
                    s,
                    Step::ReleaseMachine {
                        member: Some(_),
                        ..
                    }
                ))
                .count(),
            2,
            "each removed machine's member leaves etcd before the machine goes: {steps:?}"
        );
        assert_eq!(cp.machines.len(), 1);
        assert_eq!(cp.etcd.as_ref().map(Vec::len), Some(1));
        assert!(cp.orphan_members().is_empty());
        let refused = next_step(&desired(0), bootstrapped, &cp);
        assert!(
            matches!(&refused, Step::Wait { reason: WaitReason::InvalidReplicas, message } if message.contains("at least one")),
            "{refused:?}"
        );
    }

    #[test]
    fn an_orphan_member_is_removed_before_scaling_and_a_sick_cluster_is_not_touched() {
        let mut cp = three_zones();
        let mut bootstrapped = false;
        converge(&mut cp, &mut bootstrapped, 3);
        // A machine vanished without leaving etcd (CACPPT #237: a crash during a graceful leave).
        cp.machines.retain(|m| m.name != "cp-2");
        assert_eq!(
            next_step(&desired(3), bootstrapped, &cp),
            Step::RemoveOrphanMember {
                id: 102,
                name: "cp-2".into()
            }
        );
        apply(
            &mut cp,
            &mut bootstrapped,
            &Step::RemoveOrphanMember {
                id: 102,
                name: "cp-2".into(),
            },
        );
        assert!(matches!(
            next_step(&desired(3), bootstrapped, &cp),
            Step::CreateMachine { .. }
        ));

        // With one of three members unhealthy, scaling waits and says which member.
        let mut sick = three_zones();
        let mut b = false;
        converge(&mut sick, &mut b, 3);
        if let Some(members) = &mut sick.etcd {
            members[1].healthy = false;
        }
        match next_step(&desired(1), b, &sick) {
            Step::Wait { reason, message } => {
                assert_eq!(reason, WaitReason::EtcdMemberUnhealthy);
                assert!(message.contains("cp-1"), "{message}");
            }
            other => panic!("expected a wait, got {other:?}"),
        }
    }
}
