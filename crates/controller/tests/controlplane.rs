//! The TalosControlPlane controller on the local control plane with the real Cluster API v1.14
//! core and simulated Talos nodes: machines are created and spread over failure domains, etcd
//! is bootstrapped exactly once, membership follows the machines through scale up, scale down
//! and deletions, and the kubeconfig is issued and rotated. Every assertion about etcd reads the
//! simulator's own etcd, not our status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use api::capi::Machine;
use api::conditions::{self, ConditionType};
use api::controlplane::v1alpha3::TalosControlPlane;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use talos_sim::Simulator;
use talos_sim::etcd::Op;

fn condition(tcp: &TalosControlPlane, t: ConditionType) -> Option<conditions::Condition> {
    tcp.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::get(cs, t))
        .cloned()
}

async fn machines(client: &kube::Client, ns: &str) -> Vec<Machine> {
    Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
        .await
        .unwrap()
        .items
}

/// Wait until the control plane has `n` machines, each with a healthy voting etcd member (read
/// from the simulator), and the status says so.
async fn settled(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    n: usize,
) -> Vec<(String, u64, bool)> {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{n} machines with healthy etcd members"),
        async || {
            let tcp = api.get(name).await.ok()?;
            let healthy = condition(&tcp, ConditionType::EtcdClusterHealthy)?.status == "True";
            let status = tcp.status.as_ref()?;
            let machines = machines(client, ns).await;
            // The controller reads a new node's health at its etcd peer address, so it can be
            // healthy before Cluster API has copied that address to the Machine: wait for both.
            let addressed = machines.iter().all(|m| !m.addresses().is_empty());
            if !healthy || status.replicas != Some(n as i32) || machines.len() != n || !addressed {
                return None;
            }
            let id = sim_infra::cluster_id(client, ns, name).await.unwrap();
            let members = sim.etcd_members(&id);
            (members.len() == n && members.iter().all(|(_, _, learner)| !learner))
                .then_some(members)
        },
    )
    .await
}

/// Invariants read from the simulator's own etcd history: bootstrapped once, quorum kept by
/// every removal, and no member removed from a node that still runs (a removed member's node
/// was terminated with its machine).
async fn assert_etcd_invariants(client: &kube::Client, ns: &str, cluster: &str, sim: &Simulator) {
    let id = sim_infra::cluster_id(client, ns, cluster).await.unwrap();
    let history = sim.etcd_history(&id);
    let bootstraps = history.iter().filter(|c| c.op == Op::Bootstrap).count();
    assert_eq!(bootstraps, 1, "{history:?}");
    for change in history.iter().filter(|c| c.op == Op::Remove) {
        assert_ne!(
            change.quorum_after,
            Some(false),
            "a removal lost quorum: {history:?}"
        );
        // The node goes once Cluster API deletes the machine's infrastructure.
        eventually(
            client,
            ns,
            cluster,
            "the removed member's node terminated",
            async || (!sim.nodes().contains(&change.node)).then_some(()),
        )
        .await;
    }
}

/// Wait until `gone` has left and the control plane is back to three healthy members.
async fn replaced_and_settled(
    client: &kube::Client,
    ns: &str,
    cp: &str,
    sim: &Simulator,
    gone: &str,
) -> Vec<(String, u64, bool)> {
    eventually(
        client,
        ns,
        cp,
        &format!("machine {gone} gone"),
        async || {
            let names: Vec<String> = machines(client, ns)
                .await
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            (!names.iter().any(|n| n == gone)).then_some(())
        },
    )
    .await;
    settled(client, ns, cp, sim, 3).await
}

async fn scale(client: &kube::Client, ns: &str, name: &str, replicas: i32) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn scales_one_to_three_over_zones_and_back_to_one_without_orphan_members() {
    let (client, ns, _controller) = setup("cp-scale").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "s", 1).await;
    settled(&client, &ns, "s", &infra.sim, 1).await;

    let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .get("s")
        .await
        .unwrap();
    let status = tcp.status.clone().unwrap();
    assert_eq!(status.initialized, Some(true));
    assert_eq!(
        status
            .initialization
            .and_then(|i| i.control_plane_initialized),
        Some(true)
    );
    assert_eq!(
        status.selector.as_deref(),
        Some("cluster.x-k8s.io/cluster-name=s,cluster.x-k8s.io/control-plane")
    );
    assert_eq!(
        condition(&tcp, ConditionType::Available)
            .map(|c| c.status)
            .as_deref(),
        Some("True")
    );
    assert!(
        tcp.finalizers()
            .iter()
            .any(|f| f == "talos.controlplane.cluster.x-k8s.io")
    );

    scale(&client, &ns, "s", 3).await;
    settled(&client, &ns, "s", &infra.sim, 3).await;
    let mut zones: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .filter_map(|m| m.spec.failure_domain.clone())
        .collect();
    zones.sort();
    assert_eq!(zones, ["a", "b", "c"], "one machine per failure domain");
    // Each machine got its infrastructure cloned from the template, and its own TalosConfig.
    for m in machines(&client, &ns).await {
        let infra_machine = dynamic(
            &client,
            &ns,
            "infrastructure.cluster.x-k8s.io/v1alpha1",
            "SimMachine",
        )
        .get(&m.name_any())
        .await
        .unwrap();
        assert_eq!(
            infra_machine
                .annotations()
                .get("cluster.x-k8s.io/cloned-from-name")
                .map(String::as_str),
            Some("s")
        );
        assert_eq!(m.spec.version.as_deref(), Some("v1.35.0"));
        assert_eq!(
            m.labels()
                .get("cluster.x-k8s.io/control-plane-name")
                .map(String::as_str),
            Some("s")
        );
    }

    // Template metadata and timeouts reach the machines in place.
    Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"machineTemplate": {
                "metadata": {"labels": {"team": "platform"}}, "nodeDrainTimeout": "5m"
            }}})),
        )
        .await
        .unwrap();
    eventually(
        &client,
        &ns,
        "s",
        "template metadata on every machine",
        async || {
            let all = machines(&client, &ns).await;
            all.iter()
                .all(|m| {
                    m.labels().get("team").map(String::as_str) == Some("platform")
                        && m.spec
                            .deletion
                            .as_ref()
                            .and_then(|d| d.node_drain_timeout_seconds)
                            == Some(300)
                })
                .then_some(())
        },
    )
    .await;
    // A label dropped from the template leaves the machines; one set by someone else stays.
    let first = machines(&client, &ns).await.remove(0).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owner": "someone-else"}}})),
        )
        .await
        .unwrap();
    Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"machineTemplate": {"metadata": {"labels": null}}}})),
        )
        .await
        .unwrap();
    eventually(
        &client,
        &ns,
        "s",
        "the dropped template label gone from every machine",
        async || {
            let all = machines(&client, &ns).await;
            all.iter()
                .all(|m| !m.labels().contains_key("team"))
                .then_some(all)
        },
    )
    .await;
    let kept = Api::<Machine>::namespaced(client.clone(), &ns)
        .get(&first)
        .await
        .unwrap();
    assert_eq!(
        kept.labels().get("owner").map(String::as_str),
        Some("someone-else")
    );

    // Straight to one, without waiting between steps.
    scale(&client, &ns, "s", 1).await;
    let members = settled(&client, &ns, "s", &infra.sim, 1).await;
    let survivor = machines(&client, &ns).await;
    assert_eq!(survivor.len(), 1);
    assert_eq!(members.len(), 1, "no orphan members: {members:?}");

    assert_etcd_invariants(&client, &ns, "s", &infra.sim).await;

    // Zero replicas is refused at admission, with a message that says why.
    let refused = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect_err("0 replicas is refused");
    assert!(refused.to_string().contains("replicas"), "{refused}");
}

#[tokio::test]
async fn a_deleted_machine_is_replaced_with_a_new_member() {
    let (client, ns, _controller) = setup("cp-replace").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "r", 3).await;
    let before = settled(&client, &ns, "r", &infra.sim, 3).await;
    let victim = machines(&client, &ns).await.remove(1).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&victim, &Default::default())
        .await
        .unwrap();
    let after = replaced_and_settled(&client, &ns, "r", &infra.sim, &victim).await;
    let ids = |m: &[(String, u64, bool)]| m.iter().map(|(_, id, _)| *id).collect::<Vec<_>>();
    let new: Vec<u64> = ids(&after)
        .into_iter()
        .filter(|id| !ids(&before).contains(id))
        .collect();
    assert_eq!(
        new.len(),
        1,
        "one new member: before {before:?}, after {after:?}"
    );
    assert_eq!(after.len(), 3);
}

/// The API server's replies to the requests of a client, recorded for requests whose path ends
/// with `suffix` (one object's): method and status code, in order. A tower layer for
/// [`kube::client::ClientBuilder::with_layer`].
#[derive(Clone, Debug)]
pub struct Replies {
    suffix: String,
    seen: Arc<std::sync::Mutex<Vec<(http::Method, u16)>>>,
}

impl Replies {
    pub fn to(suffix: &str) -> Self {
        Replies {
            suffix: suffix.to_owned(),
            seen: Arc::default(),
        }
    }

    /// Every reply recorded so far.
    pub fn seen(&self) -> Vec<(http::Method, u16)> {
        self.seen.lock().unwrap().clone()
    }

    /// A client of `cp` whose replies this records.
    pub fn client(&self, cp: &testkit::LocalControlPlane) -> kube::Client {
        kube::client::ClientBuilder::try_from(cp.kube_config())
            .unwrap()
            .with_layer(self)
            .build()
    }
}

impl<S> tower::Layer<S> for Replies {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            replies: self.clone(),
        }
    }
}

/// See [`Replies`].
#[derive(Clone, Debug)]
pub struct Recorded<S> {
    inner: S,
    replies: Replies,
}

impl<S, B, R> tower::Service<http::Request<B>> for Recorded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watched = request.uri().path().ends_with(&self.replies.suffix);
        let method = request.method().clone();
        let seen = Arc::clone(&self.replies.seen);
        let call = self.inner.call(request);
        Box::pin(async move {
            let reply = call.await;
            if let (true, Ok(r)) = (watched, &reply) {
                seen.lock().unwrap().push((method, r.status().as_u16()));
            }
            reply
        })
    }
}

/// The reconciles of a cluster's control-plane configs all update the talosconfig's endpoints
/// as the machines get their addresses: they take turns and never conflict with one another
/// (no 409 from the API server on `<cluster>-talosconfig`), and the endpoints end up the
/// machines' addresses.
#[tokio::test]
async fn a_three_machine_bring_up_writes_the_talosconfig_endpoints_without_a_conflict() {
    let cp = testkit::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = testkit::unique_namespace(&client, "cp-endpoints")
        .await
        .unwrap();
    let replies = Replies::to("/secrets/e-talosconfig");
    let _controller = start_controller(&replies.client(cp), &ns);
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "e", 3).await;
    settled(&client, &ns, "e", &infra.sim, 3).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let endpoints = async || -> Option<Vec<String>> {
        let secret = secrets.get("e-talosconfig").await.ok()?;
        let text = String::from_utf8(secret.data?.get("talosconfig")?.0.clone()).ok()?;
        let config = machineconfig::talosconfig::TalosConfig::from_yaml(&text).ok()?;
        Some(config.contexts.get("e")?.endpoints.clone())
    };
    let addresses = testkit::eventually(
        "the talosconfig's endpoints are the machines' addresses",
        WAIT,
        async || {
            let mut addresses: Vec<String> = machines(&client, &ns)
                .await
                .iter()
                .flat_map(|m| m.addresses())
                .map(|a| a.address.clone())
                .collect();
            addresses.sort();
            (addresses.len() == 3 && endpoints().await? == addresses).then_some(addresses)
        },
    )
    .await;
    // The Cluster annotation pins them.
    Api::<api::capi::Cluster>::namespaced(client.clone(), &ns)
        .patch(
            "e",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "talos.cluster.x-k8s.io/talosconfig-endpoints": "192.168.1.41, 192.168.1.40"
            }}})),
        )
        .await
        .unwrap();
    testkit::eventually("the pinned endpoints", WAIT, async || {
        (endpoints().await? == ["192.168.1.40", "192.168.1.41"]).then_some(())
    })
    .await;
    let seen = replies.seen();
    let writes = seen.iter().filter(|(m, _)| m != http::Method::GET).count();
    let conflicts = seen.iter().filter(|(_, code)| *code == 409).count();
    eprintln!(
        "e-talosconfig {addresses:?}, then pinned: {writes} writes, {conflicts} conflicts (409) in {} requests",
        seen.len()
    );
    assert!(writes > 0, "the endpoints were written: {seen:?}");
    assert_eq!(conflicts, 0, "no write conflicted: {seen:?}");
}

