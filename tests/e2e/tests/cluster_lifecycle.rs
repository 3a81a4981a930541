//! A Talos cluster's whole life through talos-capi, met only through a kubeconfig, in order:
//! create it from a clusterctl template and wait for it to be up; scale the control plane
//! 3 → 5 → 3; roll a Kubernetes version; upgrade Talos in place; remediate a control-plane node
//! that died; delete the cluster and find nothing left.
//!
//! It needs, in the cluster of KUBECONFIG: Cluster API core, talos-capi's CRDs and manager, and
//! the simulated infrastructure provider serving `E2E_NAMESPACE` (default `talos-capi-e2e`).
//! `make e2e` runs all of that on the local control plane; `make e2e-kind` on kind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use talos_capi_e2e::{client, repo_root};

const FIRST: &str = "v1.35.0";
const NEXT: &str = "v1.36.0";
/// The Image Factory's schematic with no customization.
const EMPTY_SCHEMATIC: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
/// The simulated infrastructure provider's annotation that kills a machine's node for good.
const POWER_OFF: &str = "infrastructure.cluster.x-k8s.io/sim-power-off";
const STEP: Duration = Duration::from_secs(300);

fn api(
    client: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

struct Scene {
    client: kube::Client,
    ns: String,
    cluster: String,
    tcp: String,
}

impl Scene {
    fn capi(&self, kind: &str) -> Api<DynamicObject> {
        api(&self.client, &self.ns, "cluster.x-k8s.io", "v1beta2", kind)
    }
    fn tcps(&self) -> Api<DynamicObject> {
        api(
            &self.client,
            &self.ns,
            "controlplane.cluster.x-k8s.io",
            "v1alpha3",
            "TalosControlPlane",
        )
    }
    fn selector(&self) -> ListParams {
        ListParams::default().labels(&format!("cluster.x-k8s.io/cluster-name={}", self.cluster))
    }

    /// The control-plane Machines, by name.
    async fn control_planes(&self) -> Vec<DynamicObject> {
        let lp = ListParams::default().labels(&format!(
            "cluster.x-k8s.io/cluster-name={},cluster.x-k8s.io/control-plane",
            self.cluster
        ));
        let mut machines = self
            .capi("Machine")
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        machines.sort_by_key(ResourceExt::name_any);
        machines
    }

    async fn tcp(&self) -> Option<DynamicObject> {
        self.tcps().get_opt(&self.tcp).await.ok().flatten()
    }

    async fn patch_tcp(&self, spec: Value) {
        self.tcps()
            .patch(
                &self.tcp,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    /// Whether the control plane is `replicas` machines, all Running, Ready, up to date and
    /// etcd members, with etcd healthy; a line saying what it is now; and the machines it judged
    /// (one listing, so that callers judge the same snapshot).
    async fn steady(&self, replicas: usize) -> (bool, String, Vec<DynamicObject>) {
        let machines = self.control_planes().await;
        let tcp = self.tcp().await;
        let status = tcp
            .as_ref()
            .map(|t| t.data["status"].clone())
            .unwrap_or_default();
        let running = machines
            .iter()
            .filter(|m| m.data["status"]["phase"] == "Running")
            .count();
        let member = machines
            .iter()
            .filter(|m| condition(m, "EtcdMemberHealthy") == "True")
            .count();
        let etcd = condition_of(&status, "EtcdClusterHealthy");
        let ready = status["readyReplicas"].as_u64().unwrap_or(0) as usize;
        let current = status["upToDateReplicas"].as_u64().unwrap_or(0) as usize;
        let deleting = machines
            .iter()
            .any(|m| m.metadata.deletion_timestamp.is_some());
        let done = machines.len() == replicas
            && running == replicas
            && member == replicas
            && ready == replicas
            && current == replicas
            && etcd == "True"
            && !deleting;
        let line = format!(
            "{} control-plane machines ({running} running, {ready} ready, {current} up to date, {member} healthy etcd members), EtcdClusterHealthy {etcd}",
            machines.len()
        );
        (done, line, machines)
    }

    async fn wait_steady(&self, replicas: usize, what: &str) {
        until(what, STEP, async || {
            let (done, line, _) = self.steady(replicas).await;
            (done.then_some(()), line)
        })
        .await;
    }
}

fn condition_of(status: &Value, type_: &str) -> String {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

fn condition(object: &DynamicObject, type_: &str) -> String {
    condition_of(&object.data["status"], type_)
}

fn names(objects: &[DynamicObject]) -> BTreeSet<String> {
    objects.iter().map(ResourceExt::name_any).collect()
}

/// Poll `check` every half second until it gives a value, printing its line whenever it
/// changes; panic with the last line after `limit`.
async fn until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> (Option<T>, String),
) -> T {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let (value, line) = check().await;
        if line != last {
            println!(
                "[{:>5.1} s] {what}: {line}",
                started.elapsed().as_secs_f64()
            );
            last = line;
        }
        if let Some(value) = value {
            println!("{what}: done in {:.1} s", started.elapsed().as_secs_f64());
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not done within {limit:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Talos line the cluster runs: v1.14 by default; v1.13 when `E2E_TALOS=v1.13` (`make
/// test` runs the Cluster API floor lane's e2e so).
struct TalosLine {
    /// The configuration contract (talosVersion).
    contract: &'static str,
    /// The release the machines boot.
    boots: &'static str,
    /// The release they are upgraded to in place, and its installer image.
    next: &'static str,
    installer: String,
}

impl TalosLine {
    fn from_env() -> Self {
        match std::env::var("E2E_TALOS").as_deref() {
            Ok("v1.13") => TalosLine {
                contract: "v1.13",
                boots: "v1.13.0",
                next: "v1.13.1",
                installer: "ghcr.io/siderolabs/installer:v1.13.1".into(),
            },
            Ok("v1.14") | Err(_) => TalosLine {
                contract: "v1.14",
                boots: "v1.14.0",
                next: "v1.14.1",
                installer: format!("factory.talos.dev/metal-installer/{EMPTY_SCHEMATIC}:v1.14.1"),
            },
            Ok(other) => panic!("E2E_TALOS={other}: the suite knows v1.13 and v1.14"),
        }
    }

    /// The template's install patch in this line's form: Talos 1.13 has no
    /// UnattendedInstallConfig document, so its machines take `.machine.install`.
    fn adapt(&self, manifest: &mut Value) {
        if self.contract != "v1.13" {
            return;
        }
        let patches = match manifest["kind"].as_str() {
            Some("TalosControlPlane") => {
                &mut manifest["spec"]["controlPlaneConfig"]["controlplane"]["strategicPatches"]
            }
            Some("TalosConfigTemplate") => {
                &mut manifest["spec"]["template"]["spec"]["strategicPatches"]
            }
            _ => return,
        };
        *patches = json!(["machine:\n  install:\n    disk: /dev/sda\n"]);
    }
}

/// The manifests of the e2e template, through the real clusterctl.
fn generate(cluster: &str, ns: &str, port: u16, line: &TalosLine) -> Vec<Value> {
    let root = repo_root();
    let clusterctl = match std::env::var("CLUSTERCTL_BIN") {
        Ok(bin) => bin,
        Err(_) => {
            let out = std::process::Command::new(root.join("hack/tools/tool.sh"))
                .arg("clusterctl")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "locating clusterctl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let template = root.join("tests/e2e/templates/cluster-template-sim.yaml");
    let out = std::process::Command::new(clusterctl)
        .args(["generate", "cluster", cluster, "--from"])
        .arg(&template)
        .args(["--target-namespace", ns, "--kubernetes-version", FIRST])
        .args([
            "--control-plane-machine-count",
            "3",
            "--worker-machine-count",
            "1",
        ])
        .env("CONTROL_PLANE_ENDPOINT_PORT", port.to_string())
        .env("TALOS_VERSION", line.contract)
        .env("TALOS_NODE_VERSION", line.boots)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clusterctl generate cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .map(|mut v| {
            line.adapt(&mut v);
            v
        })
        .collect()
}

async fn apply(client: &kube::Client, ns: &str, manifest: &Value) {
    let (group, version) = manifest["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let kind = manifest["kind"].as_str().unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let (ar, _) =
        kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .unwrap_or_else(|e| panic!("{kind} is not served: {e}"));
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(
            name,
            &PatchParams::apply("talos-capi-e2e").force(),
            &Patch::Apply(manifest),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

#[tokio::test]
async fn a_talos_cluster_lives_and_dies() {
    let client = client().await;
    let ns = std::env::var("E2E_NAMESPACE").unwrap_or_else(|_| "talos-capi-e2e".into());
    let infra = api(
        &client,
        &ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "SimMachine",
    );
    assert!(
        infra.list(&ListParams::default().limit(1)).await.is_ok(),
        "the e2e suite needs the simulated infrastructure provider serving namespace {ns}: run it with `make e2e`"
    );
    let suffix = std::process::id() % 100_000;
    let cluster = format!("e2e-{suffix}");
    let scene = Scene {
        client: client.clone(),
        ns: ns.clone(),
        tcp: format!("{cluster}-control-plane"),
        cluster: cluster.clone(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let talos = TalosLine::from_env();
    println!(
        "== create {cluster} from the clusterctl template, Talos {} (contract {})",
        talos.boots, talos.contract
    );
    for manifest in generate(&cluster, &ns, port, &talos) {
        apply(&client, &ns, &manifest).await;
    }
    scene.wait_steady(3, "three control planes").await;
    until("the worker and the Cluster", STEP, async || {
        let workers = scene.capi("MachineDeployment").get(&format!("{cluster}-workers")).await.ok();
        let ready = workers.as_ref().and_then(|w| w.data["status"]["readyReplicas"].as_u64()).unwrap_or(0);
        let c = scene.capi("Cluster").get(&cluster).await.ok();
        let available = c.as_ref().map(|c| condition(c, "ControlPlaneAvailable")).unwrap_or_default();
        let initialized = c.as_ref().map(|c| c.data["status"]["initialization"]["controlPlaneInitialized"] == true).unwrap_or(false);
        let done = ready == 1 && available == "True" && initialized;
        (done.then_some(()), format!("{ready} of 1 worker ready; Cluster ControlPlaneAvailable {available}, controlPlaneInitialized {initialized}"))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in [
        format!("{cluster}-talos"),
        format!("{cluster}-kubeconfig"),
        format!("{cluster}-talosconfig"),
    ] {
        assert!(
            secrets.get_opt(&name).await.unwrap().is_some(),
            "Secret {name}"
        );
    }

    println!("== scale the control plane 3 → 5 → 3");
    scene.patch_tcp(json!({"replicas": 5})).await;
    scene.wait_steady(5, "five control planes").await;
    scene.patch_tcp(json!({"replicas": 3})).await;
    scene.wait_steady(3, "back to three").await;

    println!("== roll Kubernetes {FIRST} → {NEXT}");
    let before = names(&scene.control_planes().await);
    scene.patch_tcp(json!({"version": NEXT})).await;
    until("the rolling upgrade", STEP, async || {
        let (steady, line, machines) = scene.steady(3).await;
        let on_next = machines
            .iter()
            .filter(|m| m.data["spec"]["version"] == NEXT)
            .count();
        let surge = machines.len();
        assert!(
            surge <= 4,
            "maxSurge 1: at most 4 control planes, saw {surge}"
        );
        (
            (steady && on_next == 3).then_some(()),
            format!("{on_next} of 3 on {NEXT}; {line}"),
        )
    })
    .await;
    let rolled_machines = scene.control_planes().await;
    let rolled = names(&rolled_machines);
    assert!(
        rolled.is_disjoint(&before),
        "every machine was replaced: {before:?} → {rolled:?}"
    );

    // What each node's kubelet reports, as Cluster API copies it onto the Machine.
    let os_image = |version: &str| json!(format!("Talos ({version})"));
    assert!(
        rolled_machines
            .iter()
            .all(|m| m.data["status"]["nodeInfo"]["osImage"] == os_image(talos.boots)),
        "every node runs Talos {} before the upgrade",
        talos.boots
    );
    let next = talos.next;
    println!(
        "== upgrade Talos in place to {next} from {}",
        talos.installer
    );
    scene
        .patch_tcp(json!({"talosUpgrade": {"image": talos.installer}}))
        .await;
    let os_image = os_image(next);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let upgraded_events = until("the Talos upgrade", STEP, async || {
        let (steady, line, machines) = scene.steady(3).await;
        let upgraded = machines
            .iter()
            .filter(|m| m.data["status"]["nodeInfo"]["osImage"] == os_image)
            .count();
        // The controller ends each node's upgrade once it sees the node back and healthy,
        // which can be after Cluster API copied the new osImage.
        let in_progress = machines
            .iter()
            .filter(|m| {
                m.annotations()
                    .contains_key("controlplane.cluster.x-k8s.io/talos-upgrade")
            })
            .count();
        // Each node's TalosUpgraded Event follows the end of its upgrade.
        let said = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("TalosUpgraded"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&scene.tcp))
            .count();
        (
            (steady && upgraded == 3 && in_progress == 0 && said >= 3).then_some(said),
            format!(
                "{upgraded} of 3 nodes on Talos {next}, {in_progress} upgrades in progress, {said} TalosUpgraded Events; {line}"
            ),
        )
    })
    .await;
    let machines = scene.control_planes().await;
    assert_eq!(names(&machines), rolled, "in place: the same machines");
    assert_eq!(upgraded_events, 3, "one TalosUpgraded Event per node");

    println!("== a control-plane node dies: the MachineHealthCheck and talos-capi replace it");
    let victim = machines[0].clone();
    let sim_machine = victim.data["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    infra
        .patch(
            &sim_machine,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {POWER_OFF: "true"}}})),
        )
        .await
        .unwrap();
    until("the remediation", STEP, async || {
        let (steady, line, machines) = scene.steady(3).await;
        let gone = !names(&machines).contains(&victim.name_any());
        (
            (steady && gone).then_some(()),
            format!("{} gone: {gone}; {line}", victim.name_any()),
        )
    })
    .await;
    let tcp = scene.tcp().await.unwrap();
    assert_eq!(
        tcp.data["status"]["lastRemediation"]["machine"],
        json!(victim.name_any()),
        "the TalosControlPlane records the remediation"
    );

    println!("== delete the cluster");
    scene
        .capi("Cluster")
        .delete(&cluster, &DeleteParams::default())
        .await
        .unwrap();
    until("the Cluster gone", STEP, async || {
        let left = scene.capi("Cluster").get_opt(&cluster).await.ok().flatten();
        let machines = scene
            .capi("Machine")
            .list(&scene.selector())
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        (
            left.is_none().then_some(()),
            format!("{machines} machines left"),
        )
    })
    .await;
    let kinds = [
        ("Machine", scene.capi("Machine")),
        ("MachineSet", scene.capi("MachineSet")),
        ("MachineDeployment", scene.capi("MachineDeployment")),
        ("TalosControlPlane", scene.tcps()),
        (
            "TalosConfig",
            api(
                &client,
                &ns,
                "bootstrap.cluster.x-k8s.io",
                "v1alpha3",
                "TalosConfig",
            ),
        ),
        ("SimMachine", infra.clone()),
    ];
    let mut remaining = Vec::new();
    for (kind, objects) in kinds {
        let items = objects.list(&ListParams::default()).await.unwrap().items;
        remaining.extend(
            items
                .iter()
                .filter(|o| o.name_any().starts_with(&cluster))
                .map(|o| format!("{kind} {}", o.name_any())),
        );
    }
    assert!(
        remaining.is_empty(),
        "left after the Cluster was deleted: {remaining:?}"
    );
    // Secrets go with their owners through the garbage collector (kube-controller-manager);
    // where none runs (the local control plane), each one left must be owned only by objects
    // that are gone.
    let owned = secrets.list(&ListParams::default()).await.unwrap().items;
    for secret in owned.iter().filter(|s| s.name_any().starts_with(&cluster)) {
        let owners = secret.owner_references();
        assert!(
            !owners.is_empty(),
            "Secret {} has no owner: nothing would delete it",
            secret.name_any()
        );
        for owner in owners {
            let (group, version) = owner
                .api_version
                .split_once('/')
                .unwrap_or(("", &owner.api_version));
            let owner_api = api(&client, &ns, group, version, &owner.kind);
            let alive = owner_api
                .get_opt(&owner.name)
                .await
                .ok()
                .flatten()
                .is_some_and(|o| o.uid().as_deref() == Some(owner.uid.as_str()));
            assert!(
                !alive,
                "Secret {} is owned by {} {}, which still exists",
                secret.name_any(),
                owner.kind,
                owner.name
            );
        }
    }
}
