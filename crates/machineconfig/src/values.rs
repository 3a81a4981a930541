//! Per-machine values in patches: `((machine.name))`, `((ipam.nodes.address))` and the like,
//! substituted into a parsed [`Patch`] for one machine.
//!
//! A reference is `((`, a value name, `))`, with optional spaces inside the parentheses. A
//! value name is two or more dot-separated segments of ASCII letters, digits, `-` and `_`,
//! starting with a letter. Text that is not such a reference is left as it is: `$((i + 1))`
//! (shell arithmetic), `((` alone, `((x))` (one segment). The syntax is chosen so that neither
//! clusterctl's variable substitution (drone/envsubst: `$VAR`, `${VAR}`; it only acts on `$`)
//! nor ClusterClass patch templates (Go text/template, which only acts inside `{{ }}` and copies
//! everything else verbatim) touch it; docs/ipam.md has the proof.
//!
//! The values ([`MachineValues`]):
//!
//! | reference | value |
//! | --- | --- |
//! | `((machine.name))` | the Machine's name |
//! | `((infrastructureMachine.name))` | its infrastructure machine's name |
//! | `((machine.failureDomain))` | its failure domain |
//! | `((cluster.name))` | the Cluster's name |
//! | `((ipam.<pool>.address))` | the address allocated from the named pool, e.g. `10.5.0.12` |
//! | `((ipam.<pool>.prefix))` | its prefix length, e.g. `24` |
//! | `((ipam.<pool>.gateway))` | its gateway, e.g. `10.5.0.1` |
//!
//! Substitution works on the parsed documents, never on text: a reference is replaced inside
//! the string scalar that holds it, so whatever a value contains (quotes, newlines, `: `,
//! `#`, `---`) stays a string and cannot change the document's structure. A scalar that is
//! exactly one `((ipam.<pool>.prefix))` reference becomes an integer (`prefix:
//! ((ipam.nodes.prefix))` gives `prefix: 24`); every other substitution gives a string.
//! Keys are never substituted: a reference in a mapping key, or in a JSON patch operation's
//! `path` or `from`, is refused. A reference to an unknown value, or to a value the machine
//! does not have yet (a pool whose claim is not bound, a machine without failure domain), is
//! an error naming the value and where in the patch it appears; nothing is ever rendered with
//! a reference left in it. Substituted text is not searched again. [`unresolved`] lists every
//! reference a substitution would refuse, not only the first, for a caller that names them all
//! at once (`talos-capi render`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::Patch;
use crate::limits::{LIMITS, LimitError, RENDER_LIMITS, RenderBudget};

/// The most references substituted in one patch.
pub const MAX_SUBSTITUTIONS: usize = 1024;

/// The longest value name (`ipam.` and a 63-character pool name, with room to spare).
const MAX_NAME: usize = 128;

/// Every value name, for messages (`<pool>` stands for a pool's name).
pub const VALUE_NAMES: &[&str] = &[
    "machine.name",
    "infrastructureMachine.name",
    "machine.failureDomain",
    "cluster.name",
    "ipam.<pool>.address",
    "ipam.<pool>.prefix",
    "ipam.<pool>.gateway",
];

/// An address allocated to a machine from a pool (an IPAddress's spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAddress {
    address: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
}

/// Why an allocated address is refused (an IPAddress is written by whichever provider serves
/// the pool, so it is checked before it is used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {0:?} is not an IP address")]
    Address(String),
    #[error("gateway {0:?} is not an IP address")]
    Gateway(String),
    #[error("prefix {prefix} is out of range for {address} (0-{max})")]
    Prefix {
        prefix: i64,
        address: IpAddr,
        max: u8,
    },
    #[error("gateway {gateway} is not of the address family of {address}")]
    Family { gateway: IpAddr, address: IpAddr },
}

impl PoolAddress {
    /// An address from an IPAddress's `spec.address`, `spec.prefix` and `spec.gateway`.
    pub fn new(address: &str, prefix: i64, gateway: Option<&str>) -> Result<Self, AddressError> {
        let parsed: IpAddr = address
            .parse()
            .map_err(|_| AddressError::Address(address.to_owned()))?;
        let max = if parsed.is_ipv4() { 32 } else { 128 };
        let prefix =
            u8::try_from(prefix)
                .ok()
                .filter(|p| *p <= max)
                .ok_or(AddressError::Prefix {
                    prefix,
                    address: parsed,
                    max,
                })?;
        let gateway = match gateway.filter(|g| !g.is_empty()) {
            None => None,
            Some(g) => {
                let gw: IpAddr = g.parse().map_err(|_| AddressError::Gateway(g.to_owned()))?;
                if gw.is_ipv4() != parsed.is_ipv4() {
                    return Err(AddressError::Family {
                        gateway: gw,
                        address: parsed,
                    });
                }
                Some(gw)
            }
        };
        Ok(PoolAddress {
            address: parsed,
            prefix,
            gateway,
        })
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }
}

