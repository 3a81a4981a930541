//! Act on control-plane Machines: create one (its infrastructure cloned from the template, its
//! TalosConfig from controlPlaneConfig, then the Machine), release a deleting one's
//! pre-terminate hook, delete one. Every name is generated once and used for all three objects,
//! as KubeadmControlPlane does.

use std::collections::BTreeMap;

use api::bootstrap::v1alpha3::TalosConfigSpec;
use api::capi::{Machine, annotations, labels};
use api::controlplane::v1alpha3::TalosControlPlane;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::state::Ctx;
use crate::Error;

/// Our pre-terminate hook on every control-plane Machine: Cluster API keeps the machine's
/// infrastructure until we removed its etcd member and took the hook off.
pub fn cleanup_hook() -> String {
    format!(
        "{}/talos-etcd-member",
        annotations::PRE_TERMINATE_HOOK_PREFIX
    )
}

/// The infrastructure template a TalosControlPlane clones, in whichever field it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    /// `group/version`, when the reference names it (v1beta1 shapes).
    pub api_version: Option<String>,
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl TemplateRef {
    pub fn of(tcp: &TalosControlPlane) -> Option<TemplateRef> {
        let spec = &tcp.spec;
        let template = spec.machine_template.as_ref();
        let legacy = spec
            .infrastructure_template
            .as_ref()
            .or_else(|| template.and_then(|t| t.infrastructure_ref.as_ref()));
        if let Some(r) = legacy {
            let api_version = r.api_version.clone().unwrap_or_default();
            return Some(TemplateRef {
                group: api_version.split('/').next().unwrap_or_default().to_owned(),
                api_version: Some(api_version),
                kind: r.kind.clone().unwrap_or_default(),
                name: r.name.clone().unwrap_or_default(),
                namespace: r.namespace.clone(),
            });
        }
        let r = template?.spec.as_ref()?.infrastructure_ref.as_ref()?;
        Some(TemplateRef {
            api_version: None,
            group: r.api_group.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            namespace: None,
        })
    }

    /// `Kind.group`, as the cloned-from-groupkind annotation writes it.
    pub fn group_kind(&self) -> String {
        format!("{}.{}", self.kind, self.group)
    }
}

/// What a machine was made from, recorded on it when it is created, to tell when it is
/// outdated: the infrastructure template (`Kind.group/name`) and digests of that template's
/// spec.template and of the machine's TalosConfig spec.
pub const MADE_FROM_TEMPLATE: &str = "controlplane.cluster.x-k8s.io/infrastructure-template";
pub const MADE_FROM_TEMPLATE_DIGEST: &str =
    "controlplane.cluster.x-k8s.io/infrastructure-template-digest";
pub const MADE_FROM_CONFIG_DIGEST: &str = "controlplane.cluster.x-k8s.io/talos-config-digest";
/// The address pools a machine's TalosConfig claims from (see [`pools_key`]), recorded when it
/// is made: its addresses are claimed then, so a change of pools replaces the machine.
pub const MADE_WITH_POOLS: &str = "controlplane.cluster.x-k8s.io/address-pools";
/// [`MADE_FROM_CONFIG_DIGEST`] or [`MADE_WITH_POOLS`] of an adopted machine whose TalosConfig
/// was gone when it was looked for: nothing to compare, and nothing to read again.
pub const UNKNOWN_DIGEST: &str = "unknown";

/// An infrastructure template as read now.
#[derive(Debug, Clone)]
pub struct Template {
    pub reference: TemplateRef,
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl Template {
    /// The kind of infrastructure machine the template makes (its kind without `Template`).
    pub fn infra_resource(&self) -> ApiResource {
        let kind = self
            .reference
            .kind
            .strip_suffix("Template")
            .unwrap_or(&self.reference.kind);
        ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            &self.resource.group,
            &self.resource.version,
            kind,
        ))
    }

    /// Read the template `tcp` names.
    pub async fn read(ctx: &Ctx, tcp: &TalosControlPlane) -> Result<Template, Error> {
        let reference = TemplateRef::of(tcp).ok_or_else(|| {
            Error::Spec(crate::SpecError::Invalid(
                "no infrastructure template is named".into(),
            ))
        })?;
        let resource = resource_of(ctx, &reference).await?;
        let ns = reference
            .namespace
            .clone()
            .unwrap_or_else(|| tcp.namespace().unwrap_or_default());
        let key = format!("{ns}/{}", reference.identity());
        if let Some(object) = ctx.recent_template(&key) {
            return Ok(Template {
                reference,
                resource,
                object,
            });
        }
        let object = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &resource)
            .get_opt(&reference.name)
            .await
            .map_err(Error::kube(format!(
                "reading {} {}",
                reference.kind, reference.name
            )))?
            .ok_or_else(|| {
                Error::Missing(format!(
                    "infrastructure template {} {ns}/{} not found",
                    reference.kind, reference.name
                ))
            })?;
        ctx.remember_template(key, object.clone());
        Ok(Template {
            reference,
            resource,
            object,
        })
    }

    /// The digest of the template's spec.template, recorded on machines cloned from it.
    pub fn digest(&self) -> String {
        crate::cache::value_digest(self.object.data["spec"]["template"].to_string().as_bytes())
    }
}

