//! A TalosControlPlane and a MachineDeployment whose machines take their addresses from a pool,
//! through scaling, rolling updates and the cluster's deletion, on simulated Talos nodes that
//! serve at the address their configuration names.

use std::sync::{Arc, Mutex};

use api::capi::Machine;
use api::controlplane::v1alpha3::TalosControlPlane;
use kube::api::{DeleteParams, Patch, PatchParams};

use super::*;

/// Three control planes and three workers from one pool of ten addresses: every machine's node
/// serves at the address its claim is bound to, and the talosconfig's endpoints are the control
/// planes' addresses. Scale 3 → 5 → 3; a rolling update with maxSurge 1, then one with
/// maxSurge 0, then a remediation, then naming a second pool, never hands a machine's address
/// to another while it exists; deleting the cluster releases every claim.
#[tokio::test]
async fn machines_take_pool_addresses_through_scaling_rollouts_and_deletion() {
    let (client, ns, _controller) = setup("ipam-cp").await;
    let _infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    pool(&client, &ns, "nodes", 10, 19).await;
    cluster_from_pool(&client, &ns, "ip", ("192.168.1.100", 6443)).await;
    workers_from_pool(&client, &ns, "ip").await;
    addressed(&client, &ns, 3, 3).await;
    talosconfig_follows_the_control_planes(&client, &ns).await;

    let violations = no_address_handed_on(&client, &ns).await;
    scale(&client, &ns, 5).await;
    addressed(&client, &ns, 5, 3).await;
    scale(&client, &ns, 3).await;
    addressed(&client, &ns, 3, 3).await;
    released_down_to(&client, &ns, 6, 4).await;

    for max_surge in [1, 0] {
        roll(&client, &ns, max_surge).await;
        released_down_to(&client, &ns, 6, 4).await;
    }
    remediated(&client, &ns).await;
    released_down_to(&client, &ns, 6, 4).await;
    another_pool_rolls_the_control_plane(&client, &ns).await;
    released_down_to(&client, &ns, 9, 4).await;
    assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());

    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &controller::cache::capi_resource("Cluster"),
    )
    .delete("ip", &DeleteParams::default())
    .await
    .unwrap();
    released_down_to(&client, &ns, 0, 10).await;
}

/// The patches of every machine: its install disk, and its address from pool `nodes`.
fn patches() -> Value {
    json!([
        "machine:\n  install:\n    disk: /dev/sda\n",
        address_patch("nodes")
    ])
}

/// Cluster `name` with its control-plane endpoint at `endpoint` (host, port): its control plane
/// of 3, naming pool `nodes` and setting their address from it.
pub(super) async fn cluster_from_pool(
    client: &kube::Client,
    ns: &str,
    name: &str,
    endpoint: (&str, u16),
) {
    let config = json!({
        "generateType": "controlplane", "talosVersion": "v1.13",
        "addressesFromPools": [pool_ref("nodes")],
        "strategicPatches": patches(),
    });
    sim_infra::control_plane_cluster_with(client, ns, name, (3, endpoint), config)
        .await
        .unwrap();
}

/// A MachineDeployment of 3 workers of cluster `name`, naming pool `nodes` and setting their
/// address from it.
async fn workers_from_pool(client: &kube::Client, ns: &str, name: &str) {
    let patches = patches();
    let workers = format!("{name}-workers");
    apply(
        client,
        ns,
        json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfigTemplate",
            "metadata": {"name": workers},
            "spec": {"template": {"spec": {
                "generateType": "worker", "talosVersion": "v1.13",
                "addressesFromPools": [pool_ref("nodes")],
                "strategicPatches": patches,
            }}}
        }),
    )
    .await;
    apply(
        client,
        ns,
        json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachineTemplate",
            "metadata": {"name": workers}, "spec": {"template": {"spec": {}}}
        }),
    )
    .await;
    apply(client, ns, json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": workers},
        "spec": {
            "clusterName": name, "replicas": 3,
            "selector": {"matchLabels": {"pool": workers}},
            "template": {
                "metadata": {"labels": {"pool": workers}},
                "spec": {
                    "clusterName": name, "version": "v1.35.0",
                    "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfigTemplate", "name": workers}},
                    "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": workers}
                }
            }
        }
    }))
    .await;
}

