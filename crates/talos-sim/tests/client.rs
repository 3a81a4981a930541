//! Our Talos client against the simulator: the same scenario talosctl runs, through
//! talos_api::Client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{Contract, Input, MachineType, SecretsBundle};
use talos_api::machine::apply_configuration_request::Mode;
use talos_api::{Client, Error, NodeResult, Nodes};
use talos_sim::{NodeSpec, Phase, SimEvent, Simulator, Timing, loopback_address};

static NEXT: AtomicU32 = AtomicU32::new(1000);

/// Until `n` nodes have come up, `configured` or in maintenance.
async fn wait_up(
    events: &mut tokio::sync::broadcast::Receiver<SimEvent>,
    n: usize,
    configured: bool,
) {
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.len() < n {
            if let Ok(SimEvent::NodeUp {
                address,
                configured: c,
                ..
            }) = events.recv().await
                && c == configured
            {
                seen.insert(address);
            }
        }
    })
    .await
    .expect("nodes come up");
}

/// How long a simulated cluster is given to get somewhere.
const WAIT: Duration = Duration::from_secs(60);

/// Until `check` holds, within [`WAIT`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    testkit::eventually(what, WAIT, async || check().await.then_some(())).await;
}

/// The Talos version tag in a node's Version reply.
fn tag(reply: &NodeResult<talos_api::machine::Version>) -> &str {
    &reply.result.as_ref().unwrap().version.as_ref().unwrap().tag
}

/// A SequenceEvent as "<sequence> <action>", if the event is one.
fn sequence(event: &talos_api::machine::Event) -> Option<String> {
    use prost::Message;
    let any = event.data.as_ref()?;
    if !any.type_url.ends_with("machine.SequenceEvent") {
        return None;
    }
    let e = talos_api::machine::SequenceEvent::decode(any.value.as_slice()).ok()?;
    Some(format!("{} {:?}", e.sequence, e.action()))
}

