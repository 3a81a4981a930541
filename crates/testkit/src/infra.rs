//! CRDs of a test infrastructure provider (group infrastructure.cluster.x-k8s.io, kinds
//! SimCluster, SimClusterTemplate, SimMachine, SimMachineTemplate), labelled for both Cluster
//! API contracts. Cluster API's conversion webhook resolves the version of every reference it
//! converts through these labels, so Machines and Clusters need real CRDs behind their
//! infrastructure references; the schemas keep any spec and status.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

use crate::Error;

pub const GROUP: &str = "infrastructure.cluster.x-k8s.io";
pub const VERSION: &str = "v1alpha1";
pub const KINDS: [&str; 4] = [
    "SimCluster",
    "SimClusterTemplate",
    "SimMachine",
    "SimMachineTemplate",
];

/// `apiVersion` of the test infrastructure kinds, for v1beta1-shaped references.
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// The test infrastructure provider's CRDs.
pub fn infrastructure_crds() -> Result<Vec<CustomResourceDefinition>, Error> {
    KINDS.iter().map(|kind| crd(kind)).collect()
}

fn crd(kind: &str) -> Result<CustomResourceDefinition, Error> {
    let plural = format!("{}s", kind.to_lowercase());
    let labels = BTreeMap::from([
        ("cluster.x-k8s.io/v1beta1", VERSION),
        ("cluster.x-k8s.io/v1beta2", VERSION),
        ("cluster.x-k8s.io/provider", "infrastructure-sim"),
    ]);
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}"), "labels": labels},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "versions": [{
                "name": VERSION, "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": open, "status": open},
                }},
            }],
        },
    }))
    .map_err(|e| Error::Kubeconfig(format!("building the {kind} CRD: {e}")))
}

/// Mark a test infrastructure object (`SimCluster` or `SimMachine`) provisioned, as an
/// infrastructure provider does (`status.initialization.provisioned`, v1beta2 contract).
pub async fn mark_provisioned(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<(), Error> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind));
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"initialization": {"provisioned": true}}})),
        )
        .await?;
    Ok(())
}