fn is_control_plane(m: &Machine) -> bool {
    m.labels().contains_key("cluster.x-k8s.io/control-plane")
}

/// Until `control_planes` and `workers` machines run, each at the address its claim is bound to
/// (its Machine's, reported by its node's infrastructure), all different, and the control plane
/// reports them ready. Returns machine → address.
pub(super) async fn addressed(
    client: &kube::Client,
    ns: &str,
    control_planes: usize,
    workers: usize,
) -> BTreeMap<String, String> {
    let tcps = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    let what =
        format!("{control_planes} control planes and {workers} workers at their pool addresses");
    eventually(client, ns, "ip", &what, async || {
        let claims = bound_claims(client, ns).await;
        let machines = Api::<Machine>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        let live: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .collect();
        let cps = live.iter().filter(|m| is_control_plane(m)).count();
        if (cps, live.len() - cps) != (control_planes, workers) {
            return None;
        }
        let mut out = BTreeMap::new();
        for m in live {
            let config = &m.spec.bootstrap.config_ref.as_ref()?.name;
            let claimed = claims.get(&format!("{config}-nodes"))?;
            let at = m.addresses().first()?.address.clone();
            (at == *claimed).then_some(())?;
            out.insert(m.name_any(), at);
        }
        let distinct: std::collections::BTreeSet<&String> = out.values().collect();
        assert_eq!(
            distinct.len(),
            out.len(),
            "two machines at one address: {out:?}"
        );
        let tcp = tcps.get("ip").await.ok()?;
        let conditions = tcp.status.as_ref()?.conditions.as_deref()?;
        let healthy = api::conditions::get(
            conditions,
            api::conditions::ConditionType::EtcdClusterHealthy,
        )?;
        let replicas = tcp.status.as_ref()?.replicas == Some(control_planes as i32);
        (healthy.status == "True" && replicas).then_some(out)
    })
    .await
}

/// The talosconfig Secret's endpoints are the control planes' pool addresses.
async fn talosconfig_follows_the_control_planes(client: &kube::Client, ns: &str) {
    let machines = Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut want: Vec<String> = machines
        .iter()
        .filter(|m| is_control_plane(m))
        .filter_map(|m| m.addresses().first().map(|a| a.address.clone()))
        .collect();
    want.sort();
    assert!(want.iter().all(|a| a.starts_with(&network())), "{want:?}");
    eventually(
        client,
        ns,
        "ip",
        "talosconfig endpoints at the pool addresses",
        async || {
            let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
                .get("ip-talosconfig")
                .await
                .ok()?;
            let text = String::from_utf8(secret.data?.get("talosconfig")?.0.clone()).ok()?;
            let config = machineconfig::talosconfig::TalosConfig::from_yaml(&text).ok()?;
            let mut endpoints = config.contexts.get("ip")?.endpoints.clone();
            endpoints.sort();
            (endpoints == want).then_some(())
        },
    )
    .await;
}

async fn scale(client: &kube::Client, ns: &str, replicas: i32) {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "ip",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// Until `ns` holds `claims` claims (and as many addresses) and pool `nodes` has `free`.
async fn released_down_to(client: &kube::Client, ns: &str, claims: usize, free_left: i64) {
    let what = format!("{claims} claims and addresses left, {free_left} free in the pool");
    eventually(client, ns, "ip", &what, async || {
        let counted = claims_and_addresses(client, ns).await;
        (counted == (claims, claims) && free(client, ns, "nodes").await == Some(free_left))
            .then_some(())
    })
    .await;
}

/// Replace every control-plane machine (rolloutAfter now) with `max_surge`, until the three
/// new ones run at their addresses.
async fn roll(client: &kube::Client, ns: &str, max_surge: i32) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let spec = json!({
        "rolloutAfter": now,
        "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": max_surge}},
    });
    let what = format!("every control plane replaced with maxSurge {max_surge}");
    replaced_after(client, ns, spec, &what, |_, _| true).await;
}

