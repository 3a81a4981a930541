//! Hostile objects through the API, as a tenant with write access to one namespace would make
//! them, against `talos-capi manager` as a process on the local control plane (real
//! kube-apiserver and Cluster API core): objects nested past the decoder's limit, present
//! across a restart and created while the manager runs; the table of every hostile class in
//! every configuration field of the four kinds and in the Secrets a cluster's objects read
//! (hostile_api/classes.rs, placed and checked by hostile_api/table.rs), across a restart; and
//! a watch that cannot list. For each:
//! the manager stays up, a healthy cluster in another namespace gets its bootstrap data, the
//! hostile object gets a condition and an Event saying what is wrong, no Secret is written for
//! it, and SIGTERM stops the manager.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../../controller/tests/common/mod.rs"]
mod common;

#[path = "hostile_api/classes.rs"]
mod classes;
#[path = "hostile_api/table.rs"]
mod table;

use std::path::Path;

use api::conditions::ConditionType;
use classes::Case;
use common::{WAIT, cluster, machine, wait_config};
use controller::raw::RawObject;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use kube::core::Request;
use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{Contract, SecretsBundle};
use serde_json::{Value, json};
use table::Placed;
use testkit::bench::component_pid;
use testkit::process::{ManagedProcess, free_port, http_get as get};
use testkit::secrets_scan::{Haystack, Needles};
use testkit::tools::repo_root;
use testkit::{LocalControlPlane, eventually, unique_namespace};

/// A manager process over every namespace, through `kubeconfig`.
struct Manager {
    process: ManagedProcess,
    pid: u32,
    health: u16,
}

async fn manager(cp: &LocalControlPlane, name: &str, kubeconfig: &Path) -> Manager {
    let health = free_port().unwrap();
    let args: Vec<String> = [
        "manager",
        "--log-level",
        "info,controller=debug",
        "--metrics-bind-address",
        "0",
        "--health-probe-bind-address",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([
        format!("127.0.0.1:{health}"),
        format!("--kubeconfig={}", kubeconfig.display()),
    ])
    .collect();
    let log = cp.dir().join(format!("{name}.log"));
    let program = Path::new(env!("CARGO_BIN_EXE_talos-capi"));
    let process = ManagedProcess::spawn(name, program, &args, &log, None).unwrap();
    let pid = component_pid(process.pid(), "/talos-capi").await;
    Manager {
        process,
        pid,
        health,
    }
}

impl Manager {
    fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// The manager's peak resident memory so far, in bytes (VmHWM).
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// Ready, running, and its peak resident memory under 128 MiB.
    async fn assert_healthy(&self) {
        let (code, body) = get(self.health, "/readyz").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        self.process.check_running().unwrap();
        let peak = self.peak_rss();
        eprintln!("the manager's peak RSS: {} MiB", peak >> 20);
        assert!(peak < 128 << 20, "peak RSS {} MiB", peak >> 20);
    }

    /// SIGTERM, then wait for the process to exit: it must, within the shutdown grace.
    async fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        eventually("the manager to exit after SIGTERM", WAIT, async || {
            self.process.check_running().is_err().then_some(())
        })
        .await;
    }
}

/// A control plane of its own: the manager here serves every namespace, and would take up the
/// objects of the shared one's other tests.
async fn control_plane(name: &str) -> LocalControlPlane {
    LocalControlPlane::builder()
        .name(name)
        .cluster_api()
        .crds(repo_root().join("config/crd/bases"))
        .start()
        .await
        .unwrap()
}

/// `[[[…1…]]]`, `depth` lists deep, as JSON text (built as text: a value this deep cannot be
/// held by serde_json).
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Create the object `body` (JSON text) at `path`, as kubectl would send it.
async fn create_raw(client: &kube::Client, path: &str, body: String) {
    post(client, path, body).await.unwrap();
}

/// [`create_raw`], or the API server's refusal.
async fn post(client: &kube::Client, path: &str, body: String) -> Result<(), String> {
    let request = Request::new(path)
        .create(&PostParams::default(), body.into_bytes())
        .unwrap();
    client
        .request_text(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// An object as the API server sent it, read item by item (it may nest past the decoder).
fn raw_object(text: &str) -> RawObject {
    serde_json::from_str(text).unwrap()
}

/// A TalosConfig `name` whose one patch value is nested `depth` levels.
async fn deep_config(client: &kube::Client, ns: &str, name: &str, depth: usize) {
    let body = format!(
        r#"{{"apiVersion":"bootstrap.cluster.x-k8s.io/v1alpha3","kind":"TalosConfig",
        "metadata":{{"name":"{name}","labels":{{"cluster.x-k8s.io/cluster-name":"t"}}}},
        "spec":{{"generateType":"worker","talosVersion":"v1.13",
          "configPatches":[{{"op":"add","path":"/machine/x","value":{}}}]}}}}"#,
        nested(depth)
    );
    let path = format!("/apis/bootstrap.cluster.x-k8s.io/v1alpha3/namespaces/{ns}/talosconfigs");
    create_raw(client, &path, body).await;
}

