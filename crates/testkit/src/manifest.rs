//! Applying JSON manifests of any kind, as a test or benchmark writes them.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

use crate::Error;

/// A namespaced API for `api_version` (group/version) and `kind`.
pub fn dynamic_api(
    client: &kube::Client,
    ns: &str,
    api_version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Server-side apply `manifest` (apiVersion, kind and metadata.name set) in `ns` as `manager`.
pub async fn apply_manifest(
    client: &kube::Client,
    ns: &str,
    manager: &str,
    manifest: &Value,
) -> Result<DynamicObject, Error> {
    let field = |path: &str| {
        manifest
            .pointer(path)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Manifest {
                path: "inline manifest".into(),
                message: format!("no {path} in {manifest}"),
            })
    };
    let api = dynamic_api(client, ns, field("/apiVersion")?, field("/kind")?);
    Ok(api
        .patch(
            field("/metadata/name")?,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(manifest),
        )
        .await?)
}
