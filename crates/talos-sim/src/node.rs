//! Simulated nodes: their lifecycle (maintenance, install, boot, reboot, upgrade, reset), TLS
//! material, and the registry shared by all nodes and clusters of one simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::etcd::Etcd;

/// How long simulated transitions take.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// From "install" (config applied in maintenance) or power-on to the API answering.
    pub boot: Duration,
    /// A reboot: the API is down this long.
    pub reboot: Duration,
    /// From an upgrade request to the reboot into the new version.
    pub upgrade: Duration,
    /// From joining etcd as a learner to promotion.
    pub promote: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            boot: Duration::from_millis(200),
            reboot: Duration::from_millis(300),
            upgrade: Duration::from_millis(300),
            promote: Duration::from_millis(200),
        }
    }
}

/// Failures to inject into one node.
#[derive(Debug, Clone, Default)]
pub struct Failures {
    /// The node is powered off / unreachable: its API does not listen.
    pub down: bool,
    /// Extra boot time.
    pub slow_boot: Duration,
    /// The next upgrade fails and the node rolls back to its previous version.
    pub upgrade_fails: bool,
    /// etcd on this node reports unhealthy.
    pub etcd_unhealthy: bool,
    /// Errors etcd on this node reports in EtcdStatus (its alarms, e.g. `NOSPACE`), while its
    /// service's health check still passes and it keeps its vote.
    pub etcd_errors: Vec<String>,
    /// gRPC method name (e.g. "EtcdMemberList") -> the error code it returns.
    pub api_errors: HashMap<String, tonic::Code>,
    /// gRPC method name -> how long this node stalls a call it receives, directly or proxied
    /// through another node, before answering it (a hung or overloaded apid; longer than a
    /// client's timeout, the call never returns in time, and neither does a call fanned out to
    /// it with others).
    pub stalls: HashMap<String, Duration>,
    /// The apid certificate issued at the next boot has expired (an hour ago).
    pub expired_certificate: bool,
    /// gRPC method name -> how many of the next calls take effect and are then answered
    /// Unavailable (the connection reset before the reply arrived).
    pub lost_replies: HashMap<String, u32>,
    /// A node going down (reboot, upgrade) stays down, once its downtime is over, until this is
    /// cleared: a test holds it down until what it checks has seen it down, however slow the
    /// machine it runs on.
    pub hold_restarts: bool,
}

/// Where a simulated node listens and what it runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// A loopback address, e.g. 127.0.0.2.
    pub address: IpAddr,
    pub port: u16,
    pub hostname: String,
    /// Talos version tag it runs, e.g. v1.13.0.
    pub version: String,
    /// A machine configuration to start with (cloud userdata); None boots into maintenance.
    pub config: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Maintenance,
    Running,
    /// Rebooting, upgrading or powered off: the API does not answer.
    Down,
}

/// A node's applied configuration, as far as the simulation needs it.
#[derive(Clone)]
pub struct Configured {
    pub docs: Vec<Value>,
    pub control_plane: bool,
    pub cluster_id: String,
    pub os_ca_crt: String,
    pub os_ca_key: Option<String>,
    /// The cluster's etcd CA (PEM certificate and key), on control planes.
    pub etcd_ca: Option<(String, String)>,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("control_plane", &self.control_plane)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

/// Whether Talos `version` (`v1.14.1`) is release 1.`minor` or later.
pub fn release_at_least(version: &str, minor: u32) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let number = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    (number(parts.next()), number(parts.next())) >= (1, minor)
}

/// Why a node refuses a machine configuration, in Talos's words where Talos has them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRefused {
    #[error(transparent)]
    Decode(#[from] machineconfig::Error),
    #[error(
        "error decoding document v1alpha1/{kind}/{name}: {kind:?} \"v1alpha1\": not registered"
    )]
    NotRegistered { kind: String, name: String },
    #[error("{} error(s) occurred: {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
    #[error("no v1alpha1 document")]
    NoV1alpha1,
    #[error("machine.ca.crt is not a certificate")]
    NoOsCa,
}

