//! TalosConfigs and their claims, without a control plane: binding, exhaustion, release, and
//! what a patch's values can and cannot do.

use api::conditions::{ConditionType, reason};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;

use super::*;

fn worker_spec(patches: &[String]) -> Value {
    json!({
        "generateType": "worker", "talosVersion": "v1.13",
        "addressesFromPools": [pool_ref("nodes")],
        "strategicPatches": patches,
    })
}

/// A pool of one address: the first machine gets it and renders it; the second waits, its
/// condition naming the exhausted pool and its claim, with no bootstrap data; deleting the
/// first machine frees the address (its claim released once its infrastructure is gone), and
/// the second renders with it.
#[tokio::test]
async fn an_exhausted_pool_waits_and_a_freed_address_unblocks() {
    let (client, ns, _controller) = setup("ipam-exhaust").await;
    cluster(&client, &ns, "c", false).await;
    pool(&client, &ns, "nodes", 10, 10).await;
    let address = format!("{}.10", network());
    let patches = [address_patch("nodes")];

    machine(&client, &ns, "c", "w-0", worker_spec(&patches), false).await;
    wait_config(&client, &ns, "w-0", ConditionType::Ready, "True").await;
    let (_, docs) = secret_value(&client, &ns, "w-0-bootstrap-data").await;
    let interface = &docs[0]["machine"]["network"]["interfaces"][0];
    assert_eq!(interface["addresses"], json!([format!("{address}/24")]));
    assert_eq!(
        interface["routes"][0]["gateway"],
        json!(format!("{}.1", network()))
    );
    let config = Api::<api::bootstrap::v1alpha3::TalosConfig>::namespaced(client.clone(), &ns)
        .get("w-0")
        .await
        .unwrap();
    assert!(
        config
            .finalizers()
            .iter()
            .any(|f| f == controller::ipam::FINALIZER),
        "a TalosConfig with claims holds them with its finalizer"
    );

    machine(&client, &ns, "c", "w-1", worker_spec(&patches), false).await;
    let waiting = wait_reason(
        &client,
        &ns,
        "w-1",
        ConditionType::DataSecretAvailable,
        reason::POOL_EXHAUSTED,
    )
    .await;
    assert!(
        waiting
            .message
            .contains("InClusterIPPool nodes is exhausted")
            && waiting.message.contains("IPAddressClaim w-1-nodes"),
        "{}",
        waiting.message
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .get_opt("w-1-bootstrap-data")
            .await
            .unwrap()
            .is_none(),
        "no bootstrap data while a claim waits"
    );

    // The first machine goes: Cluster API deletes its TalosConfig, which releases its claim.
    Api::<api::capi::Machine>::namespaced(client.clone(), &ns)
        .delete("w-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_config(&client, &ns, "w-1", ConditionType::Ready, "True").await;
    let (_, docs) = secret_value(&client, &ns, "w-1-bootstrap-data").await;
    assert_eq!(
        docs[0]["machine"]["network"]["interfaces"][0]["addresses"],
        json!([format!("{address}/24")]),
        "the freed address went to the waiting machine"
    );
    assert_eq!(
        bound_claims(&client, &ns)
            .await
            .into_iter()
            .collect::<Vec<_>>(),
        [("w-1-nodes".to_owned(), address)],
        "w-0's claim is gone"
    );
}

/// A patch naming a value that does not exist, or a pool the TalosConfig does not claim from,
/// is a condition and a Warning Event naming it; nothing is rendered with a reference left in.
/// A value holding YAML (a failure domain may hold any text) stays one string.
#[tokio::test]
async fn unknown_values_are_conditions_and_values_cannot_inject_yaml() {
    let (client, ns, _controller) = setup("ipam-values").await;
    cluster(&client, &ns, "c", false).await;
    pool(&client, &ns, "nodes", 20, 29).await;

    let unknown = [format!(
        "{}machine:\n  env:\n    OTHER: \"((ipam.other.address))\"\n",
        address_patch("nodes")
    )];
    machine(&client, &ns, "c", "u-0", worker_spec(&unknown), false).await;
    let refused = wait_reason(
        &client,
        &ns,
        "u-0",
        ConditionType::DataSecretAvailable,
        reason::VALUE_UNRESOLVED,
    )
    .await;
    assert!(
        refused.message.contains("((ipam.other.address))")
            && refused.message.contains("spec.strategicPatches[0]"),
        "{}",
        refused.message
    );
    wait_warning(&client, &ns, "u-0", reason::VALUE_UNRESOLVED, |m| {
        m.contains("ipam.other.address")
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .get_opt("u-0-bootstrap-data")
            .await
            .unwrap()
            .is_none()
    );

    injection_stays_a_string(&client, &ns).await;
}

/// A Machine whose failure domain is YAML text: the value lands as one string, and the
/// documents are the ones the contract renders.
async fn injection_stays_a_string(client: &kube::Client, ns: &str) {
    let hostile = "a\"\n---\nkind: Evil\n- x: ((cluster.name))\n#";
    let patch = [
        "machine:\n  env:\n    ZONE: \"((machine.failureDomain)) in ((cluster.name))\"\n"
            .to_owned(),
    ];
    machine(client, ns, "c", "y-0", worker_spec(&patch), false).await;
    Api::<api::capi::Machine>::namespaced(client.clone(), ns)
        .patch(
            "y-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"failureDomain": hostile}})),
        )
        .await
        .unwrap();
    let config = wait_config(client, ns, "y-0", ConditionType::Ready, "True").await;
    let (_, docs) = secret_value(client, ns, "y-0-bootstrap-data").await;
    let kinds: Vec<&Value> = docs.iter().map(|d| &d["kind"]).collect();
    assert_eq!(
        kinds,
        [&Value::Null, &json!("HostnameConfig")],
        "the v1alpha1 document and the contract's HostnameConfig, nothing the value held"
    );
    assert_eq!(
        docs[0]["machine"]["env"]["ZONE"],
        json!(format!("{hostile} in c")),
        "the value is one string, and text it holds is not searched again"
    );
    assert_eq!(config.name_any(), "y-0");
}

/// A paused Cluster's TalosConfigs claim nothing; unpaused, they claim and render.
#[tokio::test]
async fn pausing_stops_claiming() {
    let (client, ns, _controller) = setup("ipam-pause").await;
    cluster(&client, &ns, "c", true).await;
    pool(&client, &ns, "nodes", 30, 39).await;
    // Cluster API does not adopt objects of a paused Cluster; the label names it.
    let label = json!({"cluster.x-k8s.io/cluster-name": "c"});
    let spec = worker_spec(&[address_patch("nodes")]);
    machine_labelled(&client, &ns, "c", "p-0", spec, false, label).await;
    wait_config(&client, &ns, "p-0", ConditionType::Paused, "True").await;
    assert_eq!(
        claims_and_addresses(&client, &ns).await,
        (0, 0),
        "no claim while paused"
    );
    Api::<api::capi::Cluster>::namespaced(client.clone(), &ns)
        .patch(
            "c",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    wait_config(&client, &ns, "p-0", ConditionType::Ready, "True").await;
    assert_eq!(claims_and_addresses(&client, &ns).await, (1, 1));
}

/// A TalosConfig deleted by hand while its machine's infrastructure machine exists keeps its
/// claim, saying why, until that machine is gone; then the claim and its address go.
#[tokio::test]
async fn a_talosconfig_deleted_by_hand_keeps_its_claim_while_its_machine_runs() {
    let (client, ns, _controller) = setup("ipam-held").await;
    cluster(&client, &ns, "c", false).await;
    pool(&client, &ns, "nodes", 40, 49).await;
    let spec = worker_spec(&[address_patch("nodes")]);
    machine(&client, &ns, "c", "h-0", spec, false).await;
    wait_config(&client, &ns, "h-0", ConditionType::Ready, "True").await;

    Api::<api::bootstrap::v1alpha3::TalosConfig>::namespaced(client.clone(), &ns)
        .delete("h-0", &DeleteParams::default())
        .await
        .unwrap();
    let held = wait_config_where(&client, &ns, "h-0", ConditionType::Deleting, "True", |c| {
        c.reason == reason::WAITING_FOR_DELETION
    })
    .await;
    let message = config_condition(&held, ConditionType::Deleting)
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("SimMachine h-0"), "{message}");
    let claim = ipam_api(&client, &ns, "IPAddressClaim")
        .get("h-0-nodes")
        .await
        .unwrap();
    assert!(
        claim.metadata.deletion_timestamp.is_none(),
        "the claim is kept while the infrastructure machine exists"
    );

    dynamic(
        &client,
        &ns,
        "infrastructure.cluster.x-k8s.io/v1alpha1",
        "SimMachine",
    )
    .delete("h-0", &DeleteParams::default())
    .await
    .unwrap();
    testkit::eventually("the claim and its address released", WAIT, async || {
        (claims_and_addresses(&client, &ns).await == (0, 0)).then_some(())
    })
    .await;
}
