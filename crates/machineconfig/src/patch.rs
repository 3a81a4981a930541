//! Configuration patches as Talos applies them: RFC 6902 JSON patches (single-document configs
//! only) and Talos strategic merge patches (documents matched by apiVersion/kind/name).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::limits::{
    self, Charge, LIMITS, LimitError, ParseError, RENDER_LIMITS, RenderBudget, Size,
};
use crate::{Error, Problems};

/// Document kinds Talos v1.13.0 registers (every contract we render before v1.14 reads them).
pub const KINDS_SINCE_1_13: &[&str] = &[
    "HostnameConfig",
    "ExtensionServiceConfig",
    "KmsgLogConfig",
    "EventSinkConfig",
    "WatchdogTimerConfig",
    "NetworkDefaultActionConfig",
    "NetworkRuleConfig",
    "TrustedRootsConfig",
    "UserVolumeConfig",
    "VolumeConfig",
    "RawVolumeConfig",
    "ExistingVolumeConfig",
    "SwapVolumeConfig",
    "ZswapConfig",
    "EthernetConfig",
    "LinkConfig",
    "DummyLinkConfig",
    "VLANConfig",
    "BondConfig",
    "BridgeConfig",
    "DHCPv4Config",
    "DHCPv6Config",
    "LinkAliasConfig",
    "StaticHostConfig",
    "ResolverConfig",
    "TimeSyncConfig",
    "KubeSpanEndpointsConfig",
    "SideroLinkConfig",
    "PCIDriverRebindConfig",
    "OOMConfig",
    "EnvironmentConfig",
    "RegistryMirrorConfig",
    "RegistryAuthConfig",
    "RegistryTLSConfig",
    "BlackholeRouteConfig",
    "ExternalVolumeConfig",
    "HCloudVIPConfig",
    "ImageVerificationConfig",
    "KubeSpanConfig",
    "Layer2VIPConfig",
    "RoutingRuleConfig",
    "TCPProbeConfig",
    "VRFConfig",
    "WireguardConfig",
];

/// Document kinds new in Talos v1.14 (checked against talosctl v1.14.1); a v1.13 node does not
/// read them.
pub const KINDS_NEW_IN_1_14: &[&str] = &[
    "BGPInstanceConfig",
    "CRIBaseRuntimeSpecConfig",
    "CRICustomizationConfig",
    "ContainerConfig",
    "DiscoveryIdentityConfig",
    "DiscoveryServiceConfig",
    "EtcFileConfig",
    "FilesystemScrubConfig",
    "FilesystemTrimConfig",
    "HTTPProbeConfig",
    "ImageCacheConfig",
    "KernelModuleConfig",
    "KubeAPIServerCAConfig",
    "KubeAPIServerConfig",
    "KubeAdmissionControlConfig",
    "KubeAggregatorCAConfig",
    "KubeAuditPolicyConfig",
    "KubeAuthenticationConfig",
    "KubeAuthorizerConfig",
    "KubeClusterConfig",
    "KubeControllerManagerConfig",
    "KubeCoreDNSConfig",
    "KubeCredentialProviderConfig",
    "KubeEtcdEncryptionConfig",
    "KubeExternalManifestConfig",
    "KubeFlannelCNIConfig",
    "KubeInlineManifestConfig",
    "KubeNetworkConfig",
    "KubeNodeConfig",
    "KubePrismConfig",
    "KubeProxyConfig",
    "KubeSchedulerConfig",
    "KubeServiceAccountConfig",
    "KubeStaticPodConfig",
    "KubeTalosAPIAccessConfig",
    "KubeletConfig",
    "LVMLogicalVolumeConfig",
    "LVMVolumeGroupConfig",
    "RAIDArrayConfig",
    "SecurityProfileConfig",
    "SysctlConfig",
    "SysfsConfig",
    "UdevRulesConfig",
    "UnattendedInstallConfig",
    "VethConfig",
];

/// Whether Talos (v1.13 or v1.14) knows the document kind `kind`.
pub fn known_kind(kind: &str) -> bool {
    KINDS_SINCE_1_13.contains(&kind) || KINDS_NEW_IN_1_14.contains(&kind)
}

/// List fields a strategic merge replaces instead of appending to.
const REPLACE_LISTS: &[&str] = &["podSubnets", "serviceSubnets"];
/// Map fields a strategic merge replaces whole.
const REPLACE_MAPS: &[&str] = &["auditPolicy"];
/// List fields whose items are merged by a key instead of appended.
const KEYED_LISTS: &[(&str, &str)] = &[
    ("interfaces", "interface"),
    ("vlans", "vlanId"),
    ("admissionControl", "name"),
];

/// One patch, as given to `--config-patch` or in a TalosConfig.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// RFC 6902 operations.
    Json6902(json_patch::Patch),
    /// Configuration documents to merge.
    Strategic(Vec<Value>),
}

/// The JSON 6902 operation names.
const OPERATIONS: &[&str] = &["add", "remove", "replace", "move", "copy", "test"];

