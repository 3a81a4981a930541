use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, LocalControlPlane, poll_until, retry_port_race};

/// Prefix of the webhook configurations registered for the manager.
const WEBHOOK_PREFIX: &str = "capi-";

/// The real Cluster API core manager (sigs.k8s.io/cluster-api), running against a
/// [`LocalControlPlane`] with a serving certificate from that control plane's CA. Its admission
/// webhooks are registered with the API server, so Cluster API objects are defaulted and
/// validated exactly as in a real management cluster.
#[derive(Debug)]
pub struct ClusterApiManager {
    process: ManagedProcess,
    webhook_port: u16,
    health_port: u16,
}

impl ClusterApiManager {
    pub(crate) async fn start(cp: &LocalControlPlane) -> Result<Self, Error> {
        let binary = locate(Tool::ClusterApi)?;
        let config = locate(Tool::ClusterApiConfig)?;
        let dir = cp.dir().join("cluster-api");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let serving = cp
            .ca()
            .serving("cluster-api-webhook", &["127.0.0.1", "localhost"])?;
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem)
            .and_then(|()| std::fs::write(dir.join("tls.key"), &serving.key_pem))
            .map_err(Error::io("writing the webhook serving certificate"))?;

        let manager = retry_port_race(|| Self::start_once(cp, &binary, &dir)).await?;
        manager
            .register_webhooks(
                &cp.client().await?,
                &config.join("webhook/manifests.yaml"),
                cp,
            )
            .await?;
        Ok(manager)
    }

    async fn start_once(cp: &LocalControlPlane, binary: &Path, dir: &Path) -> Result<Self, Error> {
        let webhook_port = free_port()?;
        let health_port = free_port()?;
        let diagnostics_port = free_port()?;
        let args = vec![
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--webhook-port={webhook_port}"),
            format!("--webhook-cert-dir={}", dir.display()),
            format!("--health-addr=127.0.0.1:{health_port}"),
            format!("--diagnostics-address=127.0.0.1:{diagnostics_port}"),
            "--insecure-diagnostics=true".into(),
            "--leader-elect=false".into(),
            "--feature-gates=ClusterTopology=true".into(),
        ];
        let log = cp.dir().join(format!("cluster-api-{webhook_port}.log"));
        let process = ManagedProcess::spawn("cluster-api", binary, &args, &log, None)?;
        let manager = ClusterApiManager {
            process,
            webhook_port,
            health_port,
        };
        manager.wait_ready().await?;
        Ok(manager)
    }

    /// The manager's /readyz includes its webhook server, so this also waits for webhooks.
    async fn wait_ready(&self) -> Result<(), Error> {
        poll_until(
            "Cluster API manager /readyz",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                self.check_running()?;
                Ok(http_get_ok(self.health_port, "/readyz").await.then_some(()))
            },
        )
        .await
    }

    /// Register Cluster API's webhooks (config/webhook/manifests.yaml) with the API server,
    /// pointing at this manager on loopback instead of at an in-cluster Service.
    async fn register_webhooks(
        &self,
        client: &Client,
        manifests: &Path,
        cp: &LocalControlPlane,
    ) -> Result<(), Error> {
        let text = std::fs::read_to_string(manifests)
            .map_err(Error::io(format!("reading {}", manifests.display())))?;
        let ca_bundle = STANDARD.encode(cp.ca().cert_pem());
        let params = PatchParams::apply("talos-capi-testkit").force();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let bad = |e: &dyn std::fmt::Display| Error::Manifest {
                path: manifests.to_path_buf(),
                message: e.to_string(),
            };
            let mut value = Value::deserialize(doc).map_err(|e| bad(&e))?;
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let name = format!(
                "{WEBHOOK_PREFIX}{}",
                value["metadata"]["name"].as_str().unwrap_or_default()
            );
            value["metadata"] = json!({ "name": name });
            if let Some(hooks) = value["webhooks"].as_array_mut() {
                for hook in hooks {
                    let path = hook["clientConfig"]["service"]["path"]
                        .as_str()
                        .unwrap_or("/")
                        .to_owned();
                    hook["clientConfig"] = json!({
                        "url": format!("https://127.0.0.1:{}{path}", self.webhook_port),
                        "caBundle": ca_bundle,
                    });
                }
            }
            match kind.as_str() {
                "MutatingWebhookConfiguration" => {
                    let obj: MutatingWebhookConfiguration =
                        serde_json::from_value(value).map_err(|e| bad(&e))?;
                    Api::<MutatingWebhookConfiguration>::all(client.clone())
                        .patch(&name, &params, &Patch::Apply(&obj))
                        .await?;
                }
                "ValidatingWebhookConfiguration" => {
                    let obj: ValidatingWebhookConfiguration =
                        serde_json::from_value(value).map_err(|e| bad(&e))?;
                    Api::<ValidatingWebhookConfiguration>::all(client.clone())
                        .patch(&name, &params, &Patch::Apply(&obj))
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn check_running(&self) -> Result<(), Error> {
        self.process.check_running()
    }

    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }
}

/// A minimal HTTP/1.0 GET on loopback; true on a 200 answer.
async fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let n = stream.read(&mut head).await.unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).contains(" 200")
}
