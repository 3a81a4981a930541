//! Hand-written schema fragments for what schemars cannot express as a structural Kubernetes
//! schema: "any JSON" values and int-or-percentage fields with their CEL rules.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value (a JSON 6902 patch value): kept as written, never pruned.
pub(crate) fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// An absolute number (0 to i32's maximum, as IntOrString reads it) or a percentage from 0%
/// to 100%.
pub(crate) fn int_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{
            "rule": "type(self) == string ? self.matches('^(100|[1-9]?[0-9])%$') : self >= 0 && self <= 2147483647",
            "message": "must be a non-negative integer (at most 2147483647) or a percentage from 0% to 100%",
        }],
    })
}

// Versions. Every version field carries an OpenAPI `pattern` (and a `maxLength`), and every
// CEL rule that reads a version guards itself with its own bounded regex, so that no admitted
// value, nor one stored before these patterns, can make a rule fail to evaluate (an int() of
// 20 digits is a "type conversion error", and `int(x) + 1` of int64's maximum an overflow,
// and then every update of the object would be refused). The regexes use `[.]` and `[+]`
// rather than escapes, so the same text is a valid OpenAPI pattern and a CEL string literal.

/// One numeric component of a version: 0, or at most six digits without a leading zero.
macro_rules! number {
    () => {
        "(0|[1-9][0-9]{0,5})"
    };
}

/// Semantic-versioning pre-release and build suffixes: `-rc.1`, `+build.5`, `-beta.0+dirty`.
macro_rules! suffixes {
    () => {
        "(-[0-9A-Za-z-]+([.][0-9A-Za-z-]+)*)?([+][0-9A-Za-z-]+([.][0-9A-Za-z-]+)*)?"
    };
}

/// A Kubernetes or Talos release: `v1.33.2`, `v1.34.0-rc.1`. Cluster API's own version regex
/// (its Machine webhook) accepts every such string, so spec.version can go to a Machine.
pub(crate) const RELEASE_VERSION: &str = concat!(
    "^v",
    number!(),
    "[.]",
    number!(),
    "[.]",
    number!(),
    suffixes!(),
    "$"
);

/// A Talos configuration contract: `v1.13`, `1.13`, `v1.13.0`, `v1.13.0-beta.1`, or empty (the
/// newest this provider knows).
pub(crate) const CONTRACT_VERSION: &str = concat!(
    "^(v?",
    number!(),
    "[.]",
    number!(),
    "([.]",
    number!(),
    ")?",
    suffixes!(),
    ")?$"
);

/// A CEL rule that `self` matches `pattern`, to give the field's pattern a readable message.
pub(crate) fn matches(pattern: &str, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!("self.matches('{pattern}')")).message(message)
}

/// No Kubernetes upgrade skips a minor version. The rule parses the minor versions only where
/// its own regex saw at most six digits, so it is total on any string (a stored value from
/// before spec.version had a pattern included); anything else is left to the pattern.
pub(crate) fn no_skipped_minor() -> kube::core::Rule {
    const MINOR: &str = "'^v[0-9]{1,6}[.][0-9]{1,6}[.]'";
    kube::core::Rule::new(format!(
        "!self.matches({MINOR}) || !oldSelf.matches({MINOR}) || self.split('.')[0] != oldSelf.split('.')[0] || int(self.split('.')[1]) <= int(oldSelf.split('.')[1]) + 1"
    ))
    .message("a Kubernetes upgrade may not skip a minor version: upgrade to the next minor version first, then to this one once that rollout is done")
}
