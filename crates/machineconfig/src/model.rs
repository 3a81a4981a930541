//! Typed views of the configuration documents. Every struct keeps the fields it does not model
//! in `extra`, so a document read and written again is unchanged (user patches may set any
//! Talos field); every modelled field is optional, so absent stays absent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;

/// A certificate and key, base64-encoded PEM.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct CertAndKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl std::fmt::Debug for CertAndKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field(
                "has_key",
                &self.key.as_deref().is_some_and(|k| !k.is_empty()),
            )
            .finish_non_exhaustive()
    }
}

/// `machine.install`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Install {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wipe: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `machine`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertAndKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sans: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cluster.controlPlane`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cluster.network`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_subnets: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `cluster`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ClusterNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertAndKey>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The v1alpha1 document.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct V1Alpha1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl V1Alpha1 {
    pub fn is_control_plane(&self) -> bool {
        let t = self
            .machine
            .as_ref()
            .and_then(|m| m.machine_type.as_deref());
        matches!(t, Some("controlplane" | "init"))
    }
}

/// The HostnameConfig document (contracts v1.12+).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostnameConfig {
    pub api_version: String,
    pub kind: String,
    /// `stable` or `off`; exclusive with `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One document of a configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    V1Alpha1(Box<V1Alpha1>),
    Hostname(HostnameConfig),
    /// Any other kind, kept as written.
    Other(Value),
}

impl Document {
    pub fn from_value(v: &Value) -> Result<Document, Error> {
        let bad = |kind| move |source| Error::Document { kind, source };
        Ok(match v.get("kind").and_then(Value::as_str) {
            None => Document::V1Alpha1(Box::new(
                crate::parse::from_value(v).map_err(bad("v1alpha1"))?,
            )),
            Some("HostnameConfig") => {
                Document::Hostname(crate::parse::from_value(v).map_err(bad("HostnameConfig"))?)
            }
            Some(_) => Document::Other(v.clone()),
        })
    }

    pub fn to_value(&self) -> Result<Value, Error> {
        let bad = |kind| move |source| Error::Encode { kind, source };
        match self {
            Document::V1Alpha1(c) => serde_json::to_value(c).map_err(bad("v1alpha1")),
            Document::Hostname(h) => serde_json::to_value(h).map_err(bad("HostnameConfig")),
            Document::Other(v) => Ok(v.clone()),
        }
    }
}

/// Typed documents of a configuration.
pub fn documents(docs: &[Value]) -> Result<Vec<Document>, Error> {
    docs.iter().map(Document::from_value).collect()
}

/// The v1alpha1 document of a configuration, if any.
pub fn v1alpha1(docs: &[Value]) -> Result<Option<V1Alpha1>, Error> {
    Ok(documents(docs)?.into_iter().find_map(|d| match d {
        Document::V1Alpha1(c) => Some(*c),
        _ => None,
    }))
}

/// The first document of `kind`.
fn document<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
}

/// A string field of the v1alpha1 document, at `path`.
fn v1alpha1_str<'a>(docs: &'a [Value], path: &[&str]) -> Option<&'a str> {
    let v1 = docs
        .iter()
        .find(|d| d.is_object() && d.get("kind").is_none())?;
    path.iter()
        .try_fold(v1, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// The control plane endpoint, wherever the configuration's contract keeps it: the
/// KubeClusterConfig document (v1.14 on), else `.cluster.controlPlane.endpoint`.
pub fn cluster_endpoint(docs: &[Value]) -> Option<&str> {
    document(docs, "KubeClusterConfig")
        .and_then(|d| d.get("endpoint"))
        .and_then(Value::as_str)
        .or_else(|| v1alpha1_str(docs, &["cluster", "controlPlane", "endpoint"]))
}

/// The cluster id: the DiscoveryIdentityConfig document (v1.14 on), else `.cluster.id`.
pub fn cluster_id(docs: &[Value]) -> Option<&str> {
    document(docs, "DiscoveryIdentityConfig")
        .and_then(|d| d.get("clusterID"))
        .and_then(Value::as_str)
        .or_else(|| v1alpha1_str(docs, &["cluster", "id"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Contract, Input, MachineType, SecretsBundle, render};

    #[test]
    fn every_rendered_document_round_trips_unchanged() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        for contract in Contract::all() {
            for t in [MachineType::Controlplane, MachineType::Worker] {
                let mut input = Input::new("demo", "https://10.0.0.1:6443");
                input.contract = contract;
                let docs = render(t, &input, &bundle).unwrap();
                for doc in &docs {
                    assert_eq!(
                        &Document::from_value(doc).unwrap().to_value().unwrap(),
                        doc,
                        "{contract} {t:?}"
                    );
                }
                let typed = v1alpha1(&docs).unwrap().unwrap();
                assert_eq!(typed.is_control_plane(), t == MachineType::Controlplane);
                assert_eq!(cluster_endpoint(&docs), Some("https://10.0.0.1:6443"));
                assert_eq!(cluster_id(&docs), Some(bundle.cluster.id.as_str()));
            }
        }
    }

    /// A document whose CA key sits where the CA's mapping belongs (a JSON patch can move it
    /// there): refused naming the field, never quoting the key.
    #[test]
    fn documents_of_the_wrong_shape_name_the_field_never_the_value() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let mut docs = render(
            MachineType::Controlplane,
            &Input::new("demo", "https://10.0.0.1:6443"),
            &bundle,
        )
        .unwrap();
        let key = docs[0]["machine"]["ca"]["key"].clone();
        docs[0]["machine"]["ca"] = key.clone();
        docs[0]["machine"]["install"]["wipe"] = docs[0]["machine"]["token"].clone();
        let err = Document::from_value(&docs[0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "v1alpha1 document: field `machine.ca` is a string, expected a map"
        );
        let key = key.as_str().unwrap();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(&key[..32]), "{text}");
        }
        docs[0]["machine"]["ca"] = serde_json::json!({});
        let err = Document::from_value(&docs[0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "v1alpha1 document: field `machine.install.wipe` is a string, expected a boolean"
        );
        assert!(!format!("{err} {err:?}").contains(&bundle.trustdinfo.token));
    }

    #[test]
    fn unknown_fields_survive() {
        let doc = serde_json::json!({
            "version": "v1alpha1",
            "machine": {"type": "worker", "futureField": {"a": 1}, "install": {"disk": "/dev/sda", "newOption": true}},
            "cluster": {"network": {"cni": {"name": "none"}}}
        });
        assert_eq!(Document::from_value(&doc).unwrap().to_value().unwrap(), doc);
    }
}
