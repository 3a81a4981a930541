//! The steps of an in-place Talos upgrade, node by node: record it on the Machine, ask the
//! node, and follow it down and back up.

use super::super::step::Step;
use super::super::talos;
use super::super::upgrade::Marker;
use super::{Exec, waiting_for_node};
use crate::Error;

/// Upgrade `machine`'s node to the target version: recorded on the Machine before the node is
/// asked (a restart in between asks again), leadership moved away, then the installer run.
pub(super) async fn start(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let (Some(target), Some(node)) = (x.with.upgrade.as_ref(), x.node(machine)) else {
        return Ok(None);
    };
    let (ctx, address) = (x.ctx, node.address.as_str());
    let recorded: Option<Marker> = x.recorded(machine);
    let mut marker = match &recorded {
        Some(marker) => marker.clone(),
        None => {
            let from = x.view(machine).and_then(|v| v.talos_version.clone());
            let marker = Marker {
                version: target.version.clone(),
                image: target.image.clone(),
                from: from.unwrap_or_default(),
                at: ctx.clock.now().0,
                issued: false,
                down: false,
                failed: None,
            };
            x.record(machine, Some(&marker)).await?;
            marker
        }
    };
    talos::forfeit_leadership(ctx, node.talosconfig, address).await;
    match talos::upgrade(ctx, node.talosconfig, address, &target.image).await {
        Ok(()) => {
            marker.issued = true;
            x.record(machine, Some(&marker)).await?;
            x.said(
                "TalosUpgradeStarted",
                format!(
                    "upgrading Talos on machine {machine} ({address}) from {} to {} with {}",
                    marker.from, marker.version, marker.image
                ),
            )
            .await;
        }
        Err(talos::UpgradeError::Refused(why)) => {
            marker.failed = Some(why);
            x.record(machine, Some(&marker)).await?;
        }
        Err(talos::UpgradeError::Unreachable(why)) => {
            return Ok(waiting_for_node(format!(
                "asking the node of machine {machine} to upgrade Talos: {why}"
            )));
        }
    }
    Ok(None)
}

/// The upgrade failed: recorded, which halts the rollout.
pub(super) async fn failed(
    x: &Exec<'_, '_>,
    machine: &str,
    why: &str,
) -> Result<Option<Step>, Error> {
    let address = x
        .machine(machine)
        .and_then(talos::address)
        .unwrap_or_default();
    x.failed(machine, why, |marker: &Marker| {
        format!(
            "the Talos upgrade of machine {machine} ({address}) to {} failed: {why}; the rollout halts",
            marker.version
        )
    })
    .await
}

/// The node is back, healthy, on the target version: the record goes.
pub(super) async fn done(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let marker = x.recorded::<Marker>(machine);
    x.record::<Marker>(machine, None).await?;
    if let Some(marker) = marker {
        x.said(
            "TalosUpgraded",
            format!(
                "machine {machine} runs Talos {} (was {})",
                marker.version, marker.from
            ),
        )
        .await;
    }
    Ok(None)
}
