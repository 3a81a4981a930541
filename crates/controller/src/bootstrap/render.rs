//! Decide, without I/O: the machine configuration a TalosConfig renders to, given its Machine,
//! its Cluster and the cluster's secrets bundle.

use api::bootstrap::v1alpha3::{GenerateType, HostnameSource, TalosConfig, TalosConfigSpec};
use api::capi::{Cluster, Machine};
use machineconfig::render::Defaults;
use machineconfig::values::MachineValues;
use machineconfig::{
    Contract, Input, MachineType, Patch, Patcher, RENDER_LIMITS, RenderBudget, SecretsBundle,
};

use crate::SpecError;

/// A Kubernetes Secret holds at most 1 MiB; Talos reads its configuration from user data.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Strategic patches and `data` together: generous for real configs, bounded for hostile ones.
pub const MAX_INPUT_BYTES: usize = 512 * 1024;

/// The one place generateType maps to a machine type: `None` means "use spec.data".
pub fn machine_type(generate: GenerateType) -> Option<MachineType> {
    match generate {
        GenerateType::Controlplane | GenerateType::Init => Some(MachineType::Controlplane),
        GenerateType::Worker | GenerateType::Join => Some(MachineType::Worker),
        GenerateType::None => None,
    }
}

/// The configuration for `spec`, owned by `machine` in `cluster`, its patches given the
/// machine's `values`.
pub fn machine_config(
    spec: &TalosConfigSpec,
    machine: &Machine,
    cluster: &Cluster,
    cluster_name: &str,
    bundle: &SecretsBundle,
    values: &MachineValues,
) -> Result<String, SpecError> {
    machine_config_noting_moved_fields(spec, machine, cluster, cluster_name, bundle, values)
        .map(|(text, _)| text)
}

/// The per-machine values of `machine` in cluster `cluster_name`, with the addresses of its
/// `pools` (the pools its spec names, bound or not).
pub fn machine_values(
    machine: &Machine,
    cluster_name: &str,
    pools: std::collections::BTreeMap<String, machineconfig::values::Pool>,
) -> MachineValues {
    let named = |n: &str| Some(n.to_owned()).filter(|n| !n.is_empty());
    MachineValues {
        machine_name: machine.metadata.name.as_deref().and_then(named),
        infrastructure_machine_name: named(&machine.spec.infrastructure_ref.name),
        failure_domain: machine.spec.failure_domain.as_deref().and_then(named),
        cluster_name: named(cluster_name),
        pools,
    }
}

