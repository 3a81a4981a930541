//! Acting on the steps of an in-place configuration change ([`super::reconfigure`]): render
//! the machine's configuration as its TalosConfig would, try it on the node, confirm it, and
//! record each outcome on the Machine.

use api::bootstrap::v1alpha3::TalosConfigSpec;
use api::capi::{Cluster, Machine};
use api::controlplane::v1alpha3::TalosControlPlane;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::plan::Step;
use super::reconfigure::{MARKER, Marker, TRY_TIMEOUT};
use super::status::Report;
use super::wait_reason::WaitReason;
use super::{Act, Annotation, annotate_machine, machines, talos};
use crate::bootstrap::secrets::bundle_name;
use crate::{Context, Error, report};

/// The longest Talos answer kept on a Machine.
const MAX_WHY: usize = 1024;

/// Take a configuration-change `step`; returns the step as it ended up.
pub(super) async fn act(
    ctx: &Context,
    tcp: &TalosControlPlane,
    cluster: &str,
    machines: &[Machine],
    with: &Act<'_>,
    step: Step,
    report: &mut Report,
) -> Result<Step, Error> {
    let tcp_ref = tcp.object_ref(&());
    let event = |kind: EventType, reason: &'static str, note: String| {
        let tcp_ref = tcp_ref.clone();
        async move { report::event(ctx, &tcp_ref, kind, reason, &note).await }
    };
    let by_name = |name: &str| machines.iter().find(|m| m.name_any() == name);
    let recorded = |name: &str| {
        report
            .view
            .machines
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.reconfigure.clone())
    };
    let record = |machine: String, marker: Option<Marker>| async move {
        annotate_machine(
            ctx,
            tcp,
            &machine,
            json!({MARKER: marker.as_ref().map(Marker::to_annotation)}),
            "recording the configuration change of",
        )
        .await
    };
    // The node refused the configuration (`kept`: refused to keep a tried one): say so, and
    // record it on the Machine, which halts configuration changes.
    let refused = |machine: &str, address: &str, mut marker: Marker, kept: bool, why: &str| {
        let why = condensed(why);
        let (what, it) = if kept {
            (
                "refused to keep the new configuration",
                "refused to keep it",
            )
        } else {
            ("refused the new configuration", "refused it")
        };
        let note = format!(
            "the node of machine {machine} ({address}) {what}: {why}; configuration changes halt"
        );
        marker.failed = Some(format!("the node {it}: {why}"));
        let machine = machine.to_owned();
        async move {
            event(EventType::Warning, "TalosConfigChangeFailed", note).await;
            record(machine, Some(marker)).await
        }
    };
    match &step {
        Step::TryConfig { machine } => {
            let (Some(tc), Some(m)) = (with.talosconfig, by_name(machine)) else {
                return Ok(step);
            };
            let Some(address) = talos::address(m) else {
                return Ok(step);
            };
            let now = ctx.clock.now().0;
            // Recorded before the node is asked: a restart in between asks again.
            let mut marker = match recorded(machine) {
                Some(marker) => marker,
                None => {
                    let marker = Marker {
                        digest: with.config_digest.to_owned(),
                        at: now,
                        tried: false,
                        needs_reboot: None,
                        rebooting: false,
                        down: false,
                        failed: None,
                    };
                    record(machine.clone(), Some(marker.clone())).await?;
                    marker
                }
            };
            let data = match render(ctx, tcp, with.cluster, cluster, m) {
                Ok(data) => data,
                Err(why) => {
                    marker.failed = Some(format!("its configuration cannot be rendered: {why}"));
                    record(machine.clone(), Some(marker)).await?;
                    return Ok(step);
                }
            };
            match talos::apply_config(ctx, tc, &address, &data, talos::ApplyMode::Try(TRY_TIMEOUT))
                .await
            {
                Ok(()) => {
                    marker.tried = true;
                    marker.at = now;
                    record(machine.clone(), Some(marker)).await?;
                    event(
                        EventType::Normal,
                        "TalosConfigTried",
                        format!(
                            "machine {machine} ({address}) runs the new configuration without a reboot; it is confirmed once the node is healthy, or rolled back by Talos after {}s",
                            TRY_TIMEOUT.as_secs()
                        ),
                    )
                    .await;
                }
                Err(talos::ConfigError::NeedsReboot(why)) => {
                    let why = condensed(&why);
                    let then = if with.reboot_in_place {
                        "each node reboots into it in turn (rolloutStrategy.configReboot InPlace)"
                    } else {
                        "the machines are replaced instead"
                    };
                    event(
                        EventType::Normal,
                        "TalosConfigNeedsReboot",
                        format!(
                            "Talos applies this controlPlaneConfig change only with a reboot ({why}): {then}"
                        ),
                    )
                    .await;
                    marker.needs_reboot = Some(why);
                    record(machine.clone(), Some(marker)).await?;
                }
                Err(talos::ConfigError::Refused(why)) => {
                    refused(machine, &address, marker, false, &why).await?;
                }
                Err(talos::ConfigError::Unreachable(why)) => {
                    return Ok(Step::Wait {
                        reason: WaitReason::WaitingForNode,
                        message: format!(
                            "asking the node of machine {machine} to try the new configuration: {why}"
                        ),
                    });
                }
            }
        }
        Step::ConfirmConfig { machine } => {
            let (Some(tc), Some(m), Some(marker)) =
                (with.talosconfig, by_name(machine), recorded(machine))
            else {
                return Ok(step);
            };
            let Some(address) = talos::address(m) else {
                return Ok(step);
            };
            let confirmed = match render(ctx, tcp, with.cluster, cluster, m) {
                Ok(data) => {
                    talos::apply_config(ctx, tc, &address, &data, talos::ApplyMode::NoReboot).await
                }
                Err(why) => Err(talos::ConfigError::Refused(format!(
                    "its configuration cannot be rendered: {why}"
                ))),
            };
            match confirmed {
                Ok(()) => {
                    annotate_machine(
                        ctx,
                        tcp,
                        machine,
                        json!({
                            MARKER: null,
                            machines::MADE_FROM_CONFIG_DIGEST: marker.digest,
                        }),
                        "recording the configuration of",
                    )
                    .await?;
                    let how = if marker.rebooting {
                        "with a reboot"
                    } else {
                        "without a reboot"
                    };
                    event(
                        EventType::Normal,
                        "TalosConfigApplied",
                        format!(
                            "machine {machine} ({address}) runs the new configuration, applied {how}"
                        ),
                    )
                    .await;
                }
                Err(talos::ConfigError::Unreachable(why)) => {
                    return Ok(Step::Wait {
                        reason: WaitReason::WaitingForNode,
                        message: format!(
                            "confirming the new configuration on machine {machine}: {why}"
                        ),
                    });
                }
                Err(talos::ConfigError::NeedsReboot(why) | talos::ConfigError::Refused(why)) => {
                    refused(machine, &address, marker, true, &why).await?;
                }
            }
        }
        Step::RebootConfig { machine } => {
            let (Some(tc), Some(m), Some(mut marker)) =
                (with.talosconfig, by_name(machine), recorded(machine))
            else {
                return Ok(step);
            };
            let Some(address) = talos::address(m) else {
                return Ok(step);
            };
            let data = match render(ctx, tcp, with.cluster, cluster, m) {
                Ok(data) => data,
                Err(why) => {
                    marker.failed = Some(format!("its configuration cannot be rendered: {why}"));
                    record(machine.clone(), Some(marker)).await?;
                    return Ok(step);
                }
            };
            // Recorded before the node is asked, with the time the timeout runs from: a
            // restart in between finds the node rebooting, or asks again once it is back.
            marker.rebooting = true;
            marker.down = false;
            marker.at = ctx.clock.now().0;
            record(machine.clone(), Some(marker.clone())).await?;
            talos::forfeit_leadership(ctx, tc, &address).await;
            match talos::apply_config(ctx, tc, &address, &data, talos::ApplyMode::Reboot).await {
                Ok(()) => {
                    event(
                        EventType::Normal,
                        "TalosConfigRebooting",
                        format!(
                            "machine {machine} ({address}) reboots into the new configuration; the next node follows once it is back healthy"
                        ),
                    )
                    .await;
                }
                Err(talos::ConfigError::Unreachable(why)) => {
                    // It may have arrived (a lost reply): the node is watched for its reboot,
                    // and asked again only if it is still up a while later.
                    return Ok(Step::Wait {
                        reason: WaitReason::WaitingForNode,
                        message: format!(
                            "asking the node of machine {machine} to reboot into the new configuration: {why}"
                        ),
                    });
                }
                Err(talos::ConfigError::NeedsReboot(why) | talos::ConfigError::Refused(why)) => {
                    refused(machine, &address, marker, false, &why).await?;
                }
            }
        }
        Step::ConfigRebootSeenDown { machine } => {
            if let Some(mut marker) = recorded(machine) {
                marker.down = true;
                record(machine.clone(), Some(marker)).await?;
            }
        }
        Step::ConfigChangeFailed { machine, why } => {
            if let Some(mut marker) = recorded(machine) {
                marker.failed = Some(why.clone());
                record(machine.clone(), Some(marker)).await?;
                event(
                    EventType::Warning,
                    "TalosConfigChangeFailed",
                    format!(
                        "the configuration change of machine {machine} failed: {why}; configuration changes halt"
                    ),
                )
                .await;
            }
        }
        Step::ForgetConfigChange { machine } => {
            record(machine.clone(), None).await?;
        }
        _ => {}
    }
    Ok(step)
}

