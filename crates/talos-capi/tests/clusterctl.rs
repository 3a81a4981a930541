//! The clusterctl artifacts with the real clusterctl (built from the same Cluster API version as
//! the core) and the local control plane: config/release is what `make release-manifests`
//! makes; both providers' components come out of a local clusterctl repository and apply;
//! every flavour renders with its documented variables, applies to the real API server (Cluster
//! API's webhooks included), and yields machine configurations that Talos accepts.
//!
//! Cluster API Provider Proxmox, which the flavours use, is not served by the Go module proxy:
//! stand-in CRDs that keep any field serve its kinds, so that the Cluster API and talos-capi
//! objects around them are what gets checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::time::Duration;

use api::controlplane::v1alpha3::TalosControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::json;
use testkit::process::Ran;
use testkit::tools::{Tool, locate, repo_root};
use testkit::{LocalControlPlane, unique_namespace};

const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

fn run(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Ran {
    testkit::process::run(program, args, env, stdin.unwrap_or_default()).unwrap()
}

/// The real clusterctl with a home of its own and no version check.
fn clusterctl(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let home = home.to_str().unwrap();
    let mut all = vec![("HOME", home), ("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")];
    all.extend_from_slice(env);
    let o = run(&locate(Tool::Clusterctl).unwrap(), args, &all, None);
    assert!(o.ok, "clusterctl {args:?}: {}", o.output);
    o.stdout
}

/// `kubectl apply --server-side` of `yaml`, retried for a minute while a webhook or a CRD is
/// not ready yet (Cluster API's ClusterClass reconcile, say).
async fn apply(kubeconfig: &str, yaml: &str, ns: Option<&str>) {
    let kubectl = locate(Tool::Kubectl).unwrap();
    let mut args = vec![
        "--kubeconfig",
        kubeconfig,
        "apply",
        "--server-side",
        "--field-manager=clusterctl-test",
        "-f",
        "-",
    ];
    if let Some(ns) = ns {
        args.extend(["--namespace", ns]);
    }
    let mut last = String::new();
    let applied = testkit::poll(Duration::from_secs(60), async || {
        let o = run(&kubectl, &args, &[], Some(yaml));
        last = o.output;
        o.ok.then_some(())
    })
    .await;
    assert!(applied.is_some(), "kubectl apply: {last}\n{yaml}");
}

/// Stand-ins for CAPMOX's CRDs: its kinds at infrastructure.cluster.x-k8s.io/v1alpha1, any
/// fields, with the contract label Cluster API reads.
fn proxmox_stand_ins() -> Vec<CustomResourceDefinition> {
    ["ProxmoxCluster", "ProxmoxClusterTemplate", "ProxmoxMachineTemplate"]
        .into_iter()
        .map(|kind| {
            let plural = format!("{}s", kind.to_lowercase());
            serde_json::from_value(json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": format!("{plural}.infrastructure.cluster.x-k8s.io"),
                    "labels": {"cluster.x-k8s.io/v1beta1": "v1alpha1", "cluster.x-k8s.io/v1beta2": "v1alpha1"}
                },
                "spec": {
                    "group": "infrastructure.cluster.x-k8s.io",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                    "versions": [{
                        "name": "v1alpha1", "served": true, "storage": true,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                    }]
                }
            }))
            .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn clusterctl_serves_both_providers_and_every_flavour_from_the_release_artifacts() {
    let root = repo_root();
    // config/release is exactly what `make release-manifests` makes from the chart.
    let fresh = tempfile::tempdir().unwrap();
    let o = run(
        &root.join("hack/release-manifests.sh"),
        &[fresh.path().to_str().unwrap()],
        &[],
        None,
    );
    assert!(o.ok, "{}", o.output);
    let release = root.join("config/release");
    let mut names: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        assert_eq!(
            std::fs::read_to_string(release.join(name)).unwrap_or_default(),
            std::fs::read_to_string(fresh.path().join(name)).unwrap(),
            "config/release/{name} is stale: run `make release-manifests`"
        );
    }

    // A local clusterctl repository with both providers.
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut providers = String::from("providers:\n");
    for (dir, file, kind) in [
        (
            "bootstrap-talos",
            "bootstrap-components.yaml",
            "BootstrapProvider",
        ),
        (
            "control-plane-talos",
            "control-plane-components.yaml",
            "ControlPlaneProvider",
        ),
    ] {
        let version_dir = work.path().join("repo").join(dir).join(VERSION);
        std::fs::create_dir_all(&version_dir).unwrap();
        for f in [file, "metadata.yaml"] {
            std::fs::copy(release.join(f), version_dir.join(f)).unwrap();
        }
        providers.push_str(&format!(
            "  - name: talos\n    url: file://{}\n    type: {kind}\n",
            version_dir.join(file).display()
        ));
    }
    let config = work.path().join("clusterctl.yaml");
    std::fs::write(&config, providers).unwrap();
    let config = config.to_str().unwrap();

    // A control plane of its own: `clusterctl init` installs both providers' CRDs, Deployments
    // and cluster-wide RBAC from the release, over what the shared one has installed otherwise.
    let cp = LocalControlPlane::builder()
        .name("clusterctl")
        .cluster_api()
        .start()
        .await
        .unwrap();
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let client = cp.client().await.unwrap();

    let talos = format!("talos:{VERSION}");
    for (flag, namespace, deployment, controller) in [
        (
            "--bootstrap",
            "talos-capi-bootstrap-system",
            "talos-capi-bootstrap",
            "bootstrap",
        ),
        (
            "--control-plane",
            "talos-capi-control-plane-system",
            "talos-capi-controlplane",
            "controlplane",
        ),
    ] {
        let described = clusterctl(
            &home,
            &[
                "generate",
                "provider",
                flag,
                &talos,
                "--config",
                config,
                "--describe",
            ],
            &[],
        );
        assert!(described.contains("TALOS_CAPI_LOG_LEVEL"), "{described}");
        assert!(
            described.contains("ghcr.io/talos-capi/talos-capi:0.1.0"),
            "{described}"
        );
        let components = clusterctl(
            &home,
            &["generate", "provider", flag, &talos, "--config", config],
            &[("TALOS_CAPI_LOG_LEVEL", "debug")],
        );
        apply(kubeconfig, &components, None).await;
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(deployment)
            .await
            .unwrap();
        let provider = deployment.metadata.labels.unwrap_or_default();
        assert_eq!(
            provider
                .get("cluster.x-k8s.io/provider")
                .map(String::as_str),
            Some(if controller == "bootstrap" {
                "bootstrap-talos"
            } else {
                "control-plane-talos"
            })
        );
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let manager = pod.containers.iter().find(|c| c.name == "manager").unwrap();
        let args = manager.args.clone().unwrap_or_default();
        assert!(
            args.contains(&format!("--controllers={controller}")),
            "{args:?}"
        );
        assert!(args.contains(&"--log-level=debug".to_owned()), "{args:?}");
    }
    for crd in api::all_crds() {
        testkit::wait_established(&client, &kube::ResourceExt::name_any(&crd))
            .await
            .unwrap();
    }

    // Every flavour: its variables documented, generated, applied, and rendered to configs Talos
    // accepts.
    testkit::install_crds(&client, &proxmox_stand_ins())
        .await
        .unwrap();
    let env = [
        ("CONTROL_PLANE_ENDPOINT_IP", "10.0.0.50"),
        ("NODE_IP_RANGES", "[10.0.0.10-10.0.0.49]"),
        ("GATEWAY", "10.0.0.1"),
        ("PROXMOX_SOURCE_NODE", "pve1"),
        ("PROXMOX_TEMPLATE_ID", "100"),
    ];
    let templates = root.join("config/clusterctl/templates");
    let mut flavours: Vec<String> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cluster-template") && n.ends_with(".yaml"))
        .collect();
    flavours.sort();
    assert_eq!(flavours.len(), 4, "{flavours:?}");
    for flavour in &flavours {
        let from = templates.join(flavour);
        let from = from.to_str().unwrap();
        let ns = unique_namespace(&client, "flavour").await.unwrap();
        let base = [
            "generate",
            "cluster",
            "mi-cluster",
            "--from",
            from,
            "--config",
            config,
            "--target-namespace",
            &ns,
            "--kubernetes-version",
            "v1.34.1",
            "--control-plane-machine-count",
            "3",
            "--worker-machine-count",
            "2",
        ];
        let mut list = base.to_vec();
        list.push("--list-variables");
        let variables = clusterctl(&home, &list, &[]);
        let documented = std::fs::read_to_string(from).unwrap();
        let header: String = documented
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for var in variables
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|l| l.split_whitespace().next().unwrap_or_default())
            .filter(|v| {
                !matches!(
                    *v,
                    "CLUSTER_NAME"
                        | "NAMESPACE"
                        | "KUBERNETES_VERSION"
                        | "CONTROL_PLANE_MACHINE_COUNT"
                        | "WORKER_MACHINE_COUNT"
                )
            })
        {
            assert!(
                header.contains(var),
                "{flavour}: {var} is not documented in its header"
            );
        }
        let generated = clusterctl(&home, &base, &env);
        apply(kubeconfig, &generated, Some(&ns)).await;
        let file = work.path().join(format!("generated-{flavour}"));
        std::fs::write(&file, &generated).unwrap();
        // The ClusterClass flavour's endpoint comes from its variable through a patch, so it is
        // given; the others take it from their ProxmoxCluster, as Cluster API does.
        let configs = work.path().join(format!("configs-{flavour}"));
        let mut render = vec![
            "render",
            "-f",
            file.to_str().unwrap(),
            "--out-dir",
            configs.to_str().unwrap(),
        ];
        if flavour.contains("clusterclass") {
            render.extend(["--endpoint", "https://10.0.0.50:6443"]);
        }
        let rendered = run(
            Path::new(env!("CARGO_BIN_EXE_talos-capi")),
            &render,
            &[],
            None,
        );
        assert!(rendered.ok, "{flavour}: {}", rendered.output);
        // Written in Talos 1.14's form: no patch sets a field 1.14 moved to another document.
        assert!(
            !rendered.output.contains("warning"),
            "{flavour}: {}",
            rendered.output
        );
        // Each configuration (control plane, workers) is one the real talosctl of the flavours'
        // Talos line accepts, without a warning.
        let talosctl = locate(Tool::Talosctl114).unwrap();
        let written: Vec<_> = std::fs::read_dir(&configs).unwrap().collect();
        assert!(!written.is_empty(), "{flavour}: nothing rendered");
        for config in written {
            let config = config.unwrap().path();
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(text.contains("https://10.0.0.50:6443"), "{flavour}: {text}");
            assert!(
                text.contains("kind: UnattendedInstallConfig")
                    && text.contains(r#"match: disk.dev_path == "/dev/sda""#),
                "{flavour}: {text}"
            );
            let path = config.to_str().unwrap();
            let valid = run(
                &talosctl,
                &["validate", "--config", path, "--mode", "metal", "--strict"],
                &[],
                None,
            );
            assert!(
                valid.ok && !valid.output.contains("WARNING"),
                "{flavour}: talosctl validate {path}: {}",
                valid.output
            );
        }
        if flavour.contains("clusterclass") {
            topology_made_the_control_plane(&client, &ns).await;
        }
    }
}