/// [`machine_config`], and, when `spec` renders contract v1.14 or later, the v1alpha1 fields
/// its patches set that Talos v1.14 moved into documents of their own: one notice per field and
/// patch, naming the patch as the spec does (`spec.configPatches`, `spec.strategicPatches[i]`),
/// noted as each patch is applied.
pub fn machine_config_noting_moved_fields(
    spec: &TalosConfigSpec,
    machine: &Machine,
    cluster: &Cluster,
    cluster_name: &str,
    bundle: &SecretsBundle,
    values: &MachineValues,
) -> Result<(String, Vec<String>), SpecError> {
    check_input_size(spec)?;
    let generate = spec.generate_type.ok_or_else(|| {
        SpecError::Invalid(
            "spec.generateType is required: controlplane, worker, init or none".into(),
        )
    })?;
    // One budget for the whole render: the data it starts from and every patch together.
    let budget = RenderBudget::new(RENDER_LIMITS);
    let docs = match machine_type(generate) {
        Some(machine_type) => {
            let input = input(spec, machine, cluster, cluster_name)?;
            machineconfig::render(machine_type, &input, bundle).map_err(SpecError::Render)?
        }
        None => {
            let data = spec.data.as_deref().unwrap_or_default();
            machineconfig::render::from_yaml_within(data, &budget).map_err(SpecError::Render)?
        }
    };
    let mut patcher = Patcher::new(docs, &budget).map_err(SpecError::Render)?;
    let notes = each_patch(spec, &budget, Some(values), |patch| {
        patcher.apply(patch).map_err(SpecError::Render)
    })?;
    let text = machineconfig::render::to_yaml(&patcher.finish()).map_err(SpecError::Render)?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(SpecError::TooLarge {
            what: "the rendered machine configuration".into(),
            size: text.len(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok((text, notes))
}

/// The moved-field notices of [`machine_config_noting_moved_fields`] without rendering: the
/// patches parsed within the same limits, nothing applied. For an object that renders nothing
/// itself (a TalosControlPlane's controlPlaneConfig). Before contract v1.14 there is nothing to
/// note, and nothing is parsed.
pub fn moved_fields(spec: &TalosConfigSpec) -> Result<Vec<String>, SpecError> {
    if !notes_moved_fields(spec) {
        return Ok(Vec::new());
    }
    check_input_size(spec)?;
    each_patch(spec, &RenderBudget::new(RENDER_LIMITS), None, |_| Ok(()))
}

/// Whether `spec` renders contract v1.14 or later, whose moved fields are noted.
fn notes_moved_fields(spec: &TalosConfigSpec) -> bool {
    Contract::parse(spec.talos_version.as_deref().unwrap_or_default())
        .is_ok_and(|c| c.at_least(1, 14))
}

fn check_input_size(spec: &TalosConfigSpec) -> Result<(), SpecError> {
    let input_size = spec.data.as_ref().map_or(0, String::len)
        + spec
            .strategic_patches
            .iter()
            .flatten()
            .map(String::len)
            .sum::<usize>();
    if input_size > MAX_INPUT_BYTES {
        return Err(SpecError::TooLarge {
            what: "spec.data and spec.strategicPatches".into(),
            size: input_size,
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

/// Each of `spec`'s patches parsed within `budget`, given `values` (when rendering), and
/// handed to `apply` in CABPT's order (see [`parsed_patches`]). Returns, for contract v1.14 on,
/// the moved-field notices.
fn each_patch(
    spec: &TalosConfigSpec,
    budget: &RenderBudget,
    values: Option<&MachineValues>,
    mut apply: impl FnMut(Patch) -> Result<(), SpecError>,
) -> Result<Vec<String>, SpecError> {
    let noting = notes_moved_fields(spec);
    let mut notes = Vec::new();
    parsed_patches(spec, budget, |name, mut patch| {
        if let Some(values) = values {
            machineconfig::values::substitute_within(&mut patch, values, budget).map_err(
                |source| SpecError::Values {
                    patch: name(),
                    source: Box::new(source),
                },
            )?;
        }
        if noting {
            let moved = machineconfig::migrate::moved_fields(&patch);
            notes.extend(moved.iter().map(|m| format!("{} {m}", name())));
        }
        apply(patch)
    })?;
    Ok(notes)
}

/// Each of `spec`'s patches parsed within `budget` and handed to `each`, with its name as the
/// spec names it (`spec.configPatches`, `spec.strategicPatches[i]`), in CABPT's order:
/// configPatches (JSON 6902) first, then strategicPatches, each parsed only once the one
/// before is handled and dropped.
fn parsed_patches(
    spec: &TalosConfigSpec,
    budget: &RenderBudget,
    mut each: impl FnMut(&dyn Fn() -> String, Patch) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    if let Some(ops) = spec.config_patches.as_ref().filter(|o| !o.is_empty()) {
        // Values over the limits are refused before they are copied into one list.
        Patch::check_json6902_values(ops.iter().filter_map(|o| o.value.as_ref()))
            .map_err(SpecError::Render)?;
        let value = serde_json::to_value(ops)
            .map_err(|source| SpecError::PatchEncoding { index: 0, source })?;
        let patch = Patch::json6902_within(value, budget).map_err(SpecError::Render)?;
        each(&|| "spec.configPatches".to_owned(), patch)?;
    }
    for (i, text) in spec.strategic_patches.iter().flatten().enumerate() {
        let patch = Patch::parse_within(text, budget).map_err(SpecError::Render)?;
        each(&|| format!("spec.strategicPatches[{i}]"), patch)?;
    }
    Ok(())
}

/// Every per-machine value reference in `spec`'s patches that `values` cannot resolve, with
/// the name of the patch it is in, in the patches' order: all that a render would refuse, where
/// the render stops at the first (an offline preview names them all at once). `Err` when a
/// patch cannot be parsed or walked at all.
pub fn unresolved_values(
    spec: &TalosConfigSpec,
    values: &MachineValues,
) -> Result<Vec<(String, machineconfig::values::ValueError)>, SpecError> {
    check_input_size(spec)?;
    let budget = RenderBudget::new(RENDER_LIMITS);
    let mut found = Vec::new();
    parsed_patches(spec, &budget, |name, patch| {
        let refused =
            machineconfig::values::unresolved(&patch, values, &budget).map_err(|source| {
                SpecError::Values {
                    patch: name(),
                    source: Box::new(source),
                }
            })?;
        found.extend(refused.into_iter().map(|e| (name(), e)));
        Ok(())
    })?;
    Ok(found)
}

/// A digest of what a machine configuration means: its documents parsed (within the parser's
/// limits), [`canonical`], hashed. Key order, quoting, layout, comments, document separators,
/// a trailing newline, and a key whose value is an empty mapping or null (which Talos reads as
/// the key left out; CABPT's YAML encoder drops some that talosctl's keeps, `registries: {}`)
/// do not change it; any value that differs does. `None` when `text` is not a YAML stream of
/// documents.
pub fn documents_digest(text: &str) -> Option<String> {
    let docs = machineconfig::render::from_yaml(text).ok()?;
    let canonical = serde_json::to_string(&canonical(serde_json::Value::Array(docs))).ok()?;
    Some(crate::cache::value_digest(canonical.as_bytes()))
}

/// `value` with the keys of each mapping in order (whatever order the JSON map type keeps),
/// and without the keys whose value is an empty mapping or null.
fn canonical(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let empty = |v: &Value| v.is_null() || v.as_object().is_some_and(serde_json::Map::is_empty);
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.into_iter().filter(|(_, v)| !empty(v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Whether a stored machine configuration (`stored`, say CABPT's) is the one `rendered` is,
/// once both are parsed: the same documents, whatever their formatting. Text that does not
/// parse is compared as it is.
pub fn same_documents(stored: &str, rendered: &str) -> bool {
    stored == rendered
        || matches!(
            (documents_digest(stored), documents_digest(rendered)),
            (Some(a), Some(b)) if a == b
        )
}

/// A digest of what the render of `config` for `machine` in `cluster` depends on: its spec (by
/// the object's uid and generation), the render inputs taken from the Machine and the Cluster
/// (the same [`Input`] [`machine_config`] renders with), the machine's per-machine `values`,
/// and `bundle`, the identity of the bundle Secret's version. `None` when the object has no
/// generation (nothing to compare).
pub fn inputs_digest(
    config: &TalosConfig,
    (machine, cluster, cluster_name): (&Machine, &Cluster, &str),
    values: &MachineValues,
    bundle: &str,
) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    config.metadata.uid.hash(&mut hasher);
    config.metadata.generation?.hash(&mut hasher);
    bundle.hash(&mut hasher);
    format!("{values:?}").hash(&mut hasher);
    if config.spec.generate_type.and_then(machine_type).is_some() {
        // What fails here fails before any parsing: no need to remember it.
        let input = input(&config.spec, machine, cluster, cluster_name).ok()?;
        format!("{input:?}").hash(&mut hasher);
    }
    Some(hasher.finish())
}

fn input(
    spec: &TalosConfigSpec,
    machine: &Machine,
    cluster: &Cluster,
    cluster_name: &str,
) -> Result<Input, SpecError> {
    let endpoint = cluster
        .endpoint()
        .ok_or_else(|| SpecError::Invalid("the Cluster has no spec.controlPlaneEndpoint".into()))?;
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let contract = Contract::parse(spec.talos_version.as_deref().unwrap_or_default())
        .map_err(SpecError::Render)?;
    let mut input = Input::for_contract(
        cluster_name,
        &format!("https://{host}:{}", endpoint.port),
        contract,
    );
    // As CABPT renders: no install disk or image, which the platform (or a patch) provides.
    input.install_disk = String::new();
    input.install_image = String::new();
    input.kubernetes_version = machine
        .spec
        .version
        .as_deref()
        .map(|v| v.trim_start_matches('v').to_owned())
        .unwrap_or_else(|| Defaults::of(contract).kubernetes_version.to_owned());
    if let Some(network) = &cluster.spec.cluster_network {
        if let Some(domain) = network.service_domain.as_ref().filter(|d| !d.is_empty()) {
            input.dns_domain = domain.clone();
        }
        if let Some(pods) = network.pods.as_ref().filter(|p| !p.cidr_blocks.is_empty()) {
            input.pod_subnets = pods.cidr_blocks.clone();
        }
        if let Some(services) = network
            .services
            .as_ref()
            .filter(|s| !s.cidr_blocks.is_empty())
        {
            input.service_subnets = services.cidr_blocks.clone();
        }
    }
    input.hostname = match spec.hostname.as_ref().and_then(|h| h.source) {
        Some(HostnameSource::MachineName) => machine.metadata.name.clone(),
        Some(HostnameSource::InfrastructureName) => {
            Some(machine.spec.infrastructure_ref.name.clone()).filter(|n| !n.is_empty())
        }
        None => None,
    };
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::bootstrap::v1alpha3::{ConfigPatch, HostnameSpec, PatchOp};
    use api::capi::{ApiEndpoint, ClusterNetwork, ClusterSpec, MachineSpec, NetworkRanges};
    use serde_json::Value;
    use std::sync::OnceLock;

    fn bundle() -> &'static SecretsBundle {
        static B: OnceLock<SecretsBundle> = OnceLock::new();
        B.get_or_init(|| SecretsBundle::generate(Contract::NEWEST).expect("bundle"))
    }

    fn cluster() -> Cluster {
        Cluster::new(
            "c",
            ClusterSpec {
                control_plane_endpoint: Some(ApiEndpoint {
                    host: "192.168.1.100".into(),
                    port: 6443,
                }),
                cluster_network: Some(ClusterNetwork {
                    service_domain: Some("corp.local".into()),
                    pods: Some(NetworkRanges {
                        cidr_blocks: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()],
                    }),
                    services: Some(NetworkRanges {
                        cidr_blocks: vec!["10.96.0.0/12".into(), "fd00:10:96::/112".into()],
                    }),
                    api_server_port: None,
                }),
                ..ClusterSpec::default()
            },
        )
    }

    fn machine() -> Machine {
        let mut m = Machine::new(
            "c-cp-0",
            MachineSpec {
                cluster_name: "c".into(),
                version: Some("v1.35.0".into()),
                ..MachineSpec::default()
            },
        );
        m.spec.infrastructure_ref.name = "proxmox-vm-17".into();
        m
    }

    fn docs(text: &str) -> Vec<Value> {
        machineconfig::render::from_yaml(text).expect("rendered YAML parses")
    }

    /// `spec` rendered for [`machine`] of cluster "c", with no per-machine values.
    fn render_for_a_machine(spec: &TalosConfigSpec) -> Result<String, SpecError> {
        machine_config(
            spec,
            &machine(),
            &cluster(),
            "c",
            bundle(),
            &MachineValues::default(),
        )
    }

    fn spec(generate: GenerateType) -> TalosConfigSpec {
        TalosConfigSpec {
            generate_type: Some(generate),
            talos_version: Some("v1.11".into()),
            ..TalosConfigSpec::default()
        }
    }

    /// What the real CABPT v0.6.12 rendered for two machines (its bytes as it stored them), with
    /// the inputs and the throwaway bundle it rendered from: written by the `capture_cabpt_bytes`
    /// test in crates/controller/tests/cabpt.rs.
    mod cabpt {
        pub const INPUTS: &str = include_str!("../../tests/fixtures/cabpt-v0.6.12/inputs.json");
        pub const BUNDLE: &str = include_str!("../../tests/fixtures/cabpt-v0.6.12/bundle.yaml");
        pub const CP_0: &str = include_str!("../../tests/fixtures/cabpt-v0.6.12/cp-0.yaml");
        pub const W_0: &str = include_str!("../../tests/fixtures/cabpt-v0.6.12/w-0.yaml");
    }

    /// Our render of the captured inputs of machine `name`.
    fn ours_of_cabpt_inputs(name: &str) -> String {
        let inputs: Value = serde_json::from_str(cabpt::INPUTS).expect("inputs.json");
        let read = |v: &Value| v.clone();
        let cluster: Cluster = serde_json::from_value(read(&inputs["cluster"])).expect("Cluster");
        let machine: Machine =
            serde_json::from_value(read(&inputs["machines"][name])).expect("Machine");
        let spec: TalosConfigSpec =
            serde_json::from_value(read(&inputs["configs"][name])).expect("spec");
        let bundle = SecretsBundle::from_yaml(cabpt::BUNDLE).expect("bundle");
        machine_config(
            &spec,
            &machine,
            &cluster,
            "peer",
            &bundle,
            &MachineValues::default(),
        )
        .expect("renders")
    }

    /// CABPT's YAML encoder lays the same documents out differently (indentation, quoting, key
    /// order): compared parsed, an adopted machine's data is what we render.
    #[test]
    fn cabpt_bytes_are_the_documents_we_render() {
        for (name, theirs) in [("cp-0", cabpt::CP_0), ("w-0", cabpt::W_0)] {
            let ours = ours_of_cabpt_inputs(name);
            assert_ne!(theirs, ours, "{name}: the bytes differ");
            assert!(
                same_documents(theirs, &ours),
                "{name}: the documents do not"
            );
            assert_eq!(documents_digest(theirs), documents_digest(&ours), "{name}");
        }
    }

    /// A value that differs is a difference, however it is written.
    #[test]
    fn a_real_change_still_differs() {
        let ours = ours_of_cabpt_inputs("w-0");
        let changed = cabpt::W_0.replacen("type: worker", "type: controlplane", 1);
        assert_ne!(changed, cabpt::W_0);
        assert!(!same_documents(&changed, &ours));
        let one_more = format!(
            "{}---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w\n",
            cabpt::W_0
        );
        assert!(!same_documents(&one_more, &ours), "a document more");
        let quoted = cabpt::W_0.replacen("debug: false", "debug: \"false\"", 1);
        assert!(!same_documents(&quoted, &ours), "a string is not a boolean");
        assert!(
            !same_documents("not: [yaml", &ours),
            "text that does not parse"
        );
    }

    /// Layout, key order, quoting, comments, separators, the trailing newline, and an empty
    /// mapping or null for a key left out are no difference.
    #[test]
    fn formatting_is_no_difference() {
        let a = "version: v1alpha1\nmachine:\n  type: worker\n  token: abc\n  network: {}\n---\nkind: X\nname: 'n'\n";
        let b = "# a comment\n---\nmachine: {token: \"abc\", type: worker, registries: {}, env: null}\nversion: v1alpha1\n---\nname: n\nkind: X";
        assert!(same_documents(a, b));
        assert!(!same_documents(a, &b.replace("X", "Y")));
        // A mapping that holds something is no empty mapping, nor is an empty list.
        assert!(!same_documents(
            a,
            &b.replace("registries: {}", "registries: {mirrors: {}}")
        ));
        assert!(!same_documents(
            a,
            &b.replace("registries: {}", "registries: []")
        ));
    }

    #[test]
    fn cluster_network_version_and_endpoint_propagate() {
        let text = render_for_a_machine(&spec(GenerateType::Controlplane)).expect("renders");
        let d = &docs(&text)[0];
        assert_eq!(
            d["cluster"]["controlPlane"]["endpoint"],
            "https://192.168.1.100:6443"
        );
        assert_eq!(d["cluster"]["clusterName"], "c");
        assert_eq!(d["cluster"]["network"]["dnsDomain"], "corp.local");
        assert_eq!(
            d["cluster"]["network"]["podSubnets"],
            serde_json::json!(["10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert_eq!(
            d["cluster"]["network"]["serviceSubnets"],
            serde_json::json!(["10.96.0.0/12", "fd00:10:96::/112"])
        );
        assert!(
            d["cluster"]["apiServer"]["image"]
                .as_str()
                .is_some_and(|i| i.ends_with(":v1.35.0")),
            "{}",
            d["cluster"]["apiServer"]["image"]
        );
    }

    #[test]
    fn workers_carry_no_ca_keys() {
        let text = render_for_a_machine(&spec(GenerateType::Worker)).expect("renders");
        let d = &docs(&text)[0];
        assert_eq!(d["machine"]["type"], "worker");
        assert!(
            d["cluster"]["ca"]["key"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        assert!(
            d["machine"]["ca"]["key"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }

    #[test]
    fn hostname_from_either_source() {
        for (source, expected) in [
            (HostnameSource::MachineName, "c-cp-0"),
            (HostnameSource::InfrastructureName, "proxmox-vm-17"),
        ] {
            let mut s = spec(GenerateType::Worker);
            s.talos_version = Some("v1.13".into());
            s.hostname = Some(HostnameSpec {
                source: Some(source),
            });
            let text = render_for_a_machine(&s).expect("renders");
            assert!(
                docs(&text)
                    .iter()
                    .any(|d| d["kind"] == "HostnameConfig" && d["hostname"] == expected),
                "{expected} in {text}"
            );
        }
    }

    #[test]
    fn json_patches_then_strategic_patches() {
        let mut s = spec(GenerateType::Worker);
        // No install disk is rendered (as CABPT), so the JSON patch adds one.
        s.config_patches = Some(vec![ConfigPatch {
            op: PatchOp::Add,
            path: "/machine/install/disk".into(),
            value: Some("/dev/vda".into()),
            from: None,
        }]);
        s.strategic_patches = Some(vec![
            "machine:\n  install:\n    disk: /dev/nvme0n1\n".into(),
        ]);
        let text = render_for_a_machine(&s).expect("renders");
        assert_eq!(docs(&text)[0]["machine"]["install"]["disk"], "/dev/nvme0n1");
    }

    #[test]
    fn a_bad_patch_is_a_spec_error_naming_the_problem() {
        let mut s = spec(GenerateType::Worker);
        s.talos_version = Some("v1.13".into());
        s.config_patches = Some(vec![ConfigPatch {
            op: PatchOp::Add,
            path: "/machine/network/hostname".into(),
            value: Some("x".into()),
            from: None,
        }]);
        let err = render_for_a_machine(&s).unwrap_err();
        assert_eq!(err.reason(), api::conditions::reason::PATCH_FAILED);
        assert!(err.to_string().contains("JSON6902"), "{err}");
    }

    #[test]
    fn generate_type_none_uses_data_and_still_patches_it() {
        let mut s = spec(GenerateType::None);
        s.data = Some("version: v1alpha1\nmachine:\n  type: worker\n  token: t\ncluster:\n  clusterName: own\n".into());
        s.strategic_patches = Some(vec!["machine:\n  install:\n    disk: /dev/vdb\n".into()]);
        let text = render_for_a_machine(&s).expect("renders");
        let d = &docs(&text)[0];
        assert_eq!(d["cluster"]["clusterName"], "own");
        assert_eq!(d["machine"]["install"]["disk"], "/dev/vdb");
    }

    #[test]
    fn an_output_over_1_mib_is_refused_though_the_input_fits() {
        let mut s = spec(GenerateType::None);
        let big = "x".repeat(400 * 1024);
        s.data = Some(format!(
            "version: v1alpha1\nmachine:\n  type: worker\n  token: t\n  env:\n    A: {big}\ncluster:\n  clusterName: own\n"
        ));
        // Two copies of a 400 KiB value: 1.2 MiB out of 400 KiB in.
        let copy = |to: &str| ConfigPatch {
            op: PatchOp::Copy,
            path: format!("/machine/env/{to}"),
            value: None,
            from: Some("/machine/env/A".into()),
        };
        s.config_patches = Some(vec![copy("B"), copy("C")]);
        let err = render_for_a_machine(&s).unwrap_err();
        match &err {
            SpecError::TooLarge { what, size, limit } => {
                assert!(what.contains("rendered machine configuration"), "{err}");
                assert!(*size > MAX_CONFIG_BYTES, "{err}");
                assert_eq!(*limit, MAX_CONFIG_BYTES);
            }
            other => panic!("not refused for its size: {other}"),
        }
        // One copy fits.
        s.config_patches = Some(vec![copy("B")]);
        render_for_a_machine(&s).expect("800 KiB fits");
    }

    /// Eight strategic patches, each within the per-patch limits, that expand through YAML
    /// aliases to 89,545 values apiece: refused for the render's budget of all its patches
    /// together, as a patch error that names the budget and quotes none of the input.
    #[test]
    fn patches_that_expand_are_refused_for_the_render_budget() {
        let mut patch = "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: x\n".to_owned();
        patch.push_str(&format!("a0: &a0 {{{}: {{}}}}\n", "k".repeat(190)));
        for level in 1..=4 {
            let refs: Vec<String> = (0..10).map(|j| format!("b{j}: *a{}", level - 1)).collect();
            patch.push_str(&format!("a{level}: &a{level} {{{}}}\n", refs.join(", ")));
        }
        let padding: Vec<String> = (0..200).map(|j| format!("p{j}: 0")).collect();
        patch.push_str(&format!("p: {{{}}}\nx: {{c0: *a4}}\n", padding.join(", ")));
        let mut s = spec(GenerateType::Worker);
        s.talos_version = Some("v1.13".into());
        s.strategic_patches = Some(vec![patch; 8]);
        let err = render_for_a_machine(&s).unwrap_err();
        assert!(
            matches!(
                &err,
                SpecError::Render(machineconfig::Error::Patch {
                    source: machineconfig::PatchError::Limit(
                        machineconfig::LimitError::RenderValues { .. }
                    ),
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(err.reason(), api::conditions::reason::PATCH_FAILED);
        let message = err.to_string();
        assert!(message.contains("over the render budget"), "{message}");
        assert!(!message.contains("kkkk"), "{message}");
    }

    /// What a failed render is remembered by: every input of the render, and nothing that
    /// changes without changing the render (status, labels, the resourceVersion).
    #[test]
    fn the_inputs_digest_follows_the_render_inputs_only() {
        let mut config = TalosConfig::new("c-cp-0", spec(GenerateType::Worker));
        config.metadata.uid = Some("uid-1".into());
        config.metadata.generation = Some(1);
        let digest = |config: &TalosConfig, machine: &Machine, cluster: &Cluster, bundle: &str| {
            inputs_digest(
                config,
                (machine, cluster, "c"),
                &MachineValues::default(),
                bundle,
            )
        };
        let first = digest(&config, &machine(), &cluster(), "b/1");
        assert!(first.is_some());

        let mut same = config.clone();
        same.metadata.resource_version = Some("42".into());
        same.metadata.labels = Some([("k".to_owned(), "v".to_owned())].into());
        same.status = Some(api::bootstrap::v1alpha3::TalosConfigStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        let mut booting = machine();
        booting.status = Some(api::capi::MachineStatus {
            phase: Some("Provisioning".into()),
            ..Default::default()
        });
        assert_eq!(digest(&same, &booting, &cluster(), "b/1"), first);

        let mut newer = config.clone();
        newer.metadata.generation = Some(2);
        let mut upgraded = machine();
        upgraded.spec.version = Some("v1.36.0".into());
        let mut renumbered = cluster();
        renumbered.spec.cluster_network = None;
        for (what, other) in [
            ("generation", digest(&newer, &machine(), &cluster(), "b/1")),
            (
                "machine version",
                digest(&config, &upgraded, &cluster(), "b/1"),
            ),
            (
                "cluster network",
                digest(&config, &machine(), &renumbered, "b/1"),
            ),
            ("bundle", digest(&config, &machine(), &cluster(), "b/2")),
        ] {
            assert!(other.is_some() && other != first, "{what}");
        }
        let mut unknown = config;
        unknown.metadata.generation = None;
        assert_eq!(digest(&unknown, &machine(), &cluster(), "b/1"), None);
    }

    #[test]
    fn unresolved_values_names_every_one_with_its_patch_where_the_render_stops_at_the_first() {
        use machineconfig::values::ValueError;
        let mut s = spec(GenerateType::Worker);
        s.talos_version = Some("v1.14".into());
        s.strategic_patches = Some(vec![
            "machine:\n  nodeLabels:\n    zone: ((machine.failureDomain))\n".into(),
            "apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: ((machine.name))-((ipam.nodes.address))\n".into(),
        ]);
        let values = machine_values(&machine(), "c", Default::default());
        let found = unresolved_values(&s, &values).expect("parses");
        let named: Vec<(&str, &str)> = found
            .iter()
            .map(|(patch, e)| match e {
                ValueError::NotKnownYet { name, .. } | ValueError::Unknown { name, .. } => {
                    (patch.as_str(), name.as_str())
                }
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            named,
            [
                ("spec.strategicPatches[0]", "machine.failureDomain"),
                ("spec.strategicPatches[1]", "ipam.nodes.address"),
            ]
        );
        let err = machine_config(&s, &machine(), &cluster(), "c", bundle(), &values).unwrap_err();
        assert!(
            matches!(&err, SpecError::Values { patch, .. } if patch == "spec.strategicPatches[0]"),
            "{err}"
        );

        let mut given = values;
        given.failure_domain = Some("fd-1".into());
        given.pools.insert(
            "nodes".into(),
            machineconfig::values::Pool::Bound(
                machineconfig::values::PoolAddress::new("10.5.0.12", 24, None).expect("address"),
            ),
        );
        assert!(unresolved_values(&s, &given).expect("parses").is_empty());
        let text =
            machine_config(&s, &machine(), &cluster(), "c", bundle(), &given).expect("renders");
        assert!(text.contains("hostname: c-cp-0-10.5.0.12"), "{text}");
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let mut s = spec(GenerateType::Worker);
        s.strategic_patches = Some(vec!["#".repeat(MAX_INPUT_BYTES + 1)]);
        let err = render_for_a_machine(&s).unwrap_err();
        assert!(matches!(err, SpecError::TooLarge { .. }), "{err}");
    }
}
