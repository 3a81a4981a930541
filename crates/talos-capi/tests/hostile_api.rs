//! Hostile objects through the API, as a tenant with write access to one namespace would make
//! them, against `talos-capi manager` as a process on the local control plane (real
//! kube-apiserver and Cluster API core): objects nested past the decoder's limit, present
//! across a restart and created while the manager runs; and a watch that cannot list. For each:
//! the manager stays up, a healthy cluster in another namespace gets its bootstrap data, the
//! hostile object gets a condition and an Event saying what is wrong, no Secret is written for
//! it, and SIGTERM stops the manager.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../../controller/tests/common/mod.rs"]
mod common;

use std::path::Path;

use api::conditions::ConditionType;
use common::{WAIT, cluster, machine, until, wait_config};
use controller::raw::RawObject;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use kube::core::Request;
use serde_json::{Value, json};
use testkit::bench::component_pid;
use testkit::process::{ManagedProcess, free_port, http_get as get};
use testkit::tools::repo_root;
use testkit::{LocalControlPlane, unique_namespace};

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

    /// SIGTERM, then wait for the process to exit: it must, within the shutdown grace.
    async fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        until("the manager to exit after SIGTERM", WAIT, async || {
            self.process.check_running().is_err().then_some(())
        })
        .await;
    }
}

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
    let request = Request::new(path)
        .create(&PostParams::default(), body.into_bytes())
        .unwrap();
    client.request_text(request).await.unwrap();
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
/// it: neither kube's typed nor its dynamic objects can hold the object itself.
async fn conditions_of(client: &kube::Client, path: &str, name: &str) -> Vec<Value> {
    let request = Request::new(path).get(name, &Default::default()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let object: RawObject = serde_json::from_str(&text).unwrap();
    object
        .field("status")
        .and_then(|s| serde_json::from_str::<Value>(s.get()).ok())
        .and_then(|s| s["conditions"].as_array().cloned())
        .unwrap_or_default()
}

/// Until `ns/name` says `type_` is False for InvalidSpec, naming the decoder's depth limit.
async fn reported_too_deep(client: &kube::Client, path: &str, name: &str, type_: &str) {
    until(
        &format!("{name}: {type_} False, InvalidSpec"),
        WAIT,
        async || {
            conditions_of(client, path, name)
                .await
                .into_iter()
                .find(|c| {
                    c["type"] == type_
                        && c["status"] == "False"
                        && c["reason"] == "InvalidSpec"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("recursion limit"))
                })
        },
    )
    .await;
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

    let (code, body) = get(m.health, "/readyz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    m.process.check_running().unwrap();
    let peak = m.peak_rss();
    eprintln!("the manager's peak RSS: {} MiB", peak >> 20);
    assert!(peak < 128 << 20, "peak RSS {} MiB", peak >> 20);
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
    let (code, body) = until("/readyz naming the failing watch", WAIT, async || {
        get(m.health, "/readyz")
            .await
            .filter(|(_, body)| body.contains("the machines watch fails"))
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    until(
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
