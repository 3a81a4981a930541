//! What both controllers share: the client, the Event reporter, metrics, a clock, options, the
//! watch caches, the Talos connections, Secrets written moments ago, parsed bundles and the
//! per-object backoff. Each controller keeps its own state beside it
//! ([`crate::bootstrap::state::Ctx`], [`crate::controlplane::state::Ctx`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::Reporter;

use kube::runtime::controller::Action;

use crate::Error;
use crate::cache::Caches;
use crate::metrics::Metrics;
use crate::nodes::{Grpc, TalosNodes};

/// How long a Secret this process wrote is remembered for reconciles the watch has not
/// reached.
const WRITTEN_TTL: Duration = Duration::from_secs(60);

/// How many Secrets a [`Parsed`] keeps what it read of (one or two per cluster).
const MAX_PARSED: usize = 4096;

/// The time source; tests may fix it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Time;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        Time(Timestamp::now())
    }
}

/// How the controllers run (the manager's flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch one namespace only (Cluster API's `--namespace`).
    pub namespace: Option<String>,
    /// Only objects carrying `cluster.x-k8s.io/watch-filter=<value>` (Cluster API's
    /// `--watch-filter`).
    pub watch_filter: Option<String>,
    /// TalosConfig reconciles running at once.
    pub concurrency: u16,
    /// TalosControlPlane reconciles running at once.
    pub controlplane_concurrency: u16,
    /// The field manager and Event reporter name.
    pub manager_name: String,
    /// Also serve TalosConfigs owned by MachinePools (Cluster API's MachinePool feature).
    pub machine_pools: bool,
    /// Run the TalosConfig controller (the bootstrap provider).
    pub bootstrap: bool,
    /// Run the TalosControlPlane controller (the control-plane provider).
    pub controlplane: bool,
    /// How often a steady control plane's nodes are asked whether the configuration they run
    /// still is the one controlPlaneConfig renders (a dry-run apply each); zero: never.
    pub drift_check: std::time::Duration,
    /// How often a steady control plane's nodes are asked for etcd and service health over the
    /// Talos API (nothing in Kubernetes announces a node whose etcd fails, so this bounds how
    /// late that is noticed). Kubernetes changes, workload Node readiness included, reconcile
    /// at once whatever it is.
    pub health_check: std::time::Duration,
    /// How old a control-plane TalosConfig of ours with no Machine must be before it counts as
    /// left behind by a machine creation cut short, and is removed with its infrastructure
    /// machine.
    pub leftover_grace: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            watch_filter: None,
            concurrency: 10,
            controlplane_concurrency: 10,
            manager_name: "talos-capi".into(),
            machine_pools: false,
            bootstrap: true,
            controlplane: true,
            drift_check: std::time::Duration::from_secs(300),
            health_check: std::time::Duration::from_secs(30),
            leftover_grace: std::time::Duration::from_secs(60),
        }
    }
}

/// How often an object refused for an unusable Secret looks at it again.
const SECRET_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

