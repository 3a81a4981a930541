//! Startup checks: every kind the controllers watch is served by the management cluster.
//! Discovery needs no RBAC beyond what every authenticated client has.

use kube::api::ApiResource;

use crate::cache::capi_resource;

/// The kinds the controllers list and watch, with how to install each.
fn needed() -> Vec<(ApiResource, &'static str)> {
    const OURS: &str = "install talos-capi's CRDs: `helm install talos-capi charts/talos-capi` or `talos-capi crds | kubectl apply --server-side -f -`";
    const CAPI: &str = "install Cluster API core: `clusterctl init` (or its core-components.yaml)";
    vec![
        (crate::cache::talosconfig_resource(), OURS),
        (crate::controlplane::resource(), OURS),
        (capi_resource("Cluster"), CAPI),
        (capi_resource("Machine"), CAPI),
    ]
}

/// What is missing, one line each: the resource and how to install it. Empty when every kind
/// is served.
pub async fn missing_kinds(client: &kube::Client) -> Result<Vec<String>, kube::Error> {
    let mut missing = Vec::new();
    for (ar, fix) in needed() {
        let served = match client.list_api_group_resources(&ar.api_version).await {
            Ok(list) => list.resources.iter().any(|r| r.name == ar.plural),
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e),
        };
        if !served {
            missing.push(format!(
                "{}.{} ({}) is not served: {fix}",
                ar.plural, ar.group, ar.api_version
            ));
        }
    }
    Ok(missing)
}
