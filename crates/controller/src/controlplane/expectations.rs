//! Expectations (as Kubernetes' ReplicaSet controller keeps them): Machines a reconcile created,
//! deleted or annotated that the shared cache does not show yet. Until it does, the next
//! reconcile of that control plane takes no step, so a lagging watch (a busy API server) never
//! makes it create a second machine for the same replica, delete a second one, or take a step
//! twice from a marker it already moved on (one upgrade finished, and said so, twice).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api::capi::Machine;
use kube::{Resource, ResourceExt};

/// After this long the cache is trusted again, whatever it shows (the ReplicaSet controller's
/// expectations expire after 5 minutes too).
const PATIENCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expected {
    created: Vec<String>,
    deleted: Vec<String>,
    annotated: Vec<Annotated>,
    since: Instant,
}

/// An annotation written on a machine: `value` `None` when it was removed.
#[derive(Debug)]
struct Annotated {
    machine: String,
    key: String,
    value: Option<String>,
}

#[derive(Debug, Default)]
pub struct Expectations(Mutex<HashMap<String, Expected>>);

impl Expectations {
    fn record(&self, key: &str, f: impl FnOnce(&mut Expected)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = all.entry(key.to_owned()).or_insert_with(|| Expected {
            created: Vec::new(),
            deleted: Vec::new(),
            annotated: Vec::new(),
            since: Instant::now(),
        });
        e.since = Instant::now();
        f(e);
    }

    pub fn created(&self, key: &str, machine: &str) {
        self.record(key, |e| e.created.push(machine.to_owned()));
    }

    pub fn deleted(&self, key: &str, machine: &str) {
        self.record(key, |e| e.deleted.push(machine.to_owned()));
    }

    /// `machine`'s annotation `key` was set to `value` (`None`: removed); the last write of an
    /// annotation is the one awaited.
    pub fn annotated(&self, key: &str, machine: &str, annotation: &str, value: Option<&str>) {
        self.record(key, |e| {
            e.annotated
                .retain(|a| a.machine != machine || a.key != annotation);
            e.annotated.push(Annotated {
                machine: machine.to_owned(),
                key: annotation.to_owned(),
                value: value.map(str::to_owned),
            })
        });
    }

    /// `None` when `machines` (from the cache) show every change made for `key` (and the
    /// expectation is dropped); else what is still awaited.
    pub fn pending(&self, key: &str, machines: &[Machine]) -> Option<String> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = all.get(key)?;
        let seen = |name: &String| machines.iter().any(|m| &m.name_any() == name);
        let going = |name: &String| {
            machines
                .iter()
                .find(|m| &m.name_any() == name)
                .is_none_or(|m| m.meta().deletion_timestamp.is_some())
        };
        // A machine gone or going needs no annotation any more.
        let shows = |a: &Annotated| {
            machines
                .iter()
                .find(|m| m.name_any() == a.machine)
                .is_none_or(|m| {
                    m.meta().deletion_timestamp.is_some()
                        || m.annotations().get(&a.key) == a.value.as_ref()
                })
        };
        let waiting: Vec<&String> = e
            .created
            .iter()
            .filter(|n| !seen(n))
            .chain(e.deleted.iter().filter(|n| !going(n)))
            .chain(e.annotated.iter().filter(|a| !shows(a)).map(|a| &a.machine))
            .collect();
        if waiting.is_empty() || e.since.elapsed() > PATIENCE {
            all.remove(key);
            return None;
        }
        Some(format!(
            "waiting for the cache to show the changes to machines {}",
            waiting
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, deleting: bool) -> Machine {
        let mut m = Machine::new(name, Default::default());
        if deleting {
            m.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        m
    }

    #[test]
    fn steps_wait_until_the_cache_shows_what_was_done() {
        let e = Expectations::default();
        assert_eq!(e.pending("ns/cp", &[]), None);
        e.created("ns/cp", "cp-a");
        e.deleted("ns/cp", "cp-old");
        let before = [machine("cp-old", false)];
        assert!(
            e.pending("ns/cp", &before)
                .is_some_and(|m| m.contains("cp-a") && m.contains("cp-old"))
        );
        let after = [machine("cp-old", true), machine("cp-a", false)];
        assert_eq!(e.pending("ns/cp", &after), None);
        // Dropped once satisfied.
        assert_eq!(e.pending("ns/cp", &before), None);
        // Other control planes are not concerned.
        e.created("ns/other", "x");
        assert_eq!(e.pending("ns/cp", &[]), None);
    }

    fn annotated(name: &str, value: Option<&str>) -> Machine {
        let mut m = machine(name, false);
        if let Some(v) = value {
            m.annotations_mut().insert("marker".into(), v.into());
        }
        m
    }

    #[test]
    fn a_marker_written_or_removed_is_awaited_until_the_cache_shows_it() {
        let e = Expectations::default();
        e.annotated("ns/cp", "cp-a", "marker", None);
        // Written twice in one step: the last value is awaited.
        e.annotated("ns/cp", "cp-b", "marker", Some("v1"));
        e.annotated("ns/cp", "cp-b", "marker", Some("v2"));
        let stale = [annotated("cp-a", Some("v1")), annotated("cp-b", Some("v1"))];
        assert!(
            e.pending("ns/cp", &stale)
                .is_some_and(|m| m.contains("cp-a") && m.contains("cp-b"))
        );
        let half = [annotated("cp-a", None), annotated("cp-b", Some("v1"))];
        assert!(
            e.pending("ns/cp", &half)
                .is_some_and(|m| !m.contains("cp-a") && m.contains("cp-b"))
        );
        // A machine deleted meanwhile is not waited for.
        let fresh = [annotated("cp-a", None)];
        assert_eq!(e.pending("ns/cp", &fresh), None);
        e.annotated("ns/cp", "cp-b", "marker", Some("v2"));
        let fresh = [annotated("cp-a", None), annotated("cp-b", Some("v2"))];
        assert_eq!(e.pending("ns/cp", &fresh), None);
    }
}
