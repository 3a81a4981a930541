//! The workload cluster's control-plane Nodes, read through one client per cluster built from
//! `<cluster>-kubeconfig` and kept while that Secret does not change. A watch (control-plane
//! Nodes only) keeps them in memory, and a change of a Node's readiness reconciles the
//! TalosControlPlane at once: a Node going NotReady or coming back is an event, not something
//! a reconcile asks the workload API server about.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

/// The label Talos (and kubeadm) put on control-plane Nodes: only those are watched.
const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// How long connecting to a workload API server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One watched workload cluster.
struct Watched {
    /// The kubeconfig Secret's uid and resourceVersion it was built from.
    from: String,
    store: Store<Node>,
    /// Drives the watch; aborted when this is dropped.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The workload clusters' control-plane Nodes, per `namespace/cluster`.
pub struct Workloads {
    clusters: Mutex<HashMap<String, Watched>>,
    wake_tx: mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<DynamicObject>>>>,
}

impl Default for Workloads {
    fn default() -> Self {
        let (wake_tx, wake_rx) = mpsc::unbounded();
        Workloads {
            clusters: Mutex::default(),
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
        }
    }
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("watched", &self.watched())
            .finish_non_exhaustive()
    }
}

/// Whether a Node is Ready, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReady {
    pub ready: bool,
    /// The Ready condition's reason and message when it is not True.
    pub why: Option<String>,
}

impl NodeReady {
    pub fn of(node: &Node) -> NodeReady {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => NodeReady {
                ready: true,
                why: None,
            },
            Some(c) => NodeReady {
                ready: false,
                why: Some(format!(
                    "Ready is {}{}{}",
                    c.status,
                    c.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    c.message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )),
            },
            None => NodeReady {
                ready: false,
                why: Some("it reports no Ready condition yet".into()),
            },
        }
    }
}

/// The control-plane Nodes of a workload cluster, by name and by providerID.
#[derive(Debug, Default, Clone)]
pub struct Nodes {
    pub by_name: BTreeMap<String, NodeReady>,
    pub by_provider_id: BTreeMap<String, String>,
}

impl Nodes {
    fn of(nodes: &[Arc<Node>]) -> Nodes {
        let mut seen = Nodes::default();
        for node in nodes {
            let name = node.name_any();
            if let Some(id) = node.spec.as_ref().and_then(|s| s.provider_id.clone()) {
                seen.by_provider_id.insert(id, name.clone());
            }
            seen.by_name.insert(name, NodeReady::of(node));
        }
        seen
    }

    /// The readiness of the Node named `name`, else the one with `provider_id`.
    pub fn find(&self, name: &str, provider_id: Option<&str>) -> Option<&NodeReady> {
        self.by_name.get(name).or_else(|| {
            let name = self.by_provider_id.get(provider_id?)?;
            self.by_name.get(name)
        })
    }
}

