//! Act: the Secrets a TalosConfig needs, named, labelled and owned as CABPT's are, so that
//! clusters CABPT built are adopted as they are. Every write is create-if-absent or an update
//! guarded by resourceVersion, except the talosconfig's endpoints, which the reconciles of a
//! cluster write in turns with a server-side apply; nothing is written twice that must be
//! written once.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::bootstrap::v1alpha3::TalosConfig;
use api::capi::{Cluster, Machine, labels};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use machineconfig::talosconfig::ClientOptions;
use machineconfig::{Contract, SecretsBundle};

use super::render;
use super::state::Ctx;
use crate::{Error, cache};

/// Cluster API's Secret type for bootstrap data and kubeconfigs.
pub const CLUSTER_SECRET_TYPE: &str = "cluster.x-k8s.io/secret";
/// Cluster annotation pinning the talosconfig endpoints (comma-separated), for clusters whose
/// API is reached through a VIP or load balancer rather than the machines' addresses.
pub const TALOSCONFIG_ENDPOINTS: &str = "talos.cluster.x-k8s.io/talosconfig-endpoints";

pub fn bundle_name(cluster: &str) -> String {
    format!("{cluster}-talos")
}
pub fn ca_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}
pub fn talosconfig_name(cluster: &str) -> String {
    format!("{cluster}-talosconfig")
}

fn meta(
    name: &str,
    ns: &str,
    cluster: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(BTreeMap::from([(
            labels::CLUSTER_NAME.to_owned(),
            cluster.to_owned(),
        )])),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn cluster_owner(
    cluster: &Cluster,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let mut owner = cluster.controller_owner_ref(&())?;
    owner.controller = None;
    owner.block_owner_deletion = None;
    Some(owner)
}

/// Create `secret` unless a Secret of that name exists; either way return what is stored
/// (remembered until the watch shows it), and whether it was there before.
async fn create_if_absent(
    ctx: &Ctx,
    api: &Api<Secret>,
    secret: &Secret,
) -> Result<(Arc<Secret>, bool), Error> {
    let name = secret.name_any();
    let (stored, existed) = match api.create(&PostParams::default(), secret).await {
        Ok(created) => (created, false),
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(&name)
            .await
            .map(|s| (s, true))
            .map_err(Error::kube(format!("reading Secret {name}")))?,
        Err(e) => return Err(Error::kube(format!("creating Secret {name}"))(e)),
    };
    Ok((ctx.written(stored), existed))
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The cluster's secrets bundle (`<cluster>-talos`, key `bundle`; CABPT's legacy keys are read
/// too), generated and stored exactly once however many reconciles race for it: one
/// generation per cluster in this process, and a create that loses to another process re-reads.
///
/// Generation (an RSA-4096 key, most of a second of CPU) runs beside the reconciles, at most
/// one per core, and never in a reconcile slot: `None` means it is under way and `waiter` runs
/// again once it is stored, while the slot serves clusters whose bundle exists. A failed
/// generation is reported to the cluster's reconciles until the next attempt.
pub async fn bundle(
    ctx: &Arc<Ctx>,
    ns: &str,
    cluster: &Cluster,
    waiter: ObjectRef<TalosConfig>,
) -> Result<Option<Arc<SecretsBundle>>, Error> {
    let cluster_name = cluster.name_any();
    let name = bundle_name(&cluster_name);
    let key = format!("{ns}/{cluster_name}");
    let stored = match ctx.secret(ns, &name) {
        Some(stored) => stored,
        None => {
            ctx.generation_failure(&key, &cluster_name)?;
            let Some(claim) = ctx.claim_generation(&key, waiter) else {
                return Ok(None);
            };
            let (ctx, ns, cluster) = (Arc::clone(ctx), ns.to_owned(), cluster.clone());
            tokio::spawn(async move {
                let stored = match ctx.generation_slot().await {
                    Ok(_slot) => get_or_generate(&ctx, &ns, &cluster, &name).await,
                    Err(e) => Err(e),
                };
                // The cluster's other Secrets too, before its configs run (together they would
                // each try to create them). A failure here is the reconciles' to report.
                if let Ok(secret) = &stored
                    && let Err(e) = async {
                        client_secrets(&ctx, &ns, &cluster, &*ctx.bundle_of(secret)?).await
                    }
                    .await
                {
                    tracing::debug!(cluster = %key, error = %e, "CA and talosconfig Secrets");
                }
                if let Err(e) = &stored {
                    ctx.generation_failed(&key, e);
                }
                // Dropping the claim wakes the waiters, the claiming reconcile among them.
                drop(claim);
            });
            return Ok(None);
        }
    };
    ctx.bundle_of(&stored).map(Some)
}

/// `<cluster>-ca` and `<cluster>-talosconfig` (whose endpoints follow the control plane).
pub async fn client_secrets(
    ctx: &Ctx,
    ns: &str,
    cluster: &Cluster,
    bundle: &SecretsBundle,
) -> Result<(), Error> {
    ca(ctx, ns, cluster, bundle).await?;
    talosconfig(ctx, ns, cluster, bundle).await
}

/// The talosconfig endpoints of `cluster` as the caches show it and its control-plane Machines
/// now (`cluster` as observed, should the cache have lost it).
fn current_endpoints(ctx: &Ctx, ns: &str, cluster: &Cluster) -> Result<Vec<String>, Error> {
    let name = cluster.name_any();
    let now = ctx.caches.cluster(ns, &name)?;
    let control_plane = ctx.caches.machines_of(ns, &name, true);
    Ok(talosconfig_endpoints(
        now.as_ref().unwrap_or(cluster),
        &control_plane,
    ))
}

pub use crate::context::parse_bundle;

async fn get_or_generate(
    ctx: &Ctx,
    ns: &str,
    cluster: &Cluster,
    name: &str,
) -> Result<Arc<Secret>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(existing) = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))?
    {
        return Ok(ctx.written(existing));
    }
    let invalid = |reason: String| Error::InvalidSecret {
        name: name.to_owned(),
        reason,
    };
    let generated = tokio::task::spawn_blocking(|| SecretsBundle::generate(Contract::DEFAULT))
        .await
        .map_err(|e| invalid(format!("generating the secrets bundle stopped: {e}")))?
        .map_err(|e| invalid(format!("generating the secrets bundle: {e}")))?;
    let yaml = generated
        .to_yaml()
        .map_err(|e| invalid(format!("serializing the secrets bundle: {e}")))?;
    let cluster_name = cluster.name_any();
    let secret = Secret {
        metadata: meta(name, ns, &cluster_name, cluster_owner(cluster)),
        data: Some(BTreeMap::from([(
            "bundle".to_owned(),
            ByteString(yaml.into_bytes()),
        )])),
        ..Secret::default()
    };
    Ok(create_if_absent(ctx, &api, &secret).await?.0)
}

