//! What only the TalosConfig controller keeps between reconciles, beside the context both
//! controllers share ([`Context`], which [`Ctx`] dereferences to): the bundle generations under
//! way and their failures, the renders that failed, what adopted data Secrets mean, and the
//! turns of the talosconfig writes.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::bootstrap::v1alpha3::TalosConfig;
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::context::Parsed;
use crate::{Context, Error};

/// How long a failed bundle generation is reported before the next attempt.
const RETRY_GENERATION: Duration = Duration::from_secs(10);

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

/// The TalosConfig controller's context: the shared [`Context`] and its own state.
pub struct Ctx {
    shared: Arc<Context>,
    /// Writes of the endpoints of `<cluster>-talosconfig` Secrets, one at a time per Secret.
    pub(crate) talosconfig_turns: Turns,
    /// TalosConfigs whose last render failed for a spec reason, not rendered again until an
    /// input changes.
    pub(crate) failed_renders: FailedRenders,
    /// Secrets bundles being generated, per cluster, with the reconciles waiting for them.
    generating: Mutex<HashMap<String, Vec<ObjectRef<TalosConfig>>>>,
    /// What the value of each bootstrap data Secret whose bytes differ from its render means
    /// (`bootstrap::render::documents_digest`), by Secret uid and resourceVersion: an adopted
    /// Secret of CABPT's is read and parsed once per change, not once per reconcile.
    pub(crate) stored_documents: Parsed<Option<String>>,
    /// Bundle generations running at once: one per core.
    generation_slots: tokio::sync::Semaphore,
    /// Failed generations, by `namespace/cluster`: when, what failed, and whether it is worth
    /// retrying; reported until [`RETRY_GENERATION`] has passed.
    generation_failed: Mutex<HashMap<String, (Instant, String, bool)>>,
    /// Reconciles to run again (a bundle they waited for exists now).
    wake_tx: mpsc::UnboundedSender<ObjectRef<TalosConfig>>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<TalosConfig>>>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

impl Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

impl Ctx {
    pub fn new(shared: Arc<Context>) -> Ctx {
        let (wake_tx, wake_rx) = mpsc::unbounded();
        Ctx {
            shared,
            talosconfig_turns: Turns::default(),
            failed_renders: FailedRenders::default(),
            generating: Mutex::new(HashMap::new()),
            stored_documents: Parsed::default(),
            generation_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
            generation_failed: Mutex::new(HashMap::new()),
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
        }
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

    /// The stream of reconciles to run again; the first caller gets it.
    pub(crate) fn take_wakeups(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<TalosConfig>>> {
        self.wake_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A claimed bundle generation; when it ends (stored, failed or cancelled) whoever waited for
/// it is reconciled again.
pub(crate) struct GenerationClaim {
    ctx: Arc<Ctx>,
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

    /// A context whose client never connects: one is needed only to build it.
    fn offline() -> Ctx {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client");
        Ctx::new(Arc::new(Context::new(client, crate::Options::default())))
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
