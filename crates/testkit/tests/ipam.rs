//! The real in-cluster IPAM provider beside the Cluster API core (`Builder::ipam_in_cluster`):
//! pools admitted through its webhooks, addresses allocated for claims, a pool running out, and
//! an address freed when its claim goes. What a claim looks like on exhaustion is recorded here
//! for the controllers that wait on claims (docs/ipam.md).
//!
//! The test owns its control plane: the provider reconciles every claim the API server serves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};
use testkit::{LocalControlPlane, dynamic_api, eventually_explained, unique_namespace};

const WAIT: Duration = Duration::from_secs(60);
const IPAM: &str = "ipam.cluster.x-k8s.io";

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("test object is valid JSON for DynamicObject")
}

fn pool(name: &str, addresses: &[&str]) -> DynamicObject {
    object(json!({
        "apiVersion": "ipam.cluster.x-k8s.io/v1alpha2",
        "kind": "InClusterIPPool",
        "metadata": {"name": name},
        "spec": {"addresses": addresses, "prefix": 24, "gateway": "127.10.0.1"},
    }))
}

fn claim(name: &str, pool: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "ipam.cluster.x-k8s.io/v1beta2",
        "kind": "IPAddressClaim",
        "metadata": {"name": name},
        "spec": {"poolRef": {"apiGroup": IPAM, "kind": "InClusterIPPool", "name": pool}},
    }))
}

/// What the provider said about the test's objects, for a failed wait.
fn provider_log(cp: &LocalControlPlane) -> String {
    let path = cp.ipam_in_cluster().unwrap().log_path();
    testkit::process::tail(path, 40)
}

/// The address bound to claim `name`: (address, prefix, gateway), once the provider has
/// allocated it.
async fn bound(
    cp: &LocalControlPlane,
    claims: &Api<DynamicObject>,
    addresses: &Api<DynamicObject>,
    name: &str,
) -> (String, i64, String) {
    eventually_explained(
        &format!("claim {name} bound to an IPAddress"),
        WAIT,
        async || {
            let claim = claims.get(name).await.ok()?;
            let address = claim.data["status"]["addressRef"]["name"].as_str()?;
            let spec = addresses.get(address).await.ok()?.data["spec"].clone();
            Some((
                spec["address"].as_str()?.to_owned(),
                spec["prefix"].as_i64()?,
                spec["gateway"].as_str()?.to_owned(),
            ))
        },
        async || provider_log(cp),
    )
    .await
}

/// A pool in 127.10.0.10-127.10.0.12 hands out its three addresses, runs out on the fourth
/// claim (which stays unbound, with no condition), and hands the address of a deleted claim to
/// the waiting one.
#[tokio::test]
async fn the_in_cluster_provider_allocates_runs_out_and_frees() {
    let cp = LocalControlPlane::builder()
        .cluster_api()
        .ipam_in_cluster()
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "ipam").await.unwrap();
    let api =
        |version: &str, kind: &str| dynamic_api(&client, &ns, &format!("{IPAM}/{version}"), kind);
    let pools = api("v1alpha2", "InClusterIPPool");
    let claims = api("v1beta2", "IPAddressClaim");
    let addresses = api("v1beta2", "IPAddress");
    let pp = PostParams::default();

    // The provider's validating webhook is wired: it refuses what is not an address.
    let refused = pools.create(&pp, &pool("bad", &["not-an-ip"])).await;
    let message = format!("{refused:?}");
    assert!(
        message.contains("provided address is not a valid IP, range, nor CIDR"),
        "the provider's webhook refuses a bad pool: {message}"
    );

    pools
        .create(&pp, &pool("nodes", &["127.10.0.10-127.10.0.12"]))
        .await
        .unwrap();
    // Its conversion webhook too: the pool reads back in the deprecated v1alpha1.
    let old = api("v1alpha1", "InClusterIPPool")
        .get("nodes")
        .await
        .unwrap();
    assert_eq!(old.data["spec"]["gateway"], "127.10.0.1", "{:?}", old.data);

    for name in ["m-0", "m-1", "m-2"] {
        claims.create(&pp, &claim(name, "nodes")).await.unwrap();
    }
    let mut got = BTreeSet::new();
    let mut by_claim = Vec::new();
    for name in ["m-0", "m-1", "m-2"] {
        let (address, prefix, gateway) = bound(&cp, &claims, &addresses, name).await;
        assert_eq!((prefix, gateway.as_str()), (24, "127.10.0.1"), "{name}");
        got.insert(address.clone());
        by_claim.push((name, address));
    }
    let all: BTreeSet<String> = ["127.10.0.10", "127.10.0.11", "127.10.0.12"]
        .map(String::from)
        .into();
    assert_eq!(
        got, all,
        "three claims, three distinct addresses of the pool"
    );
    wait_pool_free(&cp, &pools, 0).await;

    exhausted(&cp, &claims, &ns).await;

    let (freed_claim, freed) = by_claim[1].clone();
    freed_and_taken(&cp, &claims, &addresses, freed_claim, &freed).await;

    // Dropping the control plane stops the provider (its lifeline, and the provider under it).
    let lifeline = cp.lifeline_pids();
    let provider =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", lifeline[3])).unwrap();
    assert_eq!(
        lifeline.len(),
        4,
        "etcd, kube-apiserver, the core, the IPAM provider"
    );
    assert!(
        !provider.trim().is_empty(),
        "the provider runs under its lifeline"
    );
    drop(cp);
    for pid in provider
        .split_whitespace()
        .chain(lifeline[3].to_string().split_whitespace())
    {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "process {pid} still runs after the control plane is dropped: {state}"
        );
    }
}