/// `<cluster>-ca`: the Kubernetes CA (tls.crt, tls.key), as CABPT writes it; created once.
pub async fn ca(
    ctx: &Ctx,
    ns: &str,
    cluster: &Cluster,
    bundle: &SecretsBundle,
) -> Result<(), Error> {
    let cluster_name = cluster.name_any();
    let name = ca_name(&cluster_name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    // Created once and never changed: the cache's word is enough, and a create that finds it
    // (a Secret without our label) is harmless.
    if ctx.secret(ns, &name).is_some() {
        return Ok(());
    }
    let pem = |b64: &str, what: &str| {
        machineconfig::secrets::decode_pem(b64).map_err(|_| Error::InvalidSecret {
            name: bundle_name(&cluster_name),
            reason: format!("certs.k8s.{what} is not base64-encoded PEM"),
        })
    };
    let secret = Secret {
        metadata: meta(&name, ns, &cluster_name, cluster_owner(cluster)),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(pem(&bundle.certs.k8s.crt, "crt")?.into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(pem(&bundle.certs.k8s.key, "key")?.into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    create_if_absent(ctx, &api, &secret).await.map(drop)
}

/// The talosconfig endpoints: pinned by the Cluster annotation, else the control-plane
/// Machines' external and internal IPs, sorted.
pub fn talosconfig_endpoints(cluster: &Cluster, control_plane: &[Machine]) -> Vec<String> {
    if let Some(pinned) = cluster.annotations().get(TALOSCONFIG_ENDPOINTS) {
        let mut v: Vec<String> = pinned
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        return v;
    }
    let mut v: Vec<String> = control_plane
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .flat_map(|m| m.addresses())
        .filter(|a| a.type_ == "ExternalIP" || a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `<cluster>-talosconfig` (key `talosconfig`): created once with an os:admin client
/// certificate; afterwards only its endpoints follow the control plane ([`current_endpoints`]).
pub async fn talosconfig(
    ctx: &Ctx,
    ns: &str,
    cluster: &Cluster,
    bundle: &SecretsBundle,
) -> Result<(), Error> {
    let cluster_name = cluster.name_any();
    let name = talosconfig_name(&cluster_name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = match ctx.secret(ns, &name) {
        Some(cached) => cached,
        None => {
            let options = ClientOptions {
                endpoints: current_endpoints(ctx, ns, cluster)?,
                ..ClientOptions::default()
            };
            let config = machineconfig::talosconfig::generate(&cluster_name, bundle, &options)
                .and_then(|c| c.to_yaml())
                .map_err(|e| {
                    invalid_talosconfig(&name, format!("generating the talosconfig: {e}"))
                })?;
            let secret = Secret {
                metadata: meta(&name, ns, &cluster_name, cluster_owner(cluster)),
                data: Some(BTreeMap::from([(
                    "talosconfig".to_owned(),
                    ByteString(config.into_bytes()),
                )])),
                ..Secret::default()
            };
            match create_if_absent(ctx, &api, &secret).await? {
                (_, false) => return Ok(()),
                (stored, true) => stored,
            }
        }
    };
    if with_endpoints(&existing, current_endpoints(ctx, ns, cluster)?)?.is_none() {
        return Ok(());
    }
    // The reconciles of a cluster's control-plane configs all get here when an address
    // changes. They take turns, and each reads the endpoints and the Secret again when its turn
    // comes, so the last write carries the newest addresses; the write is a server-side apply
    // of the one key, without a resourceVersion, so no turn conflicts with the one before
    // (whose write the cache may not show yet: written again, it is the same).
    let _turn = ctx.talosconfig_turns.take(&format!("{ns}/{name}")).await;
    let existing = ctx.secret(ns, &name).unwrap_or(existing);
    let Some(yaml) = with_endpoints(&existing, current_endpoints(ctx, ns, cluster)?)? else {
        return Ok(());
    };
    let patch = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "talosconfig".to_owned(),
            ByteString(yaml.into_bytes()),
        )])),
        ..Secret::default()
    };
    api.patch(
        &name,
        &PatchParams::apply(&ctx.options.manager_name).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(Error::kube(format!(
        "updating the endpoints of Secret {name}"
    )))
}

fn invalid_talosconfig(name: &str, reason: String) -> Error {
    Error::InvalidSecret {
        name: name.to_owned(),
        reason,
    }
}

/// The talosconfig `secret` holds with its current context's endpoints set to `endpoints`;
/// `None` when they already are.
fn with_endpoints(secret: &Secret, endpoints: Vec<String>) -> Result<Option<String>, Error> {
    let name = secret.name_any();
    let current = text(secret, "talosconfig")
        .ok_or_else(|| invalid_talosconfig(&name, "has no talosconfig key".into()))?;
    let mut config = machineconfig::talosconfig::TalosConfig::from_yaml(&current)
        .map_err(|e| invalid_talosconfig(&name, e.to_string()))?;
    let context = config.context.clone();
    let Some(entry) = config.contexts.get_mut(&context) else {
        return Err(invalid_talosconfig(
            &name,
            format!("has no context {context:?}"),
        ));
    };
    if entry.endpoints == endpoints {
        return Ok(None);
    }
    entry.endpoints = endpoints;
    config
        .to_yaml()
        .map(Some)
        .map_err(|e| invalid_talosconfig(&name, e.to_string()))
}

/// What happened to a machine's bootstrap data Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    Created,
    Unchanged,
    /// Re-rendered for a machine that has not booted yet.
    Updated,
    /// The Secret differs from the spec, but its machine has consumed it (or someone else owns
    /// it): left as it is.
    Differs,
}

/// Whether a machine has consumed its bootstrap data: its infrastructure exists or it has a Node.
pub fn booted(machine: &Machine) -> bool {
    machine.has_node()
        || machine
            .status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .and_then(|i| i.infrastructure_provisioned)
            .unwrap_or(false)
}

/// What the value of a bootstrap data Secret means ([`render::documents_digest`]), read once
/// per version of the Secret: the cache keeps only the digest of its bytes.
async fn stored_documents(
    ctx: &Ctx,
    api: &Api<Secret>,
    cached: &Secret,
) -> Result<Option<String>, Error> {
    if let Some(known) = ctx.stored_documents.known(cached) {
        return Ok(known);
    }
    let name = cached.name_any();
    let Some(full) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))?
    else {
        return Ok(None);
    };
    let Ok(digest) = ctx.stored_documents.get(&full, |s| {
        Ok::<_, std::convert::Infallible>(
            text(s, "value").and_then(|t| render::documents_digest(&t)),
        )
    });
    Ok(digest)
}

