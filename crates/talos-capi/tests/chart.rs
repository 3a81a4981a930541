//! The Helm chart with the real helm on the local control plane (real kube-apiserver and Cluster
//! API core): lint, schema errors, server-side dry-run of every template, install, upgrade and
//! uninstall; and the manager run exactly as the chart's Deployment runs it, impersonating the
//! chart's ServiceAccount, through a whole cluster lifecycle, so a missing RBAC rule fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::time::Duration;

use api::capi::Machine;
use api::conditions::{self, ConditionType};
use api::controlplane::v1alpha3::TalosControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use testkit::bench::component_pid;
use testkit::process::{ManagedProcess, free_port};
use testkit::sim_infra;
use testkit::tools::{Tool, locate, repo_root};
use testkit::{LocalControlPlane, unique_namespace};

const NS: &str = "talos-capi-system";
const WAIT: Duration = Duration::from_secs(120);

fn run(tool: Tool, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let ran = testkit::process::run(&locate(tool).unwrap(), args, &[], stdin.unwrap_or_default())
        .unwrap();
    (ran.ok, ran.output)
}

fn helm(args: &[&str]) -> String {
    let (ok, out) = run(Tool::Helm, args, None);
    assert!(ok, "helm {args:?}: {out}");
    out
}

/// The admin kubeconfig of `cp`, acting as the ServiceAccount `ns/sa` (as its token would).
fn impersonating(cp: &LocalControlPlane, ns: &str, sa: &str, path: &Path) {
    let mut config: serde_json::Value = serde_yaml_ng::from_str(cp.kubeconfig_yaml()).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = format!("system:serviceaccount:{ns}:{sa}").into();
        user["user"]["as-groups"] = serde_json::json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated"
        ]);
    }
    std::fs::write(path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
}

fn condition_true(tcp: &TalosControlPlane, t: ConditionType) -> bool {
    tcp.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::get(cs, t))
        .is_some_and(|c| c.status == "True")
}

/// Until `check` holds, or fail with `what` and the lines of `log` that name a refusal.
async fn until(what: &str, log: &Path, mut check: impl AsyncFnMut() -> bool) {
    let refusals = async || {
        let refused: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("forbidden"))
            .map(str::to_owned)
            .collect();
        format!("refusals in the manager's log: {refused:#?}")
    };
    testkit::eventually_explained(what, WAIT, async || check().await.then_some(()), refusals).await;
}