/// Shared by every reconcile of every controller.
pub struct Context {
    pub client: kube::Client,
    pub reporter: Reporter,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub options: Options,
    /// Watch-fed Machines, Clusters and cluster Secrets, shared by every controller.
    pub caches: Caches,
    /// How the control-plane controller reaches Talos nodes.
    pub nodes: Arc<dyn TalosNodes>,
    failures: Mutex<HashMap<String, u32>>,
    /// Parsed secrets bundles by Secret uid, with the resourceVersion they were parsed at:
    /// a bundle is checked (every certificate and key parsed) once per change, not once per
    /// reconcile.
    bundles: Parsed<Arc<machineconfig::SecretsBundle>>,
    /// Secrets this process created or found in the last [`WRITTEN_TTL`], by
    /// `namespace/name`, for the reconciles that run before the watch shows them (the other
    /// configs of a cluster would otherwise each try to create its Secrets again).
    written: Mutex<HashMap<String, (Instant, Arc<Secret>)>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What was read from Secrets, by Secret uid, kept with the resourceVersion it was read at: a
/// Secret is parsed once per change, not once per reconcile. Bounded: past [`MAX_PARSED`]
/// entries (Secrets of deleted clusters among them) everything is dropped and read again once.
#[derive(Debug)]
pub struct Parsed<T> {
    seen: Mutex<HashMap<String, (String, T)>>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Parsed<T> {
    /// What was read from this version of `secret`, if it was.
    pub(crate) fn known(&self, secret: &Secret) -> Option<T> {
        let (uid, version) = (
            secret.metadata.uid.as_ref()?,
            secret.metadata.resource_version.as_ref()?,
        );
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(uid)
            .filter(|(seen, _)| seen == version)
            .map(|(_, value)| value.clone())
    }

    /// What `read` makes of `secret`, from memory when this version of it was read before
    /// (a failure is not kept: it is read again next time).
    pub(crate) fn get<E>(
        &self,
        secret: &Secret,
        read: impl FnOnce(&Secret) -> Result<T, E>,
    ) -> Result<T, E> {
        let (Some(uid), Some(version)) = (
            secret.metadata.uid.as_ref(),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return read(secret);
        };
        let lock = || self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, value)) = lock().get(uid)
            && seen == version
        {
            return Ok(value.clone());
        }
        let value = read(secret)?;
        let mut seen = lock();
        if seen.len() >= MAX_PARSED {
            seen.clear();
        }
        seen.insert(uid.clone(), (version.clone(), value.clone()));
        Ok(value)
    }
}

/// The secrets bundle a `<cluster>-talos` Secret holds (ours or CABPT's keys).
pub fn parse_bundle(secret: &Secret) -> Result<machineconfig::SecretsBundle, Error> {
    let data: std::collections::BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    machineconfig::SecretsBundle::from_cabpt_secret(&data).map_err(|e| Error::InvalidSecret {
        name: kube::ResourceExt::name_any(secret),
        reason: e.to_string(),
    })
}