/// A TalosControlPlane `name` whose control-plane patch value is nested `depth` levels.
async fn deep_control_plane(client: &kube::Client, ns: &str, name: &str, depth: usize) {
    let body = format!(
        r#"{{"apiVersion":"controlplane.cluster.x-k8s.io/v1alpha3","kind":"TalosControlPlane",
        "metadata":{{"name":"{name}"}},
        "spec":{{"replicas":1,"version":"v1.35.0",
          "infrastructureTemplate":{{"apiVersion":"infrastructure.cluster.x-k8s.io/v1alpha1","kind":"SimMachineTemplate","name":"{name}"}},
          "controlPlaneConfig":{{"controlplane":{{"generateType":"controlplane","talosVersion":"v1.13",
            "configPatches":[{{"op":"add","path":"/machine/x","value":{}}}]}}}}}}}}"#,
        nested(depth)
    );
    let path =
        format!("/apis/controlplane.cluster.x-k8s.io/v1alpha3/namespaces/{ns}/taloscontrolplanes");
    create_raw(client, &path, body).await;
}

/// The conditions of `ns/name` (of the kind at `path`), read item by item as the manager reads
/// it: neither kube's typed nor its dynamic objects can hold the object itself. `None` when it
/// does not exist.
async fn conditions_of(client: &kube::Client, path: &str, name: &str) -> Option<Vec<Value>> {
    let request = Request::new(path).get(name, &Default::default()).unwrap();
    let text = match client.request_text(request).await {
        Err(kube::Error::Api(e)) if e.code == 404 => return None,
        other => other.unwrap(),
    };
    let conditions = raw_object(&text)
        .field("status")
        .and_then(|s| serde_json::from_str::<Value>(s.get()).ok())
        .and_then(|s| s["conditions"].as_array().cloned());
    Some(conditions.unwrap_or_default())
}

/// Until `ns/name` says `type_` is False for InvalidSpec, naming the decoder's depth limit.
async fn reported_too_deep(client: &kube::Client, path: &str, name: &str, type_: &str) {
    let expected = (type_, "False", "InvalidSpec", "recursion limit");
    table::wait_condition(client, (path, name), expected, 1).await;
    common::wait_warning(client, path_ns(path), name, "InvalidSpec", |m| {
        m.contains("recursion limit")
    })
    .await;
}

fn path_ns(path: &str) -> &str {
    path.split('/').nth(5).unwrap_or_default()
}

#[tokio::test]
async fn objects_nested_past_the_decoder_limit_are_reported_on_themselves_and_block_no_one() {
    let cp = control_plane("hostile-deep").await;
    let client = cp.client().await.unwrap();
    let tenant = unique_namespace(&client, "tenant").await.unwrap();
    let good = unique_namespace(&client, "good").await.unwrap();
    let configs =
        format!("/apis/bootstrap.cluster.x-k8s.io/v1alpha3/namespaces/{tenant}/talosconfigs");
    let control_planes = format!(
        "/apis/controlplane.cluster.x-k8s.io/v1alpha3/namespaces/{tenant}/taloscontrolplanes"
    );

    // Stored before the manager starts, as after a restart: every list holds them.
    deep_config(&client, &tenant, "deep", 9_000).await;
    deep_control_plane(&client, &tenant, "deep-cp", 9_000).await;
    let m = manager(&cp, "mgr-deep", &cp.kubeconfig_path()).await;
    // And one created while the manager watches.
    deep_config(&client, &tenant, "deep-live", 200).await;

    // A healthy cluster in another namespace gets its bootstrap data.
    cluster(&client, &good, "ok", false).await;
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    machine(&client, &good, "ok", "ok-0", spec, true).await;
    wait_config(&client, &good, "ok-0", ConditionType::Ready, "True").await;

    reported_too_deep(&client, &configs, "deep", "DataSecretAvailable").await;
    reported_too_deep(&client, &configs, "deep-live", "DataSecretAvailable").await;
    reported_too_deep(&client, &control_planes, "deep-cp", "Available").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tenant);
    for name in ["deep", "deep-live"] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "{name}: no Secret"
        );
    }

    m.assert_healthy().await;
    // Named in the log, never by content.
    let log = m.log();
    assert!(!log.contains("[[[["), "the log quotes an object");
    // A WARN once per object and generation, however often its watch events (its own status
    // writes among them) and reconciles come.
    for name in ["deep", "deep-live", "deep-cp"] {
        let warned = log
            .lines()
            .filter(|l| l.contains("an object cannot be decoded"))
            .filter(|l| l.contains("WARN") && l.contains(&format!("{tenant}/{name} ")))
            .count();
        assert_eq!(warned, 1, "{name}: warned about once\n{log}");
    }
    m.terminate().await;
}