#[tokio::test]
async fn the_chart_installs_upgrades_uninstalls_and_its_rbac_runs_a_cluster_lifecycle() {
    let chart = repo_root().join("charts/talos-capi");
    let chart = chart.to_str().unwrap();
    let lint = helm(&["lint", "--strict", chart]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // Bad values fail at install time, naming the value.
    for (set, names) in [
        ("replicas=two", "/replicas"),
        ("manager.logFormat=xml", "/manager/logFormat"),
        (
            "leaderElection.leaseDuration=15",
            "/leaderElection/leaseDuration",
        ),
    ] {
        let (ok, out) = run(Tool::Helm, &["template", "t", chart, "--set", set], None);
        assert!(!ok && out.contains(names), "--set {set}: {out}");
    }

    // A control plane of its own: helm puts our CRDs and cluster-wide RBAC in and takes them out
    // again, which the shared one (with our CRDs installed otherwise) must not see.
    let cp = LocalControlPlane::builder()
        .name("chart")
        .cluster_api()
        .start()
        .await
        .unwrap();
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let client = cp.client().await.unwrap();

    // Every template, with the optional NetworkPolicy, passes the API server's own validation.
    let (ok, out) = run(
        Tool::Kubectl,
        &["--kubeconfig", kubeconfig, "create", "namespace", NS],
        None,
    );
    assert!(ok, "{out}");
    let rendered = helm(&[
        "template",
        "talos-capi",
        chart,
        "--namespace",
        NS,
        "--include-crds",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n")),
            "{kind} rendered"
        );
    }
    let (ok, out) = run(
        Tool::Kubectl,
        &[
            "--kubeconfig",
            kubeconfig,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    assert!(ok, "server-side dry-run: {out}");

    // Install (no --wait: no kubelet runs the Pods here), then upgrade.
    let release = [
        "talos-capi",
        chart,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        NS,
    ];
    helm(&[&["install"], &release[..]].concat());
    for crd in api::all_crds() {
        testkit::wait_established(&client, &kube::ResourceExt::name_any(&crd))
            .await
            .unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = deployments.get("talos-capi").await.unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    helm(
        &[
            &["upgrade"],
            &release[..],
            &["--reuse-values", "--set", "replicas=3"],
        ]
        .concat(),
    );
    let deployment = deployments.get("talos-capi").await.unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(3));

    // The manager as the Deployment runs it, with the ServiceAccount's permissions and nothing
    // else; only its listen addresses move to free loopback ports.
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = pod.containers.iter().find(|c| c.name == "manager").unwrap();
    // Non-root, no privilege, no capability, a read-only root filesystem (README, docs/security.md).
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let csc = container.security_context.clone().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.privileged, Some(false));
    assert_eq!(
        csc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let sa = pod.service_account_name.unwrap();
    let impersonated = cp.dir().join("manager-as-sa.kubeconfig");
    impersonating(&cp, NS, &sa, &impersonated);
    // What a stolen ServiceAccount token could do (docs/security.md): what the controllers need,
    // and nothing that deletes Secrets, reads other configuration, runs code or escalates.
    let can_i = |verb: &str, resource: &str| {
        let config = impersonated.to_string_lossy();
        let mut args = vec!["--kubeconfig", &config, "auth", "can-i", verb, "-A"];
        let sub;
        match resource.split_once('/') {
            Some((resource, subresource)) => {
                sub = format!("--subresource={subresource}");
                args.extend([resource, sub.as_str()]);
            }
            None => args.push(resource),
        }
        let (_, out) = run(Tool::Kubectl, &args, None);
        out.trim() == "yes"
    };
    for (verb, resource) in [
        ("get", "secrets"),
        ("create", "secrets"),
        ("update", "secrets"),
        (
            "patch",
            "taloscontrolplanes.controlplane.cluster.x-k8s.io/status",
        ),
        ("create", "machines.cluster.x-k8s.io"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can_i(verb, resource), "the manager needs {verb} {resource}");
    }
    for (verb, resource) in [
        ("delete", "secrets"),
        ("get", "configmaps"),
        ("create", "pods"),
        ("create", "pods/exec"),
        ("create", "serviceaccounts/token"),
        ("impersonate", "serviceaccounts"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("patch", "nodes"),
        ("delete", "namespaces"),
        ("delete", "clusters.cluster.x-k8s.io"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ] {
        assert!(
            !can_i(verb, resource),
            "the ServiceAccount may {verb} {resource}"
        );
    }
    let (health, metrics) = (free_port().unwrap(), free_port().unwrap());
    let mut args = vec![
        format!("POD_NAMESPACE={NS}"),
        "POD_NAME=talos-capi-chart-test".to_owned(),
        env!("CARGO_BIN_EXE_talos-capi").to_owned(),
    ];
    for arg in container.args.clone().unwrap() {
        args.push(if arg.starts_with("--metrics-bind-address=") {
            format!("--metrics-bind-address=127.0.0.1:{metrics}")
        } else if arg.starts_with("--health-probe-bind-address=") {
            format!("--health-probe-bind-address=127.0.0.1:{health}")
        } else {
            arg
        });
    }
    args.push(format!("--kubeconfig={}", impersonated.display()));
    let log = cp.dir().join("manager-as-sa.log");
    let manager =
        ManagedProcess::spawn("manager", Path::new("/usr/bin/env"), &args, &log, None).unwrap();
    component_pid(manager.pid(), "/talos-capi").await;

    // A whole lifecycle: create, bootstrap, kubeconfig, delete.
    let ns = unique_namespace(&client, "chart").await.unwrap();
    let infra = sim_infra::start(&client, &ns, &["a"]);
    sim_infra::control_plane_cluster(&client, &ns, "c", 1, ("192.168.1.100", 6443))
        .await
        .unwrap();
    let tcps: Api<TalosControlPlane> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    until(
        "the control plane initialized with a kubeconfig",
        &log,
        async || {
            let Ok(tcp) = tcps.get("c").await else {
                return false;
            };
            condition_true(&tcp, ConditionType::EtcdClusterHealthy)
                && tcp.status.as_ref().and_then(|s| s.replicas) == Some(1)
                && secrets
                    .get_opt("c-kubeconfig")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        },
    )
    .await;
    let clusters = testkit::dynamic_api(&client, &ns, "cluster.x-k8s.io/v1beta2", "Cluster");
    clusters
        .delete("c", &DeleteParams::default())
        .await
        .unwrap();
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    until(
        "the cluster, its control plane and machines gone",
        &log,
        async || {
            let left: Vec<DynamicObject> = clusters
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            left.is_empty()
                && tcps.get_opt("c").await.ok().flatten().is_none()
                && machines
                    .list(&ListParams::default())
                    .await
                    .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    manager.check_running().unwrap();
    // Its metrics saw the lifecycle: etcd bootstrapped exactly once over the Talos API.
    let (_, metrics) = testkit::process::http_get(metrics, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "talos_capi_talos_api_requests_total{method=\"bootstrap\",outcome=\"ok\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("talos_capi_leader 1\n"), "{metrics}");
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        !output.contains("forbidden"),
        "the chart's RBAC refused the manager something:\n{output}"
    );
    drop(manager);
    drop(infra);

    helm(&[
        "uninstall",
        "talos-capi",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        NS,
    ]);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(roles.get_opt("talos-capi-manager").await.unwrap().is_none());
}
