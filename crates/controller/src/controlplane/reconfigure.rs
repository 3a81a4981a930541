//! In-place configuration changes, decided without I/O. A controlPlaneConfig change is first
//! tried live on one node at a time (Talos's ApplyConfiguration in TRY mode, which Talos rolls
//! back by itself after [`TRY_TIMEOUT`]), then confirmed (NO_REBOOT) once that node is healthy
//! again. A change Talos can only apply with a reboot is refused by the TRY; the machines are
//! then replaced instead, as for any other change, or, with rolloutStrategy configReboot
//! InPlace, the node is asked to apply it with a reboot, one at a time while every other node
//! is healthy, and it is confirmed once the node was seen down and is back healthy. What a
//! change needs to survive a restart of the operator lives on its Machine ([`MARKER`]).

use std::time::Duration;

use super::scope::{ControlPlane, MachineView};
use super::step::Step;
use super::wait_reason::WaitReason;

/// How long Talos keeps a tried configuration before it rolls it back by itself: the node must
/// be healthy again within it for the change to be confirmed.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a node may take from being asked to reboot into its new configuration until it is
/// back healthy, before the change counts as failed.
pub const REBOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a node asked to reboot may still answer before it is asked again.
pub const REBOOT_ASKED_AGAIN: Duration = Duration::from_secs(60);

pub use super::records::{CONFIG_CHANGE as MARKER, ConfigChange as Marker};

/// The next step for machine `m` under way with change `r`: halted on a failure, rebooted
/// into it, tried, confirmed, failed on time, or waited for.
fn follow(
    m: &MachineView,
    r: &Marker,
    cp: &ControlPlane,
    live: &[&MachineView],
    progress: &str,
) -> Step {
    let machine = m.name.clone();
    if let Some(why) = &r.failed {
        return Step::Wait {
            reason: WaitReason::TalosConfigChangeFailed,
            message: format!(
                "the configuration change of machine {} failed: {why}; nothing else is changed in place until it is fixed: remove the annotation {MARKER} from machine {} to try again, or change controlPlaneConfig",
                m.name, m.name
            ),
        };
    }
    if r.needs_reboot.is_some() {
        return reboot_step(m, r, cp, live, progress);
    }
    if !r.tried {
        return Step::TryConfig { machine };
    }
    if cp.available(m) {
        return Step::ConfirmConfig { machine };
    }
    if cp.now > r.at + TRY_TIMEOUT {
        return Step::ConfigChangeFailed {
            machine,
            why: format!(
                "the node was not healthy within {}s of taking it, and Talos rolled it back",
                TRY_TIMEOUT.as_secs()
            ),
        };
    }
    Step::Wait {
        reason: WaitReason::TalosConfigChangeInProgress,
        message: format!(
            "waiting for machine {} to be healthy on its new configuration ({}) before it is confirmed",
            m.name,
            cp.unavailable_because(m).unwrap_or_default()
        ),
    }
}

/// Whether any machine (of those `markers` are recorded on) learned from Talos that the
/// change to `digest` needs a reboot: then every machine still on another configuration is
/// replaced.
pub fn needs_reboot<'a>(markers: impl IntoIterator<Item = &'a Marker>, digest: &str) -> bool {
    markers
        .into_iter()
        .any(|r| r.digest == digest && r.needs_reboot.is_some())
}

/// Whether a change that needs a reboot reboots the nodes in place: when asked for
/// (configReboot InPlace) and etcd keeps quorum with one node down, that is with 3 machines or
/// more. One or two are replaced instead, since a surge keeps quorum where a reboot would not.
pub fn reboots_in_place(asked: bool, machines: usize) -> bool {
    asked && machines >= 3
}

/// The next step of an in-place configuration change towards `digest`, or `None` when every
/// machine runs it (or a Talos upgrade is under way, which goes first). Called once no machine
/// needs replacing.
pub fn step(digest: &str, reboot_in_place: bool, cp: &ControlPlane) -> Option<Step> {
    let live: Vec<&MachineView> = cp.machines.iter().filter(|m| !m.deleting).collect();
    if live.iter().any(|m| m.upgrade.is_some()) {
        return None;
    }
    // Markers of another configuration (the spec changed again): forgotten.
    if let Some(m) = live
        .iter()
        .find(|m| m.reconfigure.as_ref().is_some_and(|r| r.digest != digest))
    {
        return Some(Step::ForgetConfigChange {
            machine: m.name.clone(),
        });
    }
    let pending: Vec<&&MachineView> = live
        .iter()
        .filter(|m| m.config_digest.as_ref().is_some_and(|d| d != digest))
        .collect();
    let progress = format!(
        "{} of {} machines on the new configuration",
        live.len() - pending.len(),
        live.len()
    );
    for m in &live {
        let Some(r) = &m.reconfigure else { continue };
        if r.needs_reboot.is_some() && !reboots_in_place(reboot_in_place, live.len()) {
            continue;
        }
        return Some(follow(m, r, cp, &live, &progress));
    }
    let first = pending
        .iter()
        .filter(|m| m.reconfigure.is_none())
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))?;
    if let Some(wait) = cp.in_place_blocked(
        live.iter().copied(),
        &progress,
        "no configuration is changed now",
    ) {
        return Some(wait);
    }
    Some(Step::TryConfig {
        machine: first.name.clone(),
    })
}