/// Cluster API's topology controller made the TalosControlPlane from the
/// TalosControlPlaneTemplate, with the ClusterClass's VIP patch appended and the topology's
/// version and replicas.
async fn topology_made_the_control_plane(client: &kube::Client, ns: &str) {
    let api: Api<TalosControlPlane> = Api::namespaced(client.clone(), ns);
    let status = |kind: &str, name: &str| {
        let api = testkit::dynamic_api(client, ns, "cluster.x-k8s.io/v1beta2", kind);
        let name = name.to_owned();
        async move {
            let o = api.get(&name).await.ok();
            serde_json::to_string_pretty(&o.map(|o| o.data["status"].clone())).unwrap_or_default()
        }
    };
    let tcp = testkit::eventually_explained(
        &format!("a TalosControlPlane made from the ClusterClass in {ns}"),
        Duration::from_secs(90),
        async || api.list(&Default::default()).await.unwrap().items.pop(),
        async || {
            format!(
                "Cluster status: {}; ClusterClass status: {}",
                status("Cluster", "mi-cluster").await,
                status("ClusterClass", "talos-proxmox").await
            )
        },
    )
    .await;
    assert_eq!(tcp.spec.version, "v1.34.1");
    assert_eq!(tcp.spec.replicas, Some(3));
    let patches = tcp
        .spec
        .control_plane_config
        .controlplane
        .strategic_patches
        .unwrap_or_default();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(
        patches[0].contains(r#"disk.dev_path == "/dev/sda""#),
        "{patches:?}"
    );
    assert!(patches[1].contains("ip: 10.0.0.50"), "{patches:?}");
}