/// A named pool's state for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pool {
    /// Claimed, not allocated yet (the IPAddressClaim has no address).
    Pending,
    Bound(PoolAddress),
}

/// The values one machine's patches may reference; `None` is a value not known (yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineValues {
    pub machine_name: Option<String>,
    pub infrastructure_machine_name: Option<String>,
    pub failure_domain: Option<String>,
    pub cluster_name: Option<String>,
    /// The pools the machine's configuration names, by name.
    pub pools: BTreeMap<String, Pool>,
}

/// Why a known value name has no value yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("the machine has no {what}")]
    Unset { what: &'static str },
    #[error("the address claimed from pool {pool:?} is not allocated yet")]
    Pending { pool: String },
    #[error("the address allocated from pool {pool:?} has no gateway")]
    NoGateway { pool: String },
}

/// Where in a patch a reference is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In a strategic merge patch's document (from 0), at a JSON pointer.
    Document { index: usize, pointer: String },
    /// In a JSON patch operation (from 0): in its `field` (`value`, `path` or `from`), at a
    /// JSON pointer within that field.
    Operation {
        index: usize,
        field: &'static str,
        pointer: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |p: &str| {
            if p.is_empty() {
                "/".to_owned()
            } else {
                p.to_owned()
            }
        };
        match self {
            Location::Document { index, pointer } => {
                write!(f, "document {index}, {}", shown(pointer))
            }
            Location::Operation {
                index,
                field,
                pointer,
            } => write!(f, "operation {index}'s {field}, {}", shown(pointer)),
        }
    }
}

/// Why a patch's references cannot be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "unknown value (({name})) at {at} (values: {})",
        VALUE_NAMES.join(", ")
    )]
    Unknown { name: String, at: Location },
    #[error("value (({name})) at {at} is not known yet: {missing}")]
    NotKnownYet {
        name: String,
        at: Location,
        missing: Missing,
    },
    #[error(
        "value (({name})) at {at} is in a key or a JSON pointer; values are substituted in values only"
    )]
    NotInValue { name: String, at: Location },
    #[error("more than {limit} value references in one patch")]
    TooManySubstitutions { limit: usize },
    #[error("at {at}: {source}")]
    Limit {
        at: Location,
        #[source]
        source: LimitError,
    },
}

/// What a value name resolves to.
enum Resolved {
    Text(String),
    Integer(u8),
}

impl MachineValues {
    fn lookup(&self, name: &str) -> Result<Option<Resolved>, Missing> {
        let text = |v: &Option<String>, what| match v {
            Some(v) => Ok(Some(Resolved::Text(v.clone()))),
            None => Err(Missing::Unset { what }),
        };
        match name {
            "machine.name" => return text(&self.machine_name, "name"),
            "infrastructureMachine.name" => {
                return text(&self.infrastructure_machine_name, "infrastructure machine");
            }
            "machine.failureDomain" => return text(&self.failure_domain, "failure domain"),
            "cluster.name" => return text(&self.cluster_name, "cluster"),
            _ => {}
        }
        let Some((pool, field)) = name
            .strip_prefix("ipam.")
            .and_then(|rest| rest.rsplit_once('.'))
        else {
            return Ok(None);
        };
        if !matches!(field, "address" | "prefix" | "gateway") {
            return Ok(None);
        }
        let address = match self.pools.get(pool) {
            None => return Ok(None),
            Some(Pool::Pending) => {
                return Err(Missing::Pending {
                    pool: pool.to_owned(),
                });
            }
            Some(Pool::Bound(address)) => address,
        };
        Ok(Some(match field {
            "address" => Resolved::Text(address.address.to_string()),
            "prefix" => Resolved::Integer(address.prefix),
            _ => Resolved::Text(
                address
                    .gateway
                    .ok_or_else(|| Missing::NoGateway {
                        pool: pool.to_owned(),
                    })?
                    .to_string(),
            ),
        }))
    }
}

/// A piece of a string scalar: literal text, or a reference's value name.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Reference(&'a str),
}

fn is_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.contains('.')
        && name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The reference starting at `s` (which starts with `((`): its value name and its length in
/// bytes. Looks at most a bounded distance ahead, so splitting a string is linear in its length.
fn reference_at(s: &str) -> Option<(&str, usize)> {
    let inner = &s[2..];
    let lead = inner.len() - inner.trim_start_matches(' ').len();
    let after_lead = &inner[lead..];
    let name_len = after_lead
        .bytes()
        .take(MAX_NAME + 1)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .count();
    let name = &after_lead[..name_len];
    let after_name = &after_lead[name_len..];
    let trail = after_name.len() - after_name.trim_start_matches(' ').len();
    (is_name(name) && after_name[trail..].starts_with("))"))
        .then_some((name, 2 + lead + name_len + trail + 2))
}

