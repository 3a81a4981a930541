//! Remediation of control-plane machines a MachineHealthCheck marked unhealthy, with
//! KubeadmControlPlane's safety (`remediation.go`): one machine at a time, only with at least two
//! machines (or before initialization), only when etcd keeps quorum without the machine, and
//! within the TalosControlPlane's retry limits. Decided without I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::scope::{ControlPlane, MachineView};
use super::step::Step;
use super::wait_reason::WaitReason;

/// On the TalosControlPlane while a remediated machine awaits its replacement (KCP's name).
pub const IN_PROGRESS: &str = "controlplane.cluster.x-k8s.io/remediation-in-progress";
/// On the replacement: the remediation it answers (KCP's name).
pub use api::capi::annotations::REMEDIATION_FOR as FOR;

pub use super::records::Remediation as Record;

pub use super::scope::Policy;

fn wait(reason: WaitReason, message: String) -> Option<Step> {
    Some(Step::Wait { reason, message })
}

/// The remediation step, if a machine is marked unhealthy: remediate it, or why not now.
pub fn step(cp: &ControlPlane, initialized: bool) -> Option<Step> {
    let unhealthy: Vec<&MachineView> = cp
        .machines
        .iter()
        .filter(|m| m.unhealthy && !m.deleting)
        .collect();
    // Sick components first (their member is the one etcd can least rely on), then the oldest.
    let target = unhealthy.iter().min_by(|a, b| {
        (a.components_healthy, a.created, &a.name).cmp(&(b.components_healthy, b.created, &b.name))
    })?;
    if let Some(d) = cp.machines.iter().find(|m| m.deleting) {
        return wait(
            WaitReason::RemediationWaiting,
            format!(
                "machine {} is unhealthy; waiting for machine {} to finish deleting first (one machine at a time)",
                target.name, d.name
            ),
        );
    }
    let retry_count = match retry(cp, target) {
        Ok(count) => count,
        Err(wait) => return Some(wait),
    };
    if initialized && let Some(wait) = keeps_quorum(cp, target) {
        return Some(wait);
    }
    Some(Step::Remediate {
        machine: target.name.clone(),
        retry_count,
    })
}

/// The retry count of remediating `target`: 0 for a first remediation, one more for a
/// replacement that failed before proving itself healthy; or why not now.
fn retry(cp: &ControlPlane, target: &MachineView) -> Result<i32, Step> {
    let policy = &cp.remediation;
    let Some(r) = target
        .remediation_for
        .as_ref()
        .filter(|r| cp.now < r.timestamp.0 + policy.min_healthy_period)
    else {
        return Ok(0);
    };
    let count = r.retry_count + 1;
    if let Some(max) = policy.max_retry.filter(|max| count > *max) {
        return Err(Step::Wait {
            reason: WaitReason::RemediationRetriesExhausted,
            message: format!(
                "machine {} replaced machine {}, which was remediated {} time(s) in a row; maxRetry is {max}, so it is not remediated again: fix the cause, then delete the machine",
                target.name,
                r.machine,
                r.retry_count + 1
            ),
        });
    }
    let next = r.timestamp.0 + policy.retry_period;
    if cp.now < next {
        return Err(Step::Wait {
            reason: WaitReason::RemediationRetryPeriod,
            message: format!(
                "machine {} is unhealthy; the last remediation was at {}, and retryPeriodSeconds allows the next at {next}",
                target.name, r.timestamp.0
            ),
        });
    }
    Ok(count)
}

/// Why removing `target` would break an initialized cluster, if it would: it is the only
/// machine, the member list is unknown, or its member's removal would lose quorum.
fn keeps_quorum(cp: &ControlPlane, target: &MachineView) -> Option<Step> {
    let live = cp.machines.iter().filter(|m| !m.deleting).count();
    if live < 2 {
        return wait(
            WaitReason::RemediationBlocked,
            format!(
                "machine {} is unhealthy, but it is the only control-plane machine: remediating it would destroy the cluster; scale up first or replace it by hand",
                target.name
            ),
        );
    }
    let Some(members) = &cp.etcd else {
        return wait(
            WaitReason::EtcdUnknown,
            format!(
                "machine {} is unhealthy; waiting for the etcd member list to check that removing it keeps quorum",
                target.name
            ),
        );
    };
    let member = members.iter().find(|e| e.name == target.hostname)?;
    if cp.can_remove_member(member.id) {
        return None;
    }
    wait(
        WaitReason::EtcdQuorumAtRisk,
        format!(
            "machine {} is unhealthy, but removing its etcd member would lose quorum; waiting for the other members to be healthy",
            target.name
        ),
    )
}