impl TemplateRef {
    /// `Kind.group/name`, as machines record it.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.group_kind(), self.name)
    }
}

/// The TalosConfig spec of every control-plane machine: controlPlaneConfig.controlplane with
/// generateType controlplane (etcd is bootstrapped over the API).
pub fn config_spec(spec: &TalosConfigSpec) -> Result<Value, Error> {
    let mut value = serde_json::to_value(spec).map_err(|source| Error::Decode {
        kind: "TalosConfigSpec",
        source,
    })?;
    value["generateType"] = json!("controlplane");
    Ok(value)
}

/// The digest of a control-plane TalosConfig spec, recorded on its machine.
pub fn config_digest(spec: &TalosConfigSpec) -> Result<String, Error> {
    Ok(crate::cache::value_digest(
        config_spec(spec)?.to_string().as_bytes(),
    ))
}

/// The pools `spec` claims addresses from, as [`MADE_WITH_POOLS`] records them: each
/// `Kind.group/name`, in order, comma-separated ("" for none).
pub fn pools_key(spec: &TalosConfigSpec) -> String {
    spec.addresses_from_pools
        .iter()
        .flatten()
        .map(|p| format!("{}.{}/{}", p.kind, p.api_group, p.name))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `machine` lacks a record [`record_config_digest`] makes.
pub fn unrecorded(machine: &Machine) -> bool {
    let annotations = machine.annotations();
    !(annotations.contains_key(MADE_FROM_CONFIG_DIGEST)
        && annotations.contains_key(MADE_WITH_POOLS))
}

/// Record on a machine made before talos-capi recorded them (by CACPPT, or an older release)
/// the digest of its TalosConfig's spec and the pools it claims from, read once, so a later
/// controlPlaneConfig change rolls it. A digest already recorded is kept (an in-place change
/// moves it on, and the TalosConfig does not), and the pools a TalosConfig claims from never
/// change. What a machine whose TalosConfig is gone lacks is marked [`UNKNOWN_DIGEST`], and
/// not judged.
pub async fn record_config_digest(ctx: &Ctx, machine: &Machine) -> Result<(), Error> {
    let ns = machine.namespace().unwrap_or_default();
    let Some(config) = machine
        .spec
        .bootstrap
        .config_ref
        .as_ref()
        .filter(|r| r.kind == "TalosConfig")
    else {
        return Ok(());
    };
    let api: Api<api::bootstrap::v1alpha3::TalosConfig> = Api::namespaced(ctx.client.clone(), &ns);
    let found = api
        .get_opt(&config.name)
        .await
        .map_err(Error::kube(format!(
            "reading TalosConfig {ns}/{}",
            config.name
        )))?;
    let recorded = machine.annotations().get(MADE_FROM_CONFIG_DIGEST);
    let annotations = match found {
        Some(config) => json!({
            MADE_FROM_CONFIG_DIGEST: match recorded {
                Some(digest) => digest.clone(),
                None => config_digest(&config.spec)?,
            },
            MADE_WITH_POOLS: pools_key(&config.spec),
        }),
        None => json!({
            MADE_FROM_CONFIG_DIGEST: recorded.map_or(UNKNOWN_DIGEST, String::as_str),
            MADE_WITH_POOLS: UNKNOWN_DIGEST,
        }),
    };
    let patch = json!({"metadata": {"annotations": annotations}});
    Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &ns,
        &crate::cache::capi_resource("Machine"),
    )
    .patch(
        &machine.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
    .map_err(Error::kube(format!(
        "recording the config digest of machine {ns}/{}",
        machine.name_any()
    )))
}

/// The API resource of `template`'s kind: from its apiVersion, or discovered (and remembered)
/// from its group.
async fn resource_of(ctx: &Ctx, template: &TemplateRef) -> Result<ApiResource, Error> {
    if let Some(av) = template.api_version.as_deref().filter(|v| v.contains('/')) {
        let (group, version) = av.split_once('/').unwrap_or_default();
        return Ok(ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            group,
            version,
            &template.kind,
        )));
    }
    let key = template.group_kind();
    if let Some(ar) = ctx.discovered(&key) {
        return Ok(ar);
    }
    let group = kube::discovery::group(&ctx.client, &template.group)
        .await
        .map_err(Error::kube(format!(
            "discovering API group {}",
            template.group
        )))?;
    let (ar, _) = group.recommended_kind(&template.kind).ok_or_else(|| {
        Error::Missing(format!(
            "the infrastructure template kind {} is not served by the API server",
            key
        ))
    })?;
    ctx.remember(&key, ar.clone());
    Ok(ar)
}

