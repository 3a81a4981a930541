//! A local Kubernetes management cluster made of real components — etcd, kube-apiserver, the
//! Cluster API core manager and optionally the in-cluster IPAM provider — for talos-capi's integration tests, e2e suite and demo.
//!
//! ```no_run
//! # async fn demo() -> Result<(), testkit::Error> {
//! let cp = testkit::LocalControlPlane::builder().start().await?;
//! let client = cp.client().await?;
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! Every process is started behind a lifeline (see [`process`]), so it ends when its handle is
//! dropped, when a test panics, and when the test binary itself is killed.
#![forbid(unsafe_code)]

pub mod bench;
mod capi;
mod controlplane;
mod crds;
mod error;
mod etcd;
pub mod faults;
pub mod infra;
mod ipam;
mod kubeconfig;
mod manifest;
pub mod peers;
pub mod pki;
pub mod process;
pub mod secrets_scan;
mod shared;
pub mod sim_infra;
pub mod tools;
pub mod wait;

pub use capi::ClusterApiManager;
pub use controlplane::{Builder, LocalControlPlane};
pub use crds::{crds_from_dir, install_crds, wait_established};
pub use error::Error;
pub use etcd::Etcd;
pub use ipam::IpamInCluster;
pub use manifest::{apply_manifest, dynamic_api};
pub use shared::{shared, shared_if_started, unique_namespace};
pub use wait::{eventually, eventually_explained, poll};

/// Poll `check` every `every` until it returns `Ok(Some(_))` or `timeout` passes (at the pace
/// and deadline of [`wait::poll`]); a component that exited ends the wait at once.
///
/// Readiness of external processes has no event to watch, so polling is the honest tool here;
/// Kubernetes objects are awaited with watches instead.
pub(crate) async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Error>>,
{
    let mut looks = wait::Looks::new(timeout, every);
    let mut last_err = None;
    while looks.next().await {
        match looks.cut(check()).await {
            Some(Ok(Some(v))) => return Ok(v),
            Some(Ok(None)) | None => {}
            Some(Err(e @ Error::ProcessExited { .. })) => return Err(e),
            Some(Err(e)) => last_err = Some(e.to_string()),
        }
    }
    Err(Error::Timeout {
        what: what.to_owned(),
        after: timeout,
        last: last_err.unwrap_or_else(|| "not ready".to_owned()),
    })
}

/// Run `start` again (at most three times in all) when the component exits during startup: a
/// free port can be taken by another process between choosing and binding it.
pub(crate) async fn retry_port_race<T, F, Fut>(mut start: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(Error::ProcessExited { .. }) if attempt < 3 => attempt += 1,
            other => return other,
        }
    }
}

/// A new temporary directory that nothing removes on drop: the lifeline of the process using it
/// removes it when that process exits, which also covers a test binary that is killed.
pub(crate) fn temp_dir(prefix: &str) -> Result<std::path::PathBuf, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(Error::io("creating a temporary directory"))
}
