//! Watch-fed caches of what every controller reads: Machines, Clusters and the Secrets of
//! Cluster API clusters. One watch per kind feeds one store shared by all controllers; each
//! controller subscribes to the same stream for its triggers. Because a reflector writes an
//! event into its store before it hands the event to subscribers, a reconcile triggered by a
//! change always reads that change (never an older copy from a second, slower watch).
//!
//! Machines and Clusters are watched item by item ([`crate::raw`]) and decoded once, as they
//! arrive, into their typed form (a third of the memory of the JSON form, and no decode per
//! read). One that does not decode (a field nested past serde_json's limit, a value of the wrong
//! type) is kept as its metadata with the decoding error, so it costs only the reconciles that
//! read it, never the whole watch.

use std::sync::{Arc, Mutex};

use api::capi::{Cluster, GROUP as CAPI_GROUP, Machine, VERSION as CAPI_VERSION, labels};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::raw::{RawObject, map_event};
use crate::{Error, Options, raw};

/// The watches [`Caches::run`] drives.
const WATCHES: u8 = 4;

/// Counts a watch's first complete list (relists after a lost watch do not count again).
fn first_list(listed: &tokio::sync::watch::Sender<u8>) -> impl Fn() + '_ {
    let once = std::sync::Once::new();
    move || once.call_once(|| listed.send_modify(|n| *n += 1))
}

/// The first wait after a watch fails, doubled after each further failure up to
/// [`WATCH_RETRY_MAX`].
const WATCH_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(800);
const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// `events` (a watch) retried after each failure with a wait that doubles from 0.8 s to 30 s
/// (each drawn from its upper half, so that many watches of one server spread out), and starts
/// over only once the watch lists or sees a change. kube-runtime's `default_backoff` starts over
/// on any event, and its watcher announces each list attempt (`Event::Init`) before making it,
/// so an API server that stays unreachable would be asked about once a second for ever.
pub(crate) fn retried<K>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>>,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> {
    let mut failures: u32 = 0;
    events.then(move |event| {
        let wait = match &event {
            Err(_) => {
                failures = failures.saturating_add(1);
                Some(retry_wait(failures, jitter()))
            }
            Ok(watcher::Event::Init) => None,
            Ok(_) => {
                failures = 0;
                None
            }
        };
        async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            event
        }
    })
}

