//! A test infrastructure provider over simulated Talos nodes. It makes every SimCluster of a
//! namespace provisioned (with the failure domains asked for) and every SimMachine a node: once
//! the owner Machine has bootstrap data, a simulated Talos node boots with it (as a cloud node
//! boots from userdata), serving the Talos API on port 50000 of a loopback address, and the
//! SimMachine reports that address (`status.addresses`, which the Machine copies) and is
//! provisioned. The node runs the Talos release its SimMachine's `spec.talosVersion` names (the
//! machine image's), v1.13.0 when none. It is a test fixture: it polls, where a product
//! controller would watch.
//!
//! The address: as a real Talos node takes the static address its configuration gives a link,
//! a node takes the first IPv4 address in 127.0.0.0/8 that its configuration assigns (a
//! v1alpha1 interface or VLAN, or a link document of the multi-document network configuration:
//! [`static_address`] says which fields count). A configuration that assigns none gets an
//! address of its own ([`talos_sim::loopback_address`], a different one per node). A node whose
//! address is already held (by another node of this simulator, or by a listener on its port:
//! another process's node) does not start: the conflict is logged as a warning, and the node is
//! tried again on the next passes, at the same address, until it is free. No other address is
//! ever picked for it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use talos_sim::{NodeSpec, Simulator, Timing, loopback_address};

mod static_address;
pub use static_address::static_address;

fn dynamic(client: &kube::Client, ns: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    crate::dynamic_api(client, ns, api_version, kind)
}

/// Runs until dropped.
pub struct SimInfra {
    pub sim: Simulator,
    task: tokio::task::JoinHandle<()>,
    /// The nodes started and the workload API servers, kept across [`SimInfra::serve_from`].
    state: Arc<tokio::sync::Mutex<Nodes>>,
    ns: String,
    domains: Vec<Value>,
}

impl std::fmt::Debug for SimInfra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimInfra").finish_non_exhaustive()
    }
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
    start_with(client, ns, failure_domains, false)
}

/// [`start`], and with `workloads` a real kube-apiserver for every Cluster whose endpoint is on
/// 127.0.0.1, once its etcd is bootstrapped: the Cluster's own Kubernetes CA signs its serving
/// certificate and is its client CA, and the simulated nodes register their Nodes there.
pub fn start_with(
    client: &kube::Client,
    ns: &str,
    failure_domains: &[&str],
    workloads: bool,
) -> SimInfra {
    start_serving(
        client,
        ns,
        failure_domains,
        workloads,
        None,
        Timing::default(),
    )
}

/// [`start`], with simulated nodes that take `timing` for their transitions.
pub fn start_timed(
    client: &kube::Client,
    ns: &str,
    failure_domains: &[&str],
    timing: Timing,
) -> SimInfra {
    start_serving(client, ns, failure_domains, false, None, timing)
}

/// [`start_with`] workload API servers, which keep their data in `etcd` (the management
/// cluster's own, say) instead of the shared control plane's.
pub fn start_with_workloads_in(
    client: &kube::Client,
    ns: &str,
    failure_domains: &[&str],
    etcd: Arc<crate::Etcd>,
) -> SimInfra {
    start_serving(
        client,
        ns,
        failure_domains,
        true,
        Some(etcd),
        Timing::default(),
    )
}

fn start_serving(
    client: &kube::Client,
    ns: &str,
    failure_domains: &[&str],
    workloads: bool,
    workload_etcd: Option<Arc<crate::Etcd>>,
    timing: Timing,
) -> SimInfra {
    let sim = Simulator::new(timing);
    let domains: Vec<Value> = failure_domains
        .iter()
        .map(|name| json!({"name": name, "controlPlane": true}))
        .collect();
    let state = Arc::new(tokio::sync::Mutex::new(Nodes {
        workloads: workloads.then(BTreeMap::new),
        workload_etcd,
        ..Nodes::default()
    }));
    let task = tokio::spawn(serve(
        client.clone(),
        ns.to_owned(),
        sim.clone(),
        domains.clone(),
        Arc::clone(&state),
    ));
    SimInfra {
        sim,
        task,
        state,
        ns: ns.to_owned(),
        domains,
    }
}