/// Machines made by CACPPT carry none of our records (what they were made from, their
/// TalosConfig's digest, the template keys) and not our pre-terminate hook. CACPPT's module is
/// not served here, so such machines are made by taking ours off a settled control plane while
/// no controller runs. Taking over, the controller adds the records and the hook in place:
/// no machine is replaced, no node boots again, etcd membership does not change.
#[tokio::test]
async fn machines_without_our_records_are_adopted_without_a_reboot_or_a_membership_change() {
    use controller::controlplane::machines::{self as m, cleanup_hook};
    let (client, ns, first) = setup("cp-adopt").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "ad", 3).await;
    settled(&client, &ns, "ad", &infra.sim, 3).await;
    drop(first);
    let ours = [
        m::MADE_FROM_TEMPLATE.to_owned(),
        m::MADE_FROM_TEMPLATE_DIGEST.to_owned(),
        m::MADE_FROM_CONFIG_DIGEST.to_owned(),
        m::TEMPLATE_KEYS.to_owned(),
        cleanup_hook(),
    ];
    let api = Api::<Machine>::namespaced(client.clone(), &ns);
    let strip: serde_json::Map<String, serde_json::Value> = ours
        .iter()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    for name in machine_names(&client, &ns).await {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": strip}})),
        )
        .await
        .unwrap();
    }
    for machine in machines(&client, &ns).await {
        let held: Vec<&String> = ours
            .iter()
            .filter(|k| machine.annotations().contains_key(*k))
            .collect();
        assert!(held.is_empty(), "{}: {held:?}", machine.name_any());
    }
    let mut names = machine_names(&client, &ns).await;
    names.sort();
    let booted = boots(&client, &ns, &infra.sim).await;
    let id = sim_infra::cluster_id(&client, &ns, "ad").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();

    let (_controller, ctx) = start_controller_context(&client, &ns, Default::default());
    let configs = Api::<api::bootstrap::v1alpha3::TalosConfig>::namespaced(client.clone(), &ns);
    for name in &names {
        let machine = eventually(&client, &ns, "ad", "records and hook back", async || {
            let machine = api.get(name).await.ok()?;
            let annotations = machine.annotations();
            [
                m::MADE_FROM_CONFIG_DIGEST.to_owned(),
                m::TEMPLATE_KEYS.to_owned(),
                cleanup_hook(),
            ]
            .iter()
            .all(|k| annotations.contains_key(k))
            .then_some(machine)
        })
        .await;
        let config = machine.spec.bootstrap.config_ref.as_ref().unwrap();
        let config = configs.get(&config.name).await.unwrap();
        assert_eq!(
            machine.annotations()[m::MADE_FROM_CONFIG_DIGEST],
            m::config_digest(&config.spec).unwrap(),
            "{name}: its TalosConfig's digest, read once"
        );
    }
    settled(&client, &ns, "ad", &infra.sim, 3).await;
    wait_condition(
        &client,
        &ns,
        "ad",
        ConditionType::MachinesUpToDate,
        "True",
        "",
    )
    .await;
    // A reconcile of the adopted control plane as it is now starts no rollout.
    reconciled_since(&ctx, &client, &ns, "ad").await;
    let mut after = machine_names(&client, &ns).await;
    after.sort();
    assert_eq!(after, names, "no machine replaced");
    assert_eq!(
        boots(&client, &ns, &infra.sim).await,
        booted,
        "no node booted again"
    );
    assert_eq!(
        infra.sim.etcd_history(&id).len(),
        history,
        "no etcd membership change: {:?}",
        infra.sim.etcd_history(&id)
    );
}

/// A connection reset can take the reply of a call that did take effect. Every node here loses
/// the reply to its first Bootstrap, member removal, leadership move and Upgrade. Asking again,
/// the controller finds what happened instead of doing it twice: etcd is bootstrapped once,
/// each member is removed once, and each node boots into the new Talos version once.
#[tokio::test]
async fn replies_lost_after_bootstrap_member_removal_and_upgrade_are_not_acted_on_twice() {
    let (client, ns, _controller) = setup("cp-lost-reply").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    infra.sim.set_new_node_failures(|f| {
        for method in [
            "Bootstrap",
            "EtcdRemoveMemberByID",
            "EtcdLeaveCluster",
            "EtcdForfeitLeadership",
            "Upgrade",
        ] {
            f.lost_replies.insert(method.to_owned(), 1);
        }
    });
    control_plane_cluster(&client, &ns, "lr", 3).await;
    settled(&client, &ns, "lr", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "lr").await.unwrap();

    // In place: each node boots once more, into the new version.
    let before = boots(&client, &ns, &infra.sim).await;
    patch_spec(
        &client,
        &ns,
        "lr",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "timeoutSeconds": 60}}),
    )
    .await;
    let nodes: Vec<String> = {
        let mut out = Vec::new();
        for (m, _) in &before {
            out.push(node_of(&client, &ns, m).await);
        }
        out
    };
    eventually(&client, &ns, "lr", "every node on v1.13.1", async || {
        nodes
            .iter()
            .all(|n| infra.sim.status(n).is_some_and(|(_, v)| v == "v1.13.1"))
            .then_some(())
    })
    .await;
    settled(&client, &ns, "lr", &infra.sim, 3).await;
    wait_condition(&client, &ns, "lr", ConditionType::RollingOut, "False", "").await;
    let after = boots(&client, &ns, &infra.sim).await;
    for ((m, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(
            *a,
            b + 1,
            "{m}: booted once into the upgrade ({before:?} -> {after:?})"
        );
    }

    // Scale down: two members leave, each removed once.
    scale(&client, &ns, "lr", 1).await;
    settled(&client, &ns, "lr", &infra.sim, 1).await;
    assert_etcd_invariants(&client, &ns, "lr", &infra.sim).await;
    let history = infra.sim.etcd_history(&id);
    let removed: Vec<u64> = history
        .iter()
        .filter(|c| c.op == Op::Remove)
        .map(|c| c.id)
        .collect();
    let mut distinct = removed.clone();
    distinct.dedup();
    assert_eq!(removed.len(), 2, "{history:?}");
    assert_eq!(distinct, removed, "no member removed twice: {history:?}");

    // The replies were lost: Bootstrap's once, a member removal's, and every node's Upgrade.
    let lost = infra.sim.lost_replies();
    let count = |method: &str| lost.iter().filter(|(_, m)| m == method).count();
    assert_eq!(count("Bootstrap"), 1, "{lost:?}");
    assert!(count("EtcdRemoveMemberByID") >= 1, "{lost:?}");
    for node in &nodes {
        assert!(
            lost.contains(&(node.clone(), "Upgrade".to_owned())),
            "{node}: {lost:?}"
        );
    }
}

/// A client for the workload cluster from a `<cluster>-kubeconfig` Secret.
async fn workload_client(secret: &Secret) -> kube::Client {
    let yaml = String::from_utf8(secret.data.as_ref().unwrap()["value"].0.clone()).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The kubeconfig works, is rotated on request, and carries the watch of the workload Nodes. The
/// controller's health checks over the Talos API are an hour apart here, so every reaction to a
/// Node's readiness below comes from that watch, not from a periodic look.
#[tokio::test]
async fn kubeconfig_reaches_the_workload_api_server_and_is_rotated_on_request() {
    let (client, ns, _controller) = setup_with(
        "cp-kubeconfig",
        controller::Options {
            health_check: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    // The workload cluster gets a real kube-apiserver at its endpoint, under its own CA.
    let infra = sim_infra::start_with(&client, &ns, &["a"], true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    control_plane_cluster_at(&client, &ns, "k", 1, ("127.0.0.1", port)).await;
    settled(&client, &ns, "k", &infra.sim, 1).await;
    let machine = machines(&client, &ns).await.remove(0).name_any();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let first = secrets.get("k-kubeconfig").await.unwrap();
    assert_eq!(first.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    let value =
        |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["value"].0.clone()).unwrap();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&value(&first)).unwrap();
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        format!("https://127.0.0.1:{port}")
    );

    // Our kubeconfig lists the workload Nodes, and Cluster API, through the same Secret, links
    // the Machine to its Node.
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(workload_client(&first).await);
    eventually(
        &client,
        &ns,
        "k",
        "the node registered in the workload cluster",
        async || {
            let names: Vec<String> = nodes
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            names.contains(&machine).then_some(())
        },
    )
    .await;
    eventually(
        &client,
        &ns,
        "k",
        "Cluster API sets the Machine's nodeRef",
        async || {
            let m = Api::<Machine>::namespaced(client.clone(), &ns)
                .get(&machine)
                .await
                .ok()?;
            m.has_node().then_some(())
        },
    )
    .await;

    // The controller watches the workload Nodes through that kubeconfig: a Node that goes
    // NotReady is reported, and so is its return, each within WAIT and far inside the hour
    // between health checks.
    set_node_ready(&nodes, &machine, "False").await;
    let not_ready = node_not_ready_reported(&client, &ns, &machine).await;
    assert!(
        not_ready.message.contains("KubeletNotReady"),
        "{}",
        not_ready.message
    );
    set_node_ready(&nodes, &machine, "True").await;
    wait_condition(
        &client,
        &ns,
        "k",
        ConditionType::ControlPlaneComponentsHealthy,
        "True",
        "",
    )
    .await;

    Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "talos.controlplane.cluster.x-k8s.io/rotate-kubeconfig": "2026-11-23"
            }}})),
        )
        .await
        .unwrap();
    let rotated = eventually(&client, &ns, "k", "the kubeconfig rotated", async || {
        let s = secrets.get("k-kubeconfig").await.ok()?;
        (value(&s) != value(&first)).then_some(s)
    })
    .await;
    assert_eq!(
        rotated
            .annotations()
            .get("talos.controlplane.cluster.x-k8s.io/kubeconfig-rotated-for")
            .map(String::as_str),
        Some("2026-11-23")
    );
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(workload_client(&rotated).await);
    assert!(
        nodes.list(&ListParams::default()).await.is_ok(),
        "the rotated kubeconfig works too"
    );
    // ...and the controller follows the Nodes through the rotated one.
    set_node_ready(&nodes, &machine, "False").await;
    node_not_ready_reported(&client, &ns, &machine).await;
    set_node_ready(&nodes, &machine, "True").await;

    // A kubeconfig whose certificate expires within 90 days (here one issued for 30) is issued
    // again for a year, with no request, and works.
    let bundle =
        controller::bootstrap::secrets::parse_bundle(&secrets.get("k-talos").await.unwrap())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let aging = machineconfig::kubeconfig::generate(
        "k",
        &format!("https://127.0.0.1:{port}"),
        &bundle,
        now,
        time::Duration::days(30),
    )
    .unwrap();
    let mut stale = rotated.clone();
    stale.data = Some(std::collections::BTreeMap::from([(
        "value".to_owned(),
        k8s_openapi::ByteString(aging.yaml.clone().into_bytes()),
    )]));
    stale.metadata.annotations = None;
    secrets
        .replace("k-kubeconfig", &Default::default(), &stale)
        .await
        .unwrap();
    let renewed = eventually(
        &client,
        &ns,
        "k",
        "the aging kubeconfig renewed",
        async || {
            let s = secrets.get("k-kubeconfig").await.ok()?;
            (value(&s) != aging.yaml).then_some(s)
        },
    )
    .await;
    let not_after =
        machineconfig::kubeconfig::client_certificate_not_after(&value(&renewed)).unwrap();
    assert!(
        not_after - now > time::Duration::days(364),
        "issued for a year: {not_after}"
    );
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(workload_client(&renewed).await);
    set_node_ready(&nodes, &machine, "False").await;
    node_not_ready_reported(&client, &ns, &machine).await;
}