/// A healthy cluster in a namespace of its own gets its bootstrap data.
async fn healthy_cluster(client: &kube::Client, prefix: &str) {
    let good = unique_namespace(client, prefix).await.unwrap();
    cluster(client, &good, "ok", false).await;
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    machine(client, &good, "ok", "ok-0", spec, true).await;
    let configs = classes::Kind::TalosConfig.path(&good);
    let ready = ("Ready", "True", "Ready", "");
    table::wait_condition(client, (&configs, "ok-0"), ready, 1).await;
}

/// Every case of the table placed, and what the manager reported checked: those it must
/// report on, and the object each is reported on.
async fn place_and_check_all(
    client: &kube::Client,
    bundle: &str,
    talosconfig: &str,
) -> (Vec<Placed>, Vec<(String, String)>) {
    let cases = classes::spec_cases();
    let secrets = classes::secret_cases(bundle, talosconfig);
    let spec_cases = cases
        .iter()
        .flat_map(|case| classes::KINDS.map(|kind| (case, kind)))
        .filter(|(case, kind)| case.applies(*kind) && Case::selected(&case.what(*kind)))
        .map(|(case, kind)| table::place(client, bundle, case, kind).boxed());
    let secrets = secrets
        .iter()
        .filter(|c| Case::selected(&format!("{} {:?} Secret", c.class, c.secret)));
    let secret_cases = secrets.flat_map(|case| {
        // The bundle is read by the control plane too (for its kubeconfig).
        let consumers: &[bool] = match case.secret {
            classes::SecretKind::Bundle => &[false, true],
            classes::SecretKind::Talosconfig => &[false],
        };
        consumers.iter().map(move |cp| {
            table::place_secret(client, bundle, case, *cp)
                .map(Some)
                .boxed()
        })
    });
    // In waves, each reported before the next is placed: the cases arrive as a tenant's
    // objects would, not 54 at once into one Cluster API manager on a shared machine.
    let mut jobs = spec_cases.chain(secret_cases).peekable();
    let (mut placed, mut watched) = (Vec::new(), Vec::new());
    while jobs.peek().is_some() {
        let wave: Vec<Placed> = futures::stream::iter(jobs.by_ref().take(WAVE))
            .buffer_unordered(16)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        watched.extend(every_case(&wave, |p| &p.what, |p| table::check(client, p)).await);
        placed.extend(wave);
    }
    (placed, watched)
}

/// How many cases are placed at once, and reported, before the next are.
const WAVE: usize = 20;

/// `check` run on every item, 8 at a time, each to its end: the failures are named together
/// (each panic's message is printed as it happens), then the test fails.
async fn every_case<'a, I, F: Future>(
    items: &'a [I],
    what: impl Fn(&I) -> &str,
    check: impl Fn(&'a I) -> F,
) -> Vec<F::Output> {
    let outcomes: Vec<_> = futures::stream::iter(items)
        .map(|item| std::panic::AssertUnwindSafe(check(item)).catch_unwind())
        .buffered(8)
        .collect()
        .await;
    let failed: Vec<&str> = (items.iter().zip(&outcomes))
        .filter(|(_, outcome)| outcome.is_err())
        .map(|(item, _)| what(item))
        .collect();
    assert!(
        failed.is_empty(),
        "{} cases failed: {failed:#?}",
        failed.len()
    );
    outcomes.into_iter().filter_map(Result::ok).collect()
}

/// What must never be shown: the bundle's secrets, and those the hostile Secrets hold out of place.
fn needles(bundle: &str, talosconfig: &str) -> Needles {
    let mut needles = Needles::default();
    needles.add_bundle(bundle).unwrap();
    needles.add_talosconfig(talosconfig).unwrap();
    for case in classes::secret_cases(bundle, talosconfig) {
        if let Some(canary) = &case.canary {
            needles.add(&format!("{} {:?} canary", case.class, case.secret), canary);
        }
    }
    needles
}