/// Split a string scalar into literal text and references.
fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut literal_from = 0;
    let mut at = 0;
    while let Some(found) = s[at..].find("((") {
        let start = at + found;
        match reference_at(&s[start..]) {
            Some((name, len)) => {
                if literal_from < start {
                    pieces.push(Piece::Text(&s[literal_from..start]));
                }
                pieces.push(Piece::Reference(name));
                at = start + len;
                literal_from = at;
            }
            None => at = start + 1,
        }
    }
    if literal_from < s.len() {
        pieces.push(Piece::Text(&s[literal_from..]));
    }
    pieces
}

/// The first reference in `s`, if any.
fn first_reference(s: &str) -> Option<&str> {
    pieces(s).into_iter().find_map(|p| match p {
        Piece::Reference(name) => Some(name),
        Piece::Text(_) => None,
    })
}

/// Append a JSON pointer segment (RFC 6901 escaping).
fn push_segment(pointer: &mut String, segment: &str) {
    pointer.push('/');
    pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
}

/// One patch's substitution: the values, where it is, and what it has spent.
struct Walk<'a> {
    values: &'a MachineValues,
    budget: &'a RenderBudget,
    substitutions: usize,
    /// Where the walk is, as [`Location`] without its pointer.
    place: Place,
    pointer: String,
    /// When listing ([`unresolved`]): the references refused so far, the walk going on past
    /// each; otherwise the walk stops at the first.
    refused: Option<Vec<ValueError>>,
}

#[derive(Clone, Copy)]
enum Place {
    Document(usize),
    Operation(usize, &'static str),
}

impl Walk<'_> {
    fn at(&self) -> Location {
        let pointer = self.pointer.clone();
        match self.place {
            Place::Document(index) => Location::Document { index, pointer },
            Place::Operation(index, field) => Location::Operation {
                index,
                field,
                pointer,
            },
        }
    }

    /// Stop at `err`, or, when listing, note it and go on.
    fn refuse(&mut self, err: ValueError) -> Result<(), ValueError> {
        match &mut self.refused {
            Some(refused) => {
                refused.push(err);
                Ok(())
            }
            None => Err(err),
        }
    }

    fn limit(&self, source: LimitError) -> ValueError {
        ValueError::Limit {
            at: self.at(),
            source,
        }
    }

    /// Substitute in `value` and everything under it, `depth` levels down in its document.
    fn value(&mut self, value: &mut Value, depth: usize) -> Result<(), ValueError> {
        if depth > LIMITS.depth {
            return Err(self.limit(LimitError::Depth {
                limit: LIMITS.depth,
            }));
        }
        self.budget.step(1).map_err(|e| self.limit(e))?;
        match value {
            Value::String(s) => {
                if let Some(substituted) = self.scalar(s)? {
                    *value = substituted;
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    let len = self.pointer.len();
                    push_segment(&mut self.pointer, &index.to_string());
                    self.value(item, depth + 1)?;
                    self.pointer.truncate(len);
                }
            }
            Value::Object(map) => self.mapping(map, depth)?,
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    fn mapping(&mut self, map: &mut Map<String, Value>, depth: usize) -> Result<(), ValueError> {
        for (key, item) in map.iter_mut() {
            let len = self.pointer.len();
            push_segment(&mut self.pointer, key);
            if let Some(name) = first_reference(key) {
                self.refuse(ValueError::NotInValue {
                    name: name.to_owned(),
                    at: self.at(),
                })?;
            }
            self.value(item, depth + 1)?;
            self.pointer.truncate(len);
        }
        Ok(())
    }

    /// The value `s` becomes, or `None` if it holds no reference.
    fn scalar(&mut self, s: &str) -> Result<Option<Value>, ValueError> {
        let pieces = pieces(s);
        if !pieces.iter().any(|p| matches!(p, Piece::Reference(_))) {
            return Ok(None);
        }
        let whole = pieces.len() == 1;
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Reference(name) => match self.resolve(name)? {
                    Resolved::Integer(n) if whole => return Ok(Some(Value::Number(n.into()))),
                    Resolved::Integer(n) => out.push_str(&n.to_string()),
                    Resolved::Text(text) => out.push_str(&text),
                },
            }
        }
        let grown = out.len().saturating_sub(s.len());
        self.budget.build(0, grown).map_err(|e| self.limit(e))?;
        Ok(Some(Value::String(out)))
    }