/// The machine configuration `machine` gets from controlPlaneConfig now, rendered as its
/// TalosConfig would be (the same engine, bundle and inputs).
fn render(
    ctx: &Context,
    tcp: &TalosControlPlane,
    cluster: &Cluster,
    cluster_name: &str,
    machine: &Machine,
) -> Result<String, String> {
    let ns = tcp.namespace().unwrap_or_default();
    let secret = ctx
        .secret(&ns, &bundle_name(cluster_name))
        .ok_or_else(|| format!("Secret {} does not exist", bundle_name(cluster_name)))?;
    let bundle = ctx.bundle_of(&secret).map_err(|e| e.to_string())?;
    let spec = machines::config_spec(&tcp.spec.control_plane_config.controlplane)
        .map_err(|e| e.to_string())?;
    let spec: TalosConfigSpec = serde_json::from_value(spec).map_err(|e| e.to_string())?;
    crate::bootstrap::render::machine_config(&spec, machine, cluster, cluster_name, &bundle)
        .map_err(|e| e.to_string())
}

/// Talos's answer on one line, bounded for an annotation and an Event.
fn condensed(why: &str) -> String {
    let line = why
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match line.char_indices().nth(MAX_WHY) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Whether the nodes are asked again now: never with `interval` 0 (`--config-drift-interval
/// 0s` turns the check off), else first at once and then `interval` after the last look.
fn drift_due(
    last: Option<std::time::Instant>,
    interval: std::time::Duration,
    now: std::time::Instant,
) -> bool {
    !interval.is_zero() && last.is_none_or(|at| now.duration_since(at) >= interval)
}

/// Machines whose node runs another configuration than controlPlaneConfig renders for it
/// (changed by hand, say), with the fields that differ: asked of each node of a steady
/// control plane (a dry-run apply) at most every `drift_check`, remembered in between (and
/// while the control plane is not steady, `talosconfig` `None`). Nothing is applied: the drift
/// is reported, never overwritten. A newly drifted machine gets a Warning Event.
pub(super) async fn drift(
    ctx: &Context,
    tcp: &TalosControlPlane,
    cluster: (&Cluster, &str),
    machines: &[Machine],
    talosconfig: Option<&str>,
    view: &super::scope::ControlPlane,
    digest: &str,
) -> crate::context::Drifted {
    let key = format!("{}/{}", tcp.namespace().unwrap_or_default(), tcp.name_any());
    let interval = ctx.options.drift_check;
    let remembered = ctx
        .drift
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let due = drift_due(
        remembered.as_ref().map(|(at, _)| *at),
        interval,
        std::time::Instant::now(),
    );
    let Some(talosconfig) = talosconfig.filter(|_| due) else {
        // What was found still holds for machines that exist and were not changed since.
        let mut found = remembered.map(|(_, found)| found).unwrap_or_default();
        found.retain(|(m, _)| {
            view.machines
                .iter()
                .any(|v| &v.name == m && v.config_digest.as_deref() == Some(digest))
        });
        return found;
    };
    let mut found = Vec::new();
    for m in machines {
        let name = m.name_any();
        let steady = view.machines.iter().any(|v| {
            v.name == name
                && !v.deleting
                && v.reachable
                && v.reconfigure.is_none()
                && v.upgrade.is_none()
                && v.config_digest.as_deref() == Some(digest)
        });
        let Some(address) = talos::address(m).filter(|_| steady) else {
            continue;
        };
        let Ok(data) = render(ctx, tcp, cluster.0, cluster.1, m) else {
            continue;
        };
        match talos::config_drift(ctx, talosconfig, &address, &data).await {
            Ok(fields) if !fields.is_empty() => found.push((name, fields)),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(machine = %name, error = %e, "checking the configuration a node runs")
            }
        }
    }
    let before = remembered.map(|(_, f)| f).unwrap_or_default();
    for (machine, fields) in &found {
        if !before.iter().any(|(m, f)| m == machine && f == fields) {
            report::event(
                ctx,
                &tcp.object_ref(&()),
                EventType::Warning,
                "TalosConfigDrift",
                &format!(
                    "machine {machine} runs a configuration that differs from what controlPlaneConfig renders for it (fields: {}); talos-capi leaves it as it is",
                    fields.join(", ")
                ),
            )
            .await;
        }
    }
    ctx.drift
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, (std::time::Instant::now(), found.clone()));
    found
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::drift_due;

    #[test]
    fn drift_is_asked_at_once_then_each_interval_and_never_with_0s() {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(drift_due(None, minute, now), "the first look is at once");
        assert!(!drift_due(Some(now), minute, now + Duration::from_secs(59)));
        assert!(drift_due(Some(now), minute, now + minute));
        assert!(!drift_due(None, Duration::ZERO, now), "0s turns it off");
        assert!(!drift_due(Some(now), Duration::ZERO, now + minute * 60));
    }
}
