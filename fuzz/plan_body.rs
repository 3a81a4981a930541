// The rollout_plan fuzz target's body: compiled into the cargo-fuzz target
// (fuzz/fuzz_targets/rollout_plan.rs) and into the controller's corpus replay test
// (crates/controller/tests/fuzz_corpus.rs). Any bytes become a spec and an observed control
// plane (machines in every state, etcd members healthy, unhealthy, learners or orphans, or not
// known at all); the planner's next step must not panic, and must keep etcd quorum and the
// machine count by rules computed here, independently of the planner's own helpers.

use std::time::Duration;

use controller::controlplane::plan::{Step, next_step};
use controller::controlplane::rollout::{Desired, Strategy};
use controller::controlplane::scope::{ControlPlane, EtcdMember, FailureDomain, MachineView};
use controller::controlplane::upgrade::Target;
use k8s_openapi::jiff::Timestamp;

/// Reads the input a byte at a time; past its end, every byte is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
}

/// The spec, whether etcd was bootstrapped, and the observed control plane `data` describes.
pub fn world(data: &[u8]) -> (Desired, bool, ControlPlane) {
    let mut input = Input(data);
    let replicas = 1 + i32::from(input.below(7));
    let strategy = match input.byte() {
        b if b % 5 == 0 => Strategy::OnDelete,
        _ => Strategy::RollingUpdate {
            max_surge: usize::from(input.below(4)),
            max_unavailable: usize::from(input.below(4)),
        },
    };
    let bootstrapped = input.below(4) != 0;
    let talos_upgrade = input.flag().then(|| Target {
        image: "ghcr.io/siderolabs/installer:v1.13.1".into(),
        version: "v1.13.1".into(),
        max_parallel: 1 + usize::from(input.below(3)),
        timeout: Duration::from_secs(600),
    });
    let desired = Desired {
        replicas,
        version: "v1.34.1".into(),
        talos_version: None,
        talos_upgrade,
        strategy,
        config_digest: Some("c0".into()),
        reboot_in_place: input.flag(),
    };
    let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let domains = usize::from(input.below(4));
    let failure_domains: Vec<FailureDomain> = ["a", "b", "c"]
        .iter()
        .take(domains)
        .map(|name| FailureDomain {
            name: (*name).into(),
            control_plane: true,
        })
        .collect();
    let mut machines = Vec::new();
    let mut members = Vec::new();
    for i in 0..input.below(9) {
        let (states, more) = (input.byte(), input.byte());
        let name = format!("m{i}");
        // Ages from 0 to 2,550 s: some members are still settling (younger than 120 s).
        let age = i64::from(input.byte()) * 10;
        let created = Timestamp::from_second(1_800_000_000 - age).unwrap_or(now);
        let bit = |b: u8, n: u8| b >> n & 1 == 1;
        machines.push(MachineView {
            name: name.clone(),
            hostname: name.clone(),
            created,
            failure_domain: (domains > 0)
                .then(|| ["a", "b", "c"][usize::from(more >> 4) % domains].into()),
            deleting: bit(states, 0) && bit(states, 1),
            delete_annotated: bit(states, 2) && bit(more, 3),
            version: Some(if bit(states, 3) { "v1.33.0" } else { "v1.34.1" }.into()),
            outdated: bit(states, 3).then(|| "Kubernetes v1.33.0 → v1.34.1".into()),
            components_healthy: !bit(states, 4),
            node_problem: bit(states, 4).then(|| "kubelet not healthy".into()),
            cleanup_hook: !bit(more, 0),
            unhealthy: bit(states, 5) && bit(states, 6),
            remediation_for: None,
            talos_version: Some(if bit(more, 1) { "v1.13.1" } else { "v1.13.0" }.into()),
            reachable: !bit(states, 7),
            upgrade: None,
            config_digest: Some(if bit(more, 2) { "c1" } else { "c0" }.into()),
            reconfigure: None,
            config_pending: bit(more, 2),
            talos_pending: (desired.talos_upgrade.is_some() && !bit(more, 1))
                .then(|| "Talos v1.13.0 → v1.13.1".into()),
            node_not_ready: None,
        });
        // No member, a healthy voter (twice as likely), an unhealthy voter, or a learner.
        match input.below(5) {
            0 => {}
            3 => members.push(member(i, &name, false, false)),
            4 => members.push(member(i, &name, input.flag(), true)),
            _ => members.push(member(i, &name, true, false)),
        }
    }
    for j in 0..input.below(3) {
        let id = 100 + u64::from(j);
        let (healthy, learner) = (input.flag(), input.flag());
        members.push(EtcdMember {
            id,
            name: format!("gone{j}"),
            healthy,
            learner,
        });
    }
    let etcd = (input.below(8) != 0).then_some(members);
    // As the reconciler decides it: etcd that has members was bootstrapped, whatever the status.
    let bootstrapped = bootstrapped || etcd.as_ref().is_some_and(|m| !m.is_empty());
    let cp = ControlPlane {
        failure_domains,
        machines,
        etcd,
        remediation: Default::default(),
        now,
    };
    (desired, bootstrapped, cp)
}

fn member(i: u8, name: &str, healthy: bool, learner: bool) -> EtcdMember {
    EtcdMember {
        id: u64::from(i) + 1,
        name: name.into(),
        healthy,
        learner,
    }
}