/// A name for a new machine: the TalosControlPlane's name and five random characters, as
/// Kubernetes generates names.
pub fn new_name(tcp: &str, entropy: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = entropy;
    let suffix: String = (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect();
    let base: String = tcp.chars().take(63 - 6).collect();
    format!("{base}-{suffix}")
}

fn owner(tcp: &TalosControlPlane, controller: bool) -> Value {
    json!({
        "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3",
        "kind": "TalosControlPlane",
        "name": tcp.name_any(),
        "uid": tcp.meta().uid,
        "controller": controller,
        "blockOwnerDeletion": controller,
    })
}

fn merged(
    base: BTreeMap<String, String>,
    extra: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = extra.cloned().unwrap_or_default();
    out.extend(base);
    out
}

/// Seconds in a Go duration such as `10m`, `1h30m` or `90s`; `None` if it is not one.
pub fn duration_seconds(text: &str) -> Option<i32> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    if !number.is_empty() || text.is_empty() {
        return None;
    }
    i32::try_from(total).ok()
}

/// Machine deletion timeouts from the template, in the v1beta2 shape.
fn deletion(tcp: &TalosControlPlane) -> Value {
    let Some(t) = tcp.spec.machine_template.as_ref() else {
        return json!({});
    };
    let from_spec = t.spec.as_ref().and_then(|s| s.deletion.as_ref());
    let pick = |legacy: &Option<String>, v1beta2: Option<i32>| {
        v1beta2.or_else(|| legacy.as_deref().and_then(duration_seconds))
    };
    let mut out = serde_json::Map::new();
    for (key, legacy, v1beta2) in [
        (
            "nodeDrainTimeoutSeconds",
            &t.node_drain_timeout,
            from_spec.and_then(|d| d.node_drain_timeout_seconds),
        ),
        (
            "nodeVolumeDetachTimeoutSeconds",
            &t.node_volume_detach_timeout,
            from_spec.and_then(|d| d.node_volume_detach_timeout_seconds),
        ),
        (
            "nodeDeletionTimeoutSeconds",
            &t.node_deletion_timeout,
            from_spec.and_then(|d| d.node_deletion_timeout_seconds),
        ),
    ] {
        if let Some(v) = pick(legacy, v1beta2) {
            out.insert(key.into(), json!(v));
        }
    }
    Value::Object(out)
}

/// The machineTemplate labels and annotations a machine was last given, recorded on it (JSON,
/// `{"labels": [...], "annotations": [...]}`), so that a key dropped from the template is
/// dropped from the machine too, and only such a key.
pub const TEMPLATE_KEYS: &str = "controlplane.cluster.x-k8s.io/machine-template-keys";

/// The label and annotation keys of machineTemplate, as [`TEMPLATE_KEYS`] records them.
fn template_keys(metadata: Option<&api::bootstrap::v1alpha3::ObjectMetaTemplate>) -> String {
    let keys = |m: Option<&BTreeMap<String, String>>| -> Vec<String> {
        m.map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    json!({
        "labels": keys(metadata.and_then(|m| m.labels.as_ref())),
        "annotations": keys(metadata.and_then(|m| m.annotations.as_ref())),
    })
    .to_string()
}

/// What machineTemplate asks every machine to carry, kept in place without a rollout: its
/// labels and annotations (with [`TEMPLATE_KEYS`]), and the deletion timeouts; and our
/// pre-terminate hook, which a machine adopted from CACPPT lacks.
pub fn template_fields(tcp: &TalosControlPlane) -> Value {
    let metadata = tcp
        .spec
        .machine_template
        .as_ref()
        .and_then(|t| t.metadata.as_ref());
    let mut annotations = metadata
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(TEMPLATE_KEYS.into(), template_keys(metadata));
    annotations.insert(cleanup_hook(), String::new());
    json!({
        "metadata": {
            "labels": metadata.and_then(|m| m.labels.clone()).unwrap_or_default(),
            "annotations": annotations,
        },
        "spec": {"deletion": deletion(tcp)},
    })
}

/// The merge patch that brings `machine` in step with `fields` ([`template_fields`]): keys
/// added or changed, and keys it was given from the template earlier that the template no
/// longer has removed. `None` when it is in step.
pub fn template_patch(machine: &Machine, fields: &Value) -> Option<Value> {
    let differs = |path: [&str; 2], actual: &Value| {
        fields[path[0]][path[1]]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| actual.get(k) != Some(v))
    };
    let labels = serde_json::to_value(machine.labels()).unwrap_or_default();
    let annotations = serde_json::to_value(machine.annotations()).unwrap_or_default();
    let deletion = serde_json::to_value(&machine.spec.deletion).unwrap_or_default();
    let mut patch = fields.clone();
    let given: Value = machine
        .annotations()
        .get(TEMPLATE_KEYS)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let mut dropped = false;
    for (kind, actual) in [("labels", &labels), ("annotations", &annotations)] {
        for key in given[kind].as_array().into_iter().flatten() {
            let Some(key) = key.as_str() else { continue };
            if fields["metadata"][kind].get(key).is_none() && actual.get(key).is_some() {
                patch["metadata"][kind][key] = Value::Null;
                dropped = true;
            }
        }
    }
    (dropped
        || differs(["metadata", "labels"], &labels)
        || differs(["metadata", "annotations"], &annotations)
        || differs(["spec", "deletion"], &deletion))
    .then_some(patch)
}

