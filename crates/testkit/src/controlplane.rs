use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use crate::capi::ClusterApiManager;
use crate::etcd::Etcd;
use crate::ipam::IpamInCluster;
use crate::pki::Ca;
use crate::process::{LIGHT_GC, ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, crds, kubeconfig, poll_until, retry_port_race};

const AUDIT_LOG: &str = "audit.log";

/// How a [`LocalControlPlane`] is started.
#[derive(Debug, Default)]
pub struct Builder {
    name: Option<String>,
    dir: Option<PathBuf>,
    etcd: Option<(Arc<Etcd>, String)>,
    crd_dirs: Vec<PathBuf>,
    cluster_api_crds: bool,
    cluster_api_manager: bool,
    ipam_in_cluster: bool,
    audit_log: bool,
    ca: Option<Ca>,
    port: Option<u16>,
}

impl Builder {
    /// Context and cluster name in the kubeconfig (default `local`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Keep certificates, logs and the kubeconfig in `dir` instead of a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Store objects in an existing etcd under `prefix` instead of starting a new etcd.
    pub fn etcd(mut self, etcd: Arc<Etcd>, prefix: &str) -> Self {
        self.etcd = Some((etcd, prefix.to_owned()));
        self
    }

    /// Install the CRDs found in `dir` (YAML files) once the API server is ready.
    pub fn crds(mut self, dir: impl Into<PathBuf>) -> Self {
        self.crd_dirs.push(dir.into());
        self
    }

    /// Install the Cluster API core CRDs (and the test infrastructure provider's, see
    /// [`crate::infra`]).
    pub fn cluster_api_crds(mut self) -> Self {
        self.cluster_api_crds = true;
        self
    }

    /// Install the Cluster API core CRDs and run the Cluster API core manager.
    pub fn cluster_api(mut self) -> Self {
        self.cluster_api_crds = true;
        self.cluster_api_manager = true;
        self
    }

    /// Install the Cluster API core CRDs and the in-cluster IPAM provider's, and run the real
    /// in-cluster IPAM provider with its webhooks (see [`IpamInCluster`]). With
    /// [`Builder::cluster_api`], it starts after the core manager.
    pub fn ipam_in_cluster(mut self) -> Self {
        self.cluster_api_crds = true;
        self.ipam_in_cluster = true;
        self
    }

    /// Write an audit log of every request (Metadata level, JSON lines) to
    /// [`LocalControlPlane::audit_log_path`], e.g. to count a controller's API requests.
    pub fn audit_log(mut self) -> Self {
        self.audit_log = true;
        self
    }

    /// Serve with this CA (serving certificate, client CA) instead of a new one: e.g. a
    /// workload cluster's own Kubernetes CA, so that kubeconfigs issued from it work.
    pub fn ca(mut self, ca: Ca) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Listen on this port of 127.0.0.1 instead of a free one (e.g. a Cluster's endpoint).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub async fn start(self) -> Result<LocalControlPlane, Error> {
        LocalControlPlane::start(self).await
    }
}

/// Wall-clock time of each startup phase, for the README and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StartupTimes {
    pub etcd: Duration,
    pub apiserver: Duration,
    pub crds: Duration,
    pub cluster_api: Duration,
    pub ipam: Duration,
}

/// etcd + kube-apiserver (+ optionally the Cluster API core manager) on loopback, with its own
/// CA and admin client certificate. Dropping it stops every process it started.
#[derive(Debug)]
pub struct LocalControlPlane {
    // Field order is drop order: the managers go before the API server, which goes before etcd.
    ipam: Option<IpamInCluster>,
    cluster_api: Option<ClusterApiManager>,
    apiserver: ManagedProcess,
    etcd: Arc<Etcd>,
    ca: Ca,
    name: String,
    dir: PathBuf,
    url: String,
    kubeconfig: String,
    config: kube::Config,
    times: StartupTimes,
    /// What a restarted kube-apiserver needs again: the etcd prefix, the audit flag, and whether
    /// `dir` is temporary (removed when the first API server exits, so no restart).
    prefix: String,
    audit: bool,
    temporary: bool,
}