impl Configured {
    /// Validate and interpret a machine configuration (the checks a node of Talos `version`
    /// runs on apply; before v1.14 it does not know v1.14's document kinds).
    pub fn parse(data: &str, version: &str) -> Result<Configured, ConfigRefused> {
        let docs = machineconfig::render::from_yaml(data)?;
        if !release_at_least(version, 14)
            && let Some(doc) = docs.iter().find(|d| {
                d.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| machineconfig::patch::KINDS_NEW_IN_1_14.contains(&k))
            })
        {
            let field = |f: &str| {
                doc.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            return Err(ConfigRefused::NotRegistered {
                kind: field("kind"),
                name: field("name"),
            });
        }
        let report = machineconfig::validate(&docs, machineconfig::Mode::Metal, false);
        if !report.is_valid() {
            let errors = report.errors.iter().map(ToString::to_string).collect();
            return Err(ConfigRefused::Invalid(errors));
        }
        let v1 = machineconfig::model::v1alpha1(&docs)?.ok_or(ConfigRefused::NoV1alpha1)?;
        let ca = v1
            .machine
            .as_ref()
            .and_then(|m| m.ca.clone())
            .unwrap_or_default();
        let pem = |b64: String| machineconfig::secrets::decode_pem(&b64).ok();
        let etcd_ca = |part: &str| {
            docs.iter()
                .find(|d| d.get("version").and_then(Value::as_str) == Some("v1alpha1"))
                .and_then(|d| d.pointer(&format!("/cluster/etcd/ca/{part}")))
                .and_then(Value::as_str)
                .and_then(|b64| pem(b64.to_owned()))
        };
        Ok(Configured {
            etcd_ca: etcd_ca("crt").zip(etcd_ca("key")),
            control_plane: v1.is_control_plane(),
            cluster_id: machineconfig::model::cluster_id(&docs)
                .unwrap_or_default()
                .to_owned(),
            os_ca_crt: ca.crt.and_then(pem).ok_or(ConfigRefused::NoOsCa)?,
            os_ca_key: ca.key.filter(|k| !k.is_empty()).and_then(pem),
            docs,
        })
    }
}

/// Fields of the v1alpha1 document Talos applies without a reboot (Talos's
/// `Runtime.CanApplyImmediate`): top-level, under `machine`, and under `machine.features`.
const IMMEDIATE_TOP: &[&str] = &["debug", "cluster"];
const IMMEDIATE_MACHINE: &[&str] = &[
    "ca",
    "acceptedCAs",
    "time",
    "certSANs",
    "install",
    "network",
    "sysfs",
    "sysctls",
    "logging",
    "controlPlane",
    "kubelet",
    "kernel",
    "registries",
    "pods",
    "seccompProfiles",
    "nodeAnnotations",
    "nodeLabels",
    "nodeTaints",
];
const IMMEDIATE_FEATURES: &[&str] = &[
    "kubernetesTalosAPIAccess",
    "kubePrism",
    "hostDNS",
    "imageCache",
    "nodeAddressSortAlgorithm",
];

