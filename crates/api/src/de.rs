//! Deserialization that reads what the Go providers store.
//!
//! CABPT and CACPPT declare their enums as Go strings. Go's encoding/json writes an unset one
//! as `""` wherever the field lacks `omitempty` or sits in a struct that is never omitted, so
//! CACPPT's defaulting webhook stores `controlPlaneConfig.init: {generateType: ""}` in every
//! TalosControlPlane it admits, and CABPT's webhook accepts `hostname.source: ""`. Here `""`
//! means unset: such objects must read, or the provider manages nothing after a migration.

use serde::de::{Deserialize, Deserializer, IntoDeserializer};

/// An optional enum, where `""` (and null, or the field missing) means unset. Any other
/// value must name a variant, and an unknown one is reported as serde reports it.
pub(crate) fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<String>::deserialize(deserializer)? {
        Some(value) if !value.is_empty() => {
            T::deserialize(IntoDeserializer::<D::Error>::into_deserializer(value)).map(Some)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

    use serde_json::{Value, json};

    use crate::bootstrap::v1alpha3::{GenerateType, HostnameSource, TalosConfig};
    use crate::controlplane::v1alpha3::{RolloutStrategyType, TalosControlPlane};

    /// A TalosControlPlane as CACPPT v0.5.13's defaulting webhook leaves it: its own
    /// `Default()` on the manifest, then Go's json.Marshal (the webhook patches the object to
    /// that). The manifest gave `controlplane: {configPatches: [{op: remove, path:
    /// /machine/install}]}`; the rest is what Go wrote.
    fn cacppt_defaulted() -> Value {
        json!({
            "kind": "TalosControlPlane",
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3",
            "metadata": {"name": "c1-cp", "namespace": "default", "creationTimestamp": null},
            "spec": {
                "replicas": 3,
                "version": "v1.33.2",
                "infrastructureTemplate": {
                    "kind": "SimMachineTemplate", "namespace": "default", "name": "c1-cp",
                    "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1"
                },
                "controlPlaneConfig": {
                    "init": {"generateType": "", "hostname": {}},
                    "controlplane": {
                        "generateType": "",
                        "configPatches": [{"op": "remove", "path": "/machine/install", "value": null}],
                        "hostname": {}
                    }
                },
                "rolloutStrategy": {"rollingUpdate": {"maxSurge": 1}, "type": "RollingUpdate"}
            },
            "status": {"initialized": false, "ready": false}
        })
    }

    #[test]
    fn a_talos_control_plane_defaulted_by_cacppt_reads_with_empty_enums_unset() {
        let tcp: TalosControlPlane = serde_json::from_value(cacppt_defaulted()).unwrap();
        let config = &tcp.spec.control_plane_config;
        let init = config
            .init
            .as_ref()
            .expect("init is kept, as an empty spec");
        assert_eq!(init.generate_type, None);
        assert_eq!(init.hostname.as_ref().map(|h| h.source), Some(None));
        assert_eq!(config.controlplane.generate_type, None);
        let patches = config
            .controlplane
            .config_patches
            .as_deref()
            .unwrap_or_default();
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].value, None);
        assert_eq!(
            tcp.spec.rollout_strategy.and_then(|r| r.r#type),
            Some(RolloutStrategyType::RollingUpdate)
        );
    }

    /// What we write back never carries the `""`s we read.
    #[test]
    fn empty_enums_are_not_written_back() {
        let tcp: TalosControlPlane = serde_json::from_value(cacppt_defaulted()).unwrap();
        let written = serde_json::to_value(&tcp.spec).unwrap();
        assert_eq!(
            written["controlPlaneConfig"]["init"],
            json!({"hostname": {}})
        );
        assert_eq!(
            written["controlPlaneConfig"]["controlplane"].get("generateType"),
            None
        );
        assert!(!written.to_string().contains("\"\""), "{written}");
    }

    #[test]
    fn every_optional_enum_reads_empty_and_null_as_unset() {
        let tcp = |rollout: Value| -> TalosControlPlane {
            let mut v = cacppt_defaulted();
            v["spec"]["rolloutStrategy"] = rollout;
            serde_json::from_value(v).unwrap()
        };
        for unset in [json!(""), Value::Null] {
            let got = tcp(json!({"type": unset, "configReboot": unset}))
                .spec
                .rollout_strategy
                .unwrap();
            assert_eq!((got.r#type, got.config_reboot), (None, None), "{unset}");
            let config: TalosConfig = serde_json::from_value(json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "w"},
                "spec": {"generateType": unset, "hostname": {"source": unset}}
            }))
            .unwrap();
            assert_eq!(config.spec.generate_type, None, "{unset}");
            assert_eq!(config.spec.hostname.unwrap().source, None, "{unset}");
        }
        let config: TalosConfig = serde_json::from_value(json!({
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
            "metadata": {"name": "w"},
            "spec": {"generateType": "join", "hostname": {"source": "InfrastructureName"}}
        }))
        .unwrap();
        assert_eq!(config.spec.generate_type, Some(GenerateType::Join));
        assert_eq!(
            config.spec.hostname.unwrap().source,
            Some(HostnameSource::InfrastructureName)
        );
    }

    #[test]
    fn an_unknown_value_is_still_an_error_naming_the_variants() {
        for (field, value) in [
            ("generateType", json!("master")),
            ("generateType", json!(7)),
            ("generateType", json!(" ")),
        ] {
            let err = serde_json::from_value::<TalosConfig>(json!({
                "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                "metadata": {"name": "w"}, "spec": {field: value}
            }))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("controlplane") || err.contains("expected a string"),
                "{value}: {err}"
            );
        }
        let err = serde_json::from_value::<TalosControlPlane>({
            let mut v = cacppt_defaulted();
            v["spec"]["rolloutStrategy"]["type"] = json!("Recreate");
            v
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `Recreate`"), "{err}");
    }

    /// The controller's manifests are YAML too (`talos-capi render`).
    #[test]
    fn yaml_reads_the_same() {
        let tcp: TalosControlPlane = serde_yaml_ng::from_str(
            "apiVersion: controlplane.cluster.x-k8s.io/v1alpha3\nkind: TalosControlPlane\nmetadata: {name: x}\nspec:\n  version: v1.33.2\n  controlPlaneConfig:\n    init: {generateType: ''}\n    controlplane: {generateType: controlplane, hostname: {source: ''}}\n",
        )
        .unwrap();
        let config = &tcp.spec.control_plane_config;
        assert_eq!(config.init.as_ref().unwrap().generate_type, None);
        assert_eq!(
            config.controlplane.generate_type,
            Some(GenerateType::Controlplane)
        );
        assert_eq!(config.controlplane.hostname.as_ref().unwrap().source, None);
    }
}