/// Write `<machine>-bootstrap-data` (type cluster.x-k8s.io/secret, single key `value`,
/// controller-owned by the TalosConfig). An existing Secret — ours or CABPT's — is reused; it is
/// only rewritten while its machine has not booted.
pub async fn data(
    ctx: &Ctx,
    config: &TalosConfig,
    machine: &Machine,
    cluster: &str,
    name: &str,
    value: &str,
) -> Result<DataOutcome, Error> {
    let ns = config.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = config.controller_owner_ref(&());
    let desired = Secret {
        metadata: meta(name, &ns, cluster, owner),
        type_: Some(CLUSTER_SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            "value".to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let existing = match ctx.secret(&ns, name) {
        Some(cached) => cached,
        None => match create_if_absent(ctx, &api, &desired).await? {
            (_, false) => return Ok(DataOutcome::Created),
            (stored, true) => stored,
        },
    };
    // The same documents written another way (CABPT's YAML encoder) are no change.
    let unchanged = match existing
        .data
        .as_ref()
        .and_then(|d| d.get(cache::VALUE_DIGEST_KEY))
    {
        Some(digest) if digest.0 == cache::value_digest(value.as_bytes()).into_bytes() => true,
        Some(_) => {
            let stored = stored_documents(ctx, &api, &existing).await?;
            stored.is_some() && stored == render::documents_digest(value)
        }
        None => {
            text(&existing, "value").is_some_and(|stored| render::same_documents(&stored, value))
        }
    };
    if unchanged {
        return Ok(DataOutcome::Unchanged);
    }
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| o.kind == "TalosConfig" && Some(&o.uid) == config.metadata.uid.as_ref());
    if booted(machine) {
        return Ok(DataOutcome::Differs);
    }
    // Someone else's Secret under the name, or one of a type no writer of bootstrap data uses
    // (ours is cluster.x-k8s.io/secret, CABPT's Opaque), never boots a machine with content
    // this TalosConfig did not render.
    let type_ = existing.type_.as_deref().unwrap_or("Opaque");
    let usable_type = [CLUSTER_SECRET_TYPE, "Opaque"].contains(&type_);
    if !ours || !usable_type {
        let whose = match existing.owner_references().first() {
            _ if !usable_type => format!("of type {type_}"),
            Some(o) => format!("owned by {} {}", o.kind, o.name),
            None => "owned by nothing".to_owned(),
        };
        return Err(Error::InvalidSecret {
            name: name.to_owned(),
            reason: format!(
                "it exists, {whose}, and is not what this TalosConfig renders: it is not used as \
                 bootstrap data (delete it; it is checked again every few minutes)"
            ),
        });
    }
    let mut updated = Secret::clone(&existing);
    updated.data = desired.data;
    updated.metadata.managed_fields = None;
    api.replace(name, &PostParams::default(), &updated)
        .await
        .map_err(Error::kube(format!("updating Secret {name}")))?;
    Ok(DataOutcome::Updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::capi::{ClusterSpec, MachineAddress, MachineSpec, MachineStatus};

    fn cp(name: &str, addresses: &[(&str, &str)]) -> Machine {
        let mut m = Machine::new(
            name,
            MachineSpec {
                cluster_name: "c".into(),
                ..MachineSpec::default()
            },
        );
        m.status = Some(MachineStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| MachineAddress {
                        type_: (*t).into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            ..MachineStatus::default()
        });
        m
    }

    /// A `<cluster>-talos` Secret whose trustd token stands where trustdinfo's mapping belongs:
    /// the reason (a condition's message, an Event's) names the field, never the token.
    #[test]
    fn a_hostile_bundle_secret_is_refused_without_quoting_it() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let token = bundle.trustdinfo.token.clone();
        let yaml = bundle.to_yaml().expect("YAML").replacen(
            &format!("trustdinfo:\n  token: {token}\n"),
            &format!("trustdinfo: {token}\n"),
            1,
        );
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("c-talos".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "bundle".to_owned(),
                ByteString(yaml.into_bytes()),
            )])),
            ..Secret::default()
        };
        let err = parse_bundle(&secret).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidSecret { name, reason } if name == "c-talos"
                && reason.starts_with("parsing secrets bundle: field `trustdinfo` is a string, expected a map (line ")),
            "{err}"
        );
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(&token), "{text}");
        }
    }

    #[test]
    fn endpoints_follow_control_plane_ips_unless_pinned() {
        let mut cluster = Cluster::new("c", ClusterSpec::default());
        let machines = [
            cp("b", &[("InternalIP", "10.0.0.12"), ("Hostname", "b")]),
            cp(
                "a",
                &[("ExternalIP", "192.168.1.11"), ("InternalIP", "10.0.0.11")],
            ),
        ];
        assert_eq!(
            talosconfig_endpoints(&cluster, &machines),
            vec!["10.0.0.11", "10.0.0.12", "192.168.1.11"]
        );
        cluster
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                TALOSCONFIG_ENDPOINTS.into(),
                "192.168.1.41, 192.168.1.40".into(),
            );
        assert_eq!(
            talosconfig_endpoints(&cluster, &machines),
            vec!["192.168.1.40", "192.168.1.41"]
        );
    }
}