/// Whether Talos can apply `new` over `current` without a reboot, as Talos decides it: the
/// v1alpha1 documents must be equal once the fields it applies live are set aside (other
/// documents apply live). `Err` names the fields that differ.
pub fn immediate_change(current: &[Value], new: &[Value]) -> Result<(), NeedsReboot> {
    let v1 = |docs: &[Value]| {
        docs.iter()
            .find(|d| d.get("version").and_then(Value::as_str) == Some("v1alpha1"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let strip = |mut doc: Value| {
        if let Some(top) = doc.as_object_mut() {
            for k in IMMEDIATE_TOP {
                top.remove(*k);
            }
            if let Some(machine) = top.get_mut("machine").and_then(Value::as_object_mut) {
                for k in IMMEDIATE_MACHINE {
                    machine.remove(*k);
                }
                if let Some(features) = machine.get_mut("features").and_then(Value::as_object_mut) {
                    for k in IMMEDIATE_FEATURES {
                        features.remove(*k);
                    }
                }
            }
        }
        doc
    };
    let (a, b) = (strip(v1(current)), strip(v1(new)));
    if a == b {
        return Ok(());
    }
    let mut differing = Vec::new();
    differences(&a, &b, String::new(), &mut differing);
    Err(NeedsReboot(differing))
}

/// A change Talos applies only with a reboot: the differing fields, one `changed: path` each
/// (its message is Talos's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this config change can't be applied in immediate mode\ndiff:\n{}", .0.join("\n"))]
pub struct NeedsReboot(pub Vec<String>);

/// What a dry-run apply of `new` over `current` reports, as Talos words it: `Config diff:`
/// then a diff (here one `-`/`+` line per differing field, as `path: value`), or
/// `No changes.`.
pub fn config_diff(current: &[Value], new: &[Value]) -> String {
    let mut lines = Vec::new();
    for i in 0..current.len().max(new.len()) {
        let mut paths = Vec::new();
        let (a, b) = (
            current.get(i).unwrap_or(&Value::Null),
            new.get(i).unwrap_or(&Value::Null),
        );
        differences(a, b, String::new(), &mut paths);
        for path in paths {
            let path = path.trim_start_matches("changed: ");
            let at = |v: &Value| {
                path.split('.')
                    .try_fold(v, |v, k| v.get(k))
                    .filter(|v| !v.is_null())
                    .map(|v| format!("{path}: {v}"))
            };
            lines.extend(at(a).map(|l| format!("-{l}")));
            lines.extend(at(b).map(|l| format!("+{l}")));
        }
    }
    let diff = if lines.is_empty() {
        "No changes.".to_owned()
    } else {
        format!("--- a\n+++ b\n{}", lines.join("\n"))
    };
    format!("Config diff:\n\n{diff}")
}

/// The paths at which `a` and `b` differ, as `changed: machine.env.FOO`.
fn differences(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let object = |v: &Value| match v {
        Value::Object(o) => Some(o.clone()),
        Value::Null => Some(empty.clone()),
        _ => None,
    };
    match (object(a), object(b)) {
        (Some(x), Some(y)) if a.is_object() || b.is_object() => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    sub,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("changed: {path}")),
        _ => {}
    }
}

/// What a boot does to a node's state (install a configuration, switch versions, wipe).
type Transition = Box<dyn FnOnce(&mut NodeState) + Send>;

/// Mutable state of one node.
pub struct NodeState {
    pub phase: Phase,
    pub config: Option<Configured>,
    pub version: String,
    /// A version an upgrade staged for the next reboot.
    pub staged: Option<String>,
    pub failures: Failures,
    pub boot_count: u64,
    /// The apid certificate this boot serves has expired ([`Failures::expired_certificate`]).
    pub certificate_expired: bool,
    /// Bumped by every applied configuration: a TRY's rollback happens only if nothing was
    /// applied since.
    pub applied: u64,
    shutdown: Option<oneshot::Sender<()>>,
    /// What the next boot does to the state, and how long the node stays down before it.
    pending: Option<(Duration, Transition)>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("phase", &self.phase)
            .field("version", &self.version)
            .field("staged", &self.staged)
            .field("boot_count", &self.boot_count)
            .finish_non_exhaustive()
    }
}

pub use talos_api::machine::machine_status_event::MachineStage as Stage;

/// One simulated node.
#[derive(Debug)]
pub struct Node {
    pub spec: NodeSpec,
    state: Mutex<NodeState>,
    /// Events so far (MachineStatusEvents, SequenceEvents), and their live feed
    /// (MachineService.Events).
    log: Mutex<Vec<talos_api::machine::Event>>,
    live: broadcast::Sender<talos_api::machine::Event>,
    /// TCP connections its apid accepted, whatever came of them (a TLS handshake refused over
    /// an expired certificate counts): each new attempt of a client to reach it.
    pub(crate) connections: std::sync::atomic::AtomicU64,
}

impl Node {
    pub fn address(&self) -> String {
        self.spec.address.to_string()
    }

    /// Record a MachineStatusEvent (stage, ready) in the node's event log.
    pub fn machine_status(&self, stage: Stage, ready: bool) {
        use prost::Message;
        let status = talos_api::machine::MachineStatusEvent {
            stage: stage as i32,
            status: Some(talos_api::machine::machine_status_event::MachineStatus {
                ready,
                unmet_conditions: Vec::new(),
            }),
        };
        self.publish("MachineStatusEvent", status.encode_to_vec());
    }

    /// Record a SequenceEvent (machined's `boot`, say, starting or stopping), as machined
    /// publishes one at each end of a sequence it runs.
    pub fn sequence(&self, sequence: &str, action: talos_api::machine::sequence_event::Action) {
        use prost::Message;
        let event = talos_api::machine::SequenceEvent {
            sequence: sequence.into(),
            action: action as i32,
        };
        self.publish("SequenceEvent", event.encode_to_vec());
    }

    /// Append an event of machine message `kind` to the log and its live feed.
    fn publish(&self, kind: &str, value: Vec<u8>) {
        let mut log = lock(&self.log);
        let event = talos_api::machine::Event {
            metadata: None,
            data: Some(prost_types::Any {
                type_url: format!("talos/runtime/machine.{kind}"),
                value,
            }),
            id: format!("{:020}", log.len() + 1),
            actor_id: String::new(),
        };
        log.push(event.clone());
        // Nobody streaming is fine.
        let _ = self.live.send(event);
    }

    /// The last `tail` events (all when negative) and a receiver for the ones to come.
    pub fn events(
        &self,
        tail: i32,
    ) -> (
        Vec<talos_api::machine::Event>,
        broadcast::Receiver<talos_api::machine::Event>,
    ) {
        let log = lock(&self.log);
        let skip = usize::try_from(tail).map_or(0, |t| log.len().saturating_sub(t));
        (log[skip..].to_vec(), self.live.subscribe())
    }

    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Something the test harness wants to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// The node's API answers (after boot or reboot).
    NodeUp {
        address: String,
        hostname: String,
        version: String,
        configured: bool,
    },
    /// The node's API went down (reboot, upgrade, reset, power off).
    NodeDown { address: String },
    /// A cluster's etcd was bootstrapped.
    Bootstrapped { cluster_id: String, address: String },
}

/// State shared by every node of one simulator.
#[derive(Debug)]
pub struct Shared {
    pub nodes: Mutex<BTreeMap<String, Arc<Node>>>,
    pub clusters: Mutex<HashMap<String, Etcd>>,
    pub events: broadcast::Sender<SimEvent>,
    pub timing: Timing,
    /// API calls served (each node's part of a proxied call counts once).
    pub requests: std::sync::atomic::AtomicU64,
    /// What every node started from now on begins with.
    pub new_node_failures: Mutex<Failures>,
    /// Replies lost so far ([`Failures::lost_replies`]): node address and method.
    pub lost_replies: Mutex<Vec<(String, String)>>,
    /// Calls that reached a node's endpoint, by gRPC method path.
    pub calls: Mutex<BTreeMap<String, Calls>>,
}

/// The calls of one gRPC method that reached a node's endpoint (a call proxied to several
/// nodes counts once): what a client asks of the Talos API, and what the simulator lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub received: u64,
    /// Of those, the ones answered Unimplemented: a method (or service) the simulator does not
    /// serve, or not in the node's current mode.
    pub unimplemented: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    pub fn node(&self, key: &str) -> Option<Arc<Node>> {
        let nodes = lock(&self.nodes);
        nodes
            .get(key)
            .cloned()
            .or_else(|| nodes.values().find(|n| n.spec.hostname == key).cloned())
    }

    /// Addresses of nodes whose etcd can serve (running, not failing).
    pub fn healthy_etcd_nodes(&self) -> BTreeSet<String> {
        lock(&self.nodes)
            .values()
            .filter(|n| {
                let s = n.state();
                s.phase == Phase::Running && !s.failures.etcd_unhealthy
            })
            .map(|n| n.address())
            .collect()
    }

    fn emit(&self, event: SimEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Stop a node's API at once (power off, or removal from the simulator).
    pub fn power_off(&self, node: &Node) {
        self.restart(node, Stage::ShuttingDown, Duration::ZERO, |_| {});
    }

    /// Take a node down for `down_for` (announcing `stage`), then apply `then` and bring it up
    /// again.
    pub fn restart(
        &self,
        node: &Node,
        stage: Stage,
        down_for: Duration,
        then: impl FnOnce(&mut NodeState) + Send + 'static,
    ) {
        node.machine_status(stage, false);
        let mut s = node.state();
        s.pending = Some((down_for, Box::new(then)));
        s.phase = Phase::Down;
        if let Some(tx) = s.shutdown.take() {
            let _ = tx.send(());
        }
        drop(s);
        self.emit(SimEvent::NodeDown {
            address: node.address(),
        });
    }
}

/// Start serving `node` until it is removed from the registry.
pub(crate) fn spawn_node(shared: Arc<Shared>, node: Arc<Node>) {
    tokio::spawn(async move {
        loop {
            if !lock(&shared.nodes).contains_key(&node.address()) {
                return;
            }
            let pending = node.state().pending.take();
            if let Some((down_for, then)) = pending {
                let slow = node.state().failures.slow_boot;
                tokio::time::sleep(down_for + slow).await;
                while node.state().failures.hold_restarts {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut s = node.state();
                then(&mut s);
                s.boot_count += 1;
            }
            if node.state().failures.down {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Simulated trustd: a worker gets its apid certificate from the cluster's control
            // planes, so it can only come up once one of them is known.
            let missing_ca = node
                .state()
                .config
                .as_ref()
                .filter(|c| c.os_ca_key.is_none())
                .map(|c| c.cluster_id.clone());
            if let Some(cluster_id) = missing_ca {
                let key = lock(&shared.nodes).values().find_map(|n| {
                    n.state()
                        .config
                        .as_ref()
                        .filter(|c| c.cluster_id == cluster_id)
                        .and_then(|c| c.os_ca_key.clone())
                });
                match key {
                    Some(k) => node
                        .state()
                        .config
                        .as_mut()
                        .into_iter()
                        .for_each(|c| c.os_ca_key = Some(k.clone())),
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            // The phase the node boots into; it is entered once the API listens.
            let (tls, phase) = {
                let mut s = node.state();
                let phase = if s.config.is_some() {
                    Phase::Running
                } else {
                    Phase::Maintenance
                };
                s.certificate_expired = s.failures.expired_certificate;
                (tls_for(&node.spec, &s), phase)
            };
            let tls = match tls {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(node = %node.address(), "no TLS material: {e}");
                    return;
                }
            };
            let listener = match tokio::net::TcpListener::bind(SocketAddr::new(
                node.spec.address,
                node.spec.port,
            ))
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(node = %node.address(), "bind failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tx, rx) = oneshot::channel();
            {
                let mut s = node.state();
                s.shutdown = Some(tx);
                s.phase = phase;
            }
            // A configured node has run machined's boot sequence by the time its API answers
            // (CACPPT holds a scale-up while a node's boot sequence has started and not
            // stopped); a node in maintenance mode waits for a configuration instead.
            use talos_api::machine::sequence_event::Action;
            if phase == Phase::Running {
                node.sequence("boot", Action::Start);
            }
            node.machine_status(
                if phase == Phase::Running {
                    Stage::Running
                } else {
                    Stage::Maintenance
                },
                true,
            );
            if phase == Phase::Running {
                node.sequence("boot", Action::Stop);
            }
            crate::service::after_boot(&shared, &node);
            let version = node.state().version.clone();
            shared.emit(SimEvent::NodeUp {
                address: node.address(),
                hostname: node.spec.hostname.clone(),
                version,
                configured: phase == Phase::Running,
            });
            // A reboot or power-off cuts every connection at once, as on a real machine: the
            // server future is dropped rather than shut down gracefully.
            let server = crate::service::serve(
                shared.clone(),
                node.clone(),
                tls,
                listener,
                std::future::pending(),
            );
            // etcd's HTTP endpoints of a v1.14 control plane go down with the API.
            let etcd_http = crate::etcd_http::serve(shared.clone(), node.clone());
            let served = tokio::select! {
                r = server => r,
                _ = rx => Ok(()),
                () = etcd_http => Ok(()),
            };
            if let Err(e) = served {
                tracing::warn!(node = %node.address(), "server stopped: {e}");
            }
        }
    });
}

/// Why a node has no TLS material to serve with.
#[derive(Debug, thiserror::Error)]
enum TlsError {
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
    #[error("workers need the cluster's OS CA (simulated trustd)")]
    NoOsCaKey,
    #[error(transparent)]
    OsCaKey(#[from] machineconfig::Error),
}

/// Maintenance: a per-boot self-signed certificate, no client certificates. Configured: an apid
/// certificate signed by the cluster's OS CA, client certificates required and verified.
fn tls_for(spec: &NodeSpec, state: &NodeState) -> Result<ServerTlsConfig, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![spec.hostname.clone()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(spec.address));
    params
        .distinguished_name
        .push(DnType::CommonName, spec.hostname.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = if state.failures.expired_certificate {
        (
            now - time::Duration::hours(25),
            now - time::Duration::hours(1),
        )
    } else {
        (
            now - time::Duration::hours(1),
            now + time::Duration::hours(24),
        )
    };
    match &state.config {
        None => {
            let cert = params.self_signed(&key)?;
            Ok(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(cert.pem(), key.serialize_pem())),
            )
        }
        Some(c) => {
            let ca_key = c.os_ca_key.clone().ok_or(TlsError::NoOsCaKey)?;
            let ca_key = machineconfig::secrets::signing_key(&ca_key)?;
            let issuer = Issuer::from_ca_cert_pem(&c.os_ca_crt, ca_key)?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok(ServerTlsConfig::new()
                .identity(Identity::from_pem(cert.pem(), key.serialize_pem()))
                .client_ca_root(Certificate::from_pem(&c.os_ca_crt)))
        }
    }
}

pub(crate) fn new_node(spec: NodeSpec, config: Option<Configured>) -> Node {
    let phase = if config.is_some() {
        Phase::Down
    } else {
        Phase::Maintenance
    };
    let (live, _) = broadcast::channel(256);
    Node {
        log: Mutex::new(Vec::new()),
        live,
        connections: Default::default(),
        state: Mutex::new(NodeState {
            phase,
            config,
            version: spec.version.clone(),
            staged: None,
            failures: Failures::default(),
            boot_count: 0,
            certificate_expired: false,
            applied: 0,
            shutdown: None,
            pending: None,
        }),
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn talos_applies_labels_live_and_reboots_for_environment_changes() {
        let doc = |machine: Value| {
            vec![
                json!({"version": "v1alpha1", "machine": machine, "cluster": {"clusterName": "a"}}),
                json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}),
            ]
        };
        let current = doc(json!({"type": "controlplane", "nodeLabels": {"a": "1"},
            "features": {"kubePrism": {"enabled": false}}}));
        let labels = doc(json!({"type": "controlplane", "nodeLabels": {"a": "2"},
            "features": {"kubePrism": {"enabled": true}}}));
        assert_eq!(immediate_change(&current, &labels), Ok(()));
        let mut renamed = labels.clone();
        renamed[0]["cluster"]["clusterName"] = json!("b");
        renamed[1]["auto"] = json!("off");
        assert_eq!(
            immediate_change(&current, &renamed),
            Ok(()),
            "cluster and other documents apply live"
        );
        let env = doc(json!({"type": "controlplane", "env": {"HTTP_PROXY": "x"},
            "features": {"kubePrism": {"enabled": false}}}));
        let refused = immediate_change(&current, &env)
            .expect_err("needs a reboot")
            .to_string();
        assert!(
            refused.starts_with("this config change can't be applied in immediate mode"),
            "{refused}"
        );
        assert!(
            refused.contains("changed: machine.env.HTTP_PROXY"),
            "{refused}"
        );
    }
}
