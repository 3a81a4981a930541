//! The cluster's secrets bundle, in the YAML shape of `talosctl gen secrets`, so bundles move
//! freely between talosctl, CABPT's `<cluster>-talos` Secret and us.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use p256::pkcs8::{DecodePrivateKey, LineEnding};

use rand::{Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use rsa::pkcs1::EncodeRsaPrivateKey;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{Contract, DecodeError, Error};

/// A certificate and its private key, each a base64-encoded PEM block (Talos's encoding).
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct CertAndKey {
    #[serde(default)]
    pub crt: String,
    #[serde(default)]
    pub key: String,
}

/// A private key alone, base64-encoded PEM.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct KeyOnly {
    #[serde(default)]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub id: String,
    pub secret: String,
}

#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub bootstraptoken: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretboxencryptionsecret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbcencryptionsecret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct TrustdInfo {
    pub token: String,
}

#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct Certs {
    pub etcd: CertAndKey,
    pub k8s: CertAndKey,
    pub k8saggregator: CertAndKey,
    pub k8sserviceaccount: KeyOnly,
    pub os: CertAndKey,
}

/// Everything secret a cluster shares: identities, tokens, encryption secret and CAs.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct SecretsBundle {
    pub cluster: ClusterSecrets,
    pub secrets: Secrets,
    pub trustdinfo: TrustdInfo,
    pub certs: Certs,
}

/// Debug output that names the type and nothing else: these types hold secret material.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    )*};
}
redacted_debug!(
    SecretsBundle,
    CertAndKey,
    KeyOnly,
    ClusterSecrets,
    Secrets,
    TrustdInfo,
    Certs
);

impl SecretsBundle {
    /// A new bundle with fresh keys, shaped for `contract` (RSA 4096 service-account key). The
    /// cluster id is base64 in the URL alphabet before v1.14 and in the standard one from v1.14
    /// on, as `talosctl gen secrets` of each release writes it.
    pub fn generate(contract: Contract) -> Result<SecretsBundle, Error> {
        let mut rng = rand::thread_rng();
        Ok(SecretsBundle {
            cluster: ClusterSecrets {
                id: cluster_id(contract, &random_bytes(&mut rng)),
                secret: STANDARD.encode(random_bytes(&mut rng)),
            },
            secrets: Secrets {
                bootstraptoken: token(&mut rng),
                secretboxencryptionsecret: Some(STANDARD.encode(random_bytes(&mut rng))),
                aescbcencryptionsecret: None,
            },
            trustdinfo: TrustdInfo {
                token: token(&mut rng),
            },
            certs: Certs {
                etcd: ecdsa_ca(Some("etcd"))?,
                k8s: ecdsa_ca(Some("kubernetes"))?,
                k8saggregator: ecdsa_ca(None)?,
                k8sserviceaccount: KeyOnly {
                    key: b64(&rsa_key()?),
                },
                os: ed25519_ca("talos")?,
            },
        })
    }

    /// Parse a bundle as `talosctl gen secrets` writes it.
    pub fn from_yaml(text: &str) -> Result<SecretsBundle, Error> {
        let bundle: SecretsBundle = crate::parse::from_yaml("secrets bundle", text)?;
        bundle.check()?;
        Ok(bundle)
    }

