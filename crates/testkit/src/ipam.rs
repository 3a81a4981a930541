//! The real Cluster API in-cluster IPAM provider (sigs.k8s.io/cluster-api-ipam-provider-in-cluster),
//! running against a [`LocalControlPlane`]: it allocates an IPAddress from an InClusterIPPool
//! (or GlobalInClusterIPPool) for each IPAddressClaim that references one, and frees it when the
//! claim goes.
//!
//! Its pool CRDs are installed, and its admission webhooks (pool defaulting and validation) and
//! conversion webhook (pools' v1alpha1 ↔ v1alpha2) are wired to it at 127.0.0.1, as its
//! clusterctl installation wires them to its Service. Its probe and diagnostics endpoints bind
//! 127.0.0.1; its webhook server, like the Cluster API core's, binds every interface: the
//! binary has no flag for controller-runtime's webhook host. It serves TLS with a certificate of
//! the control plane's CA, and the API server (the only client) reaches it on loopback. It speaks the `ipam.cluster.x-k8s.io/v1beta2`
//! API of IPAddressClaim and IPAddress, which the Cluster API core's CRDs serve (as their storage
//! version on both lines the project tests, v1.12 and v1.14).

use std::path::Path;
use std::time::Duration;

use crate::capi::{http_get_ok, register_webhooks, wire_conversion};
use crate::process::{LIGHT_GC, ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, LocalControlPlane, poll_until, retry_port_race};

/// Prefix of the webhook configurations registered for the provider (as its clusterctl
/// installation names them, after its namePrefix).
const WEBHOOK_PREFIX: &str = "capi-ipam-in-cluster-";

/// The in-cluster IPAM provider's manager. Dropping it stops the process.
#[derive(Debug)]
pub struct IpamInCluster {
    process: ManagedProcess,
    webhook_port: u16,
}

impl IpamInCluster {
    /// Install the provider's pool CRDs on `cp` (done by [`crate::Builder::ipam_in_cluster`]
    /// before the control plane's managers start).
    pub(crate) async fn install_crds(cp: &LocalControlPlane) -> Result<(), Error> {
        let config = locate(Tool::IpamInClusterConfig)?;
        cp.install_crds(&config.join("crd/bases")).await
    }

    /// Start the provider against `cp` (whose Cluster API CRDs and the provider's are installed)
    /// and wire its webhooks.
    pub(crate) async fn start(cp: &LocalControlPlane) -> Result<Self, Error> {
        let binary = locate(Tool::IpamInCluster)?;
        let config = locate(Tool::IpamInClusterConfig)?;
        let dir = cp.dir().join("ipam-in-cluster");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let serving = cp
            .ca()
            .serving("ipam-in-cluster-webhook", &["127.0.0.1", "localhost"])?;
        std::fs::write(dir.join("tls.crt"), &serving.cert_pem)
            .and_then(|()| std::fs::write(dir.join("tls.key"), &serving.key_pem))
            .map_err(Error::io(
                "writing the IPAM provider's webhook serving certificate",
            ))?;

        let provider = retry_port_race(|| Self::start_once(cp, &binary, &dir)).await?;
        let client = cp.client().await?;
        register_webhooks(
            &client,
            &config.join("webhook/manifests.yaml"),
            cp,
            provider.webhook_port,
            WEBHOOK_PREFIX,
        )
        .await?;
        wire_conversion(
            &client,
            &config.join("crd/patches"),
            cp,
            provider.webhook_port,
        )
        .await?;
        Ok(provider)
    }

    async fn start_once(cp: &LocalControlPlane, binary: &Path, dir: &Path) -> Result<Self, Error> {
        let webhook_port = free_port()?;
        let health_port = free_port()?;
        let diagnostics_port = free_port()?;
        let args = vec![
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--webhook-port={webhook_port}"),
            format!("--webhook-cert-dir={}", dir.display()),
            format!("--health-probe-bind-address=127.0.0.1:{health_port}"),
            format!("--diagnostics-address=127.0.0.1:{diagnostics_port}"),
            "--insecure-diagnostics=true".into(),
            "--leader-elect=false".into(),
        ];
        let log = cp.dir().join(format!("ipam-in-cluster-{webhook_port}.log"));
        let process = ManagedProcess::spawn_with_env(
            "ipam-in-cluster",
            (binary, &args),
            &LIGHT_GC,
            &log,
            None,
        )?;
        let provider = IpamInCluster {
            process,
            webhook_port,
        };
        provider.wait_ready(health_port).await?;
        Ok(provider)
    }

    /// Its /readyz is a bare ping (it does not include the webhook server, unlike the Cluster
    /// API core's), so the webhook port is waited for as well: webhooks registered before it
    /// listens would refuse every pool write.
    async fn wait_ready(&self, health_port: u16) -> Result<(), Error> {
        let webhook_port = self.webhook_port;
        poll_until(
            "in-cluster IPAM provider /readyz and webhook server",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async move {
                self.check_running()?;
                let ready = http_get_ok(health_port, "/readyz").await
                    && tokio::net::TcpStream::connect(("127.0.0.1", webhook_port))
                        .await
                        .is_ok();
                Ok(ready.then_some(()))
            },
        )
        .await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `Err` with the log's tail if the provider has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.process.check_running()
    }

    /// Where the provider logs.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }
}
