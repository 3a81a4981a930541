//! Report: what every controller writes back — its status (server-side apply on the status
//! subresource, as its own field manager), one Event per change of conditions, and, for an
//! object that does not decode, a condition and an Event saying so.

use api::conditions::{
    self, Condition, ConditionType, HasConditions, Observation, Severity, Status,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::{Context, Error};

/// Server-side apply `status` to the status subresource of `ns/name` (of kind `ar`).
pub async fn apply_status(
    ctx: &Context,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    let patch = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "status": status,
    });
    // The reply (the whole object) is not read: an object nested past the decoder's limit
    // would fail its decoding after the write succeeded, and kube-client would log it whole.
    let written = match kube::core::Request::new(api.resource_url()).patch_subresource(
        "status",
        name,
        &PatchParams::apply(&ctx.options.manager_name).force(),
        &Patch::Apply(&patch),
    ) {
        Ok(request) => ctx.client.request_text(request).await.map(drop),
        Err(e) => Err(kube::Error::BuildRequest(e)),
    };
    match written {
        Ok(_) => Ok(()),
        // Refused for what it holds (invalid, or too large): writing it again cannot help, so
        // it is said in an Event and waits for a change, like any spec error.
        Err(kube::Error::Api(refusal)) if matches!(refusal.code, 413 | 422) => {
            let error = Error::StatusRefused {
                object: format!("{} {ns}/{name}", ar.kind),
                message: conditions::bounded(refusal.message.clone(), 512),
            };
            let object = ObjectReference {
                api_version: Some(ar.api_version.clone()),
                kind: Some(ar.kind.clone()),
                namespace: Some(ns.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectReference::default()
            };
            let note = error.to_string();
            event(
                ctx,
                &object,
                EventType::Warning,
                conditions::reason::STATUS_REFUSED,
                &note,
            )
            .await;
            Err(error)
        }
        Err(e) => Err(Error::kube(format!(
            "writing the status of {} {ns}/{name}",
            ar.kind
        ))(e)),
    }
}

/// Conditions whose status or reason changed between `old` and `new`.
pub fn transitions<'a>(
    old: Option<&[Condition]>,
    new: Option<&'a [Condition]>,
) -> Vec<&'a Condition> {
    let before = old.unwrap_or_default();
    new.unwrap_or_default()
        .iter()
        .filter(|c| {
            !before
                .iter()
                .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason)
        })
        .collect()
}

/// One Event for a status change, listing the conditions that changed. It is a Warning when
/// one of them is False for a reason `needs_person` names; its reason is that condition's, or
/// else `headline`'s (or the first change's). Best effort: a failure is logged, not retried.
pub async fn publish(
    ctx: &Context,
    object: &ObjectReference,
    changed: Vec<&Condition>,
    headline: ConditionType,
    needs_person: fn(&str) -> bool,
) {
    let news: Vec<_> = changed
        .into_iter()
        .filter(|c| {
            !(c.type_ == ConditionType::Paused.as_str()
                && c.reason == api::conditions::reason::NOT_PAUSED)
        })
        .collect();
    let Some(lead) = news
        .iter()
        .find(|c| c.status == "False" && needs_person(&c.reason))
        .or_else(|| news.iter().find(|c| c.type_ == headline.as_str()))
        .or_else(|| news.first())
    else {
        return;
    };
    let warning = lead.status == "False" && needs_person(&lead.reason);
    let note: String = news
        .iter()
        .map(|c| {
            format!(
                "{} is {} ({}){}",
                c.type_,
                c.status,
                c.reason,
                if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    event(ctx, object, type_, &lead.reason, &note).await;
}

/// How long an Event's create may take before it is given up: an API server slow to store
/// Events (they are most of the writes) holds a reconcile slot no longer than this.
const EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The most an Event's note holds, in bytes (the API server refuses a longer one).
const EVENT_NOTE_LIMIT: usize = 1024;

/// Publish one Event about `object` (note cut to the 1 KiB Events allow, with a marker). Best effort, within
/// [`EVENT_TIMEOUT`].
pub async fn event(
    ctx: &Context,
    object: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(conditions::bounded(note.to_owned(), EVENT_NOTE_LIMIT)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    match tokio::time::timeout(EVENT_TIMEOUT, recorder.publish(&event, object)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "publishing an Event"),
        Err(_) => tracing::debug!("publishing an Event timed out"),
    }
}

/// Conditions of an object that does not decode: the one `set` writes.
#[derive(Default, serde::Serialize)]
struct Only {
    conditions: Vec<Condition>,
    v1beta1: Vec<conditions::V1Beta1Condition>,
}

impl HasConditions for Only {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    fn v1beta1_conditions_mut(&mut self) -> &mut Vec<conditions::V1Beta1Condition> {
        &mut self.v1beta1
    }
}

/// An object the schema let through that cannot be read as its kind (a hand edit): say so in
/// its `type_` condition and a Warning Event; other objects keep reconciling.
pub async fn undecodable(
    ctx: &Context,
    obj: &DynamicObject,
    ar: &ApiResource,
    type_: ConditionType,
    source: &serde_json::Error,
) -> Result<(), Error> {
    // The log says it once per generation (a cached object that did not decode was warned
    // about as it arrived: the same object and generation, not again).
    crate::cache::warn_undecodable(&ar.kind, &obj.metadata, source);
    let message = format!("the object cannot be read as a {}: {source}", ar.kind);
    let observation = Observation::new(type_, Status::False, conditions::reason::INVALID_SPEC)
        .message(message.clone())
        .severity(Severity::Error);
    let mut status = Only::default();
    conditions::set(
        &mut status,
        &observation,
        obj.metadata.generation,
        &ctx.clock.now(),
    );
    apply_status(
        ctx,
        ar,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        json!({"conditions": status.conditions, "observedGeneration": obj.metadata.generation}),
    )
    .await?;
    event(
        ctx,
        &obj.object_ref(ar),
        EventType::Warning,
        conditions::reason::INVALID_SPEC,
        &message,
    )
    .await;
    Ok(())
}
