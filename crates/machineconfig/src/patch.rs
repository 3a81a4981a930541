//! Configuration patches as Talos applies them: RFC 6902 JSON patches (single-document configs
//! only) and Talos strategic merge patches (documents matched by apiVersion/kind/name).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Error;

/// The document kinds of Talos v1.13's multi-document configuration (besides v1alpha1).
pub const KNOWN_KINDS: &[&str] = &[
    "HostnameConfig",
    "ExtensionServiceConfig",
    "KmsgLogConfig",
    "EventSinkConfig",
    "WatchdogTimerConfig",
    "NetworkDefaultActionConfig",
    "NetworkRuleConfig",
    "TrustedRootsConfig",
    "UserVolumeConfig",
    "VolumeConfig",
    "RawVolumeConfig",
    "ExistingVolumeConfig",
    "SwapVolumeConfig",
    "ZswapConfig",
    "EthernetConfig",
    "LinkConfig",
    "DummyLinkConfig",
    "VLANConfig",
    "BondConfig",
    "BridgeConfig",
    "DHCPv4Config",
    "DHCPv6Config",
    "LinkAliasConfig",
    "StaticHostConfig",
    "ResolverConfig",
    "TimeSyncConfig",
    "KubeSpanEndpointsConfig",
    "SideroLinkConfig",
    "PCIDriverRebindConfig",
    "OOMConfig",
    "ImageCacheConfig",
    "EnvironmentConfig",
    "RegistryMirrorConfig",
    "RegistryAuthConfig",
    "RegistryTLSConfig",
    "KubePrismConfig",
    "SecurityConfig",
];

/// List fields a strategic merge replaces instead of appending to.
const REPLACE_LISTS: &[&str] = &["podSubnets", "serviceSubnets"];
/// Map fields a strategic merge replaces whole.
const REPLACE_MAPS: &[&str] = &["auditPolicy"];
/// List fields whose items are merged by a key instead of appended.
const KEYED_LISTS: &[(&str, &str)] = &[
    ("interfaces", "interface"),
    ("vlans", "vlanId"),
    ("admissionControl", "name"),
];

/// One patch, as given to `--config-patch` or in a TalosConfig.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// RFC 6902 operations.
    Json6902(json_patch::Patch),
    /// Configuration documents to merge.
    Strategic(Vec<Value>),
}

impl Patch {
    /// Parse a patch the way talosctl does: a YAML/JSON list is a JSON patch, anything else is
    /// a strategic merge patch (one or more documents).
    pub fn parse(text: &str) -> Result<Patch, Error> {
        let docs = crate::render::from_yaml(text).map_err(|e| Error::Parse {
            what: "patch".into(),
            message: e.to_string().replace("parsing machine configuration: ", ""),
        })?;
        match docs.as_slice() {
            [Value::Array(_)] => Self::json6902(docs.into_iter().next().unwrap_or_default()),
            [] => Err(Error::Parse {
                what: "patch".into(),
                message: "the patch is empty".into(),
            }),
            _ => {
                for doc in &docs {
                    if !doc.is_object() {
                        return Err(Error::Parse {
                            what: "patch".into(),
                            message: "a strategic merge patch must be a YAML mapping (a configuration document)".into(),
                        });
                    }
                    check_kind(doc)?;
                    if doc.get("kind").is_none() {
                        strict_decode(doc).map_err(|message| Error::Parse {
                            what: "patch".into(),
                            message,
                        })?;
                    }
                }
                Ok(Patch::Strategic(docs))
            }
        }
    }

    /// RFC 6902 operations from a JSON value (a list of `{op, path, value, from}`).
    pub fn json6902(ops: Value) -> Result<Patch, Error> {
        let list = ops.as_array().cloned().unwrap_or_default();
        let mut parsed = Vec::with_capacity(list.len());
        for (index, op) in list.into_iter().enumerate() {
            let op = json_patch::PatchOperation::deserialize(op).map_err(|e| Error::Patch {
                index,
                message: explain_op_error(&e.to_string()),
            })?;
            parsed.push(op);
        }
        Ok(Patch::Json6902(json_patch::Patch(parsed)))
    }
}

fn explain_op_error(message: &str) -> String {
    if message.contains("unknown variant") {
        format!("{message} (valid operations: add, remove, replace, move, copy, test)")
    } else if message.contains("pointer") || message.contains("slash") {
        format!("{message} (a path is a JSON pointer such as /machine/install/disk)")
    } else {
        message.to_owned()
    }
}

