//! Steps that make or remove machines: scale up (and replace), scale down (and roll out),
//! remediate.

use kube::{Resource, ResourceExt};

use super::super::step::Step;
use super::super::wait_reason::WaitReason;
use super::super::{Annotation, annotate, entropy, key_of, machines, remediation};
use super::Exec;
use crate::Error;

/// One more control-plane machine, in `failure_domain`, unless `limit` machines exist.
pub(super) async fn create(
    x: &Exec<'_, '_>,
    failure_domain: Option<&str>,
    limit: usize,
) -> Result<Option<Step>, Error> {
    let (ctx, tcp) = (x.ctx, x.tcp);
    // The cache may lag behind a busy API server: the API server has the last word on how
    // many machines exist before one more is made.
    let count = machines::count(ctx, tcp, x.cluster).await?;
    if count.total >= limit {
        return Ok(waiting_for_cache(count.total));
    }
    let template = match &x.with.template {
        Some(t) => t.clone(),
        None => machines::Template::read(ctx, tcp).await?,
    };
    let name = machines::new_name(&x.name(), entropy(tcp));
    // A replacement for a remediated machine carries that remediation (retry counting).
    let remediation = tcp.annotations().get(remediation::IN_PROGRESS).cloned();
    machines::create(
        ctx,
        tcp,
        &template,
        x.cluster,
        &name,
        failure_domain,
        remediation.as_deref(),
    )
    .await?;
    ctx.expectations.created(&key_of(tcp), &name);
    if remediation.is_some() {
        annotate(ctx, tcp, remediation::IN_PROGRESS, None).await?;
    }
    let domain = failure_domain
        .map(|fd| format!(" in failure domain {fd}"))
        .unwrap_or_default();
    x.said(
        "MachineCreated",
        format!("created control-plane machine {name}{domain}"),
    )
    .await;
    Ok(None)
}

/// Delete `machine` (scale-down, or replacement in a rolling update).
pub(super) async fn down(x: &Exec<'_, '_>, machine: &str) -> Result<Option<Step>, Error> {
    let (ctx, tcp) = (x.ctx, x.tcp);
    // A cache that still shows a machine the API server has seen go would let one too many
    // go.
    let cached = x
        .machines
        .iter()
        .filter(|m| m.meta().deletion_timestamp.is_none())
        .count();
    let count = machines::count(ctx, tcp, x.cluster).await?;
    if count.live < cached {
        return Ok(waiting_for_cache(count.live));
    }
    machines::delete(ctx, &tcp.namespace().unwrap_or_default(), machine).await?;
    ctx.expectations.deleted(&key_of(tcp), machine);
    let outdated = x.view(machine).and_then(|m| m.outdated.clone());
    let note = match outdated {
        Some(why) => {
            format!("rolling out: deleted outdated control-plane machine {machine} ({why})")
        }
        None => format!("scaling down: deleted control-plane machine {machine}"),
    };
    x.said("MachineDeleted", note).await;
    Ok(None)
}

/// Record the remediation of unhealthy `machine`, then delete it; scaling up replaces it.
pub(super) async fn remediate(
    x: &mut Exec<'_, '_>,
    machine: &str,
    retry_count: i32,
) -> Result<Option<Step>, Error> {
    let (ctx, tcp) = (x.ctx, x.tcp);
    let record = remediation::record(machine, retry_count, ctx.clock.now().0);
    annotate(
        ctx,
        tcp,
        remediation::IN_PROGRESS,
        Some(&record.to_annotation()),
    )
    .await?;
    machines::delete(ctx, &tcp.namespace().unwrap_or_default(), machine).await?;
    x.report.last_remediation = Some(record);
    x.said(
        "MachineRemediating",
        format!("machine {machine} is unhealthy: deleted it to be replaced (retry {retry_count})"),
    )
    .await;
    Ok(None)
}

fn waiting_for_cache(exist: usize) -> Option<Step> {
    Some(Step::Wait {
        reason: WaitReason::WaitingForCache,
        message: format!("{exist} machines exist; waiting for the cache to show them"),
    })
}
