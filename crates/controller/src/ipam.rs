//! Cluster API IPAM for the TalosConfigs that name pools (`spec.addressesFromPools`): one
//! IPAddressClaim per TalosConfig and pool, owned by the TalosConfig (so `clusterctl move`
//! carries it along), named after both so a reconcile never claims twice; the IPAddress bound
//! to each becomes the machine's `((ipam.<pool>.…))` values. Claims are deleted, and so the
//! addresses released, only once the machine's infrastructure is gone: a running machine never
//! loses its address to another.

use std::collections::BTreeMap;

use api::bootstrap::v1alpha3::{PoolReference, TalosConfig};
use api::capi::{Machine, labels};
use api::conditions::reason;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Resource, ResourceExt};
use machineconfig::values::{Pool, PoolAddress};
use serde_json::{Value, json};

use crate::Error;

/// Cluster API's IPAM group, and the version of IPAddressClaim and IPAddress the core serves
/// (as its storage version on v1.12 and v1.14).
pub const GROUP: &str = "ipam.cluster.x-k8s.io";
const VERSION: &str = "v1beta2";

/// On a TalosConfig with claims: its claims are released before it goes.
pub const FINALIZER: &str = "bootstrap.cluster.x-k8s.io/ip-address-claims";

/// On every claim a TalosConfig makes (what the controller watches).
pub const CLAIM_LABEL: &str = "bootstrap.cluster.x-k8s.io/talosconfig-claim";

/// The watch of the claims TalosConfigs make: by their label, sharded by `--watch-filter`.
pub fn watched(options: &crate::Options) -> kube::runtime::watcher::Config {
    let selector = match &options.watch_filter {
        Some(value) => format!("{}={value},{CLAIM_LABEL}", labels::WATCH_FILTER),
        None => CLAIM_LABEL.to_owned(),
    };
    crate::cache::paged().labels(&selector)
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

pub fn claim_resource() -> ApiResource {
    resource("IPAddressClaim", "ipaddressclaims")
}

fn address_resource() -> ApiResource {
    resource("IPAddress", "ipaddresses")
}

/// The pools `config` claims addresses from.
pub fn pools(config: &TalosConfig) -> &[PoolReference] {
    config
        .spec
        .addresses_from_pools
        .as_deref()
        .unwrap_or_default()
}

/// The claim of TalosConfig `config`'s address from pool `pool`: `<config>-<pool>`, or, when
/// that is longer than a name may be, the config's name cut short with a digest of the whole.
pub fn claim_name(config: &str, pool: &str) -> String {
    let full = format!("{config}-{pool}");
    if full.len() <= 253 {
        return full;
    }
    let digest = crate::cache::value_digest(full.as_bytes());
    let digest = &digest[..digest.len().min(16)];
    let keep = 253 - pool.len() - digest.len() - 2;
    let base: String = config.chars().take(keep).collect();
    format!("{base}-{digest}-{pool}")
}

/// What a machine's claims say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claims {
    /// Every pool's address, by pool name.
    Bound(BTreeMap<String, Pool>),
    /// Some claim is not bound (yet): the reason and a message naming pools and claims.
    Waiting {
        reason: &'static str,
        message: String,
    },
}

/// Claim an address from each of `config`'s pools (the claims that do not exist yet are made)
/// and read what is bound to each.
pub async fn claim(
    client: &kube::Client,
    config: &TalosConfig,
    cluster_name: &str,
) -> Result<Claims, Error> {
    let ns = config.namespace().unwrap_or_default();
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &claim_resource());
    let mut bound = BTreeMap::new();
    let mut waiting = Vec::new();
    let mut exhausted = false;
    for pool in pools(config) {
        let name = claim_name(&config.name_any(), &pool.name);
        let claim = match claims
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("reading IPAddressClaim {ns}/{name}")))?
        {
            Some(claim) => claim,
            None => create(&claims, config, pool, &name, cluster_name).await?,
        };
        if !owned_by(&claim, config) {
            waiting.push(format!(
                "IPAddressClaim {name} exists but is not this TalosConfig's"
            ));
            continue;
        }
        match address(client, &ns, &claim).await? {
            Ok(Some(address)) => {
                bound.insert(pool.name.clone(), Pool::Bound(address));
            }
            Ok(None) => {
                let free = free_addresses(client, &ns, pool).await;
                exhausted |= free == Some(0);
                waiting.push(pending_message(pool, &name, free));
            }
            Err(problem) => waiting.push(problem.to_string()),
        }
    }
    Ok(if waiting.is_empty() {
        Claims::Bound(bound)
    } else {
        Claims::Waiting {
            reason: if exhausted {
                reason::POOL_EXHAUSTED
            } else {
                reason::WAITING_FOR_IP_ADDRESS
            },
            message: waiting.join("; "),
        }
    })
}

