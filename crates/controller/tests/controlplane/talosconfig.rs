//! The talosconfig's endpoints, written by every control-plane config's reconcile without a
//! conflict.

use super::*;

/// The API server's replies to the requests of a client, recorded for requests whose path ends
/// with `suffix` (one object's): method and status code, in order. A tower layer for
/// [`kube::client::ClientBuilder::with_layer`].
#[derive(Clone, Debug)]
pub struct Replies {
    suffix: String,
    seen: Arc<std::sync::Mutex<Vec<(http::Method, u16)>>>,
}

impl Replies {
    pub fn to(suffix: &str) -> Self {
        Replies {
            suffix: suffix.to_owned(),
            seen: Arc::default(),
        }
    }

    /// Every reply recorded so far.
    pub fn seen(&self) -> Vec<(http::Method, u16)> {
        self.seen.lock().unwrap().clone()
    }

    /// A client of `cp` whose replies this records.
    pub fn client(&self, cp: &testkit::LocalControlPlane) -> kube::Client {
        kube::client::ClientBuilder::try_from(cp.kube_config())
            .unwrap()
            .with_layer(self)
            .build()
    }
}

impl<S> tower::Layer<S> for Replies {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            replies: self.clone(),
        }
    }
}

/// See [`Replies`].
#[derive(Clone, Debug)]
pub struct Recorded<S> {
    inner: S,
    replies: Replies,
}

impl<S, B, R> tower::Service<http::Request<B>> for Recorded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watched = request.uri().path().ends_with(&self.replies.suffix);
        let method = request.method().clone();
        let seen = Arc::clone(&self.replies.seen);
        let call = self.inner.call(request);
        Box::pin(async move {
            let reply = call.await;
            if let (true, Ok(r)) = (watched, &reply) {
                seen.lock().unwrap().push((method, r.status().as_u16()));
            }
            reply
        })
    }
}

/// The reconciles of a cluster's control-plane configs all update the talosconfig's endpoints
/// as the machines get their addresses: they take turns and never conflict with one another
/// (no 409 from the API server on `<cluster>-talosconfig`), and the endpoints end up the
/// machines' addresses.
#[tokio::test]
async fn a_three_machine_bring_up_writes_the_talosconfig_endpoints_without_a_conflict() {
    let cp = testkit::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    testkit::install_crds(&client, &api::all_crds())
        .await
        .unwrap();
    let ns = testkit::unique_namespace(&client, "cp-endpoints")
        .await
        .unwrap();
    let replies = Replies::to("/secrets/e-talosconfig");
    let _controller = start_controller(&replies.client(cp), &ns);
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "e", 3).await;
    settled(&client, &ns, "e", &infra.sim, 3).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let endpoints = async || -> Option<Vec<String>> {
        let secret = secrets.get("e-talosconfig").await.ok()?;
        let text = String::from_utf8(secret.data?.get("talosconfig")?.0.clone()).ok()?;
        let config = machineconfig::talosconfig::TalosConfig::from_yaml(&text).ok()?;
        Some(config.contexts.get("e")?.endpoints.clone())
    };
    let addresses = testkit::eventually(
        "the talosconfig's endpoints are the machines' addresses",
        WAIT,
        async || {
            let mut addresses: Vec<String> = machines(&client, &ns)
                .await
                .iter()
                .flat_map(|m| m.addresses())
                .map(|a| a.address.clone())
                .collect();
            addresses.sort();
            (addresses.len() == 3 && endpoints().await? == addresses).then_some(addresses)
        },
    )
    .await;
    // The Cluster annotation pins them.
    Api::<api::capi::Cluster>::namespaced(client.clone(), &ns)
        .patch(
            "e",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "talos.cluster.x-k8s.io/talosconfig-endpoints": "192.168.1.41, 192.168.1.40"
            }}})),
        )
        .await
        .unwrap();
    testkit::eventually("the pinned endpoints", WAIT, async || {
        (endpoints().await? == ["192.168.1.40", "192.168.1.41"]).then_some(())
    })
    .await;
    let seen = replies.seen();
    let writes = seen.iter().filter(|(m, _)| m != http::Method::GET).count();
    let conflicts = seen.iter().filter(|(_, code)| *code == 409).count();
    eprintln!(
        "e-talosconfig {addresses:?}, then pinned: {writes} writes, {conflicts} conflicts (409) in {} requests",
        seen.len()
    );
    assert!(writes > 0, "the endpoints were written: {seen:?}");
    assert_eq!(conflicts, 0, "no write conflicted: {seen:?}");
}
