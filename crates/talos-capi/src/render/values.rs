//! The per-machine values `talos-capi render` substitutes into patches (`((machine.name))`,
//! `((ipam.nodes.address))`, …), which the manager takes from each Machine and the addresses
//! Cluster API IPAM allocated to it. Offline there is no Machine and no allocation: the values
//! are given with `--value NAME=VALUE` and `--values FILE`, or, with `--placeholders`, filled
//! with documented placeholders. Anything else fails naming every value left unresolved; no
//! reference is ever rendered as written.
//!
//! Placeholders (`--placeholders`, for a value a patch references and nobody gave):
//!
//! | value | placeholder |
//! | --- | --- |
//! | `machine.name` | the object's name (as without `--placeholders`) |
//! | `infrastructureMachine.name` | the machine's name |
//! | `machine.failureDomain` | `placeholder-failure-domain` |
//! | `cluster.name` | the Cluster's name (as without `--placeholders`) |
//! | `ipam.<pool>.address` | `192.0.2.10` for the first pool `addressesFromPools` names, `192.0.2.11` for the second, … |
//! | `ipam.<pool>.prefix` | `24` |
//! | `ipam.<pool>.gateway` | `192.0.2.1` |
//!
//! The names are valid host names and label values; the addresses are from the range RFC 5737
//! reserves for documentation. A pool whose address is given keeps it, gateway or not.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use api::bootstrap::v1alpha3::{PoolReference, TalosConfigSpec};
use controller::SpecError;
use controller::bootstrap::render::unresolved_values;
use machineconfig::limits::{LIMITS, ParseError};
use machineconfig::values::{
    AddressError, MachineValues, Missing, Pool, PoolAddress, VALUE_NAMES, ValueError,
};
use serde_json::Value;

/// The failure domain's placeholder.
pub const FAILURE_DOMAIN: &str = "placeholder-failure-domain";
/// The name placeholder of a machine or cluster without one.
const NAME: &str = "placeholder";
/// The placeholder addresses: 192.0.2.10 and on (one per pool), in 192.0.2.0/24, gateway
/// 192.0.2.1.
const FIRST_ADDRESS: u8 = 10;
const PREFIX: u8 = 24;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Why given values are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GivenError {
    #[error("--value {0:?}: expected NAME=VALUE")]
    NotAssignment(String),
    #[error("{from}: unknown value {name:?} (values: {})", VALUE_NAMES.join(", "))]
    UnknownName { from: String, name: String },
    #[error(
        "{from}: {name:?}: a pool's name is lowercase letters, digits and '-', starting with a letter"
    )]
    PoolName { from: String, name: String },
    #[error("{from}: {name} is empty")]
    Empty { from: String, name: String },
    #[error("{path}: {source}")]
    Yaml {
        path: String,
        #[source]
        source: ParseError,
    },
    #[error("{path}: expected one YAML mapping of value names to values")]
    NotMapping { path: String },
    #[error("{path}: the value of {name} is not a string or a number")]
    NotScalar { path: String, name: String },
    #[error(
        "ipam.{pool}.{missing} is not given: an address needs ipam.{pool}.address and ipam.{pool}.prefix (ipam.{pool}.gateway is optional)"
    )]
    Incomplete { pool: String, missing: &'static str },
    #[error("{from}: ipam.{pool}.prefix {value:?} is not an integer")]
    Prefix {
        from: String,
        pool: String,
        value: String,
    },
    #[error("ipam.{pool}: {source}")]
    Address {
        pool: String,
        #[source]
        source: AddressError,
    },
}

/// A value name, as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueName<'a> {
    Machine,
    InfrastructureMachine,
    FailureDomain,
    Cluster,
    Pool(&'a str, Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Address,
    Prefix,
    Gateway,
}

/// A pool's name as `addressesFromPools` allows it (and a value name can hold it).
fn is_pool_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn name<'a>(from: &str, name: &'a str) -> Result<ValueName<'a>, GivenError> {
    let unknown = || GivenError::UnknownName {
        from: from.to_owned(),
        name: name.to_owned(),
    };
    Ok(match name {
        "machine.name" => ValueName::Machine,
        "infrastructureMachine.name" => ValueName::InfrastructureMachine,
        "machine.failureDomain" => ValueName::FailureDomain,
        "cluster.name" => ValueName::Cluster,
        _ => {
            let (pool, field) = name
                .strip_prefix("ipam.")
                .and_then(|rest| rest.rsplit_once('.'))
                .ok_or_else(unknown)?;
            let field = match field {
                "address" => Field::Address,
                "prefix" => Field::Prefix,
                "gateway" => Field::Gateway,
                _ => return Err(unknown()),
            };
            if !is_pool_name(pool) {
                return Err(GivenError::PoolName {
                    from: from.to_owned(),
                    name: name.to_owned(),
                });
            }
            ValueName::Pool(pool, field)
        }
    })
}