impl SimInfra {
    /// Stop serving, leaving every node and workload API server running (as an infrastructure
    /// provider's controller does while its clusters are paused for `clusterctl move`).
    pub fn pause(&mut self) {
        self.task.abort();
    }

    /// SimMachines whose node does not start because its address is held by another node, and
    /// that address (as of the last provisioning pass).
    pub async fn address_conflicts(&self) -> BTreeMap<String, IpAddr> {
        self.state.lock().await.conflicts.clone()
    }

    /// Serve the same nodes from the management cluster of `client` (the target of
    /// `clusterctl move`): its SimMachines, recreated there without status, get their nodes'
    /// status again.
    pub fn serve_from(&mut self, client: &kube::Client) {
        self.task.abort();
        self.task = tokio::spawn(serve(
            client.clone(),
            self.ns.clone(),
            self.sim.clone(),
            self.domains.clone(),
            Arc::clone(&self.state),
        ));
    }
}

/// A node the infrastructure started for a SimMachine.
struct Started {
    address: String,
    /// The owner Machine, whose name is the node's hostname.
    machine: String,
    cluster: String,
    /// A control-plane Machine's node (labelled with the control-plane role, as Talos labels
    /// it; a worker's Node has no role label).
    control_plane: bool,
}

/// SimMachine name → its node, and the workload API servers, per Cluster.
#[derive(Default)]
struct Nodes {
    by_machine: BTreeMap<String, Started>,
    workloads: Option<BTreeMap<String, Workload>>,
    /// What each machine's Node was last reported as (as a kubelet, it reports a change of its
    /// own state, and leaves the Node alone otherwise).
    reported: BTreeMap<String, Reported>,
    /// Where workload API servers keep their data (default: the shared control plane's etcd).
    workload_etcd: Option<Arc<crate::Etcd>>,
    /// SimMachines whose node waits for its address to be free, and that address (each
    /// conflict is warned about once).
    conflicts: BTreeMap<String, IpAddr>,
}

impl Nodes {
    /// SimMachine `name`'s node cannot start: `holder` holds its `address`.
    fn conflict(&mut self, name: &str, address: IpAddr, holder: &str) {
        if self.conflicts.insert(name.to_owned(), address) == Some(address) {
            tracing::debug!(sim_machine = name, %address, holder, "sim infrastructure: address still in use");
        } else {
            tracing::warn!(
                sim_machine = name,
                %address,
                holder,
                "sim infrastructure: address conflict: the node's address is in use; not starting it until the address is free"
            );
        }
    }
}

/// Nodes started in this process: each gets an address of its own, whichever infrastructure
/// (test) started it.
static STARTED: AtomicU32 = AtomicU32::new(0);

/// A Node as last reported: Ready, and the Talos version it runs.
type Reported = (bool, Option<String>);

/// A workload cluster's real API server.
struct Workload {
    _apiserver: crate::LocalControlPlane,
    client: kube::Client,
}