/// Whether `node` reports its etcd service healthy.
async fn etcd_healthy(client: &Client, node: &Nodes) -> bool {
    let services = client
        .service_list(node)
        .await
        .unwrap()
        .remove(0)
        .result
        .unwrap()
        .services;
    services
        .iter()
        .find(|s| s.id == "etcd")
        .and_then(|s| s.health.as_ref())
        .is_some_and(|h| h.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drives_the_simulator() {
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let nodes: Vec<String> = (0..4)
        .map(|_| loopback_address(NEXT.fetch_add(1, Ordering::SeqCst)).to_string())
        .collect();
    for (i, address) in nodes.iter().enumerate() {
        let spec = NodeSpec {
            address: address.parse().unwrap(),
            port: 50000,
            hostname: format!("n{i}"),
            version: "v1.13.0".into(),
            config: None,
        };
        sim.start(spec).unwrap();
    }
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let input = Input::new("c", &format!("https://{}:6443", nodes[0]));
    let cp = machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[]).unwrap();
    let worker = machineconfig::generate(MachineType::Worker, &input, &bundle, &[]).unwrap();
    // The first call waits for the nodes to be up, not for key generation to take long enough.
    wait_up(&mut events, 4, false).await;

    // Maintenance: server-only TLS; only the maintenance service's methods exist.
    let unavailable = Client::maintenance(vec![nodes[0].clone()])
        .bootstrap(&Nodes::Endpoint)
        .await;
    assert!(
        matches!(unavailable, Err(Error::Unimplemented(_))),
        "{unavailable:?}"
    );
    // The simulator counts the calls it receives by method, and the ones it could not serve.
    assert_eq!(
        sim.calls().get("/machine.MachineService/Bootstrap"),
        Some(&talos_sim::Calls {
            received: 1,
            unimplemented: 1
        })
    );
    // An invalid configuration is refused with the reason.
    let m = Client::maintenance(vec![nodes[0].clone()]);
    let bad = m
        .apply_configuration(
            &Nodes::Endpoint,
            b"version: v1alpha1\n".to_vec(),
            Mode::Auto,
        )
        .await;
    assert!(
        matches!(bad, Err(Error::InvalidArgument(ref msg)) if msg.contains("machine")),
        "{bad:?}"
    );
    for (i, n) in nodes.iter().enumerate() {
        let data = if i < 3 { cp.clone() } else { worker.clone() };
        Client::maintenance(vec![n.clone()])
            .apply_configuration(&Nodes::Endpoint, data.into_bytes(), Mode::Auto)
            .await
            .unwrap();
    }
    wait_up(&mut events, 4, true).await;

    let admin_cfg = talosconfig::generate(
        "c",
        &bundle,
        &ClientOptions {
            endpoints: nodes.clone(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let admin = Client::from_talosconfig(&admin_cfg.to_yaml().unwrap(), None).unwrap();
    let versions = admin.version(&Nodes::Many(nodes.clone())).await.unwrap();
    let version_calls = sim.calls()["/machine.MachineService/Version"];
    assert!(
        version_calls.received >= 1 && version_calls.unimplemented == 0,
        "{version_calls:?}"
    );
    assert_eq!(versions.len(), 4);
    for v in &versions {
        assert!(nodes.contains(&v.node));
        assert_eq!(tag(v), "v1.13.0");
    }

    let reader_cfg = talosconfig::generate(
        "c",
        &bundle,
        &ClientOptions {
            role: "os:reader".into(),
            endpoints: nodes.clone(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let reader = Client::from_talosconfig(&reader_cfg.to_yaml().unwrap(), None).unwrap();
    assert!(matches!(
        reader.bootstrap(&Nodes::Endpoint).await,
        Err(Error::PermissionDenied(_))
    ));

    let worker_node = Nodes::One(nodes[3].clone());
    assert!(
        matches!(
            admin.bootstrap(&worker_node).await,
            Err(Error::Unimplemented(_))
        ),
        "no Bootstrap on workers"
    );
    admin
        .bootstrap(&Nodes::One(nodes[0].clone()))
        .await
        .unwrap();
    assert!(matches!(
        admin.bootstrap(&Nodes::One(nodes[1].clone())).await,
        Err(Error::AlreadyExists(_))
    ));

    let first = Nodes::One(nodes[0].clone());
    eventually("three voting members", async || {
        admin.etcd_member_list(&first).await.is_ok_and(|r| {
            r[0].result
                .as_ref()
                .is_ok_and(|m| m.members.len() == 3 && m.members.iter().all(|m| !m.is_learner))
        })
    })
    .await;
    let members = admin
        .etcd_member_list(&first)
        .await
        .unwrap()
        .remove(0)
        .result
        .unwrap()
        .members;
    let third = members.iter().find(|m| m.hostname == "n2").unwrap().id;
    admin.etcd_forfeit_leadership(&first).await.unwrap();
    assert!(matches!(
        admin.etcd_remove_member(&first, 42).await,
        Err(Error::NotFound(_))
    ));
    admin.etcd_remove_member(&first, third).await.unwrap();
    admin
        .etcd_leave_cluster(&Nodes::One(nodes[1].clone()))
        .await
        .unwrap();
    assert_eq!(
        admin.etcd_member_list(&first).await.unwrap()[0]
            .result
            .as_ref()
            .unwrap()
            .members
            .len(),
        1
    );
    assert!(etcd_healthy(&admin, &first).await);

    admin
        .upgrade(&first, "ghcr.io/siderolabs/installer:v1.13.1".into())
        .await
        .unwrap();
    eventually("upgraded", async || {
        sim.status(&nodes[0]) == Some((Phase::Running, "v1.13.1".into()))
    })
    .await;

    // Failover: the first endpoint is down, the second answers.
    sim.set_failures(&nodes[2], |f| f.down = true).unwrap();
    let down = format!("{}:50000", nodes[2]);
    eventually("node 2 stops listening", async || {
        tokio::net::TcpStream::connect(&down).await.is_err()
    })
    .await;
    let failover = admin
        .with_endpoints(vec![nodes[2].clone(), nodes[0].clone()])
        .with_timeout(Duration::from_secs(2));
    let v = failover.version(&Nodes::Endpoint).await.unwrap();
    assert_eq!(tag(&v[0]), "v1.13.1");
    // The down node is an error entry of a multi-node reply, not a failed call.
    let mixed = failover
        .version(&Nodes::Many(vec![nodes[0].clone(), nodes[2].clone()]))
        .await
        .unwrap();
    assert!(mixed[0].result.is_ok());
    assert!(
        matches!(mixed[1].result, Err(Error::Unavailable(_))),
        "{:?}",
        mixed[1]
    );

    sim.set_failures(&nodes[1], |f| {
        f.api_errors
            .insert("ServiceList".into(), tonic::Code::FailedPrecondition);
    })
    .unwrap();
    assert!(matches!(
        failover.service_list(&Nodes::One(nodes[1].clone())).await,
        Err(Error::FailedPrecondition(_))
    ));

    // A hung apid still accepts connections, so failover on connect does not help: a call
    // through it runs out of time, and the next call starts from the next endpoint. A call
    // fanned out through another node to it runs out of time too (apid waits for every node).
    sim.set_failures(&nodes[1], |f| {
        f.stalls.insert("Version".into(), Duration::from_secs(30));
    })
    .unwrap();
    let hung = Client::from_talosconfig(&admin_cfg.to_yaml().unwrap(), None)
        .unwrap()
        .with_endpoints(vec![nodes[1].clone(), nodes[0].clone()])
        .with_timeout(Duration::from_millis(500));
    let first = hung.version(&Nodes::Endpoint).await;
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    let next = hung.version(&Nodes::Endpoint).await.unwrap();
    assert_eq!(
        tag(&next[0]),
        "v1.13.1",
        "answered by node 0, the next endpoint"
    );
    let fanned = hung
        .version(&Nodes::Many(vec![nodes[0].clone(), nodes[1].clone()]))
        .await;
    assert!(matches!(fanned, Err(Error::Timeout(_))), "{fanned:?}");
    sim.set_failures(&nodes[1], |f| f.stalls.clear()).unwrap();

    let mut reboot_events = sim.events();
    failover
        .reboot(&Nodes::One(nodes[1].clone()))
        .await
        .unwrap();
    // The simulator sees the reboot: the node goes down, then comes back.
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut down = false;
        loop {
            match reboot_events.recv().await {
                Ok(SimEvent::NodeDown { address }) if address == nodes[1] => down = true,
                Ok(SimEvent::NodeUp { address, .. }) if address == nodes[1] && down => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("NodeDown, then NodeUp");
    // The node's events record the reboot: REBOOTING, then machined's boot sequence starting,
    // RUNNING, and the boot sequence stopping (CACPPT waits for that stop before it scales up).
    let rebooted = Nodes::One(nodes[1].clone());
    eventually(
        "REBOOTING, boot START, RUNNING, boot STOP in the event log",
        async || {
            let Ok(mut stream) = failover.events(&rebooted, -1).await else {
                return false;
            };
            let mut seen = Vec::new();
            while let Ok(Ok(Some(event))) =
                tokio::time::timeout(Duration::from_millis(200), stream.message()).await
            {
                seen.extend(talos_api::machine_status(&event).map(|m| format!("{:?}", m.stage())));
                seen.extend(sequence(&event));
            }
            let reboot = seen.iter().rposition(|s| s == "Rebooting");
            reboot.is_some_and(|i| seen[i + 1..] == ["boot Start", "Running", "boot Stop"])
        },
    )
    .await;
    failover
        .reset(&Nodes::One(nodes[3].clone()), true)
        .await
        .unwrap();
    eventually("worker reset to maintenance", async || {
        sim.status(&nodes[3])
            .is_some_and(|(p, _)| p == Phase::Maintenance)
    })
    .await;
}

/// An admin client of cluster `name` through `endpoint`, once it has bootstrapped etcd there and
/// three members vote; with that node.
async fn bootstrap_three(name: &str, bundle: &SecretsBundle, endpoint: &str) -> (Client, Nodes) {
    let cfg = talosconfig::generate(
        name,
        bundle,
        &ClientOptions {
            endpoints: vec![endpoint.to_owned()],
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let client = Client::from_talosconfig(&cfg.to_yaml().unwrap(), None).unwrap();
    let first = Nodes::One(endpoint.to_owned());
    client.bootstrap(&first).await.unwrap();
    eventually("three voting members", async || {
        client.etcd_member_list(&first).await.is_ok_and(|r| {
            r[0].result
                .as_ref()
                .is_ok_and(|m| m.members.iter().filter(|m| !m.is_learner).count() == 3)
        })
    })
    .await;
    (client, first)
}

/// Nodes that start configured (cloud userdata), the path control-plane tests use; a cluster
/// that loses etcd quorum reports unhealthy etcd on every node until quorum returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_makes_etcd_unhealthy_everywhere() {
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let nodes: Vec<String> = (0..3)
        .map(|_| loopback_address(NEXT.fetch_add(1, Ordering::SeqCst)).to_string())
        .collect();
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let input = Input::new("q", &format!("https://{}:6443", nodes[0]));
    let cp = machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[]).unwrap();
    for (i, address) in nodes.iter().enumerate() {
        let spec = NodeSpec {
            address: address.parse().unwrap(),
            port: 50000,
            hostname: format!("q{i}"),
            version: "v1.13.0".into(),
            config: Some(cp.clone()),
        };
        sim.start(spec).unwrap();
    }
    wait_up(&mut events, 3, true).await;
    let (client, first) = bootstrap_three("q", &bundle, &nodes[0]).await;

    assert!(etcd_healthy(&client, &first).await);

    // Two of three members down: no quorum.
    for n in &nodes[1..] {
        sim.set_failures(n, |f| f.down = true).unwrap();
    }
    eventually("quorum lost", async || {
        matches!(
            client.etcd_member_list(&first).await,
            Err(Error::Unavailable(_))
        )
    })
    .await;
    assert!(
        !etcd_healthy(&client, &first).await,
        "etcd is unhealthy without quorum"
    );

    // One comes back: quorum again.
    sim.set_failures(&nodes[1], |f| f.down = false).unwrap();
    eventually("quorum regained", async || {
        client.etcd_member_list(&first).await.is_ok()
    })
    .await;
    assert!(etcd_healthy(&client, &first).await);

    // An etcd failure injected on one node is reported by that node only.
    sim.set_failures(&nodes[0], |f| f.etcd_unhealthy = true)
        .unwrap();
    sim.set_failures(&nodes[2], |f| f.down = false).unwrap();
    eventually("node 2 back", async || {
        client.version(&Nodes::One(nodes[2].clone())).await.is_ok()
    })
    .await;
    assert!(
        !etcd_healthy(&client, &first).await,
        "node 0 reports its injected etcd failure"
    );
    assert!(etcd_healthy(&client, &Nodes::One(nodes[2].clone())).await);
}

/// Talos v1.14 nodes: they boot the v1.14 contract's multi-document configuration and form a
/// cluster (its id from DiscoveryIdentityConfig), apply every later change live (a change a
/// v1.13 node reboots for included), and refuse REBOOT mode; a v1.13 node refuses the v1.14
/// documents, as Talos v1.13 does not know them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talos_1_14_nodes_boot_v1_14_configs_and_apply_every_change_live() {
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let nodes: Vec<String> = (0..4)
        .map(|_| loopback_address(NEXT.fetch_add(1, Ordering::SeqCst)).to_string())
        .collect();
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let endpoint = format!("https://{}:6443", nodes[0]);
    let input = Input::for_contract("n", &endpoint, Contract::NEWEST);
    let cp = machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[]).unwrap();
    for (i, address) in nodes.iter().enumerate() {
        let spec = NodeSpec {
            address: address.parse().unwrap(),
            port: 50000,
            hostname: format!("n{i}"),
            version: if i < 3 { "v1.14.1" } else { "v1.13.0" }.into(),
            config: None,
        };
        sim.start(spec).unwrap();
    }
    wait_up(&mut events, 4, false).await;
    let refused = Client::maintenance(vec![nodes[3].clone()])
        .apply_configuration(&Nodes::Endpoint, cp.clone().into_bytes(), Mode::Auto)
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("\"DiscoveryServiceConfig\" \"v1alpha1\": not registered")),
        "{refused:?}"
    );
    for n in &nodes[..3] {
        let applied = Client::maintenance(vec![n.clone()])
            .apply_configuration(&Nodes::Endpoint, cp.clone().into_bytes(), Mode::Reboot)
            .await
            .unwrap();
        // In maintenance v1.14 takes REBOOT as NO_REBOOT.
        assert_eq!(applied[0].result.as_ref().unwrap().mode(), Mode::NoReboot);
    }
    wait_up(&mut events, 3, true).await;
    let (client, first) = bootstrap_three("n", &bundle, &nodes[0]).await;

    // A change of the v1alpha1 document a v1.13 node reboots for (a feature Talos does not
    // switch live): applied live.
    let patch = machineconfig::Patch::parse("machine:\n  features:\n    diskQuotaSupport: false\n")
        .unwrap();
    let new =
        machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[patch]).unwrap();
    let applied = client
        .apply_configuration(&first, new.clone().into_bytes(), Mode::Auto)
        .await
        .unwrap();
    let reply = applied[0].result.as_ref().unwrap();
    assert_eq!(reply.mode(), Mode::NoReboot, "{reply:?}");
    assert_eq!(reply.mode_details, "Applied configuration without a reboot");
    let reboot = client
        .apply_configuration(&first, new.into_bytes(), Mode::Reboot)
        .await;
    assert!(
        matches!(&reboot, Err(Error::Unimplemented(m)) if m.contains("the REBOOT mode is not supported")),
        "{reboot:?}"
    );
}

/// Three control planes of Talos `version`, started with `contract`'s configuration and
/// bootstrapped.
async fn bootstrapped_etcd(
    version: &str,
    contract: Contract,
) -> (Simulator, Vec<String>, SecretsBundle, Client, Nodes) {
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let nodes: Vec<String> = (0..3)
        .map(|_| loopback_address(NEXT.fetch_add(1, Ordering::SeqCst)).to_string())
        .collect();
    let bundle = SecretsBundle::generate(contract).unwrap();
    let input = Input::for_contract("e", &format!("https://{}:6443", nodes[0]), contract);
    let cp = machineconfig::generate(MachineType::Controlplane, &input, &bundle, &[]).unwrap();
    for (i, address) in nodes.iter().enumerate() {
        let spec = NodeSpec {
            address: address.parse().unwrap(),
            port: 50000,
            hostname: format!("e{i}"),
            version: version.into(),
            config: Some(cp.clone()),
        };
        sim.start(spec).unwrap();
    }
    wait_up(&mut events, 3, true).await;
    // etcd does not run before the bootstrap: nothing listens on its HTTP port yet.
    let before = etcd_http(&nodes[0], "/health", &bundle, true).await;
    assert!(before.is_err(), "{before:?}");
    let (client, first) = bootstrap_three("e", &bundle, &nodes[0]).await;
    (sim, nodes, bundle, client, first)
}

/// `GET path` on etcd's HTTP port of `node` (2383), with a client certificate of the cluster's
/// etcd CA when `with_certificate`: the status line and body.
async fn etcd_http(
    node: &str,
    path: &str,
    bundle: &SecretsBundle,
    with_certificate: bool,
) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_crt = machineconfig::secrets::decode_pem(&bundle.certs.etcd.crt).unwrap();
    let ca_key = machineconfig::secrets::decode_pem(&bundle.certs.etcd.key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_crt.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let signer = machineconfig::secrets::signing_key(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_crt, signer).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        builder
            .with_client_auth_cert(vec![cert.der().clone()], key)
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((node, talos_sim::etcd_http::PORT)).await?;
    let name = ServerName::IpAddress(node.parse::<std::net::IpAddr>().unwrap().into());
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    Ok(format!(
        "{}\n{body}",
        head.lines().next().unwrap_or_default()
    ))
}

/// The etcd version a node's EtcdStatus reports.
async fn etcd_protocol_version(client: &Client, node: &str) -> String {
    let status = client
        .etcd_status(&Nodes::One(node.to_owned()))
        .await
        .unwrap();
    let status = status[0].result.as_ref().unwrap();
    status
        .member_status
        .as_ref()
        .unwrap()
        .protocol_version
        .clone()
}

/// Talos v1.14 runs etcd 3.7 with `--listen-client-http-urls` on port 2383: once etcd runs,
/// `/health` and `/metrics` answer there, over TLS, only to a client certificate of the
/// cluster's etcd CA; `/health` fails on an alarm; 2379 serves no HTTP; EtcdStatus reports etcd
/// 3.7.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talos_1_14_etcd_serves_health_and_metrics_on_their_own_port() {
    let (sim, nodes, bundle, client, _) = bootstrapped_etcd(
        "v1.14.1",
        Contract {
            major: 1,
            minor: 14,
        },
    )
    .await;
    for n in &nodes {
        // Each member's etcd listens once it runs.
        eventually("etcd's HTTP port answers", async || {
            etcd_http(n, "/health", &bundle, true).await.is_ok()
        })
        .await;
        let health = etcd_http(n, "/health", &bundle, true).await.unwrap();
        assert_eq!(
            health,
            "HTTP/1.1 200 OK\n{\"health\":\"true\",\"reason\":\"\"}"
        );
        assert_eq!(etcd_protocol_version(&client, n).await, "3.7.1");
    }
    let metrics = etcd_http(&nodes[1], "/metrics", &bundle, true)
        .await
        .unwrap();
    assert!(
        metrics.contains("etcd_server_has_leader 1")
            && metrics.contains("etcd_server_version{server_version=\"3.7.1\"} 1"),
        "{metrics}"
    );
    let anonymous = etcd_http(&nodes[0], "/health", &bundle, false).await;
    assert!(anonymous.is_err(), "client-cert-auth: {anonymous:?}");
    let grpc_only = tokio::net::TcpStream::connect((nodes[0].as_str(), 2379)).await;
    assert!(
        grpc_only.is_err(),
        "no HTTP on the client port: {grpc_only:?}"
    );

    sim.set_failures(&nodes[2], |f| {
        f.etcd_errors = vec!["memberID:1 alarm:NOSPACE".into()]
    })
    .unwrap();
    let health = etcd_http(&nodes[2], "/health", &bundle, true)
        .await
        .unwrap();
    assert_eq!(
        health,
        "HTTP/1.1 503 Service Unavailable\n{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"
    );
}

/// Before v1.14 a node's etcd opens no HTTP port of its own and reports the etcd version the
/// simulator always has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talos_1_13_etcd_has_no_http_port_of_its_own() {
    let (_sim, nodes, bundle, client, _) = bootstrapped_etcd(
        "v1.13.0",
        Contract {
            major: 1,
            minor: 13,
        },
    )
    .await;
    let health = etcd_http(&nodes[0], "/health", &bundle, true).await;
    assert!(health.is_err(), "{health:?}");
    assert_eq!(etcd_protocol_version(&client, &nodes[0]).await, "3.5.0");
}