/// Control plane "k" reports the Node of `machine` not Ready.
async fn node_not_ready_reported(
    client: &kube::Client,
    ns: &str,
    machine: &str,
) -> conditions::Condition {
    wait_condition(
        client,
        ns,
        "k",
        ConditionType::ControlPlaneComponentsHealthy,
        "False",
        &format!("Nodes not Ready: {machine}"),
    )
    .await
}

/// Set the Ready condition of a workload Node, as its kubelet would.
async fn set_node_ready(nodes: &Api<k8s_openapi::api::core::v1::Node>, name: &str, status: &str) {
    let reason = if status == "True" {
        "KubeletReady"
    } else {
        "KubeletNotReady"
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [{
                "type": "Ready", "status": status, "reason": reason,
                "message": "set by the test", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn pause_stops_changes_and_deletion_removes_every_machine() {
    let (client, ns, _controller, ctx) = setup_context("cp-lifecycle", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "l", 1).await;
    settled(&client, &ns, "l", &infra.sim, 1).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.patch(
        "l",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": ""}}})),
    )
    .await
    .unwrap();
    eventually(&client, &ns, "l", "Paused", async || {
        let tcp = api.get("l").await.ok()?;
        (condition(&tcp, ConditionType::Paused)?.status == "True").then_some(())
    })
    .await;
    scale(&client, &ns, "l", 3).await;
    reconciled_since(&ctx, &client, &ns, "l").await;
    assert_eq!(
        machines(&client, &ns).await.len(),
        1,
        "nothing changes while paused"
    );
    api.patch(
        "l",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": null}}})),
    )
    .await
    .unwrap();
    settled(&client, &ns, "l", &infra.sim, 3).await;

    api.delete("l", &Default::default()).await.unwrap();
    eventually(
        &client,
        &ns,
        "l",
        "the control plane and its machines gone",
        async || {
            let gone = api.get_opt("l").await.ok()?.is_none();
            (gone && machines(&client, &ns).await.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deletion_waits_for_the_worker_machines_and_only_then_removes_the_control_plane() {
    let (client, ns, _controller, ctx) =
        setup_context("cp-delete-workers", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "w", 1).await;
    settled(&client, &ns, "w", &infra.sim, 1).await;
    let worker = json!({"generateType": "worker", "talosVersion": "v1.13"});
    machine(&client, &ns, "w", "w-worker-0", worker, false).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.delete("w", &Default::default()).await.unwrap();
    wait_condition(
        &client,
        &ns,
        "w",
        ConditionType::Deleting,
        "True",
        "waiting for the worker machines of Cluster w to be deleted first (1 left)",
    )
    .await;
    // The workers still run on this control plane: nothing of it goes yet.
    reconciled_since(&ctx, &client, &ns, "w").await;
    let control_planes: Vec<Machine> = machines(&client, &ns)
        .await
        .into_iter()
        .filter(|m| m.labels().contains_key("cluster.x-k8s.io/control-plane"))
        .collect();
    assert_eq!(control_planes.len(), 1);
    assert!(
        control_planes[0].metadata.deletion_timestamp.is_none(),
        "the control-plane machine is not deleted while a worker exists"
    );
    assert!(
        api.get_opt("w").await.unwrap().is_some(),
        "the finalizer holds"
    );

    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete("w-worker-0", &Default::default())
        .await
        .unwrap();
    eventually(
        &client,
        &ns,
        "w",
        "the control plane and its machines gone once the worker is",
        async || {
            let gone = api.get_opt("w").await.ok()?.is_none();
            (gone && machines(&client, &ns).await.is_empty()).then_some(())
        },
    )
    .await;
}

/// The Talos API address of a machine's node.
async fn node_of(client: &kube::Client, ns: &str, machine: &str) -> String {
    Api::<Machine>::namespaced(client.clone(), ns)
        .get(machine)
        .await
        .unwrap()
        .addresses()
        .first()
        .map(|a| a.address.clone())
        .expect("the machine has an address")
}

fn member_on(members: &[(String, u64, bool)], node: &str) -> Option<u64> {
    members
        .iter()
        .find(|(n, _, _)| n == node)
        .map(|(_, id, _)| *id)
}

async fn wait_condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    t: ConditionType,
    status: &str,
    contains: &str,
) -> conditions::Condition {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{t} {status} mentioning {contains:?}"),
        async || {
            let c = condition(&api.get(name).await.ok()?, t)?;
            (c.status == status && c.message.contains(contains)).then_some(c)
        },
    )
    .await
}

#[tokio::test]
async fn an_unreachable_node_keeps_its_member() {
    let (client, ns, _controller, ctx) = setup_context("cp-unreachable", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "u", 3).await;
    let before = settled(&client, &ns, "u", &infra.sim, 3).await;
    let victim = machines(&client, &ns).await.remove(0).name_any();
    let address = node_of(&client, &ns, &victim).await;
    infra.sim.set_failures(&address, |f| f.down = true).unwrap();
    wait_condition(
        &client,
        &ns,
        "u",
        ConditionType::EtcdClusterHealthy,
        "False",
        &victim,
    )
    .await;
    // Once the controller has reconciled it unreachable, the member is still there: the
    // machine exists, it is only unreachable.
    reconciled_since(&ctx, &client, &ns, "u").await;
    let id = sim_infra::cluster_id(&client, &ns, "u").await.unwrap();
    assert_eq!(
        member_on(&infra.sim.etcd_members(&id), &address),
        member_on(&before, &address)
    );
    infra
        .sim
        .set_failures(&address, |f| f.down = false)
        .unwrap();
    let after = settled(&client, &ns, "u", &infra.sim, 3).await;
    assert_eq!(after, before, "the same members, the same ids");
    assert!(
        infra
            .sim
            .etcd_history(&id)
            .iter()
            .all(|c| c.op != Op::Remove)
    );
}

/// A node that comes back from a reboot with an expired apid certificate is refused (TLS is
/// verified), named with the cause in the control plane's conditions, and left alone: its
/// member stays and nothing is replaced on a guess. A good certificate (the next boot) makes it
/// healthy again.
#[tokio::test]
async fn a_node_with_an_expired_certificate_is_named_with_the_cause_and_left_alone() {
    let (client, ns, _controller, ctx) = setup_context("cp-expired", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "x", 3).await;
    let before = settled(&client, &ns, "x", &infra.sim, 3).await;
    let names = machine_names(&client, &ns).await;
    let victim = names[0].clone();
    let address = node_of(&client, &ns, &victim).await;
    let power_cycle = async |expired: bool| {
        infra
            .sim
            .set_failures(&address, |f| {
                f.expired_certificate = expired;
                f.down = true;
            })
            .unwrap();
        infra
            .sim
            .set_failures(&address, |f| f.down = false)
            .unwrap();
    };
    power_cycle(true).await;
    let named = wait_condition(
        &client,
        &ns,
        "x",
        ConditionType::EtcdClusterHealthy,
        "False",
        &victim,
    )
    .await;
    let said = eventually(&client, &ns, "x", "the cause named", async || {
        let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
            .get("x")
            .await
            .ok()?;
        let all = tcp.status?.conditions?;
        let text: Vec<String> = all.iter().map(|c| c.message.clone()).collect();
        let text = text.join("\n");
        text.to_lowercase().contains("expired").then_some(text)
    })
    .await;
    assert!(said.contains(&victim), "{said}\n{named:?}");
    println!("{said}");
    // Steady: the x509 error's "current time …" does not make the conditions change at every
    // look. The node is tried again (after its rest), and the reconcile that did so has ended.
    let tried = infra.sim.connections(&address).unwrap();
    eventually(&client, &ns, "x", "the node tried again", async || {
        (infra.sim.connections(&address)? > tried).then_some(())
    })
    .await;
    reconciled_since(&ctx, &client, &ns, "x").await;
    let again = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .get("x")
        .await
        .unwrap();
    let messages: Vec<String> = again
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.message)
        .collect();
    assert_eq!(messages.join("\n"), said, "the conditions hold still");
    let id = sim_infra::cluster_id(&client, &ns, "x").await.unwrap();
    assert_eq!(
        member_on(&infra.sim.etcd_members(&id), &address),
        member_on(&before, &address),
        "its member stays"
    );
    assert_eq!(machine_names(&client, &ns).await, names, "nothing replaced");

    power_cycle(false).await;
    let after = settled(&client, &ns, "x", &infra.sim, 3).await;
    assert_eq!(after, before, "the same members, the same ids");
}

#[tokio::test]
async fn cacppt_225_scale_down_removes_a_machine_whose_node_is_down() {
    let (client, ns, _controller) = setup("cp-225").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "d", 3).await;
    settled(&client, &ns, "d", &infra.sim, 3).await;
    let victim = machines(&client, &ns).await.remove(2).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"cluster.x-k8s.io/delete-machine": ""}}}),
            ),
        )
        .await
        .unwrap();
    let address = node_of(&client, &ns, &victim).await;
    infra.sim.set_failures(&address, |f| f.down = true).unwrap();
    scale(&client, &ns, "d", 2).await;
    settled(&client, &ns, "d", &infra.sim, 2).await;
    let names: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(
        !names.contains(&victim),
        "the annotated machine with the dead node went: {names:?}"
    );
    assert_etcd_invariants(&client, &ns, "d", &infra.sim).await;
}

