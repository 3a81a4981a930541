//! What both controllers share: the client, the Event reporter, metrics, a clock, options, the
//! watch caches, the Talos connections and the per-object backoff (and, for now, the TalosConfig
//! controller's bundle generations and render memory). The TalosControlPlane controller keeps
//! its own state in [`crate::controlplane::state::Ctx`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::Reporter;

use api::bootstrap::v1alpha3::TalosConfig;
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use kube::runtime::controller::Action;

use crate::Error;
use crate::cache::Caches;
use crate::metrics::Metrics;
use crate::nodes::{Grpc, TalosNodes};

/// How long a Secret this process wrote is remembered for reconciles the watch has not
/// reached.
const WRITTEN_TTL: Duration = Duration::from_secs(60);
/// How long a failed bundle generation is reported before the next attempt.
const RETRY_GENERATION: Duration = Duration::from_secs(10);

/// How many Secrets a [`Parsed`] keeps what it read of (one or two per cluster).
const MAX_PARSED: usize = 4096;

/// How many failed renders [`FailedRenders`] keeps (one per TalosConfig that cannot render).
const MAX_FAILED_RENDERS: usize = 4096;

/// The TalosConfigs whose last render failed for a spec reason, by `namespace/name`: a digest of
/// the inputs it failed with, and its reason and message. A reconcile with the same inputs (on
/// the object's own status write, or a status change of its Machine or Cluster) reports the same
/// failure without rendering again; any change of an input (the spec's generation, the Machine,
/// the Cluster, the bundle) renders again. Bounded: past [`MAX_FAILED_RENDERS`] entries (those of
/// deleted objects among them) everything is forgotten, and each such object renders once more.
#[derive(Debug, Default)]
pub(crate) struct FailedRenders {
    failed: Mutex<HashMap<String, (u64, &'static str, String)>>,
}

impl FailedRenders {
    /// The failure of the last render of `key`, if it had the inputs `digest`.
    pub(crate) fn get(&self, key: &str, digest: u64) -> Option<crate::SpecError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match failed.get(key) {
            Some((seen, reason, message)) if *seen == digest => Some(crate::SpecError::Unchanged {
                reason,
                message: message.clone(),
            }),
            _ => None,
        }
    }

    /// Remember that the render of `key` with the inputs `digest` failed with `error`; `None`
    /// forgets it (it rendered).
    pub(crate) fn set(&self, key: &str, failure: Option<(u64, &crate::SpecError)>) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some((digest, error)) => {
                if failed.len() >= MAX_FAILED_RENDERS && !failed.contains_key(key) {
                    failed.clear();
                }
                failed.insert(key.to_owned(), (digest, error.reason(), error.to_string()));
            }
            None => {
                failed.remove(key);
            }
        }
    }
}

/// Turns, one at a time per key (a Secret that several reconciles write), in the order they are
/// asked for. Only keys with a turn held or awaited are kept.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Turns {
    /// Wait for the turn of `key`; it ends when the guard is dropped.
    pub(crate) async fn take(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            // Keys nobody holds or waits for (the map's reference is the only one) go.
            keys.retain(|_, turn| Arc::strong_count(turn) > 1);
            Arc::clone(keys.entry(key.to_owned()).or_default())
        };
        turn.lock_owned().await
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|_, turn| Arc::strong_count(turn) > 1);
        keys.len()
    }
}

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
    /// Writes of the endpoints of `<cluster>-talosconfig` Secrets, one at a time per Secret.
    pub(crate) talosconfig_turns: Turns,
    /// TalosConfigs whose last render failed for a spec reason, not rendered again until an
    /// input changes.
    pub(crate) failed_renders: FailedRenders,
    /// Secrets bundles being generated, per cluster, with the reconciles waiting for them.
    generating: Mutex<HashMap<String, Vec<ObjectRef<TalosConfig>>>>,
    /// Parsed secrets bundles by Secret uid, with the resourceVersion they were parsed at:
    /// a bundle is checked (every certificate and key parsed) once per change, not once per
    /// reconcile.
    bundles: Parsed<Arc<machineconfig::SecretsBundle>>,
    /// What the value of each bootstrap data Secret whose bytes differ from its render means
    /// (`bootstrap::render::documents_digest`), by Secret uid and resourceVersion: an adopted
    /// Secret of CABPT's is read and parsed once per change, not once per reconcile.
    pub(crate) stored_documents: Parsed<Option<String>>,
    /// Bundle generations running at once: one per core.
    generation_slots: tokio::sync::Semaphore,
    /// Secrets this process created or found in the last [`WRITTEN_TTL`], by
    /// `namespace/name`, for the reconciles that run before the watch shows them (the other
    /// configs of a cluster would otherwise each try to create its Secrets again).
    written: Mutex<HashMap<String, (Instant, Arc<Secret>)>>,
    /// Failed generations, by `namespace/cluster`: when, what failed, and whether it is worth
    /// retrying; reported until [`RETRY_GENERATION`] has passed.
    generation_failed: Mutex<HashMap<String, (Instant, String, bool)>>,
    /// Reconciles to run again (a bundle they waited for exists now).
    wake_tx: mpsc::UnboundedSender<ObjectRef<TalosConfig>>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<TalosConfig>>>>,
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