    fn resolve(&mut self, name: &str) -> Result<Resolved, ValueError> {
        self.substitutions += 1;
        if self.substitutions > MAX_SUBSTITUTIONS {
            return Err(ValueError::TooManySubstitutions {
                limit: MAX_SUBSTITUTIONS,
            });
        }
        let refused = match self.values.lookup(name) {
            Ok(Some(resolved)) => return Ok(resolved),
            Ok(None) => ValueError::Unknown {
                name: name.to_owned(),
                at: self.at(),
            },
            Err(missing) => ValueError::NotKnownYet {
                name: name.to_owned(),
                at: self.at(),
                missing,
            },
        };
        self.refuse(refused)?;
        // Listing: the walk goes on with the reference as nothing.
        Ok(Resolved::Text(String::new()))
    }

    /// Move to `field` of the current JSON patch operation.
    fn field(&mut self, field: &'static str) {
        self.place = match self.place {
            Place::Operation(index, _) | Place::Document(index) => Place::Operation(index, field),
        };
    }

    /// Refuse a reference in a JSON patch operation's `path` or `from`.
    fn pointer_field(&mut self, field: &'static str, pointer: &str) -> Result<(), ValueError> {
        self.field(field);
        match first_reference(pointer) {
            None => Ok(()),
            Some(name) => self.refuse(ValueError::NotInValue {
                name: name.to_owned(),
                at: self.at(),
            }),
        }
    }
}

/// Substitute `values` into `patch` (see the module documentation), within a budget of its own.
/// On an error the patch is left partly substituted: it is for discarding, never for rendering.
pub fn substitute(patch: &mut Patch, values: &MachineValues) -> Result<(), ValueError> {
    substitute_within(patch, values, &RenderBudget::new(RENDER_LIMITS))
}

/// [`substitute`], counting the values it visits as steps, and the text it adds, against
/// `budget` (the budget of the render the patch is for).
pub fn substitute_within(
    patch: &mut Patch,
    values: &MachineValues,
    budget: &RenderBudget,
) -> Result<(), ValueError> {
    let mut walk = Walk {
        values,
        budget,
        substitutions: 0,
        place: Place::Document(0),
        pointer: String::new(),
        refused: None,
    };
    walk_patch(&mut walk, patch)
}

/// Every reference in `patch` that [`substitute`] would refuse with `values`, in the order it
/// meets them, rather than only the first: unknown values, values not known yet, references in
/// keys or JSON pointers (the first of each key or pointer). Empty when every reference
/// resolves. `Err` when the walk itself cannot go on: more than [`MAX_SUBSTITUTIONS`]
/// references, or a limit of the render's (`budget`).
pub fn unresolved(
    patch: &Patch,
    values: &MachineValues,
    budget: &RenderBudget,
) -> Result<Vec<ValueError>, ValueError> {
    let mut walk = Walk {
        values,
        budget,
        substitutions: 0,
        place: Place::Document(0),
        pointer: String::new(),
        refused: Some(Vec::new()),
    };
    // The walk substitutes as it goes: a copy, thrown away.
    walk_patch(&mut walk, &mut patch.clone())?;
    Ok(walk.refused.unwrap_or_default())
}

fn walk_patch(walk: &mut Walk<'_>, patch: &mut Patch) -> Result<(), ValueError> {
    match patch {
        Patch::Strategic(docs) => {
            for (index, doc) in docs.iter_mut().enumerate() {
                walk.place = Place::Document(index);
                walk.value(doc, 0)?;
            }
        }
        Patch::Json6902(ops) => {
            for (index, op) in ops.0.iter_mut().enumerate() {
                walk.place = Place::Operation(index, "path");
                operation(walk, op)?;
            }
        }
    }
    Ok(())
}

fn operation(walk: &mut Walk<'_>, op: &mut json_patch::PatchOperation) -> Result<(), ValueError> {
    use json_patch::PatchOperation as Op;
    let value = match op {
        Op::Add(op) => {
            walk.pointer_field("path", op.path.as_str())?;
            Some(&mut op.value)
        }
        Op::Replace(op) => {
            walk.pointer_field("path", op.path.as_str())?;
            Some(&mut op.value)
        }
        Op::Test(op) => {
            walk.pointer_field("path", op.path.as_str())?;
            Some(&mut op.value)
        }
        Op::Remove(op) => {
            walk.pointer_field("path", op.path.as_str())?;
            None
        }
        Op::Move(op) => {
            walk.pointer_field("from", op.from.as_str())?;
            walk.pointer_field("path", op.path.as_str())?;
            None
        }
        Op::Copy(op) => {
            walk.pointer_field("from", op.from.as_str())?;
            walk.pointer_field("path", op.path.as_str())?;
            None
        }
    };
    if let Some(value) = value {
        walk.field("value");
        walk.value(value, 0)?;
    }
    Ok(())
}