#[tokio::test]
async fn cacppt_237_a_restart_between_member_removal_and_machine_deletion_resumes() {
    let (client, ns, controller) = setup("cp-237").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "g", 3).await;
    settled(&client, &ns, "g", &infra.sim, 3).await;
    // The manager stops; the machine is being deleted and its member already left etcd.
    drop(controller);
    let all = machines(&client, &ns).await;
    let victim = all[0].name_any();
    let victim_node = node_of(&client, &ns, &victim).await;
    let other_node = node_of(&client, &ns, &all[1].name_any()).await;
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&victim, &Default::default())
        .await
        .unwrap();
    let id = sim_infra::cluster_id(&client, &ns, "g").await.unwrap();
    let member = member_on(&infra.sim.etcd_members(&id), &victim_node).unwrap();
    let talosconfig = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("g-talosconfig")
        .await
        .unwrap();
    let talosconfig =
        String::from_utf8(talosconfig.data.unwrap()["talosconfig"].0.clone()).unwrap();
    use controller::nodes::{Grpc, TalosNodes};
    let talos = Grpc::default()
        .connect(&talosconfig, vec![other_node])
        .unwrap();
    talos
        .etcd_remove_member(&talos_api::Nodes::Endpoint, member)
        .await
        .unwrap();
    // Still there: Cluster API's deletion of it waits on our pre-terminate hook.
    let held = eventually(
        &client,
        &ns,
        "g",
        "the deletion held by our hook",
        async || {
            let machine = Api::<Machine>::namespaced(client.clone(), &ns)
                .get(&victim)
                .await
                .ok()?;
            let deleting = machine
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Deleting")?
                .clone();
            (deleting.status == "True" && deleting.reason == "WaitingForPreTerminateHook")
                .then_some(deleting)
        },
    )
    .await;
    assert!(
        held.message
            .contains(&controller::controlplane::machines::cleanup_hook()),
        "{held:?}"
    );

    let _controller = start_controller(&client, &ns);
    replaced_and_settled(&client, &ns, "g", &infra.sim, &victim).await;
    assert_etcd_invariants(&client, &ns, "g", &infra.sim).await;
}

#[tokio::test]
async fn cacppt_262_one_unhealthy_member_blocks_growth_but_not_its_own_removal() {
    let (client, ns, _controller) = setup("cp-262").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "h", 3).await;
    settled(&client, &ns, "h", &infra.sim, 3).await;
    let sick = machines(&client, &ns).await.remove(1).name_any();
    let address = node_of(&client, &ns, &sick).await;
    infra
        .sim
        .set_failures(&address, |f| f.etcd_unhealthy = true)
        .unwrap();
    wait_condition(
        &client,
        &ns,
        "h",
        ConditionType::EtcdClusterHealthy,
        "False",
        &sick,
    )
    .await;
    // Growing waits, and says for which member.
    scale(&client, &ns, "h", 4).await;
    wait_condition(&client, &ns, "h", ConditionType::ScalingUp, "True", &sick).await;
    assert_eq!(machines(&client, &ns).await.len(), 3);
    // Shrinking removes the sick machine rather than blocking on it.
    scale(&client, &ns, "h", 2).await;
    settled(&client, &ns, "h", &infra.sim, 2).await;
    let names: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(!names.contains(&sick), "{names:?}");
    assert_etcd_invariants(&client, &ns, "h", &infra.sim).await;
}

#[tokio::test]
async fn what_a_machine_creation_cut_short_left_behind_is_removed_and_nothing_else() {
    let (client, ns, _controller) = setup_with(
        "cp-leftover",
        controller::Options {
            leftover_grace: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "l", 1).await;
    settled(&client, &ns, "l", &infra.sim, 1).await;
    let tcp = Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
        .get("l")
        .await
        .unwrap();
    let ours = json!([{
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
        "name": "l", "uid": tcp.metadata.uid, "controller": false,
    }]);
    let labels =
        json!({"cluster.x-k8s.io/cluster-name": "l", "cluster.x-k8s.io/control-plane": ""});
    // What a manager stopped between the TalosConfig and the Machine leaves: both of the
    // machine's first objects, ours and controlled by nothing.
    let infra_version = testkit::infra::api_version();
    apply(
        &client,
        &ns,
        json!({"apiVersion": infra_version, "kind": "SimMachine",
            "metadata": {"name": "l-cut", "labels": labels, "ownerReferences": ours}, "spec": {}}),
    )
    .await;
    let config = |name: &str, owners: serde_json::Value| {
        json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
            "spec": {"generateType": "controlplane"}})
    };
    apply(&client, &ns, config("l-cut", ours.clone())).await;
    // Someone else's config of the same cluster is not ours to remove.
    apply(&client, &ns, config("l-someone-elses", json!([]))).await;
    let configs = dynamic(
        &client,
        &ns,
        "bootstrap.cluster.x-k8s.io/v1alpha3",
        "TalosConfig",
    );
    let sim_machines = dynamic(&client, &ns, &infra_version, "SimMachine");
    eventually(&client, &ns, "l", "the leftovers removed", async || {
        let config = configs.get_opt("l-cut").await.ok()?;
        let machine = sim_machines.get_opt("l-cut").await.ok()?;
        (config.is_none() && machine.is_none()).then_some(())
    })
    .await;
    assert!(
        configs.get_opt("l-someone-elses").await.unwrap().is_some(),
        "a config that is not ours stays"
    );
    let left = machines(&client, &ns).await;
    assert_eq!(left.len(), 1, "the machine itself stays");
    let own = left[0].name_any();
    assert!(configs.get_opt(&own).await.unwrap().is_some());
    assert!(sim_machines.get_opt(&own).await.unwrap().is_some());
    settled(&client, &ns, "l", &infra.sim, 1).await;
}

#[tokio::test]
async fn a_node_that_hangs_is_named_and_rested_and_nothing_is_removed_on_a_guess() {
    let (client, ns, _controller, ctx) = setup_context(
        "cp-hang",
        controller::Options {
            health_check: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "s", 3).await;
    settled(&client, &ns, "s", &infra.sim, 3).await;
    let cluster_id = sim_infra::cluster_id(&client, &ns, "s").await.unwrap();
    let members = infra.sim.etcd_members(&cluster_id);
    // Its apid takes every health question and answers none within the client's deadline.
    let hung = machines(&client, &ns).await.remove(2).name_any();
    let address = node_of(&client, &ns, &hung).await;
    infra
        .sim
        .set_failures(&address, |f| {
            for method in ["ServiceList", "EtcdMemberList", "EtcdStatus", "Version"] {
                f.stalls.insert(method.into(), Duration::from_secs(3600));
            }
        })
        .unwrap();
    let named = wait_condition(
        &client,
        &ns,
        "s",
        ConditionType::EtcdClusterHealthy,
        "False",
        &hung,
    )
    .await;
    assert!(
        named.message.contains("does not answer") && named.message.contains("10s"),
        "{}",
        named.message
    );
    // Growing waits on it, and nothing is removed on a guess: once it has been asked again
    // (after a rest) and the reconcile that asked it has ended.
    scale(&client, &ns, "s", 4).await;
    wait_condition(&client, &ns, "s", ConditionType::ScalingUp, "True", &hung).await;
    let asked = infra.sim.connections(&address).unwrap();
    eventually(&client, &ns, "s", "the hung node asked again", async || {
        (infra.sim.connections(&address)? > asked).then_some(())
    })
    .await;
    reconciled_since(&ctx, &client, &ns, "s").await;
    assert_eq!(machines(&client, &ns).await.len(), 3);
    assert_eq!(
        infra.sim.etcd_members(&cluster_id),
        members,
        "every member kept"
    );
    // Once it answers again, the control plane grows.
    infra
        .sim
        .set_failures(&address, |f| f.stalls.clear())
        .unwrap();
    settled(&client, &ns, "s", &infra.sim, 4).await;
    assert_etcd_invariants(&client, &ns, "s", &infra.sim).await;
}

/// The simulator's count of Talos API calls once the control plane `name` is at rest: the
/// count did not change across a whole reconcile of it (see [`reconciled_since`]).
async fn talos_calls_at_rest(
    ctx: &controller::Context,
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
) -> u64 {
    let mut last = sim.requests();
    eventually(
        client,
        ns,
        name,
        "the Talos API calls at rest",
        async || {
            reconciled_since(ctx, client, ns, name).await;
            let now = sim.requests();
            let rest = (now == last).then_some(now);
            last = now;
            rest
        },
    )
    .await
}

#[tokio::test]
async fn a_steady_control_plane_asks_its_nodes_only_on_a_machine_change_or_its_health_check() {
    let (client, ns, _controller, ctx) = setup_context(
        "cp-steady",
        controller::Options {
            health_check: Duration::from_secs(3600),
            drift_check: Duration::ZERO,
            ..Default::default()
        },
    )
    .await;
    // Each new member stays a learner for 3 s: a control plane steady but for a learner is
    // looked at again until it is promoted, not left for the hour-long health check.
    let infra = sim_infra::start_timed(
        &client,
        &ns,
        &["a", "b", "c"],
        talos_sim::Timing {
            promote: Duration::from_secs(3),
            ..Default::default()
        },
    );
    control_plane_cluster(&client, &ns, "q", 3).await;
    settled(&client, &ns, "q", &infra.sim, 3).await;
    let at_rest = talos_calls_at_rest(&ctx, &client, &ns, "q", &infra.sim).await;

    // Events that change nothing on the nodes wake the control plane (its annotations, the
    // kubeconfig Secret it rewrites, its own status) but ask no node: three rotations.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    for token in ["one", "two", "three"] {
        Api::<TalosControlPlane>::namespaced(client.clone(), &ns)
            .patch(
                "q",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "talos.controlplane.cluster.x-k8s.io/rotate-kubeconfig": token
                }}})),
            )
            .await
            .unwrap();
        eventually(&client, &ns, "q", "the kubeconfig rotated", async || {
            let s = secrets.get("q-kubeconfig").await.ok()?;
            (s.annotations()
                .get("talos.controlplane.cluster.x-k8s.io/kubeconfig-rotated-for")
                .map(String::as_str)
                == Some(token))
            .then_some(())
        })
        .await;
    }
    assert_eq!(
        talos_calls_at_rest(&ctx, &client, &ns, "q", &infra.sim).await,
        at_rest,
        "no Talos call for changes that concern no node"
    );

    // A change of a Machine is a reason to look.
    let machine = machines(&client, &ns).await.remove(0).name_any();
    Api::<Machine>::namespaced(client.clone(), &ns)
        .patch(
            &machine,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    eventually(
        &client,
        &ns,
        "q",
        &format!("a look at the nodes (Talos calls {at_rest} before the change)"),
        async || (infra.sim.requests() > at_rest).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn an_etcd_alarm_is_named_and_blocks_growth_until_it_clears() {
    let (client, ns, _controller) = setup_with(
        "cp-alarm",
        controller::Options {
            health_check: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "n", 3).await;
    settled(&client, &ns, "n", &infra.sim, 3).await;
    let full = machines(&client, &ns).await.remove(2).name_any();
    let address = node_of(&client, &ns, &full).await;
    // etcd's service stays healthy and the member keeps its vote: only EtcdStatus tells.
    infra
        .sim
        .set_failures(&address, |f| {
            f.etcd_errors = vec!["memberID:1 alarm:NOSPACE".into()];
        })
        .unwrap();
    let etcd = wait_condition(
        &client,
        &ns,
        "n",
        ConditionType::EtcdClusterHealthy,
        "False",
        "alarm:NOSPACE",
    )
    .await;
    assert!(etcd.message.contains(&full), "{}", etcd.message);
    scale(&client, &ns, "n", 4).await;
    wait_condition(&client, &ns, "n", ConditionType::ScalingUp, "True", &full).await;
    assert_eq!(
        machines(&client, &ns).await.len(),
        3,
        "no growth on an alarm"
    );
    // Once the alarm is disarmed, the control plane grows.
    infra
        .sim
        .set_failures(&address, |f| f.etcd_errors.clear())
        .unwrap();
    settled(&client, &ns, "n", &infra.sim, 4).await;
    assert_etcd_invariants(&client, &ns, "n", &infra.sim).await;
}

#[tokio::test]
async fn a_zone_outage_moves_the_replacement_to_a_surviving_zone() {
    let (client, ns, _controller) = setup("cp-zones").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "z", 3).await;
    settled(&client, &ns, "z", &infra.sim, 3).await;
    let in_a = machines(&client, &ns)
        .await
        .into_iter()
        .find(|m| m.spec.failure_domain.as_deref() == Some("a"))
        .unwrap()
        .name_any();
    // Zone a fails: its node goes dark and the infrastructure stops offering it.
    let address = node_of(&client, &ns, &in_a).await;
    infra.sim.set_failures(&address, |f| f.down = true).unwrap();
    dynamic(&client, &ns, "infrastructure.cluster.x-k8s.io/v1alpha1", "SimCluster")
        .patch_status("z", &PatchParams::default(), &Patch::Merge(json!({"status": {"failureDomains": [
            {"name": "a", "controlPlane": false}, {"name": "b", "controlPlane": true}, {"name": "c", "controlPlane": true}
        ]}})))
        .await
        .unwrap();
    let clusters = dynamic(&client, &ns, "cluster.x-k8s.io/v1beta2", "Cluster");
    eventually(
        &client,
        &ns,
        "z",
        "Cluster API copies the failure domains",
        async || {
            let c = clusters.get("z").await.ok()?;
            (c.data["status"]["failureDomains"][0]["controlPlane"] == json!(false)).then_some(())
        },
    )
    .await;
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete(&in_a, &Default::default())
        .await
        .unwrap();
    replaced_and_settled(&client, &ns, "z", &infra.sim, &in_a).await;
    let zones: Vec<String> = machines(&client, &ns)
        .await
        .iter()
        .filter_map(|m| m.spec.failure_domain.clone())
        .collect();
    assert!(!zones.contains(&"a".to_owned()), "{zones:?}");
    assert_etcd_invariants(&client, &ns, "z", &infra.sim).await;
}

/// What a MachineHealthCheck does to a machine it finds unhealthy: HealthCheckSucceeded False,
/// and OwnerRemediated False to ask the control plane to remediate it.
async fn mark_unhealthy(client: &kube::Client, ns: &str, machine: &str) {
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

/// The replacement of `gone` (the machine naming it in its remediation-for), once the control
/// plane is back to three healthy members.
async fn replacement_of(
    client: &kube::Client,
    ns: &str,
    cp: &str,
    sim: &Simulator,
    gone: &str,
) -> String {
    let name = eventually(
        client,
        ns,
        cp,
        &format!("machine {gone} remediated and replaced"),
        async || {
            let all = machines(client, ns).await;
            if all.iter().any(|m| m.name_any() == gone) {
                return None;
            }
            all.iter()
                .find(|m| {
                    m.annotations()
                        .get("controlplane.cluster.x-k8s.io/remediation-for")
                        .is_some_and(|v| v.contains(&format!("\"machine\":\"{gone}\"")))
                })
                .map(ResourceExt::name_any)
        },
    )
    .await;
    settled(client, ns, cp, sim, 3).await;
    name
}

#[tokio::test]
async fn mhc_remediation_replaces_one_machine_at_a_time_within_retry_limits() {
    let (client, ns, _controller, ctx) = setup_context("cp-remediate", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "m", 3).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"remediationStrategy": {
            "maxRetry": 1, "retryPeriodSeconds": 0, "minHealthyPeriodSeconds": 3600
        }}})),
    )
    .await
    .unwrap();
    settled(&client, &ns, "m", &infra.sim, 3).await;
    let last = async || {
        api.get("m")
            .await
            .unwrap()
            .status
            .and_then(|s| s.last_remediation)
            .unwrap()
    };

    let first = machines(&client, &ns).await.remove(0).name_any();
    mark_unhealthy(&client, &ns, &first).await;
    let second = replacement_of(&client, &ns, "m", &infra.sim, &first).await;
    assert_eq!(
        (last().await.machine, last().await.retry_count),
        (first.clone(), 0)
    );

    // The replacement fails too, soon after: a retry.
    mark_unhealthy(&client, &ns, &second).await;
    let third = replacement_of(&client, &ns, "m", &infra.sim, &second).await;
    assert_eq!(
        (last().await.machine, last().await.retry_count),
        (second.clone(), 1)
    );

    // And again: maxRetry 1 is spent; the machine stays and the condition says why.
    mark_unhealthy(&client, &ns, &third).await;
    wait_condition(
        &client,
        &ns,
        "m",
        ConditionType::Remediating,
        "True",
        "maxRetry is 1",
    )
    .await;
    reconciled_since(&ctx, &client, &ns, "m").await;
    assert!(
        machines(&client, &ns)
            .await
            .iter()
            .any(|m| m.name_any() == third)
    );
    assert_etcd_invariants(&client, &ns, "m", &infra.sim).await;
}