/// Why a patch is refused, when it is parsed or when it is applied (see [`Error::Patch`]).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{source}")]
    Yaml {
        #[source]
        source: crate::parse::SyntaxError,
    },
    #[error("the patch is empty")]
    Empty,
    #[error(
        "a strategic merge patch must be a YAML mapping (a configuration document), not {found}"
    )]
    NotAMapping { found: &'static str },
    #[error("a JSON 6902 patch must be a list of operations, not {found}")]
    NotAList { found: &'static str },
    #[error(
        "operation {index}: unknown operation {op:?} (valid operations: add, remove, replace, move, copy, test)"
    )]
    UnknownOperation { index: usize, op: String },
    #[error(
        "operation {index}: {field} {pointer:?} is not a JSON pointer (a path is a JSON pointer such as /machine/install/disk)"
    )]
    NotAPointer {
        index: usize,
        field: &'static str,
        pointer: String,
    },
    #[error("operation {index}: {source}")]
    Operation {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "unknown configuration document kind {kind:?} (apiVersion/kind must name a Talos document such as HostnameConfig)"
    )]
    UnknownKind { kind: String },
    #[error("the configuration does not decode: {}", .0.joined("; "))]
    Undecodable(Problems),
    #[error("{0}")]
    Apply(#[source] json_patch::PatchError),
    #[error("{path} is a list; the patch gives {found}")]
    NotAListField { path: String, found: &'static str },
    #[error("patch delete: path {path:?} does not exist in the configuration")]
    DeleteMissing { path: String },
    #[error("{0}")]
    Limit(#[source] LimitError),
}

/// What a JSON value is, for messages (never the value itself: patches may carry secrets).
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn parse_error(source: PatchError) -> Error {
    Error::Patch {
        index: None,
        source,
    }
}

impl Patch {
    /// Parse a patch the way talosctl does: a YAML/JSON list is a JSON patch, anything else is
    /// a strategic merge patch (one or more documents, each a mapping). Within a budget of its
    /// own; [`Patch::parse_within`] parses one of a render's patches.
    pub fn parse(text: &str) -> Result<Patch, Error> {
        Self::parse_within(text, &RenderBudget::new(RENDER_LIMITS))
    }

    /// [`Patch::parse`], counting what the patch expands to against `budget`, the budget of the
    /// render it is for.
    pub fn parse_within(text: &str, budget: &RenderBudget) -> Result<Patch, Error> {
        let docs = limits::documents_within(text, &LIMITS, budget).map_err(|e| {
            parse_error(match e {
                ParseError::Yaml(source) => PatchError::Yaml { source },
                ParseError::Limit(limit) => PatchError::Limit(limit),
            })
        })?;
        let mut docs = docs.into_iter();
        match (docs.next(), docs.next()) {
            (None, _) => Err(parse_error(PatchError::Empty)),
            // Its values are counted already, as it was parsed.
            (Some(ops @ Value::Array(_)), None) => Self::operations(ops, Charge::Nothing),
            (Some(first), second) => {
                let docs: Vec<Value> = [first].into_iter().chain(second).chain(docs).collect();
                for doc in &docs {
                    if !doc.is_object() {
                        return Err(parse_error(PatchError::NotAMapping {
                            found: kind_of(doc),
                        }));
                    }
                    check_kind(doc)?;
                    if doc.get("kind").is_none() {
                        strict_decode(doc).map_err(parse_error)?;
                    }
                }
                Ok(Patch::Strategic(docs))
            }
        }
    }

    /// RFC 6902 operations from a JSON value, which must be a list of `{op, path, value, from}`.
    pub fn json6902(ops: Value) -> Result<Patch, Error> {
        Self::operations(ops, Charge::Nothing)
    }

    /// [`Patch::json6902`], counting the operations' values against `budget`, the budget of
    /// the render they are for.
    pub fn json6902_within(ops: Value, budget: &RenderBudget) -> Result<Patch, Error> {
        Self::operations(ops, Charge::Built(budget))
    }

    /// Refuse operations whose values alone are over the per-input limits, with the error
    /// [`Patch::json6902`] would give them, before they are gathered into the one list it takes
    /// (a copy of every value). Whatever this refuses, it would refuse too: it counts the
    /// operations' other fields and their nesting as well.
    pub fn check_json6902_values<'a>(
        values: impl IntoIterator<Item = &'a Value>,
    ) -> Result<(), Error> {
        limits::check_all(values, &LIMITS).map_err(|e| parse_error(PatchError::Limit(e)))
    }

    fn operations(ops: Value, charge: Charge<'_>) -> Result<Patch, Error> {
        let Value::Array(list) = ops else {
            return Err(parse_error(PatchError::NotAList {
                found: kind_of(&ops),
            }));
        };
        if list.len() > LIMITS.operations {
            return Err(parse_error(PatchError::Limit(LimitError::Operations {
                count: list.len(),
                limit: LIMITS.operations,
            })));
        }
        limits::measure(&list, &LIMITS, charge).map_err(|e| parse_error(PatchError::Limit(e)))?;
        let mut parsed = Vec::with_capacity(list.len());
        for (index, op) in list.into_iter().enumerate() {
            check_operation(index, &op).map_err(parse_error)?;
            let op = json_patch::PatchOperation::deserialize(op)
                .map_err(|source| parse_error(PatchError::Operation { index, source }))?;
            parsed.push(op);
        }
        Ok(Patch::Json6902(json_patch::Patch(parsed)))
    }
}

/// What talosctl's users get wrong most in an operation, explained: an unknown `op`, and a path
/// that is not a JSON pointer. Anything else is left to the decoder.
fn check_operation(index: usize, op: &Value) -> Result<(), PatchError> {
    if let Some(name) = op.get("op").and_then(Value::as_str)
        && !OPERATIONS.contains(&name)
    {
        return Err(PatchError::UnknownOperation {
            index,
            op: name.to_owned(),
        });
    }
    for field in ["path", "from"] {
        if let Some(pointer) = op.get(field).and_then(Value::as_str)
            && !pointer.is_empty()
            && !pointer.starts_with('/')
        {
            return Err(PatchError::NotAPointer {
                index,
                field,
                pointer: pointer.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_kind(doc: &Value) -> Result<(), Error> {
    match doc.get("kind").and_then(Value::as_str) {
        None => Ok(()),
        Some(kind) if known_kind(kind) => Ok(()),
        Some(kind) => Err(parse_error(PatchError::UnknownKind {
            kind: kind.to_owned(),
        })),
    }
}

/// Apply `patches` in order to `docs`, within the budget of one render: what the patches hold
/// together counts against it as if they were parsed for it. A render applies its patches with
/// a [`Patcher`] instead, parsing each just before it is applied, so that it never holds them
/// all at once.
pub fn apply(docs: Vec<Value>, patches: &[Patch]) -> Result<Vec<Value>, Error> {
    let budget = RenderBudget::new(RENDER_LIMITS);
    let mut patcher = Patcher::new(docs, &budget)?;
    for (index, patch) in patches.iter().enumerate() {
        patch.charge(&budget).map_err(|e| Error::Patch {
            index: Some(index),
            source: PatchError::Limit(e),
        })?;
        patcher.apply(patch.clone())?;
    }
    Ok(patcher.finish())
}

impl Patch {
    /// Count what this patch holds against `budget`, as [`Patch::parse_within`] does.
    fn charge(&self, budget: &RenderBudget) -> Result<(), LimitError> {
        use json_patch::PatchOperation as Op;
        let charge = Charge::Built(budget);
        match self {
            Patch::Strategic(docs) => limits::measure(docs, &LIMITS, charge),
            Patch::Json6902(ops) => {
                let values = ops.iter().filter_map(|op| match op {
                    Op::Add(op) => Some(&op.value),
                    Op::Replace(op) => Some(&op.value),
                    Op::Test(op) => Some(&op.value),
                    Op::Remove(_) | Op::Move(_) | Op::Copy(_) => None,
                });
                limits::measure(values, &LIMITS, charge)
            }
        }
        .map(|_| ())
    }
}

/// Patches applied one at a time to a configuration, within the budget of one render: each is
/// applied and dropped before the next is parsed ([`Patch::parse_within`] with the same budget),
/// so that at most one parsed patch is held at once. Patches are numbered from 0 in the order
/// they are applied.
#[derive(Debug)]
pub struct Patcher<'b> {
    docs: Vec<Value>,
    budget: &'b RenderBudget,
    applied: usize,
    /// At least what `docs` hold: exact after each walk, then grown by what each strategic patch
    /// brings (a merge moves the patch's values in, so the documents grow by at most that). The
    /// documents are walked again only when this goes over the limits, not after every patch.
    bound: Size,
}

impl<'b> Patcher<'b> {
    /// Start from `docs` (rendered, or parsed within `budget`).
    pub fn new(docs: Vec<Value>, budget: &'b RenderBudget) -> Result<Patcher<'b>, Error> {
        let bound = limits::measure(&docs, &LIMITS, Charge::Steps(budget)).map_err(|source| {
            Error::Limit {
                what: "machine configuration".to_owned(),
                source,
            }
        })?;
        Ok(Patcher {
            docs,
            budget,
            applied: 0,
            bound,
        })
    }

    /// Apply the next patch.
    pub fn apply(&mut self, patch: Patch) -> Result<(), Error> {
        let index = self.applied;
        self.applied += 1;
        let failed = |source| Error::Patch {
            index: Some(index),
            source,
        };
        match patch {
            Patch::Json6902(ops) => {
                let [doc] = self.docs.as_mut_slice() else {
                    return Err(Error::JsonPatchOnMultiDocument);
                };
                apply_json6902(doc, &ops, self.budget, &mut self.bound).map_err(failed)?;
                // Talos decodes the patched document into its typed config (refusing what does not
                // decode) and encodes it again, dropping empty optional fields.
                strict_decode(doc).map_err(failed)?;
                drop_empty_optional_fields(doc);
            }
            Patch::Strategic(patch_docs) => {
                let brought = limits::measure(&patch_docs, &LIMITS, Charge::Steps(self.budget))
                    .map_err(|e| failed(PatchError::Limit(e)))?;
                for p in patch_docs {
                    merge_document(&mut self.docs, p, self.budget).map_err(failed)?;
                }
                // Talos merges into its typed configuration and encodes it again.
                for doc in self.docs.iter_mut().filter(|d| d.get("kind").is_none()) {
                    shape_check(doc).map_err(failed)?;
                    write_zero_fields(doc);
                }
                self.bound = self.bound.saturating_add(brought);
                if self.bound.over(&LIMITS) {
                    self.bound = limits::measure(&self.docs, &LIMITS, Charge::Steps(self.budget))
                        .map_err(|e| failed(PatchError::Limit(e)))?;
                }
            }
        }
        Ok(())
    }

    /// The patched documents.
    pub fn finish(self) -> Vec<Value> {
        self.docs
    }
}

/// Apply RFC 6902 operations one at a time, refusing the first that takes the document over the
/// limits: a chain of `copy` operations doubles a list with each one, and a chain of `move`s can
/// nest it deeper with each one. What an operation adds is counted against the render's budget,
/// as parsed values are (`bound` is the most the document has held). The document is the
/// caller's copy, dropped on error, so there is nothing to undo.
fn apply_json6902(
    doc: &mut Value,
    ops: &json_patch::Patch,
    budget: &RenderBudget,
    bound: &mut Size,
) -> Result<(), PatchError> {
    use json_patch::PatchOperation as Op;
    for (index, op) in ops.iter().enumerate() {
        budget.step(1).map_err(PatchError::Limit)?;
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = index;
            PatchError::Apply(e)
        })?;
        if matches!(op, Op::Add(_) | Op::Replace(_) | Op::Copy(_) | Op::Move(_)) {
            let size = limits::measure(std::iter::once(&*doc), &LIMITS, Charge::Steps(budget))
                .map_err(PatchError::Limit)?;
            budget
                .build(
                    size.values.saturating_sub(bound.values),
                    size.text_bytes.saturating_sub(bound.text_bytes),
                )
                .map_err(PatchError::Limit)?;
            bound.values = bound.values.max(size.values);
            bound.text_bytes = bound.text_bytes.max(size.text_bytes);
        }
    }
    Ok(())
}

/// Talos's strict decoding of a v1alpha1 document.
fn strict_decode(doc: &Value) -> Result<(), PatchError> {
    let problems = crate::validate::decode_problems(doc);
    if problems.is_empty() {
        return Ok(());
    }
    Err(PatchError::Undecodable(Problems(problems)))
}

/// What Talos's typed decoding of a merged v1alpha1 document refuses: a value of the wrong
/// shape (a string where a list belongs, say), which a merge into a section the configuration
/// lacks leaves in place.
fn shape_check(doc: &Value) -> Result<(), PatchError> {
    let problems: Vec<_> = crate::validate::decode_problems(doc)
        .into_iter()
        .filter(|p| p.message != crate::validate::UNKNOWN_FIELD)
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(PatchError::Undecodable(Problems(problems)))
}

/// Fields without `omitempty` that Talos's encoder writes with their zero value once their
/// section exists (observed with talosctl v1.14.1, whose v1alpha1 document lacks these sections
/// until a patch adds them): `(section, field, zero)`.
fn write_zero_fields(doc: &mut Value) {
    let zero_fields: [(&[&str], &str, Value); 4] = [
        (&["machine", "install"], "wipe", Value::Null),
        (
            &["cluster", "network"],
            "dnsDomain",
            Value::String(String::new()),
        ),
        (
            &["cluster", "network"],
            "podSubnets",
            Value::Array(Vec::new()),
        ),
        (
            &["cluster", "network"],
            "serviceSubnets",
            Value::Array(Vec::new()),
        ),
    ];
    for (section, field, zero) in zero_fields {
        let target = section
            .iter()
            .try_fold(&mut *doc, |v, key| v.get_mut(*key))
            .and_then(Value::as_object_mut);
        if let Some(map) = target {
            map.entry(field).or_insert(zero);
        }
    }
}

/// Optional (omitempty) fields the renderer emits empty, which Talos's re-encoding drops.
fn drop_empty_optional_fields(doc: &mut Value) {
    let empty = |v: &Value| {
        v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
    };
    for (section, field) in [
        ("machine", "registries"),
        ("cluster", "extraManifests"),
        ("cluster", "inlineManifests"),
    ] {
        if let Some(m) = doc.get_mut(section).and_then(Value::as_object_mut)
            && m.get(field).is_some_and(empty)
        {
            m.remove(field);
        }
    }
}

/// The identity of a document: (apiVersion, kind, name); v1alpha1 has no kind.
fn identity(doc: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    let kind = doc.get("kind").and_then(Value::as_str);
    let api = doc.get("apiVersion").and_then(Value::as_str);
    let name = doc.get("name").and_then(Value::as_str);
    (kind.and(api), kind, name)
}

fn is_delete(v: &Value) -> bool {
    v.get("$patch").and_then(Value::as_str) == Some("delete")
}

fn merge_document(
    docs: &mut Vec<Value>,
    patch: Value,
    budget: &RenderBudget,
) -> Result<(), PatchError> {
    let step = |n: usize| budget.step(n).map_err(PatchError::Limit);
    step(docs.len())?;
    let position = {
        let id = identity(&patch);
        docs.iter().position(|d| identity(d) == id)
    };
    if is_delete(&patch) {
        match position {
            Some(i) => {
                docs.remove(i);
            }
            // Talos leaves an empty document behind when the document to delete is absent.
            None => docs.push(Value::Object(Map::new())),
        }
        return Ok(());
    }
    match position {
        Some(i) => merge_value(&mut docs[i], patch, "", budget),
        None => {
            let mut new = patch;
            strip_directives(&mut new);
            docs.push(new);
            Ok(())
        }
    }
}

/// Merge `patch` into `target` (at `path`, for messages) in place, moving its values in.
fn merge_value(
    target: &mut Value,
    patch: Value,
    path: &str,
    budget: &RenderBudget,
) -> Result<(), PatchError> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p, path, budget),
        (t, mut p) => {
            if !is_zero(&p) {
                strip_directives(&mut p);
                *t = p;
            }
            Ok(())
        }
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: Map<String, Value>,
    path: &str,
    budget: &RenderBudget,
) -> Result<(), PatchError> {
    for (key, mut pv) in patch {
        budget.step(1).map_err(PatchError::Limit)?;
        if key == "$patch" {
            continue;
        }
        if is_delete(&pv) && pv.as_object().is_some_and(|o| o.len() == 1) {
            target.remove(&key);
            continue;
        }
        let field = || {
            if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            }
        };
        let replace = REPLACE_MAPS.contains(&key.as_str()) || REPLACE_LISTS.contains(&key.as_str());
        match target.get_mut(&key) {
            None => {
                // Talos deletes by looking the path up: under a section the configuration
                // lacks, the lookup fails.
                if let Some(path) = first_delete(&pv, &field()) {
                    return Err(PatchError::DeleteMissing { path });
                }
                strip_directives(&mut pv);
                target.insert(key, pv);
            }
            Some(tv) if replace => {
                strip_directives(&mut pv);
                *tv = pv;
            }
            Some(Value::Array(items)) => {
                let key_field = KEYED_LISTS.iter().find(|(k, _)| *k == key).map(|(_, f)| *f);
                match pv {
                    Value::Array(patch_items) => {
                        merge_list(items, patch_items, key_field, &field(), budget)?;
                    }
                    // The zero value: Talos leaves the list as it is.
                    Value::Null => {}
                    // Talos's typed decoding refuses a scalar or mapping where a list belongs.
                    other => {
                        return Err(PatchError::NotAListField {
                            path: field(),
                            found: kind_of(&other),
                        });
                    }
                }
            }
            Some(tv) => merge_value(tv, pv, &field(), budget)?,
        }
    }
    Ok(())
}

fn merge_list(
    items: &mut Vec<Value>,
    patch: Vec<Value>,
    key_field: Option<&str>,
    path: &str,
    budget: &RenderBudget,
) -> Result<(), PatchError> {
    let step = |n: usize| budget.step(n).map_err(PatchError::Limit);
    for mut pv in patch {
        step(1)?;
        if is_delete(&pv) {
            // The item's other key/value pairs select the elements to delete.
            let selector: Vec<(&String, &Value)> = pv
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "$patch")
                .collect();
            step(items.len().saturating_mul(selector.len().max(1)))?;
            items.retain(|item| {
                !selector
                    .iter()
                    .all(|(k, v)| item.get(k.as_str()) == Some(v))
            });
            continue;
        }
        let matching = match key_field.and_then(|f| Some((f, pv.get(f)?))) {
            Some((f, want)) => {
                step(items.len())?;
                items.iter().position(|i| i.get(f) == Some(want))
            }
            None => None,
        };
        match matching {
            Some(i) => merge_value(&mut items[i], pv, &format!("{path}[{i}]"), budget)?,
            None => {
                strip_directives(&mut pv);
                items.push(pv);
            }
        }
    }
    Ok(())
}