/// Issue #28: every hostile class (depth, size, count, expansion, a message that would be
/// huge, a value past the CRD's bounds) in every field that carries configuration, for each
/// of the four kinds, and hostile shapes of the Secrets a cluster's objects read (its secrets
/// bundle, its talosconfig), through one manager and then across its restart with them all
/// present. Each object is refused at admission naming the bound, or stays updatable and gets
/// a condition and a Warning Event saying what is wrong, with no bootstrap data written; a
/// healthy cluster in another namespace gets its bootstrap data; the manager stays ready under
/// 128 MiB of peak RSS; nothing it emits holds a secret.
#[tokio::test]
async fn every_hostile_class_in_every_kind_and_field_is_reported_and_bounded_across_a_restart() {
    let started = std::time::Instant::now();
    let cp = control_plane("hostile-classes").await;
    let client = cp.client().await.unwrap();
    let generated = tokio::task::spawn_blocking(|| SecretsBundle::generate(Contract::NEWEST));
    let bundle = generated.await.unwrap().unwrap();
    let talosconfig = talosconfig::generate("c", &bundle, &ClientOptions::default())
        .and_then(|t| t.to_yaml())
        .unwrap();
    let bundle = bundle.to_yaml().unwrap();
    let first = manager(&cp, "mgr-classes", &cp.kubeconfig_path()).await;
    let (placed, watched) = place_and_check_all(&client, &bundle, &talosconfig).await;
    healthy_cluster(&client, "good").await;
    first.assert_healthy().await;
    eprintln!("{} cases reported in {:?}", placed.len(), started.elapsed());
    first.terminate().await;

    // Restarted with every hostile object present: each is listed at start, and rendered again
    // on a change of its spec.
    let second = manager(&cp, "mgr-classes-again", &cp.kubeconfig_path()).await;
    healthy_cluster(&client, "good-again").await;
    let rendered: Vec<_> = (placed.iter().zip(&watched))
        .filter(|(p, (path, _))| p.respec && path.ends_with("/talosconfigs"))
        .collect();
    every_case(
        &rendered,
        |(p, _)| &p.what,
        |(p, (path, name))| table::respec(&client, p, (path, name)),
    )
    .await;
    for p in placed.iter().filter(|p| !p.data_allowed) {
        table::no_bootstrap_data(&client, p).await;
    }
    second.assert_healthy().await;

    let mut haystacks = vec![
        Haystack {
            name: "first manager's log".into(),
            text: first.log(),
        },
        Haystack {
            name: "restarted manager's log".into(),
            text: second.log(),
        },
    ];
    for (p, (path, name)) in placed.iter().zip(&watched) {
        haystacks.extend(table::haystacks(&client, &p.ns, (path, name)).await);
    }
    let report = needles(&bundle, &talosconfig).scan(&haystacks);
    assert!(report.hits.is_empty(), "secrets shown: {:?}", report.hits);
    second.terminate().await;
    eprintln!(
        "{} cases, restart included, in {:?}",
        placed.len(),
        started.elapsed()
    );
}

/// A user who may do all the manager does except read Machines.
const RESTRICTED: &str = "talos-capi-without-machines";

/// Rules for [`RESTRICTED`]: everything the manager touches but Machines.
async fn restrict(client: &kube::Client) {
    let all = |groups: &[&str], resources: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": ["*"]});
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": RESTRICTED},
        "rules": [
            all(&["bootstrap.cluster.x-k8s.io", "controlplane.cluster.x-k8s.io",
                  "infrastructure.cluster.x-k8s.io", "", "events.k8s.io", "coordination.k8s.io"], &["*"]),
            all(&["cluster.x-k8s.io"], &["clusters", "clusters/status", "machinepools"]),
        ]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": RESTRICTED},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RESTRICTED},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED}]
    });
    let roles: Api<ClusterRole> = Api::all(client.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
}

/// The admin kubeconfig of `cp`, acting as [`RESTRICTED`].
fn restricted_kubeconfig(cp: &LocalControlPlane, path: &Path) {
    let mut config: Value = serde_yaml_ng::from_str(cp.kubeconfig_yaml()).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = RESTRICTED.into();
        user["user"]["as-groups"] = json!(["system:authenticated"]);
    }
    std::fs::write(path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
}

#[tokio::test]
async fn a_watch_that_cannot_list_is_named_on_readyz_and_sigterm_still_stops_the_manager() {
    let cp = control_plane("hostile-list").await;
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "list").await.unwrap();
    restrict(&client).await;
    // A TalosConfig to reconcile: its reconcile waits for the caches, which cannot all list.
    cluster(&client, &ns, "c", false).await;
    let spec = json!({"generateType": "controlplane", "talosVersion": "v1.13"});
    machine(&client, &ns, "c", "c-0", spec, true).await;

    let kubeconfig = cp.dir().join("restricted.kubeconfig");
    restricted_kubeconfig(&cp, &kubeconfig);
    let m = manager(&cp, "mgr-list", &kubeconfig).await;
    let (code, body) = eventually("/readyz naming the failing watch", WAIT, async || {
        get(m.health, "/readyz")
            .await
            .filter(|(_, body)| body.contains("the machines watch fails"))
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    eventually(
        "the TalosConfig's reconcile to wait for the caches",
        WAIT,
        async || {
            m.log()
                .contains("waiting for the caches to list")
                .then_some(())
        },
    )
    .await;
    m.terminate().await;
    assert!(m.log().contains("shutting down"), "{}", m.log());
}