/// The wait after the `failures`th failure in a row, `jitter` (0 to 1) of the way through the
/// upper half of its doubling.
fn retry_wait(failures: u32, jitter: f64) -> std::time::Duration {
    let full = WATCH_RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(WATCH_RETRY_MAX);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number from 0 to 1 that differs between watches and retries (the clock's nanoseconds):
/// enough to spread retries, no randomness needed.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos) / 1e9
}

/// In cached bootstrap data Secrets, the SHA-256 (hex) of `value` replaces the value itself:
/// a thousand machines' configurations need not sit in memory to be compared.
pub const VALUE_DIGEST_KEY: &str = "talos-capi.internal/value-sha256";

pub fn value_digest(value: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the caches keep of an object: no managed fields, no last-applied annotation.
fn slim_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

pub(crate) fn slim_dynamic(obj: &mut DynamicObject) {
    slim_meta(&mut obj.metadata);
}

/// What a metadata-only cache keeps: the slimmed metadata, no content.
fn metadata_only(obj: RawObject) -> DynamicObject {
    let mut obj = obj.metadata_only();
    slim_dynamic(&mut obj);
    obj
}

/// Annotation on a cached object that did not decode: the error. Set only in the cache.
const UNDECODABLE: &str = "talos-capi.internal/undecodable";

/// How a watched dynamic object becomes its cached typed form.
pub(crate) trait Typed:
    Resource<DynamicType = ()> + DeserializeOwned + Clone + Send + Sync + 'static
{
    const KIND: &'static str;
    /// The object with only `metadata`, standing in for one that does not decode.
    fn stand_in(metadata: kube::api::ObjectMeta) -> Self;
    /// Drops what no controller reads, before the object is stored.
    fn slim(&mut self) {}
}

/// The Machine conditions the controllers read, the only ones the cache keeps: Cluster API's
/// Ready and Available, a MachineHealthCheck's HealthCheckSucceeded and OwnerRemediated, and
/// the two the control plane sets on its machines (`status::machine_conditions`; compared with
/// what is stored before each write, so both must be kept). Cluster API v1.14 writes nine or
/// more conditions on every Machine, most with a message.
pub(crate) const MACHINE_CONDITIONS_READ: [&str; 6] = [
    "Ready",
    "Available",
    "HealthCheckSucceeded",
    "OwnerRemediated",
    "UpToDate",
    "EtcdMemberHealthy",
];

impl Typed for Machine {
    const KIND: &'static str = "Machine";
    fn stand_in(metadata: kube::api::ObjectMeta) -> Self {
        Machine {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
    fn slim(&mut self) {
        if let Some(conditions) = self.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions.retain(|c| MACHINE_CONDITIONS_READ.contains(&c.type_.as_str()));
            conditions.shrink_to_fit();
        }
    }
}

impl Typed for api::bootstrap::v1alpha3::TalosConfig {
    const KIND: &'static str = "TalosConfig";
    fn stand_in(metadata: kube::api::ObjectMeta) -> Self {
        api::bootstrap::v1alpha3::TalosConfig {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

impl Typed for Cluster {
    const KIND: &'static str = "Cluster";
    fn stand_in(metadata: kube::api::ObjectMeta) -> Self {
        Cluster {
            metadata,
            spec: Default::default(),
            status: None,
        }
    }
}

/// The typed form of `obj` (without its managed fields), or a stand-in carrying the error.
pub(crate) fn typed<K: Typed>(obj: RawObject) -> K {
    match obj.decode::<K>() {
        Ok(mut k) => {
            slim_meta(k.meta_mut());
            k.slim();
            k
        }
        Err(e) => K::stand_in(undecodable_meta(K::KIND, obj.metadata, &e)),
    }
}

/// The dynamic form of `obj` (without its managed fields), or its metadata alone carrying the
/// error.
pub(crate) fn dynamic(obj: RawObject) -> DynamicObject {
    match obj.dynamic() {
        Ok(mut d) => {
            slim_dynamic(&mut d);
            d
        }
        Err(e) => {
            let mut stand_in = obj.metadata_only();
            stand_in.metadata = undecodable_meta(&obj.kind, obj.metadata, &e);
            stand_in
        }
    }
}

/// The metadata of an object that does not decode, slimmed, with the error (warned about
/// once per generation, see [`warn_undecodable`]).
fn undecodable_meta(
    kind: &str,
    mut metadata: kube::api::ObjectMeta,
    error: &serde_json::Error,
) -> kube::api::ObjectMeta {
    slim_meta(&mut metadata);
    warn_undecodable(kind, &metadata, error);
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(UNDECODABLE.to_owned(), error.to_string());
    metadata
}

/// How many (object, generation) pairs [`warn_undecodable`] remembers having warned about.
const MAX_WARNED: usize = 1024;

/// Keys seen, remembered in a bounded memory: past its capacity the oldest is forgotten.
#[derive(Debug)]
pub(crate) struct SeenOnce<K> {
    capacity: usize,
    order: std::collections::VecDeque<K>,
    seen: std::collections::HashSet<K>,
}

impl<K: Clone + Eq + std::hash::Hash> SeenOnce<K> {
    pub(crate) fn new(capacity: usize) -> Self {
        SeenOnce {
            capacity: capacity.max(1),
            order: std::collections::VecDeque::new(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// Whether `key` is seen for the first time (it is remembered from now on).
    pub(crate) fn first(&mut self, key: K) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.seen.insert(key);
        true
    }
}

/// The objects (uid, or namespace/name without one; and generation) already warned about.
static WARNED: std::sync::LazyLock<Mutex<SeenOnce<(String, i64)>>> =
    std::sync::LazyLock::new(|| Mutex::new(SeenOnce::new(MAX_WARNED)));

/// Warn that an object cannot be read as its kind, once per object and generation: not again
/// on each watch event, relist or reconcile of the same spec. Named by kind and name, never by
/// content. Whether it warned.
pub(crate) fn warn_undecodable(
    kind: &str,
    metadata: &kube::api::ObjectMeta,
    error: &serde_json::Error,
) -> bool {
    let object = format!(
        "{}/{}",
        metadata.namespace.as_deref().unwrap_or_default(),
        metadata.name.as_deref().unwrap_or_default()
    );
    let key = (
        metadata.uid.clone().unwrap_or_else(|| object.clone()),
        metadata.generation.unwrap_or_default(),
    );
    if !WARNED.lock().unwrap_or_else(|e| e.into_inner()).first(key) {
        return false;
    }
    tracing::warn!(
        kind,
        object = %object,
        generation = metadata.generation,
        category = ?error.classify(),
        line = error.line(),
        column = error.column(),
        "an object cannot be decoded; it is reported on itself (condition reason InvalidSpec, Warning Event)"
    );
    true
}

pub(crate) fn typed_event<K: Typed>(event: watcher::Event<RawObject>) -> watcher::Event<K> {
    map_event(event, typed)
}

/// The decoding error a cached stand-in carries, if it is one.
pub(crate) fn undecodable(meta: &kube::api::ObjectMeta) -> Option<serde_json::Error> {
    let error = meta.annotations.as_ref()?.get(UNDECODABLE)?;
    Some(<serde_json::Error as serde::de::Error>::custom(error))
}

/// A cached object as its reader gets it: the error of one that did not decode.
pub(crate) fn decoded<K: Typed>(obj: &K) -> Result<K, Error> {
    match undecodable(obj.meta()) {
        Some(source) => Err(Error::Decode {
            kind: K::KIND,
            source,
        }),
        None => Ok(obj.clone()),
    }
}

/// Bootstrap data Secrets (owned by a TalosConfig) keep only the digest of their value.
pub(crate) fn slim_secret(secret: &mut Secret) {
    slim_meta(&mut secret.metadata);
    let bootstrap_data = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "TalosConfig");
    if let (true, Some(data)) = (bootstrap_data, secret.data.as_mut())
        && let Some(value) = data.remove("value")
    {
        data.insert(
            VALUE_DIGEST_KEY.to_owned(),
            k8s_openapi::ByteString(value_digest(&value.0).into_bytes()),
        );
    }
}

/// How many changes a slow subscriber may lag behind before the watch waits for it.
const BUFFER: usize = 4096;

pub fn capi_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(CAPI_GROUP, CAPI_VERSION, kind))
}

/// The TalosConfig kind, as both controllers and the caches read it.
pub(crate) fn talosconfig_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "bootstrap.cluster.x-k8s.io",
        "v1alpha3",
        "TalosConfig",
    ))
}

/// A watch's writer and the channels of the controllers that subscribed to it.
type Pending<K> = (Writer<K>, Vec<mpsc::Sender<Arc<K>>>);

/// One watched kind: the store every reader shares, and, until the watch starts, its writer
/// and the channels of the controllers that subscribed to its changes.
struct Feed<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    pending: Mutex<Option<Pending<K>>>,
}

impl<K> Feed<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn new(dyntype: K::DynamicType) -> Self {
        let writer = Writer::new(dyntype);
        Feed {
            store: writer.as_reader(),
            pending: Mutex::new(Some((writer, Vec::new()))),
        }
    }

    /// Every change (applied or deleted object) after it reached the store; `None` once the
    /// watch has started.
    fn subscribe(&self) -> Option<mpsc::Receiver<Arc<K>>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (_, subscribers) = pending.as_mut()?;
        let (tx, rx) = mpsc::channel(BUFFER);
        subscribers.push(tx);
        Some(rx)
    }

    fn take(&self) -> Option<Pending<K>> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The shared caches. Subscribe first, then [`Caches::run`] the watches.
