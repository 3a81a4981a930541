//! `clusterctl move` keeps every address: a control plane whose machines took their addresses
//! from an InClusterIPPool moves to a second management cluster (Cluster API core, the in-cluster
//! IPAM provider, our controllers) with its pool, claims and addresses, each claim bound to the
//! address it had, no claim made anew, and no machine re-rendered or replaced.
//!
//! clusterctl moves the pool because the provider's release labels its pool CRDs
//! `clusterctl.cluster.x-k8s.io/move-hierarchy` (a pool is no Cluster's descendant), as
//! [`common::clusterctl::inventory`] labels them here; the claims move as descendants of the
//! Cluster (Machine → TalosConfig → IPAddressClaim), the addresses with both. (Without that
//! label clusterctl moves the claims but neither the pool nor the addresses: the claims stay
//! unbound in the target and each TalosConfig reports WaitingForIPAddress, its bootstrap data
//! kept.)

use api::capi::Machine;
use common::clusterctl::{self, cluster_secrets};

use super::controlplane::{addressed, cluster_from_pool};
use super::*;

/// What the move must keep: machine → address, claim → address, IPAddress → (address, claim),
/// the cluster's Secrets.
#[derive(Debug, PartialEq)]
struct Addresses {
    machines: BTreeMap<String, String>,
    claims: BTreeMap<String, String>,
    ips: BTreeMap<String, (String, String)>,
    secrets: Vec<(String, String)>,
}

#[tokio::test]
async fn clusterctl_move_keeps_every_address() {
    let source_cp = control_plane().await;
    let (source, ns, source_controller) = setup("ipam-move").await;
    let mut infra =
        sim_infra::start_with_workloads_in(&source, &ns, &["a", "b", "c"], source_cp.etcd());
    pool(&source, &ns, "nodes", 40, 49).await;
    let port = testkit::process::free_port().unwrap();
    cluster_from_pool(&source, &ns, "ip", ("127.0.0.1", port)).await;
    let before = provisioned(&source, &ns).await;

    let (target_cp, target) = clusterctl::target_management_cluster(&source, &ns, true).await;
    source_controller.stop().await;
    let (_target_controller, target_ctx) =
        start_controller_context(&target, &ns, Options::default());
    clusterctl::clusterctl_move(source_cp, &ns, &mut infra, &target_cp, &target).await;

    the_same_addresses_in_the_target(&target, &ns, &before).await;
    // Once the target's controllers have reconciled the control plane and every TalosConfig as
    // they are now: still no claim, address, machine or Secret anew.
    reconciled_since(&target_ctx, &target, &ns, "ip").await;
    configs_reconciled_since(&target_ctx, &target, &ns).await;
    assert_eq!(addresses(&target, &ns).await, before);
    assert_eq!(claims_and_addresses(&target, &ns).await, (3, 3));
    assert_eq!(
        marked(&target, &ns).await,
        (3, 3),
        "the claims moved, none made anew"
    );
    assert_eq!(free(&target, &ns, "nodes").await, Some(7));
    the_source_keeps_nothing(&source, &ns).await;
}

/// Until the control plane of 3 runs at its pool addresses and every Machine has its Node (what
/// clusterctl requires to move); returns what the move must keep.
async fn provisioned(client: &kube::Client, ns: &str) -> Addresses {
    addressed(client, ns, 3, 0).await;
    eventually(
        client,
        ns,
        "ip",
        "every machine linked to its Node",
        async || {
            let machines = Api::<Machine>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .ok()?;
            let linked = machines.iter().filter(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.node_ref.as_ref())
                    .is_some()
            });
            (linked.count() == 3).then_some(())
        },
    )
    .await;
    let before = addresses(client, ns).await;
    mark(client, ns).await;
    assert_eq!(before.claims.len(), 3, "{before:?}");
    assert_eq!(before.ips.len(), 3, "{before:?}");
    assert!(before.secrets.len() >= 4, "{before:?}");
    before
}

/// An annotation on every claim and address of the source: the objects moved carry it, one
/// made anew would not.
const MARK: &str = "test.talos-capi.dev/made-in-source";

async fn mark(client: &kube::Client, ns: &str) {
    for kind in ["IPAddressClaim", "IPAddress"] {
        let api = ipam_api(client, ns, kind);
        for object in api.list(&ListParams::default()).await.unwrap() {
            let patch = json!({"metadata": {"annotations": {MARK: "yes"}}});
            api.patch(
                &object.name_any(),
                &Default::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap();
        }
    }
}

/// How many claims and addresses of `ns` carry [`MARK`].
async fn marked(client: &kube::Client, ns: &str) -> (usize, usize) {
    let count = async |kind| {
        let all = ipam_api(client, ns, kind)
            .list(&ListParams::default())
            .await
            .unwrap();
        all.iter()
            .filter(|o| o.annotations().contains_key(MARK))
            .count()
    };
    (count("IPAddressClaim").await, count("IPAddress").await)
}

/// What the move must keep, as `ns` holds it now (the machines' addresses as the control plane
/// reports them ready).
async fn addresses(client: &kube::Client, ns: &str) -> Addresses {
    let ips = ipam_api(client, ns, "IPAddress")
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|ip| {
            let address = ip.data["spec"]["address"].as_str().unwrap_or_default();
            let claim = ip.data["spec"]["claimRef"]["name"].as_str();
            let value = (address.to_owned(), claim.unwrap_or_default().to_owned());
            (ip.name_any(), value)
        })
        .collect();
    Addresses {
        machines: addressed(client, ns, 3, 0).await,
        claims: bound_claims(client, ns).await,
        ips,
        secrets: cluster_secrets(client, ns, "ip").await,
    }
}

/// In the target: the pool, every claim bound to the address it had (the target's IPAM provider
/// binds the moved claims, whose status clusterctl does not copy, to the moved addresses), the
/// same machines at the same addresses in a healthy control plane, the same Secrets.
async fn the_same_addresses_in_the_target(target: &kube::Client, ns: &str, before: &Addresses) {
    let what = "the moved claims bound to their addresses, the pool counting them";
    eventually(target, ns, "ip", what, async || {
        let bound = bound_claims(target, ns).await;
        let counted = free(target, ns, "nodes").await == Some(7);
        (bound == before.claims && counted).then_some(())
    })
    .await;
    assert_eq!(addresses(target, ns).await, *before);
    assert_eq!(claims_and_addresses(target, ns).await, (3, 3));
    assert_eq!(
        marked(target, ns).await,
        (3, 3),
        "the claims moved, none made anew"
    );
}

/// The source management cluster keeps no machine, claim, address or pool.
async fn the_source_keeps_nothing(source: &kube::Client, ns: &str) {
    let machines = Api::<Machine>::namespaced(source.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(machines.items.is_empty(), "the source keeps machines");
    assert_eq!(claims_and_addresses(source, ns).await, (0, 0));
    assert_eq!(
        free(source, ns, "nodes").await,
        None,
        "the source keeps the pool"
    );
}
