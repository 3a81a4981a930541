//! Per-controller metrics (prometheus-client): reconcile totals, errors by category, durations.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

/// How a TalosConfig's render ended: `rendered`, `failed` (for a spec reason), or `unchanged`
/// (not rendered: its inputs are those of a render that failed before).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenderLabels {
    pub outcome: &'static str,
}

/// One object: namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// The metrics every controller reports.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    /// Renders of TalosConfigs' machine configurations, per outcome.
    pub renders: Family<RenderLabels, Counter>,
    /// Talos API calls made to the nodes of workload clusters, per method and outcome (ok, or
    /// the error's kind).
    pub talos_requests: Family<TalosCallLabels, Counter>,
    /// Talos API call latency, per method.
    pub talos_duration: Family<TalosMethodLabel, Histogram>,
    /// Rollout progress per TalosControlPlane: machines still to replace.
    pub rollout_outdated: Family<ObjectLabels, Gauge>,
    /// 1 while this replica holds the leader Lease (or runs without leader election).
    pub leader: Gauge,
    /// Always 1, labelled with the build's version and the contracts it implements.
    pub build_info: Family<BuildLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TalosCallLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TalosMethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub contracts: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            renders: Family::default(),
            talos_requests: Family::default(),
            talos_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            rollout_outdated: Family::default(),
            leader: Gauge::default(),
            build_info: Family::default(),
        }
    }
}

impl Metrics {
    /// Register under `talos_capi_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("talos_capi");
        sub.register(
            "reconciles",
            "Reconciles run, per controller",
            self.reconciles.clone(),
        );
        sub.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error category",
            self.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Reconcile duration, per controller",
            self.duration.clone(),
        );
        sub.register(
            "renders",
            "Machine configuration renders of TalosConfigs, per outcome: rendered, failed (for a spec reason) or unchanged (not rendered again: the inputs of a failed render)",
            self.renders.clone(),
        );
        sub.register(
            "talos_api_requests",
            "Talos API calls made to workload cluster nodes, per method and outcome",
            self.talos_requests.clone(),
        );
        sub.register(
            "talos_api_request_duration_seconds",
            "Talos API call latency, per method",
            self.talos_duration.clone(),
        );
        sub.register(
            "controlplane_outdated_machines",
            "Control-plane machines a rollout still has to replace, per TalosControlPlane (0 when none)",
            self.rollout_outdated.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica leads (holds the leader Lease, or runs without leader election)",
            self.leader.clone(),
        );
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                contracts: "v1beta1,v1beta2",
            })
            .set(1);
        sub.register(
            "build_info",
            "The running build: version and Cluster API contracts",
            self.build_info.clone(),
        );
    }

    /// Count a render of a TalosConfig that ended as `outcome`.
    pub fn rendered(&self, outcome: &'static str) {
        self.renders.get_or_create(&RenderLabels { outcome }).inc();
    }

    /// How many renders ended as `outcome`.
    pub fn renders(&self, outcome: &'static str) -> u64 {
        self.renders.get_or_create(&RenderLabels { outcome }).get()
    }

    /// Record how many machines of a control plane are outdated; `None` forgets it (deleted).
    pub fn rollout(&self, namespace: &str, name: &str, outdated: Option<usize>) {
        let labels = ObjectLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match outdated {
            Some(n) => {
                self.rollout_outdated
                    .get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => {
                self.rollout_outdated.remove(&labels);
            }
        }
    }

    pub fn observe(&self, controller: &'static str, took: Duration, error: Option<&'static str>) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(category) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
    }
}

impl talos_api::Observer for Metrics {
    fn observe(&self, method: &'static str, took: Duration, error: Option<&talos_api::Error>) {
        let outcome = error.map_or("ok", talos_api::Error::kind);
        self.talos_requests
            .get_or_create(&TalosCallLabels { method, outcome })
            .inc();
        self.talos_duration
            .get_or_create(&TalosMethodLabel { method })
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
        out
    }

    #[test]
    fn rollout_progress_is_a_gauge_per_control_plane_forgotten_on_deletion() {
        let m = Metrics::default();
        m.rollout("ns", "cp", Some(2));
        let line = "talos_capi_controlplane_outdated_machines{namespace=\"ns\",name=\"cp\"} 2";
        assert!(text(&m).contains(line), "{}", text(&m));
        m.rollout("ns", "cp", Some(0));
        assert!(text(&m).contains(&line.replace(" 2", " 0")));
        m.rollout("ns", "cp", None);
        assert!(!text(&m).contains("name=\"cp\""));
    }

    #[test]
    fn talos_calls_are_counted_per_method_and_outcome_and_timed() {
        use talos_api::Observer;
        let m = Metrics::default();
        Observer::observe(&m, "etcd_member_list", Duration::from_millis(3), None);
        Observer::observe(&m, "etcd_member_list", Duration::from_millis(5), None);
        let timeout = talos_api::Error::Timeout(Duration::from_secs(10));
        Observer::observe(&m, "bootstrap", Duration::from_secs(10), Some(&timeout));
        let out = text(&m);
        for line in [
            "talos_capi_talos_api_requests_total{method=\"etcd_member_list\",outcome=\"ok\"} 2",
            "talos_capi_talos_api_requests_total{method=\"bootstrap\",outcome=\"Timeout\"} 1",
            "talos_capi_talos_api_request_duration_seconds_count{method=\"etcd_member_list\"} 2",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }
}
