//! Static node addresses from Cluster API IPAM (`spec.addressesFromPools`), against the real
//! in-cluster IPAM provider beside the real Cluster API core: each machine's TalosConfig claims
//! an address per pool, renders only once every claim is bound, and releases its claims once
//! its machine's infrastructure is gone. Pools are in a loopback range of this process (as the
//! simulated nodes' own addresses are), so a simulated node serves its Talos API at the address
//! its rendered configuration names.
//!
//! One test binary with its own control plane (the shared one runs no IPAM provider).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

#[path = "../common/mod.rs"]
mod common;

mod bootstrap;
mod controlplane;
mod move_;

use std::collections::BTreeMap;

use common::*;
use controller::Options;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use testkit::LocalControlPlane;
use tokio::sync::OnceCell;

static CONTROL_PLANE: OnceCell<LocalControlPlane> = OnceCell::const_new();

const IPAM: &str = "ipam.cluster.x-k8s.io";

/// The control plane of this binary: etcd, kube-apiserver, the Cluster API core, the in-cluster
/// IPAM provider, our CRDs.
async fn control_plane() -> &'static LocalControlPlane {
    CONTROL_PLANE
        .get_or_try_init(|| async {
            LocalControlPlane::builder()
                .name("ipam")
                .cluster_api()
                .ipam_in_cluster()
                .crds(testkit::tools::repo_root().join("config/crd/bases"))
                .start()
                .await
        })
        .await
        .unwrap()
}

/// A namespace of its own, with our controllers watching it.
async fn setup(prefix: &str) -> (kube::Client, String, Running) {
    let client = control_plane().await.client().await.unwrap();
    let ns = testkit::unique_namespace(&client, prefix).await.unwrap();
    let running = start_controller_with(&client, &ns, Options::default());
    (client, ns, running)
}

/// This process's own loopback network for pools: `127.<b>.240.0/24`, where `b` is the octet
/// the simulator gives this process's nodes (which use `127.<b>.0.x`).
fn network() -> String {
    let own = talos_sim::loopback_address(0).to_string();
    let b = own.split('.').nth(1).unwrap_or("20").to_owned();
    format!("127.{b}.240")
}

/// InClusterIPPool `name` of the addresses `.first`–`.last` of [`network`], gateway `.1`.
async fn pool(client: &kube::Client, ns: &str, name: &str, first: u8, last: u8) {
    let net = network();
    apply(
        client,
        ns,
        json!({
            "apiVersion": format!("{IPAM}/v1alpha2"), "kind": "InClusterIPPool",
            "metadata": {"name": name},
            "spec": {
                "addresses": [format!("{net}.{first}-{net}.{last}")],
                "prefix": 24,
                "gateway": format!("{net}.1"),
            }
        }),
    )
    .await;
}

fn pool_ref(name: &str) -> Value {
    json!({"apiGroup": IPAM, "kind": "InClusterIPPool", "name": name})
}

/// The v1alpha1 network patch giving a node the address of pool `pool`.
fn address_patch(pool: &str) -> String {
    format!(
        "machine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [\"((ipam.{pool}.address))/((ipam.{pool}.prefix))\"]\n        routes:\n          - network: 0.0.0.0/0\n            gateway: \"((ipam.{pool}.gateway))\"\n"
    )
}

fn ipam_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    dynamic(client, ns, &format!("{IPAM}/v1beta2"), kind)
}

/// Claim name → the address bound to it, for the claims of `ns` that are bound.
async fn bound_claims(client: &kube::Client, ns: &str) -> BTreeMap<String, String> {
    let addresses = ipam_api(client, ns, "IPAddress")
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for claim in ipam_api(client, ns, "IPAddressClaim")
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let Some(name) = claim.data["status"]["addressRef"]["name"].as_str() else {
            continue;
        };
        if let Some(ip) = addresses.iter().find(|a| a.name_any() == name) {
            let address = ip.data["spec"]["address"].as_str().unwrap_or_default();
            out.insert(claim.name_any(), address.to_owned());
        }
    }
    out
}

/// How many IPAddressClaims and IPAddresses `ns` holds.
async fn claims_and_addresses(client: &kube::Client, ns: &str) -> (usize, usize) {
    let count = async |kind| {
        ipam_api(client, ns, kind)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
    };
    (count("IPAddressClaim").await, count("IPAddress").await)
}

/// The free addresses pool `name` reports.
async fn free(client: &kube::Client, ns: &str, name: &str) -> Option<i64> {
    let pool = dynamic(client, ns, &format!("{IPAM}/v1alpha2"), "InClusterIPPool")
        .get(name)
        .await
        .ok()?;
    pool.data["status"]["ipAddresses"]["free"].as_i64()
}