/// Calls `each` with the control-plane Machines of `ns` after every change a watch delivers,
/// from the moment this returns (their first listing done) until the handle is dropped or
/// aborted: every state they go through, however soon the next follows it.
async fn on_every_change(
    client: &kube::Client,
    ns: &str,
    mut each: impl FnMut(&[Arc<Machine>]) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let api = Api::<Machine>::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels("cluster.x-k8s.io/control-plane");
    let (reader, writer) = reflector::store();
    let listed = reader.clone();
    let task = tokio::spawn(async move {
        let events = watcher(api, config).default_backoff().reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if event.is_ok() {
                each(&reader.state());
            }
        }
    });
    listed.wait_until_ready().await.unwrap();
    task
}

/// The most control-plane machines (deleting ones included) there were at once while it runs,
/// and every machine name seen, from every change of them a watch delivers.
struct Peak {
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    names: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peak {
    async fn watch(client: &kube::Client, ns: &str) -> Peak {
        let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let names = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let (seen, named) = (max.clone(), names.clone());
        let task = on_every_change(client, ns, move |all| {
            seen.fetch_max(all.len(), std::sync::atomic::Ordering::SeqCst);
            named
                .lock()
                .unwrap()
                .extend(all.iter().map(|m| m.name_any()));
        })
        .await;
        Peak { max, names, task }
    }

    fn get(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many distinct machines were seen.
    fn machines_seen(&self) -> usize {
        self.names.lock().unwrap().len()
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Holds the deletion of every control-plane Machine of `ns` with a pre-terminate hook of the
/// test's own, as an infrastructure provider that takes its time (or another party's hook)
/// would, and records the most machines seen deleting at once. A deleting machine is let go
/// once `together` machines are deleting, once no live machine is left off `version`, once the
/// control plane says it waits for the deletion before replacing another, or 30 s after it was
/// first seen deleting. Without the hold, Cluster API may finish one deletion before the
/// controller's next look on a loaded machine, and the next step is then a creation.
struct HoldDeletion {
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldDeletion {
    const HOOK: &str = "pre-terminate.delete.hook.machine.cluster.x-k8s.io/test-hold";

    /// Holds the machines there are before it returns.
    async fn start(
        client: &kube::Client,
        ns: &str,
        together: usize,
        version: &str,
    ) -> HoldDeletion {
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (api, cps, seen, version) = (
            Api::<Machine>::namespaced(client.clone(), ns),
            Api::<TalosControlPlane>::namespaced(client.clone(), ns),
            most.clone(),
            version.to_owned(),
        );
        let hook = |value: Option<&str>| {
            Patch::Merge(json!({"metadata": {"annotations": {HoldDeletion::HOOK: value}}}))
        };
        let held = |m: &Machine| m.annotations().contains_key(HoldDeletion::HOOK);
        for m in machines(client, ns).await {
            api.patch(&m.name_any(), &PatchParams::default(), &hook(Some("")))
                .await
                .unwrap();
        }
        let task = tokio::spawn(async move {
            let mut since = std::collections::HashMap::new();
            loop {
                let all = api
                    .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let (deleting, live): (Vec<&Machine>, Vec<&Machine>) = all
                    .iter()
                    .partition(|m| m.metadata.deletion_timestamp.is_some());
                seen.fetch_max(deleting.len(), std::sync::atomic::Ordering::SeqCst);
                for m in live.iter().filter(|m| !held(m)) {
                    let _ = api
                        .patch(&m.name_any(), &PatchParams::default(), &hook(Some("")))
                        .await;
                }
                let replaced = live
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some(version.as_str()));
                let waits = cps.list(&ListParams::default()).await.is_ok_and(|l| {
                    l.items.iter().any(|cp| {
                        condition(cp, ConditionType::RollingOut)
                            .is_some_and(|c| c.message.contains("to finish deleting"))
                    })
                });
                for m in deleting.iter().filter(|m| held(m)) {
                    let first = *since
                        .entry(m.name_any())
                        .or_insert_with(tokio::time::Instant::now);
                    if deleting.len() >= together
                        || replaced
                        || waits
                        || first.elapsed() > Duration::from_secs(30)
                    {
                        let _ = api
                            .patch(&m.name_any(), &PatchParams::default(), &hook(None))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        HoldDeletion { most, task }
    }

    /// The most machines seen being deleted at once.
    fn most_deleting(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldDeletion {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fewest voting members etcd had after each change from `from` on, replayed from the
/// simulator's own history (members join as learners and count once promoted).
fn fewest_voters(history: &[talos_sim::etcd::Change], from: usize) -> usize {
    let mut voters = std::collections::BTreeSet::new();
    let mut fewest = usize::MAX;
    for (i, change) in history.iter().enumerate() {
        match change.op {
            Op::Bootstrap | Op::Promote => {
                voters.insert(change.id);
            }
            Op::Join => {}
            Op::Remove => {
                voters.remove(&change.id);
            }
        }
        if i >= from {
            fewest = fewest.min(voters.len());
        }
    }
    fewest
}

/// Patch the control plane's spec.
async fn patch_spec(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// Wait until every one of `n` machines runs `version` with the current spec (status
/// upToDateReplicas, RollingOut False) and etcd has `n` healthy voters.
async fn rolled_out(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    n: usize,
    version: &str,
) {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{n} machines rolled out to {version}"),
        async || {
            let tcp = api.get(name).await.ok()?;
            let status = tcp.status.as_ref()?;
            let all = machines(client, ns).await;
            (status.up_to_date_replicas == Some(n as i32)
                && condition(&tcp, ConditionType::RollingOut)?.status == "False"
                && all.len() == n
                && all
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some(version)))
            .then_some(())
        },
    )
    .await;
    settled(client, ns, name, sim, n).await;
}

/// The names of the control-plane machines.
async fn machine_names(client: &kube::Client, ns: &str) -> Vec<String> {
    machines(client, ns)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

#[tokio::test]
async fn kubernetes_upgrade_with_max_surge_1_never_exceeds_four_machines_or_drops_a_member() {
    let (client, ns, _controller) = setup("cp-roll-surge").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "u", 3).await;
    settled(&client, &ns, "u", &infra.sim, 3).await;
    let before = machine_names(&client, &ns).await;
    let id = sim_infra::cluster_id(&client, &ns, "u").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();

    // Skipping a minor version is refused at admission, and says what to do.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    let refused = api
        .patch(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "v1.37.0"}})),
        )
        .await
        .expect_err("v1.35 → v1.37 skips a minor version");
    assert!(
        refused.to_string().contains("may not skip a minor version"),
        "{refused}"
    );

    let peak = Peak::watch(&client, &ns).await;
    patch_spec(&client, &ns, "u", json!({"version": "v1.36.0"})).await;
    rolled_out(&client, &ns, "u", &infra.sim, 3, "v1.36.0").await;
    let after = machine_names(&client, &ns).await;
    assert!(
        after.iter().all(|m| !before.contains(m)),
        "every machine replaced: {before:?} → {after:?}"
    );
    assert!(
        peak.get() <= 4,
        "{} machines at once with maxSurge 1",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 3,
        "a member left before its replacement joined: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "u", &infra.sim).await;
}

#[tokio::test]
async fn max_surge_0_replaces_in_place_of_each_machine_and_replans_on_a_spec_change() {
    let (client, ns, _controller) = setup("cp-roll-unavail").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "v", 3).await;
    settled(&client, &ns, "v", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "v").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();

    let peak = Peak::watch(&client, &ns).await;
    patch_spec(
        &client,
        &ns,
        "v",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}),
    )
    .await;
    // Mid-rollout (one machine replaced), the Talos configuration changes in a way Talos
    // applies only with a reboot: the plan starts over for every machine, the new one
    // included.
    let first = eventually(&client, &ns, "v", "one machine replaced", async || {
        machines(&client, &ns)
            .await
            .into_iter()
            .find(|m| m.spec.version.as_deref() == Some("v1.36.0"))
            .map(|m| m.name_any())
    })
    .await;
    patch_spec(
        &client,
        &ns,
        "v",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": ["machine:\n  install:\n    disk: /dev/sda\n", PROXY_PATCH]
        }}}),
    )
    .await;
    rolled_out(&client, &ns, "v", &infra.sim, 3, "v1.36.0").await;
    let after = machine_names(&client, &ns).await;
    assert!(
        !after.contains(&first),
        "{first} was made from the old config: {after:?}"
    );
    assert!(
        peak.get() <= 3,
        "{} machines at once with maxSurge 0",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 2,
        "more than one member down at once: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "v", &infra.sim).await;
}

/// A machine.env change: Talos applies it only with a reboot.
const PROXY_PATCH: &str = "machine:\n  env:\n    https_proxy: http://proxy.example:3128\n";

/// How often each machine's node has booted, by machine name.
/// Wait until the node at each of `nodes` runs a configuration document for which `runs`
/// holds (`what` names it), and control plane `name` says its 3 machines are up to date with no
/// configuration change under way.
async fn changed_in_place(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    nodes: &[String],
    what: &str,
    runs: impl Fn(&serde_json::Value) -> bool,
) {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("every node runs {what}, and the control plane says it is up to date"),
        async || {
            for address in nodes {
                let (_, docs) = sim.running(address)?;
                if !docs.iter().any(&runs) {
                    return None;
                }
            }
            let tcp = api.get(name).await.ok()?;
            let markers = machines(client, ns).await.iter().any(|m| {
                m.annotations()
                    .contains_key("controlplane.cluster.x-k8s.io/talos-config-apply")
            });
            (tcp.status.as_ref()?.up_to_date_replicas == Some(3)
                && condition(&tcp, ConditionType::MachinesUpToDate)?.status == "True"
                && !markers)
                .then_some(())
        },
    )
    .await;
}

/// The node address of each machine of `names`, in that order.
async fn node_addresses(client: &kube::Client, ns: &str, names: &[String]) -> Vec<String> {
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(node_of(client, ns, n).await);
    }
    nodes
}