fn pending_message(pool: &PoolReference, claim: &str, free: Option<i64>) -> String {
    let what = format!("{} {}", pool.kind, pool.name);
    match free {
        Some(0) => format!(
            "{what} is exhausted (no free address): IPAddressClaim {claim} waits for one to be freed"
        ),
        _ => format!("waiting for IPAddressClaim {claim} to get an address from {what}"),
    }
}

/// The addresses bound to the claims `config` (named `config_name`, in `ns`) made, without
/// claiming: a pool without a bound claim is [`Pool::Pending`]. For re-rendering the
/// configuration of a machine whose claims were made when it was created.
pub async fn bound(
    client: &kube::Client,
    ns: &str,
    config_name: &str,
    pools: &[PoolReference],
) -> Result<BTreeMap<String, Pool>, Error> {
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &claim_resource());
    let mut out = BTreeMap::new();
    for pool in pools {
        let name = claim_name(config_name, &pool.name);
        let claim = claims
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("reading IPAddressClaim {ns}/{name}")))?;
        let address = match claim {
            Some(claim) => address(client, ns, &claim).await?.ok().flatten(),
            None => None,
        };
        out.insert(
            pool.name.clone(),
            address.map_or(Pool::Pending, Pool::Bound),
        );
    }
    Ok(out)
}

async fn create(
    claims: &Api<DynamicObject>,
    config: &TalosConfig,
    pool: &PoolReference,
    name: &str,
    cluster_name: &str,
) -> Result<DynamicObject, Error> {
    let mut claim_labels = BTreeMap::from([
        (labels::CLUSTER_NAME.to_owned(), cluster_name.to_owned()),
        (CLAIM_LABEL.to_owned(), "true".to_owned()),
    ]);
    if let Some(filter) = config.labels().get(labels::WATCH_FILTER) {
        claim_labels.insert(labels::WATCH_FILTER.to_owned(), filter.clone());
    }
    let owner = config.controller_owner_ref(&()).ok_or_else(|| {
        Error::Missing(format!("TalosConfig {} has no uid yet", config.name_any()))
    })?;
    let claim: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "IPAddressClaim",
        "metadata": {
            "name": name,
            "labels": claim_labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "clusterName": cluster_name,
            "poolRef": {"apiGroup": pool.api_group, "kind": pool.kind, "name": pool.name},
        },
    }))
    .map_err(|source| Error::Decode {
        kind: "IPAddressClaim",
        source,
    })?;
    let ns = config.namespace().unwrap_or_default();
    claims
        .create(&PostParams::default(), &claim)
        .await
        .map_err(Error::kube(format!("creating IPAddressClaim {ns}/{name}")))
}

fn owned_by(claim: &DynamicObject, config: &TalosConfig) -> bool {
    let uid = config.metadata.uid.as_deref();
    claim
        .owner_references()
        .iter()
        .any(|o| o.kind == "TalosConfig" && Some(o.uid.as_str()) == uid)
}

/// Why the IPAddress a claim is bound to cannot be used (a message for the waiting condition).
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("IPAddressClaim {claim} names IPAddress {address}, which does not exist")]
    Missing { claim: String, address: String },
    #[error("IPAddress {address} cannot be used: {source}")]
    Invalid {
        address: String,
        source: machineconfig::values::AddressError,
    },
}

/// The address bound to `claim`: `Ok(None)` while it has none, [`Unusable`] when the IPAddress
/// it names is missing or unusable.
async fn address(
    client: &kube::Client,
    ns: &str,
    claim: &DynamicObject,
) -> Result<Result<Option<PoolAddress>, Unusable>, Error> {
    let Some(name) = claim.data["status"]["addressRef"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    else {
        return Ok(Ok(None));
    };
    let addresses: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &address_resource());
    let Some(ip) = addresses
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading IPAddress {ns}/{name}")))?
    else {
        return Ok(Err(Unusable::Missing {
            claim: claim.name_any(),
            address: name.to_owned(),
        }));
    };
    Ok(pool_address(&ip.data["spec"])
        .map(Some)
        .map_err(|source| Unusable::Invalid {
            address: name.to_owned(),
            source,
        }))
}