impl Workloads {
    /// The reconciles the watches ask for; the first caller gets them.
    pub(crate) fn take_wakeups(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<DynamicObject>>> {
        self.wake_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Where a TalosControlPlane is sent to be reconciled at once (also by other watches).
    pub(crate) fn waker(&self) -> &mpsc::UnboundedSender<ObjectRef<DynamicObject>> {
        &self.wake_tx
    }

    /// Workload clusters watched now.
    pub fn watched(&self) -> usize {
        self.clusters.lock().map_or(0, |c| c.len())
    }

    /// Stop watching `namespace/cluster`.
    pub fn forget(&self, ns: &str, cluster: &str) {
        let dropped = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{ns}/{cluster}"));
        drop(dropped);
    }

    /// The control-plane Nodes of `ns/cluster` as its watch last saw them, through the
    /// kubeconfig in `kubeconfig` (`<cluster>-kubeconfig`); `owner` is reconciled when one's
    /// readiness changes. `Err` says why they are not known (yet): a kubeconfig that cannot be
    /// used, or a watch that has not listed them.
    pub async fn nodes(
        &self,
        ns: &str,
        cluster: &str,
        kubeconfig: &Secret,
        owner: ObjectRef<DynamicObject>,
    ) -> Result<Nodes, String> {
        let key = format!("{ns}/{cluster}");
        let from = format!(
            "{}/{}",
            kubeconfig.uid().unwrap_or_default(),
            kubeconfig.resource_version().unwrap_or_default()
        );
        let store = {
            let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
            clusters
                .get(&key)
                .filter(|w| w.from == from)
                .map(|w| w.store.clone())
        };
        // A new watch is not waited for: its first listing reconciles `owner` again.
        let store = match store {
            Some(store) => store,
            None => self.watch(&key, from, client(kubeconfig).await?, owner),
        };
        if store.wait_until_ready().now_or_never().is_none() {
            return Err(format!(
                "the Nodes of the workload cluster are not listed yet (through Secret {})",
                kubeconfig.name_any()
            ));
        }
        Ok(Nodes::of(&store.state()))
    }

    fn watch(
        &self,
        key: &str,
        from: String,
        client: kube::Client,
        owner: ObjectRef<DynamicObject>,
    ) -> Store<Node> {
        let (store, writer) = reflector::store();
        let api: Api<Node> = Api::all(client);
        let config = crate::cache::paged().labels(CONTROL_PLANE_LABEL);
        let wake = self.wake_tx.clone();
        let reader = store.clone();
        let cluster = key.to_owned();
        let events = crate::cache::retried(watcher(api, config))
            .modify(|node: &mut Node| {
                // Only the Ready condition and the identity are read.
                node.meta_mut().managed_fields = None;
                if let Some(status) = node.status.as_mut() {
                    status.images = None;
                    status.volumes_attached = None;
                    status.volumes_in_use = None;
                }
            })
            .reflect(writer);
        let task = tokio::spawn(async move {
            // What the reconciles saw last: nothing, until the first listing.
            let mut last: BTreeMap<String, NodeReady> = BTreeMap::new();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => {
                        let now = Nodes::of(&reader.state()).by_name;
                        if now != last {
                            let _ = wake.unbounded_send(owner.clone());
                            last = now;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%cluster, error = %e, "watching the workload cluster's Nodes");
                    }
                }
            }
        });
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.insert(
            key.to_owned(),
            Watched {
                from,
                store: store.clone(),
                task,
            },
        );
        store
    }
}

/// A client for the workload cluster from the kubeconfig in `secret` (key `value`).
async fn client(secret: &Secret) -> Result<kube::Client, String> {
    let name = secret.name_any();
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .ok_or_else(|| format!("Secret {name} has no key value"))?;
    let yaml = std::str::from_utf8(&value.0)
        .map_err(|_| format!("the kubeconfig in Secret {name} is not UTF-8"))?;
    // kube's errors name the field at fault, never its content.
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml)
        .map_err(|e| format!("the kubeconfig in Secret {name} cannot be read: {e}"))?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("the kubeconfig in Secret {name} cannot be used: {e}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    kube::Client::try_from(config)
        .map_err(|e| format!("the kubeconfig in Secret {name} cannot be used: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: Option<(&str, &str)>, provider_id: Option<&str>) -> Arc<Node> {
        let mut value = serde_json::json!({"metadata": {"name": name}, "spec": {}});
        if let Some(id) = provider_id {
            value["spec"]["providerID"] = id.into();
        }
        if let Some((status, reason)) = ready {
            value["status"] = serde_json::json!({"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": status, "reason": reason, "message": "kubelet says so"},
            ]});
        }
        Arc::new(serde_json::from_value(value).expect("a Node"))
    }

    #[test]
    fn nodes_are_found_by_name_then_provider_id_and_say_why_they_are_not_ready() {
        let nodes = Nodes::of(&[
            node("cp-0", Some(("True", "KubeletReady")), Some("sim://a/cp-0")),
            node(
                "cp-1",
                Some(("False", "KubeletNotReady")),
                Some("sim://a/m-1"),
            ),
            node("cp-2", None, None),
        ]);
        assert!(nodes.find("cp-0", None).is_some_and(|n| n.ready));
        let by_id = nodes
            .find("m-1", Some("sim://a/m-1"))
            .expect("found by providerID");
        assert!(!by_id.ready);
        assert_eq!(
            by_id.why.as_deref(),
            Some("Ready is False (KubeletNotReady): kubelet says so")
        );
        let unknown = nodes.find("cp-2", None).expect("listed");
        assert!(!unknown.ready);
        assert!(nodes.find("cp-9", Some("sim://a/cp-9")).is_none());
    }
}