/// How many Events of `ns` have `reason`.
async fn events_with_reason(client: &kube::Client, ns: &str, reason: &str) -> usize {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .count()
}

async fn boots(client: &kube::Client, ns: &str, sim: &Simulator) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for m in machine_names(client, ns).await {
        let address = node_of(client, ns, &m).await;
        out.push((m, sim.running(&address).map_or(0, |(boots, _)| boots)));
    }
    out
}

#[tokio::test]
async fn a_config_change_talos_applies_live_is_made_in_place_and_one_needing_a_reboot_replaces() {
    let (client, ns, _controller) = setup("cp-reconfigure").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "r", 3).await;
    settled(&client, &ns, "r", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "r").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();
    let before = boots(&client, &ns, &infra.sim).await;

    // A node label: Talos applies it live. Every node runs it, tried then confirmed one by
    // one, with the same machines, no reboot and no etcd membership change.
    let install = "machine:\n  install:\n    disk: /dev/sda\n";
    let label = "machine:\n  nodeLabels:\n    example.com/tier: gold\n";
    patch_spec(
        &client,
        &ns,
        "r",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": [install, label]
        }}}),
    )
    .await;
    let mut nodes = Vec::new();
    for m in machine_names(&client, &ns).await {
        nodes.push(node_of(&client, &ns, &m).await);
    }
    changed_in_place(&client, &ns, "r", &infra.sim, &nodes, "the label", |d| {
        d["machine"]["nodeLabels"]["example.com/tier"] == json!("gold")
    })
    .await;
    assert_eq!(
        boots(&client, &ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        infra.sim.etcd_history(&id).len(),
        history,
        "no etcd membership change"
    );
    assert_eq!(
        events_with_reason(&client, &ns, "TalosConfigApplied").await,
        3,
        "one TalosConfigApplied event per machine"
    );

    // An environment variable: Talos refuses it live (its words are kept), so the machines
    // are replaced, one at a time within quorum.
    patch_spec(
        &client,
        &ns,
        "r",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": [install, label, PROXY_PATCH]
        }}}),
    )
    .await;
    let old: Vec<String> = before.into_iter().map(|(m, _)| m).collect();
    eventually(&client, &ns, "r", "every machine replaced", async || {
        let now = machine_names(&client, &ns).await;
        (now.len() == 3 && now.iter().all(|m| !old.contains(m))).then_some(())
    })
    .await;
    settled(&client, &ns, "r", &infra.sim, 3).await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let needs_reboot = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("TalosConfigNeedsReboot"))
        .and_then(|e| e.message.clone())
        .expect("a TalosConfigNeedsReboot event");
    assert!(
        needs_reboot.contains("can't be applied in immediate mode")
            && needs_reboot.contains("machine.env.https_proxy"),
        "{needs_reboot}"
    );
    assert_etcd_invariants(&client, &ns, "r", &infra.sim).await;
}

#[tokio::test]
async fn with_config_reboot_in_place_a_change_needing_a_reboot_reboots_each_node_once_and_keeps_the_machines()
 {
    let (client, ns, _controller) = setup("cp-reboot").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "b", 3).await;
    settled(&client, &ns, "b", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "b").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();
    let before = boots(&client, &ns, &infra.sim).await;
    let nodes: Vec<String> = {
        let mut out = Vec::new();
        for (m, _) in &before {
            out.push(node_of(&client, &ns, m).await);
        }
        out
    };
    // A rebooting node stays down until the controller has seen it down (its marker says so):
    // the simulator's reboot takes 300 ms, which a loaded machine's controller can miss.
    for node in &nodes {
        infra
            .sim
            .set_failures(node, |f| f.hold_restarts = true)
            .unwrap();
    }
    // The simulator's own record of nodes going down and up: never two of ours at once.
    let mut sim_events = infra.sim.events();
    let watched = nodes.clone();
    let machine_of: std::collections::BTreeMap<String, String> = nodes
        .iter()
        .cloned()
        .zip(before.iter().map(|(m, _)| m.clone()))
        .collect();
    let most_down = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = most_down.clone();
    let watcher = tokio::spawn(async move {
        let mut down = std::collections::BTreeSet::new();
        loop {
            let e = match sim_events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            match e {
                talos_sim::SimEvent::NodeDown { address } if watched.contains(&address) => {
                    down.insert(address);
                }
                talos_sim::SimEvent::NodeUp { address, .. } => {
                    down.remove(&address);
                }
                _ => {}
            }
            most.fetch_max(down.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });

    // An environment variable: Talos applies it only with a reboot. With configReboot InPlace
    // each node reboots into it in turn; no machine is replaced.
    let install = "machine:\n  install:\n    disk: /dev/sda\n";
    patch_spec(
        &client,
        &ns,
        "b",
        json!({
            "rolloutStrategy": {"type": "RollingUpdate", "configReboot": "InPlace"},
            "controlPlaneConfig": {"controlplane": {
                "generateType": "controlplane", "talosVersion": "v1.13",
                "strategicPatches": [install, PROXY_PATCH]
            }}
        }),
    )
    .await;
    let changed = changed_in_place(&client, &ns, "b", &infra.sim, &nodes, "the proxy", |d| {
        d["machine"]["env"]["https_proxy"] == json!("http://proxy.example:3128")
    });
    tokio::join!(
        changed,
        release_when_seen_down(&client, &ns, &infra.sim, &machine_of)
    );
    let after = boots(&client, &ns, &infra.sim).await;
    assert_eq!(
        after.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        before.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        "the same machines"
    );
    for ((m, was), (_, now)) in before.iter().zip(&after) {
        assert_eq!(*now, was + 1, "machine {m} rebooted exactly once");
    }
    assert_eq!(
        infra.sim.etcd_history(&id).len(),
        history,
        "no etcd membership change"
    );
    watcher.abort();
    let most = most_down.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, 1, "one node down at a time, and a reboot seen");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let count = |reason: &str| {
        events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    };
    assert_eq!(
        count("TalosConfigRebooting"),
        3,
        "one reboot event per machine"
    );
    assert_eq!(
        count("TalosConfigApplied"),
        3,
        "one applied event per machine"
    );
    assert_eq!(count("MachineDeleted"), 0, "no machine deleted");
}

