//! The talos-api client's trust and failure paths against the simulator: mutual TLS refuses a
//! node or a client from another cluster's CA, a hung call ends in `Timeout`, a node that is
//! gone is `Connect`, a client recovers when its node comes back, and each role is allowed and
//! refused exactly the methods Talos's own role table allows and refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{Contract, Input, MachineType, SecretsBundle};
use serde_json::Value;
use talos_api::machine::apply_configuration_request::Mode;
use talos_api::{Client, Error, Nodes};
use talos_sim::{NodeSpec, SimEvent, Simulator, Timing, loopback_address};

static NEXT: AtomicU32 = AtomicU32::new(3000);

/// One configured control-plane node of a cluster with `bundle`.
async fn node(bundle: &SecretsBundle) -> (Simulator, String) {
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let address = loopback_address(NEXT.fetch_add(1, Ordering::SeqCst)).to_string();
    sim.start(NodeSpec {
        address: address.parse().unwrap(),
        port: 50000,
        hostname: "cp-0".into(),
        version: "v1.13.0".into(),
        config: None,
    })
    .unwrap();
    wait_up(&mut events, &address, false).await;
    let input = Input::new("c", &format!("https://{address}:6443"));
    let config = machineconfig::generate(MachineType::Controlplane, &input, bundle, &[]).unwrap();
    Client::maintenance(vec![address.clone()])
        .apply_configuration(&Nodes::Endpoint, config.into_bytes(), Mode::Auto)
        .await
        .unwrap();
    wait_up(&mut events, &address, true).await;
    (sim, address)
}

async fn wait_up(
    events: &mut tokio::sync::broadcast::Receiver<SimEvent>,
    node: &str,
    configured: bool,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(SimEvent::NodeUp {
                address,
                configured: c,
                ..
            }) = events.recv().await
                && address == node
                && c == configured
            {
                return;
            }
        }
    })
    .await
    .expect("the node comes up");
}

/// A talosconfig (YAML) for `bundle`'s cluster with `role`, talking to `endpoint`.
fn talosconfig_yaml(bundle: &SecretsBundle, role: &str, endpoint: &str) -> String {
    talosconfig::generate(
        "c",
        bundle,
        &ClientOptions {
            role: role.into(),
            endpoints: vec![endpoint.to_owned()],
            ..ClientOptions::default()
        },
    )
    .unwrap()
    .to_yaml()
    .unwrap()
}

/// `yaml` with its context's `field` (ca, crt or key) taken from `other`.
fn with_field_of(yaml: &str, other: &str, field: &str) -> String {
    let mut config: Value = serde_yaml_ng::from_str(yaml).unwrap();
    let other: Value = serde_yaml_ng::from_str(other).unwrap();
    config["contexts"]["c"][field] = other["contexts"]["c"][field].clone();
    serde_yaml_ng::to_string(&config).unwrap()
}

