use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{LIGHT_GC, ManagedProcess, free_port};
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
        let client = cp.client().await?;
        register_webhooks(
            &client,
            &config.join("webhook/manifests.yaml"),
            cp,
            manager.webhook_port,
            WEBHOOK_PREFIX,
        )
        .await?;
        wire_conversion(
            &client,
            &config.join("crd/patches"),
            cp,
            manager.webhook_port,
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
        let process =
            ManagedProcess::spawn_with_env("cluster-api", (binary, &args), &LIGHT_GC, &log, None)?;
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

/// Register a manager's webhooks (its config/webhook/manifests.yaml) with the API server,
/// pointing at the manager on loopback port `port` instead of at an in-cluster Service, its
/// configurations named with `prefix` (upstream providers all name theirs alike).
pub(crate) async fn register_webhooks(
    client: &Client,
    manifests: &Path,
    cp: &LocalControlPlane,
    port: u16,
    prefix: &str,
) -> Result<(), Error> {
    let text = std::fs::read_to_string(manifests)
        .map_err(Error::io(format!("reading {}", manifests.display())))?;
    let ca_bundle = STANDARD.encode(cp.ca().cert_pem());
    let params = PatchParams::apply("talos-capi-testkit").force();
    let bad = |e: &dyn std::fmt::Display| Error::Manifest {
        path: manifests.to_path_buf(),
        message: e.to_string(),
    };
    // Parsed before the first await: the YAML deserializer is not Send.
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| bad(&e))?;
    for mut value in docs {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = format!(
            "{prefix}{}",
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
                    "url": format!("https://127.0.0.1:{}{path}", port),
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

/// Point the conversion of every CRD named in a provider's `crd/patches/webhook_in_*.yaml` (the
/// kustomize patches that upstream applies at install time) at that provider's `/convert`
/// endpoint on loopback port `port`, so objects convert between the CRDs' versions as in a real
/// installation. A provider without these patches (Cluster API v1.10 serves one version) has
/// nothing to wire.
pub(crate) async fn wire_conversion(
    client: &Client,
    patches: &Path,
    cp: &LocalControlPlane,
    port: u16,
) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(patches) else {
        return Ok(());
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("webhook_in_") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    let ca_bundle = STANDARD.encode(cp.ca().cert_pem());
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let patch: Value = serde_yaml_ng::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (Some(name), Some(webhook)) = (
            patch["metadata"]["name"].as_str(),
            patch["spec"]["conversion"]["webhook"].as_object(),
        ) else {
            continue;
        };
        let service_path = webhook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("/convert");
        let review_versions = webhook
            .get("conversionReviewVersions")
            .cloned()
            .unwrap_or_else(|| json!(["v1"]));
        let conversion = json!({"spec": {"conversion": {
            "strategy": "Webhook",
            "webhook": {
                "conversionReviewVersions": review_versions,
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}{service_path}"),
                    "caBundle": ca_bundle,
                },
            },
        }}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&conversion))
            .await?;
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET on loopback; true on a 200 answer.
pub(crate) async fn http_get_ok(port: u16, path: &str) -> bool {
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
