//! Fixtures shared by the controller integration tests: a namespace-scoped controller, a
//! provisioned Cluster of the test infrastructure provider, Machines with their TalosConfigs.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code; not every test uses every fixture

#[allow(unused_imports)] // not every test binary uses it
pub use testkit::sim_infra;

pub mod clusterctl;

use std::sync::Arc;
use std::time::Duration;

use api::bootstrap::v1alpha3::TalosConfig;
use api::conditions::{self, ConditionType};
use controller::{Context, Options};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use testkit::{shared, unique_namespace};
use tokio::sync::oneshot;

/// How long a test waits for what it expects: generous, so that a loaded machine (make test runs
/// several binaries at once; CI proves it beside two CPU hogs) only makes a test slower.
pub const WAIT: Duration = Duration::from_secs(300);

/// A controller scoped to one test namespace, stopped when dropped.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop the controller as [`Drop`] does (wherever it is), and wait until its task has
    /// ended: nothing of it runs after this.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub async fn setup(prefix: &str) -> (kube::Client, String, Running) {
    setup_with(prefix, Options::default()).await
}

/// [`setup`] with a controller run with other `options`.
pub async fn setup_with(prefix: &str, options: Options) -> (kube::Client, String, Running) {
    let (client, ns, running, _) = setup_context(prefix, options).await;
    (client, ns, running)
}

/// [`setup_with`], also returning the controller's context (its metrics).
pub async fn setup_context(
    prefix: &str,
    options: Options,
) -> (kube::Client, String, Running, Arc<Context>) {
    let cp = shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = unique_namespace(&client, prefix).await.unwrap();
    let (running, ctx) = start_controller_context(&client, &ns, options);
    (client, ns, running, ctx)
}

/// Our TalosConfig controller, watching only `ns`. Its logs go to the test output
/// (RUST_LOG=controller=debug to see them).
pub fn start_controller(client: &kube::Client, ns: &str) -> Running {
    start_controller_with(client, ns, Options::default())
}

/// [`start_controller`] with other options (its namespace is always `ns`).
pub fn start_controller_with(client: &kube::Client, ns: &str, options: Options) -> Running {
    start_controller_context(client, ns, options).0
}

/// [`start_controller_with`], also returning the controller's context (its metrics).
pub fn start_controller_context(
    client: &kube::Client,
    ns: &str,
    options: Options,
) -> (Running, Arc<Context>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ns = ns.to_owned();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Options {
            namespace: Some(ns.clone()),
            ..options
        },
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(Arc::clone(&ctx), async move {
        let _ = stopped.await;
    }));
    let running = Running {
        stop: Some(stop),
        task: Some(task),
    };
    (running, ctx)
}

pub fn dynamic(
    client: &kube::Client,
    ns: &str,
    api_version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    testkit::dynamic_api(client, ns, api_version, kind)
}

pub async fn apply(client: &kube::Client, ns: &str, manifest: Value) {
    testkit::apply_manifest(client, ns, "bootstrap-test", &manifest)
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", manifest["metadata"]["name"]));
}

/// A provisioned test infrastructure cluster and a Cluster with an endpoint and networks.
pub async fn cluster(client: &kube::Client, ns: &str, name: &str, paused: bool) {
    cluster_labelled(client, ns, name, paused, json!({})).await;
}

/// [`cluster`], with extra labels on the Cluster (e.g. a watch filter).
pub async fn cluster_labelled(
    client: &kube::Client,
    ns: &str,
    name: &str,
    paused: bool,
    labels: Value,
) {
    apply(
        client,
        ns,
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimCluster",
            "metadata": {"name": name}, "spec": {}
        }),
    )
    .await;
    testkit::infra::mark_provisioned(client, ns, "SimCluster", name)
        .await
        .unwrap();
    apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "paused": paused,
            "controlPlaneEndpoint": {"host": "192.168.1.100", "port": 6443},
            "clusterNetwork": {
                "pods": {"cidrBlocks": ["10.244.0.0/16", "fd00:10:244::/56"]},
                "services": {"cidrBlocks": ["10.96.0.0/12", "fd00:10:96::/112"]},
                "serviceDomain": "corp.local"
            },
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimCluster", "name": name}
        }
    }))
    .await;
}