/// When the remediation step is due: `now`.
pub fn record(machine: &str, retry_count: i32, now: Timestamp) -> Record {
    Record {
        machine: machine.to_owned(),
        timestamp: Time(now),
        retry_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::Annotation;
    use api::controlplane::v1alpha3::RemediationStrategy;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn cp(n: usize) -> ControlPlane {
        let machines: Vec<MachineView> = (0..n)
            .map(|i| MachineView::test(&format!("m{i}"), at(i as i64)))
            .collect();
        ControlPlane {
            now: at(10_000),
            ..ControlPlane::test(machines)
        }
    }

    #[test]
    fn one_unhealthy_machine_of_three_is_remediated_and_healthy_ones_never() {
        let mut c = cp(3);
        assert_eq!(step(&c, true), None);
        c.machines[1].unhealthy = true;
        assert_eq!(
            step(&c, true),
            Some(Step::Remediate {
                machine: "m1".into(),
                retry_count: 0
            })
        );
        // Not while another machine is deleting.
        c.machines[2].deleting = true;
        assert!(matches!(
            step(&c, true),
            Some(Step::Wait {
                reason: WaitReason::RemediationWaiting,
                ..
            })
        ));
    }

    #[test]
    fn never_the_last_machine_nor_past_quorum() {
        let mut one = cp(1);
        one.machines[0].unhealthy = true;
        assert!(matches!(
            step(&one, true),
            Some(Step::Wait {
                reason: WaitReason::RemediationBlocked,
                ..
            })
        ));
        // Before initialization the first machine may be replaced.
        assert!(matches!(step(&one, false), Some(Step::Remediate { .. })));

        let mut c = cp(3);
        c.machines[0].unhealthy = true;
        if let Some(members) = &mut c.etcd {
            members[1].healthy = false;
        }
        assert!(matches!(
            step(&c, true),
            Some(Step::Wait {
                reason: WaitReason::EtcdQuorumAtRisk,
                ..
            })
        ));
    }

    #[test]
    fn retries_are_counted_limited_and_spaced() {
        let mut c = cp(3);
        c.remediation = Policy::of(Some(&RemediationStrategy {
            max_retry: Some(1),
            retry_period_seconds: Some(60),
            min_healthy_period_seconds: Some(600),
        }));
        c.machines[2].unhealthy = true;
        // m2 replaced m0 30 s ago: a retry, but inside the retry period.
        c.machines[2].remediation_for = Some(record("m0", 0, at(10_000 - 30)));
        assert!(matches!(
            step(&c, true),
            Some(Step::Wait {
                reason: WaitReason::RemediationRetryPeriod,
                ..
            })
        ));
        c.machines[2].remediation_for = Some(record("m0", 0, at(10_000 - 120)));
        assert_eq!(
            step(&c, true),
            Some(Step::Remediate {
                machine: "m2".into(),
                retry_count: 1
            })
        );
        // The second retry exceeds maxRetry 1.
        c.machines[2].remediation_for = Some(record("m0", 1, at(10_000 - 120)));
        match step(&c, true) {
            Some(Step::Wait {
                reason: WaitReason::RemediationRetriesExhausted,
                message,
            }) => {
                assert!(message.contains("maxRetry is 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Healthy for longer than minHealthyPeriod: a new problem, counted from zero.
        c.machines[2].remediation_for = Some(record("m0", 5, at(10_000 - 601)));
        assert_eq!(
            step(&c, true),
            Some(Step::Remediate {
                machine: "m2".into(),
                retry_count: 0
            })
        );
    }

    #[test]
    fn records_survive_their_annotation() {
        let r = record("m0", 2, at(5));
        assert_eq!(Record::parse(&r.to_annotation()), Some(r));
        assert_eq!(Record::parse("not json"), None);
    }
}
