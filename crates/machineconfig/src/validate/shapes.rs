//! The fields Talos v1.14.1 decodes in the documents new in v1.14 (their Go structs' `yaml`
//! tags), so that unknown fields are refused as talosctl refuses them: its decoder stops at the
//! document (`error decoding document v1alpha1/<kind>/ (line N): unknown keys found during
//! decoding`), in every mode, with or without `--strict`.
//!
//! Only the kinds listed here are checked; the fields of free-form sections (`config`,
//! `overrides`, `extraArgs`, `env`, labels, …) are not.

use serde_json::Value;

/// Talos's reason for an unknown field.
pub(crate) const UNKNOWN_KEYS: &str = "unknown keys found during decoding";

/// The fields a section of a document may hold (`meta.Meta`'s `apiVersion` and `kind` are
/// allowed at the top of every document).
struct Shape {
    kind: &'static str,
    /// Where the section is in the document (empty: the document itself).
    section: &'static [&'static str],
    fields: &'static [&'static str],
}

const RESOURCES: &[&str] = &["requests", "limits"];

const SHAPES: &[Shape] = &[
    Shape {
        kind: "KubeClusterConfig",
        section: &[],
        fields: &["clusterName", "endpoint"],
    },
    Shape {
        kind: "KubeAPIServerConfig",
        section: &[],
        fields: &[
            "image",
            "extraArgs",
            "env",
            "resources",
            "apiPort",
            "certExtraSANs",
            "startupProbes",
        ],
    },
    Shape {
        kind: "KubeAPIServerConfig",
        section: &["resources"],
        fields: RESOURCES,
    },
    Shape {
        kind: "KubeNodeConfig",
        section: &[],
        fields: &[
            "skipNodeRegistration",
            "registerWithFQDN",
            "nodeIP",
            "labels",
            "annotations",
            "taints",
        ],
    },
    Shape {
        kind: "KubeNodeConfig",
        section: &["nodeIP"],
        fields: &["validSubnets"],
    },
    Shape {
        kind: "KubeNetworkConfig",
        section: &[],
        fields: &[
            "dnsDomain",
            "podSubnets",
            "serviceSubnets",
            "nodeCIDRMaskSizeIPv4",
            "nodeCIDRMaskSizeIPv6",
        ],
    },
    Shape {
        kind: "KubeControllerManagerConfig",
        section: &[],
        fields: &["enabled", "image", "extraArgs", "env", "resources"],
    },
    Shape {
        kind: "KubeControllerManagerConfig",
        section: &["resources"],
        fields: RESOURCES,
    },
    Shape {
        kind: "KubeSchedulerConfig",
        section: &[],
        fields: &[
            "enabled",
            "image",
            "config",
            "extraArgs",
            "env",
            "resources",
        ],
    },
    Shape {
        kind: "KubeSchedulerConfig",
        section: &["resources"],
        fields: RESOURCES,
    },
    Shape {
        kind: "KubeProxyConfig",
        section: &[],
        fields: &[
            "enabled",
            "image",
            "mode",
            "config",
            "extraArgs",
            "resources",
        ],
    },
    Shape {
        kind: "KubeProxyConfig",
        section: &["resources"],
        fields: RESOURCES,
    },
    Shape {
        kind: "KubeCoreDNSConfig",
        section: &[],
        fields: &["enabled", "image"],
    },
    Shape {
        kind: "KubeEtcdEncryptionConfig",
        section: &[],
        fields: &["config"],
    },
    Shape {
        kind: "KubeletConfig",
        section: &[],
        fields: &[
            "image",
            "config",
            "extraArgs",
            "clusterDNS",
            "defaultRuntimeSeccompProfileEnabled",
        ],
    },
    Shape {
        kind: "UnattendedInstallConfig",
        section: &[],
        fields: &["reboot", "installer", "provisioning"],
    },
    Shape {
        kind: "UnattendedInstallConfig",
        section: &["installer"],
        fields: &["image"],
    },
    Shape {
        kind: "UnattendedInstallConfig",
        section: &["provisioning"],
        fields: &["diskSelector", "wipe"],
    },
    Shape {
        kind: "UnattendedInstallConfig",
        section: &["provisioning", "diskSelector"],
        fields: &["match"],
    },
    Shape {
        kind: "CRIBaseRuntimeSpecConfig",
        section: &[],
        fields: &["overrides"],
    },
];

/// The fields of `doc` (a document of `kind`) that Talos does not know, as dotted paths under
/// the document (`nodeIP.bogus`), in the order of [`SHAPES`] and then of the document's keys.
pub(super) fn unknown_fields(doc: &Value, kind: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    for shape in SHAPES.iter().filter(|s| s.kind == kind) {
        let top = shape.section.is_empty();
        let section = shape.section.iter().try_fold(doc, |v, k| v.get(*k));
        for key in section
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let meta = top && (key == "apiVersion" || key == "kind");
            if !meta && !shape.fields.contains(&key.as_str()) {
                let mut path = shape.section.join(".");
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                unknown.push(path);
            }
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::unknown_fields;

    #[test]
    fn unknown_fields_at_every_level_of_a_listed_kind() {
        let doc = json!({
            "apiVersion": "v1alpha1",
            "kind": "KubeNodeConfig",
            "bogus": 1,
            "nodeIP": {"validSubnets": [], "other": 2},
            "labels": {"free": "form"},
        });
        assert_eq!(
            unknown_fields(&doc, "KubeNodeConfig"),
            ["bogus", "nodeIP.other"]
        );
    }

    #[test]
    fn a_named_field_is_unknown_in_an_unnamed_kind() {
        let doc = json!({"apiVersion": "v1alpha1", "kind": "KubeClusterConfig", "name": "x"});
        assert_eq!(unknown_fields(&doc, "KubeClusterConfig"), ["name"]);
    }

    #[test]
    fn kinds_not_listed_are_not_checked() {
        let doc = json!({"kind": "KubeFlannelCNIConfig", "bogus": 1});
        assert!(unknown_fields(&doc, "KubeFlannelCNIConfig").is_empty());
    }
}
