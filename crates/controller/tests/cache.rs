//! The shared caches on the local control plane with the real Cluster API core: a change
//! reaches the store before it reaches the controllers subscribed to it, so the reconcile it
//! triggers reads it (docs/architecture.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use api::capi::Machine;
use common::*;
use controller::{Context, Options};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

/// A resourceVersion as etcd issues them (a revision number).
fn revision(m: &Machine) -> u64 {
    m.resource_version().and_then(|v| v.parse().ok()).unwrap()
}

#[tokio::test]
async fn every_change_reaches_the_store_before_its_subscribers() {
    let cp = testkit::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = testkit::unique_namespace(&client, "cache").await.unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Options {
            namespace: Some(ns.clone()),
            ..Options::default()
        },
    ));
    let mut delivered = ctx.caches.subscribe_machines().unwrap();
    let watches = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        async move {
            ctx.caches
                .run(ctx.client.clone(), ctx.options.clone())
                .await
        }
    });
    cluster(&client, &ns, "c", false).await;
    let spec = json!({"generateType": "worker", "talosVersion": "v1.13"});
    machine(&client, &ns, "c", "c-0", spec, false).await;

    // Cluster API keeps writing the Machine (finalizer, labels, status): each version this
    // subscriber gets, the store already holds, or a later one.
    let mut checked = 0;
    while checked < 3 {
        let m = tokio::time::timeout(WAIT, delivered.next())
            .await
            .expect("a Machine delivered")
            .expect("the watch runs");
        let stored = ctx.caches.machine(&ns, &m.name_any()).unwrap();
        let stored = stored.expect("the store holds a delivered Machine");
        assert!(revision(&stored) >= revision(&m), "the store is not behind");
        checked += 1;
    }

    // Deleted: once its deletion is delivered, the store no longer has it.
    Api::<Machine>::namespaced(client.clone(), &ns)
        .delete("c-0", &Default::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let m = delivered.next().await.expect("the watch runs");
            let stored = ctx.caches.machine(&ns, &m.name_any()).unwrap();
            match stored {
                Some(s) => assert!(revision(&s) >= revision(&m), "the store is not behind"),
                None => return,
            }
        }
    })
    .await
    .expect("the deletion delivered");
    watches.abort();
}
