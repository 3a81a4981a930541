//! The CustomResourceDefinitions of every kind, labelled for Cluster API's contracts and for
//! clusterctl, as `talos-capi crds` prints them and `make crds` writes them.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;

use crate::bootstrap::v1alpha3::{TalosConfig, TalosConfigTemplate};
use crate::controlplane::v1alpha3::{TalosControlPlane, TalosControlPlaneTemplate};

/// The API version each Cluster API contract reads (`_`-separated list, newest last).
const CONTRACT_VERSIONS: &[(&str, &str)] = &[
    ("cluster.x-k8s.io/v1beta1", "v1alpha3"),
    ("cluster.x-k8s.io/v1beta2", "v1alpha3"),
];

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        labelled(TalosConfig::crd(), "bootstrap-talos"),
        labelled(TalosConfigTemplate::crd(), "bootstrap-talos"),
        labelled(TalosControlPlane::crd(), "control-plane-talos"),
        labelled(TalosControlPlaneTemplate::crd(), "control-plane-talos"),
    ]
}

fn labelled(mut crd: CustomResourceDefinition, provider: &str) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            require_patch_values(schema);
            accept_unset_enums(schema, &mut Vec::new());
            if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
                bound_int32(spec);
            }
        }
    }
    let labels = crd.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (contract, versions) in CONTRACT_VERSIONS {
        labels.insert((*contract).to_owned(), (*versions).to_owned());
    }
    labels.insert("cluster.x-k8s.io/provider".to_owned(), provider.to_owned());
    crd
}

/// The file name kubebuilder would give a CRD: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML, starting with a document separator.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    Ok(format!("---\n{}", serde_yaml_ng::to_string(crd)?))
}

/// JSON 6902 `add`, `replace` and `test` need a `value`. CEL cannot see `value` (an untyped,
/// preserve-unknown-fields property), so every ConfigPatch item schema gets an OpenAPI anyOf:
/// either the op needs no value, or value is present.
fn require_patch_values(schema: &mut JSONSchemaProps) {
    let is_patch = schema.properties.as_ref().is_some_and(|p| {
        ["op", "path", "value", "from"]
            .iter()
            .all(|k| p.contains_key(*k))
    });
    if is_patch {
        let no_value_ops = JSONSchemaProps {
            properties: Some(BTreeMap::from([(
                "op".to_owned(),
                JSONSchemaProps {
                    enum_: Some(["remove", "move", "copy"].map(|o| JSON(o.into())).to_vec()),
                    ..JSONSchemaProps::default()
                },
            )])),
            ..JSONSchemaProps::default()
        };
        let has_value = JSONSchemaProps {
            required: Some(vec!["value".to_owned()]),
            ..JSONSchemaProps::default()
        };
        schema.any_of = Some(vec![has_value, no_value_ops]);
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        require_patch_values(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        require_patch_values(items);
    }
}

/// Enum fields where the Go providers store `""` for unset (see `crate::de`), as property-name
/// paths (the end of the field's path). CACPPT's defaulting webhook writes
/// `controlPlaneConfig.init: {generateType: ""}` (and `controlplane.generateType: ""` when it
/// was omitted) into every TalosControlPlane; CABPT's webhook accepts `hostname.source: ""` and
/// CACPPT's `rolloutStrategy.type: ""`. Their CRDs have no enums, so such objects are stored;
/// ours take `""` there too, so that they stay updatable once our CRDs replace theirs, and the
/// types read `""` as unset. A standalone TalosConfig still needs a generateType: there `""`
/// is refused, as CABPT's controller refuses it.
const UNSET_AS_EMPTY: &[&[&str]] = &[
    &["controlPlaneConfig", "controlplane", "generateType"],
    &["controlPlaneConfig", "init", "generateType"],
    &["hostname", "source"],
    &["rolloutStrategy", "type"],
];

fn accept_unset_enums(schema: &mut JSONSchemaProps, path: &mut Vec<String>) {
    if let Some(values) = schema.enum_.as_mut() {
        let empty = JSON("".into());
        let at = |suffix: &[&str]| {
            path.len() >= suffix.len() && path[path.len() - suffix.len()..].iter().eq(suffix)
        };
        if UNSET_AS_EMPTY.iter().any(|suffix| at(suffix)) && !values.contains(&empty) {
            values.push(empty);
        }
    }
    for (name, child) in schema.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        path.push(name.clone());
        accept_unset_enums(child, path);
        path.pop();
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        accept_unset_enums(items, path);
    }
}

/// Every 32-bit integer of a spec is bounded to what its Rust type (and Go's int32) reads. The
/// API server does not check the `int32` format: it would store 3000000000, and the object
/// could then not be read by the controllers at all.
fn bound_int32(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("integer") && schema.format.as_deref() == Some("int32") {
        schema.minimum.get_or_insert(f64::from(i32::MIN));
        schema.maximum.get_or_insert(f64::from(i32::MAX));
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        bound_int32(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        bound_int32(items);
    }
}
