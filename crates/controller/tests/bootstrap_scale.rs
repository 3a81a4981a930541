//! A hundred TalosConfigs of one cluster at once, with the real Cluster API core owning them.
//!
//! A binary of its own, so its own local control plane and Cluster API core. A hundred Machines
//! keep the core busy for a minute or more; on a loaded machine its Machine reconciles then fail
//! (their status patches time out) and each failure doubles that Machine's retry delay. A test
//! sharing the core had its Machine left unowned for over 300 s that way (CI, twice).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::time::Duration;

use api::bootstrap::v1alpha3::TalosConfig;
use common::*;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::json;

#[tokio::test]
async fn a_hundred_configs_of_one_cluster_create_exactly_one_bundle() {
    let (client, ns, _controller) = setup("bootstrap-race").await;
    cluster(&client, &ns, "race", false).await;
    let n = 100;
    join_all((0..n).map(|i| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            machine(
                &client,
                &ns,
                "race",
                &format!("race-{i}"),
                json!({"generateType": "worker", "talosVersion": "v1.13"}),
                false,
            )
            .await;
        }
    }))
    .await;
    let api: Api<TalosConfig> = Api::namespaced(client.clone(), &ns);
    testkit::eventually(
        "all 100 TalosConfigs ready",
        Duration::from_secs(240),
        async || {
            let ready = api
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.ready) == Some(true))
                .count();
            (ready == n).then_some(())
        },
    )
    .await;
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let all = secrets_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let bundles: Vec<_> = all
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some("race-talos"))
        .collect();
    assert_eq!(bundles.len(), 1);
    // Every machine's config carries that one bundle's token.
    let token = {
        let data = bundles[0].data.clone().unwrap_or_default();
        let bundle = machineconfig::SecretsBundle::from_yaml(
            &String::from_utf8(data["bundle"].0.clone()).unwrap(),
        )
        .unwrap();
        bundle.trustdinfo.token
    };
    for i in [0, 42, 99] {
        let (_, docs) = secret_value(&client, &ns, &format!("race-{i}-bootstrap-data")).await;
        assert_eq!(docs[0]["machine"]["token"], json!(token));
    }
}