/// Apply `patch` ([`template_patch`]) to `machine`.
pub async fn sync(ctx: &Ctx, ns: &str, machine: &str, patch: &Value) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &crate::cache::capi_resource("Machine"),
    );
    api.patch(machine, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
        .map_err(Error::kube(format!(
            "updating machine {ns}/{machine} from machineTemplate"
        )))
}

/// The field manager of the conditions this controller sets on its Machines.
const CONDITIONS_MANAGER: &str = "talos-capi-machine-conditions";

/// Set `observations` among `machine`'s status conditions, as KubeadmControlPlane sets its
/// own on its machines. Server-side apply with a field manager of ours merges by condition
/// type, so Cluster API's conditions are left alone. A condition whose status did not change
/// keeps its lastTransitionTime, and nothing is written while they read as observed.
pub async fn set_conditions(
    ctx: &Ctx,
    machine: &Machine,
    observations: &[api::conditions::Observation],
) -> Result<(), Error> {
    let existing = machine
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let current = |o: &api::conditions::Observation| {
        existing
            .iter()
            .find(|c| c.type_ == o.type_.as_str() && c.status == o.status.as_str())
    };
    if observations
        .iter()
        .all(|o| current(o).is_some_and(|c| c.reason == o.reason && c.message == o.message))
    {
        return Ok(());
    }
    let now = ctx.clock.now();
    let conditions: Vec<Value> = observations
        .iter()
        .map(|o| {
            json!({
                "type": o.type_.as_str(),
                "status": o.status.as_str(),
                "reason": o.reason,
                "message": o.message,
                "lastTransitionTime": current(o)
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone()),
                "observedGeneration": machine.metadata.generation,
            })
        })
        .collect();
    let (ns, name) = (machine.namespace().unwrap_or_default(), machine.name_any());
    let patch = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name, "namespace": ns},
        "status": {"conditions": conditions},
    });
    Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        &ns,
        &crate::cache::capi_resource("Machine"),
    )
    .patch_status(
        &name,
        &PatchParams::apply(CONDITIONS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(Error::kube(format!(
        "setting the conditions of machine {ns}/{name}"
    )))
}

/// Create machine `name` of `tcp` in `failure_domain` (answering the remediation
/// `remediation_for`, an annotation value, if it replaces a remediated machine): the
/// infrastructure machine, the
/// TalosConfig, then the Machine. If the Machine cannot be created, the first two are deleted
/// again (best effort), so a failed creation leaves nothing behind for long.
pub async fn create(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    template: &Template,
    cluster: &str,
    name: &str,
    failure_domain: Option<&str>,
    remediation_for: Option<&str>,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let made = Made {
        tcp,
        ns: &ns,
        name,
        cluster,
    };
    let infra_ar = template.infra_resource();
    let config_ar = super::talosconfig_resource();
    let (config, config_digest) = made.config(&config_ar)?;
    let mut created = Created::new(ctx, &ns);
    for (ar, object) in [(&infra_ar, made.infra(template)), (&config_ar, config)] {
        if let Err((e, _)) = created.post(ar, object).await {
            created.undo().await;
            return Err(e);
        }
    }
    let machine = made.machine(
        template,
        (&infra_ar, &config_ar),
        config_digest,
        failure_domain,
        remediation_for,
    );
    match created
        .post(&crate::cache::capi_resource("Machine"), machine)
        .await
    {
        Ok(()) => Ok(()),
        // The Machine may exist: its infrastructure and config stay with it (if it does not,
        // they are the TalosControlPlane's, and go with it).
        Err((e, true)) => Err(e),
        Err((e, false)) => {
            created.undo().await;
            Err(e)
        }
    }
}

/// The three objects of one new control-plane machine `name`.
struct Made<'a> {
    tcp: &'a TalosControlPlane,
    ns: &'a str,
    name: &'a str,
    cluster: &'a str,
}

