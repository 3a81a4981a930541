//! The infrastructure machines of our control planes, watched for their addresses: a new node's
//! address is known when its infrastructure machine reports it, not a second later when Cluster
//! API copies it to the Machine. One watch per infrastructure kind (the kind of a control
//! plane's machine template), label-selected to Cluster API clusters' objects and slimmed to
//! their identity and `status.addresses`; a change of the addresses of one a TalosControlPlane
//! owns reconciles that TalosControlPlane at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use api::capi::{Machine, MachineAddress, labels};
use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};

use crate::Options;

/// One watched infrastructure kind.
struct Watched {
    store: Store<DynamicObject>,
    /// Drives the watch; aborted when this is dropped.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watched infrastructure kinds, by `apiVersion/kind`.
#[derive(Default)]
pub struct InfraMachines {
    kinds: Mutex<HashMap<String, Watched>>,
}

impl std::fmt::Debug for InfraMachines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfraMachines").finish_non_exhaustive()
    }
}

/// The addresses an infrastructure machine reports (`status.addresses`, Cluster API's
/// contract field); empty when it reports none yet.
pub fn addresses(infra: &DynamicObject) -> Vec<MachineAddress> {
    serde_json::from_value(infra.data["status"]["addresses"].clone()).unwrap_or_default()
}

/// What the store keeps of an infrastructure machine: its metadata (owners, for the wake-up)
/// and its addresses.
fn slim(obj: crate::raw::RawObject) -> DynamicObject {
    let mut obj = crate::cache::dynamic(obj);
    let addresses = obj.data["status"]["addresses"].take();
    obj.data = serde_json::json!({"status": {"addresses": addresses}});
    obj
}

/// The TalosControlPlane an infrastructure machine serves: its owner, until Cluster API
/// replaces that reference with the Machine's (as it does for every control plane's objects
/// once the Machine exists); from then on, the controller of that Machine.
fn served_control_plane(
    infra: &DynamicObject,
    machines: &Store<Machine>,
) -> Option<ObjectRef<DynamicObject>> {
    if let Some(tcp) = super::owning_control_plane(infra, false) {
        return Some(tcp);
    }
    let ns = infra.namespace()?;
    let owner = infra
        .owner_references()
        .iter()
        .find(|o| o.kind == "Machine" && o.controller == Some(true))?;
    let machine = machines.get(&ObjectRef::new(&owner.name).within(&ns))?;
    super::owning_control_plane(&*machine, true)
}

impl InfraMachines {
    /// Fill in, on each of `machines` that has no address yet, the addresses its infrastructure
    /// machine reports, when that is of kind `infra` (the kind the control plane's template
    /// makes). The first call for a kind starts its watch; until it has listed, nothing is filled
    /// in. `wake` is told of each TalosControlPlane whose infrastructure machines' addresses
    /// change (found through `owners`, the Machines cache, once Cluster API owns them).
    pub fn fill_addresses(
        &self,
        client: &kube::Client,
        options: &Options,
        infra: &ApiResource,
        (wake, owners): (
            &mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
            Store<Machine>,
        ),
        machines: &mut [Machine],
    ) {
        let store = self.store(client, options, infra, wake, owners);
        for m in machines.iter_mut().filter(|m| m.addresses().is_empty()) {
            let reference = &m.spec.infrastructure_ref;
            if reference.kind != infra.kind || reference.api_group != infra.group {
                continue;
            }
            let Some(ns) = m.namespace() else { continue };
            let key = ObjectRef::new_with(&reference.name, infra.clone()).within(&ns);
            let found = store.get(&key).map(|i| addresses(&i)).unwrap_or_default();
            if !found.is_empty() {
                tracing::debug!(machine = %m.name_any(), "address from its infrastructure machine");
                m.status.get_or_insert_with(Default::default).addresses = Some(found);
            }
        }
    }

    /// The store of kind `infra`, its watch started if it was not.
    fn store(
        &self,
        client: &kube::Client,
        options: &Options,
        infra: &ApiResource,
        wake: &mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
        owners: Store<Machine>,
    ) -> Store<DynamicObject> {
        let key = format!("{}/{}", infra.api_version, infra.kind);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = kinds.get(&key) {
            return w.store.clone();
        }
        let writer = reflector::store::Writer::new(infra.clone());
        let store = writer.as_reader();
        let api = crate::cache::raw_api(client, options, infra);
        let selector = match &options.watch_filter {
            Some(value) => format!("{}={value},{}", labels::WATCH_FILTER, labels::CLUSTER_NAME),
            None => labels::CLUSTER_NAME.to_owned(),
        };
        let events = crate::raw::watch(api, crate::cache::paged().labels(&selector));
        let events = crate::cache::retried(events)
            .map_ok(|event| crate::raw::map_event(event, slim))
            .reflect(writer)
            .applied_objects();
        let wake = wake.clone();
        let kind = key.clone();
        let task = tokio::spawn(async move {
            // The addresses last seen per object: only a change wakes its control plane.
            let mut seen: BTreeMap<String, Vec<MachineAddress>> = BTreeMap::new();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(obj) => {
                        let now = addresses(&obj);
                        let id =
                            format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
                        if seen.get(&id) != Some(&now) {
                            if let Some(owner) = served_control_plane(&obj, &owners) {
                                let _ = wake.unbounded_send(owner);
                            }
                            seen.insert(id, now);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%kind, error = %e, "watching infrastructure machines");
                    }
                }
            }
        });
        kinds.insert(
            key,
            Watched {
                store: store.clone(),
                task,
            },
        );
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_the_contract_field_and_kept_alone() {
        let raw: crate::raw::RawObject = serde_json::from_str(&serde_json::json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine",
            "metadata": {"name": "m", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane", "name": "cp", "uid": "u"}
            ]},
            "spec": {"providerID": "sim://m", "big": "x".repeat(1000)},
            "status": {"ready": true, "addresses": [
                {"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "Hostname", "address": "m"}
            ]}
        }).to_string())
        .expect("an infrastructure machine");
        let infra = slim(raw);
        assert_eq!(
            infra.data,
            serde_json::json!({"status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "Hostname", "address": "m"}
            ]}})
        );
        let found = addresses(&infra);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].address, "10.0.0.2");
        assert_eq!(
            super::super::owning_control_plane(&infra, false),
            Some(ObjectRef::new_with("cp", super::super::resource()).within("ns"))
        );
        assert_eq!(
            super::super::owning_control_plane(&infra, true),
            None,
            "not its controller"
        );
        // Once Cluster API owns it through its Machine, the Machine's controller is found.
        let (owners, mut writer) = reflector::store::<Machine>();
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
                 "name": "cp", "uid": "u", "controller": true}
            ]},
            "spec": {"clusterName": "c"}
        }))
        .expect("a Machine");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(machine));
        let mut owned = infra.clone();
        owned.metadata.owner_references = Some(vec![
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m",
                "uid": "m-uid", "controller": true
            }))
            .expect("an owner reference"),
        ]);
        let tcp = Some(ObjectRef::new_with("cp", super::super::resource()).within("ns"));
        assert_eq!(
            served_control_plane(&infra, &owners),
            tcp,
            "before Cluster API"
        );
        assert_eq!(
            served_control_plane(&owned, &owners),
            tcp,
            "through its Machine"
        );
        owned.metadata.owner_references.as_mut().expect("owners")[0].name = "other".into();
        assert_eq!(
            served_control_plane(&owned, &owners),
            None,
            "a Machine not cached"
        );
        let mut bare = infra.clone();
        bare.data = serde_json::json!({});
        assert!(addresses(&bare).is_empty(), "none reported yet");
    }
}
