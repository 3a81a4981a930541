//! The test infrastructure provider's node addresses: a node takes the static address its
//! machine configuration gives a link (v1alpha1 interface or multi-document LinkConfig), a node
//! whose address another node holds does not start until the address is free, and a
//! configuration without a static address gets an address of its own.
//!
//! Machines, SimMachines and bootstrap Secrets are made by hand (no bootstrap or control-plane
//! provider runs): the infrastructure only needs a SimMachine owned by a Machine whose bootstrap
//! data Secret holds a configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::net::IpAddr;
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use machineconfig::{Contract, Input, MachineType, Patch, SecretsBundle};
use serde_json::{Value, json};
use testkit::{apply_manifest, dynamic_api, eventually, sim_infra, unique_namespace};

const WAIT: Duration = Duration::from_secs(60);
/// Outside `talos_sim::loopback_address`'s 127.20–219.x.y and the demo's pool.
const STATIC: &str = "127.251.0.10";

/// A control-plane configuration the simulated nodes accept, with `patch` applied (a control
/// plane, which has the OS CA: a worker waits for one to issue its certificate).
fn config(bundle: &SecretsBundle, patch: &str) -> String {
    let contract = Contract::parse("v1.13").unwrap();
    let input = Input::for_contract("addr", "https://127.0.0.1:6443", contract);
    let install = Patch::parse("machine:\n  install:\n    disk: /dev/sda\n").unwrap();
    let mut patches = vec![install];
    if !patch.is_empty() {
        patches.push(Patch::parse(patch).unwrap());
    }
    machineconfig::generate(MachineType::Controlplane, &input, bundle, &patches).unwrap()
}

/// Machine `name` with its bootstrap data Secret holding `config`, and its SimMachine.
async fn machine(client: &kube::Client, ns: &str, name: &str, config: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"value": config, "format": "cloud-config"},
    });
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(secret).unwrap(),
        )
        .await
        .unwrap();
    let infra = testkit::infra::api_version();
    let m = apply_manifest(client, ns, "test", &json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name},
        "spec": {
            "clusterName": "addr",
            "bootstrap": {"dataSecretName": name},
            "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachine", "name": name},
        },
    }))
    .await
    .unwrap();
    let owner = json!([{
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "name": name, "uid": m.metadata.uid.unwrap(),
    }]);
    apply_manifest(
        client,
        ns,
        "test",
        &json!({
            "apiVersion": infra, "kind": "SimMachine",
            "metadata": {"name": name, "ownerReferences": owner},
            "spec": {},
        }),
    )
    .await
    .unwrap();
}

/// The address SimMachine `name` reports, once it does.
async fn reported(sim_machines: &Api<DynamicObject>, name: &str) -> String {
    eventually(
        &format!("SimMachine {name} reports its address"),
        WAIT,
        async || {
            let m = sim_machines.get(name).await.ok()?;
            m.data["spec"]["providerID"].as_str()?;
            address_of(&m.data).map(str::to_owned)
        },
    )
    .await
}

fn address_of(m: &Value) -> Option<&str> {
    m["status"]["addresses"][0]["address"].as_str()
}

#[tokio::test]
async fn nodes_take_their_static_address_and_wait_out_a_conflict() {
    let cp = testkit::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "sim-addr").await.unwrap();
    let infra = sim_infra::start(&client, &ns, &["a"]);
    let sim_machines = dynamic_api(&client, &ns, &testkit::infra::api_version(), "SimMachine");
    let bundle = SecretsBundle::generate(Contract::parse("v1.13").unwrap()).unwrap();

    // The v1alpha1 model: the node serves the Talos API at the interface's address.
    let v1alpha1 = format!(
        "machine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.5.0.3/24, {STATIC}/24]\n"
    );
    machine(&client, &ns, "first", &config(&bundle, &v1alpha1)).await;
    assert_eq!(reported(&sim_machines, "first").await, STATIC);
    let ip: IpAddr = STATIC.parse().unwrap();
    eventually(
        "the Talos API answers at the static address",
        WAIT,
        async || tokio::net::TcpStream::connect((ip, 50000)).await.ok(),
    )
    .await;

    // The multi-document model, the same address: a conflict, and the second node waits.
    let link = format!(
        "apiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses:\n  - address: {STATIC}/24\n"
    );
    machine(&client, &ns, "second", &config(&bundle, &link)).await;
    eventually("the second node's conflict", WAIT, async || {
        (infra.address_conflicts().await.get("second") == Some(&ip)).then_some(())
    })
    .await;
    let second = sim_machines.get("second").await.unwrap();
    assert_eq!(
        address_of(&second.data),
        None,
        "not reported: {:?}",
        second.data
    );
    assert_eq!(
        infra.sim.nodes(),
        vec![STATIC.to_owned()],
        "only the first node runs"
    );

    // Without a static address: an address of its own.
    machine(&client, &ns, "third", &config(&bundle, "")).await;
    let own = reported(&sim_machines, "third").await;
    assert_ne!(own, STATIC);
    assert!(own.parse::<IpAddr>().unwrap().is_loopback(), "{own}");

    // The first machine goes: its address is free, and the second node takes it.
    sim_machines
        .delete("first", &Default::default())
        .await
        .unwrap();
    assert_eq!(reported(&sim_machines, "second").await, STATIC);
    assert!(infra.address_conflicts().await.is_empty());
    let mut nodes = infra.sim.nodes();
    nodes.sort();
    let mut expected = vec![STATIC.to_owned(), own];
    expected.sort();
    assert_eq!(nodes, expected);
}
