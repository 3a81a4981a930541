//! talosconfig: the client configuration talosctl and our Talos client read — one context named
//! after the cluster with an Ed25519 os:admin (or other role) client certificate signed by the
//! cluster's OS CA.

use std::collections::BTreeMap;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::secrets::{b64, decode_pem, ed25519_pem, signing_key};
use crate::{DecodeError, Error, SecretsBundle};

/// One talosconfig context.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct Context {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// base64 PEM of the OS CA certificate.
    #[serde(default)]
    pub ca: String,
    /// base64 PEM of the client certificate.
    #[serde(default)]
    pub crt: String,
    /// base64 PEM of the client key.
    #[serde(default)]
    pub key: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The OS CA certificate (PEM) the Talos API's server certificates are checked against.
    pub fn ca_pem(&self) -> Result<String, DecodeError> {
        decode_pem(&self.ca)
    }

    /// The client certificate (PEM).
    pub fn crt_pem(&self) -> Result<String, DecodeError> {
        decode_pem(&self.crt)
    }

    /// The client key (PEM). Secret: never log it or put it in an error.
    pub fn key_pem(&self) -> Result<String, DecodeError> {
        decode_pem(&self.key)
    }
}

/// A talosconfig file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TalosConfig {
    pub context: String,
    pub contexts: BTreeMap<String, Context>,
}

/// What a client certificate is issued for.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The Talos role, e.g. os:admin or os:reader.
    pub role: String,
    pub validity: Duration,
    pub endpoints: Vec<String>,
    pub nodes: Vec<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            role: "os:admin".into(),
            validity: Duration::days(365),
            endpoints: Vec::new(),
            nodes: Vec::new(),
        }
    }
}

/// A talosconfig for `cluster_name`, with a fresh client certificate signed by the bundle's
/// OS CA (ClientAuth only, as Talos requires).
pub fn generate(
    cluster_name: &str,
    bundle: &SecretsBundle,
    options: &ClientOptions,
) -> Result<TalosConfig, Error> {
    let field = |field: &str| {
        let field = field.to_owned();
        move |source| Error::BundleField { field, source }
    };
    let ca_pem = decode_pem(&bundle.certs.os.crt).map_err(field("certs.os.crt"))?;
    let ca_key = signing_key(&decode_pem(&bundle.certs.os.key).map_err(field("certs.os.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|source| Error::CaCertificate { ca: "OS", source })?;

    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, options.role.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + options.validity;
    let cert = params.signed_by(&key, &issuer)?;

    let context = Context {
        endpoints: options.endpoints.clone(),
        nodes: options.nodes.clone(),
        ca: bundle.certs.os.crt.clone(),
        crt: b64(&cert.pem()),
        key: b64(&ed25519_pem(&key)?),
    };
    Ok(TalosConfig {
        context: cluster_name.to_owned(),
        contexts: BTreeMap::from([(cluster_name.to_owned(), context)]),
    })
}

impl TalosConfig {
    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_yaml_ng::to_string(self).map_err(|source| Error::Serialize {
            what: "talosconfig",
            source,
        })
    }

    /// Parse a talosconfig as talosctl writes it (fields we do not use are ignored).
    pub fn from_yaml(text: &str) -> Result<TalosConfig, Error> {
        crate::parse::from_yaml("talosconfig", text)
    }

    /// The current context.
    pub fn current(&self) -> Option<&Context> {
        self.contexts.get(&self.context)
    }

    /// The context called `name`, or the current one when `name` is `None`; with its name.
    pub fn context_named<'a>(&'a self, name: Option<&'a str>) -> Option<(&'a str, &'a Context)> {
        let name = name.unwrap_or(&self.context);
        self.contexts.get(name).map(|c| (name, c))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::Contract;

    #[test]
    fn round_trips_and_never_shows_the_key() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let options = ClientOptions {
            endpoints: vec!["10.0.0.2".into()],
            ..ClientOptions::default()
        };
        let config = generate("demo", &bundle, &options).unwrap();
        let back = TalosConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(back, config);
        let (name, ctx) = back.context_named(None).unwrap();
        assert_eq!(name, "demo");
        assert!(back.context_named(Some("other")).is_none());
        assert!(
            ctx.key_pem()
                .unwrap()
                .starts_with("-----BEGIN ED25519 PRIVATE KEY-----")
        );
        assert!(
            ctx.crt_pem()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(
            ctx.ca_pem()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let debug = format!("{back:?}");
        assert!(
            !debug.contains(&ctx.key) && !debug.contains(&ctx.crt),
            "{debug}"
        );
    }

    /// A talosconfig whose client key sits where a mapping or a list belongs: refused naming
    /// the field, never quoting the key.
    #[test]
    fn hostile_talosconfigs_name_the_field_never_the_key() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let config = generate("demo", &bundle, &ClientOptions::default()).unwrap();
        let key = config.contexts["demo"].key.clone();
        let pem = config.contexts["demo"].key_pem().unwrap();
        let body = pem.lines().nth(1).unwrap().to_owned();
        for (text, says) in [
            (
                format!("context: demo\ncontexts:\n  demo: {key}\n"),
                "parsing talosconfig: field `contexts.*` is a string, expected a map (line 3, column 9)",
            ),
            (
                format!("context: demo\ncontexts:\n  demo:\n    endpoints: {key}\n"),
                "parsing talosconfig: field `contexts.*.endpoints` is a string, expected a sequence (line 4, column 16)",
            ),
            (
                format!("context: demo\ncontexts:\n  {key}: {key}\n"),
                "parsing talosconfig: field `contexts.*` is a string",
            ),
            (
                format!("context: {key}\ncontexts: {key}\n"),
                "parsing talosconfig: field `contexts` is a string, expected a map (line 2, column 11)",
            ),
        ] {
            let err = TalosConfig::from_yaml(&text).unwrap_err();
            assert!(err.to_string().starts_with(says), "{err}");
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(
                    !text.contains(&key[..32]) && !text.contains(&body),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn parse_errors_keep_the_yaml_error() {
        let err = TalosConfig::from_yaml("context: [").unwrap_err();
        assert!(
            err.to_string().starts_with("parsing talosconfig: "),
            "{err}"
        );
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<crate::parse::InputError>())
                .is_some()
        );
        let bad = Context {
            key: "%%".into(),
            ..Context::default()
        };
        assert_eq!(
            bad.key_pem(),
            Err(DecodeError::Base64Character { offset: 0 })
        );
    }
}