impl LocalControlPlane {
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn start(b: Builder) -> Result<Self, Error> {
        let name = b.name.unwrap_or_else(|| "local".to_owned());
        let (dir, temporary) = match b.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .map_err(Error::io(format!("creating {}", d.display())))?;
                (d, false)
            }
            None => (crate::temp_dir("talos-capi-cp-")?, true),
        };
        let mut times = StartupTimes::default();

        let started = Instant::now();
        let (etcd, prefix) = match b.etcd {
            Some(shared) => shared,
            None => {
                let etcd_dir = (!temporary).then_some(dir.as_path());
                (
                    Arc::new(Etcd::start(etcd_dir).await?),
                    "/registry".to_owned(),
                )
            }
        };
        times.etcd = started.elapsed();

        let started = Instant::now();
        let ca = match b.ca {
            Some(ca) => ca,
            None => Ca::new(&format!("{name}-ca"))?,
        };
        let binary = locate(Tool::KubeApiserver)?;
        let cleanup = temporary.then_some(dir.as_path());
        let (apiserver, url, kubeconfig, config) = retry_port_race(|| {
            start_apiserver(
                &binary,
                &dir,
                cleanup,
                &name,
                &ca,
                (&etcd, &prefix),
                (b.port, b.audit_log),
            )
        })
        .await?;
        times.apiserver = started.elapsed();

        let mut cp = LocalControlPlane {
            ipam: None,
            cluster_api: None,
            apiserver,
            etcd,
            ca,
            name,
            dir,
            url,
            kubeconfig,
            config,
            times,
            prefix,
            audit: b.audit_log,
            temporary,
        };

        cp.start_components(
            b.crd_dirs,
            b.cluster_api_crds,
            b.cluster_api_manager,
            b.ipam_in_cluster,
        )
        .await?;
        Ok(cp)
    }

    /// Once the API server is ready: the CRDs, then the managers (the Cluster API core, then the
    /// IPAM provider).
    async fn start_components(
        &mut self,
        mut crd_dirs: Vec<PathBuf>,
        cluster_api_crds: bool,
        cluster_api_manager: bool,
        ipam_in_cluster: bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        if cluster_api_crds {
            crd_dirs.push(locate(Tool::ClusterApiConfig)?.join("crd/bases"));
        }
        for crd_dir in &crd_dirs {
            self.install_crds(crd_dir).await?;
        }
        if cluster_api_crds {
            let client = self.client().await?;
            crds::install_crds(&client, &crate::infra::infrastructure_crds()?).await?;
        }
        if ipam_in_cluster {
            IpamInCluster::install_crds(self).await?;
        }
        self.times.crds = started.elapsed();

        if cluster_api_manager {
            let started = Instant::now();
            self.cluster_api = Some(ClusterApiManager::start(self).await?);
            self.times.cluster_api = started.elapsed();
        }
        if ipam_in_cluster {
            let started = Instant::now();
            self.ipam = Some(IpamInCluster::start(self).await?);
            self.times.ipam = started.elapsed();
        }
        Ok(())
    }

    /// Stop kube-apiserver (SIGTERM), leave it down for `down`, and start it again on the same port, CA and
    /// etcd: a management API server restart. Every connection and watch is cut, and requests
    /// are refused while it is down. Clients reconnect on their own; the kubeconfig file is
    /// rewritten (same server, a fresh admin certificate from the same CA). Only for a control
    /// plane started with [`Builder::dir`].
    pub async fn restart_apiserver(&mut self, down: Duration) -> Result<(), Error> {
        if self.temporary {
            return Err(Error::Kubeconfig(
                "restart_apiserver needs a control plane started with Builder::dir".into(),
            ));
        }
        self.apiserver.stop();
        tokio::time::sleep(down).await;
        let port = self.url.rsplit(':').next().and_then(|p| p.parse().ok());
        let binary = locate(Tool::KubeApiserver)?;
        let (apiserver, _, kubeconfig, config) = start_apiserver(
            &binary,
            &self.dir,
            None,
            &self.name,
            &self.ca,
            (&self.etcd, &self.prefix),
            (port, self.audit),
        )
        .await?;
        self.apiserver = apiserver;
        self.kubeconfig = kubeconfig;
        self.config = config;
        Ok(())
    }

    /// A new client for this API server. Each caller gets its own client so that tests running
    /// on different Tokio runtimes never share connections.
    pub async fn client(&self) -> Result<Client, Error> {
        Ok(Client::try_from(self.config.clone())?)
    }

    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// The admin kubeconfig as YAML (embedded certificates).
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig
    }

    /// The audit log of a control plane started with [`Builder::audit_log`].
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join(AUDIT_LOG)
    }

    /// Where the admin kubeconfig is written.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Write the admin kubeconfig to another path as well (e.g. a fixed path for `make up`).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        write_private(path, &self.kubeconfig)
    }

    /// Write a kubeconfig for another identity to `path` (0600): a client certificate for
    /// `user` in `groups` from this API server's CA. What it may do is up to RBAC (and, outside
    /// system:masters, API Priority and Fairness).
    pub fn write_kubeconfig_for(
        &self,
        user: &str,
        groups: &[&str],
        path: &Path,
    ) -> Result<(), Error> {
        let identity = self.ca.client(user, groups)?;
        let yaml = kubeconfig::render(&self.name, &self.url, self.ca.cert_pem(), &identity);
        write_private(path, &yaml)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The etcd behind this API server, to back further API servers with other prefixes.
    pub fn etcd(&self) -> Arc<Etcd> {
        Arc::clone(&self.etcd)
    }

    pub fn cluster_api(&self) -> Option<&ClusterApiManager> {
        self.cluster_api.as_ref()
    }

    /// The in-cluster IPAM provider of a control plane started with
    /// [`Builder::ipam_in_cluster`].
    pub fn ipam_in_cluster(&self) -> Option<&IpamInCluster> {
        self.ipam.as_ref()
    }

    pub fn startup_times(&self) -> &StartupTimes {
        &self.times
    }

    /// Install every CRD in the YAML files of `dir` and wait until each is Established.
    pub async fn install_crds(&self, dir: &Path) -> Result<(), Error> {
        let client = self.client().await?;
        let crds = crds::crds_from_dir(dir)?;
        crds::install_crds(&client, &crds).await
    }

    /// Pids of the lifelines of this control plane's processes (etcd, kube-apiserver, Cluster
    /// API manager, IPAM provider); each component is the only child of its lifeline.
    pub fn lifeline_pids(&self) -> Vec<u32> {
        let apiserver = self.apiserver.pid();
        let mut pids = vec![self.etcd.pid(), apiserver];
        pids.extend(self.cluster_api.as_ref().map(ClusterApiManager::pid));
        pids.extend(self.ipam.as_ref().map(IpamInCluster::pid));
        pids
    }

    /// `Err` with the log tail if the API server or its etcd has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.etcd.check_running()?;
        self.apiserver.check_running()
    }
}