/// Zero values do not overwrite (Talos merges typed structs, where zero means unset); false
/// does overwrite.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// The path of the first `$patch: delete` directive of a mapping within `v` (at `path`).
fn first_delete(v: &Value, path: &str) -> Option<String> {
    let map = v.as_object()?;
    map.iter().find_map(|(key, child)| {
        let here = format!("{path}.{key}");
        if is_delete(child) {
            Some(here)
        } else {
            first_delete(child, &here)
        }
    })
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$patch");
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(yaml: &str) -> Patch {
        Patch::parse(yaml).unwrap()
    }

    #[test]
    fn values_over_the_limits_are_refused_before_they_are_gathered_as_json6902_would() {
        let ops: Vec<Value> = (0..512)
            .map(|i| json!({"op": "add", "path": format!("/machine/x{i}"), "value": vec![0; 200]}))
            .collect();
        let early = Patch::check_json6902_values(ops.iter().filter_map(|o| o.get("value")))
            .expect_err("over the values");
        let late = Patch::json6902(Value::Array(ops)).expect_err("over the values");
        assert_eq!(early.to_string(), late.to_string());
        let ok = [json!({"op": "add", "path": "/machine/x", "value": [0, 1]})];
        assert!(Patch::check_json6902_values(ok.iter().filter_map(|o| o.get("value"))).is_ok());
    }

    #[test]
    fn strategic_merge_maps_lists_and_replace_fields() {
        let base = vec![json!({
            "machine": {"certSANs": ["a"], "network": {"interfaces": [{"interface": "eth0", "dhcp": true}]}},
            "cluster": {"network": {"podSubnets": ["10.244.0.0/16"]}}
        })];
        let p = strategic(
            "machine:\n  certSANs: [b]\n  network:\n    interfaces:\n      - interface: eth0\n        mtu: 9000\n      - interface: eth1\n        dhcp: true\ncluster:\n  network:\n    podSubnets: [10.0.0.0/8]\n",
        );
        let out = apply(base, &[p]).unwrap();
        assert_eq!(
            out[0]["machine"]["certSANs"],
            json!(["a", "b"]),
            "lists append"
        );
        assert_eq!(
            out[0]["machine"]["network"]["interfaces"],
            json!([{"interface": "eth0", "dhcp": true, "mtu": 9000}, {"interface": "eth1", "dhcp": true}]),
            "interfaces merge by name"
        );
        assert_eq!(
            out[0]["cluster"]["network"]["podSubnets"],
            json!(["10.0.0.0/8"]),
            "podSubnets replace"
        );
    }

    /// The expanded size and depth of a patched document are bounded: a `copy` chain doubling a
    /// list (2×168 MB from 1.5 KB of patch before the limit) and a `move` chain nesting a map one
    /// level deeper per step (a stack overflow on drop before the limit) stop at the first
    /// operation over the limit, naming it.
    #[test]
    fn operation_chains_that_grow_without_bound_are_refused() {
        let base = || vec![json!({"machine": {"certSANs": ["a"]}, "cluster": {}})];
        let refused = |ops: Vec<Value>| {
            let patch = Patch::json6902(Value::Array(ops)).unwrap();
            match apply(base(), &[patch]) {
                Err(Error::Patch {
                    index: Some(0),
                    source: PatchError::Limit(limit),
                }) => limit,
                other => panic!("{other:?}"),
            }
        };
        let copy =
            json!({"op": "copy", "from": "/machine/certSANs", "path": "/machine/certSANs/-"});
        assert_eq!(
            refused(vec![copy; 40]),
            LimitError::Values {
                limit: LIMITS.values
            }
        );
        let mut nest = vec![json!({"op": "add", "path": "/machine/n", "value": {}})];
        for _ in 0..100 {
            nest.push(json!({"op": "add", "path": "/machine/t", "value": {}}));
            nest.push(json!({"op": "move", "from": "/machine/n", "path": "/machine/t/n"}));
            nest.push(json!({"op": "move", "from": "/machine/t", "path": "/machine/n"}));
        }
        assert_eq!(
            refused(nest),
            LimitError::Depth {
                limit: LIMITS.depth
            }
        );
        // A failing operation is named by its own index, as when applied all at once.
        let ops = vec![
            json!({"op": "add", "path": "/machine/certSANs/-", "value": "b"}),
            json!({"op": "remove", "path": "/machine/nothing"}),
        ];
        let e = apply(base(), &[Patch::json6902(Value::Array(ops)).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("operation '/1'"), "{e}");
        // Too many operations, and a value too deep, are refused when parsed.
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/machine", "value": {}});
            1025
        ]);
        assert!(matches!(
            Patch::json6902(many),
            Err(Error::Patch {
                index: None,
                source: PatchError::Limit(LimitError::Operations { count: 1025, .. })
            })
        ));
        let mut deep = json!(1);
        for _ in 0..80 {
            deep = json!({"a": deep});
        }
        let e = Patch::json6902(json!([{"op": "add", "path": "/machine/x", "value": deep}]));
        assert!(matches!(
            e,
            Err(Error::Patch {
                source: PatchError::Limit(LimitError::Depth { .. }),
                ..
            })
        ));
    }

    /// A strategic patch of 2.4 KB within every per-input limit that expands, through YAML
    /// aliases, to 89,545 values and 4.06 MB of text: one-entry mappings with 190-byte keys,
    /// about 20 MB once parsed. A document of another kind, merged by its name: each such patch
    /// replaces the one before rather than adding to it.
    fn expanding() -> String {
        let mut text = "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: x\n".to_owned();
        text.push_str(&format!("a0: &a0 {{{}: {{}}}}\n", "k".repeat(190)));
        for level in 1..=4 {
            let refs: Vec<String> = (0..10).map(|j| format!("b{j}: *a{}", level - 1)).collect();
            text.push_str(&format!("a{level}: &a{level} {{{}}}\n", refs.join(", ")));
        }
        // Enough YAML events for the parser's own bound on aliases followed (100 per event).
        let padding: Vec<String> = (0..200).map(|j| format!("p{j}: 0")).collect();
        text.push_str(&format!("p: {{{}}}\nx: {{c0: *a4}}\n", padding.join(", ")));
        text
    }

    fn base() -> Vec<Value> {
        vec![json!({"machine": {"certSANs": ["a"]}, "cluster": {}})]
    }

    fn refused_for(result: Result<Vec<Value>, Error>) -> (Option<usize>, LimitError) {
        match result {
            Err(Error::Patch {
                index,
                source: PatchError::Limit(limit),
            }) => (index, limit),
            other => panic!("{other:?}"),
        }
    }

    /// Each patch within the per-input limits, merged into a document no larger than one of
    /// them: the render's budget counts them all together.
    #[test]
    fn the_patches_of_a_render_share_one_budget() {
        let text = expanding();
        assert!(text.len() < 2500, "{} bytes", text.len());
        let one = Patch::parse(&text).unwrap();
        let merged = apply(base(), std::slice::from_ref(&one)).unwrap();
        assert_eq!(merged.len(), 2);
        let (index, limit) = refused_for(apply(base(), &[one.clone(), one.clone(), one]));
        assert_eq!(index, Some(1));
        assert_eq!(
            limit,
            LimitError::RenderValues {
                limit: RENDER_LIMITS.values
            }
        );
        let message = limit.to_string();
        assert!(message.starts_with("over the render budget: more than 150000 values"));

        // Parsed for one render, each as the one before is applied: the second is refused while
        // it is parsed, as soon as the two together are over the budget.
        let budget = RenderBudget::new(RENDER_LIMITS);
        let mut patcher = Patcher::new(base(), &budget).unwrap();
        patcher
            .apply(Patch::parse_within(&text, &budget).unwrap())
            .unwrap();
        assert_eq!(budget.spent().values, 89_545);
        assert_eq!(budget.spent().text_bytes, 4_058_743);
        let err = Patch::parse_within(&text, &budget).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Patch {
                    index: None,
                    source: PatchError::Limit(LimitError::RenderValues { limit: 150_000 })
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            budget.spent().values,
            RENDER_LIMITS.values + 1,
            "stopped at once"
        );
        assert!(!err.to_string().contains("kkkk"), "{err}");

        // Text: three patches of 3 MB each, within 4 MiB apiece, over 8 MiB together.
        let text = format!(
            "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: t\ns: &s \"{}\"\nl: {{{}}}\n",
            "x".repeat(100_000),
            (0..30)
                .map(|j| format!("a{j}: *s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let budget = RenderBudget::new(RENDER_LIMITS);
        let mut patcher = Patcher::new(base(), &budget).unwrap();
        for _ in 0..2 {
            patcher
                .apply(Patch::parse_within(&text, &budget).unwrap())
                .unwrap();
        }
        assert!(matches!(
            Patch::parse_within(&text, &budget),
            Err(Error::Patch {
                source: PatchError::Limit(LimitError::RenderTextBytes { limit }),
                ..
            }) if limit == 8 * 1024 * 1024
        ));
        // What a JSON patch adds to the document counts too, beside its operations that still
        // hold it: lists of 60,000 and 25,000 items, 85,000 values in the document.
        let budget = RenderBudget::new(RENDER_LIMITS);
        let mut patcher = Patcher::new(base(), &budget).unwrap();
        let add = |to: &str, n: usize| json!({"op": "add", "path": to, "value": vec!["a"; n]});
        let ops = json!([add("/machine/a", 60_000), add("/machine/b", 25_000)]);
        let err = patcher
            .apply(Patch::json6902_within(ops, &budget).unwrap())
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Patch {
                    index: Some(0),
                    source: PatchError::Limit(LimitError::RenderValues { .. })
                }
            ),
            "{err:?}"
        );
    }

    /// Work that grows faster than what the patches hold is bounded by the render's steps: a
    /// JSON patch whose every operation makes the whole document be checked again, and a keyed
    /// list merge that compares every item of the patch with every item of the list.
    #[test]
    fn applying_patches_is_bounded_in_steps() {
        let steps = LimitError::RenderSteps {
            limit: RENDER_LIMITS.steps,
        };
        let big = || vec![json!({"machine": {"certSANs": vec!["a"; 45_000]}})];
        let add = json!({"op": "add", "path": "/machine/certSANs/-", "value": "b"});
        let ops = Patch::json6902(Value::Array(vec![add; 512])).unwrap();
        assert_eq!(refused_for(apply(big(), &[ops])), (Some(0), steps));
        // A few such operations are fine.
        let add = json!({"op": "add", "path": "/machine/certSANs/-", "value": "b"});
        let ops = Patch::json6902(Value::Array(vec![add; 100])).unwrap();
        assert_eq!(
            apply(big(), &[ops]).unwrap()[0]["machine"]["certSANs"]
                .as_array()
                .map(Vec::len),
            Some(45_100)
        );

        let interfaces = |prefix: &str| {
            let items: Vec<Value> = (0..15_000)
                .map(|i| json!({"interface": format!("{prefix}{i}")}))
                .collect();
            Patch::Strategic(vec![json!({"machine": {"network": {"interfaces": items}}})])
        };
        let (index, limit) = refused_for(apply(base(), &[interfaces("a"), interfaces("b")]));
        assert_eq!((index, limit), (Some(1), steps));
        assert_eq!(
            limit.to_string(),
            "over the render budget: more than 10000000 steps to apply the patches"
        );
    }

    #[test]
    fn delete_directives() {
        let base = vec![
            json!({"machine": {"network": {"hostname": "x"}, "certSANs": ["a", "b"]}}),
            json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}),
        ];
        let out = apply(
            base,
            &[
                strategic("machine:\n  network:\n    $patch: delete\n"),
                strategic("apiVersion: v1alpha1\nkind: HostnameConfig\n$patch: delete\n"),
            ],
        )
        .unwrap();
        assert_eq!(out.len(), 1, "document deleted");
        assert!(out[0]["machine"].get("network").is_none(), "map deleted");
    }

    #[test]
    fn json_patch_refused_on_multi_document_configs() {
        let docs = vec![
            json!({}),
            json!({"apiVersion": "v1alpha1", "kind": "HostnameConfig"}),
        ];
        let p = Patch::parse("- op: add\n  path: /machine\n  value: {}\n").unwrap();
        assert!(matches!(
            apply(docs, &[p]),
            Err(Error::JsonPatchOnMultiDocument)
        ));
    }

    #[test]
    fn bad_patches_are_typed_errors() {
        let unknown_op = Patch::parse("- op: merge\n  path: /machine\n  value: {}\n").unwrap_err();
        assert!(
            unknown_op.to_string().contains("valid operations"),
            "{unknown_op}"
        );
        assert!(Patch::parse("- op: add\n  path: machine\n  value: 1\n").is_err());
        assert!(
            Patch::parse("kind: NoSuchConfig\napiVersion: v1alpha1\n")
                .unwrap_err()
                .to_string()
                .contains("NoSuchConfig")
        );
        assert!(Patch::parse("machine: [").is_err());
        let remove_missing = Patch::parse("- op: remove\n  path: /machine/nothing\n").unwrap();
        assert!(matches!(
            apply(vec![json!({"machine": {}})], &[remove_missing]),
            Err(Error::Patch { index: Some(0), .. })
        ));
    }

    fn parse_refusal(text: &str) -> PatchError {
        match Patch::parse(text) {
            Err(Error::Patch {
                index: None,
                source,
            }) => source,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_json_patch_must_be_a_list() {
        for (ops, found) in [
            (
                json!({"op": "add", "path": "/machine", "value": {}}),
                "a mapping",
            ),
            (json!("add /machine"), "a string"),
            (json!(null), "null"),
        ] {
            let err = Patch::json6902(ops).unwrap_err();
            assert!(err.is_patch_error(), "{err:?}");
            assert!(
                matches!(
                    err,
                    Error::Patch {
                        index: None,
                        source: PatchError::NotAList { found: f }
                    } if f == found
                ),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains("a JSON 6902 patch must be a list of operations"),
                "{err}"
            );
        }
        assert_eq!(
            Patch::json6902(json!([])).unwrap(),
            Patch::Json6902(json_patch::Patch(vec![]))
        );
    }

    #[test]
    fn a_strategic_patch_must_be_mappings() {
        for (text, found) in [
            ("just a scalar\n", "a string"),
            ("42\n", "a number"),
            ("machine: {}\n---\n- op: add\n  path: /x\n", "a list"),
            ("---\n[1]\n---\n[2]\n", "a list"),
        ] {
            assert!(
                matches!(parse_refusal(text), PatchError::NotAMapping { found: f } if f == found),
                "{text:?}"
            );
        }
        assert!(matches!(parse_refusal("# nothing\n"), PatchError::Empty));
    }

    #[test]
    fn operation_errors_are_typed_and_explained() {
        assert!(matches!(
            parse_refusal("- op: merge\n  path: /machine\n"),
            PatchError::UnknownOperation { index: 0, ref op } if op == "merge"
        ));
        let e =
            parse_refusal("- op: add\n  path: /a\n  value: 1\n- op: move\n  from: a\n  path: /b\n");
        assert!(
            matches!(e, PatchError::NotAPointer { index: 1, field: "from", ref pointer } if pointer == "a"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("JSON pointer such as /machine/install/disk"),
            "{e}"
        );
        // Anything else: the decoder's error, kept as the source.
        let e = Patch::parse("- path: /machine\n").unwrap_err();
        let source = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert!(
            source.is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("operation 0: missing field `op`"),
            "{e}"
        );
    }

    #[test]
    fn yaml_errors_are_kept_and_not_rewritten() {
        let e = Patch::parse("machine: [").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Patch {
                    index: None,
                    source: PatchError::Yaml { .. }
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.starts_with("parsing patch: "), "{text}");
        assert!(!text.contains("machine configuration"), "{text}");
        // A token behind a tag that does not fit it: the YAML parser's message quoted it.
        let tagged =
            Patch::parse("machine:\n  token: !!int abcdef.0123456789abcdef\n").unwrap_err();
        assert_eq!(
            tagged.to_string(),
            format!(
                "parsing patch: not valid YAML: {} (line 2, column 10)",
                crate::parse::UNREADABLE
            )
        );
        assert!(
            !format!("{tagged:?}").contains("0123456789abcdef"),
            "{tagged:?}"
        );
        let yaml = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert_eq!(
            yaml.and_then(|s| s.downcast_ref::<crate::parse::SyntaxError>()),
            Some(&crate::parse::SyntaxError {
                problem: "did not find expected node content",
                line: Some(2),
                column: Some(1),
            })
        );
    }

    /// Talos encodes its typed configuration after a merge: a section a patch brings in gets
    /// the fields Talos writes even when they are zero; a deletion under a section the
    /// configuration lacks fails.
    #[test]
    fn a_merge_ends_as_talos_encodes_its_typed_configuration() {
        let base = vec![json!({"machine": {"type": "worker"}, "cluster": {}})];
        let out = apply(
            base.clone(),
            &[strategic("machine:\n  install:\n    disk: /dev/vda\ncluster:\n  network:\n    dnsDomain: a.b\n")],
        )
        .unwrap();
        assert_eq!(
            out[0]["machine"]["install"],
            json!({"disk": "/dev/vda", "wipe": null})
        );
        assert_eq!(
            out[0]["cluster"]["network"],
            json!({"dnsDomain": "a.b", "podSubnets": [], "serviceSubnets": []})
        );
        let p = strategic("machine:\n  install:\n    diskSelector:\n      $patch: delete\n");
        assert!(matches!(
            apply(base.clone(), &[p]),
            Err(Error::Patch { source: PatchError::DeleteMissing { path }, .. }) if path == "machine.install.diskSelector"
        ));
    }

    #[test]
    fn a_scalar_for_a_list_is_refused_not_ignored() {
        let base = vec![json!({"cluster": {"extraManifests": ["a"]}})];
        // Talos decodes the patch into its typed configuration first, as it would the result.
        let err =
            Patch::parse("cluster:\n  extraManifests: https://example.com/b.yaml\n").unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Patch {
                    index: None,
                    source: PatchError::Undecodable(problems)
                } if problems.0.iter().any(|p| p.path == "cluster.extraManifests")
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains("example.com"), "{err}");
        // null is the zero value: the list stays as it is.
        let out = apply(
            base.clone(),
            &[strategic("cluster:\n  extraManifests: null\n")],
        )
        .unwrap();
        assert_eq!(out, base);
        // Inside keyed list items too, with the item's index in the path.
        let base = vec![
            json!({"machine": {"network": {"interfaces": [{"interface": "eth0", "addresses": ["10.0.0.2/24"]}]}}}),
        ];
        let p = strategic(
            "machine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: 10.0.0.3/24\n",
        );
        let err = apply(base, &[p]).unwrap_err().to_string();
        assert!(
            err.contains(
                "machine.network.interfaces[0].addresses is a list; the patch gives a string"
            ),
            "{err}"
        );
    }

    #[test]
    fn undecodable_patches_list_their_problems() {
        let e = parse_refusal("machine:\n  installer: {}\n  certSANs: x\n");
        assert!(
            matches!(&e, PatchError::Undecodable(p) if p.0.len() == 2),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the configuration does not decode: machine.installer: unknown field; machine.certSANs: must be a list"
        );
    }
}
