//! The clusterctl artifacts with the real clusterctl (built from the same Cluster API version as
//! the core) and the local control plane: config/release is what `make release-manifests`
//! makes; both providers' components come out of a local clusterctl repository and apply;
//! every flavour renders with its documented variables, leaves per-machine value references
//! (`((ipam.nodes.address))`) as written, applies to the real API server (Cluster API's and the
//! in-cluster IPAM provider's webhooks included), and yields machine configurations that Talos
//! accepts (the static-addresses flavour's with the values `talos-capi render` is given).
//!
//! Cluster API Provider Proxmox, which the flavours use, is not served by the Go module proxy:
//! stand-in CRDs that keep any field serve its kinds, so that the Cluster API and talos-capi
//! objects around them are what gets checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
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
    let release = release_is_fresh(&root);
    let work = tempfile::tempdir().unwrap();
    let (home, config) = local_repository(work.path(), &release);
    let config = config.to_str().unwrap();

    // A control plane of its own: `clusterctl init` installs both providers' CRDs, Deployments
    // and cluster-wide RBAC from the release, over what the shared one has installed otherwise.
    // The in-cluster IPAM provider (with its webhooks) serves the pool of the static flavour.
    let cp = LocalControlPlane::builder()
        .name("clusterctl")
        .cluster_api()
        .ipam_in_cluster()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let installed = Installed {
        client: client.clone(),
        kubeconfig: cp.kubeconfig_path().to_str().unwrap().to_owned(),
        home,
        config: config.to_owned(),
        work: work.path().to_owned(),
    };
    providers_install(&installed).await;
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
    let templates = root.join("config/clusterctl/templates");
    let mut flavours: Vec<String> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cluster-template") && n.ends_with(".yaml"))
        .collect();
    flavours.sort();
    assert_eq!(flavours.len(), 5, "{flavours:?}");
    for flavour in &flavours {
        flavour_generates_applies_and_renders(&installed, &templates.join(flavour)).await;
    }
}

/// config/release is exactly what `make release-manifests` makes from the chart.
fn release_is_fresh(root: &Path) -> PathBuf {
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
    assert!(
        names.contains(&"cluster-template-proxmox-static.yaml".to_owned()),
        "{names:?}"
    );
    for name in &names {
        assert_eq!(
            std::fs::read_to_string(release.join(name)).unwrap_or_default(),
            std::fs::read_to_string(fresh.path().join(name)).unwrap(),
            "config/release/{name} is stale: run `make release-manifests`"
        );
    }
    release
}

/// A local clusterctl repository with both providers, under `work`: clusterctl's home and
/// its configuration file.
fn local_repository(work: &Path, release: &Path) -> (PathBuf, PathBuf) {
    let home = work.join("home");
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
        let version_dir = work.join("repo").join(dir).join(VERSION);
        std::fs::create_dir_all(&version_dir).unwrap();
        for f in [file, "metadata.yaml"] {
            std::fs::copy(release.join(f), version_dir.join(f)).unwrap();
        }
        providers.push_str(&format!(
            "  - name: talos\n    url: file://{}\n    type: {kind}\n",
            version_dir.join(file).display()
        ));
    }
    let config = work.join("clusterctl.yaml");
    std::fs::write(&config, providers).unwrap();
    (home, config)
}

/// The management cluster the flavours go to, and the clusterctl that serves them.
struct Installed {
    client: kube::Client,
    kubeconfig: String,
    home: PathBuf,
    config: String,
    work: PathBuf,
}

/// Both providers' components, described and generated by clusterctl from the repository,
/// applied: each Deployment runs its controller with the log level clusterctl substituted.
async fn providers_install(at: &Installed) {
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
        let generate = ["generate", "provider", flag, &talos, "--config", &at.config];
        let described = clusterctl(&at.home, &[&generate[..], &["--describe"]].concat(), &[]);
        assert!(described.contains("TALOS_CAPI_LOG_LEVEL"), "{described}");
        assert!(
            described.contains("ghcr.io/talos-capi/talos-capi:0.1.0"),
            "{described}"
        );
        let components = clusterctl(&at.home, &generate, &[("TALOS_CAPI_LOG_LEVEL", "debug")]);
        apply(&at.kubeconfig, &components, None).await;
        let deployment = Api::<Deployment>::namespaced(at.client.clone(), namespace)
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
}

/// The variables every flavour is generated with.
const ENV: [(&str, &str); 5] = [
    ("CONTROL_PLANE_ENDPOINT_IP", "10.0.0.50"),
    ("NODE_IP_RANGES", "[10.0.0.10-10.0.0.49]"),
    ("GATEWAY", "10.0.0.1"),
    ("PROXMOX_SOURCE_NODE", "pve1"),
    ("PROXMOX_TEMPLATE_ID", "100"),
];

/// What a flavour needs beyond [`ENV`] and `talos-capi render -f`, and what each of its
/// configurations must then hold.
struct Extra {
    env: Vec<(&'static str, &'static str)>,
    render: Vec<&'static str>,
    holds: Vec<&'static str>,
}

