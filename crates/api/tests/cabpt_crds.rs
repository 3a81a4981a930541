//! Our TalosConfig and TalosConfigTemplate CRDs accept every spec CABPT's own CRDs accept:
//! CABPT v0.6.12's `config/crd/bases`, taken from its Go module at test time, compared field for
//! field (type, enum values, required fields) with the schemas we generate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use testkit::tools::{Tool, locate};

fn schema<'a>(crd: &'a CustomResourceDefinition, version: &str) -> &'a JSONSchemaProps {
    crd.spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| {
            panic!(
                "{} has no {version} schema",
                crd.metadata.name.as_deref().unwrap_or("?")
            )
        })
}

fn items(s: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match s.items.as_ref()? {
        JSONSchemaPropsOrArray::Schema(s) => Some(s),
        JSONSchemaPropsOrArray::Schemas(v) => v.first(),
    }
}

/// Everything `theirs` accepts at `path`, `ours` accepts too; problems are collected.
fn compare(
    theirs: &JSONSchemaProps,
    ours: &JSONSchemaProps,
    path: &str,
    problems: &mut Vec<String>,
) {
    let open = ours.x_kubernetes_preserve_unknown_fields == Some(true);
    let int_or_string = ours.x_kubernetes_int_or_string == Some(true);
    if let (Some(t), Some(o)) = (&theirs.type_, &ours.type_)
        && t != o
        && !int_or_string
    {
        problems.push(format!("{path}: type {t} (CABPT) vs {o} (ours)"));
    }
    if let (Some(t), Some(o)) = (&theirs.enum_, &ours.enum_) {
        for value in t {
            if !o.contains(value) {
                problems.push(format!("{path}: CABPT allows {:?}, we do not", value.0));
            }
        }
    }
    for required in ours.required.iter().flatten() {
        if !theirs.required.iter().flatten().any(|r| r == required) {
            problems.push(format!("{path}: we require {required}, CABPT does not"));
        }
    }
    for (name, their_prop) in theirs.properties.iter().flatten() {
        let child = format!("{path}.{name}");
        match ours.properties.as_ref().and_then(|p| p.get(name)) {
            Some(our_prop) => compare(their_prop, our_prop, &child, problems),
            None if open => {}
            None => problems.push(format!(
                "{child}: in CABPT's schema, not in ours (it would be pruned)"
            )),
        }
    }
    if let (Some(t), Some(o)) = (items(theirs), items(ours)) {
        compare(t, o, &format!("{path}[]"), problems);
    }
}

#[test]
fn our_bootstrap_crds_accept_every_spec_cabpt_accepts() {
    let dir = locate(Tool::CabptConfig).unwrap().join("crd/bases");
    let theirs = testkit::crds_from_dir(&dir).unwrap();
    let ours = api::all_crds();
    let mut compared = 0;
    let mut problems = Vec::new();
    for kind in ["TalosConfig", "TalosConfigTemplate"] {
        let t = theirs
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("CABPT ships the CRD");
        let o = ours
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("we ship the CRD");
        let (ts, os) = (schema(t, "v1alpha3"), schema(o, "v1alpha3"));
        let spec = |s: &JSONSchemaProps| {
            s.properties
                .as_ref()
                .and_then(|p| p.get("spec"))
                .cloned()
                .unwrap()
        };
        compare(&spec(ts), &spec(os), &format!("{kind}.spec"), &mut problems);
        compared += 1;
    }
    assert_eq!(compared, 2);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
