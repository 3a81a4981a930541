//! The workload cluster's admin kubeconfig, `<cluster>-kubeconfig` (type
//! `cluster.x-k8s.io/secret`, key `value`) as Cluster API reads it: a client certificate from
//! the cluster's Kubernetes CA, issued again before it expires and whenever the
//! TalosControlPlane's rotate annotation takes a new value.

use std::collections::BTreeMap;

use api::capi::{ApiEndpoint, labels};
use api::controlplane::v1alpha3::TalosControlPlane;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use time::{Duration, OffsetDateTime};

use super::state::Ctx;
use crate::Error;
use crate::bootstrap::secrets::{CLUSTER_SECRET_TYPE, bundle_name};

/// Set this annotation on a TalosControlPlane to a new value (a date, say) to have the
/// kubeconfig issued again now, e.g. after it leaked.
pub const ROTATE: &str = "talos.controlplane.cluster.x-k8s.io/rotate-kubeconfig";
/// On the Secret: the value of [`ROTATE`] it was issued for.
pub const ROTATED_FOR: &str = "talos.controlplane.cluster.x-k8s.io/kubeconfig-rotated-for";
/// How long an issued client certificate is valid.
pub const VALIDITY: Duration = Duration::days(365);
/// A certificate with less than this left is issued again.
pub const RENEW_BEFORE: Duration = Duration::days(90);

pub fn name(cluster: &str) -> String {
    format!("{cluster}-kubeconfig")
}

/// What [`reconcile`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster's secrets bundle does not exist yet (the first TalosConfig creates it).
    NoBundle,
    Created,
    /// Issued again, and why.
    Rotated(String),
    Current,
}

/// Why the stored kubeconfig must be issued again, if it must: `not_after` is when its client
/// certificate expires (or why that cannot be read).
pub fn rotation_due(
    not_after: Result<OffsetDateTime, machineconfig::Error>,
    issued_for: Option<&str>,
    requested: Option<&str>,
    now: OffsetDateTime,
) -> Option<String> {
    if let Some(token) = requested.filter(|t| Some(*t) != issued_for) {
        return Some(format!("rotation requested ({ROTATE}={token})"));
    }
    match not_after {
        Ok(not_after) if not_after - now < RENEW_BEFORE => Some(format!(
            "its client certificate expires at {not_after}, within {} days",
            RENEW_BEFORE.whole_days()
        )),
        Ok(_) => None,
        Err(e) => Some(format!("the stored kubeconfig cannot be read ({e})")),
    }
}

/// When the client certificate of the kubeconfig in `secret` expires.
fn not_after(secret: &Secret) -> Result<OffsetDateTime, machineconfig::Error> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .map(|v| String::from_utf8_lossy(&v.0))
        .unwrap_or_default();
    machineconfig::kubeconfig::client_certificate_not_after(&value)
}

/// The API server URL for `endpoint`.
pub fn server(endpoint: &ApiEndpoint) -> String {
    if endpoint.host.contains(':') && !endpoint.host.starts_with('[') {
        format!("https://[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("https://{}:{}", endpoint.host, endpoint.port)
    }
}

/// The kubeconfig Secret holding `yaml`: `stored` updated (its resourceVersion kept), or a
/// new one owned by `tcp`; the rotation `requested` is recorded as the one it answers.
fn secret(
    tcp: &TalosControlPlane,
    (ns, cluster): (&str, &str),
    stored: Option<Secret>,
    yaml: String,
    requested: Option<&str>,
) -> Secret {
    let mut secret = stored.unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(name(cluster)),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([(
                labels::CLUSTER_NAME.to_owned(),
                cluster.to_owned(),
            )])),
            owner_references: tcp.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some(CLUSTER_SECRET_TYPE.into()),
        ..Secret::default()
    });
    secret.data = Some(BTreeMap::from([(
        "value".to_owned(),
        ByteString(yaml.into_bytes()),
    )]));
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    match requested {
        Some(token) => {
            annotations.insert(ROTATED_FOR.into(), token.to_owned());
        }
        None => {
            annotations.remove(ROTATED_FOR);
        }
    }
    secret
}

