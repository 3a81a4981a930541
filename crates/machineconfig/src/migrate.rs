//! Moving configurations to the v1.14 contract: which v1alpha1 fields a user's patches set that
//! Talos v1.14 moved into documents of their own. Talos applies such a patch without complaint;
//! the result is then refused where it sets a field beside the document that replaced it
//! (`validate`), and works where the document is absent. Either way the field is deprecated, and
//! these notices name the document to move it to.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::patch::Patch;
use crate::validate::multidoc::replacement;

/// A v1alpha1 field a patch sets, and the v1.14 document that replaced it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MovedField {
    /// `.machine.kubelet`
    pub field: String,
    /// `KubeletConfig`
    pub document: &'static str,
}

impl fmt::Display for MovedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sets {}, which Talos v1.14 moved to the {} document",
            self.field, self.document
        )
    }
}

/// Every moved v1alpha1 field `patch` sets, each once, in field order.
pub fn moved_fields(patch: &Patch) -> Vec<MovedField> {
    let mut found = BTreeSet::new();
    let mut note = |path: &[&str]| {
        if let Some((field, document)) = replacement(path) {
            found.insert(MovedField {
                field: format!(".{}", field.join(".")),
                document,
            });
        }
    };
    match patch {
        Patch::Strategic(docs) => {
            for doc in docs.iter().filter(|d| d.get("kind").is_none()) {
                walk(doc, &mut Vec::new(), &mut note);
            }
        }
        Patch::Json6902(ops) => {
            for op in ops.iter() {
                let tokens: Vec<String> = op
                    .path()
                    .tokens()
                    .map(|t| t.decoded().into_owned())
                    .collect();
                note(&tokens.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
    }
    found.into_iter().collect()
}

/// Every path of `value`'s mappings down to the depth the replaced fields lie at.
fn walk<'a>(value: &'a Value, path: &mut Vec<&'a str>, note: &mut impl FnMut(&[&str])) {
    const DEPTH: usize = 3;
    let Some(map) = value.as_object() else { return };
    for (key, child) in map {
        path.push(key);
        note(path);
        if path.len() < DEPTH {
            walk(child, path, note);
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_patches_name_the_documents_that_replaced_their_fields() {
        let notes = |text: &str| -> Vec<String> {
            moved_fields(&Patch::parse(text).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            notes(
                "machine:\n  kubelet:\n    extraArgs:\n      v: '2'\n  install:\n    disk: /dev/vda\n"
            ),
            [
                "sets .machine.install, which Talos v1.14 moved to the UnattendedInstallConfig document",
                "sets .machine.kubelet, which Talos v1.14 moved to the KubeletConfig document",
            ]
        );
        assert_eq!(
            notes("- op: add\n  path: /cluster/controllerManager/extraArgs\n  value: {a: b}\n"),
            [
                "sets .cluster.controllerManager, which Talos v1.14 moved to the KubeControllerManagerConfig document"
            ]
        );
        assert!(notes("apiVersion: v1alpha1\nkind: KubeletConfig\nimage: x\n").is_empty());
        assert!(notes("machine:\n  certSANs: [a]\n").is_empty());
    }
}