/// A value as given: where from (`--value` or the file), and the text.
struct Entry {
    from: String,
    value: String,
}

/// A pool's fields as given.
#[derive(Default)]
struct PoolFields<'a> {
    address: Option<&'a Entry>,
    prefix: Option<&'a Entry>,
    gateway: Option<&'a Entry>,
}

/// The values given with `--values` and `--value`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    machine_name: Option<String>,
    infrastructure_machine_name: Option<String>,
    failure_domain: Option<String>,
    cluster_name: Option<String>,
    pools: BTreeMap<String, PoolAddress>,
}

impl Given {
    /// The values of `file` (its path and text: one YAML mapping of names to values), then
    /// those of `flags` (`NAME=VALUE` each) over them.
    pub fn parse(file: Option<(&Path, &str)>, flags: &[String]) -> Result<Given, GivenError> {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        if let Some((path, text)) = file {
            entries.extend(file_entries(path, text)?);
        }
        for flag in flags {
            let (name, value) = flag
                .split_once('=')
                .ok_or_else(|| GivenError::NotAssignment(flag.clone()))?;
            let entry = Entry {
                from: "--value".to_owned(),
                value: value.to_owned(),
            };
            entries.insert(name.to_owned(), entry);
        }
        let mut given = Given::default();
        let mut pools: BTreeMap<&str, PoolFields<'_>> = BTreeMap::new();
        for (key, entry) in &entries {
            let name = name(&entry.from, key)?;
            if entry.value.is_empty() {
                return Err(GivenError::Empty {
                    from: entry.from.clone(),
                    name: key.clone(),
                });
            }
            let text = Some(entry.value.clone());
            match name {
                ValueName::Machine => given.machine_name = text,
                ValueName::InfrastructureMachine => given.infrastructure_machine_name = text,
                ValueName::FailureDomain => given.failure_domain = text,
                ValueName::Cluster => given.cluster_name = text,
                ValueName::Pool(pool, field) => {
                    let fields = pools.entry(pool).or_default();
                    match field {
                        Field::Address => fields.address = Some(entry),
                        Field::Prefix => fields.prefix = Some(entry),
                        Field::Gateway => fields.gateway = Some(entry),
                    }
                }
            }
        }
        for (pool, fields) in pools {
            given
                .pools
                .insert(pool.to_owned(), pool_address(pool, &fields)?);
        }
        Ok(given)
    }

    /// The pools given, by name.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// The values of a machine whose object and Cluster give `base`, with the given values over
    /// it, and one pool for each of `pools` (those its spec's `addressesFromPools` names): bound
    /// when its address is given, pending otherwise.
    pub fn over(&self, mut base: MachineValues, pools: &[PoolReference]) -> MachineValues {
        let over = |value: &mut Option<String>, given: &Option<String>| {
            if given.is_some() {
                value.clone_from(given);
            }
        };
        over(&mut base.machine_name, &self.machine_name);
        over(
            &mut base.infrastructure_machine_name,
            &self.infrastructure_machine_name,
        );
        over(&mut base.failure_domain, &self.failure_domain);
        over(&mut base.cluster_name, &self.cluster_name);
        base.pools = pools
            .iter()
            .map(|p| {
                let pool = match self.pools.get(&p.name) {
                    Some(address) => Pool::Bound(address.clone()),
                    None => Pool::Pending,
                };
                (p.name.clone(), pool)
            })
            .collect();
        base
    }
}

/// The entries of a `--values` file.
fn file_entries(path: &Path, text: &str) -> Result<Vec<(String, Entry)>, GivenError> {
    let shown = path.display().to_string();
    let docs =
        machineconfig::limits::documents(text, &LIMITS).map_err(|source| GivenError::Yaml {
            path: shown.clone(),
            source,
        })?;
    let map = match docs.as_slice() {
        [] => return Ok(Vec::new()),
        [Value::Object(map)] => map,
        _ => return Err(GivenError::NotMapping { path: shown }),
    };
    map.iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(GivenError::NotScalar {
                        path: shown.clone(),
                        name: name.clone(),
                    });
                }
            };
            let entry = Entry {
                from: shown.clone(),
                value,
            };
            Ok((name.clone(), entry))
        })
        .collect()
}