pub struct Caches {
    machines: Feed<Machine>,
    clusters: Feed<Cluster>,
    secrets: Feed<Secret>,
    /// Control-plane TalosConfigs, their metadata only.
    configs: Feed<DynamicObject>,
    /// The watches whose last attempt failed, with the error (readiness says so).
    failing: Arc<Mutex<std::collections::BTreeMap<&'static str, String>>>,
    /// How many watches have listed their objects; reconciles wait for all three. (A store's own
    /// `wait_until_ready` wakes only the last of several concurrent waiters.)
    listed: tokio::sync::watch::Sender<u8>,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            machines: Feed::new(()),
            clusters: Feed::new(()),
            secrets: Feed::new(()),
            configs: Feed::new(talosconfig_resource()),
            listed: tokio::sync::watch::Sender::new(0),
            failing: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// Objects per page of a watch's (re)list. A page is held whole, as text and decoded, while
/// it is read: at kube-runtime's default of 500, the pages of the initial lists of 1,000
/// Machines and TalosConfigs were 18 of the manager's 28 MiB peak heap (heaptrack, bootstrap
/// benchmark). A smaller page costs one more request per 50 objects, only when listing.
const LIST_PAGE: u32 = 50;

/// Every watch's configuration: paged by [`LIST_PAGE`].
pub(crate) fn paged() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

/// The watch configuration for objects that `--watch-filter` shards.
pub fn filtered(options: &Options) -> watcher::Config {
    match &options.watch_filter {
        Some(value) => paged().labels(&format!("{}={value}", labels::WATCH_FILTER)),
        None => paged(),
    }
}

/// An Api over every watched namespace (`--namespace`) for a dynamic kind.
pub fn dynamic_api(
    client: &kube::Client,
    options: &Options,
    ar: &ApiResource,
) -> Api<DynamicObject> {
    match &options.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// An Api over every watched namespace (`--namespace`) for a kind read item by item.
pub fn raw_api(client: &kube::Client, options: &Options, ar: &ApiResource) -> Api<RawObject> {
    match &options.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Watch `events` into `feed`'s store, each object turned into what the store keeps by `keep`,
/// and tell its subscribers about every change once the store holds it (after a (re)list:
/// every object).
async fn drive<W, K>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<W>>>,
    feed: &Feed<K>,
    what: &'static str,
    keep: fn(watcher::Event<W>) -> watcher::Event<K>,
    listed: impl Fn(),
) where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let Some((writer, subscribers)) = feed.take() else {
        return;
    };
    let store = &feed.store;
    let subscribers = &subscribers;
    let listed = &listed;
    retried(events)
        .map_ok(keep)
        .reflect(writer)
        .for_each(|event| async move {
            let changed: Vec<Arc<K>> = match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => vec![Arc::new(obj)],
                Ok(watcher::Event::InitDone) => {
                    listed();
                    store.state()
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => return,
                Err(e) => {
                    tracing::warn!(error = %e, watch = what, "watch error; retrying with backoff");
                    return;
                }
            };
            for obj in changed {
                for tx in subscribers {
                    // A controller that stopped no longer listens; the others still do.
                    let _ = tx.clone().send(Arc::clone(&obj)).await;
                }
            }
        })
        .await;
}

impl Caches {
    /// The Machines store itself, for lookups outside a reconcile (a watch's own task).
    pub fn machine_store(&self) -> Store<Machine> {
        self.machines.store.clone()
    }