impl Made<'_> {
    fn cluster_label(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(labels::CLUSTER_NAME.to_owned(), self.cluster.to_owned())])
    }

    fn control_plane_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.cluster_label();
        labels.insert(labels::CONTROL_PLANE.into(), String::new());
        labels
    }

    /// The infrastructure machine, cloned from the template's inner template.
    fn infra(&self, template: &Template) -> Value {
        let template_ref = &template.reference;
        let inner = &template.object.data["spec"]["template"];
        let inner_meta = |key: &str| -> Option<BTreeMap<String, String>> {
            serde_json::from_value(inner["metadata"][key].clone()).ok()
        };
        let mut annotations = inner_meta("annotations").unwrap_or_default();
        annotations.insert(
            annotations::CLONED_FROM_NAME.into(),
            template_ref.name.clone(),
        );
        annotations.insert(
            annotations::CLONED_FROM_GROUP_KIND.into(),
            template_ref.group_kind(),
        );
        json!({
            "apiVersion": template.resource.api_version,
            "kind": template.infra_resource().kind,
            "metadata": {
                "name": self.name,
                "namespace": self.ns,
                "labels": merged(self.cluster_label(), inner_meta("labels").as_ref()),
                "annotations": annotations,
                "ownerReferences": [owner(self.tcp, false)],
            },
            "spec": inner["spec"].clone(),
        })
    }

    /// The TalosConfig, and the digest of its spec.
    fn config(&self, config_ar: &ApiResource) -> Result<(Value, String), Error> {
        let spec = config_spec(&self.tcp.spec.control_plane_config.controlplane)?;
        let digest = crate::cache::value_digest(spec.to_string().as_bytes());
        let config = json!({
            "apiVersion": config_ar.api_version,
            "kind": "TalosConfig",
            "metadata": {
                "name": self.name,
                "namespace": self.ns,
                "labels": self.control_plane_labels(),
                "ownerReferences": [owner(self.tcp, false)],
            },
            "spec": spec,
        });
        Ok((config, digest))
    }

    /// The Machine, with what it was made from recorded in its annotations.
    fn machine(
        &self,
        template: &Template,
        (infra_ar, config_ar): (&ApiResource, &ApiResource),
        config_digest: String,
        failure_domain: Option<&str>,
        remediation_for: Option<&str>,
    ) -> Value {
        let tcp = self.tcp;
        let metadata = tcp
            .spec
            .machine_template
            .as_ref()
            .and_then(|t| t.metadata.as_ref());
        let mut machine_labels = self.control_plane_labels();
        machine_labels.insert(labels::CONTROL_PLANE_NAME.into(), tcp.name_any());
        let mut machine_annotations = metadata
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        machine_annotations.insert(cleanup_hook(), String::new());
        machine_annotations.insert(TEMPLATE_KEYS.into(), template_keys(metadata));
        machine_annotations.insert(MADE_FROM_TEMPLATE.into(), template.reference.identity());
        machine_annotations.insert(MADE_FROM_TEMPLATE_DIGEST.into(), template.digest());
        machine_annotations.insert(MADE_FROM_CONFIG_DIGEST.into(), config_digest);
        machine_annotations.insert(
            MADE_WITH_POOLS.into(),
            pools_key(&tcp.spec.control_plane_config.controlplane),
        );
        if let Some(record) = remediation_for {
            machine_annotations.insert(annotations::REMEDIATION_FOR.into(), record.to_owned());
        }
        json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Machine",
            "metadata": {
                "name": self.name,
                "namespace": self.ns,
                "labels": merged(machine_labels, metadata.and_then(|m| m.labels.as_ref())),
                "annotations": machine_annotations,
                "ownerReferences": [owner(tcp, true)],
            },
            "spec": {
                "clusterName": self.cluster,
                "version": tcp.spec.version,
                "failureDomain": failure_domain,
                "bootstrap": {"configRef": {
                    "apiGroup": config_ar.group, "kind": "TalosConfig", "name": self.name,
                }},
                "infrastructureRef": {
                    "apiGroup": infra_ar.group, "kind": infra_ar.kind, "name": self.name,
                },
                "deletion": deletion(tcp),
            },
        })
    }
}

