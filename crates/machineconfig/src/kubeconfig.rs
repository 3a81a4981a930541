//! The admin kubeconfig of a workload cluster, as Cluster API's `<cluster>-kubeconfig` Secret
//! carries it: one context named `<cluster>-admin@<cluster>` with an ECDSA P-256 client
//! certificate (`O=system:masters`, `CN=admin`, as `talosctl kubeconfig` issues) signed by the
//! cluster's Kubernetes CA from the secrets bundle.

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::secrets::{b64, decode_pem, signing_key};
use crate::{Error, SecretsBundle};

/// An issued kubeconfig and when its client certificate expires.
pub struct Kubeconfig {
    /// The kubeconfig YAML (holds a private key: store it only in a Secret).
    pub yaml: String,
    /// When the client certificate stops being valid.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// An admin kubeconfig for `cluster_name`'s API server at `server` (an https URL), valid from
/// `now` for `validity`.
pub fn generate(
    cluster_name: &str,
    server: &str,
    bundle: &SecretsBundle,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Kubeconfig, Error> {
    let field = |field: &str| {
        let field = field.to_owned();
        move |source| Error::BundleField { field, source }
    };
    let ca_pem = decode_pem(&bundle.certs.k8s.crt).map_err(field("certs.k8s.crt"))?;
    let ca_key = signing_key(&decode_pem(&bundle.certs.k8s.key).map_err(field("certs.k8s.key"))?)?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|source| Error::CaCertificate {
            ca: "Kubernetes",
            source,
        })?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // A little slack for clocks behind ours.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?;

    let user = format!("{cluster_name}-admin");
    let context = format!("{user}@{cluster_name}");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {
            "server": server,
            "certificate-authority-data": bundle.certs.k8s.crt,
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&cert.pem()),
            "client-key-data": b64(&key.serialize_pem()),
        }}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
        "preferences": {},
    });
    let yaml = serde_yaml_ng::to_string(&doc).map_err(|source| Error::Serialize {
        what: "kubeconfig",
        source,
    })?;
    Ok(Kubeconfig {
        yaml,
        not_after: params.not_after,
    })
}

/// When the client certificate of a kubeconfig (the first user's) expires: decides rotation
/// of a kubeconfig someone else issued, CACPPT say. Errors name what is wrong, never content.
pub fn client_certificate_not_after(yaml: &str) -> Result<OffsetDateTime, Error> {
    let doc: serde_json::Value = crate::parse::from_yaml("kubeconfig", yaml)?;
    let field = "users[0].user.client-certificate-data";
    let b64 = doc["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .ok_or_else(|| Error::BundleMissing {
            field: format!("kubeconfig {field}"),
        })?;
    let pem = decode_pem(b64).map_err(|source| Error::BundleField {
        field: format!("kubeconfig {field}"),
        source,
    })?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| Error::Crypto(format!("kubeconfig {field}: {e}").into()))?;
    let cert = block
        .parse_x509()
        .map_err(|e| Error::Crypto(format!("kubeconfig {field}: {e}").into()))?;
    Ok(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Contract;

    #[test]
    fn an_admin_certificate_signed_by_the_cluster_kubernetes_ca() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let now = OffsetDateTime::now_utc();
        let issued = generate(
            "c1",
            "https://10.0.0.10:6443",
            &bundle,
            now,
            Duration::days(365),
        )
        .expect("a kubeconfig");
        let doc: serde_json::Value = serde_yaml_ng::from_str(&issued.yaml).expect("YAML");
        assert_eq!(doc["current-context"], "c1-admin@c1");
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://10.0.0.10:6443"
        );
        assert_eq!(
            doc["clusters"][0]["cluster"]["certificate-authority-data"],
            bundle.certs.k8s.crt.as_str()
        );
        let crt = decode_pem(
            doc["users"][0]["user"]["client-certificate-data"]
                .as_str()
                .expect("a certificate"),
        )
        .expect("PEM");
        let (_, pem) = x509_parser::pem::parse_x509_pem(crt.as_bytes()).expect("a PEM block");
        let cert = pem.parse_x509().expect("X.509");
        let subject = cert.subject().to_string();
        assert!(
            subject.contains("O=system:masters") && subject.contains("CN=admin"),
            "{subject}"
        );
        let ca = decode_pem(&bundle.certs.k8s.crt).expect("CA PEM");
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).expect("CA block");
        let ca_cert = ca_pem.parse_x509().expect("CA X.509");
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the cluster's Kubernetes CA");
        let expires = cert.validity().not_after.timestamp();
        assert_eq!(expires, issued.not_after.unix_timestamp());
        assert_eq!(
            client_certificate_not_after(&issued.yaml)
                .expect("an expiry")
                .unix_timestamp(),
            expires
        );
        assert!(client_certificate_not_after("users: []").is_err());
        // A client key behind a tag that does not fit it: the YAML parser's message quoted it.
        let key = doc["users"][0]["user"]["client-key-data"]
            .as_str()
            .expect("a key")
            .to_owned();
        let tagged = issued.yaml.replacen(&key, &format!("!!int {key}"), 1);
        let err = client_certificate_not_after(&tagged).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("parsing kubeconfig: not valid YAML: "),
            "{err}"
        );
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(&key[..32]), "{text}");
        }
        assert!(
            !issued.yaml.contains(&bundle.certs.k8s.key),
            "the CA key never leaves the bundle"
        );
    }
}
