//! Watch-fed caches of what every controller reads: Machines, Clusters and the Secrets of
//! Cluster API clusters. One watch per kind feeds one store shared by all controllers; each
//! controller subscribes to the same stream for its triggers. Because a reflector writes an
//! event into its store before it hands the event to subscribers, a reconcile triggered by a
//! change always reads that change (never an older copy from a second, slower watch).
//!
//! Machines and Clusters are kept as dynamic objects and decoded on read, so a single object
//! that does not decode costs only the reconciles that read it, never the whole watch.

use std::sync::{Arc, Mutex};

use api::capi::{Cluster, GROUP as CAPI_GROUP, Machine, VERSION as CAPI_VERSION, labels};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::{Error, Options};

/// The watches [`Caches::run`] drives.
const WATCHES: u8 = 3;

/// Counts a watch's first complete list (relists after a lost watch do not count again).
fn first_list(listed: &tokio::sync::watch::Sender<u8>) -> impl Fn() + '_ {
    let once = std::sync::Once::new();
    move || once.call_once(|| listed.send_modify(|n| *n += 1))
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

/// The status fields of Machines and Clusters that `api::capi` reads; the rest (nodeInfo, the
/// deprecated v1beta1 conditions, ...) is not kept in memory for every machine.
const KEPT_STATUS: &[&str] = &[
    "initialization",
    "addresses",
    "nodeRef",
    "phase",
    "conditions",
    "failureDomains",
];

pub(crate) fn slim_dynamic(obj: &mut DynamicObject) {
    slim_meta(&mut obj.metadata);
}

fn slim_capi(obj: &mut DynamicObject) {
    slim_dynamic(obj);
    if let Some(status) = obj.data.get_mut("status").and_then(|s| s.as_object_mut()) {
        status.retain(|k, _| KEPT_STATUS.contains(&k.as_str()));
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
    machines: Feed<DynamicObject>,
    clusters: Feed<DynamicObject>,
    secrets: Feed<Secret>,
    /// How many watches have listed their objects; reconciles wait for all three. (A store's own
    /// `wait_until_ready` wakes only the last of several concurrent waiters.)
    listed: tokio::sync::watch::Sender<u8>,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            machines: Feed::new(capi_resource("Machine")),
            clusters: Feed::new(capi_resource("Cluster")),
            secrets: Feed::new(()),
            listed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

fn decode<K: DeserializeOwned>(obj: &DynamicObject, kind: &'static str) -> Result<K, Error> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::Decode { kind, source })
}

/// The watch configuration for objects that `--watch-filter` shards.
pub fn filtered(options: &Options) -> watcher::Config {
    match &options.watch_filter {
        Some(value) => {
            watcher::Config::default().labels(&format!("{}={value}", labels::WATCH_FILTER))
        }
        None => watcher::Config::default(),
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

/// Watch `api` into `feed`'s store and tell its subscribers about every change once the store
/// holds it (after a (re)list: every object).
async fn drive<K>(
    api: Api<K>,
    config: watcher::Config,
    feed: &Feed<K>,
    what: &'static str,
    slim: fn(&mut K),
    listed: impl Fn(),
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let Some((writer, subscribers)) = feed.take() else {
        return;
    };
    let store = &feed.store;
    let subscribers = &subscribers;
    let listed = &listed;
    watcher(api, config)
        .modify(slim)
        .default_backoff()
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
    pub fn subscribe_machines(&self) -> Option<mpsc::Receiver<Arc<DynamicObject>>> {
        self.machines.subscribe()
    }

    pub fn subscribe_clusters(&self) -> Option<mpsc::Receiver<Arc<DynamicObject>>> {
        self.clusters.subscribe()
    }

    pub fn subscribe_secrets(&self) -> Option<mpsc::Receiver<Arc<Secret>>> {
        self.secrets.subscribe()
    }

    /// Run the watches until the returned future is dropped. Later calls return at once.
    pub async fn run(&self, client: kube::Client, options: Options) {
        let machine_ar = capi_resource("Machine");
        let cluster_ar = capi_resource("Cluster");
        // Only the Secrets of Cluster API clusters, never the rest of the management cluster's.
        let secret_watch = watcher::Config::default().labels(labels::CLUSTER_NAME);
        let secrets: Api<Secret> = match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        futures::join!(
            drive(
                dynamic_api(&client, &options, &machine_ar),
                filtered(&options),
                &self.machines,
                "machines",
                slim_capi,
                first_list(&self.listed),
            ),
            drive(
                dynamic_api(&client, &options, &cluster_ar),
                filtered(&options),
                &self.clusters,
                "clusters",
                slim_capi,
                first_list(&self.listed),
            ),
            drive(
                secrets,
                secret_watch,
                &self.secrets,
                "secrets",
                slim_secret,
                first_list(&self.listed),
            ),
        );
    }

    /// Whether every watch has listed its objects (readiness).
    pub fn is_ready(&self) -> bool {
        *self.listed.borrow() >= WATCHES
    }

    /// Resolves once every watch has listed its objects.
    pub async fn ready(&self) {
        let _ = self.listed.subscribe().wait_for(|n| *n >= WATCHES).await;
    }

    pub fn machine(&self, ns: &str, name: &str) -> Result<Option<Machine>, Error> {
        let key = ObjectRef::new_with(name, capi_resource("Machine")).within(ns);
        self.machines
            .store
            .get(&key)
            .map(|m| decode(&m, "Machine"))
            .transpose()
    }

    pub fn cluster(&self, ns: &str, name: &str) -> Result<Option<Cluster>, Error> {
        let key = ObjectRef::new_with(name, capi_resource("Cluster")).within(ns);
        self.clusters
            .store
            .get(&key)
            .map(|c| decode(&c, "Cluster"))
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
            .filter_map(|m| decode(m, "Machine").ok())
            .collect();
        machines.sort_by_key(ResourceExt::name_any);
        machines
    }

    /// A Secret carrying the cluster-name label, as last seen by the watch (a bootstrap data
    /// Secret with [`VALUE_DIGEST_KEY`] instead of `value`). `None` may also mean "not
    /// labelled": callers that must know fall back to a read.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.store.get(&ObjectRef::new(name).within(ns))
    }
}
