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
pub struct ClusterApiManager(Manager);

const CORE: ManagerSpec = ManagerSpec {
    name: "cluster-api",
    binary: Tool::ClusterApi,
    config: Tool::ClusterApiConfig,
    webhook_prefix: WEBHOOK_PREFIX,
    health_flag: "--health-addr",
    extra_args: &["--feature-gates=ClusterTopology=true"],
    readyz_has_webhooks: true,
};

impl ClusterApiManager {
    pub(crate) async fn start(cp: &LocalControlPlane) -> Result<Self, Error> {
        Manager::start(cp, &CORE).await.map(Self)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.process.pid()
    }

    /// `Err` with the log's tail if the manager has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.0.process.check_running()
    }

    pub fn webhook_port(&self) -> u16 {
        self.0.webhook_port
    }

    /// The manager's log (klog text, one line per record).
    pub fn log_path(&self) -> &Path {
        self.0.process.log_path()
    }
}

/// How to run one controller-runtime manager of the Cluster API family (the core, a provider)
/// beside a [`LocalControlPlane`].
#[derive(Debug)]
pub(crate) struct ManagerSpec {
    /// Names its directory, serving certificate, process and log.
    pub name: &'static str,
    pub binary: Tool,
    /// Its config directory: webhook/manifests.yaml and crd/patches.
    pub config: Tool,
    /// Prefix of its webhook configurations (as its clusterctl installation names them).
    pub webhook_prefix: &'static str,
    /// The flag of its health probe address.
    pub health_flag: &'static str,
    pub extra_args: &'static [&'static str],
    /// Its /readyz includes the webhook server (the core's does); otherwise the webhook port
    /// is waited for as well: webhooks registered before it listens would refuse every write.
    pub readyz_has_webhooks: bool,
}

/// A running manager, with its webhooks served with a certificate of the control plane's CA and
/// registered with the API server (admission and conversion), pointing at it on loopback.
/// Dropping it stops the process.
#[derive(Debug)]
pub(crate) struct Manager {
    pub process: ManagedProcess,
    pub webhook_port: u16,
    health_port: u16,
}

impl Manager {
    pub(crate) async fn start(cp: &LocalControlPlane, spec: &ManagerSpec) -> Result<Self, Error> {
        let binary = locate(spec.binary)?;
        let config = locate(spec.config)?;
        let dir = cp.dir().join(spec.name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let serving = cp.ca().serving(
            &format!("{}-webhook", spec.name),
            &["127.0.0.1", "localhost"],
        )?;
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem)
            .and_then(|()| std::fs::write(dir.join("tls.key"), &serving.key_pem))
            .map_err(Error::io(format!(
                "writing the webhook serving certificate of {}",
                spec.name
            )))?;

        let manager = retry_port_race(|| Self::start_once(cp, spec, &binary, &dir)).await?;
        let client = cp.client().await?;
        let port = manager.webhook_port;
        let manifests = config.join("webhook/manifests.yaml");
        register_webhooks(&client, &manifests, cp, port, spec.webhook_prefix).await?;
        wire_conversion(&client, &config.join("crd/patches"), cp, port).await?;
        Ok(manager)
    }

    async fn start_once(
        cp: &LocalControlPlane,
        spec: &ManagerSpec,
        binary: &Path,
        dir: &Path,
    ) -> Result<Self, Error> {
        let webhook_port = free_port()?;
        let health_port = free_port()?;
        let diagnostics_port = free_port()?;
        let mut args = vec![
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--webhook-port={webhook_port}"),
            format!("--webhook-cert-dir={}", dir.display()),
            format!("{}=127.0.0.1:{health_port}", spec.health_flag),
            format!("--diagnostics-address=127.0.0.1:{diagnostics_port}"),
            "--insecure-diagnostics=true".into(),
            "--leader-elect=false".into(),
        ];
        args.extend(spec.extra_args.iter().map(|a| (*a).to_owned()));
        let log = cp.dir().join(format!("{}-{webhook_port}.log", spec.name));
        let process =
            ManagedProcess::spawn_with_env(spec.name, (binary, &args), &LIGHT_GC, &log, None)?;
        let manager = Manager {
            process,
            webhook_port,
            health_port,
        };
        manager.wait_ready(spec).await?;
        Ok(manager)
    }

    async fn wait_ready(&self, spec: &ManagerSpec) -> Result<(), Error> {
        let (health_port, webhook_port) = (self.health_port, self.webhook_port);
        poll_until(
            &format!("{} /readyz", spec.name),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async move {
                self.process.check_running()?;
                let ready = http_get_ok(health_port, "/readyz").await
                    && (spec.readyz_has_webhooks
                        || tokio::net::TcpStream::connect(("127.0.0.1", webhook_port))
                            .await
                            .is_ok());
                Ok(ready.then_some(()))
            },
        )
        .await
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
