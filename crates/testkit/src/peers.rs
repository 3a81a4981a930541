//! The real Go providers we replace, run against a [`LocalControlPlane`] as test and benchmark
//! peers. Only CABPT (the bootstrap provider) builds from the Go module proxy here.

use std::time::Duration;

use crate::process::{ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, LocalControlPlane, poll_until};

/// CABPT's manager, reconciling only objects labelled `cluster.x-k8s.io/watch-filter=<filter>`
/// (so that it shares a control plane with other tests).
pub async fn start_cabpt(
    cp: &LocalControlPlane,
    watch_filter: &str,
) -> Result<ManagedProcess, Error> {
    let binary = locate(Tool::Cabpt)?;
    let health = free_port()?;
    let diagnostics = free_port()?;
    let webhook = free_port()?;
    // CABPT always starts its webhook server (which needs a certificate); its webhooks are not
    // registered with the API server: only its reconcilers are compared.
    let dir = cp.dir().join(format!("cabpt-{webhook}"));
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let serving = cp
        .ca()
        .serving("cabpt-webhook", &["127.0.0.1", "localhost"])?;
    std::fs::write(dir.join("tls.crt"), &serving.cert_pem)
        .and_then(|()| std::fs::write(dir.join("tls.key"), &serving.key_pem))
        .map_err(Error::io("writing CABPT's webhook serving certificate"))?;
    let args = vec![
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--webhook-port={webhook}"),
        format!("--webhook-cert-dir={}", dir.display()),
        format!("--health-addr=127.0.0.1:{health}"),
        format!("--diagnostics-address=127.0.0.1:{diagnostics}"),
        "--insecure-diagnostics".into(),
        format!("--watch-filter={watch_filter}"),
    ];
    let log = cp.dir().join(format!("cabpt-{health}.log"));
    let process = ManagedProcess::spawn("cabpt", &binary, &args, &log, None)?;
    poll_until(
        "CABPT /readyz",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            process.check_running()?;
            Ok(crate::capi::http_get_ok(health, "/readyz")
                .await
                .then_some(()))
        },
    )
    .await?;
    Ok(process)
}