/// The next step of rebooting `m` into its new configuration (recorded in `r`).
fn reboot_step(
    m: &MachineView,
    r: &Marker,
    cp: &ControlPlane,
    live: &[&MachineView],
    progress: &str,
) -> Step {
    let machine = m.name.clone();
    if !r.rebooting {
        // Every other node healthy with a healthy voting member, so etcd keeps quorum.
        let others = live.iter().copied().filter(|o| o.name != m.name);
        return cp
            .in_place_blocked(others, progress, "no node reboots now")
            .unwrap_or(Step::RebootConfig { machine });
    }
    if !r.down {
        if !m.reachable {
            return Step::ConfigRebootSeenDown { machine };
        }
        // Still up well after it was asked: the request never arrived (its reply was lost
        // with it), so it is asked again; a node that got it reboots within seconds.
        if cp.now > r.at + REBOOT_ASKED_AGAIN {
            return Step::RebootConfig { machine };
        }
    } else if cp.available(m) {
        return Step::ConfirmConfig { machine };
    }
    if cp.now > r.at + REBOOT_TIMEOUT {
        return Step::ConfigChangeFailed {
            machine,
            why: format!(
                "the node was not back healthy within {}s of being asked to reboot into it",
                REBOOT_TIMEOUT.as_secs()
            ),
        };
    }
    let state = if r.down {
        cp.unavailable_because(m).unwrap_or_default()
    } else {
        "not seen rebooting yet".into()
    };
    Step::Wait {
        reason: WaitReason::TalosConfigRebootInProgress,
        message: format!(
            "{progress}; waiting for machine {} to reboot into it and be healthy ({state})",
            m.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn cp(n: usize) -> ControlPlane {
        let machines = (0..n)
            .map(|i| MachineView {
                config_digest: Some("old".into()),
                ..MachineView::test(&format!("m{i}"), at(i as i64))
            })
            .collect();
        ControlPlane {
            now: at(1000),
            ..ControlPlane::test(machines)
        }
    }

    fn marker(tried: bool) -> Marker {
        Marker {
            digest: "new".into(),
            at: at(990),
            tried,
            needs_reboot: None,
            rebooting: false,
            down: false,
            failed: None,
        }
    }

    #[test]
    fn one_machine_at_a_time_oldest_first_tried_then_confirmed_once_healthy() {
        let mut c = cp(3);
        assert_eq!(step("old", false, &c), None, "nothing to change");
        assert_eq!(
            step("new", false, &c),
            Some(Step::TryConfig {
                machine: "m0".into()
            })
        );
        // Recorded but not known to have reached the node (a restart in between): tried again.
        c.machines[0].reconfigure = Some(marker(false));
        assert_eq!(
            step("new", false, &c),
            Some(Step::TryConfig {
                machine: "m0".into()
            })
        );
        // Tried, and the node is not healthy yet: wait, and say why.
        c.machines[0].reconfigure = Some(marker(true));
        c.machines[0].components_healthy = false;
        match step("new", false, &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, WaitReason::TalosConfigChangeInProgress);
                assert!(message.contains("etcd, kubelet or apid"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Healthy: confirmed.
        c.machines[0].components_healthy = true;
        assert_eq!(
            step("new", false, &c),
            Some(Step::ConfirmConfig {
                machine: "m0".into()
            })
        );
        // Confirmed (the machine records the new digest): the next one, only if all are
        // healthy.
        c.machines[0].reconfigure = None;
        c.machines[0].config_digest = Some("new".into());
        c.machines[2].node_not_ready = Some("Ready is False".into());
        assert!(matches!(
            step("new", false, &c),
            Some(Step::Wait { reason: WaitReason::WaitingForHealthyNodes, message })
                if message.contains("1 of 3 machines") && message.contains("m2")
        ));
        c.machines[2].node_not_ready = None;
        assert_eq!(
            step("new", false, &c),
            Some(Step::TryConfig {
                machine: "m1".into()
            })
        );
    }

    #[test]
    fn a_node_not_healthy_within_the_try_fails_and_halts_and_a_reboot_change_is_left_to_replacement()
     {
        let mut c = cp(3);
        c.machines[1].reconfigure = Some(marker(true));
        c.machines[1].components_healthy = false;
        c.now = at(990) + TRY_TIMEOUT + Duration::from_secs(1);
        assert!(matches!(
            step("new", false, &c),
            Some(Step::ConfigChangeFailed { machine, .. }) if machine == "m1"
        ));
        c.machines[1].reconfigure = Some(Marker {
            failed: Some("rolled back".into()),
            ..marker(true)
        });
        assert!(matches!(
            step("new", false, &c),
            Some(Step::Wait { reason: WaitReason::TalosConfigChangeFailed, message }) if message.contains(MARKER)
        ));
        // The spec changed again: the old record is forgotten.
        assert_eq!(
            step("newer", false, &c),
            Some(Step::ForgetConfigChange {
                machine: "m1".into()
            })
        );

        let mut c = cp(3);
        c.machines[0].reconfigure = Some(Marker {
            needs_reboot: Some("machine.env changed".into()),
            ..marker(false)
        });
        let markers = || c.machines.iter().filter_map(|m| m.reconfigure.as_ref());
        assert!(needs_reboot(markers(), "new"));
        assert!(!needs_reboot(markers(), "newer"));
        // A Talos upgrade under way goes first.
        c.machines[2].upgrade = Some(super::super::upgrade::Marker {
            version: "v1.13.1".into(),
            image: "i".into(),
            from: "v1.13.0".into(),
            at: at(0),
            issued: true,
            down: false,
            failed: None,
        });
        assert_eq!(step("new", false, &c), None);
    }

    #[test]
    fn with_config_reboot_in_place_a_change_needing_a_reboot_reboots_one_healthy_node_at_a_time() {
        let mut c = cp(3);
        let needs = |rebooting: bool, down: bool| Marker {
            needs_reboot: Some("machine.env changed".into()),
            rebooting,
            down,
            ..marker(false)
        };
        c.machines[0].reconfigure = Some(needs(false, false));
        // Without the opt-in the change is left to replacement; with it, the node reboots.
        assert_eq!(
            step("new", false, &c),
            Some(Step::TryConfig {
                machine: "m1".into()
            }),
            "m0 is left to the replacement path"
        );
        let reboot = Some(Step::RebootConfig {
            machine: "m0".into(),
        });
        assert_eq!(step("new", true, &c), reboot);
        // Two machines: a reboot would lose quorum, so they are left to replacement.
        let two = ControlPlane {
            machines: c.machines[..2].to_vec(),
            ..c.clone()
        };
        assert_eq!(
            step("new", true, &two),
            step("new", false, &two),
            "as without configReboot InPlace: m0 is left to replacement"
        );
        assert!(!reboots_in_place(true, 2) && reboots_in_place(true, 3));
        // Not while another node is unhealthy: quorum would hang on the rebooting one.
        c.machines[2].components_healthy = false;
        assert!(matches!(
            step("new", true, &c),
            Some(Step::Wait { reason: WaitReason::WaitingForHealthyNodes, message })
                if message.contains("m2") && message.contains("no node reboots now")
        ));
        c.machines[2].components_healthy = true;
        // Asked; still answering: not seen rebooting yet, so not confirmed on a guess.
        c.machines[0].reconfigure = Some(needs(true, false));
        assert!(matches!(
            step("new", true, &c),
            Some(Step::Wait { reason: WaitReason::TalosConfigRebootInProgress, message })
                if message.contains("not seen rebooting")
        ));
        // Still up a minute later: the request is taken as lost, and asked again.
        c.now = at(990) + REBOOT_ASKED_AGAIN + Duration::from_secs(1);
        assert_eq!(step("new", true, &c), reboot);
        c.now = at(1000);
        // Down: recorded.
        c.machines[0].reachable = false;
        c.machines[0].components_healthy = false;
        assert_eq!(
            step("new", true, &c),
            Some(Step::ConfigRebootSeenDown {
                machine: "m0".into()
            })
        );
        // Back, but not healthy yet: wait and say why; nothing else starts.
        c.machines[0].reconfigure = Some(needs(true, true));
        c.machines[0].reachable = true;
        assert!(matches!(
            step("new", true, &c),
            Some(Step::Wait { reason: WaitReason::TalosConfigRebootInProgress, message })
                if message.contains("m0") && message.contains("0 of 3")
        ));
        // Healthy: confirmed, which records the new digest.
        c.machines[0].components_healthy = true;
        assert_eq!(
            step("new", true, &c),
            Some(Step::ConfirmConfig {
                machine: "m0".into()
            })
        );
        // Not back within the timeout: failed, and in-place changes halt.
        c.machines[0].components_healthy = false;
        c.now = at(990) + REBOOT_TIMEOUT + Duration::from_secs(1);
        assert!(matches!(
            step("new", true, &c),
            Some(Step::ConfigChangeFailed { machine, why })
                if machine == "m0" && why.contains("600s")
        ));
    }
}