/// The TalosConfigs a machine creation cut short left behind: the manager stopped between the
/// TalosConfig and its Machine, a reply that said "maybe" turned out "no", or the undo of a
/// failed creation failed. Each is owned by `tcp`, controlled by nothing (Cluster API makes the
/// Machine its controller), named by no Machine in `machines` (all of the cluster's), not being
/// deleted, and older than `grace` at `now`. A creation in progress never counts: it runs in
/// a reconcile of `tcp`, never beside one, and its Machine is awaited (expectations) before
/// the next.
pub fn leftovers(
    configs: &[std::sync::Arc<DynamicObject>],
    tcp: &TalosControlPlane,
    machines: &[Machine],
    now: k8s_openapi::jiff::Timestamp,
    grace: std::time::Duration,
) -> Vec<String> {
    let named = |config: &str| {
        machines.iter().any(|m| {
            m.spec
                .bootstrap
                .config_ref
                .as_ref()
                .is_some_and(|r| r.kind == "TalosConfig" && r.name == config)
        })
    };
    configs
        .iter()
        .filter(|c| c.meta().deletion_timestamp.is_none())
        .filter(|c| {
            let owners = c.owner_references();
            owners.iter().all(|o| o.controller != Some(true))
                && owners.iter().any(|o| {
                    o.kind == "TalosControlPlane" && Some(&o.uid) == tcp.meta().uid.as_ref()
                })
        })
        .filter(|c| {
            c.meta().creation_timestamp.as_ref().is_some_and(|t| {
                now.duration_since(t.0)
                    .try_into()
                    .is_ok_and(|age: std::time::Duration| age >= grace)
            })
        })
        .map(|c| c.name_any())
        .filter(|name| !named(name))
        .collect()
}

/// Delete leftover `name` (see [`leftovers`]): its TalosConfig, and the infrastructure machine
/// of the same name when `template` makes that kind and it too is ours and controlled by
/// nothing. Each delete is conditional on the uid seen, so nothing made since is touched.
pub async fn remove_leftover(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    template: Option<&Template>,
    name: &str,
) -> Result<(), Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let mut kinds = vec![super::talosconfig_resource()];
    if let Some(t) = template {
        kinds.insert(0, t.infra_resource());
    }
    for ar in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let what = format!("{} {ns}/{name}", ar.kind);
        let Some(found) = api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading {what}")))?
        else {
            continue;
        };
        let owners = found.owner_references();
        let ours = owners.iter().all(|o| o.controller != Some(true))
            && owners
                .iter()
                .any(|o| Some(&o.uid) == tcp.meta().uid.as_ref());
        if !ours {
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: found.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(%what, "removed what a machine creation cut short left behind"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("deleting {what}"))(e)),
        }
    }
    Ok(())
}

/// Objects created so far by one machine creation, to delete again if it fails.
struct Created<'a> {
    ctx: &'a Ctx,
    ns: &'a str,
    objects: Vec<(ApiResource, String)>,
}

impl<'a> Created<'a> {
    fn new(ctx: &'a Ctx, ns: &'a str) -> Self {
        Created {
            ctx,
            ns,
            objects: Vec::new(),
        }
    }

    /// Create `object`. A failed reply is not always a failed write (a 500, or a connection cut,
    /// after the API server stored it), so the API server is asked before anything is undone:
    /// an object it holds with our owner reference counts as created. The error's flag says
    /// whether the object may exist after all (the question went unanswered).
    async fn post(&mut self, ar: &ApiResource, object: Value) -> Result<(), (Error, bool)> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let owner = object["metadata"]["ownerReferences"][0]["uid"]
            .as_str()
            .map(str::to_owned);
        let body = serde_json::to_vec(&object).map_err(|source| {
            let e = Error::Decode {
                kind: "object",
                source,
            };
            (e, false)
        })?;
        drop(object);
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), self.ns, ar);
        // Sent as its JSON text, and the reply (the object again) is not read: a TalosConfig
        // carries the control plane's patches, up to a MiB of values, which would otherwise be
        // held three times more while it is created.
        let created = match Request::new(api.resource_url()).create(&PostParams::default(), body) {
            Ok(request) => self.ctx.client.request_text(request).await.map(drop),
            Err(e) => Err(kube::Error::BuildRequest(e)),
        };
        let Err(e) = created else {
            self.objects.push((ar.clone(), name));
            return Ok(());
        };
        let e = Error::kube(format!("creating {} {}/{name}", ar.kind, self.ns))(e);
        match api.get_opt(&name).await {
            Ok(Some(found))
                if found
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == owner.as_ref()) =>
            {
                tracing::info!(kind = %ar.kind, name, error = %e, "created, although the reply said otherwise");
                self.objects.push((ar.clone(), name));
                Ok(())
            }
            Ok(_) => Err((e, false)),
            Err(_) => {
                self.objects.push((ar.clone(), name));
                Err((e, true))
            }
        }
    }

    async fn undo(self) {
        for (ar, name) in self.objects {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.ctx.client.clone(), self.ns, &ar);
            if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                tracing::warn!(kind = %ar.kind, name, error = %e, "cleaning up after a failed machine creation");
            }
        }
    }
}

