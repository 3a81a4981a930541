//! The steps of an in-place configuration change ([`super::super::reconfigure`]): render the
//! machine's configuration as its TalosConfig would, try it on the node, confirm it (or reboot
//! into it), and record each outcome on the Machine.

use kube::runtime::events::EventType;
use serde_json::json;

use super::super::config_change::{condensed, render};
use super::super::reconfigure::{MARKER, Marker, TRY_TIMEOUT};
use super::super::step::Step;
use super::super::{annotate_machine, machines, talos};
use super::{Exec, Node, waiting_for_node};
use crate::Error;

/// The node and the configuration it gets now; `None` (the step waits for the next reconcile)
/// when the node cannot be asked yet, or when the configuration cannot be rendered, which is
/// recorded as the change's failure.
async fn rendered<'a>(
    x: &Exec<'a, '_>,
    machine: &str,
    marker: &mut Marker,
) -> Result<Option<(Node<'a>, String)>, Error> {
    let Some(node) = x.node(machine) else {
        return Ok(None);
    };
    match render(x.ctx, x.tcp, x.with.cluster, x.cluster, node.machine).await {
        Ok(data) => Ok(Some((node, data))),
        Err(why) => {
            marker.failed = Some(format!("its configuration cannot be rendered: {why}"));
            x.record(machine, Some(&*marker)).await?;
            Ok(None)
        }
    }
}