/// Release each held node (`hold_restarts`) of `machine_of` (node → machine) once the
/// controller has recorded, on its machine's configuration-change marker, that it saw the
/// rebooting node down.
async fn release_when_seen_down(
    client: &kube::Client,
    ns: &str,
    sim: &Simulator,
    machine_of: &std::collections::BTreeMap<String, String>,
) {
    let machines = Api::<Machine>::namespaced(client.clone(), ns);
    let mut held: Vec<&String> = machine_of.keys().collect();
    while !held.is_empty() {
        let node = testkit::eventually("the controller sees a held node down", WAIT, async || {
            for node in &held {
                let Ok(m) = machines.get(&machine_of[*node]).await else {
                    continue;
                };
                let marker = m
                    .annotations()
                    .get(controller::controlplane::reconfigure::MARKER);
                let marker = marker.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
                if marker.is_some_and(|m| m["down"] == json!(true)) {
                    return Some(*node);
                }
            }
            None
        })
        .await;
        sim.set_failures(node, |f| f.hold_restarts = false).unwrap();
        held.retain(|n| *n != node);
    }
}
#[tokio::test]
async fn a_node_configuration_changed_by_hand_is_reported_and_left_alone() {
    let (client, ns, _controller, ctx) = setup_context(
        "cp-drift",
        controller::Options {
            drift_check: Duration::from_secs(1),
            ..controller::Options::default()
        },
    )
    .await;
    let infra = sim_infra::start(&client, &ns, &["a"]);
    control_plane_cluster(&client, &ns, "d", 1).await;
    settled(&client, &ns, "d", &infra.sim, 1).await;
    let machine = machine_names(&client, &ns).await.remove(0);
    let address = node_of(&client, &ns, &machine).await;

    // Someone adds a node label with talosctl (apply-config --mode no-reboot).
    let (_, mut docs) = infra.sim.running(&address).unwrap();
    for doc in docs.iter_mut().filter(|d| d["version"] == "v1alpha1") {
        doc["machine"]["nodeLabels"]["by-hand"] = json!("yes");
    }
    let talosconfig = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("d-talosconfig")
        .await
        .unwrap();
    let talosconfig =
        String::from_utf8(talosconfig.data.unwrap()["talosconfig"].0.clone()).unwrap();
    use controller::nodes::{Grpc, TalosNodes};
    Grpc::default()
        .connect(&talosconfig, vec![address.clone()])
        .unwrap()
        .apply_configuration(
            &talos_api::Nodes::Endpoint,
            machineconfig::render::to_yaml(&docs).unwrap().into_bytes(),
            talos_api::machine::apply_configuration_request::Mode::NoReboot,
        )
        .await
        .unwrap();

    let drift = wait_condition(
        &client,
        &ns,
        "d",
        ConditionType::MachinesUpToDate,
        "False",
        "by-hand",
    )
    .await;
    assert_eq!(drift.reason, "RunningConfigDiffers");
    assert!(drift.message.contains(&machine), "{}", drift.message);
    assert!(
        !drift.message.contains("yes"),
        "values never: {}",
        drift.message
    );
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TalosConfigDrift")),
        "a TalosConfigDrift event"
    );
    // Checked again a few times since (dry-run applies), the last check's reconcile ended:
    // still reported, and the node's change is left alone.
    const APPLY: &str = "/machine.MachineService/ApplyConfiguration";
    let applies = || infra.sim.calls().get(APPLY).map_or(0, |c| c.received);
    let checked = applies();
    eventually(&client, &ns, "d", "two more drift checks", async || {
        (applies() >= checked + 2).then_some(())
    })
    .await;
    reconciled_since(&ctx, &client, &ns, "d").await;
    let (_, running) = infra.sim.running(&address).unwrap();
    assert!(
        running
            .iter()
            .any(|d| d["machine"]["nodeLabels"]["by-hand"] == json!("yes")),
        "talos-capi overwrote the node's configuration"
    );
    assert_eq!(machine_names(&client, &ns).await, vec![machine.clone()]);
    wait_condition(
        &client,
        &ns,
        "d",
        ConditionType::MachinesUpToDate,
        "False",
        "by-hand",
    )
    .await;

    // The control plane's own conditions on its machine, which Cluster API shows and counts:
    // UpToDate and EtcdMemberHealthy, as KubeadmControlPlane sets them.
    let machine_condition = async |type_: &str| {
        Api::<Machine>::namespaced(client.clone(), &ns)
            .get(&machine)
            .await
            .ok()?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
    };
    eventually(
        &client,
        &ns,
        "d",
        "the machine's own conditions",
        async || {
            let up = machine_condition("UpToDate").await?;
            let etcd = machine_condition("EtcdMemberHealthy").await?;
            (up.status == "True" && etcd.status == "True").then_some(())
        },
    )
    .await;
    patch_spec(
        &client,
        &ns,
        "d",
        json!({"version": "v1.36.0", "rolloutStrategy": {"type": "OnDelete"}}),
    )
    .await;
    let outdated = eventually(&client, &ns, "d", "the machine outdated", async || {
        let up = machine_condition("UpToDate").await?;
        (up.status == "False").then_some(up)
    })
    .await;
    assert_eq!(outdated.reason, "NotUpToDate");
    assert!(outdated.message.contains("v1.36.0"), "{}", outdated.message);
}

#[tokio::test]
async fn five_machines_with_max_unavailable_2_replace_two_at_a_time_within_quorum() {
    let (client, ns, _controller) = setup("cp-roll-wide").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "w", 5).await;
    settled(&client, &ns, "w", &infra.sim, 5).await;
    let id = sim_infra::cluster_id(&client, &ns, "w").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    let hold = HoldDeletion::start(&client, &ns, 2, "v1.36.0").await;
    patch_spec(
        &client,
        &ns,
        "w",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 2}}}),
    )
    .await;
    rolled_out(&client, &ns, "w", &infra.sim, 5, "v1.36.0").await;
    assert!(
        peak.get() <= 5,
        "{} machines at once with maxSurge 0",
        peak.get()
    );
    assert_eq!(
        hold.most_deleting(),
        2,
        "maxUnavailable 2 replaces two machines at once, never three"
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 3,
        "five members keep quorum with at most two down: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "w", &infra.sim).await;
}

#[tokio::test]
async fn one_machine_with_max_surge_0_surges_and_says_why() {
    let (client, ns, _controller) = setup("cp-roll-one").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "o", 1).await;
    settled(&client, &ns, "o", &infra.sim, 1).await;
    let id = sim_infra::cluster_id(&client, &ns, "o").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    patch_spec(
        &client,
        &ns,
        "o",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0}}}),
    )
    .await;
    // One replica cannot lose its only member: the rollout surges one machine and says why.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    eventually(
        &client,
        &ns,
        "o",
        "RollingOut explains the surge",
        async || {
            let tcp = api.get("o").await.ok()?;
            let c = condition(&tcp, ConditionType::RollingOut)?;
            c.message
                .contains("one machine is added first")
                .then_some(())
        },
    )
    .await;
    rolled_out(&client, &ns, "o", &infra.sim, 1, "v1.36.0").await;
    assert!(peak.get() <= 2, "{} machines at once", peak.get());
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 1,
        "the only member left before its replacement joined: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "o", &infra.sim).await;
}

#[tokio::test]
async fn a_controller_killed_at_five_points_of_a_rollout_still_converges_without_extra_steps() {
    let (client, ns, controller) = setup("cp-roll-restart").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "k", 3).await;
    settled(&client, &ns, "k", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "k").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    patch_spec(&client, &ns, "k", json!({"version": "v1.36.0"})).await;

    // Each point is a state of the rollout; when it is seen, the controller is killed (its
    // task aborted wherever it is) and a fresh one, with no memory, starts a second later.
    type Point = fn(&[Machine]) -> bool;
    let points: [(&str, Point); 5] = [
        ("the spec changed", |_| true),
        ("a surge machine exists", |all| all.len() == 4),
        ("an outdated machine is being deleted", |all| {
            all.iter().any(|m| m.metadata.deletion_timestamp.is_some())
        }),
        ("two machines are up to date", |all| {
            all.iter()
                .filter(|m| m.spec.version.as_deref() == Some("v1.36.0"))
                .count()
                >= 2
        }),
        ("the last outdated machine is going", |all| {
            all.iter()
                .filter(|m| m.spec.version.as_deref() == Some("v1.36.0"))
                .count()
                == 3
                && all.len() > 3
        }),
    ];
    let mut controller = Some(controller);
    for (what, reached) in points {
        let seen = eventually(&client, &ns, "k", what, async || {
            let all = machines(&client, &ns).await;
            let done = all.len() == 3
                && all
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some("v1.36.0"));
            (reached(&all) || done).then_some(!done)
        })
        .await;
        // Gone for good (its task ended) before the fresh one starts.
        if let Some(killed) = controller.take() {
            killed.stop().await;
        }
        controller = Some(start_controller(&client, &ns));
        if !seen {
            break;
        }
    }
    rolled_out(&client, &ns, "k", &infra.sim, 3, "v1.36.0").await;
    assert_eq!(
        peak.machines_seen(),
        6,
        "three machines replaced by exactly three: nothing created or deleted twice"
    );
    assert!(
        peak.get() <= 4,
        "{} machines at once with maxSurge 1",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(fewest_voters(&history, start) >= 3, "{history:?}");
    assert_eq!(
        infra.sim.etcd_members(&id).len(),
        3,
        "no orphan member is left"
    );
    assert_etcd_invariants(&client, &ns, "k", &infra.sim).await;
}

/// The Talos upgrade recorded on each control-plane machine, by machine name.
async fn upgrade_markers(client: &kube::Client, ns: &str) -> Vec<(String, Option<String>)> {
    machines(client, ns)
        .await
        .iter()
        .map(|m| {
            (
                m.name_any(),
                m.annotations()
                    .get("controlplane.cluster.x-k8s.io/talos-upgrade")
                    .cloned(),
            )
        })
        .collect()
}

/// Until every one of `nodes` runs Talos `version` and no machine of `name` is marked upgrading.
async fn all_upgraded(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    nodes: &[String],
    version: &str,
) {
    let running = |node: &str| sim.status(node).map(|(_, v)| v).unwrap_or_default();
    eventually(
        client,
        ns,
        name,
        &format!("every node on Talos {version}"),
        async || {
            let done = nodes.iter().all(|n| running(n) == version);
            let markers = upgrade_markers(client, ns).await;
            (done && markers.iter().all(|(_, m)| m.is_none())).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn five_nodes_upgrade_two_at_a_time_and_a_talos_without_lifecycle_service_takes_the_legacy_call()
 {
    let (client, ns, _controller) = setup("cp-talos-wide").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "u", 5).await;
    settled(&client, &ns, "u", &infra.sim, 5).await;
    let names = machine_names(&client, &ns).await;
    let nodes = node_addresses(&client, &ns, &names).await;
    // Talos before 1.13 has no LifecycleService; each boot takes a while (3 s, so the two
    // upgrades overlap even when a loaded machine slows the controller's next look).
    for node in &nodes {
        infra
            .sim
            .set_failures(node, |f| {
                f.api_errors.insert(
                    "LifecycleService.Upgrade".into(),
                    tonic::Code::Unimplemented,
                );
                f.slow_boot = Duration::from_secs(3);
            })
            .unwrap();
    }
    // Watched while it runs: never more than two machines upgrading at once (five members
    // keep quorum with two down).
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watching = {
        let peak = peak.clone();
        on_every_change(&client, &ns, move |all| {
            let upgrading = all
                .iter()
                .filter(|m| {
                    m.annotations()
                        .contains_key("controlplane.cluster.x-k8s.io/talos-upgrade")
                })
                .count();
            peak.fetch_max(upgrading, std::sync::atomic::Ordering::Relaxed);
        })
        .await
    };
    patch_spec(
        &client,
        &ns,
        "u",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "maxParallel": 2}}),
    )
    .await;
    all_upgraded(&client, &ns, "u", &infra.sim, &nodes, "v1.13.1").await;
    watching.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 2, "{peak} machines upgrading at once");
    assert_eq!(peak, 2, "maxParallel 2 upgrades two at once");
    assert_eq!(
        machine_names(&client, &ns).await,
        names,
        "the same machines"
    );
    settled(&client, &ns, "u", &infra.sim, 5).await;
    assert_etcd_invariants(&client, &ns, "u", &infra.sim).await;
}

#[tokio::test]
async fn talos_upgrades_in_place_node_by_node_and_halts_on_a_rollback_until_retried() {
    let (client, ns, _controller, ctx) =
        setup_context("cp-talos-upgrade", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "t", 3).await;
    settled(&client, &ns, "t", &infra.sim, 3).await;
    let mut all = machines(&client, &ns).await;
    all.sort_by_key(|m| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    });
    let names: Vec<String> = all.iter().map(ResourceExt::name_any).collect();
    let mut nodes = Vec::new();
    for n in &names {
        nodes.push(node_of(&client, &ns, n).await);
    }
    let id = sim_infra::cluster_id(&client, &ns, "t").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    // The second node to upgrade fails to boot the new version and rolls back, slowly.
    infra
        .sim
        .set_failures(&nodes[1], |f| {
            f.upgrade_fails = true;
            f.slow_boot = Duration::from_secs(2);
        })
        .unwrap();
    patch_spec(
        &client,
        &ns,
        "t",
        json!({"talosUpgrade": {"image": "ghcr.io/siderolabs/installer:v1.13.1", "timeoutSeconds": 60}}),
    )
    .await;
    let version = |node: &str| infra.sim.status(node).map(|(_, v)| v).unwrap_or_default();

    // The first node upgrades; the second rolls back: the rollout halts, says which machine and
    // why, and leaves the third alone.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    let halted = eventually(&client, &ns, "t", "the upgrade halted", async || {
        let tcp = api.get("t").await.ok()?;
        let c = condition(&tcp, ConditionType::RollingOut)?;
        (c.status == "True" && c.message.contains("failed")).then_some(c.message)
    })
    .await;
    assert!(
        halted.contains(&names[1]) && halted.contains("rolled back"),
        "{halted}"
    );
    assert!(halted.contains("1 of 3 nodes on Talos v1.13.1"), "{halted}");
    assert_eq!(version(&nodes[0]), "v1.13.1");
    assert_eq!(version(&nodes[1]), "v1.13.0");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TalosUpgradeFailed")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains(&names[1]))),
        "a Warning event names the machine"
    );
    reconciled_since(&ctx, &client, &ns, "t").await;
    assert_eq!(
        version(&nodes[2]),
        "v1.13.0",
        "nothing else is touched while halted"
    );

    // Someone fixes the node and asks for another attempt by removing the marker.
    Api::<Machine>::namespaced(client.clone(), &ns)
        .patch(
            &names[1],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"controlplane.cluster.x-k8s.io/talos-upgrade": null}}})),
        )
        .await
        .unwrap();
    eventually(&client, &ns, "t", "every node on v1.13.1", async || {
        let tcp = api.get("t").await.ok()?;
        let done = nodes.iter().all(|n| version(n) == "v1.13.1")
            && condition(&tcp, ConditionType::RollingOut)?.status == "False"
            && upgrade_markers(&client, &ns)
                .await
                .iter()
                .all(|(_, m)| m.is_none());
        done.then_some(())
    })
    .await;
    // In place: the same machines, the same members, none removed.
    let mut after = machine_names(&client, &ns).await;
    after.sort();
    let mut before = names.clone();
    before.sort();
    assert_eq!(after, before, "no machine replaced");
    let history = infra.sim.etcd_history(&id);
    assert!(
        history[start..].iter().all(|c| c.op != Op::Remove),
        "no member left etcd: {history:?}"
    );
    settled(&client, &ns, "t", &infra.sim, 3).await;
}

