//! The secrets scan: every secret a cluster's Secrets hold (the bundle's keys and tokens, the
//! talosconfig's and kubeconfig's client keys), searched for in everything the operator emits
//! (its logs, Events, the status and metadata of every object, its metrics).
//!
//! A secret is searched for as fragments: a secret of up to 48 characters whole, a longer one as
//! consecutive 32-character pieces, so that any 64 characters of it in a row are found wherever
//! they start. Keys are searched for both as the base64 text Secrets store and as PEM body lines.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// Why the secrets of a bundle, talosconfig or kubeconfig could not be taken. The parser's own
/// message is kept as the source only, as it may quote the text.
#[derive(Debug, thiserror::Error)]
pub enum NeedleError {
    #[error("the {what} is not YAML")]
    Yaml {
        what: &'static str,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("the bundle has no certs")]
    NoCerts,
}

/// `yaml` parsed, as the `what` it should be.
fn parse(what: &'static str, yaml: &str) -> Result<Value, NeedleError> {
    serde_yaml_ng::from_str(yaml).map_err(|source| NeedleError::Yaml { what, source })
}

/// Text the operator emitted, named for the report.
#[derive(Debug)]
pub struct Haystack {
    pub name: String,
    pub text: String,
}

/// One fragment of a secret found in a haystack: where, and which kind of secret (never the
/// secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub haystack: String,
    pub offset: usize,
    pub secret: String,
}

/// What a scan looked at and found.
#[derive(Debug, Default)]
pub struct Report {
    pub bytes: usize,
    pub haystacks: usize,
    pub secrets: usize,
    pub fragments: usize,
    pub hits: Vec<Hit>,
}

/// Secrets to look for, each with a label naming where it comes from.
#[derive(Default)]
pub struct Needles {
    fragments: Vec<(String, String)>,
    secrets: BTreeSet<String>,
}

/// Counts only: the fragments are secrets.
impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("secrets", &self.secrets)
            .field("fragments", &self.fragments.len())
            .finish()
    }
}

impl Needles {
    /// Look for `secret` (labelled `what`).
    pub fn add(&mut self, what: &str, secret: &str) {
        let secret = secret.trim();
        if secret.len() < 12 {
            return;
        }
        self.secrets.insert(what.to_owned());
        if secret.len() <= 48 {
            self.fragments.push((what.to_owned(), secret.to_owned()));
            return;
        }
        let chars: Vec<char> = secret.chars().collect();
        for chunk in chars.chunks(32).filter(|c| c.len() == 32) {
            self.fragments
                .push((what.to_owned(), chunk.iter().collect::<String>()));
        }
    }

    /// A key stored as base64 PEM: the stored text and its PEM body lines.
    pub fn add_key(&mut self, what: &str, b64_pem: &str) {
        self.add(what, b64_pem);
        let Ok(pem) = STANDARD.decode(b64_pem.trim()) else {
            return;
        };
        let pem = String::from_utf8_lossy(&pem);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        self.add(what, &body);
    }

    /// The secrets of a Talos secrets bundle (YAML, as `<cluster>-talos` holds it).
    pub fn add_bundle(&mut self, yaml: &str) -> Result<(), NeedleError> {
        let bundle = parse("bundle", yaml)?;
        for (what, pointer) in [
            ("bundle cluster.secret", "/cluster/secret"),
            ("bundle bootstrap token", "/secrets/bootstraptoken"),
            (
                "bundle secretbox secret",
                "/secrets/secretboxencryptionsecret",
            ),
            ("bundle aescbc secret", "/secrets/aescbcencryptionsecret"),
            ("bundle trustd token", "/trustdinfo/token"),
        ] {
            if let Some(s) = bundle.pointer(pointer).and_then(Value::as_str) {
                self.add(what, s);
            }
        }
        let certs = bundle
            .get("certs")
            .and_then(Value::as_object)
            .ok_or(NeedleError::NoCerts)?;
        for (name, pair) in certs {
            if let Some(key) = pair.get("key").and_then(Value::as_str) {
                self.add_key(&format!("bundle certs.{name}.key"), key);
            }
        }
        Ok(())
    }

    /// The client keys of a talosconfig.
    pub fn add_talosconfig(&mut self, yaml: &str) -> Result<(), NeedleError> {
        let config = parse("talosconfig", yaml)?;
        for (name, context) in config["contexts"].as_object().into_iter().flatten() {
            if let Some(key) = context.get("key").and_then(Value::as_str) {
                self.add_key(&format!("talosconfig {name} key"), key);
            }
        }
        Ok(())
    }

    /// The client keys and tokens of a kubeconfig.
    pub fn add_kubeconfig(&mut self, yaml: &str) -> Result<(), NeedleError> {
        let config = parse("kubeconfig", yaml)?;
        for user in config["users"].as_array().into_iter().flatten() {
            if let Some(key) = user["user"]["client-key-data"].as_str() {
                self.add_key("kubeconfig client key", key);
            }
            if let Some(token) = user["user"]["token"].as_str() {
                self.add("kubeconfig token", token);
            }
        }
        Ok(())
    }

    /// Search every haystack for every fragment.
    pub fn scan(&self, haystacks: &[Haystack]) -> Report {
        let mut report = Report {
            haystacks: haystacks.len(),
            secrets: self.secrets.len(),
            fragments: self.fragments.len(),
            ..Report::default()
        };
        for haystack in haystacks {
            report.bytes += haystack.text.len();
            for (what, fragment) in &self.fragments {
                if let Some(offset) = haystack.text.find(fragment.as_str()) {
                    report.hits.push(Hit {
                        haystack: haystack.name.clone(),
                        offset,
                        secret: what.clone(),
                    });
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn finds_any_64_characters_of_a_key_and_whole_tokens_only() {
        let bundle = machineconfig::SecretsBundle::generate(machineconfig::Contract::NEWEST)
            .unwrap()
            .to_yaml()
            .unwrap();
        let mut needles = Needles::default();
        needles.add_bundle(&bundle).unwrap();
        let parsed: Value = serde_yaml_ng::from_str(&bundle).unwrap();
        let key = parsed["certs"]["etcd"]["key"].as_str().unwrap();
        let pem = String::from_utf8(STANDARD.decode(key).unwrap()).unwrap();
        let line = pem.lines().nth(1).unwrap();
        let token = parsed["trustdinfo"]["token"].as_str().unwrap();
        let clean = Haystack {
            name: "clean".into(),
            text: format!(
                "reconciled; certificate {}",
                parsed["certs"]["etcd"]["crt"].as_str().unwrap()
            ),
        };
        for (text, found) in [
            (format!("log: key={}", &key[7..7 + 64]), true),
            (
                format!("error near {}", &line[3..3 + 64.min(line.len() - 3)]),
                true,
            ),
            (format!("token {token} in a message"), true),
            (format!("half a token {}", &token[..8]), false),
        ] {
            let report = needles.scan(&[
                Haystack {
                    name: "h".into(),
                    text,
                },
                Haystack {
                    name: "clean".into(),
                    text: clean.text.clone(),
                },
            ]);
            assert_eq!(!report.hits.is_empty(), found, "{:?}", report.hits);
            assert!(report.hits.iter().all(|h| h.haystack == "h"));
        }
    }
}