/// Try the new configuration on `machine`'s node (ApplyConfiguration TRY), recorded on the
/// Machine before the node is asked: a restart in between asks again.
pub(super) async fn try_it(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    if x.node(machine).is_none() {
        return Ok(None);
    }
    let now = x.ctx.clock.now().0;
    let mut marker = match x.recorded::<Marker>(machine) {
        Some(marker) => marker,
        None => {
            let marker = Marker {
                digest: x.with.config_digest.to_owned(),
                at: now,
                tried: false,
                needs_reboot: None,
                rebooting: false,
                down: false,
                failed: None,
            };
            x.record(machine, Some(&marker)).await?;
            marker
        }
    };
    let Some((node, data)) = rendered(x, machine, &mut marker).await? else {
        return Ok(None);
    };
    let mode = talos::ApplyMode::Try(TRY_TIMEOUT);
    let address = node.address.as_str();
    match talos::apply_config(x.ctx, node.talosconfig, address, &data, mode).await {
        Ok(()) => {
            marker.tried = true;
            marker.at = now;
            x.record(machine, Some(&marker)).await?;
            x.said(
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
            let then = if x.with.reboot_in_place {
                "each node reboots into it in turn (rolloutStrategy.configReboot InPlace)"
            } else {
                "the machines are replaced instead"
            };
            x.said(
                "TalosConfigNeedsReboot",
                format!(
                    "Talos applies this controlPlaneConfig change only with a reboot ({why}): {then}"
                ),
            )
            .await;
            marker.needs_reboot = Some(why);
            x.record(machine, Some(&marker)).await?;
        }
        Err(talos::ConfigError::Refused(why)) => {
            refused(x, machine, address, marker, false, &why).await?;
        }
        Err(talos::ConfigError::Unreachable(why)) => {
            return Ok(waiting_for_node(format!(
                "asking the node of machine {machine} to try the new configuration: {why}"
            )));
        }
    }
    Ok(None)
}

/// The node is healthy on the tried configuration (or back from rebooting into it): make it
/// permanent (NO_REBOOT), record the new digest on the Machine and clear the record.
pub(super) async fn confirm(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let (Some(node), Some(marker)) = (x.node(machine), x.recorded::<Marker>(machine)) else {
        return Ok(None);
    };
    let address = node.address.as_str();
    let confirmed = match render(x.ctx, x.tcp, x.with.cluster, x.cluster, node.machine).await {
        Ok(data) => {
            let mode = talos::ApplyMode::NoReboot;
            talos::apply_config(x.ctx, node.talosconfig, address, &data, mode).await
        }
        Err(why) => Err(talos::ConfigError::Refused(format!(
            "its configuration cannot be rendered: {why}"
        ))),
    };
    match confirmed {
        Ok(()) => {
            let recorded = json!({MARKER: null, machines::MADE_FROM_CONFIG_DIGEST: marker.digest});
            annotate_machine(
                x.ctx,
                x.tcp,
                machine,
                recorded,
                "recording the configuration of",
            )
            .await?;
            let how = if marker.rebooting {
                "with a reboot"
            } else {
                "without a reboot"
            };
            x.said(
                "TalosConfigApplied",
                format!("machine {machine} ({address}) runs the new configuration, applied {how}"),
            )
            .await;
        }
        Err(talos::ConfigError::Unreachable(why)) => {
            return Ok(waiting_for_node(format!(
                "confirming the new configuration on machine {machine}: {why}"
            )));
        }
        Err(talos::ConfigError::NeedsReboot(why) | talos::ConfigError::Refused(why)) => {
            refused(x, machine, address, marker, true, &why).await?;
        }
    }
    Ok(None)
}

/// Apply the new configuration with a reboot (configReboot InPlace, once Talos said the change
/// needs one): recorded first, with the time the timeout runs from (a restart in between finds
/// the node rebooting, or asks again once it is back), leadership moved away, then asked.
pub(super) async fn reboot(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let Some(mut marker) = x.recorded::<Marker>(machine) else {
        return Ok(None);
    };
    let Some((node, data)) = rendered(x, machine, &mut marker).await? else {
        return Ok(None);
    };
    let address = node.address.as_str();
    marker.rebooting = true;
    marker.down = false;
    marker.at = x.ctx.clock.now().0;
    x.record(machine, Some(&marker)).await?;
    talos::forfeit_leadership(x.ctx, node.talosconfig, address).await;
    let mode = talos::ApplyMode::Reboot;
    match talos::apply_config(x.ctx, node.talosconfig, address, &data, mode).await {
        Ok(()) => {
            x.said(
                "TalosConfigRebooting",
                format!(
                    "machine {machine} ({address}) reboots into the new configuration; the next node follows once it is back healthy"
                ),
            )
            .await;
        }
        Err(talos::ConfigError::Unreachable(why)) => {
            // It may have arrived (a lost reply): the node is watched for its reboot, and
            // asked again only if it is still up a while later.
            return Ok(waiting_for_node(format!(
                "asking the node of machine {machine} to reboot into the new configuration: {why}"
            )));
        }
        Err(talos::ConfigError::NeedsReboot(why) | talos::ConfigError::Refused(why)) => {
            refused(x, machine, address, marker, false, &why).await?;
        }
    }
    Ok(None)
}

/// The tried configuration failed: recorded, which halts in-place changes.
pub(super) async fn failed(
    x: &Exec<'_, '_>,
    machine: &str,
    why: &str,
) -> Result<Option<Step>, Error> {
    x.failed(machine, why, |_: &Marker| {
        format!(
            "the configuration change of machine {machine} failed: {why}; configuration changes halt"
        )
    })
    .await
}

/// The node refused the configuration (`kept`: refused to keep a tried one): say so, and
/// record it on the Machine, which halts configuration changes.
async fn refused(
    x: &Exec<'_, '_>,
    machine: &str,
    address: &str,
    mut marker: Marker,
    kept: bool,
    why: &str,
) -> Result<(), Error> {
    let why = condensed(why);
    let (what, it) = if kept {
        (
            "refused to keep the new configuration",
            "refused to keep it",
        )
    } else {
        ("refused the new configuration", "refused it")
    };
    marker.failed = Some(format!("the node {it}: {why}"));
    x.event(
        EventType::Warning,
        "TalosConfigChangeFailed",
        format!(
            "the node of machine {machine} ({address}) {what}: {why}; configuration changes halt"
        ),
    )
    .await;
    x.record(machine, Some(&marker)).await
}