/// Control-plane machines of `tcp`, read from the API server (not the cache): the check before a
/// machine is created or deleted.
pub async fn count(ctx: &Ctx, tcp: &TalosControlPlane, cluster: &str) -> Result<Count, Error> {
    let ns = tcp.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &crate::cache::capi_resource("Machine"),
    );
    let selector = format!(
        "{}={cluster},{}",
        labels::CLUSTER_NAME,
        labels::CONTROL_PLANE
    );
    let list = api
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!(
            "listing the control-plane machines of {ns}/{cluster}"
        )))?;
    let ours: Vec<_> = list
        .items
        .iter()
        .filter(|m| {
            m.metadata.owner_references.iter().flatten().any(|o| {
                o.controller == Some(true)
                    && o.kind == "TalosControlPlane"
                    && o.name == tcp.name_any()
            })
        })
        .collect();
    Ok(Count {
        live: ours
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .count(),
        total: ours.len(),
    })
}

/// Control-plane machines as the API server lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Not being deleted.
    pub live: usize,
    /// Including those being deleted.
    pub total: usize,
}

/// Take our pre-terminate hook off `machine` so Cluster API finishes deleting it.
pub async fn release(ctx: &Ctx, ns: &str, machine: &str) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &crate::cache::capi_resource("Machine"),
    );
    let patch = json!({"metadata": {"annotations": {cleanup_hook(): null}}});
    match api
        .patch(machine, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("releasing machine {ns}/{machine}"))(e)),
    }
}