/// An IPAddress's spec as the values' [`PoolAddress`].
fn pool_address(spec: &Value) -> Result<PoolAddress, machineconfig::values::AddressError> {
    PoolAddress::new(
        spec["address"].as_str().unwrap_or_default(),
        spec["prefix"].as_i64().unwrap_or(-1),
        spec["gateway"].as_str(),
    )
}

/// How many addresses `pool` has free (`status.ipAddresses.free`, as the in-cluster provider's
/// pools report it), when it can be read.
async fn free_addresses(client: &kube::Client, ns: &str, pool: &PoolReference) -> Option<i64> {
    let plural = format!("{}s", pool.kind.to_ascii_lowercase());
    let gvk = GroupVersionKind::gvk(&pool.api_group, "v1alpha2", &pool.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = if pool.kind.starts_with("Global") {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    };
    let found = if pool.api_group == GROUP {
        api.get_opt(&pool.name).await.ok().flatten()
    } else {
        None
    };
    found?.data["status"]["ipAddresses"]["free"].as_i64()
}

/// Whether a TalosConfig being deleted may release its claims: once its Machine, or the
/// Machine's infrastructure machine, is gone. `Some(message)` names what is still there.
pub async fn still_running(
    client: &kube::Client,
    machine: Option<&Machine>,
) -> Result<Option<String>, Error> {
    let Some(machine) = machine else {
        return Ok(None);
    };
    let infra = &machine.spec.infrastructure_ref;
    if infra.name.is_empty() || infra.kind.is_empty() {
        return Ok(None);
    }
    let ns = machine.namespace().unwrap_or_default();
    let group = match kube::discovery::group(client, &infra.api_group).await {
        Ok(group) => group,
        // No such API group (a hand-written reference, say): there is no such machine.
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::kube(format!(
                "discovering API group {}",
                infra.api_group
            ))(e));
        }
    };
    let Some((ar, _)) = group.recommended_kind(&infra.kind) else {
        return Ok(None);
    };
    let found = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar)
        .get_opt(&infra.name)
        .await
        .map_err(Error::kube(format!(
            "reading {} {ns}/{}",
            infra.kind, infra.name
        )))?;
    Ok(found.map(|_| {
        format!(
            "waiting for {} {} of Machine {} to be deleted before releasing its addresses",
            infra.kind,
            infra.name,
            machine.name_any()
        )
    }))
}

/// Delete `config`'s claims (the IPAM provider then frees their addresses).
pub async fn release(client: &kube::Client, config: &TalosConfig) -> Result<(), Error> {
    let ns = config.namespace().unwrap_or_default();
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &claim_resource());
    for pool in pools(config) {
        let name = claim_name(&config.name_any(), &pool.name);
        let claim = claims
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("reading IPAddressClaim {ns}/{name}")))?;
        if claim.is_some_and(|c| owned_by(&c, config) && c.metadata.deletion_timestamp.is_none()) {
            claims
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(Error::kube(format!("deleting IPAddressClaim {ns}/{name}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_stable_and_fit_kubernetes() {
        assert_eq!(claim_name("cp-abc12", "nodes"), "cp-abc12-nodes");
        let long = "a".repeat(253);
        let name = claim_name(&long, "nodes");
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-nodes"), "{name}");
        assert_eq!(name, claim_name(&long, "nodes"), "the same name every time");
        assert_ne!(name, claim_name(&format!("{long}b"), "nodes"));
    }

    #[test]
    fn an_ip_address_spec_is_checked_before_use() {
        let ok =
            pool_address(&json!({"address": "127.20.0.10", "prefix": 24, "gateway": "127.20.0.1"}));
        assert_eq!(ok.map(|a| a.prefix()), Ok(24));
        assert!(pool_address(&json!({"address": "x", "prefix": 24})).is_err());
        assert!(pool_address(&json!({"address": "127.20.0.10"})).is_err());
        assert!(
            pool_address(&json!({"address": "127.20.0.10", "prefix": 24, "gateway": "::1"}))
                .is_err()
        );
    }

    #[test]
    fn an_exhausted_pool_is_said_as_such() {
        let pool = PoolReference {
            api_group: GROUP.into(),
            kind: "InClusterIPPool".into(),
            name: "nodes".into(),
        };
        assert!(
            pending_message(&pool, "m-nodes", Some(0))
                .contains("InClusterIPPool nodes is exhausted")
        );
        assert!(
            pending_message(&pool, "m-nodes", Some(3))
                .starts_with("waiting for IPAddressClaim m-nodes")
        );
    }
}