    /// The bundle held by a CABPT `<cluster>-talos` Secret: its `bundle` key, or the legacy
    /// keys older CABPT releases wrote (`certs`, `kubeSecrets`, `trustdInfo`). Legacy Secrets
    /// carry no cluster id and secret; fresh ones are generated, as CABPT does when it upgrades
    /// such a Secret.
    pub fn from_cabpt_secret(
        data: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<SecretsBundle, Error> {
        let text = |key: &str| -> Result<String, Error> {
            let field = || format!("the Secret's {key:?} key");
            let bytes = data
                .get(key)
                .ok_or_else(|| Error::BundleMissing { field: field() })?;
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|e| Error::BundleField {
                    field: field(),
                    source: DecodeError::Utf8(e),
                })
        };
        if data.contains_key("bundle") {
            return SecretsBundle::from_yaml(&text("bundle")?);
        }
        let parse = |key: &str, body: String| -> Result<serde_json::Value, Error> {
            crate::parse::from_yaml(&format!("legacy Secret key {key:?}"), &body)
        };
        let certs = parse("certs", text("certs")?)?;
        let kube = parse("kubeSecrets", text("kubeSecrets")?)?;
        let trustd = parse("trustdInfo", text("trustdInfo")?)?;
        let pair = |name: &str| -> CertAndKey {
            let get = |part: &str| {
                certs
                    .get(name)
                    .and_then(|c| c.get(part))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            CertAndKey {
                crt: get("crt"),
                key: get("key"),
            }
        };
        let mut rng = rand::thread_rng();
        let str_of =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let bundle = SecretsBundle {
            cluster: ClusterSecrets {
                id: URL_SAFE.encode(random_bytes(&mut rng)),
                secret: STANDARD.encode(random_bytes(&mut rng)),
            },
            secrets: Secrets {
                bootstraptoken: str_of(&kube, "bootstraptoken").unwrap_or_default(),
                secretboxencryptionsecret: str_of(&kube, "secretboxencryptionsecret"),
                aescbcencryptionsecret: str_of(&kube, "aescbcencryptionsecret"),
            },
            trustdinfo: TrustdInfo {
                token: str_of(&trustd, "token").unwrap_or_default(),
            },
            certs: Certs {
                etcd: pair("etcd"),
                k8s: pair("k8s"),
                k8saggregator: pair("k8saggregator"),
                k8sserviceaccount: KeyOnly {
                    key: pair("k8sserviceaccount").key,
                },
                os: pair("os"),
            },
        };
        bundle.check()?;
        Ok(bundle)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_yaml_ng::to_string(self).map_err(|source| Error::Serialize {
            what: "secrets bundle",
            source,
        })
    }

    /// The secretbox secret, or the legacy aescbc one.
    pub fn encryption_secret(&self) -> (&'static str, &str) {
        match (
            &self.secrets.secretboxencryptionsecret,
            &self.secrets.aescbcencryptionsecret,
        ) {
            (Some(s), _) => ("secretboxEncryptionSecret", s),
            (None, Some(s)) => ("aescbcEncryptionSecret", s),
            (None, None) => ("secretboxEncryptionSecret", ""),
        }
    }

    /// Structural checks: every field present and every PEM decodable. Names the field, never
    /// its content.
    fn check(&self) -> Result<(), Error> {
        let missing = |field: &str| Error::BundleMissing {
            field: field.to_owned(),
        };
        if self.cluster.id.is_empty() {
            return Err(missing("cluster.id"));
        }
        if self.cluster.secret.is_empty() {
            return Err(missing("cluster.secret"));
        }
        if self.secrets.bootstraptoken.is_empty() {
            return Err(missing("secrets.bootstraptoken"));
        }
        if self.trustdinfo.token.is_empty() {
            return Err(missing("trustdinfo.token"));
        }
        for (name, pair) in [
            ("certs.etcd", &self.certs.etcd),
            ("certs.k8s", &self.certs.k8s),
            ("certs.k8saggregator", &self.certs.k8saggregator),
            ("certs.os", &self.certs.os),
        ] {
            let crt = format!("{name}.crt");
            let key = format!("{name}.key");
            let cert_public = certificate_public_key(&crt, &check_pem(&crt, &pair.crt)?)?;
            let key_public = private_key_public_key(&key, &check_pem(&key, &pair.key)?)?;
            if cert_public != key_public {
                return Err(Error::BundleMismatch {
                    pair: name.to_owned(),
                });
            }
        }
        let sa = "certs.k8sserviceaccount.key";
        private_key_public_key(sa, &check_pem(sa, &self.certs.k8sserviceaccount.key)?)?;
        let invalid = |field: &str, source| Error::BundleField {
            field: field.to_owned(),
            source,
        };
        if !is_bootstrap_token(&self.secrets.bootstraptoken) {
            return Err(invalid(
                "secrets.bootstraptoken",
                DecodeError::BootstrapToken,
            ));
        }
        // Kubernetes's encryption providers: secretbox takes a 32-byte key, aescbc 16, 24 or 32.
        for (field, value, sizes) in [
            (
                "secrets.secretboxencryptionsecret",
                &self.secrets.secretboxencryptionsecret,
                &[32][..],
            ),
            (
                "secrets.aescbcencryptionsecret",
                &self.secrets.aescbcencryptionsecret,
                &[16, 24, 32][..],
            ),
        ] {
            let Some(value) = value else { continue };
            let key = STANDARD
                .decode(value.trim())
                .map_err(|e| invalid(field, DecodeError::from(e)))?;
            if !sizes.contains(&key.len()) {
                return Err(invalid(field, DecodeError::KeyLength { bytes: key.len() }));
            }
        }
        Ok(())
    }
}

/// The public key of a PEM certificate (the bit string of its SubjectPublicKeyInfo).
fn certificate_public_key(field: &str, pem: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::BundleField {
        field: field.to_owned(),
        source: DecodeError::Certificate,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad())?;
    let cert = block.parse_x509().map_err(|_| bad())?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The public key of a PEM private key in any form Talos writes (RSA PKCS#1, SEC1, PKCS#8,
/// Ed25519), in the encoding a certificate carries it, so the two compare.
fn private_key_public_key(field: &str, pem: &str) -> Result<Vec<u8>, Error> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey};
    let (label, body) = pem_block(pem).map_err(|source| Error::BundleField {
        field: field.to_owned(),
        source,
    })?;
    let bad = || Error::BundleField {
        field: field.to_owned(),
        source: DecodeError::PrivateKey {
            label: label.clone(),
        },
    };
    if label == "RSA PRIVATE KEY" {
        let der = STANDARD.decode(body).map_err(|_| bad())?;
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| bad())?;
        let public = key.to_public_key().to_pkcs1_der().map_err(|_| bad())?;
        return Ok(public.as_bytes().to_vec());
    }
    let key = signing_key(pem).map_err(|_| bad())?;
    Ok(key.public_key_raw().to_vec())
}

