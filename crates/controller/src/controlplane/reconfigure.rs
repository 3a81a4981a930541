//! In-place configuration changes, decided without I/O. A controlPlaneConfig change is first
//! tried live on one node at a time (Talos's ApplyConfiguration in TRY mode, which Talos rolls
//! back by itself after [`TRY_TIMEOUT`]), then confirmed (NO_REBOOT) once that node is healthy
//! again. A change Talos can only apply with a reboot is refused by the TRY; the machines are
//! then replaced instead, as for any other change. What a change needs to survive a restart of
//! the operator lives on its Machine ([`MARKER`]).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::plan::Step;
use super::scope::{ControlPlane, MachineView};

/// The Machine annotation of a configuration change tried on its node: a JSON [`Marker`].
/// Removing it from a machine whose change failed asks for another attempt.
pub const MARKER: &str = "controlplane.cluster.x-k8s.io/talos-config-apply";

/// How long Talos keeps a tried configuration before it rolls it back by itself: the node must
/// be healthy again within it for the change to be confirmed.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(120);

/// A configuration change of one node, as recorded on its Machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// The digest of the controlPlaneConfig it applies.
    pub digest: String,
    /// When it was asked for.
    pub at: Timestamp,
    /// The node took it in TRY mode: it runs it, and rolls it back unless confirmed.
    #[serde(default)]
    pub tried: bool,
    /// Talos can apply it only with a reboot (its answer, kept): the machine is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_reboot: Option<String>,
    /// Why it failed, once it did: nothing else is changed in place until the marker is
    /// removed or controlPlaneConfig changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl super::Annotation for Marker {}

/// Whether any machine (of those `markers` are recorded on) learned from Talos that the
/// change to `digest` needs a reboot: then every machine still on another configuration is
/// replaced.
pub fn needs_reboot<'a>(markers: impl IntoIterator<Item = &'a Marker>, digest: &str) -> bool {
    markers
        .into_iter()
        .any(|r| r.digest == digest && r.needs_reboot.is_some())
}

/// The next step of an in-place configuration change towards `digest`, or `None` when every
/// machine runs it (or a Talos upgrade is under way, which goes first). Called once no machine
/// needs replacing.
pub fn step(digest: &str, cp: &ControlPlane) -> Option<Step> {
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
    for m in &live {
        let Some(r) = &m.reconfigure else { continue };
        if r.needs_reboot.is_some() {
            continue;
        }
        if let Some(why) = &r.failed {
            return Some(Step::Wait {
                reason: "TalosConfigChangeFailed",
                message: format!(
                    "the configuration change of machine {} failed: {why}; nothing else is changed in place until it is fixed: remove the annotation {MARKER} from machine {} to try again, or change controlPlaneConfig",
                    m.name, m.name
                ),
            });
        }
        if !r.tried {
            return Some(Step::TryConfig {
                machine: m.name.clone(),
            });
        }
        if cp.available(m) {
            return Some(Step::ConfirmConfig {
                machine: m.name.clone(),
            });
        }
        let deadline = r.at + TRY_TIMEOUT;
        if cp.now > deadline {
            return Some(Step::ConfigChangeFailed {
                machine: m.name.clone(),
                why: format!(
                    "the node was not healthy within {}s of taking it, and Talos rolled it back",
                    TRY_TIMEOUT.as_secs()
                ),
            });
        }
        return Some(Step::Wait {
            reason: "TalosConfigChangeInProgress",
            message: format!(
                "waiting for machine {} to be healthy on its new configuration ({}) before it is confirmed",
                m.name,
                cp.unavailable_because(m).unwrap_or_default()
            ),
        });
    }
    let pending: Vec<&&MachineView> = live
        .iter()
        .filter(|m| {
            m.reconfigure.is_none() && m.config_digest.as_ref().is_some_and(|d| d != digest)
        })
        .collect();
    let first = pending
        .iter()
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))?;
    let done = live.len() - pending.len();
    let progress = format!("{done} of {} machines on the new configuration", live.len());
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

#[cfg(test)]
mod tests {
    use super::*;

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
            failed: None,
        }
    }

    #[test]
    fn one_machine_at_a_time_oldest_first_tried_then_confirmed_once_healthy() {
        let mut c = cp(3);
        assert_eq!(step("old", &c), None, "nothing to change");
        assert_eq!(
            step("new", &c),
            Some(Step::TryConfig {
                machine: "m0".into()
            })
        );
        // Recorded but not known to have reached the node (a restart in between): tried again.
        c.machines[0].reconfigure = Some(marker(false));
        assert_eq!(
            step("new", &c),
            Some(Step::TryConfig {
                machine: "m0".into()
            })
        );
        // Tried, and the node is not healthy yet: wait, and say why.
        c.machines[0].reconfigure = Some(marker(true));
        c.machines[0].components_healthy = false;
        match step("new", &c) {
            Some(Step::Wait { reason, message }) => {
                assert_eq!(reason, "TalosConfigChangeInProgress");
                assert!(message.contains("etcd, kubelet or apid"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Healthy: confirmed.
        c.machines[0].components_healthy = true;
        assert_eq!(
            step("new", &c),
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
            step("new", &c),
            Some(Step::Wait { reason: "WaitingForHealthyNodes", message })
                if message.contains("1 of 3 machines") && message.contains("m2")
        ));
        c.machines[2].node_not_ready = None;
        assert_eq!(
            step("new", &c),
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
            step("new", &c),
            Some(Step::ConfigChangeFailed { machine, .. }) if machine == "m1"
        ));
        c.machines[1].reconfigure = Some(Marker {
            failed: Some("rolled back".into()),
            ..marker(true)
        });
        assert!(matches!(
            step("new", &c),
            Some(Step::Wait { reason: "TalosConfigChangeFailed", message }) if message.contains(MARKER)
        ));
        // The spec changed again: the old record is forgotten.
        assert_eq!(
            step("newer", &c),
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
        assert_eq!(step("new", &c), None);
    }
}
