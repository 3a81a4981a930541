//! A test infrastructure provider over simulated Talos nodes. It makes every SimCluster of a
//! namespace provisioned (with the failure domains asked for) and every SimMachine a node: once
//! the owner Machine has bootstrap data, a simulated Talos node boots with it (as a cloud node
//! boots from userdata) on its own loopback address, and the SimMachine reports that address
//! and is provisioned. It is a test fixture: it polls, where a product controller would watch.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use talos_sim::{NodeSpec, Simulator, Timing, loopback_address};

use super::dynamic;

/// Runs until dropped.
pub struct SimInfra {
    pub sim: Simulator,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimInfra {
    fn drop(&mut self) {
        self.task.abort();
        for address in self.sim.nodes() {
            let _ = self.sim.remove(&address);
        }
    }
}

/// Serve namespace `ns`; SimClusters get `failure_domains` (all for control planes).
pub fn start(client: &kube::Client, ns: &str, failure_domains: &[&str]) -> SimInfra {
    let sim = Simulator::new(Timing::default());
    let domains: Vec<Value> = failure_domains
        .iter()
        .map(|name| json!({"name": name, "controlPlane": true}))
        .collect();
    let task = tokio::spawn(serve(client.clone(), ns.to_owned(), sim.clone(), domains));
    SimInfra { sim, task }
}

/// SimMachine name → the address its node got; and how many nodes were ever started (each
/// gets a new address).
#[derive(Default)]
struct Nodes {
    by_machine: BTreeMap<String, String>,
    started: u32,
}

async fn serve(client: kube::Client, ns: String, sim: Simulator, domains: Vec<Value>) {
    let mut nodes = Nodes::default();
    loop {
        if let Err(e) = pass(&client, &ns, &sim, &domains, &mut nodes).await {
            tracing::debug!(error = %e, "sim infrastructure: retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pass(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    domains: &[Value],
    nodes: &mut Nodes,
) -> Result<(), kube::Error> {
    let infra = "infrastructure.cluster.x-k8s.io/v1alpha1";
    let clusters = dynamic(client, ns, infra, "SimCluster");
    for c in clusters.list(&ListParams::default()).await? {
        if c.data["status"]["initialization"]["provisioned"] != json!(true) {
            clusters
                .patch_status(
                    &c.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "initialization": {"provisioned": true},
                        "failureDomains": domains,
                    }})),
                )
                .await?;
        }
    }
    let sim_machines = dynamic(client, ns, infra, "SimMachine");
    let machines: Api<DynamicObject> = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Machine");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let listed = sim_machines.list(&ListParams::default()).await?;
    // A SimMachine that is gone or going takes its node with it (the instance is terminated).
    let live: Vec<String> = listed
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    nodes.by_machine.retain(|name, address| {
        let keep = live.contains(name);
        if !keep {
            let _ = sim.remove(address);
        }
        keep
    });
    for m in listed {
        let name = m.name_any();
        if nodes.by_machine.contains_key(&name) || !live.contains(&name) {
            continue;
        }
        let Some(owner) = m
            .owner_references()
            .iter()
            .find(|o| o.kind == "Machine")
            .map(|o| o.name.clone())
        else {
            continue;
        };
        let Some(machine) = machines.get_opt(&owner).await? else {
            continue;
        };
        let Some(data_name) = machine.data["spec"]["bootstrap"]["dataSecretName"].as_str() else {
            continue;
        };
        let Some(secret) = secrets.get_opt(data_name).await? else {
            continue;
        };
        let Some(config) = secret
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
        else {
            continue;
        };
        nodes.started += 1;
        let address = loopback_address(nodes.started);
        let spec = NodeSpec {
            address,
            port: 50000,
            hostname: owner.clone(),
            version: "v1.13.0".into(),
            config: Some(config),
        };
        if let Err(e) = sim.start(spec) {
            tracing::warn!(machine = %owner, error = %e, "sim infrastructure: the node did not start");
            continue;
        }
        nodes.by_machine.insert(name.clone(), address.to_string());
        sim_machines
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"providerID": format!("sim://{ns}/{owner}")}})),
            )
            .await?;
        sim_machines
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "initialization": {"provisioned": true},
                    "addresses": [{"type": "InternalIP", "address": address.to_string()}],
                }})),
            )
            .await?;
    }
    Ok(())
}