/// A fourth claim on the exhausted pool: the provider takes it (its ReleaseAddress finalizer),
/// fails to allocate (its log says `no address available`), and reports nothing on the claim:
/// no addressRef, no condition.
async fn exhausted(cp: &LocalControlPlane, claims: &Api<DynamicObject>, ns: &str) {
    claims
        .create(&PostParams::default(), &claim("m-3", "nodes"))
        .await
        .unwrap();
    let log = cp.ipam_in_cluster().unwrap().log_path().to_owned();
    let wanted = format!("IPAddressClaim=\"{ns}/m-3\"");
    let line = eventually_explained(
        "the provider failing to allocate for m-3",
        WAIT,
        async || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.contains("no address available") && l.contains(&wanted))
                .map(str::to_owned)
        },
        async || provider_log(cp),
    )
    .await;
    assert!(
        line.contains(
            "failed to create or patch address: failed to find free address: no address available"
        ),
        "{line}"
    );
    let pending = claims.get("m-3").await.unwrap();
    let finalizers = pending.metadata.finalizers.clone().unwrap_or_default();
    assert!(
        finalizers.contains(&"ipam.cluster.x-k8s.io/ReleaseAddress".to_owned()),
        "{finalizers:?}"
    );
    let status = &pending.data["status"];
    assert!(
        status["addressRef"]["name"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "no address: {status}"
    );
    assert!(
        status["conditions"].as_array().is_none_or(Vec::is_empty),
        "the provider sets no condition on an unsatisfiable claim: {status}"
    );
}

/// Deleting claim `name` frees its address `freed` (the provider lifts its finalizers and
/// deletes the IPAddress), and the claim waiting on the exhausted pool, m-3, gets it.
async fn freed_and_taken(
    cp: &LocalControlPlane,
    claims: &Api<DynamicObject>,
    addresses: &Api<DynamicObject>,
    name: &str,
    freed: &str,
) {
    claims.delete(name, &DeleteParams::default()).await.unwrap();
    eventually_explained(
        "the deleted claim and its IPAddress gone",
        WAIT,
        async || {
            let gone = |r: Result<DynamicObject, kube::Error>| {
                matches!(r, Err(kube::Error::Api(e)) if e.code == 404)
            };
            (gone(claims.get(name).await) && gone(addresses.get(name).await)).then_some(())
        },
        async || provider_log(cp),
    )
    .await;
    let (address, _, _) = bound(cp, claims, addresses, "m-3").await;
    assert_eq!(address, freed, "the waiting claim gets the freed address");
}

async fn wait_pool_free(cp: &LocalControlPlane, pools: &Api<DynamicObject>, free: i64) {
    eventually_explained(
        &format!("pool nodes reporting {free} free"),
        WAIT,
        async || {
            let status = pools.get("nodes").await.ok()?.data["status"]["ipAddresses"].clone();
            (status["free"].as_i64()? == free && status["total"].as_i64()? == 3).then_some(())
        },
        async || provider_log(cp),
    )
    .await;
}