async fn serve(
    client: kube::Client,
    ns: String,
    sim: Simulator,
    domains: Vec<Value>,
    state: Arc<tokio::sync::Mutex<Nodes>>,
) {
    loop {
        {
            let mut nodes = state.lock().await;
            let provisioned = pass(&client, &ns, &sim, &domains, &mut nodes);
            if let Err(e) = within(PASS_LIMIT, provisioned).await {
                tracing::debug!(error = %e, "sim infrastructure: retrying");
            }
            if nodes.workloads.is_some() {
                let served = serve_workloads(&client, &ns, &sim, &mut nodes);
                if let Err(e) = within(WORKLOADS_LIMIT, served).await {
                    tracing::debug!(error = %e, "sim workload clusters: retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long one provisioning pass may take. A request on a connection that a killed
/// kube-apiserver left behind can hang until the client's read timeout (295 s), and the
/// infrastructure would stop with it (seen once in `make e2e-faults`); cut short, the pass is
/// taken again from the start, as after any error.
const PASS_LIMIT: Duration = Duration::from_secs(60);

/// The same for the workload API servers' pass, which starts kube-apiservers (tens of seconds
/// on a loaded machine).
const WORKLOADS_LIMIT: Duration = Duration::from_secs(180);

/// Why a pass stopped (it is taken again from the start).
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Harness(#[from] crate::Error),
    #[error(transparent)]
    Bundle(#[from] machineconfig::Error),
    #[error("the cluster CA: {0}")]
    Pem(#[from] machineconfig::DecodeError),
    #[error("a Node: {0}")]
    Node(#[from] serde_json::Error),
    #[error("endpoint port {0} is out of range")]
    Port(u64),
    #[error("the pass took longer than {0:?}")]
    TooLong(Duration),
}

/// What `pass` did, or an error once it took longer than `limit`.
async fn within<E: Into<PassError>>(
    limit: Duration,
    pass: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), PassError> {
    match tokio::time::timeout(limit, pass).await {
        Ok(done) => done.map_err(Into::into),
        Err(_) => Err(PassError::TooLong(limit)),
    }
}

/// The Clusters with an endpoint on 127.0.0.1 whose etcd is bootstrapped and whose API server
/// is not in `served` yet: name, endpoint port, secrets bundle.
async fn bootstrapped_clusters(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    served: &BTreeMap<String, Workload>,
) -> Result<Vec<(String, u16, machineconfig::SecretsBundle)>, PassError> {
    let clusters = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Cluster");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut found = Vec::new();
    for cluster in clusters.list(&ListParams::default()).await? {
        let name = cluster.name_any();
        let endpoint = &cluster.data["spec"]["controlPlaneEndpoint"];
        let Some(port) = endpoint["port"]
            .as_u64()
            .filter(|_| endpoint["host"] == "127.0.0.1")
        else {
            continue;
        };
        if served.contains_key(&name) {
            continue;
        }
        let Some(bundle) = secrets.get_opt(&format!("{name}-talos")).await? else {
            continue;
        };
        let data: BTreeMap<String, Vec<u8>> = bundle
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let bundle = machineconfig::SecretsBundle::from_cabpt_secret(&data)?;
        let bootstrapped = sim
            .etcd_history(&bundle.cluster.id)
            .iter()
            .any(|c| c.op == talos_sim::etcd::Op::Bootstrap);
        if bootstrapped {
            let port = u16::try_from(port).map_err(|_| PassError::Port(port))?;
            found.push((name, port, bundle));
        }
    }
    Ok(found)
}

/// Start the API servers of bootstrapped clusters and keep their Nodes in step with the nodes.
async fn serve_workloads(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    nodes: &mut Nodes,
) -> Result<(), PassError> {
    let etcd = nodes.workload_etcd.clone();
    let Some(workloads) = nodes.workloads.as_mut() else {
        return Ok(());
    };
    let mut builders = Vec::new();
    for (name, port, bundle) in bootstrapped_clusters(client, ns, sim, workloads).await? {
        let crt = machineconfig::secrets::decode_pem(&bundle.certs.k8s.crt)?;
        let key = machineconfig::secrets::decode_pem(&bundle.certs.k8s.key)?;
        let key = machineconfig::secrets::signing_key(&key)?.serialize_pem();
        let etcd = match &etcd {
            Some(etcd) => Arc::clone(etcd),
            None => crate::shared().await?.etcd(),
        };
        let builder = crate::LocalControlPlane::builder()
            .name(&name)
            .etcd(etcd, &format!("/workload/{ns}/{name}"))
            .ca(crate::pki::Ca::from_pem(&crt, &key)?)
            .port(port);
        builders.push((name, builder));
    }
    // Clusters bootstrapped at about the same time (a benchmark's ten) start their API servers
    // together, not one after the other.
    let started = futures::future::join_all(builders.into_iter().map(|(name, builder)| async {
        let apiserver = builder.start().await?;
        let client = apiserver.client().await?;
        Ok::<_, PassError>((name, apiserver, client))
    }))
    .await;
    // One that failed is tried again at the next pass; the others are served from now on.
    let mut failed = Ok(());
    for result in started {
        match result {
            Ok((name, apiserver, client)) => {
                workloads.insert(
                    name,
                    Workload {
                        _apiserver: apiserver,
                        client,
                    },
                );
            }
            Err(e) => failed = Err(e),
        }
    }
    failed?;
    // Every node of a served cluster has its Node, with the conditions a kubelet reports:
    // Ready while the node runs (not while it reboots), no pressure.
    let reported = &mut nodes.reported;
    reported.retain(|machine, _| nodes.by_machine.contains_key(machine));
    for started in nodes.by_machine.values() {
        let Some(workload) = workloads.get(&started.cluster) else {
            continue;
        };
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(workload.client.clone());
        let status = sim.status(&started.address);
        let running = status
            .as_ref()
            .is_some_and(|(phase, _)| *phase == talos_sim::Phase::Running);
        let ready = if running { "True" } else { "False" };
        // Reported again on a change of either: a reboot into another version can be over
        // between two passes (the simulator's takes 300 ms), and the new version must show.
        let now_seen = (running, status.as_ref().map(|(_, version)| version.clone()));
        if reported.get(&started.machine) == Some(&now_seen) {
            continue;
        }
        if api.get_opt(&started.machine).await?.is_none() {
            let labels = if started.control_plane {
                json!({"node-role.kubernetes.io/control-plane": ""})
            } else {
                json!({})
            };
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": started.machine, "labels": labels},
                "spec": {"providerID": format!("sim://{ns}/{}", started.machine)},
            });
            api.create(&Default::default(), &serde_json::from_value(node)?)
                .await?;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": "simulated",
                "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let (reason, pressure) = if running {
            ("KubeletReady", "False")
        } else {
            ("KubeletNotReady", "Unknown")
        };
        api.patch_status(
            &started.machine,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "conditions": [
                    condition("Ready", ready, reason),
                    condition("MemoryPressure", pressure, "KubeletHasSufficientMemory"),
                    condition("DiskPressure", pressure, "KubeletHasNoDiskPressure"),
                    condition("PIDPressure", pressure, "KubeletHasSufficientPID"),
                ],
                "addresses": [{"type": "InternalIP", "address": started.address}],
                "nodeInfo": node_info(status.map(|(_, version)| version).as_deref()),
            }})),
        )
        .await?;
        reported.insert(started.machine.clone(), now_seen);
    }
    Ok(())
}

/// What a kubelet on Talos reports about its host; the OS image names the Talos version the
/// node booted (kept from the last report while it is down).
fn node_info(talos: Option<&str>) -> Value {
    let mut info = json!({
        "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
        "containerRuntimeVersion": "containerd://2.1.0", "kubeletVersion": "",
        "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
    });
    if let Some(version) = talos {
        info["osImage"] = json!(format!("Talos ({version})"));
    }
    info
}

async fn pass(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    domains: &[Value],
    nodes: &mut Nodes,
) -> Result<(), kube::Error> {
    let infra = "infrastructure.cluster.x-k8s.io/v1alpha1";
    provision_clusters(&dynamic(client, ns, infra, "SimCluster"), domains).await?;
    let apis = Apis {
        ns,
        sim_machines: dynamic(client, ns, infra, "SimMachine"),
        machines: dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Machine"),
        secrets: Api::namespaced(client.clone(), ns),
    };
    let listed = apis.sim_machines.list(&ListParams::default()).await?;
    // A SimMachine that is gone or going takes its node with it (the instance is terminated).
    let live: Vec<String> = listed
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    nodes.by_machine.retain(|name, started| {
        let keep = live.contains(name);
        if !keep {
            let _ = sim.remove(&started.address);
        }
        keep
    });
    nodes.conflicts.retain(|name, _| live.contains(name));
    // A SimMachine annotated POWER_OFF loses its node for good (a host that died): the node
    // stops answering and its Node goes NotReady, for a MachineHealthCheck to find.
    for m in listed.iter().filter(|m| powered_off(m)) {
        if let Some(started) = nodes.by_machine.get(&m.name_any())
            && sim.status(&started.address).is_some()
        {
            tracing::info!(machine = %started.machine, "sim infrastructure: powering the node off");
            let _ = sim.remove(&started.address);
        }
    }
    for m in listed {
        let name = m.name_any();
        if let Some(started) = nodes.by_machine.get(&name) {
            // Recreated elsewhere (clusterctl move copies no status), or a report cut short (the
            // API server went away between starting the node and reporting it): again.
            if m.data["status"]["initialization"]["provisioned"] != json!(true)
                || m.data["spec"]["providerID"].as_str().is_none()
            {
                let who = (name.as_str(), ns, started.machine.as_str());
                report_node(&apis.sim_machines, who, &started.address).await?;
            }
            continue;
        }
        if live.contains(&name) {
            boot(&apis, sim, nodes, &m).await?;
        }
    }
    Ok(())
}

/// Every SimCluster provisioned, with the failure domains.
async fn provision_clusters(
    clusters: &Api<DynamicObject>,
    domains: &[Value],
) -> Result<(), kube::Error> {
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
    Ok(())
}

/// The APIs of a provisioning pass, in its namespace.
struct Apis<'a> {
    ns: &'a str,
    sim_machines: Api<DynamicObject>,
    machines: Api<DynamicObject>,
    secrets: Api<Secret>,
}

/// The Talos API's port on every node.
const TALOS_API_PORT: u16 = 50000;

/// Boot the node of SimMachine `m` once its owner Machine has bootstrap data, at the static
/// address its configuration names (else an address of its own), and report it. A node whose
/// address another node holds does not start (an address conflict); it is tried again on the
/// next pass.
async fn boot(
    apis: &Apis<'_>,
    sim: &Simulator,
    nodes: &mut Nodes,
    m: &DynamicObject,
) -> Result<(), kube::Error> {
    let name = m.name_any();
    let Some((owner, machine, config)) = bootstrap_data(apis, m).await? else {
        return Ok(());
    };
    let address = match static_address(&config) {
        Some(address) => IpAddr::V4(address),
        None => loopback_address(STARTED.fetch_add(1, Ordering::Relaxed) + 1),
    };
    if let Some(holder) = holder_of(sim, nodes, address) {
        nodes.conflict(&name, address, &holder);
        return Ok(());
    }
    let spec = NodeSpec {
        address,
        port: TALOS_API_PORT,
        hostname: owner.clone(),
        version: image_version(m),
        config: Some(config),
    };
    match sim.start(spec) {
        Ok(()) => {}
        Err(talos_sim::Error::Duplicate(_)) => {
            nodes.conflict(&name, address, "another simulated node");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(machine = %owner, error = %e, "sim infrastructure: the node did not start");
            return Ok(());
        }
    }
    nodes.conflicts.remove(&name);
    nodes.by_machine.insert(
        name.clone(),
        Started {
            address: address.to_string(),
            machine: owner.clone(),
            cluster: machine.data["spec"]["clusterName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            control_plane: machine
                .labels()
                .contains_key("cluster.x-k8s.io/control-plane"),
        },
    );
    report_node(
        &apis.sim_machines,
        (&name, apis.ns, &owner),
        &address.to_string(),
    )
    .await
}

/// SimMachine `m`'s owner Machine (its name and object) and the machine configuration in its
/// bootstrap data Secret, once it has them.
async fn bootstrap_data(
    apis: &Apis<'_>,
    m: &DynamicObject,
) -> Result<Option<(String, DynamicObject, String)>, kube::Error> {
    let Some(owner) = m
        .owner_references()
        .iter()
        .find(|o| o.kind == "Machine")
        .map(|o| o.name.clone())
    else {
        return Ok(None);
    };
    let Some(machine) = apis.machines.get_opt(&owner).await? else {
        return Ok(None);
    };
    let Some(data_name) = machine.data["spec"]["bootstrap"]["dataSecretName"].as_str() else {
        return Ok(None);
    };
    let Some(secret) = apis.secrets.get_opt(data_name).await? else {
        return Ok(None);
    };
    let config = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());
    Ok(config.map(|config| (owner, machine, config)))
}

/// What holds `address` already, if anything does: a node of this simulator (named by its
/// machine), or a listener on its Talos API port (another process's simulated node).
fn holder_of(sim: &Simulator, nodes: &Nodes, address: IpAddr) -> Option<String> {
    let text = address.to_string();
    if sim.nodes().contains(&text) {
        let machine = nodes
            .by_machine
            .values()
            .find(|s| s.address == text)
            .map_or("a simulated node", |s| s.machine.as_str());
        return Some(format!("the node of {machine}"));
    }
    match std::net::TcpListener::bind((address, TALOS_API_PORT)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Some(format!("another listener on port {TALOS_API_PORT}"))
        }
        _ => None,
    }
}

/// The Talos release a SimMachine's node boots when its spec names none.
pub const DEFAULT_TALOS: &str = "v1.13.0";

/// The Talos release a SimMachine's node boots, as a cloud machine boots its image's:
/// `spec.talosVersion` (from the SimMachineTemplate) when it is a version tag such as v1.14.0,
/// else [`DEFAULT_TALOS`].
fn image_version(m: &DynamicObject) -> String {
    m.data["spec"]["talosVersion"]
        .as_str()
        .filter(|v| {
            v.len() <= 32
                && v.strip_prefix('v').is_some_and(|rest| {
                    rest.split(['.', '-'])
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
                })
        })
        .unwrap_or(DEFAULT_TALOS)
        .to_owned()
}

/// The SimMachine annotation that powers its node off for good (`"true"`): how a test (or the
/// e2e suite, through nothing but a kubeconfig) makes a machine fail.
pub const POWER_OFF: &str = "infrastructure.cluster.x-k8s.io/sim-power-off";

fn powered_off(m: &DynamicObject) -> bool {
    m.annotations().get(POWER_OFF).is_some_and(|v| v == "true")
}

/// A SimMachine's provider ID (`sim://<ns>/<machine>`, its owner Machine's name) and status:
/// provisioned, at its node's address.
async fn report_node(
    sim_machines: &Api<DynamicObject>,
    (name, ns, machine): (&str, &str, &str),
    address: &str,
) -> Result<(), kube::Error> {
    sim_machines
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": format!("sim://{ns}/{machine}")}})),
        )
        .await?;
    sim_machines
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "initialization": {"provisioned": true},
                "addresses": [{"type": "InternalIP", "address": address}],
            }})),
        )
        .await
        .map(drop)
}