/// A pool's address from its given fields: address and prefix, and an optional gateway.
fn pool_address(pool: &str, fields: &PoolFields<'_>) -> Result<PoolAddress, GivenError> {
    let incomplete = |missing| GivenError::Incomplete {
        pool: pool.to_owned(),
        missing,
    };
    let address = fields.address.ok_or_else(|| incomplete("address"))?;
    let prefix = fields.prefix.ok_or_else(|| incomplete("prefix"))?;
    let length: i64 = prefix
        .value
        .trim()
        .parse()
        .map_err(|_| GivenError::Prefix {
            from: prefix.from.clone(),
            pool: pool.to_owned(),
            value: prefix.value.clone(),
        })?;
    let gateway = fields.gateway.map(|g| g.value.as_str());
    PoolAddress::new(&address.value, length, gateway).map_err(|source| GivenError::Address {
        pool: pool.to_owned(),
        source,
    })
}

/// Why an object's values do not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A patch that cannot be read at all (the render would say the same).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Every reference left unresolved, with the patch it is in.
    #[error("{}", unresolved_message(.0))]
    Unresolved(Vec<(String, ValueError)>),
}

/// The values `spec`'s patches reference, from `base` (what the object and its Cluster give)
/// with `given` over it; with `placeholders`, a placeholder for each value still missing. With
/// them, the placeholders used, as `((name)) = value`.
pub fn resolve(
    spec: &TalosConfigSpec,
    base: MachineValues,
    given: &Given,
    placeholders: bool,
) -> Result<(MachineValues, Vec<String>), ResolveError> {
    let pools = spec.addresses_from_pools.as_deref().unwrap_or_default();
    let mut values = given.over(base, pools);
    let mut unresolved = unresolved_values(spec, &values)?;
    let mut used = Vec::new();
    if placeholders && !unresolved.is_empty() {
        for (_, refused) in &unresolved {
            if let Some(filled) = fill(&mut values, refused, pools)
                && !used.contains(&filled)
            {
                used.push(filled);
            }
        }
        unresolved = unresolved_values(spec, &values)?;
    }
    if unresolved.is_empty() {
        Ok((values, used))
    } else {
        Err(ResolveError::Unresolved(unresolved))
    }
}

/// Fill the value `refused` names with its placeholder, if it is one not known (neither given
/// nor from the object); `((name)) = placeholder` then.
fn fill(
    values: &mut MachineValues,
    refused: &ValueError,
    pools: &[PoolReference],
) -> Option<String> {
    let ValueError::NotKnownYet { name, missing, .. } = refused else {
        return None;
    };
    let text =
        |value: &mut Option<String>, placeholder: String| value.get_or_insert(placeholder).clone();
    let shown = match (name.as_str(), missing) {
        ("machine.name", Missing::Unset { .. }) => text(&mut values.machine_name, NAME.into()),
        ("infrastructureMachine.name", Missing::Unset { .. }) => {
            let machine = values.machine_name.clone().unwrap_or_else(|| NAME.into());
            text(&mut values.infrastructure_machine_name, machine)
        }
        ("machine.failureDomain", Missing::Unset { .. }) => {
            text(&mut values.failure_domain, FAILURE_DOMAIN.into())
        }
        ("cluster.name", Missing::Unset { .. }) => text(&mut values.cluster_name, NAME.into()),
        (_, Missing::Pending { pool }) => {
            let index = pools.iter().position(|p| p.name == *pool)?;
            let address = placeholder_address(index)?;
            values
                .pools
                .insert(pool.clone(), Pool::Bound(address.clone()));
            match name.rsplit_once('.').map(|(_, field)| field) {
                Some("address") => address.address().to_string(),
                Some("prefix") => address.prefix().to_string(),
                _ => GATEWAY.to_string(),
            }
        }
        _ => return None,
    };
    Some(format!("(({name})) = {shown}"))
}

/// The placeholder address of the pool at `index` in `addressesFromPools`.
fn placeholder_address(index: usize) -> Option<PoolAddress> {
    let last = u8::try_from(index)
        .ok()
        .and_then(|i| FIRST_ADDRESS.checked_add(i))
        .filter(|last| *last < 255)?;
    let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
    PoolAddress::new(
        &address.to_string(),
        i64::from(PREFIX),
        Some(&GATEWAY.to_string()),
    )
    .ok()
}

