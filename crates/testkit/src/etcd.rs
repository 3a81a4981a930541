use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, poll_until, retry_port_race};

/// A single-member etcd on loopback. One etcd can back several kube-apiservers, each with its own
/// `--etcd-prefix`.
#[derive(Debug)]
pub struct Etcd {
    url: String,
    process: ManagedProcess,
}

impl Etcd {
    /// Start etcd and wait until it serves clients. Its data and log go under `dir` (kept), or
    /// under a temporary directory that is removed when etcd exits.
    pub async fn start(dir: Option<&Path>) -> Result<Self, Error> {
        let binary = locate(Tool::Etcd)?;
        let (dir, cleanup) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => (crate::temp_dir("talos-capi-etcd-")?, true),
        };
        retry_port_race(|| Self::start_once(&binary, &dir, cleanup)).await
    }

    async fn start_once(binary: &Path, dir: &Path, cleanup: bool) -> Result<Self, Error> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data: PathBuf = dir.join(format!("etcd-data-{client_port}"));
        let args = vec![
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            // Test data is disposable; skipping fsync makes etcd many times faster here.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let log = dir.join("etcd.log");
        let remove = if cleanup { dir } else { &data };
        let process = ManagedProcess::spawn("etcd", binary, &args, &log, Some(remove))?;
        let etcd = Etcd { url, process };
        etcd.wait_ready(client_port).await?;
        Ok(etcd)
    }

    async fn wait_ready(&self, port: u16) -> Result<(), Error> {
        poll_until(
            "etcd to accept clients",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async move {
                self.check_running()?;
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ()))
            },
        )
        .await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn check_running(&self) -> Result<(), Error> {
        self.process.check_running()
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}
