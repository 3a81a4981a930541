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
    ) -> Result<Nodes, KubeconfigProblem> {
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
            None => {
                let client = client(kubeconfig).await?;
                self.watch(&key, from, client, owner)
            }
        };
        if store.wait_until_ready().now_or_never().is_none() {
            return Err(KubeconfigProblem::NotListedYet {
                name: kubeconfig.name_any(),
            });
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

/// Why a workload cluster's Nodes are not known (yet), most often because its kubeconfig cannot
/// be used. Names what is wrong, never content: the
/// kubeconfig holds a client key, and this message reaches the TalosControlPlane's conditions.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigProblem {
    #[error("Secret {name} has no key value")]
    NoValue { name: String },
    #[error("the kubeconfig in Secret {name} is not UTF-8")]
    NotUtf8 { name: String },
    #[error("the kubeconfig in Secret {name} cannot be read: {source}")]
    Unreadable {
        name: String,
        #[source]
        source: machineconfig::Error,
    },
    #[error("the kubeconfig in Secret {name} cannot be used: {reason}")]
    Unusable { name: String, reason: &'static str },
    #[error("the Nodes of the workload cluster are not listed yet (through Secret {name})")]
    NotListedYet { name: String },
}

/// What is wrong with a kubeconfig kube refuses, without kube's message: its parser's quotes
/// the text around the error, and its base64 decoder's names a byte of the key.
fn kubeconfig_refused(e: &kube::config::KubeconfigError) -> &'static str {
    use kube::config::KubeconfigError as K;
    match e {
        K::CurrentContextNotSet => "it names no current context",
        K::LoadContext(_) => "its current context is not among its contexts",
        K::LoadClusterOfContext(_) => {
            "the cluster of its current context is not among its clusters"
        }
        K::MissingClusterUrl => "its cluster has no server",
        K::ParseClusterUrl(_) => "its cluster's server is not a URL",
        K::LoadCertificateAuthority(_) | K::ParseCertificates(_) => {
            "its certificate-authority-data cannot be read"
        }
        K::LoadClientCertificate(_) => "its client-certificate-data cannot be read",
        K::LoadClientKey(_) => "its client-key-data cannot be read",
        _ => "kube refuses it",
    }
}

/// A client for the workload cluster from the kubeconfig in `secret` (key `value`).
async fn client(secret: &Secret) -> Result<kube::Client, KubeconfigProblem> {
    let name = secret.name_any();
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .ok_or_else(|| KubeconfigProblem::NoValue { name: name.clone() })?;
    let yaml = std::str::from_utf8(&value.0)
        .map_err(|_| KubeconfigProblem::NotUtf8 { name: name.clone() })?;
    let unusable = |reason| KubeconfigProblem::Unusable {
        name: name.clone(),
        reason,
    };
    // kube's parser says why in its own words, which quote the text: the engine's parser, whose
    // errors name the field and never its content, says it instead.
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(yaml).map_err(
            |_| match machineconfig::parse::from_yaml::<kube::config::Kubeconfig>(
                "kubeconfig",
                yaml,
            ) {
                Err(source) => KubeconfigProblem::Unreadable {
                    name: name.clone(),
                    source,
                },
                Ok(_) => unusable("kube's YAML parser cannot read it"),
            },
        )?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| unusable(kubeconfig_refused(&e)))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    kube::Client::try_from(config).map_err(|e| {
        unusable(match &e {
            kube::Error::InferKubeconfig(e) => kubeconfig_refused(e),
            kube::Error::RustlsTls(_) => {
                "its client certificate, client key or CA cannot be used for TLS"
            }
            kube::Error::Auth(_) => "its credentials cannot be used",
            _ => "no client can be built from it",
        })
    })
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

    fn kubeconfig_secret(yaml: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("w-kubeconfig".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "value".to_owned(),
                k8s_openapi::ByteString(yaml.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    /// A kubeconfig whose client key sits where a mapping belongs, or cannot be decoded: the
    /// message names the field, never the key (kube's parser quotes the text around the error).
    #[tokio::test]
    async fn unusable_kubeconfigs_name_the_field_never_the_key() {
        let bundle = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST)
            .expect("a bundle");
        let issued = machineconfig::kubeconfig::generate(
            "w",
            "https://10.0.0.10:6443",
            &bundle,
            time::OffsetDateTime::now_utc(),
            time::Duration::days(1),
        )
        .expect("a kubeconfig");
        let doc: serde_json::Value = serde_yaml_ng::from_str(&issued.yaml).expect("YAML");
        let key = doc["users"][0]["user"]["client-key-data"]
            .as_str()
            .expect("a key")
            .to_owned();
        assert!(client(&kubeconfig_secret(&issued.yaml)).await.is_ok());

        let mut scalar = doc.clone();
        scalar["users"][0]["user"] = key.clone().into();
        let scalar = serde_yaml_ng::to_string(&scalar).expect("YAML");
        let kube_says = kube::config::Kubeconfig::from_yaml(&scalar)
            .map(drop)
            .expect_err("kube refuses it")
            .to_string();
        // kube's message shows the line at fault, key and all.
        assert!(kube_says.contains(&key[..32]), "{kube_says}");
        let err = client(&kubeconfig_secret(&scalar))
            .await
            .map(drop)
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the kubeconfig in Secret w-kubeconfig cannot be read: parsing kubeconfig: field \
                 `users[0].user` is a string, expected a map (line "
            ),
            "{err}"
        );
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(&key[..32]), "{text}");
        }

        let mut undecodable = doc.clone();
        let mut broken = key.clone();
        broken.replace_range(40..41, "!");
        undecodable["users"][0]["user"]["client-key-data"] = broken.into();
        let undecodable = serde_yaml_ng::to_string(&undecodable).expect("YAML");
        let err = client(&kubeconfig_secret(&undecodable))
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kubeconfig in Secret w-kubeconfig cannot be used: its client-key-data cannot be read"
        );
        assert!(!format!("{err:?}").contains(&key[..32]), "{err:?}");
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