/// A TalosConfig and the Machine (with its infrastructure machine) that uses it.
pub async fn machine(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    name: &str,
    spec: Value,
    control_plane: bool,
) {
    machine_labelled(client, ns, cluster, name, spec, control_plane, json!({})).await;
}

/// [`machine`], with extra labels on the TalosConfig and the Machine.
pub async fn machine_labelled(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    name: &str,
    spec: Value,
    control_plane: bool,
    extra: Value,
) {
    let mut labels = json!({"cluster.x-k8s.io/cluster-name": cluster});
    for (k, v) in extra.as_object().into_iter().flatten() {
        labels[k] = v.clone();
    }
    if control_plane {
        labels["cluster.x-k8s.io/control-plane"] = json!("");
    }
    apply(
        client,
        ns,
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": name, "labels": extra}, "spec": spec
        }),
    )
    .await;
    apply(
        client,
        ns,
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachine",
            "metadata": {"name": name}, "spec": {}
        }),
    )
    .await;
    apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "clusterName": cluster, "version": "v1.35.0",
            "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": name}},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": name}
        }
    }))
    .await;
}

/// `config`'s condition `cond`, if its status has one.
pub fn config_condition(
    config: &TalosConfig,
    cond: ConditionType,
) -> Option<conditions::Condition> {
    let all = config.status.as_ref()?.conditions.as_deref()?;
    conditions::get(all, cond).cloned()
}

pub async fn wait_config(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cond: ConditionType,
    status: &'static str,
) -> TalosConfig {
    wait_config_where(client, ns, name, cond, status, |_| true).await
}

/// [`wait_config`], until the condition also satisfies `pred` (a reason, say).
pub async fn wait_config_where(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cond: ConditionType,
    status: &'static str,
    pred: impl Fn(&conditions::Condition) -> bool + Send + 'static,
) -> TalosConfig {
    let api: Api<TalosConfig> = Api::namespaced(client.clone(), ns);
    let waited = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), name, move |c: Option<&TalosConfig>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_deref())
                .and_then(|cs| conditions::get(cs, cond))
                .is_some_and(|c| c.status == status && pred(c))
        }),
    )
    .await;
    match waited {
        Ok(Ok(Some(config))) => config,
        _ => {
            let last = api.get_opt(name).await.ok().flatten();
            let machine = capi_view_of_machine(client, ns, name).await;
            panic!(
                "TalosConfig {ns}/{name}: {cond} did not become {status}.\n{machine}\nTalosConfig (owners, status): {}",
                last.map(
                    |c| json!({"ownerReferences": c.metadata.owner_references, "status": c.status})
                )
                .unwrap_or_default()
            )
        }
    }
}

/// Cluster API's view of the Machine named like a TalosConfig (the tests' convention), for a
/// wait that failed: the Machine's owners and conditions, and the shared core's log lines about
/// it (its reconcile errors say why it set no owner on the TalosConfig; none when the test runs
/// on a control plane of its own, whose namespaces the shared core never sees).
async fn capi_view_of_machine(client: &kube::Client, ns: &str, name: &str) -> String {
    let machine = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Machine")
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|m| {
            json!({
                "ownerReferences": m.metadata.owner_references,
                "finalizers": m.metadata.finalizers,
                "conditions": m.data["status"]["conditions"],
            })
        })
        .unwrap_or_default();
    let key = format!("Machine=\"{ns}/{name}\"");
    let log = testkit::shared_if_started()
        .and_then(|cp| cp.cluster_api())
        .and_then(|capi| std::fs::read_to_string(capi.log_path()).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&key)).collect();
    let last = &lines[lines.len().saturating_sub(12)..];
    format!(
        "Machine {name}: {machine}\nCluster API's last {} of {} log lines about it:\n{}",
        last.len(),
        lines.len(),
        last.join("\n")
    )
}

/// The Secret `<cluster>-talos` holding `bundle` as CABPT writes it (key `bundle`), created
/// before the cluster's first config is reconciled.
pub async fn create_bundle_secret(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    bundle: &machineconfig::SecretsBundle,
) -> Secret {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{cluster}-talos"), "labels": {"cluster.x-k8s.io/cluster-name": cluster}},
        "stringData": {"bundle": bundle.to_yaml().unwrap()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap()
}

/// The TalosConfig's `cond` condition once it is False with `reason`.
pub async fn wait_reason(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cond: ConditionType,
    reason: &'static str,
) -> conditions::Condition {
    let config =
        wait_config_where(client, ns, name, cond, "False", move |c| c.reason == reason).await;
    config
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| conditions::get(&cs, cond).cloned())
        .expect("the condition waited for")
}

