//! The chain from a TalosConfig to a running Talos node, on the local control plane with the
//! real Cluster API core: our bootstrap data boots a simulated node (the test infrastructure
//! provider starts it as a cloud node boots from userdata), Cluster API copies its address to
//! the Machine, `<cluster>-talosconfig` follows that address, and the talosconfig's client
//! certificate reaches the node over mTLS through `controller::nodes`, the seam the
//! control-plane controller uses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use api::capi::Machine;
use common::*;
use controller::nodes::{Grpc, TalosNodes};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use talos_api::Nodes;
use testkit::sim_infra::SimInfra;

#[tokio::test]
async fn bootstrap_data_boots_a_node_the_cluster_talosconfig_reaches() {
    let (client, ns, _controller) = setup("nodes").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_machine(&client, &ns).await;
    let (address, talosconfig) =
        node_reached_with_the_cluster_talosconfig(&client, &ns, &infra).await;
    racing_bootstraps_create_etcd_once(&client, &talosconfig, &address).await;
}

/// Creates cluster `n` and a control plane machine whose data installs to /dev/sda.
async fn control_plane_machine(client: &kube::Client, ns: &str) {
    cluster(client, ns, "n", false).await;
    // The simulated node validates as bare metal (the seeds' platform): it needs an install disk.
    let spec = json!({
        "generateType": "controlplane", "talosVersion": "v1.13", "hostname": {"source": "MachineName"},
        "strategicPatches": ["machine:\n  install:\n    disk: /dev/sda\n"]
    });
    machine(client, ns, "n", "n-cp-0", spec, true).await;
}

/// Waits for the Machine's address in the talosconfig, and for the node there to answer over
/// mTLS, booted; returns the address and the talosconfig.
async fn node_reached_with_the_cluster_talosconfig(
    client: &kube::Client,
    ns: &str,
    infra: &SimInfra,
) -> (String, String) {
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    // Cluster API copies the node's address to the Machine; the talosconfig follows it.
    let (address, talosconfig) = testkit::eventually(
        "the Machine getting its node's address and the talosconfig following it",
        WAIT,
        async || {
            let address = machines
                .get("n-cp-0")
                .await
                .unwrap()
                .addresses()
                .first()
                .map(|a| a.address.clone())?;
            let talosconfig = secrets
                .get_opt("n-talosconfig")
                .await
                .unwrap()
                .and_then(|s| s.data)
                .and_then(|d| {
                    d.get("talosconfig")
                        .map(|v| String::from_utf8(v.0.clone()).unwrap())
                })?;
            talosconfig
                .contains(&address)
                .then_some((address, talosconfig))
        },
    )
    .await;
    assert!(
        infra.sim.nodes().contains(&address),
        "the node runs at the Machine's address"
    );

    let talos = Grpc::default()
        .connect(&talosconfig, vec![address.clone()])
        .unwrap();
    let versions = testkit::eventually(
        "the node answering the cluster's talosconfig over mTLS",
        WAIT,
        async || talos.version(&Nodes::Endpoint).await.ok(),
    )
    .await;
    assert_eq!(versions.len(), 1);
    let version = versions[0].result.as_ref().expect("a version");
    assert_eq!(
        version.version.as_ref().map(|v| v.tag.as_str()),
        Some("v1.13.0")
    );
    assert_eq!(
        infra.sim.status(&address).map(|(phase, _)| phase),
        Some(talos_sim::Phase::Running),
        "booted with the Machine's configuration, not into maintenance"
    );
    (address, talosconfig)
}

/// Racing bootstrap calls create etcd once; every other call learns it exists.
async fn racing_bootstraps_create_etcd_once(
    client: &kube::Client,
    talosconfig: &str,
    address: &str,
) {
    // Racing bootstrap calls (two managers during a leader hand-over, say): etcd is created
    // once, every other call learns that it exists, and none fails.
    let ctx = controller::Context::new(client.clone(), controller::Options::default());
    let calls = (0..8)
        .map(|_| controller::controlplane::talos::bootstrap(&ctx, talosconfig, "n-cp-0", address));
    let outcomes = futures::future::join_all(calls).await;
    let now = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(controller::controlplane::talos::Bootstrapped::Now)))
        .count();
    let already = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Ok(controller::controlplane::talos::Bootstrapped::Already)
            )
        })
        .count();
    assert_eq!((now, already), (1, 7), "{outcomes:?}");
}