fn client(yaml: &str) -> Client {
    Client::from_talosconfig(yaml, None)
        .unwrap()
        .with_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_node_or_a_client_of_another_cluster() {
    let ours = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let theirs = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let (_sim, address) = node(&ours).await;
    let good = talosconfig_yaml(&ours, "os:admin", &address);
    let other = talosconfig_yaml(&theirs, "os:admin", &address);
    let tag = client(&good).version(&Nodes::Endpoint).await.unwrap()[0]
        .result
        .as_ref()
        .unwrap()
        .version
        .as_ref()
        .unwrap()
        .tag
        .clone();
    assert_eq!(tag, "v1.13.0", "the server's tag");

    // Our client trusting only the other cluster's CA: the node's certificate is refused.
    let wrong_server = client(&with_field_of(&good, &other, "ca"))
        .version(&Nodes::Endpoint)
        .await;
    assert!(
        matches!(&wrong_server, Err(Error::Connect { .. })),
        "a node with a certificate from another CA: {wrong_server:?}"
    );
    let message = wrong_server.unwrap_err().to_string();
    assert!(message.contains(&address), "{message}");
    // A client certificate from the other cluster's CA, trusting ours: the node refuses it.
    let wrong_client = client(&with_field_of(&other, &good, "ca"))
        .version(&Nodes::Endpoint)
        .await;
    assert!(
        wrong_client.is_err(),
        "a client certificate from another CA is refused: {wrong_client:?}"
    );
    assert!(
        !matches!(wrong_client, Err(Error::PermissionDenied(_))),
        "refused at the handshake, not by role: {wrong_client:?}"
    );
    // And a certificate paired with a key that is not its own cannot even be loaded.
    let mismatched = Client::from_talosconfig(&with_field_of(&good, &other, "key"), None);
    match mismatched {
        Err(e) => assert!(!e.to_string().contains("PRIVATE KEY"), "{e}"),
        Ok(c) => assert!(c.version(&Nodes::Endpoint).await.is_err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_times_out_a_gone_node_is_connect_and_the_client_recovers() {
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let (sim, address) = node(&bundle).await;
    let admin = client(&talosconfig_yaml(&bundle, "os:admin", &address))
        .with_timeout(Duration::from_millis(500));
    admin.version(&Nodes::Endpoint).await.unwrap();

    // apid stalls EtcdMemberList for longer than the client waits.
    sim.set_failures(&address, |f| {
        f.stalls
            .insert("EtcdMemberList".into(), Duration::from_secs(30));
    })
    .unwrap();
    let hung = admin.etcd_member_list(&Nodes::Endpoint).await;
    assert!(
        matches!(hung, Err(Error::Timeout(d)) if d == Duration::from_millis(500)),
        "{hung:?}"
    );
    assert!(hung.unwrap_err().is_retryable());
    // Other methods still answer.
    admin.service_list(&Nodes::Endpoint).await.unwrap();
    sim.set_failures(&address, |f| f.stalls.clear()).unwrap();

    // The only endpoint gone: the call in flight on the open connection is Unavailable, then
    // every new connection is Connect, naming the endpoint; both retryable.
    sim.set_failures(&address, |f| f.down = true).unwrap();
    let gone = testkit::eventually(
        "a new connection refused",
        Duration::from_secs(60),
        async || match admin.version(&Nodes::Endpoint).await {
            Err(e @ Error::Unavailable(_)) => {
                assert!(e.is_retryable());
                None
            }
            other => Some(other),
        },
    )
    .await;
    match &gone {
        Err(e @ Error::Connect { endpoint, .. }) => {
            assert!(endpoint.contains(&address), "{endpoint}");
            assert!(e.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    // Back: the same client reconnects.
    sim.set_failures(&address, |f| f.down = false).unwrap();
    testkit::eventually(
        "the client reconnecting when the node is back",
        Duration::from_secs(60),
        async || admin.version(&Nodes::Endpoint).await.ok(),
    )
    .await;
}

/// Talos's machined authorization rules (siderolabs/talos,
/// internal/app/machined/pkg/system/services/machined.go, `rules`), for the methods this client
/// calls: the weakest role each allows. `LifecycleService/Upgrade` is not in the table and falls
/// back to os:admin.
const TALOS_RULES: &[(&str, &str)] = &[
    ("Version", "os:reader"),
    ("ServiceList", "os:reader"),
    ("EtcdMemberList", "os:reader"),
    ("EtcdStatus", "os:reader"),
    ("Reboot", "os:operator"),
    ("Bootstrap", "os:admin"),
    ("EtcdLeaveCluster", "os:admin"),
    ("EtcdForfeitLeadership", "os:admin"),
    ("EtcdRemoveMemberByID", "os:admin"),
    ("Reset", "os:admin"),
    ("Upgrade", "os:admin"),
    ("LifecycleService/Upgrade", "os:admin"),
    ("ApplyConfiguration", "os:admin"),
];

const ROLES: &[&str] = &["os:reader", "os:operator", "os:admin"];

/// Call `method` on the node, with arguments that do nothing if they are allowed through:
/// authorization is decided before the arguments are looked at.
async fn call(c: &Client, method: &str) -> Result<(), Error> {
    let n = &Nodes::Endpoint;
    match method {
        "Version" => c.version(n).await.map(drop),
        "ServiceList" => c.service_list(n).await.map(drop),
        "EtcdMemberList" => c.etcd_member_list(n).await.map(drop),
        "EtcdStatus" => c.etcd_status(n).await.map(drop),
        "Reboot" => c.reboot(n).await.map(drop),
        "Bootstrap" => c.bootstrap(n).await.map(drop),
        "EtcdLeaveCluster" => c.etcd_leave_cluster(n).await.map(drop),
        "EtcdForfeitLeadership" => c.etcd_forfeit_leadership(n).await.map(drop),
        "EtcdRemoveMemberByID" => c.etcd_remove_member(n, 0).await.map(drop),
        "Reset" => c.reset(n, true).await.map(drop),
        "Upgrade" => c.upgrade(n, String::new()).await.map(drop),
        "LifecycleService/Upgrade" => c.install_upgrade(n, String::new()).await,
        "ApplyConfiguration" => c
            .apply_configuration(n, b"version: v1alpha1\n".to_vec(), Mode::Auto)
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_exactly_what_talos_refuses_it() {
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let (sim, address) = node(&bundle).await;
    let rank = |role: &str| ROLES.iter().position(|r| *r == role).unwrap();
    let mut checked = 0;
    for role in ROLES {
        let c = client(&talosconfig_yaml(&bundle, role, &address));
        for (method, weakest) in TALOS_RULES {
            let allowed = rank(role) >= rank(weakest);
            // Allowed destructive calls are the controllers' business (and would take the node
            // down for the rest of the matrix); a refusal is checked for every pair.
            let harmless = matches!(
                *method,
                "Version" | "ServiceList" | "EtcdMemberList" | "EtcdStatus"
            );
            if allowed && !harmless {
                continue;
            }
            let result = call(&c, method).await;
            let refused = matches!(result, Err(Error::PermissionDenied(_)));
            assert_eq!(
                refused, !allowed,
                "{role} calling {method}: {result:?} (Talos allows it from {weakest})"
            );
            checked += 1;
        }
    }
    // An operator may reboot: the one allowed state change, checked last.
    let operator = client(&talosconfig_yaml(&bundle, "os:operator", &address));
    let reboot = call(&operator, "Reboot").await;
    assert!(reboot.is_ok(), "{reboot:?}");
    // Reader: 4 allowed, 9 refused; operator: 4 allowed, 8 refused; admin: 4 allowed.
    assert_eq!(checked, 29, "role/method pairs");
    drop(sim);
}