/// Healthy voters among the members left when `gone` leave (or go down, with `counted`: the
/// voters that still count for quorum), and the quorum those voters need.
fn healthy_and_quorum(members: &[EtcdMember], gone: Option<u64>, counted: bool) -> (usize, usize) {
    let voters: Vec<&EtcdMember> = members
        .iter()
        .filter(|e| !e.learner && (counted || Some(e.id) != gone))
        .collect();
    let healthy = voters
        .iter()
        .filter(|e| e.healthy && Some(e.id) != gone)
        .count();
    (healthy, voters.len() / 2 + 1)
}

/// Why `step` breaks a rule in this world; `None` when it keeps them all.
pub fn broken_rule(
    desired: &Desired,
    bootstrapped: bool,
    cp: &ControlPlane,
    step: &Step,
) -> Option<String> {
    let machine = |name: &str| cp.machines.iter().find(|m| m.name == name);
    let members = cp.etcd.as_deref().unwrap_or_default();
    let member_of = |name: &str| members.iter().find(|e| e.name == name);
    let voter = |id: u64| members.iter().any(|e| e.id == id && !e.learner);
    // A voter leaving etcd for good: the voters left keep a healthy quorum.
    let leaves_quorum = |id: u64| {
        let (healthy, quorum) = healthy_and_quorum(members, Some(id), false);
        (voter(id) && healthy < quorum).then(|| {
            format!(
                "removing member {id} leaves {healthy} healthy voters, fewer than quorum {quorum}"
            )
        })
    };
    // A voter going down for a while (a reboot): the others keep a healthy quorum of them all.
    // The one designed exception: with one or two voters any reboot loses quorum while it lasts;
    // such control planes are upgraded one node at a time, and RollingOut says so.
    let down_quorum = |name: &str| {
        let id = member_of(name)?.id;
        let (healthy, quorum) = healthy_and_quorum(members, Some(id), true);
        let few_voters = members.iter().filter(|e| !e.learner).count() <= 2;
        (voter(id) && !few_voters && healthy < quorum).then(|| {
            format!("rebooting {name} leaves {healthy} healthy voters, fewer than quorum {quorum}")
        })
    };
    let surge = match desired.strategy {
        Strategy::RollingUpdate { max_surge, .. } => max_surge.max(1),
        Strategy::OnDelete => 1,
    };
    let replicas = usize::try_from(desired.replicas).unwrap_or(0);
    match step {
        Step::CreateMachine { limit, .. } => {
            if cp.machines.len() >= *limit {
                return Some(format!(
                    "a machine created with {} of limit {limit}",
                    cp.machines.len()
                ));
            }
            (*limit > replicas + surge)
                .then(|| format!("limit {limit} above {replicas} replicas + {surge} surge"))
        }
        Step::BootstrapEtcd { machine: m } => {
            if bootstrapped || cp.etcd.as_ref().is_some_and(|e| !e.is_empty()) {
                return Some(format!("etcd bootstrapped again on {m}"));
            }
            machine(m)
                .is_none()
                .then(|| format!("bootstrap on unknown machine {m}"))
        }
        Step::RemoveOrphanMember { id, .. } => {
            if let Some(e) = members.iter().find(|e| e.id == *id) {
                if cp.machines.iter().any(|m| m.hostname == e.name) {
                    return Some(format!("member {id} of a machine removed as an orphan"));
                }
            } else {
                return Some(format!("unknown member {id} removed"));
            }
            leaves_quorum(*id)
        }
        Step::ReleaseMachine { machine: m, member } => {
            if !machine(m).is_some_and(|m| m.deleting) {
                return Some(format!("{m} released while not being deleted"));
            }
            let id = (*member)?;
            if member_of(m).map(|e| e.id) != Some(id) {
                return Some(format!("{m} released with another machine's member {id}"));
            }
            leaves_quorum(id)
        }
        Step::ScaleDown { machine: m } => {
            if machine(m).is_none_or(|m| m.deleting) {
                return Some(format!("{m} deleted twice, or unknown"));
            }
            // KubeadmControlPlane's preflight, the machine leaving exempt.
            cp.machines
                .iter()
                .filter(|o| !o.deleting && o.name != *m)
                .find(|o| {
                    !o.components_healthy
                        || !member_of(&o.hostname).is_some_and(|e| e.healthy && !e.learner)
                })
                .map(|o| format!("{m} deleted while {} is not a healthy member", o.name))
        }
        Step::Remediate { machine: m, .. } => {
            if !machine(m).is_some_and(|m| m.unhealthy && !m.deleting) {
                return Some(format!("{m} remediated without being marked unhealthy"));
            }
            member_of(m).and_then(|e| leaves_quorum(e.id))
        }
        Step::UpgradeTalos { machine: m } | Step::RebootConfig { machine: m } => down_quorum(m),
        _ => None,
    }
}

/// The planner's step in the world `data` describes, checked against every rule.
pub fn rollout_plan(data: &[u8]) -> Step {
    let (desired, bootstrapped, cp) = world(data);
    let step = next_step(&desired, bootstrapped, &cp);
    if let Some(why) = broken_rule(&desired, bootstrapped, &cp, &step) {
        panic!("{why}: {step:?} for {desired:?}, bootstrapped {bootstrapped}, {cp:#?}");
    }
    step
}