/// Delete `machine` (Cluster API drains and deletes its node and infrastructure).
pub async fn delete(ctx: &Ctx, ns: &str, machine: &str) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &crate::cache::capi_resource("Machine"),
    );
    match api.delete(machine, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting machine {ns}/{machine}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_ours_uncontrolled_unnamed_and_old_enough() {
        let tcp: TalosControlPlane = serde_json::from_value(json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
            "metadata": {"name": "cp", "namespace": "ns", "uid": "tcp-uid"},
            "spec": {"version": "v1.35.0", "controlPlaneConfig": {"controlplane": {"generateType": "controlplane"}}}
        }))
        .unwrap();
        let now: k8s_openapi::jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let config = |name: &str, created: &str, owners: Value, deleting: bool| {
            let mut meta = json!({"name": name, "namespace": "ns",
                "creationTimestamp": created, "ownerReferences": owners});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-11-24T11:59:00Z");
            }
            std::sync::Arc::new(
                serde_json::from_value::<DynamicObject>(json!({
                    "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3", "kind": "TalosConfig",
                    "metadata": meta
                }))
                .unwrap(),
            )
        };
        let ours = |controller| {
            json!([{"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
                "name": "cp", "uid": "tcp-uid", "controller": controller}])
        };
        let old = "2026-11-24T11:58:00Z";
        let configs = vec![
            config("left", old, ours(false), false),
            config("young", "2026-11-24T11:59:30Z", ours(false), false),
            config("named", old, ours(false), false),
            config("controlled", old, ours(true), false),
            config("going", old, ours(false), true),
            config(
                "foreign",
                old,
                json!([{"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
                    "name": "cp", "uid": "an-older-cp"}]),
                false,
            ),
            config(
                "machine-controlled",
                old,
                json!([{"apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
                    "name": "cp", "uid": "tcp-uid"},
                    {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m",
                    "uid": "m-uid", "controller": true}]),
                false,
            ),
        ];
        let machine: Machine = serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "named", "namespace": "ns"},
            "spec": {"clusterName": "c", "bootstrap": {"configRef": {
                "apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "TalosConfig", "name": "named"}}}
        }))
        .unwrap();
        let grace = std::time::Duration::from_secs(60);
        assert_eq!(
            leftovers(&configs, &tcp, std::slice::from_ref(&machine), now, grace),
            vec!["left".to_owned()]
        );
        assert_eq!(
            leftovers(&configs, &tcp, &[], now, grace),
            vec!["left".to_owned(), "named".to_owned()],
            "a config no Machine names is left over"
        );
    }

    #[test]
    fn names_and_durations() {
        let a = new_name("cp", 0);
        let b = new_name("cp", 123_456_789);
        assert!(a.starts_with("cp-") && a.len() == 8, "{a}");
        assert_ne!(a, b);
        assert!(new_name(&"x".repeat(80), 1).len() <= 63);
        assert_eq!(duration_seconds("10m"), Some(600));
        assert_eq!(duration_seconds("1h30m15s"), Some(5415));
        assert_eq!(duration_seconds("10"), None);
        assert_eq!(duration_seconds("5d"), None);
        assert_eq!(duration_seconds(""), None);
    }

    #[test]
    fn template_metadata_and_timeouts_are_compared_key_by_key() {
        let tcp: TalosControlPlane = serde_json::from_value(json!({
            "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
            "metadata": {"name": "cp", "namespace": "ns"},
            "spec": {"version": "v1.33.0", "controlPlaneConfig": {"controlplane": {}},
                "machineTemplate": {"metadata": {"labels": {"team": "a"}}, "nodeDrainTimeout": "5m"}}
        }))
        .expect("a TalosControlPlane");
        let fields = template_fields(&tcp);
        assert_eq!(fields["spec"]["deletion"]["nodeDrainTimeoutSeconds"], 300);
        let mut m: Machine = serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "m", "labels": {"team": "a", "other": "x"}},
            "spec": {"clusterName": "c", "deletion": {"nodeDrainTimeoutSeconds": 300, "nodeDeletionTimeoutSeconds": 10}}
        }))
        .expect("a Machine");
        // Made before keys were recorded (by CACPPT, say): the record and our pre-terminate
        // hook are added.
        let patch = template_patch(&m, &fields).expect("the record is missing");
        assert_eq!(
            patch["metadata"]["annotations"][TEMPLATE_KEYS],
            r#"{"annotations":[],"labels":["team"]}"#
        );
        assert_eq!(patch["metadata"]["annotations"][cleanup_hook()], "");
        m.metadata.annotations = Some(
            [
                (
                    TEMPLATE_KEYS.to_owned(),
                    r#"{"annotations":[],"labels":["team"]}"#.to_owned(),
                ),
                (cleanup_hook(), String::new()),
            ]
            .into(),
        );
        assert_eq!(
            template_patch(&m, &fields),
            None,
            "extra labels and defaulted timeouts are not differences"
        );
        m.metadata
            .labels
            .as_mut()
            .map(|l| l.insert("team".to_owned(), "b".to_owned()));
        let patch = template_patch(&m, &fields).expect("a changed label");
        assert_eq!(patch["metadata"]["labels"]["team"], "a");

        // "team" leaves the template: it leaves the machine, and "other" (never from the
        // template) stays.
        let mut without = tcp.clone();
        if let Some(meta) = without
            .spec
            .machine_template
            .as_mut()
            .and_then(|t| t.metadata.as_mut())
        {
            meta.labels = None;
        }
        let patch = template_patch(&m, &template_fields(&without)).expect("a dropped label");
        assert_eq!(patch["metadata"]["labels"]["team"], Value::Null);
        assert!(patch["metadata"]["labels"].get("other").is_none());
        assert_eq!(
            patch["metadata"]["annotations"][TEMPLATE_KEYS],
            r#"{"annotations":[],"labels":[]}"#
        );
    }

    #[test]
    fn the_template_is_found_in_any_of_its_three_fields() {
        let tcp = |spec: Value| -> TalosControlPlane {
            serde_json::from_value(json!({
                "apiVersion": "controlplane.cluster.x-k8s.io/v1alpha3", "kind": "TalosControlPlane",
                "metadata": {"name": "cp", "namespace": "ns"},
                "spec": {"version": "v1.33.0", "controlPlaneConfig": {"controlplane": {"generateType": "controlplane"}}}
            }).as_object().cloned().map(|mut o| {
                for (k, v) in spec.as_object().into_iter().flatten() {
                    o["spec"][k] = v.clone();
                }
                Value::Object(o)
            }).unwrap_or_default()).expect("a TalosControlPlane")
        };
        let legacy = tcp(json!({"infrastructureTemplate": {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "SimMachineTemplate", "name": "t"}}));
        let r = TemplateRef::of(&legacy).expect("a reference");
        assert_eq!(
            r.group_kind(),
            "SimMachineTemplate.infrastructure.cluster.x-k8s.io"
        );
        assert_eq!(
            r.api_version.as_deref(),
            Some("infrastructure.cluster.x-k8s.io/v1alpha1")
        );
        let v1beta2 = tcp(json!({"machineTemplate": {"spec": {"infrastructureRef": {
            "apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "SimMachineTemplate", "name": "t2"}}}}));
        let r = TemplateRef::of(&v1beta2).expect("a reference");
        assert_eq!((r.api_version, r.name.as_str()), (None, "t2"));
    }
}