/// A base64 PEM field of a bundle: present, and decodable; its PEM text.
fn check_pem(field: &str, value: &str) -> Result<String, Error> {
    if value.trim().is_empty() {
        return Err(Error::BundleMissing {
            field: field.to_owned(),
        });
    }
    decode_pem(value).map_err(|source| Error::BundleField {
        field: field.to_owned(),
        source,
    })
}

fn random_bytes(rng: &mut impl RngCore) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

/// A token in Kubernetes bootstrap-token form: `[a-z0-9]{6}.[a-z0-9]{16}`.
fn token(rng: &mut impl Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect()
    };
    format!("{}.{}", pick(6), pick(16))
}

/// Kubernetes's bootstrap token form, `[a-z0-9]{6}.[a-z0-9]{16}`: the API server refuses any
/// other, and workers could never join.
fn is_bootstrap_token(token: &str) -> bool {
    let ok = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    token
        .split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

pub(crate) fn b64(pem: &str) -> String {
    STANDARD.encode(pem.as_bytes())
}

/// The PEM text inside a base64 field. The error says what is wrong without quoting the field.
pub fn decode_pem(b64_pem: &str) -> Result<String, DecodeError> {
    let bytes = STANDARD.decode(b64_pem.trim())?;
    let text = String::from_utf8(bytes).map_err(|e| DecodeError::Utf8(e.utf8_error()))?;
    if !text.contains("-----BEGIN ") {
        return Err(DecodeError::NoPemBlock);
    }
    Ok(text)
}

/// Talos's CA template: 10 years, CertSign + DigitalSignature, server and client auth.
fn ca_params(organization: Option<&str>) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + Duration::hours(87600);
    params.use_authority_key_identifier_extension = false;
    Ok(params)
}

/// An ECDSA P-256 CA with its key as SEC1 ("EC PRIVATE KEY"), as Talos writes them.
fn ecdsa_ca(organization: Option<&str>) -> Result<CertAndKey, Error> {
    let key = KeyPair::generate()?;
    let cert = ca_params(organization)?.self_signed(&key)?;
    let secret = p256::SecretKey::from_pkcs8_der(&key.serialize_der())
        .map_err(|e| Error::Crypto(Box::new(e)))?;
    Ok(CertAndKey {
        crt: b64(&cert.pem()),
        key: b64(&sec1_pem(&secret)),
    })
}

