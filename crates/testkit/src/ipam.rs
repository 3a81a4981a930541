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

use crate::capi::{Manager, ManagerSpec};
use crate::tools::{Tool, locate};
use crate::{Error, LocalControlPlane};

/// Prefix of the webhook configurations registered for the provider (as its clusterctl
/// installation names them, after its namePrefix).
const WEBHOOK_PREFIX: &str = "capi-ipam-in-cluster-";

/// The in-cluster IPAM provider's manager. Dropping it stops the process.
#[derive(Debug)]
pub struct IpamInCluster(Manager);

const PROVIDER: ManagerSpec = ManagerSpec {
    name: "ipam-in-cluster",
    binary: Tool::IpamInCluster,
    config: Tool::IpamInClusterConfig,
    webhook_prefix: WEBHOOK_PREFIX,
    health_flag: "--health-probe-bind-address",
    extra_args: &[],
    // Its /readyz is a bare ping, unlike the Cluster API core's.
    readyz_has_webhooks: false,
};

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
        Manager::start(cp, &PROVIDER).await.map(Self)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.process.pid()
    }

    /// `Err` with the log's tail if the provider has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.0.process.check_running()
    }

    /// Where the provider logs.
    pub fn log_path(&self) -> &Path {
        self.0.process.log_path()
    }

    pub fn webhook_port(&self) -> u16 {
        self.0.webhook_port
    }
}