impl Context {
    pub fn new(client: kube::Client, options: Options) -> Context {
        let (wake_tx, wake_rx) = mpsc::unbounded();
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
            failed_renders: FailedRenders::default(),
            talosconfig_turns: Turns::default(),
            generating: Mutex::new(HashMap::new()),
            bundles: Parsed::default(),
            stored_documents: Parsed::default(),
            generation_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
            written: Mutex::new(HashMap::new()),
            generation_failed: Mutex::new(HashMap::new()),
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
        }
    }

    /// Exponential backoff per object for transient errors: 1 s doubling to 5 min.
    pub(crate) fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300))
    }

    /// Claim the generation of `cluster`'s secrets bundle. Either way `waiter` is reconciled
    /// again when the claim is dropped; `None`: another reconcile holds it.
    pub(crate) fn claim_generation(
        self: &Arc<Self>,
        cluster: &str,
        waiter: ObjectRef<TalosConfig>,
    ) -> Option<GenerationClaim> {
        let mut generating = self.generating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiters) = generating.get_mut(cluster) {
            waiters.push(waiter);
            return None;
        }
        generating.insert(cluster.to_owned(), vec![waiter]);
        Some(GenerationClaim {
            ctx: Arc::clone(self),
            cluster: cluster.to_owned(),
        })
    }

    /// A slot to generate a bundle in; waits while every core generates one.
    pub(crate) async fn generation_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.generation_slots
            .acquire()
            .await
            .map_err(|_| Error::Missing("the manager is stopping".into()))
    }

    /// Record that the generation for `cluster` failed (a stored bundle is remembered by
    /// [`Context::written`]).
    pub(crate) fn generation_failed(&self, cluster: &str, e: &Error) {
        tracing::warn!(cluster, error = %e, "generating the secrets bundle failed");
        let mut failed = self
            .generation_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, (at, ..)| at.elapsed() < RETRY_GENERATION);
        failed.insert(
            cluster.to_owned(),
            (Instant::now(), e.to_string(), e.is_transient()),
        );
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

    /// The failure of the last generation for `key` (`namespace/cluster`), until it is time
    /// to try again.
    pub(crate) fn generation_failure(&self, key: &str, cluster: &str) -> Result<(), Error> {
        let failed = self
            .generation_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match failed.get(key) {
            Some((at, message, transient)) if at.elapsed() < RETRY_GENERATION => {
                Err(Error::Bundle {
                    cluster: cluster.to_owned(),
                    message: message.clone(),
                    transient: *transient,
                })
            }
            _ => Ok(()),
        }
    }

    /// The bundle `secret` holds, parsed and checked once per resourceVersion of the Secret.
    pub(crate) fn bundle_of(
        &self,
        secret: &Secret,
    ) -> Result<Arc<machineconfig::SecretsBundle>, Error> {
        self.bundles.get(secret, |s| {
            crate::bootstrap::secrets::parse_bundle(s).map(Arc::new)
        })
    }

    /// The stream of reconciles to run again; the first caller gets it.
    pub(crate) fn take_wakeups(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<TalosConfig>>> {
        self.wake_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
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

/// A claimed bundle generation; when it ends (stored, failed or cancelled) whoever waited for
/// it is reconciled again.
pub(crate) struct GenerationClaim {
    ctx: Arc<Context>,
    cluster: String,
}

impl Drop for GenerationClaim {
    fn drop(&mut self) {
        let waiters = self
            .ctx
            .generating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.cluster)
            .unwrap_or_default();
        for waiter in waiters {
            // The receiver lives as long as the controller; once it is gone nobody waits.
            let _ = self.ctx.wake_tx.unbounded_send(waiter);
        }
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

    #[test]
    fn a_failed_render_is_remembered_for_its_inputs_until_it_renders() {
        let failed = FailedRenders::default();
        let error = crate::SpecError::Invalid("no".into());
        assert!(failed.get("ns/a", 1).is_none());
        failed.set("ns/a", Some((1, &error)));
        match failed.get("ns/a", 1) {
            Some(crate::SpecError::Unchanged { reason, message }) => {
                assert_eq!((reason, message.as_str()), (error.reason(), "no"));
            }
            other => panic!("{other:?}"),
        }
        assert!(failed.get("ns/a", 2).is_none(), "other inputs render");
        assert!(failed.get("ns/b", 1).is_none(), "per object");
        failed.set("ns/a", None);
        assert!(failed.get("ns/a", 1).is_none(), "forgotten once rendered");
        // Bounded: past the limit, everything is forgotten once.
        for n in 0..MAX_FAILED_RENDERS {
            failed.set(&format!("ns/{n}"), Some((1, &error)));
        }
        failed.set("ns/last", Some((1, &error)));
        assert!(failed.get("ns/0", 1).is_none());
        assert!(failed.get("ns/last", 1).is_some());
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

    #[tokio::test]
    async fn turns_of_one_key_are_taken_one_at_a_time_and_unused_keys_are_dropped() {
        use futures::FutureExt;
        let turns = Turns::default();
        let held = turns.take("ns/a").await;
        assert!(
            turns.take("ns/a").now_or_never().is_none(),
            "a second turn of ns/a waits"
        );
        let other = turns.take("ns/b").now_or_never();
        assert!(other.is_some(), "another key does not wait");
        drop(other);
        assert_eq!(turns.kept(), 1, "only ns/a, held, is kept");
        drop(held);
        assert!(turns.take("ns/a").now_or_never().is_some(), "its turn now");
        assert_eq!(turns.kept(), 0);
    }

    #[tokio::test]
    async fn bundle_generations_run_at_most_one_per_core() {
        let ctx = offline();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut held = Vec::new();
        for _ in 0..cores {
            held.push(ctx.generation_slot().await.expect("a slot"));
        }
        let more =
            tokio::time::timeout(std::time::Duration::from_millis(50), ctx.generation_slot());
        assert!(more.await.is_err(), "no slot beyond {cores}");
        held.pop();
        assert!(ctx.generation_slot().await.is_ok(), "one freed, one taken");
    }
}