/// A Cluster whose control plane is a TalosControlPlane `name` of `replicas` machines cloned
/// from SimMachineTemplate `name`, with a provisioned SimCluster, its control-plane endpoint at
/// `endpoint` (host, port). The machines' configurations carry an install disk: the simulated
/// nodes validate as bare metal.
pub async fn control_plane_cluster(
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
    endpoint: (&str, u16),
) -> Result<(), crate::Error> {
    let config = json!({
        "generateType": "controlplane", "talosVersion": "v1.13",
        "strategicPatches": ["machine:\n  install:\n    disk: /dev/sda\n"]
    });
    control_plane_cluster_with(client, ns, name, (replicas, endpoint), config).await
}

/// [`control_plane_cluster`] with `config` as the control plane's `controlPlaneConfig.controlplane`.
pub async fn control_plane_cluster_with(
    client: &kube::Client,
    ns: &str,
    name: &str,
    (replicas, endpoint): (i32, (&str, u16)),
    config: serde_json::Value,
) -> Result<(), crate::Error> {
    let infra = crate::infra::api_version();
    let manifests = [
        json!({
            "apiVersion": infra, "kind": "SimMachineTemplate",
            "metadata": {"name": name}, "spec": {"template": {"spec": {}}}
        }),
        json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas, "version": "v1.35.0",
                "infrastructureTemplate": {"apiVersion": infra, "kind": "SimMachineTemplate", "name": name},
                "controlPlaneConfig": {"controlplane": config}
            }
        }),
        json!({
            "apiVersion": infra, "kind": "SimCluster",
            "metadata": {"name": name}, "spec": {}
        }),
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {
                "controlPlaneEndpoint": {"host": endpoint.0, "port": endpoint.1},
                "clusterNetwork": {"pods": {"cidrBlocks": ["10.244.0.0/16"]}, "services": {"cidrBlocks": ["10.96.0.0/12"]}},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": name},
                "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "TalosControlPlane", "name": name}
            }
        }),
    ];
    for manifest in &manifests {
        crate::apply_manifest(client, ns, "sim-infra", manifest).await?;
    }
    Ok(())
}

/// The cluster id the Talos nodes of `cluster` carry, from its secrets bundle (`None` until the
/// bundle exists, or if it cannot be read).
pub async fn cluster_id(client: &kube::Client, ns: &str, cluster: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&format!("{cluster}-talos"))
        .await
        .ok()??;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Some(
        machineconfig::SecretsBundle::from_cabpt_secret(&data)
            .ok()?
            .cluster
            .id,
    )
}