/// clusterctl's inventory in a management cluster: its Provider CRD and one Provider per
/// provider installed (Cluster API core, ours, the test infrastructure), and every CRD labelled
/// for clusterctl's move discovery, as `clusterctl init` leaves them.
async fn clusterctl_inventory(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let config = testkit::tools::locate(testkit::tools::Tool::ClusterApiConfig).unwrap();
    let inventory = testkit::crds_from_dir(&config.join("clusterctl-crd")).unwrap();
    testkit::install_crds(client, &inventory).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&ListParams::default()).await.unwrap() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"clusterctl.cluster.x-k8s.io": ""}}})),
        )
        .await
        .unwrap();
    }
    for (name, provider, kind, ns, version) in [
        (
            "cluster-api",
            "cluster-api",
            "CoreProvider",
            "capi-system",
            "v1.14.2",
        ),
        (
            "bootstrap-talos",
            "talos",
            "BootstrapProvider",
            "talos-capi-bootstrap-system",
            "v0.1.0",
        ),
        (
            "control-plane-talos",
            "talos",
            "ControlPlaneProvider",
            "talos-capi-control-plane-system",
            "v0.1.0",
        ),
        (
            "infrastructure-sim",
            "sim",
            "InfrastructureProvider",
            "sim-system",
            "v0.1.0",
        ),
    ] {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                ns,
                &PatchParams::apply("move-test"),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                ),
            )
            .await
            .unwrap();
        apply(
            client,
            ns,
            json!({
                "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
                "metadata": {"name": name, "labels": {
                    "cluster.x-k8s.io/provider": name, "clusterctl.cluster.x-k8s.io": ""}},
                "providerName": provider, "type": kind, "version": version
            }),
        )
        .await;
    }
}

/// The data of every Secret of the cluster, by name.
async fn cluster_secrets(client: &kube::Client, ns: &str, cluster: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/cluster-name={cluster}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.name_any(), serde_json::to_string(&s.data).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn clusterctl_move_to_another_management_cluster_keeps_secrets_machines_and_members() {
    // Source: the shared control plane; target: a second one with Cluster API core and our CRDs
    // (clusterctl move takes two management clusters).
    let (source, ns, source_controller) = setup("cp-move").await;
    let mut infra = sim_infra::start_with(&source, &ns, &["a", "b", "c"], true);
    let port = testkit::process::free_port().unwrap();
    control_plane_cluster_at(&source, &ns, "mv", 3, ("127.0.0.1", port)).await;
    settled(&source, &ns, "mv", &infra.sim, 3).await;
    // clusterctl moves only what has finished provisioning: every Machine has its Node.
    eventually(
        &source,
        &ns,
        "mv",
        "every machine linked to its Node",
        async || {
            let all = machines(&source, &ns).await;
            let linked = all.iter().filter(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.node_ref.as_ref())
                    .is_some()
            });
            (linked.count() == 3).then_some(())
        },
    )
    .await;
    let id = sim_infra::cluster_id(&source, &ns, "mv").await.unwrap();
    let history_before = infra.sim.etcd_history(&id).len();
    let mut names_before = machine_names(&source, &ns).await;
    names_before.sort();
    let secrets_before = cluster_secrets(&source, &ns, "mv").await;
    assert!(secrets_before.len() >= 4, "{secrets_before:?}");

    let target_cp = testkit::LocalControlPlane::builder()
        .name("move-target")
        .cluster_api()
        .crds(testkit::tools::repo_root().join("config/crd/bases"))
        .start()
        .await
        .unwrap();
    let target = target_cp.client().await.unwrap();
    clusterctl_inventory(&source).await;
    clusterctl_inventory(&target).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(target.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    // Our controller runs in both management clusters, as it would; the infrastructure's
    // controller pauses during the move and then serves from the target.
    let (_target_controller, target_ctx) =
        start_controller_context(&target, &ns, Default::default());
    infra.pause();
    let scratch = tempfile::tempdir().unwrap();
    let source_kubeconfig = scratch.path().join("source.kubeconfig");
    testkit::shared()
        .await
        .unwrap()
        .write_kubeconfig(&source_kubeconfig)
        .unwrap();
    let clusterctl = testkit::tools::locate(testkit::tools::Tool::Clusterctl).unwrap();
    let home = scratch.path().join("home");
    let moved = testkit::process::run(
        &clusterctl,
        &[
            "move",
            "--kubeconfig",
            source_kubeconfig.to_str().unwrap(),
            "--to-kubeconfig",
            target_cp.kubeconfig_path().to_str().unwrap(),
            "--namespace",
            &ns,
        ],
        &[
            ("HOME", home.to_str().unwrap()),
            ("CLUSTERCTL_DISABLE_VERSIONCHECK", "true"),
        ],
        "",
    )
    .unwrap();
    assert!(moved.ok, "clusterctl move: {}", moved.output);
    infra.serve_from(&target);

    // In the target: the same machines, healthy members, and not one Secret written anew.
    settled(&target, &ns, "mv", &infra.sim, 3).await;
    let mut names_after = machine_names(&target, &ns).await;
    names_after.sort();
    assert_eq!(names_after, names_before, "no machine replaced");
    assert_eq!(cluster_secrets(&target, &ns, "mv").await, secrets_before);
    // Once the target's controllers have reconciled the control plane and every TalosConfig
    // as they are now: nothing late.
    reconciled_since(&target_ctx, &target, &ns, "mv").await;
    configs_reconciled_since(&target_ctx, &target, &ns).await;
    assert_eq!(
        machine_names(&target, &ns).await.len(),
        3,
        "no machine created after the move"
    );
    let history = infra.sim.etcd_history(&id);
    assert_eq!(
        history.len(),
        history_before,
        "no etcd membership change across the move: {history:?}"
    );
    assert_eq!(cluster_secrets(&target, &ns, "mv").await, secrets_before);
    assert!(
        machines(&source, &ns).await.is_empty(),
        "the source keeps nothing"
    );
    drop(source_controller);
}

/// The installer of Talos v1.14 from the Image Factory (the empty schematic): ghcr.io's
/// installer is no longer published from v1.14.
const FACTORY_INSTALLER_V1_14_1: &str = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.14.1";

/// Talos v1.13 → v1.14 in place with the Image Factory's installer reference, then the
/// configuration contract moved to v1.14. The machines keep their v1.13 configuration through the
/// upgrade (the spec did not ask for another); the contract change is a configuration change,
/// which Talos v1.14 applies live: every node runs the v1.14 documents, with the same machines,
/// none rebooted, one TalosConfigApplied Event each. Moving the contract back to v1.13 is the same
/// kind of change, applied live the same way.
#[tokio::test]
async fn talos_1_13_to_1_14_in_place_with_a_factory_installer_then_the_v1_14_contract_applied_live_and_back()
 {
    let (client, ns, _controller) = setup("cp-talos-114").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "f", 3).await;
    settled(&client, &ns, "f", &infra.sim, 3).await;
    let names = machine_names(&client, &ns).await;
    let nodes = node_addresses(&client, &ns, &names).await;
    patch_spec(
        &client,
        &ns,
        "f",
        json!({"talosUpgrade": {"image": FACTORY_INSTALLER_V1_14_1}}),
    )
    .await;
    all_upgraded(&client, &ns, "f", &infra.sim, &nodes, "v1.14.1").await;
    let v1alpha1_kubelet = |d: &serde_json::Value| d["machine"].get("kubelet").is_some();
    for n in &nodes {
        let (_, docs) = infra.sim.running(n).unwrap();
        assert!(
            docs.iter().any(v1alpha1_kubelet),
            "{n} keeps the v1.13 contract"
        );
    }
    let before = boots(&client, &ns, &infra.sim).await;
    patch_spec(
        &client,
        &ns,
        "f",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.14"
        }}}),
    )
    .await;
    changed_in_place(
        &client,
        &ns,
        "f",
        &infra.sim,
        &nodes,
        "the v1.14 documents",
        |d| d["kind"] == "KubeletConfig",
    )
    .await;
    assert_eq!(
        boots(&client, &ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        events_with_reason(&client, &ns, "TalosConfigApplied").await,
        3,
        "one TalosConfigApplied event per machine"
    );
    // The control plane names the field its patch sets that Talos v1.14 moved, without blocking.
    let tcps = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    let fields = |tcp: &TalosControlPlane| {
        condition(tcp, ConditionType::ConfigFieldsCurrent)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (status, reason, message) = fields(&tcps.get("f").await.unwrap()).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FieldsMoved"));
    assert_eq!(
        message,
        "spec.controlPlaneConfig.controlplane.strategicPatches[0] sets .machine.install, which Talos v1.14 moved to the UnattendedInstallConfig document"
    );
    settled(&client, &ns, "f", &infra.sim, 3).await;

    // And back: the v1.13 contract on v1.14 nodes is again a configuration change, applied live.
    patch_spec(
        &client,
        &ns,
        "f",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13"
        }}}),
    )
    .await;
    changed_in_place(
        &client,
        &ns,
        "f",
        &infra.sim,
        &nodes,
        "the v1.13 document",
        v1alpha1_kubelet,
    )
    .await;
    for n in &nodes {
        let (_, docs) = infra.sim.running(n).unwrap();
        assert!(
            !docs.iter().any(|d| d["kind"] == "KubeletConfig"),
            "{n} runs no v1.14 document"
        );
    }
    assert_eq!(
        boots(&client, &ns, &infra.sim).await,
        before,
        "the same machines, none rebooted"
    );
    assert_eq!(
        events_with_reason(&client, &ns, "TalosConfigApplied").await,
        6,
        "one more TalosConfigApplied event per machine"
    );
    assert_eq!(
        fields(&tcps.get("f").await.unwrap()),
        None,
        "nothing to say of the fields before v1.14"
    );
    settled(&client, &ns, "f", &infra.sim, 3).await;
    assert_etcd_invariants(&client, &ns, "f", &infra.sim).await;
}
