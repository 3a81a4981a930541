//! The workload cluster's kubeconfig: issued, working, rotated on request and renewed before it
//! expires, and the watch of the workload Nodes it carries.

use super::*;

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
    let (port, machine, secrets, first, value) = first_kubeconfig(&client, &ns, &infra).await;
    let nodes = workload_nodes_linked_to_machines(&client, &ns, &machine, &first).await;
    node_readiness_followed(&client, &ns, &nodes, &machine).await;
    let rotated = rotated_on_request(&client, &ns, &secrets, &first, &value, &machine).await;
    aging_kubeconfig_renewed(&client, &ns, port, &secrets, rotated, &value, &machine).await;
}

/// Brings control plane "k" up with its endpoint at a free port and checks its first kubeconfig
/// names that endpoint; returns the port, the machine, the Secrets API, the kubeconfig Secret
/// and how to read a kubeconfig Secret's value.
async fn first_kubeconfig(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
) -> (
    u16,
    String,
    Api<Secret>,
    Secret,
    impl Fn(&Secret) -> String + use<>,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    control_plane_cluster_at(client, ns, "k", 1, ("127.0.0.1", port)).await;
    settled(client, ns, "k", &infra.sim, 1).await;
    let machine = machines(client, ns).await.remove(0).name_any();
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let first = secrets.get("k-kubeconfig").await.unwrap();
    assert_eq!(first.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    let value =
        |s: &Secret| String::from_utf8(s.data.as_ref().unwrap()["value"].0.clone()).unwrap();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&value(&first)).unwrap();
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        format!("https://127.0.0.1:{port}")
    );
    (port, machine, secrets, first, value)
}

/// Our kubeconfig lists the workload Nodes, and Cluster API links the Machine to its Node;
/// returns the workload Nodes API.
async fn workload_nodes_linked_to_machines(
    client: &kube::Client,
    ns: &str,
    machine: &String,
    first: &Secret,
) -> Api<k8s_openapi::api::core::v1::Node> {
    // Our kubeconfig lists the workload Nodes, and Cluster API, through the same Secret, links
    // the Machine to its Node.
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(workload_client(first).await);
    eventually(
        client,
        ns,
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
            names.contains(machine).then_some(())
        },
    )
    .await;
    eventually(
        client,
        ns,
        "k",
        "Cluster API sets the Machine's nodeRef",
        async || {
            let m = Api::<Machine>::namespaced(client.clone(), ns)
                .get(machine)
                .await
                .ok()?;
            m.has_node().then_some(())
        },
    )
    .await;
    nodes
}

/// A Node going NotReady is reported through the watch, and so is its return.
async fn node_readiness_followed(
    client: &kube::Client,
    ns: &str,
    nodes: &Api<k8s_openapi::api::core::v1::Node>,
    machine: &str,
) {
    // The controller watches the workload Nodes through that kubeconfig: a Node that goes
    // NotReady is reported, and so is its return, each within WAIT and far inside the hour
    // between health checks.
    set_node_ready(nodes, machine, "False").await;
    let not_ready = node_not_ready_reported(client, ns, machine).await;
    assert!(
        not_ready.message.contains("KubeletNotReady"),
        "{}",
        not_ready.message
    );
    set_node_ready(nodes, machine, "True").await;
    wait_condition(
        client,
        ns,
        "k",
        ConditionType::ControlPlaneComponentsHealthy,
        "True",
        "",
    )
    .await;
}

/// The kubeconfig is rotated on request, works, and the Nodes are followed through it; returns
/// the rotated Secret.
async fn rotated_on_request(
    client: &kube::Client,
    ns: &str,
    secrets: &Api<Secret>,
    first: &Secret,
    value: &impl Fn(&Secret) -> String,
    machine: &str,
) -> Secret {
    Api::<TalosControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "talos.controlplane.cluster.x-k8s.io/rotate-kubeconfig": "2026-11-23"
            }}})),
        )
        .await
        .unwrap();
    let rotated = eventually(client, ns, "k", "the kubeconfig rotated", async || {
        let s = secrets.get("k-kubeconfig").await.ok()?;
        (value(&s) != value(first)).then_some(s)
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
    set_node_ready(&nodes, machine, "False").await;
    node_not_ready_reported(client, ns, machine).await;
    set_node_ready(&nodes, machine, "True").await;
    rotated
}

/// A kubeconfig expiring within 90 days is issued again for a year, with no request, and works.
async fn aging_kubeconfig_renewed(
    client: &kube::Client,
    ns: &str,
    port: u16,
    secrets: &Api<Secret>,
    rotated: Secret,
    value: &impl Fn(&Secret) -> String,
    machine: &str,
) {
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
        client,
        ns,
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
    set_node_ready(&nodes, machine, "False").await;
    node_not_ready_reported(client, ns, machine).await;
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