/// Naming a second pool replaces every control-plane machine (a machine claims its addresses
/// when it is made; none is changed in place without its claim), and each new one claims from
/// both pools.
async fn another_pool_rolls_the_control_plane(client: &kube::Client, ns: &str) {
    pool(client, ns, "spare", 30, 39).await;
    let spec = json!({"controlPlaneConfig": {"controlplane": {
        "addressesFromPools": [pool_ref("nodes"), pool_ref("spare")],
    }}});
    let what = "every control plane replaced, claiming from both pools";
    replaced_after(client, ns, spec, what, |m, claims| {
        let config = m.spec.bootstrap.config_ref.as_ref();
        config.is_some_and(|c| claims.contains_key(&format!("{}-spare", c.name)))
    })
    .await;
}

/// Merge `spec` into TalosControlPlane `ip`'s spec, until all three control-plane machines are
/// new ones at their addresses, each satisfying `new` (given the bound claims).
async fn replaced_after(
    client: &kube::Client,
    ns: &str,
    spec: Value,
    what: &str,
    new: impl Fn(&Machine, &BTreeMap<String, String>) -> bool,
) {
    let before: Vec<String> = addressed(client, ns, 3, 3).await.into_keys().collect();
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "ip",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    eventually(client, ns, "ip", what, async || {
        addressed(client, ns, 3, 3).await;
        let claims = bound_claims(client, ns).await;
        let cps = Api::<Machine>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
            .await
            .ok()?;
        let replaced = cps.items.len() == 3
            && cps
                .iter()
                .all(|m| !before.contains(&m.name_any()) && new(m, &claims));
        replaced.then_some(())
    })
    .await;
}

/// A control-plane machine marked unhealthy (as a MachineHealthCheck marks it) is replaced, as in
/// a rollout: until the replacement runs at its own claimed address.
async fn remediated(client: &kube::Client, ns: &str) {
    let before = addressed(client, ns, 3, 3).await;
    let cps = Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
        .await
        .unwrap();
    let sick = cps.items[0].name_any();
    mark_unhealthy(client, ns, &sick).await;
    let what = format!("machine {sick} remediated and replaced");
    eventually(client, ns, "ip", &what, async || {
        let now = addressed(client, ns, 3, 3).await;
        (!now.contains_key(&sick) && now.len() == before.len()).then_some(())
    })
    .await;
}

/// Watches every Machine of `ns` from now on: an address seen on a machine is never seen on
/// another while the first still exists (deleting or not). Returns the violations found.
async fn no_address_handed_on(client: &kube::Client, ns: &str) -> Arc<Mutex<Vec<String>>> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let violations = Arc::new(Mutex::new(Vec::new()));
    let found = Arc::clone(&violations);
    let (reader, writer) = reflector::store::<Machine>();
    let listed = reader.clone();
    let api = Api::<Machine>::namespaced(client.clone(), ns);
    tokio::spawn(async move {
        let mut holder: BTreeMap<String, String> = BTreeMap::new();
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if event.is_err() {
                continue;
            }
            let state = reader.state();
            let exists = |name: &str| state.iter().any(|m| m.name_any() == name);
            for m in &state {
                for a in m.addresses() {
                    let name = m.name_any();
                    match holder.get(&a.address) {
                        Some(h) if *h != name && exists(h) => found.lock().unwrap().push(format!(
                            "{} went to {name} while {h} still exists",
                            a.address
                        )),
                        _ => {
                            holder.insert(a.address.clone(), name);
                        }
                    }
                }
            }
        }
    });
    listed.wait_until_ready().await.unwrap();
    violations
}