/// Write `<cluster>-kubeconfig` if it is missing or due for rotation.
pub async fn reconcile(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: &str,
    endpoint: &ApiEndpoint,
) -> Result<Outcome, Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let Some(bundle_secret) = ctx.secret(&ns, &bundle_name(cluster)) else {
        return Ok(Outcome::NoBundle);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = name(cluster);
    let stored = match ctx.caches.secret(&ns, &secret_name) {
        Some(s) => Some(Secret::clone(&s)),
        // Not labelled (someone else wrote it), or not seen yet: ask.
        None => api
            .get_opt(&secret_name)
            .await
            .map_err(Error::kube(format!("reading Secret {secret_name}")))?,
    };
    let requested = tcp.annotations().get(ROTATE).map(String::as_str);
    let now = OffsetDateTime::from_unix_timestamp(ctx.clock.now().0.as_second())
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let why = match &stored {
        None => None,
        Some(s) => {
            let not_after = ctx.kubeconfig_expiry.get(s, not_after);
            let issued_for = s.annotations().get(ROTATED_FOR).map(String::as_str);
            match rotation_due(not_after, issued_for, requested, now) {
                None => return Ok(Outcome::Current),
                Some(why) => Some(why),
            }
        }
    };

    let bundle = crate::bootstrap::secrets::parse_bundle(&bundle_secret)?;
    let issued =
        machineconfig::kubeconfig::generate(cluster, &server(endpoint), &bundle, now, VALIDITY)
            .map_err(|e| Error::InvalidSecret {
                name: bundle_name(cluster),
                reason: e.to_string(),
            })?;
    let secret = secret(tcp, (&ns, cluster), stored, issued.yaml, requested);
    match why {
        None => api
            .create(&PostParams::default(), &secret)
            .await
            .map(|_| Outcome::Created)
            .map_err(Error::kube(format!("creating Secret {secret_name}"))),
        // resourceVersion is kept: a concurrent writer makes this fail, and it runs again.
        Some(why) => api
            .replace(&secret_name, &PostParams::default(), &secret)
            .await
            .map(|_| Outcome::Rotated(why))
            .map_err(Error::kube(format!("rotating Secret {secret_name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machineconfig::{Contract, SecretsBundle};

    #[test]
    fn rotation_is_due_near_expiry_on_request_and_for_unreadable_content() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let now = OffsetDateTime::now_utc();
        let fresh =
            machineconfig::kubeconfig::generate("c", "https://h:6443", &bundle, now, VALIDITY)
                .expect("a kubeconfig")
                .yaml;
        let secret = |yaml: &str, version: &str| Secret {
            metadata: ObjectMeta {
                uid: Some("u".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "value".to_owned(),
                ByteString(yaml.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        let expiry = crate::context::Parsed::default();
        let fresh = || expiry.get(&secret(&fresh, "1"), not_after);
        assert_eq!(rotation_due(fresh(), None, None, now), None);
        assert_eq!(
            rotation_due(fresh(), Some("1"), Some("1"), now),
            None,
            "already done"
        );
        let asked = rotation_due(fresh(), Some("1"), Some("2"), now).expect("requested");
        assert!(asked.contains("=2"), "{asked}");
        let later = now + VALIDITY - RENEW_BEFORE + Duration::days(1);
        let near = rotation_due(fresh(), None, None, later).expect("near expiry");
        assert!(near.contains("expires"), "{near}");
        // A new version of the Secret is read again.
        let garbage = expiry.get(&secret("not: [a kubeconfig", "2"), not_after);
        assert!(garbage.is_err());
        assert!(rotation_due(garbage, None, None, now).is_some());
    }

    #[test]
    fn servers_are_urls() {
        let ep = |host: &str| ApiEndpoint {
            host: host.into(),
            port: 6443,
        };
        assert_eq!(server(&ep("10.0.0.1")), "https://10.0.0.1:6443");
        assert_eq!(server(&ep("fd00::1")), "https://[fd00::1]:6443");
        assert_eq!(
            server(&ep("api.example.com")),
            "https://api.example.com:6443"
        );
    }
}