/// Until a Warning Event with `reason` is recorded on `name`, whose message satisfies `pred`.
pub async fn wait_warning(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
    pred: impl Fn(&str) -> bool,
) {
    use k8s_openapi::api::core::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let what = format!("{ns}/{name}: a Warning Event {reason}");
    testkit::eventually(&what, WAIT, async || {
        let list = events.list(&Default::default()).await.ok()?.items;
        list.iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some(reason)
                    && e.message.as_deref().is_some_and(&pred)
            })
            .then_some(())
    })
    .await;
}

pub async fn secret_value(client: &kube::Client, ns: &str, name: &str) -> (Secret, Vec<Value>) {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let data = secret.data.clone().unwrap_or_default();
    let value = String::from_utf8(data.get("value").unwrap().0.clone()).unwrap();
    (secret, machineconfig::render::from_yaml(&value).unwrap())
}

pub fn talosctl_validate(docs: &[Value]) {
    let talosctl = testkit::tools::locate(testkit::tools::Tool::Talosctl).unwrap();
    let dir = tempfile_dir();
    let path = dir.join("config.yaml");
    std::fs::write(&path, machineconfig::render::to_yaml(docs).unwrap()).unwrap();
    // Without an install disk (as CABPT renders them) a config is for a cloud platform; with one,
    // for bare metal.
    let mode = if docs[0]["machine"]["install"]["disk"].is_string() {
        "metal"
    } else {
        "cloud"
    };
    let out = std::process::Command::new(talosctl)
        .args(["validate", "--strict", "--mode", mode, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "talosctl validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "talos-capi-bootstrap-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A Cluster whose control plane is a TalosControlPlane of `replicas` machines cloned from a
/// SimMachineTemplate, with its provisioned SimCluster. The TalosControlPlane is named after
/// the cluster.
pub async fn control_plane_cluster(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    control_plane_cluster_at(client, ns, name, replicas, ("192.168.1.100", 6443)).await;
}

/// [`control_plane_cluster`] with its control-plane endpoint at `endpoint` (host, port).
pub async fn control_plane_cluster_at(
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
    endpoint: (&str, u16),
) {
    sim_infra::control_plane_cluster(client, ns, name, replicas, endpoint)
        .await
        .unwrap();
}

/// Until `check` returns Some, or fail with `what` and control plane `name` of `ns` as it is
/// then (see [`eventually_logged`]), within [`WAIT`].
pub async fn eventually<T>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_logged(client, ns, name, &[], WAIT, what, check).await
}

/// Until `check` returns Some, or fail once `within` has passed with `what` and the state waited
/// on: the conditions of TalosControlPlane `name` of `ns` (ours or CACPPT's, the same kind) a
/// line each first (what a truncated log still shows), its status, the control-plane Machines
/// with their versions and nodeRefs, and the tails of `logs` (the components involved).
pub async fn eventually_logged<T>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    logs: &[&std::path::Path],
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let explain = async || {
        let tcps = dynamic(
            client,
            ns,
            "controlplane.cluster.x-k8s.io/v1alpha3",
            "TalosControlPlane",
        );
        let tcp = tcps.get_opt(name).await.ok().flatten();
        let status = tcp.map(|t| t.data["status"].clone()).unwrap_or_default();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let conditions: Vec<String> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let (t, s) = (text(&c["type"]), text(&c["status"]));
                format!("  {t}={s} {}: {}", text(&c["reason"]), text(&c["message"]))
            })
            .collect();
        let machines: Vec<String> = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Machine")
            .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let (version, node) = (&m.data["spec"]["version"], &m.data["status"]["nodeRef"]);
                format!("  {} version={version} nodeRef={node}", m.name_any())
            })
            .collect();
        let tails: Vec<String> = logs
            .iter()
            .map(|log| format!("{}:\n{}", log.display(), testkit::process::tail(log, 40)))
            .collect();
        format!(
            "TalosControlPlane conditions:\n{}\nstatus: {status}\nmachines:\n{}\n{}",
            conditions.join("\n"),
            machines.join("\n"),
            tails.join("\n")
        )
    };
    testkit::eventually_explained(what, within, check, explain).await
}