    pub fn subscribe_machines(&self) -> Option<mpsc::Receiver<Arc<Machine>>> {
        self.machines.subscribe()
    }

    pub fn subscribe_clusters(&self) -> Option<mpsc::Receiver<Arc<Cluster>>> {
        self.clusters.subscribe()
    }

    pub fn subscribe_secrets(&self) -> Option<mpsc::Receiver<Arc<Secret>>> {
        self.secrets.subscribe()
    }

    pub fn subscribe_configs(&self) -> Option<mpsc::Receiver<Arc<DynamicObject>>> {
        self.configs.subscribe()
    }

    /// Run the watches until the returned future is dropped. Later calls return at once.
    pub async fn run(&self, client: kube::Client, options: Options) {
        let machine_ar = capi_resource("Machine");
        let cluster_ar = capi_resource("Cluster");
        // Only the Secrets of Cluster API clusters, never the rest of the management cluster's.
        let secret_watch = paged().labels(labels::CLUSTER_NAME);
        let control_plane_watch = paged().labels(&match &options.watch_filter {
            Some(value) => format!("{}={value},{}", labels::WATCH_FILTER, labels::CONTROL_PLANE),
            None => labels::CONTROL_PLANE.to_owned(),
        });
        let secrets: Api<Secret> = match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        futures::join!(
            drive(
                self.tracked(
                    "machines",
                    raw::watch(raw_api(&client, &options, &machine_ar), filtered(&options)),
                ),
                &self.machines,
                "machines",
                typed_event::<Machine>,
                first_list(&self.listed),
            ),
            drive(
                self.tracked(
                    "clusters",
                    raw::watch(raw_api(&client, &options, &cluster_ar), filtered(&options)),
                ),
                &self.clusters,
                "clusters",
                typed_event::<Cluster>,
                first_list(&self.listed),
            ),
            drive(
                self.tracked("secrets", watcher(secrets, secret_watch)),
                &self.secrets,
                "secrets",
                |event| event.modify(slim_secret),
                first_list(&self.listed),
            ),
            drive(
                self.tracked(
                    "control-plane talosconfigs",
                    raw::watch(
                        raw_api(&client, &options, &talosconfig_resource()),
                        control_plane_watch,
                    ),
                ),
                &self.configs,
                "control-plane talosconfigs",
                |event| map_event(event, metadata_only),
                first_list(&self.listed),
            ),
        );
    }