impl Context {
    pub fn new(client: kube::Client, options: Options) -> Context {
        let metrics = Metrics::default();
        let nodes = Grpc::new(
            std::time::Duration::from_secs(10),
            Some(Arc::new(metrics.clone())),
        );
        Context {
            client,
            reporter: Reporter {
                controller: options.manager_name.clone(),
                instance: std::env::var("POD_NAME").ok(),
            },
            metrics,
            clock: Arc::new(SystemClock),
            options,
            caches: Caches::default(),
            nodes: Arc::new(nodes),
            failures: Mutex::new(HashMap::new()),
            bundles: Parsed::default(),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Exponential backoff per object for transient errors: 1 s doubling to 5 min.
    pub(crate) fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300))
    }

    /// A Secret as the watch last showed it, or else as this process wrote (or found) it
    /// moments ago; a bootstrap data Secret carries the digest of its value
    /// ([`crate::cache::VALUE_DIGEST_KEY`]).
    pub(crate) fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        let key = format!("{ns}/{name}");
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = self.caches.secret(ns, name) {
            // The watch has caught up: from now on its word counts (a deletion included).
            written.remove(&key);
            return Some(cached);
        }
        let (at, secret) = written.get(&key)?;
        (at.elapsed() < WRITTEN_TTL).then(|| Arc::clone(secret))
    }

    /// Remember a Secret this process created or found, until the watch shows it.
    pub(crate) fn written(&self, mut secret: Secret) -> Arc<Secret> {
        crate::cache::slim_secret(&mut secret);
        let key = format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        let secret = Arc::new(secret);
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|_, (at, _)| at.elapsed() < WRITTEN_TTL);
        written.insert(key, (Instant::now(), Arc::clone(&secret)));
        secret
    }

    /// The bundle `secret` holds, parsed and checked once per resourceVersion of the Secret.
    pub(crate) fn bundle_of(
        &self,
        secret: &Secret,
    ) -> Result<Arc<machineconfig::SecretsBundle>, Error> {
        self.bundles.get(secret, |s| parse_bundle(s).map(Arc::new))
    }

    /// Run one reconcile of `controller` for the object `key`, once the shared caches have
    /// listed: timed and counted, and its backoff forgotten when it succeeds.
    pub(crate) async fn reconciled(
        &self,
        controller: &'static str,
        key: &str,
        reconcile: impl std::future::Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        // Reads come from the shared caches: never from one that has not listed yet.
        if !self.caches.is_ready() {
            tracing::debug!(controller, object = %key, "waiting for the caches to list");
            self.caches.ready().await;
        }
        let started = std::time::Instant::now();
        let result = reconcile.await;
        let took = started.elapsed();
        tracing::debug!(controller, object = %key, ok = result.is_ok(), elapsed = ?took, "reconciled");
        self.metrics
            .observe(controller, took, result.as_ref().err().map(Error::category));
        if result.is_ok() {
            self.succeeded(key);
        }
        result
    }

    /// After a failed reconcile: transient errors are retried with backoff per object; the
    /// others are in status and an Event, and wait for a change to the object.
    pub(crate) fn after_error(&self, controller: &'static str, key: &str, error: &Error) -> Action {
        if error.is_transient() {
            let wait = self.backoff(key);
            tracing::warn!(controller, object = %key, error = %error, retry_in = ?wait, "transient error");
            Action::requeue(wait)
        } else if matches!(error, Error::InvalidSecret { .. }) {
            // A Secret may be mended without an event that reaches this object (one not
            // labelled for its cluster, or not owned by it).
            tracing::info!(controller, object = %key, error = %error, "checking the Secret again later");
            Action::requeue(SECRET_RECHECK)
        } else if matches!(error, Error::Decode { .. }) {
            // Warned about once per object and generation where it was found
            // (`cache::warn_undecodable`); every reconcile of it ends here.
            tracing::debug!(controller, object = %key, error = %error, "cannot be read; waiting for a change");
            Action::await_change()
        } else {
            tracing::info!(controller, object = %key, error = %error, "waiting for a change");
            Action::await_change()
        }
    }

    pub(crate) fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context whose client never connects: one is needed only to build it.
    fn offline() -> Context {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        Context::new(
            kube::Client::try_from(config).expect("a client"),
            Options::default(),
        )
    }

    #[tokio::test]
    async fn transient_errors_back_off_per_object_from_1_s_doubling_to_5_min() {
        let ctx = offline();
        let waits: Vec<u64> = (0..11).map(|_| ctx.backoff("ns/a").as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(ctx.backoff("ns/b").as_secs(), 1, "each object its own");
        ctx.succeeded("ns/a");
        assert_eq!(ctx.backoff("ns/a").as_secs(), 1, "a success starts over");
    }

    #[test]
    fn a_secret_is_parsed_once_per_resource_version_and_a_failure_again() {
        let parsed: Parsed<usize> = Parsed::default();
        let secret = |version: &str| Secret {
            metadata: kube::api::ObjectMeta {
                uid: Some("u1".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reads = std::cell::Cell::new(0);
        let read = |_: &Secret| -> Result<usize, ()> {
            reads.set(reads.get() + 1);
            Ok(reads.get())
        };
        assert_eq!(parsed.get(&secret("1"), read), Ok(1));
        assert_eq!(parsed.get(&secret("1"), read), Ok(1), "from memory");
        assert_eq!(reads.get(), 1);
        assert_eq!(
            parsed.get(&secret("2"), read),
            Ok(2),
            "a new version is read"
        );
        assert_eq!(parsed.get(&secret("3"), |_| Err::<usize, ()>(())), Err(()));
        assert_eq!(
            parsed.get(&secret("3"), read),
            Ok(3),
            "a failure is not kept"
        );
    }
}