/// The annotation [`nudge`] sets.
pub const NUDGE: &str = "test.talos-capi.dev/nudge";

/// Change `name` (its [`NUDGE`] annotation, to a value it never had) and nothing else: an
/// event for whoever watches it.
pub async fn nudge<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    static NUDGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NUDGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let patch = json!({"metadata": {"annotations": {NUDGE: format!("{}-{n}", rand_suffix())}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("nudging {name}: {e}"));
}

/// Reconciles of the controller named `controller` (e.g. [`controller::controlplane::CONTROLLER`])
/// ended in `ctx`, successful or not.
pub fn reconciles(ctx: &Context, controller: &'static str) -> u64 {
    let label = controller::metrics::ControllerLabel { controller };
    ctx.metrics.reconciles.get_or_create(&label).get()
}

/// Until the TalosControlPlane controller of `ctx` has ended a reconcile that saw `name` with
/// every change made before this call: what a test that asserts the controller did *not* act
/// waits for instead of a while. The controller runs every TalosControlPlane of `ctx`'s
/// namespace (one per test here); any change to the object reconciles it, and never two
/// reconciles of it at once (a change during one queues the next). So: nudge it and wait for a
/// reconcile to end, then once more. The one that ends the second round started after the
/// first round's had ended, itself after this call began: unless the controller's watch lags
/// behind by more than a reconcile, it saw every change made before.
pub async fn reconciled_since(ctx: &Context, client: &kube::Client, ns: &str, name: &str) {
    use api::controlplane::v1alpha3::TalosControlPlane;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    let names = [name.to_owned()];
    nudged_and_reconciled(ctx, controller::controlplane::CONTROLLER, &api, &names).await;
}

/// [`reconciled_since`] for every TalosConfig of `ns` and the TalosConfig controller of `ctx`:
/// each round nudges them all and waits for as many reconciles to end. (Counted per controller,
/// not per object: one object reconciled twice in a round, because it changed meanwhile, its own
/// status write included, would stand for another. The TalosConfigs of a settled cluster do not.)
pub async fn configs_reconciled_since(ctx: &Context, client: &kube::Client, ns: &str) {
    let api = Api::<TalosConfig>::namespaced(client.clone(), ns);
    let names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    nudged_and_reconciled(ctx, controller::bootstrap::CONTROLLER, &api, &names).await;
}

/// Two rounds of: nudge every one of `names`, and wait until `controller` has ended as many
/// reconciles since.
async fn nudged_and_reconciled<K>(
    ctx: &Context,
    controller: &'static str,
    api: &Api<K>,
    names: &[String],
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for round in 1..=2 {
        let before = reconciles(ctx, controller);
        for name in names {
            nudge(api, name).await;
        }
        let what = format!(
            "{controller}: {} reconciles ended after nudge {round} of {names:?}",
            names.len()
        );
        testkit::eventually(&what, WAIT, async || {
            (reconciles(ctx, controller) >= before + names.len() as u64).then_some(())
        })
        .await;
    }
}

/// What a MachineHealthCheck does to a machine it finds unhealthy: HealthCheckSucceeded False,
/// and OwnerRemediated False to ask the control plane to remediate it.
pub async fn mark_unhealthy(client: &kube::Client, ns: &str, machine: &str) {
    let api = dynamic(client, ns, "cluster.x-k8s.io/v1beta2", "Machine");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |t: &str, reason: &str| {
        json!({
            "type": t, "status": "False", "reason": reason, "lastTransitionTime": now,
            "message": "set by the test as a MachineHealthCheck would",
        })
    };
    for _ in 0..10 {
        let mut m = api.get(machine).await.unwrap();
        let mut conditions = m.data["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.push(condition("HealthCheckSucceeded", "UnhealthyNode"));
        conditions.push(condition("OwnerRemediated", "WaitingForRemediation"));
        m.data["status"]["conditions"] = json!(conditions);
        // A conflict with Cluster API's own status writes: read again and retry.
        if api
            .replace_status(machine, &Default::default(), &m)
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("could not mark machine {machine} unhealthy");
}
