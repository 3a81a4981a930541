//! The real Go providers we replace, run against a [`LocalControlPlane`] as test and benchmark
//! peers: CABPT (the bootstrap provider) and CACPPT (the control plane provider), each built from
//! its Go module.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::process::{ManagedProcess, free_port};
use crate::tools::{Tool, locate};
use crate::{Error, LocalControlPlane, poll_until};

/// The CRDs of a peer's config directory (`tool` is [`Tool::CabptConfig`] or
/// [`Tool::CacpptConfig`]), with the contract labels their kustomization adds
/// (`config/crd/kustomization.yaml`'s commonLabels): what a `clusterctl init` of them installs.
pub fn crds(tool: Tool) -> Result<Vec<CustomResourceDefinition>, Error> {
    let dir = locate(tool)?.join("crd/bases");
    let mut crds = crate::crds_from_dir(&dir)?;
    for crd in &mut crds {
        let labels = crd.metadata.labels.get_or_insert_with(Default::default);
        for contract in ["v1alpha3", "v1alpha4", "v1beta1"] {
            labels.insert(format!("cluster.x-k8s.io/{contract}"), "v1alpha3".into());
        }
    }
    Ok(crds)
}

/// CABPT's manager, reconciling only objects labelled `cluster.x-k8s.io/watch-filter=<filter>`
/// (so that it shares a control plane with other tests); an empty filter reconciles every
/// object (CACPPT's TalosConfigs carry no such label).
pub async fn start_cabpt(
    cp: &LocalControlPlane,
    watch_filter: &str,
) -> Result<ManagedProcess, Error> {
    start_peer(cp, Tool::Cabpt, &[format!("--watch-filter={watch_filter}")])
        .await
        .map(|(process, _)| process)
}

/// CABPT's manager reconciling every TalosConfig, with its webhooks
/// (config/webhook/manifests.yaml: TalosConfig validation) registered with the API server as a
/// real installation has them. Only for a control plane of the test's own: when CABPT stops,
/// its webhooks (`failurePolicy: Fail`) refuse every TalosConfig write until deleted.
pub async fn start_cabpt_with_webhooks(cp: &LocalControlPlane) -> Result<ManagedProcess, Error> {
    start_with_webhooks(cp, Tool::Cabpt, Tool::CabptConfig, "cabpt-").await
}

/// CACPPT's manager, with its webhooks (config/webhook/manifests.yaml: TalosControlPlane
/// defaulting, which fills in the infrastructure template's namespace, and validation)
/// registered with the API server as a real installation has them. It has no watch filter: it
/// reconciles every TalosControlPlane the control plane serves, so it needs a control plane of
/// its own, with no other TalosControlPlane controller (nor CRDs but CACPPT's).
pub async fn start_cacppt(cp: &LocalControlPlane) -> Result<ManagedProcess, Error> {
    start_with_webhooks(cp, Tool::Cacppt, Tool::CacpptConfig, "cacppt-").await
}

/// `tool`'s manager with the webhooks of `config`'s manifests registered under `prefix` (the
/// name prefix of the provider's clusterctl installation).
async fn start_with_webhooks(
    cp: &LocalControlPlane,
    tool: Tool,
    config: Tool,
    prefix: &str,
) -> Result<ManagedProcess, Error> {
    let (process, webhook) = start_peer(cp, tool, &[]).await?;
    let manifests = locate(config)?.join("webhook/manifests.yaml");
    let client = cp.client().await?;
    crate::capi::register_webhooks(&client, &manifests, cp, webhook, prefix).await?;
    Ok(process)
}

/// Delete the webhook configurations whose names start with `prefix` (a provider's, as its
/// clusterctl installation names them: `cacppt-`, `cabpt-`), as a migration does when it stops
/// that provider.
pub async fn delete_webhooks(client: &kube::Client, prefix: &str) -> Result<(), Error> {
    delete_prefixed(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        prefix,
    )
    .await?;
    delete_prefixed(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        prefix,
    )
    .await
}

async fn delete_prefixed<K>(api: Api<K>, prefix: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for object in api.list(&ListParams::default()).await?.items {
        let name = object.name_any();
        if name.starts_with(prefix) {
            api.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// A Go provider's manager on loopback-only ports, ready once its /readyz answers (which
/// includes its webhook server); with the port of that webhook server.
async fn start_peer(
    cp: &LocalControlPlane,
    tool: Tool,
    extra: &[String],
) -> Result<(ManagedProcess, u16), Error> {
    let name = tool.name();
    let binary = locate(tool)?;
    let health = free_port()?;
    let diagnostics = free_port()?;
    let webhook = free_port()?;
    // The manager always starts its webhook server (which needs a certificate); its webhooks
    // are not registered with the API server: only its reconcilers run.
    let dir = cp.dir().join(format!("{name}-{webhook}"));
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let serving = cp
        .ca()
        .serving(&format!("{name}-webhook"), &["127.0.0.1", "localhost"])?;
    std::fs::write(dir.join("tls.crt"), &serving.cert_pem)
        .and_then(|()| std::fs::write(dir.join("tls.key"), &serving.key_pem))
        .map_err(Error::io(format!(
            "writing {name}'s webhook serving certificate"
        )))?;
    let mut args = vec![
        format!("--kubeconfig={}", cp.kubeconfig_path().display()),
        format!("--webhook-port={webhook}"),
        format!("--webhook-cert-dir={}", dir.display()),
        format!("--health-addr=127.0.0.1:{health}"),
        format!("--diagnostics-address=127.0.0.1:{diagnostics}"),
        "--insecure-diagnostics".into(),
    ];
    args.extend_from_slice(extra);
    let log = cp.dir().join(format!("{name}-{health}.log"));
    let process = ManagedProcess::spawn(name, &binary, &args, &log, None)?;
    poll_until(
        &format!("{name} /readyz"),
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
    Ok((process, webhook))
}
