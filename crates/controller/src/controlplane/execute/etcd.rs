//! Steps on etcd itself: bootstrap it once, remove a member no machine owns, let a machine
//! being deleted go once its member has left.

use super::super::step::Step;
use super::super::{healthy_addresses, machines, talos, write_status};
use super::{Exec, waiting_for_node};
use crate::Error;
use kube::ResourceExt;

/// Bootstrap etcd on `machine`'s node: exactly once per cluster.
pub(super) async fn bootstrap(x: &mut Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let Some(node) = x.node(machine) else {
        return Ok(waiting_for_node(format!(
            "waiting for machine {machine} to report its address and for the cluster talosconfig, to bootstrap etcd on it"
        )));
    };
    let address = node.address;
    match talos::bootstrap(x.ctx, node.talosconfig, machine, &address).await {
        Ok(outcome) => {
            x.report.bootstrapped = true;
            // Recorded before anything else happens: bootstrap is asked for once.
            write_status(x.ctx, x.tcp, x.report).await?;
            if outcome == talos::Bootstrapped::Now {
                x.said(
                    "EtcdBootstrapped",
                    format!("bootstrapped etcd on machine {machine} ({address})"),
                )
                .await;
            }
            Ok(None)
        }
        Err(e) => Ok(waiting_for_node(format!(
            "waiting for the node of machine {machine}: {e}"
        ))),
    }
}

/// Remove etcd member `id` (`name`), which belongs to no machine.
pub(super) async fn remove_orphan(
    x: &Exec<'_, '_>,
    id: u64,
    name: &str,
) -> Result<Option<Step>, Error> {
    let Some(tc) = x.with.talosconfig else {
        return Ok(None);
    };
    let via = healthy_addresses(x.machines, x.report, None);
    talos::remove_member(x.ctx, tc, via, id).await?;
    x.said(
        "EtcdMemberRemoved",
        format!("removed etcd member {name} ({id:x}), which belonged to no machine"),
    )
    .await;
    Ok(None)
}

/// `machine` is being deleted: move etcd leadership away and remove its `member`, then
/// release the pre-terminate hook so Cluster API can finish the deletion.
pub(super) async fn release(
    x: &Exec<'_, '_>,
    machine: &str,
    member: Option<u64>,
) -> Result<Option<Step>, Error> {
    if let (Some(id), Some(tc)) = (member, x.with.talosconfig) {
        if let Some(address) = x.machine(machine).and_then(talos::address) {
            talos::forfeit_leadership(x.ctx, tc, &address).await;
        }
        let via = healthy_addresses(x.machines, x.report, Some(machine));
        talos::remove_member(x.ctx, tc, via, id).await?;
        x.said(
            "EtcdMemberRemoved",
            format!("machine {machine} is being deleted: removed its etcd member {id:x}"),
        )
        .await;
    }
    machines::release(x.ctx, &x.tcp.namespace().unwrap_or_default(), machine).await?;
    Ok(None)
}