/// Whether `value` still holds a reference anywhere (in a string or a key): what a caller can
/// check before rendering a patch it did not substitute.
pub fn has_references(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if first_reference(s).is_some() => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| first_reference(k).is_some()) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn values() -> MachineValues {
        MachineValues {
            machine_name: Some("cp-abc12".into()),
            infrastructure_machine_name: Some("cp-infra-xyz".into()),
            failure_domain: Some("fd-a".into()),
            cluster_name: Some("prod".into()),
            pools: BTreeMap::from([
                (
                    "nodes".to_owned(),
                    Pool::Bound(PoolAddress::new("10.5.0.12", 24, Some("10.5.0.1")).unwrap()),
                ),
                ("storage".to_owned(), Pool::Pending),
                (
                    "flat".to_owned(),
                    Pool::Bound(PoolAddress::new("fd00::5", 64, None).unwrap()),
                ),
            ]),
        }
    }

    fn substituted(yaml: &str, values: &MachineValues) -> Result<Vec<Value>, ValueError> {
        let mut patch = Patch::parse(yaml).unwrap();
        substitute(&mut patch, values)?;
        match patch {
            Patch::Strategic(docs) => Ok(docs),
            Patch::Json6902(_) => panic!("a strategic merge patch"),
        }
    }

    fn at(index: usize, pointer: &str) -> Location {
        Location::Document {
            index,
            pointer: pointer.to_owned(),
        }
    }

    #[test]
    fn every_value_is_substituted_in_strings_and_a_whole_prefix_becomes_an_integer() {
        let docs = substituted(
            "machine:\n  network:\n    hostname: ((machine.name))\n    interfaces:\n      - interface: eth0\n        addresses: [((ipam.nodes.address))/((ipam.nodes.prefix)), '((ipam.flat.address))/((ipam.flat.prefix))']\n        routes:\n          - network: 0.0.0.0/0\n            gateway: (( ipam.nodes.gateway ))\n  nodeLabels:\n    zone: zone-((machine.failureDomain))\n    infra: ((infrastructureMachine.name))\n    cluster: ((cluster.name))\n---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses:\n  - address: ((ipam.nodes.address))/((ipam.nodes.prefix))\n",
            &values(),
        )
        .unwrap();
        assert_eq!(
            docs[0],
            json!({"machine": {
                "network": {
                    "hostname": "cp-abc12",
                    "interfaces": [{
                        "interface": "eth0",
                        "addresses": ["10.5.0.12/24", "fd00::5/64"],
                        "routes": [{"network": "0.0.0.0/0", "gateway": "10.5.0.1"}],
                    }],
                },
                "nodeLabels": {"zone": "zone-fd-a", "infra": "cp-infra-xyz", "cluster": "prod"},
            }})
        );
        assert_eq!(docs[1]["addresses"][0]["address"], "10.5.0.12/24");

        let mut patch = Patch::Strategic(vec![
            json!({"prefix": "((ipam.nodes.prefix))", "text": "/((ipam.nodes.prefix))"}),
        ]);
        substitute(&mut patch, &values()).unwrap();
        assert_eq!(
            patch,
            Patch::Strategic(vec![json!({"prefix": 24, "text": "/24"})]),
            "only a scalar that is exactly one prefix reference becomes an integer"
        );
    }

    #[test]
    fn text_that_is_not_a_reference_is_left_as_it_is() {
        let texts = [
            "echo $((i + 1))",
            "$((i))",
            "((x))",
            "((",
            "))((",
            "(( machine.name",
            "((machine.))",
            "((.machine.name))",
            "((1machine.name))",
            "((machine..name))",
            "((machine name))",
            "{{ .builtin.cluster.name }}",
            "${CLUSTER_NAME}",
        ];
        for text in texts {
            let mut patch = Patch::Strategic(vec![json!({"machine": {"env": {"X": text}}})]);
            let before = patch.clone();
            substitute(&mut patch, &values()).unwrap();
            assert_eq!(patch, before, "{text:?}");
        }
        let mut patch = Patch::Strategic(vec![json!({"a": "(((machine.name)))"})]);
        substitute(&mut patch, &values()).unwrap();
        assert_eq!(patch, Patch::Strategic(vec![json!({"a": "(cp-abc12)"})]));
    }

    #[test]
    fn substituted_text_is_not_searched_again() {
        let values = MachineValues {
            machine_name: Some("((cluster.name))".into()),
            cluster_name: Some("prod".into()),
            ..MachineValues::default()
        };
        let docs = substituted(
            "machine:\n  nodeLabels:\n    a: ((machine.name))\n",
            &values,
        )
        .unwrap();
        assert_eq!(docs[0]["machine"]["nodeLabels"]["a"], "((cluster.name))");
    }

    #[test]
    fn an_unknown_value_is_refused_naming_it_and_where_it_is() {
        let yaml = "machine:\n  network:\n    hostname: ((machine.hostname))\n";
        let err = substituted(yaml, &values()).unwrap_err();
        assert_eq!(
            err,
            ValueError::Unknown {
                name: "machine.hostname".into(),
                at: at(0, "/machine/network/hostname"),
            }
        );
        let message = err.to_string();
        assert!(message.contains("((machine.hostname))"), "{message}");
        assert!(
            message.contains("document 0, /machine/network/hostname"),
            "{message}"
        );
        assert!(message.contains("ipam.<pool>.address"), "{message}");

        for (name, pointer) in [
            ("ipam.other.address", "/machine/nodeLabels/a"),
            ("ipam.nodes.netmask", "/machine/nodeLabels/a"),
            ("ipam.address", "/machine/nodeLabels/a"),
        ] {
            let yaml = format!("machine:\n  nodeLabels:\n    a: x-(({name}))\n");
            assert_eq!(
                substituted(&yaml, &values()).unwrap_err(),
                ValueError::Unknown {
                    name: name.into(),
                    at: at(0, pointer)
                }
            );
        }
    }

    #[test]
    fn a_value_not_known_yet_is_refused_with_why() {
        let unset = MachineValues {
            machine_name: Some("m".into()),
            ..values()
        };
        let unset = MachineValues {
            failure_domain: None,
            ..unset
        };
        let cases = [
            (
                "ipam.storage.address",
                Missing::Pending {
                    pool: "storage".into(),
                },
            ),
            (
                "ipam.flat.gateway",
                Missing::NoGateway {
                    pool: "flat".into(),
                },
            ),
            (
                "machine.failureDomain",
                Missing::Unset {
                    what: "failure domain",
                },
            ),
        ];
        for (name, missing) in cases {
            let yaml = format!(
                "---\nmachine: {{}}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: (({name}))\n"
            );
            assert_eq!(
                substituted(&yaml, &unset).unwrap_err(),
                ValueError::NotKnownYet {
                    name: name.into(),
                    at: at(1, "/hostname"),
                    missing,
                }
            );
        }
        let err = substituted(
            "machine:\n  nodeLabels:\n    a: ((ipam.storage.address))\n",
            &values(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("pool \"storage\" is not allocated yet"),
            "{err}"
        );
    }

    #[test]
    fn unresolved_lists_every_refused_reference_and_leaves_the_patch_alone() {
        let yaml = "machine:\n  network:\n    hostname: ((machine.name))\n  nodeLabels:\n    a: ((ipam.storage.address))\n    b/((cluster.name)): x-((machine.nope))\n    c: ((ipam.storage.address))-((ipam.flat.gateway))\n";
        let patch = Patch::parse(yaml).unwrap();
        let before = patch.clone();
        let budget = RenderBudget::new(RENDER_LIMITS);
        let refused = unresolved(&patch, &values(), &budget).unwrap();
        assert_eq!(patch, before);
        let pending = |pointer: &str| ValueError::NotKnownYet {
            name: "ipam.storage.address".into(),
            at: at(0, pointer),
            missing: Missing::Pending {
                pool: "storage".into(),
            },
        };
        assert_eq!(
            refused,
            vec![
                pending("/machine/nodeLabels/a"),
                ValueError::NotInValue {
                    name: "cluster.name".into(),
                    at: at(0, "/machine/nodeLabels/b~1((cluster.name))"),
                },
                ValueError::Unknown {
                    name: "machine.nope".into(),
                    at: at(0, "/machine/nodeLabels/b~1((cluster.name))"),
                },
                pending("/machine/nodeLabels/c"),
                ValueError::NotKnownYet {
                    name: "ipam.flat.gateway".into(),
                    at: at(0, "/machine/nodeLabels/c"),
                    missing: Missing::NoGateway {
                        pool: "flat".into(),
                    },
                },
            ]
        );
        let ops = json!([
            {"op": "add", "path": "/machine/((machine.name))", "value": "((machine.failureDomain))"},
            {"op": "copy", "from": "/a/((x.y))", "path": "/b"},
        ]);
        let patch = Patch::json6902(ops).unwrap();
        let no_domain = MachineValues {
            failure_domain: None,
            ..values()
        };
        let names: Vec<String> = unresolved(&patch, &no_domain, &budget)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].contains("((machine.name)) at operation 0's path"),
            "{names:?}"
        );
        assert!(
            names[1].contains("((machine.failureDomain)) at operation 0's value"),
            "{names:?}"
        );
        assert!(
            names[2].contains("((x.y)) at operation 1's from"),
            "{names:?}"
        );

        assert_eq!(
            unresolved(&Patch::parse(TEMPLATE).unwrap(), &values(), &budget),
            Ok(vec![])
        );
        let many = Patch::Strategic(vec![
            json!({"x": vec!["((machine.nope))"; MAX_SUBSTITUTIONS + 1]}),
        ]);
        assert_eq!(
            unresolved(&many, &values(), &budget),
            Err(ValueError::TooManySubstitutions {
                limit: MAX_SUBSTITUTIONS
            })
        );
    }

    #[test]
    fn a_reference_in_a_key_or_a_json_pointer_is_refused() {
        let err = substituted(
            "machine:\n  nodeLabels:\n    a/((machine.name)): x\n",
            &values(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ValueError::NotInValue {
                name: "machine.name".into(),
                at: at(0, "/machine/nodeLabels/a~1((machine.name))"),
            }
        );

        let ops = json!([
            {"op": "add", "path": "/machine/network/hostname", "value": "((machine.name))"},
            {"op": "replace", "path": "/machine/nodeLabels", "value": {"zone": "z-((machine.failureDomain))"}},
            {"op": "remove", "path": "/machine/x"},
        ]);
        let mut patch = Patch::json6902(ops).unwrap();
        substitute(&mut patch, &values()).unwrap();
        let Patch::Json6902(substituted) = &patch else {
            panic!("a JSON patch")
        };
        assert_eq!(
            serde_json::to_value(substituted).unwrap(),
            json!([
                {"op": "add", "path": "/machine/network/hostname", "value": "cp-abc12"},
                {"op": "replace", "path": "/machine/nodeLabels", "value": {"zone": "z-fd-a"}},
                {"op": "remove", "path": "/machine/x"},
            ])
        );

        let ops = json!([
            {"op": "add", "path": "/machine/a", "value": 1},
            {"op": "copy", "from": "/machine/((machine.name))", "path": "/machine/b"},
        ]);
        let mut patch = Patch::json6902(ops).unwrap();
        assert_eq!(
            substitute(&mut patch, &values()).unwrap_err(),
            ValueError::NotInValue {
                name: "machine.name".into(),
                at: Location::Operation {
                    index: 1,
                    field: "from",
                    pointer: String::new()
                },
            }
        );
        let ops =
            json!([{"op": "add", "path": "/machine/a", "value": {"b": ["((machine.nope))"]}}]);
        let mut patch = Patch::json6902(ops).unwrap();
        let err = substitute(&mut patch, &values()).unwrap_err();
        assert_eq!(
            err,
            ValueError::Unknown {
                name: "machine.nope".into(),
                at: Location::Operation {
                    index: 0,
                    field: "value",
                    pointer: "/b/0".into()
                },
            }
        );
        assert!(
            err.to_string().contains("operation 0's value, /b/0"),
            "{err}"
        );
    }

    #[test]
    fn the_work_per_patch_is_bounded() {
        let many: Vec<Value> = (0..=MAX_SUBSTITUTIONS)
            .map(|_| json!("((machine.name))"))
            .collect();
        let mut patch = Patch::Strategic(vec![json!({"machine": {"x": many}})]);
        assert_eq!(
            substitute(&mut patch, &values()).unwrap_err(),
            ValueError::TooManySubstitutions {
                limit: MAX_SUBSTITUTIONS
            }
        );
        let mut patch = Patch::Strategic(vec![
            json!({"machine": {"x": vec!["((machine.name))"; MAX_SUBSTITUTIONS]}}),
        ]);
        substitute(&mut patch, &values()).unwrap();

        let mut deep = json!("((machine.name))");
        for _ in 0..=LIMITS.depth {
            deep = json!([deep]);
        }
        let mut patch = Patch::Strategic(vec![deep]);
        assert!(matches!(
            substitute(&mut patch, &values()).unwrap_err(),
            ValueError::Limit {
                source: LimitError::Depth { .. },
                ..
            }
        ));

        let budget = RenderBudget::new(crate::RenderLimits {
            values: 10,
            text_bytes: 100,
            steps: 1_000,
        });
        let long = MachineValues {
            machine_name: Some("m".repeat(200)),
            ..MachineValues::default()
        };
        let mut patch = Patch::Strategic(vec![json!({"a": "((machine.name))"})]);
        assert!(matches!(
            substitute_within(&mut patch, &long, &budget).unwrap_err(),
            ValueError::Limit {
                source: LimitError::RenderTextBytes { limit: 100 },
                ..
            }
        ));
    }

    #[test]
    fn an_allocated_address_is_checked() {
        assert_eq!(
            PoolAddress::new("10.0.0.300", 24, None),
            Err(AddressError::Address("10.0.0.300".into()))
        );
        assert!(matches!(
            PoolAddress::new("10.0.0.3", 33, None),
            Err(AddressError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            PoolAddress::new("10.0.0.3", -1, None),
            Err(AddressError::Prefix { .. })
        ));
        assert!(PoolAddress::new("fd00::3", 128, None).is_ok());
        assert!(matches!(
            PoolAddress::new("10.0.0.3", 24, Some("fd00::1")),
            Err(AddressError::Family { .. })
        ));
        assert_eq!(
            PoolAddress::new("10.0.0.3", 24, Some("10.0.0.1; rm")),
            Err(AddressError::Gateway("10.0.0.1; rm".into()))
        );
        let empty_gateway = PoolAddress::new("10.0.0.3", 24, Some("")).unwrap();
        assert_eq!(empty_gateway.gateway(), None);
    }

    #[test]
    fn has_references_finds_them_in_strings_and_keys() {
        assert!(has_references(&json!({"a": ["x ((machine.name))"]})));
        assert!(has_references(&json!({"((cluster.name))": 1})));
        assert!(!has_references(&json!({"a": "$((i + 1))", "b": 1})));
    }

    /// Text built of what could break YAML or a substitution: quotes, newlines, `: `, flow
    /// indicators, comments, document markers, anchors, tags, block scalars, and references.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just(": ".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("#".to_owned()),
            Just(" # ".to_owned()),
            Just("---".to_owned()),
            Just("\n---\n".to_owned()),
            Just("- ".to_owned()),
            Just("&a ".to_owned()),
            Just("*a".to_owned()),
            Just("!!int ".to_owned()),
            Just("| ".to_owned()),
            Just("> ".to_owned()),
            Just("%YAML ".to_owned()),
            Just("@".to_owned()),
            Just("\t".to_owned()),
            Just("\\".to_owned()),
            Just("((machine.name))".to_owned()),
            Just("((nope.nope))".to_owned()),
            Just("${X}".to_owned()),
            Just("{{ .x }}".to_owned()),
            Just("null".to_owned()),
            Just("42".to_owned()),
            Just("true".to_owned()),
            any::<char>().prop_map(String::from),
            "[a-z0-9.-]{1,6}",
        ];
        proptest::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
    }

    const TEMPLATE: &str = "machine:\n  network:\n    hostname: ((machine.name))\n    interfaces:\n      - interface: eth0\n        addresses:\n          - ((ipam.nodes.address))/((ipam.nodes.prefix))\n        routes:\n          - network: 0.0.0.0/0\n            gateway: ((ipam.nodes.gateway))\n  nodeLabels:\n    zone: \"zone-((machine.failureDomain))\"\n    infra: ((infrastructureMachine.name))\n    cluster: '((cluster.name))'\n    plain: x\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: ((machine.name))-((cluster.name))\n";

    /// Every JSON pointer of a document: its shape, without its scalars.
    fn shape(value: &Value, pointer: String, out: &mut Vec<String>) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    shape(item, format!("{pointer}/{i}"), out);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    shape(item, format!("{pointer}/{key}"), out);
                }
            }
            _ => out.push(pointer),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// No value, whatever it holds, changes the structure of the patch: every reference
        /// stays within its scalar, and the configuration written out as YAML reads back as
        /// exactly the substituted documents.
        #[test]
        fn no_value_can_change_the_document_structure(
            machine in hostile(),
            infra in hostile(),
            domain in hostile(),
            cluster in hostile(),
            address in any::<std::net::Ipv4Addr>(),
            prefix in 0i64..=32,
            gateway in any::<std::net::Ipv4Addr>(),
        ) {
            let values = MachineValues {
                machine_name: Some(machine.clone()),
                infrastructure_machine_name: Some(infra.clone()),
                failure_domain: Some(domain.clone()),
                cluster_name: Some(cluster.clone()),
                pools: BTreeMap::from([(
                    "nodes".to_owned(),
                    Pool::Bound(PoolAddress::new(&address.to_string(), prefix, Some(&gateway.to_string())).unwrap()),
                )]),
            };
            let template = Patch::parse(TEMPLATE).unwrap();
            let mut patch = template.clone();
            substitute(&mut patch, &values).unwrap();
            let (Patch::Strategic(before), Patch::Strategic(after)) = (&template, &patch) else {
                panic!("strategic merge patches");
            };

            let shapes = |docs: &[Value]| {
                let mut out = Vec::new();
                for doc in docs {
                    shape(doc, String::new(), &mut out);
                }
                out
            };
            prop_assert_eq!(shapes(before), shapes(after));
            let net = &after[0]["machine"]["network"];
            prop_assert_eq!(&net["hostname"], &json!(machine));
            prop_assert_eq!(&net["interfaces"][0]["addresses"][0], &json!(format!("{address}/{prefix}")));
            prop_assert_eq!(&net["interfaces"][0]["routes"][0]["gateway"], &json!(gateway.to_string()));
            let labels = &after[0]["machine"]["nodeLabels"];
            prop_assert_eq!(&labels["zone"], &json!(format!("zone-{domain}")));
            prop_assert_eq!(&labels["infra"], &json!(infra));
            prop_assert_eq!(&labels["cluster"], &json!(cluster));
            prop_assert_eq!(&labels["plain"], &json!("x"));
            prop_assert_eq!(&after[1]["hostname"], &json!(format!("{machine}-{cluster}")));

            let yaml = crate::render::to_yaml(after).unwrap();
            let read_back = crate::limits::documents(&yaml, &LIMITS).unwrap();
            prop_assert_eq!(&read_back, after);
        }
    }
}
