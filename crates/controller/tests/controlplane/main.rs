//! The TalosControlPlane controller on the local control plane with the real Cluster API v1.14
//! core and simulated Talos nodes: machines are created and spread over failure domains, etcd
//! is bootstrapped exactly once, membership follows the machines through scale up, scale down
//! and deletions, and the kubeconfig is issued and rotated. Every assertion about etcd reads the
//! simulator's own etcd, not our status.
//!
//! One test binary, `controlplane`, its tests in a module per concern; what several of them
//! use (waiting for a settled control plane, the etcd invariants, patching the spec) is here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../common/mod.rs"]
mod common;

mod adoption;
mod cacppt_regressions;
mod config_change;
mod deletion;
mod health;
mod kubeconfig;
mod move_;
mod recovery;
mod remediation;
mod rollout;
mod scaling;
mod talosconfig;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use api::capi::Machine;
use api::conditions::{self, ConditionType};
use api::controlplane::v1alpha3::TalosControlPlane;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use talos_sim::Simulator;
use talos_sim::etcd::Op;

fn condition(tcp: &TalosControlPlane, t: ConditionType) -> Option<conditions::Condition> {
    tcp.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::get(cs, t))
        .cloned()
}

async fn machines(client: &kube::Client, ns: &str) -> Vec<Machine> {
    Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
        .await
        .unwrap()
        .items
}

/// Wait until the control plane has `n` machines, each with a healthy voting etcd member (read
/// from the simulator), and the status says so.
async fn settled(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    n: usize,
) -> Vec<(String, u64, bool)> {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{n} machines with healthy etcd members"),
        async || {
            let tcp = api.get(name).await.ok()?;
            let healthy = condition(&tcp, ConditionType::EtcdClusterHealthy)?.status == "True";
            let status = tcp.status.as_ref()?;
            let machines = machines(client, ns).await;
            // The controller reads a new node's health at its etcd peer address, so it can be
            // healthy before Cluster API has copied that address to the Machine: wait for both.
            let addressed = machines.iter().all(|m| !m.addresses().is_empty());
            if !healthy || status.replicas != Some(n as i32) || machines.len() != n || !addressed {
                return None;
            }
            let id = sim_infra::cluster_id(client, ns, name).await.unwrap();
            let members = sim.etcd_members(&id);
            (members.len() == n && members.iter().all(|(_, _, learner)| !learner))
                .then_some(members)
        },
    )
    .await
}

/// Invariants read from the simulator's own etcd history: bootstrapped once, quorum kept by
/// every removal, and no member removed from a node that still runs (a removed member's node
/// was terminated with its machine).
async fn assert_etcd_invariants(client: &kube::Client, ns: &str, cluster: &str, sim: &Simulator) {
    let id = sim_infra::cluster_id(client, ns, cluster).await.unwrap();
    let history = sim.etcd_history(&id);
    let bootstraps = history.iter().filter(|c| c.op == Op::Bootstrap).count();
    assert_eq!(bootstraps, 1, "{history:?}");
    for change in history.iter().filter(|c| c.op == Op::Remove) {
        assert_ne!(
            change.quorum_after,
            Some(false),
            "a removal lost quorum: {history:?}"
        );
        // The node goes once Cluster API deletes the machine's infrastructure.
        eventually(
            client,
            ns,
            cluster,
            "the removed member's node terminated",
            async || (!sim.nodes().contains(&change.node)).then_some(()),
        )
        .await;
    }
}

/// Wait until `gone` has left and the control plane is back to three healthy members.
async fn replaced_and_settled(
    client: &kube::Client,
    ns: &str,
    cp: &str,
    sim: &Simulator,
    gone: &str,
) -> Vec<(String, u64, bool)> {
    eventually(
        client,
        ns,
        cp,
        &format!("machine {gone} gone"),
        async || {
            let names: Vec<String> = machines(client, ns)
                .await
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            (!names.iter().any(|n| n == gone)).then_some(())
        },
    )
    .await;
    settled(client, ns, cp, sim, 3).await
}

async fn scale(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// The Talos API address of a machine's node.
async fn node_of(client: &kube::Client, ns: &str, machine: &str) -> String {
    Api::<Machine>::namespaced(client.clone(), ns)
        .get(machine)
        .await
        .unwrap()
        .addresses()
        .first()
        .map(|a| a.address.clone())
        .expect("the machine has an address")
}

fn member_on(members: &[(String, u64, bool)], node: &str) -> Option<u64> {
    members
        .iter()
        .find(|(n, _, _)| n == node)
        .map(|(_, id, _)| *id)
}

async fn wait_condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    t: ConditionType,
    status: &str,
    contains: &str,
) -> conditions::Condition {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{t} {status} mentioning {contains:?}"),
        async || {
            let c = condition(&api.get(name).await.ok()?, t)?;
            (c.status == status && c.message.contains(contains)).then_some(c)
        },
    )
    .await
}

/// Calls `each` with the control-plane Machines of `ns` after every change a watch delivers,
/// from the moment this returns (their first listing done) until the handle is dropped or
/// aborted: every state they go through, however soon the next follows it.
async fn on_every_change(
    client: &kube::Client,
    ns: &str,
    mut each: impl FnMut(&[Arc<Machine>]) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let api = Api::<Machine>::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels("cluster.x-k8s.io/control-plane");
    let (reader, writer) = reflector::store();
    let listed = reader.clone();
    let task = tokio::spawn(async move {
        let events = watcher(api, config).default_backoff().reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if event.is_ok() {
                each(&reader.state());
            }
        }
    });
    listed.wait_until_ready().await.unwrap();
    task
}

/// Patch the control plane's spec.
async fn patch_spec(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// The names of the control-plane machines.
async fn machine_names(client: &kube::Client, ns: &str) -> Vec<String> {
    machines(client, ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

/// A machine.env change: Talos applies it only with a reboot.
const PROXY_PATCH: &str = "machine:\n  env:\n    https_proxy: http://proxy.example:3128\n";

/// Wait until the node at each of `nodes` runs a configuration document for which `runs`
/// holds (`what` names it), and control plane `name` says its 3 machines are up to date with no
/// configuration change under way.
async fn changed_in_place(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    nodes: &[String],
    what: &str,
    runs: impl Fn(&serde_json::Value) -> bool,
) {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("every node runs {what}, and the control plane says it is up to date"),
        async || {
            for address in nodes {
                let (_, docs) = sim.running(address)?;
                if !docs.iter().any(&runs) {
                    return None;
                }
            }
            let tcp = api.get(name).await.ok()?;
            let markers = machines(client, ns).await.iter().any(|m| {
                m.annotations()
                    .contains_key("controlplane.cluster.x-k8s.io/talos-config-apply")
            });
            (tcp.status.as_ref()?.up_to_date_replicas == Some(3)
                && condition(&tcp, ConditionType::MachinesUpToDate)?.status == "True"
                && !markers)
                .then_some(())
        },
    )
    .await;
}

/// How many Events of `ns` have `reason`.
async fn events_with_reason(client: &kube::Client, ns: &str, reason: &str) -> usize {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .count()
}

/// How often each machine's node has booted, by machine name.
async fn boots(client: &kube::Client, ns: &str, sim: &Simulator) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for m in machine_names(client, ns).await {
        let address = node_of(client, ns, &m).await;
        out.push((m, sim.running(&address).map_or(0, |(boots, _)| boots)));
    }
    out
}
