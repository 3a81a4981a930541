//! Hand-written schema fragments for what schemars cannot express as a structural Kubernetes
//! schema: "any JSON" values and int-or-percentage fields with their CEL rules.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value (a JSON 6902 patch value): kept as written, never pruned.
pub(crate) fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// An absolute number (>= 0) or a percentage from 0% to 100%.
pub(crate) fn int_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{
            "rule": "type(self) == string ? self.matches('^(100|[1-9]?[0-9])%$') : self >= 0",
            "message": "must be a non-negative integer or a percentage from 0% to 100%",
        }],
    })
}
