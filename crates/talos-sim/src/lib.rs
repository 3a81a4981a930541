//! Simulated Talos nodes that real Talos tooling cannot tell from real ones: they speak the
//! Talos gRPC API (our talos-api definitions) over TLS on loopback addresses, boot into
//! maintenance mode or straight into a configuration, enforce Talos's roles, share a simulated
//! etcd per cluster, upgrade and roll back, and proxy calls between nodes as apid does.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod etcd_http;
mod files;
mod node;
mod service;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

pub use node::{Calls, Configured, Failures, NodeSpec, Phase, SimEvent, Stage, Timing};
use node::{Shared, lock, new_node, spawn_node};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node {0} already exists")]
    Duplicate(String),
    #[error("invalid configuration for node {node}: {reason}")]
    Config {
        node: String,
        #[source]
        reason: node::ConfigRefused,
    },
    #[error("no node {0}")]
    NoSuchNode(String),
}

/// Many clusters of simulated nodes in one process.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    pub fn new(timing: Timing) -> Simulator {
        let (events, _) = broadcast::channel(4096);
        Simulator {
            shared: Arc::new(Shared {
                nodes: Default::default(),
                clusters: Default::default(),
                events,
                timing,
                requests: Default::default(),
                new_node_failures: Default::default(),
                lost_replies: Default::default(),
                calls: Default::default(),
            }),
        }
    }

    /// Start a node (it boots in the background; watch [`Simulator::events`] for NodeUp).
    pub fn start(&self, spec: NodeSpec) -> Result<(), Error> {
        let address = spec.address.to_string();
        let config =
            match &spec.config {
                Some(data) => Some(Configured::parse(data, &spec.version).map_err(|reason| {
                    Error::Config {
                        node: address.clone(),
                        reason,
                    }
                })?),
                None => None,
            };
        let node = Arc::new(new_node(spec, config));
        node.state().failures = lock(&self.shared.new_node_failures).clone();
        {
            let mut nodes = lock(&self.shared.nodes);
            if nodes.contains_key(&address) {
                return Err(Error::Duplicate(address));
            }
            nodes.insert(address, node.clone());
        }
        spawn_node(self.shared.clone(), node);
        Ok(())
    }

    /// Stop and forget a node.
    pub fn remove(&self, address: &str) -> Result<(), Error> {
        let node = lock(&self.shared.nodes)
            .remove(address)
            .ok_or_else(|| Error::NoSuchNode(address.to_owned()))?;
        self.shared.power_off(&node);
        Ok(())
    }

    /// Events: nodes up and down, clusters bootstrapped.
    pub fn events(&self) -> broadcast::Receiver<SimEvent> {
        self.shared.events.subscribe()
    }

    /// Change the failures every node started from now on begins with (e.g. a lost reply to
    /// the first Bootstrap, whichever node it goes to).
    pub fn set_new_node_failures(&self, update: impl FnOnce(&mut Failures)) {
        update(&mut lock(&self.shared.new_node_failures));
    }

    /// The replies lost so far ([`Failures::lost_replies`]), in order: node address and method.
    pub fn lost_replies(&self) -> Vec<(String, String)> {
        lock(&self.shared.lost_replies).clone()
    }

    /// Change a node's injected failures.
    pub fn set_failures(
        &self,
        address: &str,
        update: impl FnOnce(&mut Failures),
    ) -> Result<(), Error> {
        let node = self
            .shared
            .node(address)
            .ok_or_else(|| Error::NoSuchNode(address.to_owned()))?;
        let was_down = node.state().failures.down;
        update(&mut node.state().failures);
        if node.state().failures.down && !was_down {
            // Power off: the API stops listening until `down` is cleared.
            self.shared.power_off(&node);
        }
        Ok(())
    }

    /// A node's phase and running version.
    pub fn status(&self, address: &str) -> Option<(Phase, String)> {
        let node = self.shared.node(address)?;
        let s = node.state();
        Some((s.phase, s.version.clone()))
    }

    /// TCP connections a node's apid has accepted so far, whatever came of them: every attempt
    /// to reach it, a TLS handshake it failed included.
    pub fn connections(&self, address: &str) -> Option<u64> {
        let node = self.shared.node(address)?;
        Some(node.connections.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How often a node has booted, and the configuration documents it runs.
    pub fn running(&self, address: &str) -> Option<(u64, Vec<serde_json::Value>)> {
        let node = self.shared.node(address)?;
        let s = node.state();
        Some((
            s.boot_count,
            s.config
                .as_ref()
                .map(|c| c.docs.clone())
                .unwrap_or_default(),
        ))
    }

    /// etcd members (address, id, learner) of a cluster.
    pub fn etcd_members(&self, cluster_id: &str) -> Vec<(String, u64, bool)> {
        lock(&self.shared.clusters)
            .get(cluster_id)
            .map(|e| {
                e.members
                    .iter()
                    .map(|m| (m.node.clone(), m.id, m.learner))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Talos API calls served so far, by all nodes (a call proxied to several nodes counts once
    /// per node).
    pub fn requests(&self) -> u64 {
        self.shared
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Talos API calls received so far by all nodes, by gRPC method path (e.g.
    /// `/machine.MachineService/EtcdMemberList`), with how many were answered Unimplemented.
    pub fn calls(&self) -> BTreeMap<String, Calls> {
        lock(&self.shared.calls).clone()
    }

    /// Every membership change of a cluster's etcd, in order.
    pub fn etcd_history(&self, cluster_id: &str) -> Vec<etcd::Change> {
        lock(&self.shared.clusters)
            .get(cluster_id)
            .map(|e| e.history.clone())
            .unwrap_or_default()
    }

    /// Addresses of all nodes.
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.shared.nodes).keys().cloned().collect()
    }
}

/// A unique loopback address for the `n`th node of this process, e.g. 127.13.0.2: tests in
/// parallel processes get different second octets.
pub fn loopback_address(n: u32) -> std::net::IpAddr {
    let b = (std::process::id() % 200 + 20) as u8;
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        b,
        (n / 250) as u8,
        (n % 250 + 2) as u8,
    ))
}
