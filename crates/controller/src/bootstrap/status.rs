//! Report: the TalosConfig status for both contracts, from what the reconcile observed, plus an
//! Event for every condition that changed.

use api::bootstrap::v1alpha3::{BootstrapInitialization, TalosConfigSpec, TalosConfigStatus};
use api::conditions::{self, Condition, ConditionType, Observation, Severity, Status, reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the reconcile found, in the terms the status reports.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Set once the bootstrap data Secret exists (ours, reused or adopted).
    pub data_secret_name: Option<String>,
    pub data: Option<Observation>,
    pub client_config: Option<Observation>,
    pub config_up_to_date: Option<Observation>,
    pub fields_current: Option<Observation>,
    pub paused: Option<String>,
    /// Being deleted, and what it waits for first.
    pub deleting: Option<Observation>,
}

/// For contract v1.14 on: whether the patches set v1alpha1 fields Talos v1.14 moved into
/// documents of their own (`moved`, noted by the render: a Warning naming each and its
/// document; rendering goes on, as talosctl's does). Before v1.14 there is nothing to say.
pub fn fields_current(spec: &TalosConfigSpec, moved: Vec<String>) -> Option<Observation> {
    let contract =
        machineconfig::Contract::parse(spec.talos_version.as_deref().unwrap_or_default());
    if !contract.is_ok_and(|c| c.at_least(1, 14)) {
        return None;
    }
    Some(if moved.is_empty() {
        Observation::new(
            ConditionType::ConfigFieldsCurrent,
            Status::True,
            reason::FIELDS_CURRENT,
        )
        .message("the patches set no field Talos v1.14 moved")
    } else {
        Observation::new(
            ConditionType::ConfigFieldsCurrent,
            Status::False,
            reason::FIELDS_MOVED,
        )
        .message(moved.join("; "))
        .severity(Severity::Warning)
    })
}

/// The new status: `old` with this report applied. Conditions keep their transition times.
pub fn status(
    old: &TalosConfigStatus,
    report: &Report,
    generation: Option<i64>,
    now: &Time,
) -> TalosConfigStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    // Never written: a client configuration does not belong in status.
    s.talos_config = None;
    let paused = match &report.paused {
        Some(source) => Observation::new(ConditionType::Paused, Status::True, reason::PAUSED)
            .message(format!("reconciliation is paused: {source}")),
        None => Observation::new(ConditionType::Paused, Status::False, reason::NOT_PAUSED),
    };
    conditions::set(&mut s, &paused, generation, now);
    if let Some(name) = &report.data_secret_name {
        s.data_secret_name = Some(name.clone());
        s.initialization = Some(BootstrapInitialization {
            data_secret_created: Some(true),
        });
        s.ready = Some(true);
    }
    for observation in [
        &report.data,
        &report.client_config,
        &report.config_up_to_date,
        &report.fields_current,
        &report.deleting,
    ]
    .into_iter()
    .flatten()
    {
        conditions::set(&mut s, observation, generation, now);
    }
    // Said only while the spec renders a contract it applies to: a reconcile that got as far
    // as the data and has nothing to say of the fields drops what an earlier one said.
    if report.data.is_some() && report.fields_current.is_none() {
        conditions::remove(&mut s, ConditionType::ConfigFieldsCurrent);
    }
    // Ready follows DataSecretAvailable: it is what the Machine waits for.
    let data_ready = s
        .conditions
        .as_deref()
        .and_then(|c| conditions::get(c, ConditionType::DataSecretAvailable))
        .cloned();
    let ready = match data_ready {
        Some(c) if c.status == "True" => {
            Observation::new(ConditionType::Ready, Status::True, reason::READY)
        }
        Some(c) => Observation::new(ConditionType::Ready, Status::False, reason::NOT_READY)
            .message(c.message.clone())
            .severity(severity_of(&c)),
        None => Observation::new(ConditionType::Ready, Status::False, reason::NOT_READY),
    };
    conditions::set(&mut s, &ready, generation, now);
    // Terminal failures are a v1beta1 notion (informational since v1beta2): problems are
    // conditions here, and values another provider left behind are cleared.
    s.failure_reason = None;
    s.failure_message = None;
    s
}

fn severity_of(c: &Condition) -> Severity {
    if is_error_reason(&c.reason) {
        Severity::Error
    } else {
        Severity::Info
    }
}

/// Reasons that mean a person must act (Warning Events, Error severity).
pub fn is_error_reason(r: &str) -> bool {
    [
        reason::PATCH_FAILED,
        reason::RENDER_FAILED,
        reason::INVALID_SPEC,
        reason::INVALID_SECRET,
        reason::INTERNAL_ERROR,
        reason::RUNNING_CONFIG_DIFFERS,
        reason::VALUE_UNRESOLVED,
        reason::POOL_EXHAUSTED,
    ]
    .contains(&r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn ready_follows_the_data_secret_and_writes_both_contracts() {
        let report = Report {
            data_secret_name: Some("m-bootstrap-data".into()),
            data: Some(Observation::new(
                ConditionType::DataSecretAvailable,
                Status::True,
                reason::AVAILABLE,
            )),
            ..Report::default()
        };
        let s = status(&TalosConfigStatus::default(), &report, Some(3), &now());
        assert_eq!(s.ready, Some(true));
        assert_eq!(
            s.initialization
                .as_ref()
                .and_then(|i| i.data_secret_created),
            Some(true)
        );
        assert_eq!(s.observed_generation, Some(3));
        let c = s.conditions.as_deref().unwrap_or_default();
        assert!(conditions::is_true(c, ConditionType::Ready));
        assert!(!conditions::is_true(c, ConditionType::Paused));
        let legacy = s
            .deprecated
            .as_ref()
            .and_then(|d| d.v1beta1.as_ref())
            .and_then(|v| v.conditions.as_ref())
            .map_or(0, Vec::len);
        assert_eq!(legacy, c.len(), "every condition in both shapes");
    }

    #[test]
    fn a_spec_error_is_not_ready_with_the_message_and_one_event_per_change() {
        let report = Report {
            data: Some(
                Observation::new(
                    ConditionType::DataSecretAvailable,
                    Status::False,
                    reason::PATCH_FAILED,
                )
                .message("patch 0: JSON6902 patches are not supported")
                .severity(Severity::Error),
            ),
            ..Report::default()
        };
        let old = TalosConfigStatus::default();
        let s = status(&old, &report, Some(1), &now());
        assert_eq!(s.ready, None);
        let ready = conditions::get(
            s.conditions.as_deref().unwrap_or_default(),
            ConditionType::Ready,
        )
        .cloned()
        .unwrap_or_default();
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("JSON6902"));
        assert_eq!(
            crate::report::transitions(old.conditions.as_deref(), s.conditions.as_deref()).len(),
            3,
            "Paused, DataSecretAvailable, Ready"
        );
        let again = status(&s, &report, Some(1), &now());
        assert!(
            crate::report::transitions(s.conditions.as_deref(), again.conditions.as_deref())
                .is_empty(),
            "no Event without a change"
        );
        assert!(conditions::equal_ignoring_time(&s, &again));
    }
}
