//! What an in-place configuration change ([`super::reconfigure`]) needs besides its steps
//! (`execute::config`): the machine's configuration rendered as its TalosConfig would be,
//! Talos's answers condensed, and the drift of running configurations.

use api::bootstrap::v1alpha3::TalosConfigSpec;
use api::capi::{Cluster, Machine};
use api::controlplane::v1alpha3::TalosControlPlane;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::state::Ctx;
use super::{machines, talos};
use crate::bootstrap::secrets::bundle_name;
use crate::{Error, report};

/// The longest Talos answer kept on a Machine.
const MAX_WHY: usize = 1024;

/// The machine configuration `machine` gets from controlPlaneConfig now, rendered as its
/// TalosConfig would be (the same engine, bundle and inputs), with the addresses its
/// TalosConfig claimed when the machine was made: a machine keeps its addresses.
pub(super) async fn render(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: &Cluster,
    cluster_name: &str,
    machine: &Machine,
) -> Result<String, Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let secret = ctx.secret(&ns, &bundle_name(cluster_name)).ok_or_else(|| {
        Error::Missing(format!(
            "Secret {} does not exist",
            bundle_name(cluster_name)
        ))
    })?;
    let bundle = ctx.bundle_of(&secret)?;
    let spec = machines::config_spec(&tcp.spec.control_plane_config.controlplane)?;
    let spec: TalosConfigSpec = serde_json::from_value(spec).map_err(|source| Error::Decode {
        kind: "TalosConfigSpec",
        source,
    })?;
    let pools = match &machine.spec.bootstrap.config_ref {
        Some(config) if spec.addresses_from_pools.is_some() => {
            let pools = spec.addresses_from_pools.as_deref().unwrap_or_default();
            crate::ipam::bound(&ctx.client, &ns, &config.name, pools).await?
        }
        _ => Default::default(),
    };
    let values = crate::bootstrap::render::machine_values(machine, cluster_name, pools);
    Ok(crate::bootstrap::render::machine_config(
        &spec,
        machine,
        cluster,
        cluster_name,
        &bundle,
        &values,
    )?)
}

/// Talos's answer on one line, bounded for an annotation and an Event.
pub(super) fn condensed(why: &str) -> String {
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
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: (&Cluster, &str),
    machines: &[Machine],
    talosconfig: Option<&str>,
    view: &super::scope::ControlPlane,
    digest: &str,
) -> super::state::Drifted {
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
        let Ok(data) = render(ctx, tcp, cluster.0, cluster.1, m).await else {
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
