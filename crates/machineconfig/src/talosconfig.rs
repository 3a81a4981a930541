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
use crate::{Error, SecretsBundle};

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
    let ca_pem = decode_pem(&bundle.certs.os.crt)
        .map_err(|_| Error::Bundle("certs.os.crt is not base64-encoded PEM".into()))?;
    let ca_key = signing_key(
        &decode_pem(&bundle.certs.os.key)
            .map_err(|_| Error::Bundle("certs.os.key is not base64-encoded PEM".into()))?,
    )?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| Error::Bundle(format!("unreadable OS CA certificate: {e}")))?;

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
        serde_yaml_ng::to_string(self).map_err(|e| Error::Bundle(e.to_string()))
    }

    pub fn from_yaml(text: &str) -> Result<TalosConfig, Error> {
        serde_yaml_ng::from_str(text).map_err(|e| Error::Parse {
            what: "talosconfig".into(),
            message: e.to_string(),
        })
    }

    /// The current context.
    pub fn current(&self) -> Option<&Context> {
        self.contexts.get(&self.context)
    }
}