/// RFC 5915 ECPrivateKey with the named-curve parameters Go's x509 parser requires (the p256
/// crate's SEC1 encoding omits them): version 1, the scalar, prime256v1, the public point.
fn sec1_pem(secret: &p256::SecretKey) -> String {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    const CURVE: [u8; 12] = [
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let point = secret.public_key().to_encoded_point(false);
    let mut der = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    der.extend_from_slice(&secret.to_bytes());
    der.extend_from_slice(&CURVE);
    der.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    der.extend_from_slice(point.as_bytes());
    pem("EC PRIVATE KEY", &der)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An Ed25519 CA with its key as PKCS#8 in an "ED25519 PRIVATE KEY" block, as Talos writes it.
fn ed25519_ca(organization: &str) -> Result<CertAndKey, Error> {
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let cert = ca_params(Some(organization))?.self_signed(&key)?;
    Ok(CertAndKey {
        crt: b64(&cert.pem()),
        key: b64(&ed25519_pem(&key)?),
    })
}

/// PKCS#8 v1 (seed only) Ed25519 key in Talos's "ED25519 PRIVATE KEY" PEM block. ring emits
/// PKCS#8 v2 (seed + public key); the 32-byte seed sits at offset 16 of that document.
pub(crate) fn ed25519_pem(key: &KeyPair) -> Result<String, Error> {
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialize_der();
    let seed = der
        .get(16..48)
        .ok_or_else(|| Error::Crypto("unexpected Ed25519 PKCS#8 layout".into()))?;
    let mut v1 = V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    Ok(pem("ED25519 PRIVATE KEY", &v1))
}

/// The rcgen key for a PEM private key in any form Talos writes: "ED25519 PRIVATE KEY",
/// "EC PRIVATE KEY" (SEC1) or "PRIVATE KEY" (PKCS#8).
pub fn signing_key(pem: &str) -> Result<KeyPair, Error> {
    fn bad(source: impl Into<crate::BoxError>) -> Error {
        Error::CaKey {
            source: source.into(),
        }
    }
    let (label, body) = pem_block(pem).map_err(bad)?;
    let der = STANDARD
        .decode(body)
        .map_err(|e| bad(DecodeError::from(e)))?;
    let pkcs8 = match label.as_str() {
        "EC PRIVATE KEY" => {
            use p256::pkcs8::EncodePrivateKey;
            p256::SecretKey::from_sec1_der(&der)
                .map_err(bad)?
                .to_pkcs8_der()
                .map_err(bad)?
                .as_bytes()
                .to_vec()
        }
        _ => der,
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(bad)
}

/// The label and base64 body of the first PEM block, which must end with an END line of the
/// same label.
fn pem_block(pem: &str) -> Result<(String, String), DecodeError> {
    let start = pem.find("-----BEGIN ").ok_or(DecodeError::NoPemBlock)?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let (label, rest) = rest
        .split_once("-----")
        .ok_or(DecodeError::UnterminatedPem)?;
    let (body, after) = rest
        .split_once("-----END ")
        .ok_or(DecodeError::UnterminatedPem)?;
    if !after.starts_with(&format!("{label}-----")) {
        return Err(DecodeError::UnterminatedPem);
    }
    let body = body.chars().filter(|c| !c.is_whitespace()).collect();
    Ok((label.to_owned(), body))
}

/// A cluster id of `bytes`: base64 in the URL alphabet before v1.14, in the standard one from
/// v1.14 on (Talos's `ClusterIDEncoding`).
fn cluster_id(contract: Contract, bytes: &[u8]) -> String {
    if contract.at_least(1, 14) {
        STANDARD.encode(bytes)
    } else {
        URL_SAFE.encode(bytes)
    }
}

/// A new RSA-4096 key as the PKCS#1 PEM talosctl writes. aws-lc generates it (the bundle
/// benchmark in docs/benchmarks.md: 0.81 s, against 2.4 s with the pure-Rust `rsa` crate); the
/// `rsa` crate re-encodes its PKCS#8 output.
fn rsa_key() -> Result<String, Error> {
    use aws_lc_rs::encoding::AsDer;
    use rsa::pkcs8::DecodePrivateKey;
    let generated = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa4096)
        .map_err(|e| Error::Crypto(Box::new(e)))?;
    let pkcs8 = generated.as_der().map_err(|e| Error::Crypto(Box::new(e)))?;
    let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.as_ref())
        .map_err(|e| Error::Crypto(Box::new(e)))?;
    Ok(key
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| Error::Crypto(Box::new(e)))?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_alphabet_follows_the_contract() {
        let bytes = [0xfb; 32];
        assert!(cluster_id(Contract::DEFAULT, &bytes).starts_with("-_"));
        assert!(cluster_id(Contract::NEWEST, &bytes).starts_with("+/"));
    }

    #[test]
    fn generated_bundle_round_trips_and_has_talos_shapes() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let back = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap()).unwrap();
        assert!(back == bundle);
        let tok = &bundle.secrets.bootstraptoken;
        assert_eq!(tok.len(), 23);
        assert_eq!(tok.as_bytes()[6], b'.');
        assert!(
            decode_pem(&bundle.certs.etcd.key)
                .unwrap()
                .starts_with("-----BEGIN EC PRIVATE KEY-----")
        );
        assert!(
            decode_pem(&bundle.certs.os.key)
                .unwrap()
                .starts_with("-----BEGIN ED25519 PRIVATE KEY-----")
        );
        assert!(
            decode_pem(&bundle.certs.k8sserviceaccount.key)
                .unwrap()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        // The CA keys load back for signing.
        signing_key(&decode_pem(&bundle.certs.os.key).unwrap()).unwrap();
        signing_key(&decode_pem(&bundle.certs.k8s.key).unwrap()).unwrap();
        assert_eq!(format!("{bundle:?}"), "SecretsBundle { .. }");
    }

    #[test]
    fn cabpt_secrets_load_in_both_shapes() {
        use std::collections::BTreeMap;
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let current =
            BTreeMap::from([("bundle".to_owned(), bundle.to_yaml().unwrap().into_bytes())]);
        assert!(SecretsBundle::from_cabpt_secret(&current).unwrap() == bundle);

        let c = &bundle.certs;
        let certs = format!(
            "admin:\n  crt: {}\n  key: {}\netcd:\n  crt: {}\n  key: {}\nk8s:\n  crt: {}\n  key: {}\nk8saggregator:\n  crt: {}\n  key: {}\nk8sserviceaccount:\n  key: {}\nos:\n  crt: {}\n  key: {}\n",
            c.os.crt,
            c.os.key,
            c.etcd.crt,
            c.etcd.key,
            c.k8s.crt,
            c.k8s.key,
            c.k8saggregator.crt,
            c.k8saggregator.key,
            c.k8sserviceaccount.key,
            c.os.crt,
            c.os.key
        );
        let legacy = BTreeMap::from([
            ("certs".to_owned(), certs.into_bytes()),
            (
                "kubeSecrets".to_owned(),
                b"bootstraptoken: abcdef.0123456789abcdef\naescbcencryptionsecret: MDEyMzQ1Njc4OWFiY2RlZg==\n"
                    .to_vec(),
            ),
            (
                "trustdInfo".to_owned(),
                b"token: ghijkl.0123456789abcdef\n".to_vec(),
            ),
        ]);
        let loaded = SecretsBundle::from_cabpt_secret(&legacy).unwrap();
        assert!(loaded.certs == bundle.certs);
        assert_eq!(loaded.secrets.bootstraptoken, "abcdef.0123456789abcdef");
        assert_eq!(
            loaded.encryption_secret(),
            ("aescbcEncryptionSecret", "MDEyMzQ1Njc4OWFiY2RlZg==")
        );
        assert_eq!(loaded.trustdinfo.token, "ghijkl.0123456789abcdef");
        assert!(!loaded.cluster.id.is_empty());

        let err = SecretsBundle::from_cabpt_secret(&BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("certs"), "{err}");
    }

    #[test]
    fn broken_bundles_name_the_field_not_the_secret() {
        let mut bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        bundle.certs.os.crt = "not base64 pem".into();
        let err = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("certs.os.crt"), "{err}");
        assert!(!err.contains(&bundle.cluster.secret));
        let err = SecretsBundle::from_yaml("cluster: [")
            .unwrap_err()
            .to_string();
        assert!(err.contains("secrets bundle"), "{err}");
    }

    #[test]
    fn bundle_errors_keep_their_cause() {
        use std::error::Error as _;
        let mut bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let key = bundle.certs.etcd.key.clone();
        // Valid base64 characters, cut short: the decoder's error would name a key byte.
        bundle.certs.etcd.key = key[..key.len() - 3].to_owned();
        let err = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap()).unwrap_err();
        assert!(
            matches!(&err, Error::BundleField { field, .. } if field == "certs.etcd.key"),
            "{err:?}"
        );
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<DecodeError>())
                .is_some(),
            "{err:?}"
        );
        assert!(err.to_string().contains("not base64-encoded"), "{err}");

        bundle.certs.etcd.key = b64("no pem here");
        let err = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BundleField {
                    source: DecodeError::NoPemBlock,
                    ..
                }
            ),
            "{err:?}"
        );

        let err = SecretsBundle::from_yaml("cluster: [").unwrap_err();
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<crate::parse::InputError>())
                .is_some(),
            "{err:?}"
        );
    }

    /// Every certificate and key of a bundle is parsed and each CA certificate must match its
    /// key: a truncated or garbage key used to pass and yield an unbootable configuration.
    #[test]
    fn unusable_or_mismatched_keys_are_refused() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let refused = |edit: &dyn Fn(&mut SecretsBundle)| {
            let mut b = bundle.clone();
            edit(&mut b);
            let err = SecretsBundle::from_yaml(&b.to_yaml().unwrap()).unwrap_err();
            for secret in [&b.certs.k8s.key, &b.certs.etcd.key, &b.cluster.secret] {
                let pem = decode_pem(secret).unwrap_or_default();
                let body = pem.lines().nth(1).unwrap_or("never matches");
                assert!(!err.to_string().contains(body), "{err}");
            }
            err
        };
        // A Kubernetes CA key cut in half, as a copy-paste accident leaves it.
        let err = refused(&|b| {
            let pem = decode_pem(&b.certs.k8s.key).unwrap();
            let lines: Vec<&str> = pem.lines().collect();
            let cut = [&lines[..2], &lines[lines.len() - 1..]].concat().join("\n");
            b.certs.k8s.key = b64(&cut);
        });
        assert!(
            matches!(&err, Error::BundleField { field, source: DecodeError::PrivateKey { label } } if field == "certs.k8s.key" && label == "EC PRIVATE KEY"),
            "{err:?}"
        );
        let err = refused(&|b| {
            b.certs.etcd.key =
                b64("-----BEGIN EC PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END EC PRIVATE KEY-----\n");
        });
        assert!(
            matches!(&err, Error::BundleField { field, .. } if field == "certs.etcd.key"),
            "{err:?}"
        );
        let err = refused(&|b| {
            b.certs.os.crt = b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        });
        assert!(
            matches!(&err, Error::BundleField { field, source: DecodeError::Certificate } if field == "certs.os.crt"),
            "{err:?}"
        );
        // Each key valid, but beside another CA's certificate.
        let err = refused(&|b| b.certs.k8s.key = b.certs.etcd.key.clone());
        assert!(
            matches!(&err, Error::BundleMismatch { pair } if pair == "certs.k8s"),
            "{err:?}"
        );
        let err = refused(&|b| b.certs.k8sserviceaccount.key = b.certs.etcd.crt.clone());
        assert!(
            matches!(&err, Error::BundleField { field, source: DecodeError::PrivateKey { label } } if field == "certs.k8sserviceaccount.key" && label == "CERTIFICATE"),
            "{err:?}"
        );
    }

    #[test]
    fn tokens_and_encryption_keys_must_have_the_shapes_kubernetes_takes() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        for (edit, field, source) in [
            (
                (|b: &mut SecretsBundle| b.secrets.bootstraptoken = "x".into())
                    as fn(&mut SecretsBundle),
                "secrets.bootstraptoken",
                DecodeError::BootstrapToken,
            ),
            (
                |b| b.secrets.bootstraptoken = "ABCDEF.0123456789abcdef".into(),
                "secrets.bootstraptoken",
                DecodeError::BootstrapToken,
            ),
            (
                |b| b.secrets.secretboxencryptionsecret = Some(STANDARD.encode([0u8; 16])),
                "secrets.secretboxencryptionsecret",
                DecodeError::KeyLength { bytes: 16 },
            ),
            (
                |b| b.secrets.secretboxencryptionsecret = Some("not base64!".into()),
                "secrets.secretboxencryptionsecret",
                DecodeError::Base64Character { offset: 3 },
            ),
            (
                |b| b.secrets.aescbcencryptionsecret = Some(STANDARD.encode([0u8; 20])),
                "secrets.aescbcencryptionsecret",
                DecodeError::KeyLength { bytes: 20 },
            ),
        ] {
            let mut b = bundle.clone();
            edit(&mut b);
            let err = SecretsBundle::from_yaml(&b.to_yaml().unwrap()).unwrap_err();
            assert!(
                matches!(&err, Error::BundleField { field: f, source: s } if f == field && *s == source),
                "{err:?}"
            );
        }
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcdef.x"));
    }

    /// A crafted block whose END comes before its BEGIN label ends used to panic on slicing.
    #[test]
    fn malformed_pem_blocks_are_errors_not_panics() {
        for pem in [
            "-----BEGIN X-----END Y",
            "-----BEGIN X",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN -----END -----",
            "-----BEGIN \u{e9}-----\u{e9}-----END \u{e9}",
        ] {
            assert!(
                matches!(signing_key(pem), Err(Error::CaKey { .. })),
                "{pem:?}"
            );
        }
        assert_eq!(
            pem_block("-----BEGIN X-----END Y"),
            Err(DecodeError::UnterminatedPem)
        );
    }

    #[test]
    fn cabpt_secret_keys_missing_or_not_text() {
        use std::collections::BTreeMap;
        let err = SecretsBundle::from_cabpt_secret(&BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&err, Error::BundleMissing { field } if field.contains("\"certs\"")),
            "{err:?}"
        );
        let not_text = BTreeMap::from([("bundle".to_owned(), vec![0xff, 0xfe])]);
        let err = SecretsBundle::from_cabpt_secret(&not_text).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BundleField {
                    source: DecodeError::Utf8(_),
                    ..
                }
            ),
            "{err:?}"
        );
        // A legacy Secret without an etcd CA: missing, not "not PEM".
        let legacy = BTreeMap::from([
            ("certs".to_owned(), b"os: {}\n".to_vec()),
            ("kubeSecrets".to_owned(), b"bootstraptoken: a.b\n".to_vec()),
            ("trustdInfo".to_owned(), b"token: c.d\n".to_vec()),
        ]);
        let err = SecretsBundle::from_cabpt_secret(&legacy).unwrap_err();
        assert!(
            matches!(&err, Error::BundleMissing { field } if field == "certs.etcd.crt"),
            "{err:?}"
        );
        let err = SecretsBundle::from_cabpt_secret(&not_text).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BundleField {
                    source: DecodeError::Utf8(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Every secret of `bundle`: its tokens and secrets, the base64 text of its keys and every
    /// line of their PEM bodies.
    fn secrets_of(bundle: &SecretsBundle) -> Vec<String> {
        let mut out = vec![
            bundle.cluster.secret.clone(),
            bundle.secrets.bootstraptoken.clone(),
            bundle.trustdinfo.token.clone(),
        ];
        out.extend(bundle.secrets.secretboxencryptionsecret.clone());
        let c = &bundle.certs;
        for key in [
            &c.etcd.key,
            &c.k8s.key,
            &c.k8saggregator.key,
            &c.k8sserviceaccount.key,
            &c.os.key,
        ] {
            out.extend(
                key.as_bytes()
                    .chunks(32)
                    .map(|c| String::from_utf8_lossy(c).into()),
            );
            let pem = decode_pem(key).unwrap();
            out.extend(
                pem.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() > 16)
                    .map(str::to_owned),
            );
        }
        out
    }

    fn assert_no_secret(bundle: &SecretsBundle, err: &Error) {
        for text in [err.to_string(), format!("{err:?}")] {
            for secret in secrets_of(bundle) {
                assert!(!text.contains(&secret), "a secret in {text}");
            }
        }
    }

    /// A bundle with a value where a mapping belongs, a token in a mapping key or behind a tag,
    /// broken YAML in the middle of a key, bytes that are not UTF-8: each is refused naming the
    /// field, never quoting what it holds. (serde's own message quoted the value: `invalid type:
    /// string "<token>", expected struct TrustdInfo`.)
    #[test]
    fn hostile_bundles_name_the_field_never_the_secret() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let yaml = bundle.to_yaml().unwrap();
        let token = &bundle.trustdinfo.token;
        let os_key = &bundle.certs.os.key;
        let etcd_key = &bundle.certs.etcd.key;
        let replace = |from: &str, to: &str| {
            assert!(yaml.contains(from), "{from}");
            yaml.replacen(from, to, 1)
        };
        for (what, text, says) in [
            (
                "the trustd token where trustdinfo's mapping belongs",
                replace(
                    &format!("trustdinfo:\n  token: {token}\n"),
                    &format!("trustdinfo: {token}\n"),
                ),
                "field `trustdinfo` is a string, expected a map (line ",
            ),
            (
                "the OS CA key where certs.os's mapping belongs",
                replace(
                    &format!(
                        "  os:\n    crt: {}\n    key: {os_key}\n",
                        bundle.certs.os.crt
                    ),
                    &format!("  os: {os_key}\n"),
                ),
                "field `certs.os` is a string, expected a map",
            ),
            (
                "the cluster secret where cluster's mapping belongs",
                replace(
                    &format!(
                        "cluster:\n  id: {}\n  secret: {}\n",
                        bundle.cluster.id, bundle.cluster.secret
                    ),
                    &format!("cluster: {}\n", bundle.cluster.secret),
                ),
                "field `cluster` is a string, expected a map",
            ),
            (
                "the trustd token as a list",
                replace(&format!("token: {token}"), &format!("token: [{token}]")),
                "field `trustdinfo.token` is a list, expected a string",
            ),
            (
                "the etcd CA key broken by a line in its middle",
                replace(
                    &format!("key: {etcd_key}"),
                    &format!(
                        "key: {}\n  - {}",
                        &etcd_key[..etcd_key.len() / 2],
                        &etcd_key[etcd_key.len() / 2..]
                    ),
                ),
                "not valid YAML: ",
            ),
            (
                "the etcd CA key in double quotes that are never closed",
                replace(&format!("key: {etcd_key}"), &format!("key: \"{etcd_key}")),
                "not valid YAML: found unexpected end of stream",
            ),
        ] {
            let err = SecretsBundle::from_yaml(&text).unwrap_err();
            assert!(err.to_string().contains(says), "{what}: {err}");
            assert!(
                matches!(err, Error::Parse { ref what, .. } if what == "secrets bundle"),
                "{what}: {err:?}"
            );
            assert_no_secret(&bundle, &err);
            // The same bundle in a CABPT Secret.
            let secret = std::collections::BTreeMap::from([("bundle".to_owned(), text.into())]);
            let err = SecretsBundle::from_cabpt_secret(&secret).unwrap_err();
            assert!(err.to_string().contains(says), "{what}: {err}");
            assert_no_secret(&bundle, &err);
        }

        // Not UTF-8, in the middle of the token.
        let mut bytes = yaml.clone().into_bytes();
        let at = yaml.find(token.as_str()).unwrap() + 7;
        bytes[at] = 0xff;
        let secret = std::collections::BTreeMap::from([("bundle".to_owned(), bytes)]);
        let err = SecretsBundle::from_cabpt_secret(&secret).unwrap_err();
        assert!(
            matches!(&err, Error::BundleField { field, source: DecodeError::Utf8(_) } if field.contains("bundle")),
            "{err:?}"
        );
        assert_no_secret(&bundle, &err);

        // CABPT's legacy keys, with the bootstrap token behind a tag that does not fit it: the YAML
        // parser's message quoted the token.
        let legacy = std::collections::BTreeMap::from([
            ("certs".to_owned(), b"os: {}\n".to_vec()),
            (
                "kubeSecrets".to_owned(),
                format!("bootstraptoken: !!int {}\n", bundle.secrets.bootstraptoken).into_bytes(),
            ),
            (
                "trustdInfo".to_owned(),
                format!("token: {token}\n").into_bytes(),
            ),
        ]);
        let err = SecretsBundle::from_cabpt_secret(&legacy).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("parsing legacy Secret key \"kubeSecrets\": not valid YAML: ")
                && err.to_string().contains("(line 1, column 17)"),
            "{err}"
        );
        assert_no_secret(&bundle, &err);
    }

    #[test]
    fn decode_pem_says_what_is_wrong() {
        assert_eq!(
            decode_pem("%%%%"),
            Err(DecodeError::Base64Character { offset: 0 })
        );
        assert_eq!(
            decode_pem(&STANDARD.encode([0xff])).map_err(|e| matches!(e, DecodeError::Utf8(_))),
            Err(true)
        );
        assert_eq!(decode_pem(&b64("text")), Err(DecodeError::NoPemBlock));
        assert!(matches!(
            signing_key("-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n"),
            Err(Error::CaKey { .. })
        ));
    }
}