fn extra(flavour: &str) -> Extra {
    let mut extra = Extra {
        env: Vec::new(),
        render: Vec::new(),
        holds: Vec::new(),
    };
    // The ClusterClass flavour's endpoint comes from its variable through a patch, so it is
    // given; the others take it from their ProxmoxCluster, as Cluster API does.
    if flavour.contains("clusterclass") {
        extra.render = vec!["--endpoint", "https://10.0.0.50:6443"];
    }
    // The static flavour: its pool's gateway, and the address of a machine, given as
    // talos-capi would have it from the pool.
    if flavour.contains("static") {
        extra.env = vec![("NODE_GATEWAY", "10.0.0.1")];
        extra.render = vec![
            "--value",
            "ipam.nodes.address=10.0.0.12",
            "--value",
            "ipam.nodes.prefix=24",
            "--value",
            "ipam.nodes.gateway=10.0.0.1",
        ];
        extra.holds = vec![
            "- address: 10.0.0.12/24",
            "- gateway: 10.0.0.1",
            "- 10.0.0.12/32",
        ];
    }
    extra
}

/// One flavour: its variables documented in its header, generated by clusterctl with every
/// per-machine value reference left as written, applied, and rendered to configurations the real
/// talosctl of the flavours' Talos line accepts without a warning.
async fn flavour_generates_applies_and_renders(at: &Installed, from: &Path) {
    let flavour = from.file_name().unwrap().to_str().unwrap();
    let extra = extra(flavour);
    let ns = unique_namespace(&at.client, "flavour").await.unwrap();
    let from = from.to_str().unwrap();
    let base = [
        "generate",
        "cluster",
        "mi-cluster",
        "--from",
        from,
        "--config",
        &at.config,
        "--target-namespace",
        &ns,
        "--kubernetes-version",
        "v1.34.1",
        "--control-plane-machine-count",
        "3",
        "--worker-machine-count",
        "2",
    ];
    variables_are_documented(at, &base, from);
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain(extra.env.clone()).collect();
    let generated = clusterctl(&at.home, &base, &env);
    let written = std::fs::read_to_string(from).unwrap();
    assert_eq!(
        references(&generated),
        references(&written),
        "{flavour}: clusterctl leaves every ((…)) reference as written"
    );
    if flavour.contains("static") {
        assert_eq!(references(&written).len(), 9, "{flavour}");
    }
    apply(&at.kubeconfig, &generated, Some(&ns)).await;
    if flavour.contains("static") {
        pool_is_served(&at.client, &ns).await;
    }
    let file = at.work.join(format!("generated-{flavour}"));
    std::fs::write(&file, &generated).unwrap();
    let configs = at.work.join(format!("configs-{flavour}"));
    let mut render = vec![
        "render",
        "-f",
        file.to_str().unwrap(),
        "--out-dir",
        configs.to_str().unwrap(),
    ];
    render.extend(&extra.render);
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
    configs_are_valid(flavour, &configs, &extra.holds);
    if flavour.contains("clusterclass") {
        topology_made_the_control_plane(&at.client, &ns).await;
    }
}

/// Every variable clusterctl lists for the flavour (beyond those its flags give) is named in
/// the flavour's header.
fn variables_are_documented(at: &Installed, base: &[&str], from: &str) {
    let mut list = base.to_vec();
    list.push("--list-variables");
    let variables = clusterctl(&at.home, &list, &[]);
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
            "{from}: {var} is not documented in its header"
        );
    }
}

/// The per-machine value references (`((…))`) of a YAML stream, outside the comment block it
/// starts with (a flavour's header), sorted.
fn references(yaml: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in yaml.lines().skip_while(|l| l.starts_with('#')) {
        let mut rest = line;
        while let Some(start) = rest.find("((") {
            let Some(len) = rest[start..].find("))") else {
                break;
            };
            found.push(rest[start..start + len + 2].to_owned());
            rest = &rest[start + len + 2..];
        }
    }
    found.sort();
    found
}

/// The static flavour's InClusterIPPool, accepted by the provider's webhooks, counts the
/// addresses of NODE_IP_RANGES.
async fn pool_is_served(client: &kube::Client, ns: &str) {
    let pools = testkit::dynamic_api(
        client,
        ns,
        "ipam.cluster.x-k8s.io/v1alpha2",
        "InClusterIPPool",
    );
    let total = testkit::poll(Duration::from_secs(60), async || {
        let pool = pools.get("nodes").await.ok()?;
        pool.data["status"]["ipAddresses"]["total"].as_i64()
    })
    .await;
    assert_eq!(total, Some(40), "the pool nodes in {ns}");
}

/// Each configuration written to `configs` (control plane, workers) is one the real talosctl
/// v1.14 accepts without a warning, with the endpoint, the install disk, and what `holds`
/// lists, and no reference left.
fn configs_are_valid(flavour: &str, configs: &Path, holds: &[&str]) {
    let talosctl = locate(Tool::Talosctl114).unwrap();
    let written: Vec<_> = std::fs::read_dir(configs).unwrap().collect();
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
        assert!(!text.contains("(("), "{flavour}: {text}");
        for held in holds {
            assert!(text.contains(held), "{flavour}: {held:?} in {text}");
        }
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