fn check_kind(doc: &Value) -> Result<(), Error> {
    match doc.get("kind").and_then(Value::as_str) {
        None => Ok(()),
        Some(kind) if KNOWN_KINDS.contains(&kind) => Ok(()),
        Some(kind) => Err(Error::Parse {
            what: "patch".into(),
            message: format!(
                "unknown configuration document kind {kind:?} (apiVersion/kind must name a Talos document such as HostnameConfig)"
            ),
        }),
    }
}

/// Apply `patches` in order to `docs`.
pub fn apply(mut docs: Vec<Value>, patches: &[Patch]) -> Result<Vec<Value>, Error> {
    for (index, patch) in patches.iter().enumerate() {
        match patch {
            Patch::Json6902(ops) => {
                if docs.len() != 1 {
                    return Err(Error::JsonPatchOnMultiDocument);
                }
                let doc = &mut docs[0];
                json_patch::patch(doc, ops).map_err(|e| Error::Patch {
                    index,
                    message: e.to_string(),
                })?;
                // Talos decodes the patched document into its typed config (refusing what does not
                // decode) and encodes it again, dropping empty optional fields.
                strict_decode(doc).map_err(|message| Error::Patch { index, message })?;
                drop_empty_optional_fields(doc);
            }
            Patch::Strategic(patch_docs) => {
                for p in patch_docs {
                    merge_document(&mut docs, p);
                }
            }
        }
    }
    Ok(docs)
}

/// Talos's strict decoding of a v1alpha1 document, as one error message.
fn strict_decode(doc: &Value) -> Result<(), String> {
    let problems = crate::validate::decode_problems(doc);
    if problems.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(format!(
        "the configuration does not decode: {}",
        list.join("; ")
    ))
}

/// Optional (omitempty) fields the renderer emits empty, which Talos's re-encoding drops.
fn drop_empty_optional_fields(doc: &mut Value) {
    let empty = |v: &Value| {
        v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
    };
    for (section, field) in [
        ("machine", "registries"),
        ("cluster", "extraManifests"),
        ("cluster", "inlineManifests"),
    ] {
        if let Some(m) = doc.get_mut(section).and_then(Value::as_object_mut)
            && m.get(field).is_some_and(empty)
        {
            m.remove(field);
        }
    }
}

/// The identity of a document: (apiVersion, kind, name); v1alpha1 has no kind.
fn identity(doc: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    let kind = doc.get("kind").and_then(Value::as_str);
    let api = doc.get("apiVersion").and_then(Value::as_str);
    let name = doc.get("name").and_then(Value::as_str);
    (kind.and(api), kind, name)
}

fn is_delete(v: &Value) -> bool {
    v.get("$patch").and_then(Value::as_str) == Some("delete")
}

fn merge_document(docs: &mut Vec<Value>, patch: &Value) {
    let id = identity(patch);
    let position = docs.iter().position(|d| identity(d) == id);
    if is_delete(patch) {
        match position {
            Some(i) => {
                docs.remove(i);
            }
            // Talos leaves an empty document behind when the document to delete is absent.
            None => docs.push(Value::Object(Map::new())),
        }
        return;
    }
    match position {
        Some(i) => merge_value(&mut docs[i], patch),
        None => {
            let mut new = patch.clone();
            strip_directives(&mut new);
            docs.push(new);
        }
    }
}

/// Merge `patch` into `target` in place.
fn merge_value(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p),
        (t, p) => {
            if !is_zero(p) {
                let mut p = p.clone();
                strip_directives(&mut p);
                *t = p;
            }
        }
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, pv) in patch {
        if key == "$patch" {
            continue;
        }
        if is_delete(pv) && pv.as_object().is_some_and(|o| o.len() == 1) {
            target.remove(key);
            continue;
        }
        match target.get_mut(key) {
            None => {
                let mut v = pv.clone();
                strip_directives(&mut v);
                target.insert(key.clone(), v);
            }
            Some(tv)
                if REPLACE_MAPS.contains(&key.as_str())
                    || REPLACE_LISTS.contains(&key.as_str()) =>
            {
                let mut v = pv.clone();
                strip_directives(&mut v);
                *tv = v;
            }
            Some(Value::Array(items)) => {
                let key_field = KEYED_LISTS.iter().find(|(k, _)| k == key).map(|(_, f)| *f);
                merge_list(
                    items,
                    pv.as_array().map(Vec::as_slice).unwrap_or_default(),
                    key_field,
                );
            }
            Some(tv) => merge_value(tv, pv),
        }
    }
}