    /// Whether every watch has listed its objects (readiness).
    pub fn is_ready(&self) -> bool {
        *self.listed.borrow() >= WATCHES
    }

    /// The watches that cannot list or watch now, each with its last error.
    pub fn failing_watches(&self) -> Vec<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(watch, error)| format!("the {watch} watch fails: {error}"))
            .collect()
    }

    /// `events` of the watch `what`, each failure recorded for readiness until the watch lists
    /// or sees a change again.
    pub(crate) fn tracked<K, S>(
        &self,
        what: &'static str,
        events: S,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + use<K, S>
    where
        S: futures::Stream<Item = watcher::Result<watcher::Event<K>>>,
    {
        let failing = Arc::clone(&self.failing);
        events.inspect(move |event| {
            let mut failing = failing.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Err(e) => {
                    failing.insert(what, api::conditions::bounded(e.to_string(), 256));
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    failing.remove(what);
                }
            }
        })
    }

    /// Resolves once every watch has listed its objects.
    pub async fn ready(&self) {
        let _ = self.listed.subscribe().wait_for(|n| *n >= WATCHES).await;
    }

    pub fn machine(&self, ns: &str, name: &str) -> Result<Option<Machine>, Error> {
        let key = ObjectRef::new(name).within(ns);
        self.machines
            .store
            .get(&key)
            .map(|m| decoded(&*m))
            .transpose()
    }

    pub fn cluster(&self, ns: &str, name: &str) -> Result<Option<Cluster>, Error> {
        let key = ObjectRef::new(name).within(ns);
        self.clusters
            .store
            .get(&key)
            .map(|c| decoded(&*c))
            .transpose()
    }

    /// The Machines of a cluster (only control-plane ones when asked), sorted by name;
    /// Machines that do not decode are left out.
    pub fn machines_of(&self, ns: &str, cluster: &str, control_plane_only: bool) -> Vec<Machine> {
        let mut machines: Vec<Machine> = self
            .machines
            .store
            .state()
            .iter()
            .filter(|m| m.namespace().as_deref() == Some(ns))
            .filter(|m| m.labels().get(labels::CLUSTER_NAME).map(String::as_str) == Some(cluster))
            .filter(|m| !control_plane_only || m.labels().contains_key(labels::CONTROL_PLANE))
            .filter_map(|m| decoded(&**m).ok())
            .collect();
        machines.sort_by_key(ResourceExt::name_any);
        machines
    }

    /// The control-plane TalosConfigs of `cluster` in `ns` (metadata only).
    pub fn control_plane_configs(&self, ns: &str, cluster: &str) -> Vec<Arc<DynamicObject>> {
        self.configs
            .store
            .state()
            .into_iter()
            .filter(|c| c.namespace().as_deref() == Some(ns))
            .filter(|c| c.labels().get(labels::CLUSTER_NAME).map(String::as_str) == Some(cluster))
            .collect()
    }

    /// A Secret carrying the cluster-name label, as last seen by the watch (a bootstrap data
    /// Secret with [`VALUE_DIGEST_KEY`] instead of `value`). `None` may also mean "not
    /// labelled": callers that must know fall back to a read.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.store.get(&ObjectRef::new(name).within(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: serde_json::Value) -> RawObject {
        serde_json::from_str(&value.to_string()).expect("an object")
    }

    #[test]
    fn a_failing_watch_waits_twice_as_long_each_time_up_to_half_a_minute() {
        let secs = |n, j| retry_wait(n, j).as_secs_f64();
        assert_eq!((secs(1, 0.0), secs(1, 1.0)), (0.4, 0.8));
        assert_eq!((secs(2, 0.0), secs(2, 1.0)), (0.8, 1.6));
        assert_eq!((secs(6, 0.0), secs(6, 1.0)), (12.8, 25.6));
        assert_eq!((secs(7, 0.0), secs(7, 1.0)), (15.0, 30.0), "capped");
        assert_eq!(secs(u32::MAX, 1.0), 30.0, "no overflow");
    }

    /// The list attempts a watcher announces between failures do not start the waits over;
    /// a listing does.
    #[tokio::test(start_paused = true)]
    async fn only_a_listing_or_a_change_starts_a_failing_watch_over() {
        use watcher::Event;
        let fail = || Err::<Event<Secret>, _>(watcher::Error::NoResourceVersion);
        let events = futures::stream::iter([
            fail(),
            Ok(Event::Init),
            fail(),
            Ok(Event::Init),
            fail(),
            Ok(Event::Init),
            Ok(Event::InitDone),
            fail(),
        ]);
        let mut waits = Vec::new();
        let mut last = tokio::time::Instant::now();
        let mut events = std::pin::pin!(retried(events));
        while let Some(event) = events.next().await {
            if event.is_err() {
                waits.push(last.elapsed().as_secs_f64());
            }
            last = tokio::time::Instant::now();
        }
        let within = |w: f64, full: f64| w >= full / 2.0 && w <= full;
        assert_eq!(waits.len(), 4);
        assert!(within(waits[0], 0.8), "{waits:?}");
        assert!(within(waits[1], 1.6), "{waits:?}");
        assert!(within(waits[2], 3.2), "{waits:?}");
        assert!(
            within(waits[3], 0.8),
            "starts over after a listing: {waits:?}"
        );
    }

    #[test]
    fn machines_are_kept_typed_and_one_that_does_not_decode_keeps_its_error() {
        let good = raw(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "b"},
                "managedFields": [{"manager": "x", "operation": "Update"}]},
            "spec": {"clusterName": "c", "version": "v1.35.0",
                "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "m"}}},
            "status": {"nodeRef": {"name": "n"}, "nodeInfo": {"kernelVersion": "6.12"}}
        }));
        let kept: Machine = typed(good);
        assert!(kept.metadata.managed_fields.is_none());
        let read = decoded(&kept).expect("decodes");
        assert_eq!(read.spec.cluster_name, "c");
        assert_eq!(read.spec.version.as_deref(), Some("v1.35.0"));
        assert!(read.has_node());
        assert_eq!(read.labels().get("a").map(String::as_str), Some("b"));

        let bad = raw(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "bad", "namespace": "ns", "labels": {"a": "b"}},
            "spec": {"clusterName": 5}
        }));
        let kept: Machine = typed(bad);
        // The stand-in keeps the metadata (controllers map it by owner and labels) ...
        assert_eq!(kept.labels().get("a").map(String::as_str), Some("b"));
        // ... and every read gets the error.
        match decoded(&kept) {
            Err(Error::Decode { kind, source }) => {
                assert_eq!(kind, "Machine");
                assert!(source.to_string().contains("invalid type"), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seen_once_remembers_a_bounded_number_of_keys_forgetting_the_oldest() {
        let mut seen = SeenOnce::new(2);
        assert!(seen.first("a"));
        assert!(!seen.first("a"), "once");
        assert!(seen.first("b"));
        assert!(!seen.first("a") && !seen.first("b"));
        assert!(seen.first("c"), "a third key forgets the oldest, a");
        assert!(!seen.first("b") && !seen.first("c"));
        assert!(seen.first("a"), "forgotten, so new again");
        assert_eq!((seen.order.len(), seen.seen.len()), (2, 2), "bounded");
    }

    /// An object that cannot be read is warned about once per generation: not again on the
    /// watch events, relists and reconciles that show it unchanged, again once its spec changes.
    #[test]
    fn an_undecodable_object_is_warned_about_once_per_generation() {
        let uid = format!("uid-{}", std::process::id());
        let meta = |generation| kube::api::ObjectMeta {
            name: Some("bad".into()),
            namespace: Some("ns".into()),
            uid: Some(uid.clone()),
            generation: Some(generation),
            ..Default::default()
        };
        let error = <serde_json::Error as serde::de::Error>::custom("invalid type");
        assert!(warn_undecodable("TalosControlPlane", &meta(1), &error));
        for _ in 0..3 {
            assert!(!warn_undecodable("TalosControlPlane", &meta(1), &error));
        }
        assert!(warn_undecodable("TalosControlPlane", &meta(2), &error));
        // The cache's decoding and the reconcile's report share the memory.
        let raw = raw(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "bad", "namespace": "ns", "uid": format!("{uid}-m"), "generation": 4},
            "spec": {"clusterName": 5}
        }));
        let kept: Machine = typed(raw.clone());
        let _: Machine = typed(raw);
        assert!(
            !warn_undecodable("Machine", &kept.metadata, &error),
            "warned about once, as it was cached"
        );
    }

    #[test]
    fn a_cached_machine_keeps_only_the_conditions_a_controller_reads() {
        let condition = |t: &str| serde_json::json!({"type": t, "status": "True", "reason": t, "message": "a long message"});
        let machine = raw(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"clusterName": "c"},
            "status": {"conditions": [
                condition("BootstrapConfigReady"), condition("Ready"), condition("NodeHealthy"),
                condition("UpToDate"), condition("HealthCheckSucceeded"), condition("Deleting"),
                condition("EtcdMemberHealthy"), condition("OwnerRemediated"), condition("Available"),
            ]}
        }));
        let kept: Machine = typed(machine);
        let types: Vec<&str> = kept
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "Ready",
                "UpToDate",
                "HealthCheckSucceeded",
                "EtcdMemberHealthy",
                "OwnerRemediated",
                "Available"
            ]
        );
    }
}