/// A TalosConfigTemplate whose patch references per-machine values, in a strategic merge
/// patch (a block scalar) and in a JSON patch's value (a plain scalar, which clusterctl parses
/// and writes out again), beside a clusterctl variable.
const TEMPLATE: &str = r#"apiVersion: bootstrap.cluster.x-k8s.io/v1alpha3
kind: TalosConfigTemplate
metadata:
  name: ${CLUSTER_NAME}-workers
spec:
  template:
    spec:
      generateType: worker
      strategicPatches:
        - |
          machine:
            network:
              hostname: ((machine.name))
              interfaces:
                - interface: eth0
                  addresses: [((ipam.nodes.address))/((ipam.nodes.prefix))]
                  routes:
                    - network: 0.0.0.0/0
                      gateway: (( ipam.nodes.gateway ))
            nodeLabels:
              zone: zone-((machine.failureDomain))
              infra: ((infrastructureMachine.name))
          ---
          apiVersion: v1alpha1
          kind: HostnameConfig
          auto: off
          hostname: ((cluster.name))-((machine.name))
      configPatches:
        - op: add
          path: /machine/nodeLabels/cluster
          value: ((cluster.name))
"#;

/// The value syntax passes through the real clusterctl's variable substitution untouched
/// (drone/envsubst acts on `$` only), while `${CLUSTER_NAME}` beside it is substituted: the
/// generated template carries the patch exactly as written, and it substitutes as one.
#[test]
fn per_machine_values_pass_through_clusterctl_untouched() {
    use machineconfig::values::{MachineValues, Pool, PoolAddress, substitute};

    let home = tempfile::tempdir().unwrap();
    let from = home.path().join("cluster-template.yaml");
    std::fs::write(&from, TEMPLATE).unwrap();
    let clusterctl = testkit::tools::locate(testkit::tools::Tool::Clusterctl).unwrap();
    let args = [
        "generate",
        "cluster",
        "ipam-demo",
        "--from",
        from.to_str().unwrap(),
        "--target-namespace",
        "default",
    ];
    let home_dir = home.path().to_str().unwrap();
    let env = [
        ("HOME", home_dir),
        ("CLUSTERCTL_DISABLE_VERSIONCHECK", "true"),
    ];
    let ran = testkit::process::run(&clusterctl, &args, &env, "").unwrap();
    assert!(ran.ok, "clusterctl generate cluster: {}", ran.output);

    let generated: Value = serde_yaml_ng::from_str(&ran.stdout).unwrap();
    let written: Value = serde_yaml_ng::from_str(TEMPLATE).unwrap();
    assert_eq!(generated["metadata"]["name"], "ipam-demo-workers");
    let spec = |v: &Value| v["spec"]["template"]["spec"].clone();
    assert_eq!(
        spec(&generated)["strategicPatches"],
        spec(&written)["strategicPatches"],
        "the strategic patch is byte for byte as written"
    );
    assert_eq!(
        spec(&generated)["configPatches"],
        spec(&written)["configPatches"]
    );

    let patch = spec(&generated)["strategicPatches"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut patch = machineconfig::Patch::parse(&patch).unwrap();
    let values = MachineValues {
        machine_name: Some("ipam-demo-workers-x7k2p".into()),
        infrastructure_machine_name: Some("ipam-demo-workers-infra-9qz".into()),
        failure_domain: Some("fd-1".into()),
        cluster_name: Some("ipam-demo".into()),
        pools: [(
            "nodes".to_owned(),
            Pool::Bound(PoolAddress::new("127.10.0.10", 24, Some("127.10.0.1")).unwrap()),
        )]
        .into(),
    };
    substitute(&mut patch, &values).unwrap();
    let machineconfig::Patch::Strategic(docs) = patch else {
        panic!("a strategic merge patch")
    };
    assert_eq!(
        docs[0]["machine"]["network"]["interfaces"][0]["addresses"][0],
        "127.10.0.10/24"
    );
    assert_eq!(docs[1]["hostname"], "ipam-demo-ipam-demo-workers-x7k2p");
}