fn merge_list(items: &mut Vec<Value>, patch: &[Value], key_field: Option<&str>) {
    for pv in patch {
        if is_delete(pv) {
            // The item's other key/value pairs select the elements to delete.
            let selector: Vec<(&String, &Value)> = pv
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "$patch")
                .collect();
            items.retain(|item| {
                !selector
                    .iter()
                    .all(|(k, v)| item.get(k.as_str()) == Some(v))
            });
            continue;
        }
        let matching = key_field.and_then(|f| {
            let want = pv.get(f)?;
            items.iter_mut().find(|i| i.get(f) == Some(want))
        });
        match matching {
            Some(existing) => merge_value(existing, pv),
            None => {
                let mut v = pv.clone();
                strip_directives(&mut v);
                items.push(v);
            }
        }
    }
}

/// Zero values do not overwrite (Talos merges typed structs, where zero means unset); false
/// does overwrite.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$patch");
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(yaml: &str) -> Patch {
        Patch::parse(yaml).unwrap()
    }

    #[test]
    fn strategic_merge_maps_lists_and_replace_fields() {
        let base = vec![json!({
            "machine": {"certSANs": ["a"], "network": {"interfaces": [{"interface": "eth0", "dhcp": true}]}},
            "cluster": {"network": {"podSubnets": ["10.244.0.0/16"]}}
        })];
        let p = strategic(
            "machine:\n  certSANs: [b]\n  network:\n    interfaces:\n      - interface: eth0\n        mtu: 9000\n      - interface: eth1\n        dhcp: true\ncluster:\n  network:\n    podSubnets: [10.0.0.0/8]\n",
        );
        let out = apply(base, &[p]).unwrap();
        assert_eq!(
            out[0]["machine"]["certSANs"],
            json!(["a", "b"]),
            "lists append"
        );
        assert_eq!(
            out[0]["machine"]["network"]["interfaces"],
            json!([{"interface": "eth0", "dhcp": true, "mtu": 9000}, {"interface": "eth1", "dhcp": true}]),
            "interfaces merge by name"
        );
        assert_eq!(
            out[0]["cluster"]["network"]["podSubnets"],
            json!(["10.0.0.0/8"]),
            "podSubnets replace"
        );
    }

    #[test]
    fn delete_directives() {
        let base = vec![
            json!({"machine": {"network": {"hostname": "x"}, "certSANs": ["a", "b"]}}),
            json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}),
        ];
        let out = apply(
            base,
            &[
                strategic("machine:\n  network:\n    $patch: delete\n"),
                strategic("apiVersion: v1alpha1\nkind: HostnameConfig\n$patch: delete\n"),
            ],
        )
        .unwrap();
        assert_eq!(out.len(), 1, "document deleted");
        assert!(out[0]["machine"].get("network").is_none(), "map deleted");
    }

    #[test]
    fn json_patch_refused_on_multi_document_configs() {
        let docs = vec![
            json!({}),
            json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig"}),
        ];
        let p = Patch::parse("- op: add\n  path: /machine\n  value: {}\n").unwrap();
        assert!(matches!(
            apply(docs, &[p]),
            Err(Error::JsonPatchOnMultiDocument)
        ));
    }

    #[test]
    fn bad_patches_are_typed_errors() {
        let unknown_op = Patch::parse("- op: merge\n  path: /machine\n  value: {}\n").unwrap_err();
        assert!(
            unknown_op.to_string().contains("valid operations"),
            "{unknown_op}"
        );
        assert!(Patch::parse("- op: add\n  path: machine\n  value: 1\n").is_err());
        assert!(
            Patch::parse("kind: NoSuchConfig\napiVersion: v1alpha1\n")
                .unwrap_err()
                .to_string()
                .contains("NoSuchConfig")
        );
        assert!(Patch::parse("machine: [").is_err());
        let remove_missing = Patch::parse("- op: remove\n  path: /machine/nothing\n").unwrap();
        assert!(matches!(
            apply(vec![json!({"machine": {}})], &[remove_missing]),
            Err(Error::Patch { index: 0, .. })
        ));
    }
}