/// Each unresolved reference: a value not given once (where first referenced), any other
/// refusal as the render gives it.
fn unresolved_message(unresolved: &[(String, ValueError)]) -> String {
    let mut not_given: Vec<&str> = Vec::new();
    let mut lines = Vec::new();
    for (patch, refused) in unresolved {
        let line = match refused {
            ValueError::NotKnownYet {
                name,
                at,
                missing: Missing::Unset { .. } | Missing::Pending { .. },
            } => {
                if not_given.contains(&name.as_str()) {
                    continue;
                }
                not_given.push(name);
                format!("(({name})) is not given ({patch}, {at})")
            }
            ValueError::NotKnownYet {
                name,
                at,
                missing: Missing::NoGateway { pool },
            } => format!(
                "(({name})) ({patch}, {at}): the address given for pool {pool:?} has no gateway (ipam.{pool}.gateway)"
            ),
            other => format!("{patch}: {other}"),
        };
        lines.push(line);
    }
    let hint = if not_given.is_empty() {
        ""
    } else {
        " (give values with --value NAME=VALUE or --values FILE, or fill in placeholders with --placeholders)"
    };
    let listed: String = lines.iter().map(|l| format!("\n      - {l}")).collect();
    format!("unresolved per-machine values{hint}:{listed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_are_checked_and_an_address_needs_its_prefix() {
        let refused = |list: &[&str]| Given::parse(None, &flags(list)).unwrap_err();
        assert_eq!(
            refused(&["machine.failureDomain"]),
            GivenError::NotAssignment("machine.failureDomain".into())
        );
        assert!(matches!(
            refused(&["machine.hostname=x"]),
            GivenError::UnknownName { .. }
        ));
        assert!(matches!(
            refused(&["ipam.nodes.netmask=24"]),
            GivenError::UnknownName { .. }
        ));
        assert!(matches!(
            refused(&["ipam.Nodes.address=10.0.0.1"]),
            GivenError::PoolName { .. }
        ));
        assert_eq!(
            refused(&["ipam.nodes.address=10.0.0.1"]),
            GivenError::Incomplete {
                pool: "nodes".into(),
                missing: "prefix"
            }
        );
        assert_eq!(
            refused(&["ipam.nodes.gateway=10.0.0.1"]),
            GivenError::Incomplete {
                pool: "nodes".into(),
                missing: "address"
            }
        );
        assert!(matches!(
            refused(&["ipam.nodes.address=10.0.0.1", "ipam.nodes.prefix=x"]),
            GivenError::Prefix { .. }
        ));
        assert!(matches!(
            refused(&["ipam.nodes.address=10.0.0.1", "ipam.nodes.prefix=33"]),
            GivenError::Address {
                source: AddressError::Prefix { .. },
                ..
            }
        ));
        assert!(matches!(
            refused(&["machine.failureDomain="]),
            GivenError::Empty { .. }
        ));
        let given = Given::parse(
            None,
            &flags(&["ipam.nodes.address=10.0.0.5", "ipam.nodes.prefix=24"]),
        )
        .unwrap();
        assert_eq!(given.pools().collect::<Vec<_>>(), ["nodes"]);
    }

    #[test]
    fn the_file_is_one_mapping_of_strings_and_numbers_and_flags_override_it() {
        let path = Path::new("values.yaml");
        let text =
            "machine.failureDomain: fd-file\nipam.nodes.address: 10.0.0.5\nipam.nodes.prefix: 24\n";
        let given = Given::parse(
            Some((path, text)),
            &flags(&["machine.failureDomain=fd-flag"]),
        )
        .unwrap();
        assert_eq!(given.failure_domain.as_deref(), Some("fd-flag"));
        assert_eq!(given.pools["nodes"].prefix(), 24);
        for (text, expected) in [
            ("- a\n", "expected one YAML mapping"),
            ("a: 1\n---\nb: 2\n", "expected one YAML mapping"),
            (
                "machine.failureDomain: [a]\n",
                "is not a string or a number",
            ),
            (
                "machine.failureDomain: true\n",
                "is not a string or a number",
            ),
            ("x.y: 1\n", "unknown value \"x.y\""),
        ] {
            let err = Given::parse(Some((path, text)), &[])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("values.yaml: "), "{err}");
            assert!(err.contains(expected), "{expected:?} in {err}");
        }
        assert_eq!(Given::parse(Some((path, "")), &[]), Ok(Given::default()));
    }

    #[test]
    fn placeholder_addresses_are_distinct_documentation_addresses() {
        let first = placeholder_address(0).unwrap();
        assert_eq!(first.address().to_string(), "192.0.2.10");
        assert_eq!(first.prefix(), 24);
        assert_eq!(first.gateway(), Some(IpAddr::V4(GATEWAY)));
        assert_eq!(
            placeholder_address(7).unwrap().address().to_string(),
            "192.0.2.17"
        );
        assert!(placeholder_address(244).is_some());
        assert!(placeholder_address(245).is_none());
    }
}
