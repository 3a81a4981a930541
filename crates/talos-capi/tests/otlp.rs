//! Builds with the `otlp` feature (`make unit` runs this with `--features otlp`): the manager
//! exports its tracing spans over OTLP/gRPC. A collector made of OpenTelemetry's own protocol
//! definitions receives them from a manager process reconciling on a local control plane.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;
use testkit::process::{ManagedProcess, free_port};
use testkit::tools::repo_root;
use testkit::{LocalControlPlane, apply_manifest, unique_namespace};

/// Span names received, with the service.name they came from.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    seen.push((service.clone(), span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn the_manager_exports_its_reconcile_spans_over_otlp() {
    let collector = Collector::default();
    let port = free_port().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_shutdown(([127, 0, 0, 1], port).into(), async {
                let _ = stopped.await;
            }),
    );

    // A control plane of its own, lighter than the shared one: Cluster API's CRDs without its
    // manager (a TalosConfig that no Machine owns is all there is to reconcile).
    let cp = LocalControlPlane::builder()
        .name("otlp")
        .cluster_api_crds()
        .crds(repo_root().join("config/crd/bases"))
        .start()
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = unique_namespace(&client, "otlp").await.unwrap();
    let config = json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
        "metadata": {"name": "traced"}, "spec": {"generateType": "worker"}
    });
    apply_manifest(&client, &ns, "otlp-test", &config)
        .await
        .unwrap();
    let args: Vec<String> = [
        "manager",
        "--namespace",
        &ns,
        "--metrics-bind-address",
        "0",
        "--health-probe-bind-address",
        "0",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--kubeconfig",
        cp.kubeconfig_path().to_str().unwrap(),
    ]
    .map(str::to_owned)
    .into();
    let log = cp.dir().join("manager.log");
    let manager = ManagedProcess::spawn(
        "talos-capi",
        Path::new(env!("CARGO_BIN_EXE_talos-capi")),
        &args,
        &log,
        None,
    )
    .unwrap();

    // The batch exporter sends every few seconds.
    testkit::eventually_explained(
        "a reconcile span exported",
        Duration::from_secs(60),
        async || {
            let seen = collector.0.lock().unwrap();
            seen.iter()
                .any(|(service, name)| service == "talos-capi" && name == "reconciling object")
                .then_some(())
        },
        async || {
            format!(
                "received {:?}; manager log:\n{}",
                collector.0.lock().unwrap(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
    )
    .await;
    manager.check_running().unwrap();
    drop(manager);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