async fn start_apiserver(
    binary: &Path,
    dir: &Path,
    cleanup: Option<&Path>,
    name: &str,
    ca: &Ca,
    (etcd, prefix): (&Etcd, &str),
    (port, audit): (Option<u16>, bool),
) -> Result<(ManagedProcess, String, String, kube::Config), Error> {
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    let url = format!("https://127.0.0.1:{port}");
    let serving = ca.serving("kube-apiserver", &["127.0.0.1", "localhost"])?;
    let admin = ca.client("admin", &["system:masters"])?;
    let (sa_key, sa_pub) = crate::pki::service_account_key()?;

    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(Error::io(format!("creating {}", pki.display())))?;
    let file = |name: &str, content: &str| -> Result<String, Error> {
        let path = pki.join(name);
        write_private(&path, content)?;
        Ok(path.display().to_string())
    };
    let args = vec![
        format!("--etcd-servers={}", etcd.url()),
        format!("--etcd-prefix={prefix}"),
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--cert-dir={}", pki.display()),
        format!(
            "--tls-cert-file={}",
            file("apiserver.crt", &serving.cert_pem)?
        ),
        format!(
            "--tls-private-key-file={}",
            file("apiserver.key", &serving.key_pem)?
        ),
        format!("--client-ca-file={}", file("ca.crt", ca.cert_pem())?),
        format!("--service-account-key-file={}", file("sa.pub", &sa_pub)?),
        format!(
            "--service-account-signing-key-file={}",
            file("sa.key", &sa_key)?
        ),
        format!("--service-account-issuer={url}/"),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--allow-privileged=true".into(),
        "--authorization-mode=RBAC".into(),
        // No controller-manager runs, so nothing would create service-account tokens.
        "--disable-admission-plugins=ServiceAccount".into(),
    ];
    let mut args = args;
    if audit {
        let policy = dir.join("audit-policy.yaml");
        write_private(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: Metadata\n",
        )?;
        args.push(format!("--audit-policy-file={}", policy.display()));
        args.push(format!(
            "--audit-log-path={}",
            dir.join(AUDIT_LOG).display()
        ));
        args.push("--audit-log-format=json".into());
        args.push("--audit-log-mode=blocking".into());
    }
    let log = dir.join(format!("kube-apiserver-{port}.log"));
    let process = ManagedProcess::spawn_with_env(
        "kube-apiserver",
        (binary, &args),
        &LIGHT_GC,
        &log,
        cleanup,
    )?;

    let kubeconfig = kubeconfig::render(name, &url, ca.cert_pem(), &admin);
    write_private(&dir.join("kubeconfig"), &kubeconfig)?;
    let config = kubeconfig::config(&kubeconfig).await?;
    let client = Client::try_from(config.clone())?;
    poll_until(
        "kube-apiserver /readyz",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            process.check_running()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Kubeconfig(e.to_string()))?;
            Ok(client
                .request_text(req)
                .await
                .ok()
                .filter(|body| body.trim() == "ok"))
        },
    )
    .await?;
    Ok((process, url, kubeconfig, config))
}

/// Write a file readable only by its owner (it may hold keys).
pub(crate) fn write_private(path: &Path, content: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("writing {}", path.display())))?;
    f.write_all(content.as_bytes())
        .map_err(Error::io(format!("writing {}", path.display())))
}
