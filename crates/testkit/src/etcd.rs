use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::process::{LIGHT_GC, ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, poll_until, retry_port_race};

/// A single-member etcd on loopback. One etcd can back several kube-apiservers, each with its own
/// `--etcd-prefix`.
#[derive(Debug)]
pub struct Etcd {
    url: String,
    port: u16,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// The data directory, when this etcd keeps it across restarts (a kept `dir`); it is removed
    /// when the `Etcd` is dropped.
    kept_data: Option<PathBuf>,
    process: Mutex<ManagedProcess>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process().stop();
        if let Some(data) = &self.kept_data {
            let _ = std::fs::remove_dir_all(data);
        }
    }
}

impl Etcd {
    /// Start etcd and wait until it serves clients. Its data and log go under `dir` (kept; the
    /// data survives [`Etcd::restart`] and goes when this is dropped), or under a temporary
    /// directory that is removed when etcd exits (no restart).
    pub async fn start(dir: Option<&Path>) -> Result<Self, Error> {
        let binary = locate(Tool::Etcd)?;
        let (dir, cleanup) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => (crate::temp_dir("talos-capi-etcd-")?, true),
        };
        retry_port_race(|| Self::start_once(&binary, &dir, cleanup)).await
    }

    async fn start_once(binary: &Path, dir: &Path, cleanup: bool) -> Result<Self, Error> {
        // An attempt that lost the port race took a temporary `dir` with it (its lifeline
        // removes it on exit), so each attempt makes sure it is there.
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        // A kept dir holds one etcd's data across restarts; what a killed run left is not ours.
        let data: PathBuf = if cleanup {
            dir.join(format!("etcd-data-{client_port}"))
        } else {
            let data = dir.join("etcd-data");
            match std::fs::remove_dir_all(&data) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("removing {}", data.display()))(e));
                }
                _ => {}
            }
            data
        };
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
        let remove = cleanup.then_some(dir);
        let process =
            ManagedProcess::spawn_with_env("etcd", (binary, &args), &LIGHT_GC, &log, remove)?;
        let etcd = Etcd {
            url,
            port: client_port,
            binary: binary.to_path_buf(),
            args,
            log,
            kept_data: (!cleanup).then_some(data),
            process: Mutex::new(process),
        };
        etcd.wait_ready(client_port).await?;
        Ok(etcd)
    }

    fn process(&self) -> MutexGuard<'_, ManagedProcess> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop etcd (SIGTERM), leave it down for `down`, and start it again on the same port with
    /// the same data: a management cluster's etcd restart. Every kube-apiserver it backs loses
    /// its storage meanwhile. Only for an etcd started with a kept `dir`.
    pub async fn restart(&self, down: Duration) -> Result<(), Error> {
        if self.kept_data.is_none() {
            return Err(Error::Kubeconfig(
                "Etcd::restart needs an etcd started with a kept dir".into(),
            ));
        }
        self.process().stop();
        tokio::time::sleep(down).await;
        let process = ManagedProcess::spawn_with_env(
            "etcd",
            (&self.binary, &self.args),
            &LIGHT_GC,
            &self.log,
            None,
        )?;
        *self.process() = process;
        self.wait_ready(self.port).await
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
        self.process().pid()
    }

    pub(crate) fn check_running(&self) -> Result<(), Error> {
        self.process().check_running()
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry after a lost port race finds the temporary directory removed by the failed
    /// attempt's lifeline, and still starts.
    #[tokio::test]
    async fn an_attempt_after_a_failed_one_starts_in_a_removed_temporary_dir() {
        let dir = crate::temp_dir("talos-capi-etcd-").unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let etcd = Etcd::start_once(&locate(Tool::Etcd).unwrap(), &dir, true)
            .await
            .unwrap();
        assert!(etcd.check_running().is_ok());
        drop(etcd);
        assert!(
            !dir.exists(),
            "the lifeline removes the directory when etcd exits"
        );
    }
}
