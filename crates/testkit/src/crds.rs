use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::Error;

const FIELD_MANAGER: &str = "talos-capi-testkit";

/// Every CustomResourceDefinition in the `.yaml`/`.yml` files of `dir` (multi-document files
/// allowed; other kinds are skipped), in file-name order.
pub fn crds_from_dir(dir: &Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(Error::io(format!("reading {}", dir.display())))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).map_err(|e| Error::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if value.get("kind").and_then(|k| k.as_str()) != Some("CustomResourceDefinition") {
                continue;
            }
            let crd = serde_json::from_value(value).map_err(|e| Error::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
            crds.push(crd);
        }
    }
    Ok(crds)
}

/// Server-side apply `crds` and wait until the API server reports each one Established.
pub async fn install_crds(client: &Client, crds: &[CustomResourceDefinition]) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        crd.metadata.resource_version = None;
        api.patch(&crd.name_any(), &params, &Patch::Apply(&crd))
            .await?;
    }
    for crd in crds {
        wait_established(client, &crd.name_any()).await?;
    }
    Ok(())
}

/// Wait (watching, not polling) until the named CRD is Established.
pub async fn wait_established(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let timeout = Duration::from_secs(30);
    tokio::time::timeout(
        timeout,
        await_condition(api, name, conditions::is_crd_established()),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: format!("CRD {name} to be Established"),
        after: timeout,
        last: "not established".into(),
    })?
    .map_err(|e| Error::Watch {
        what: format!("CRD {name}"),
        message: e.to_string(),
    })?;
    Ok(())
}
