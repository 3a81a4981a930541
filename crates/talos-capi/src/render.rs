//! `talos-capi render`: an offline preview, for GitOps review in CI, of the machine
//! configurations that TalosConfigs, TalosConfigTemplates, TalosControlPlanes and
//! TalosControlPlaneTemplates in YAML files yield — rendered by the same code the manager runs,
//! then validated as Talos validates them. Exit 1 if any object fails, naming each.
//!
//! The per-machine values patches reference (`((ipam.nodes.address))`, …) come from
//! `--value` / `--values`, or placeholders with `--placeholders` (see [`values`]).

use std::path::{Path, PathBuf};

use api::bootstrap::v1alpha3::{GenerateType, TalosConfigSpec};
use api::capi::{ApiEndpoint, Cluster, ClusterSpec, Machine, MachineSpec};
use clap::Args;
use controller::bootstrap::render::{machine_config_noting_moved_fields, machine_values};
use machineconfig::limits::{LIMITS, Limits, ParseError};
use machineconfig::validate::Mode;
use machineconfig::{Contract, SecretsBundle};
use serde::Deserialize;
use serde_json::Value;

use crate::generate::{Failure, fail, read_limited};

mod values;

use values::Given;

/// Per manifest file: the engine's limits, with room for many objects in one file (manifests in
/// Git are small; anything larger is not a manifest).
const FILE_LIMITS: Limits = Limits {
    input_bytes: 4 * 1024 * 1024,
    documents: 1000,
    values: 1_000_000,
    text_bytes: 16 * 1024 * 1024,
    ..LIMITS
};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// YAML files (multi-document) or directories of *.yaml / *.yml files. Clusters,
    /// TalosConfigs, TalosConfigTemplates, TalosControlPlanes and TalosControlPlaneTemplates are
    /// read; other kinds are skipped.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Render only the objects with this name.
    #[arg(long)]
    name: Option<String>,
    /// The cluster's secrets bundle (`talos-capi gen secrets`, or `talosctl gen secrets`);
    /// without it a fresh one is generated, and the configs differ from the manager's only in
    /// their secrets.
    #[arg(long)]
    with_secrets: Option<PathBuf>,
    /// For objects whose Cluster is not in the files: the cluster's name...
    #[arg(long, default_value = "cluster")]
    cluster_name: String,
    /// ...and its control-plane endpoint (https://host:port), also used for a Cluster whose
    /// endpoint is set later (by its infrastructure provider or a ClusterClass patch).
    #[arg(long, default_value = "https://192.0.2.1:6443")]
    endpoint: String,
    /// Kubernetes version of machines not made by a TalosControlPlane (Machine.spec.version).
    #[arg(long)]
    kubernetes_version: Option<String>,
    /// Validation mode: metal, cloud or container.
    #[arg(short = 'm', long, default_value = "metal")]
    mode: Mode,
    /// Treat unknown fields as errors in validation.
    #[arg(long)]
    strict: bool,
    /// Write each configuration to `<kind>-<name>.yaml` here (mode 0600: they hold the
    /// bundle's secrets) instead of printing them.
    #[arg(short = 'o', long)]
    out_dir: Option<PathBuf>,
    /// Overwrite existing files in --out-dir.
    #[arg(long)]
    force: bool,
    /// A per-machine value patches reference, as NAME=VALUE (repeatable): machine.name,
    /// infrastructureMachine.name, machine.failureDomain, cluster.name, and for each pool of
    /// addressesFromPools ipam.<pool>.address and ipam.<pool>.prefix (both needed) and
    /// ipam.<pool>.gateway. Over --values.
    #[arg(long = "value", value_name = "NAME=VALUE")]
    value: Vec<String>,
    /// A YAML file mapping value names (as --value takes them) to values.
    #[arg(long = "values", value_name = "FILE")]
    values_file: Option<PathBuf>,
    /// Fill in values neither given nor known offline with placeholders (named on stderr):
    /// the machine's name for infrastructureMachine.name, placeholder-failure-domain, and
    /// addresses from 192.0.2.0/24 (192.0.2.10 on, one per pool; prefix 24, gateway 192.0.2.1).
    #[arg(long)]
    placeholders: bool,
}

/// One object to render: what it is (for messages), its TalosConfig spec, the cluster it
/// belongs to (by name, if known) and its machines' Kubernetes version.
struct Target {
    kind: &'static str,
    name: String,
    what: String,
    spec: Result<TalosConfigSpec, String>,
    cluster: Option<String>,
    version: Option<String>,
}

pub fn render(args: RenderArgs) -> Result<(), Failure> {
    let mut docs = Vec::new();
    for path in &args.files {
        for file in yaml_files(path)? {
            docs.extend(documents(&file)?);
        }
    }
    let clusters: Vec<Cluster> = docs
        .iter()
        .filter(|d| is(d, "cluster.x-k8s.io/", "Cluster"))
        .filter_map(|d| serde_json::from_value(d.clone()).ok())
        .map(|c| with_infrastructure_endpoint(c, &docs))
        .collect();
    let targets: Vec<Target> = docs
        .iter()
        .filter_map(target)
        .filter(|t| args.name.as_ref().is_none_or(|n| *n == t.name))
        .collect();
    if targets.is_empty() {
        return Err(fail(
            "no TalosConfig, TalosConfigTemplate, TalosControlPlane or TalosControlPlaneTemplate found",
        ));
    }
    let given = given_values(&args)?;
    warn_of_pools_no_object_names(&given, &targets);
    let bundle = match &args.with_secrets {
        Some(path) => {
            SecretsBundle::from_yaml(&read_limited(path, LIMITS.input_bytes)?).map_err(fail)?
        }
        None => SecretsBundle::generate(Contract::DEFAULT).map_err(fail)?,
    };
    let fallback = fallback_cluster(&args)?;
    let mut failures = Vec::new();
    for t in &targets {
        let cluster = cluster_of(t, &clusters, &fallback);
        match render_one(t, &cluster, &bundle, &args, &given) {
            Ok(rendered) => write(t, &cluster, rendered, &args)?,
            Err(message) => failures.push(format!("{}: {message}", t.what)),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let n = failures.len();
    Err(fail(format!(
        "{n} of {} object{} failed:\n{}",
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        failures
            .iter()
            .map(|f| format!("  * {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    )))
}

/// The values of --values, then --value over them.
fn given_values(args: &RenderArgs) -> Result<Given, Failure> {
    let text = match &args.values_file {
        Some(path) => Some((path, read_limited(path, LIMITS.input_bytes)?)),
        None => None,
    };
    let file = text
        .as_ref()
        .map(|(path, text)| (path.as_path(), text.as_str()));
    Given::parse(file, &args.value).map_err(fail)
}

/// A pool given that no object names in addressesFromPools is likely a typo.
fn warn_of_pools_no_object_names(given: &Given, targets: &[Target]) {
    for pool in given.pools() {
        let named = targets.iter().any(|t| {
            t.spec.as_ref().is_ok_and(|s| {
                s.addresses_from_pools
                    .iter()
                    .flatten()
                    .any(|p| p.name == pool)
            })
        });
        if !named {
            eprintln!(
                "warning: values are given for pool {pool:?}, which no object names in addressesFromPools"
            );
        }
    }
}

/// The Cluster `t` belongs to: its own if in the files, the only one in the files, or the
/// fallback; with --endpoint for one whose endpoint comes later (from a ClusterClass patch, say).
fn cluster_of(t: &Target, clusters: &[Cluster], fallback: &Cluster) -> Cluster {
    let cluster = t
        .cluster
        .as_ref()
        .and_then(|name| {
            clusters
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
        })
        .or_else(|| (clusters.len() == 1).then(|| &clusters[0]))
        .unwrap_or(fallback);
    let mut cluster = cluster.clone();
    if cluster.endpoint().is_none() {
        cluster.spec.control_plane_endpoint = fallback.spec.control_plane_endpoint.clone();
    }
    cluster
}

/// Report `rendered`'s warnings and placeholders on stderr, and print or write its
/// configuration.
fn write(
    t: &Target,
    cluster: &Cluster,
    rendered: Rendered,
    args: &RenderArgs,
) -> Result<(), Failure> {
    if !rendered.placeholders.is_empty() {
        eprintln!(
            "placeholders: {}: {}",
            t.what,
            rendered.placeholders.join(", ")
        );
    }
    for w in rendered.warnings {
        eprintln!("warning: {}: {w}", t.what);
    }
    match &args.out_dir {
        Some(dir) => {
            let file = dir.join(format!("{}-{}.yaml", t.kind.to_lowercase(), t.name));
            crate::generate::write_private(&file, &rendered.yaml, args.force)?;
        }
        None => {
            println!("# {} (cluster {})", t.what, name_of(cluster));
            println!("---\n{}", rendered.yaml.trim_end());
        }
    }
    Ok(())
}

/// As Cluster API does: a Cluster without a control-plane endpoint takes its infrastructure
/// cluster's (a ProxmoxCluster's, say), when that object is in the files.
fn with_infrastructure_endpoint(mut cluster: Cluster, docs: &[Value]) -> Cluster {
    if cluster.endpoint().is_some() {
        return cluster;
    }
    let Some(reference) = &cluster.spec.infrastructure_ref else {
        return cluster;
    };
    let endpoint = docs
        .iter()
        .find(|d| {
            d["kind"] == reference.kind.as_str() && d["metadata"]["name"] == reference.name.as_str()
        })
        .and_then(|d| {
            serde_json::from_value::<ApiEndpoint>(d["spec"]["controlPlaneEndpoint"].clone()).ok()
        });
    if let Some(endpoint) = endpoint.filter(|e| !e.host.is_empty()) {
        cluster.spec.control_plane_endpoint = Some(endpoint);
    }
    cluster
}

fn name_of(cluster: &Cluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
}

/// The Cluster assumed for objects whose own is not in the files.
fn fallback_cluster(args: &RenderArgs) -> Result<Cluster, Failure> {
    let endpoint = machineconfig::render::Endpoint::parse(&args.endpoint)
        .map_err(|e| fail(format!("--endpoint {:?}: {e}", args.endpoint)))?;
    let mut cluster = Cluster::new(&args.cluster_name, ClusterSpec::default());
    cluster.spec.control_plane_endpoint = Some(ApiEndpoint {
        host: endpoint.host,
        port: i32::from(endpoint.port),
    });
    Ok(cluster)
}

/// One object's configuration, what Talos (or the moved fields) warn of, and the placeholders
/// it was rendered with.
struct Rendered {
    yaml: String,
    warnings: Vec<String>,
    placeholders: Vec<String>,
}

fn render_one(
    t: &Target,
    cluster: &Cluster,
    bundle: &SecretsBundle,
    args: &RenderArgs,
    given: &Given,
) -> Result<Rendered, String> {
    let spec = t.spec.as_ref().map_err(Clone::clone)?;
    let machine = Machine::new(
        &t.name,
        MachineSpec {
            cluster_name: name_of(cluster).to_owned(),
            version: t
                .version
                .clone()
                .or_else(|| args.kubernetes_version.clone()),
            ..MachineSpec::default()
        },
    );
    let base = machine_values(&machine, name_of(cluster), Default::default());
    let (values, placeholders) =
        values::resolve(spec, base, given, args.placeholders).map_err(|e| e.to_string())?;
    let (yaml, moved) = machine_config_noting_moved_fields(
        spec,
        &machine,
        cluster,
        name_of(cluster),
        bundle,
        &values,
    )
    .map_err(|e| e.to_string())?;
    let docs = machineconfig::render::from_yaml(&yaml).map_err(|e| e.to_string())?;
    let report = machineconfig::validate(&docs, args.mode, args.strict);
    // Fields the patches set that Talos v1.14 moved: said whether Talos accepts the result or not.
    if !report.is_valid() {
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "Talos would refuse the rendered configuration ({} mode): {}",
            args.mode,
            errors
                .iter()
                .chain(&moved)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    warnings.extend(moved);
    Ok(Rendered {
        yaml,
        warnings,
        placeholders,
    })
}

fn is(doc: &Value, api_version_prefix: &str, kind: &str) -> bool {
    doc["kind"] == kind
        && doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(api_version_prefix))
}

/// The object's TalosConfig spec and context, for the four kinds that carry one.
fn target(doc: &Value) -> Option<Target> {
    const BOOTSTRAP: &str = "bootstrap.cluster.x-k8s.io/";
    const CONTROL_PLANE: &str = "controlplane.cluster.x-k8s.io/";
    let meta = &doc["metadata"];
    let name = meta["name"].as_str().unwrap_or("(unnamed)");
    let qualified = match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    };
    let label = meta["labels"]["cluster.x-k8s.io/cluster-name"]
        .as_str()
        .map(str::to_owned);
    let spec_at = |v: &Value| TalosConfigSpec::deserialize(v).map_err(|e| e.to_string());
    let control_plane = |v: &Value| {
        spec_at(v).map(|mut s| {
            // As the manager makes every control-plane machine's TalosConfig.
            s.generate_type = Some(GenerateType::Controlplane);
            s
        })
    };
    let version = |v: &Value| v.as_str().map(str::to_owned);
    let (kind, spec, version) = if is(doc, BOOTSTRAP, "TalosConfig") {
        ("TalosConfig", spec_at(&doc["spec"]), None)
    } else if is(doc, BOOTSTRAP, "TalosConfigTemplate") {
        (
            "TalosConfigTemplate",
            spec_at(&doc["spec"]["template"]["spec"]),
            None,
        )
    } else if is(doc, CONTROL_PLANE, "TalosControlPlane") {
        (
            "TalosControlPlane",
            control_plane(&doc["spec"]["controlPlaneConfig"]["controlplane"]),
            version(&doc["spec"]["version"]),
        )
    } else if is(doc, CONTROL_PLANE, "TalosControlPlaneTemplate") {
        (
            "TalosControlPlaneTemplate",
            control_plane(&doc["spec"]["template"]["spec"]["controlPlaneConfig"]["controlplane"]),
            None,
        )
    } else {
        return None;
    };
    Some(Target {
        kind,
        name: name.to_owned(),
        what: format!("{kind} {qualified}"),
        spec,
        cluster: label,
        version,
    })
}

/// `path` itself, or the YAML files directly inside it (sorted).
fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, Failure> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every non-empty YAML document of `path`.
fn documents(path: &Path) -> Result<Vec<Value>, Failure> {
    let text = read_limited(path, FILE_LIMITS.input_bytes)?;
    machineconfig::limits::documents(&text, &FILE_LIMITS).map_err(|e| match e {
        ParseError::Yaml(e) => fail(format!("{}: {e}", path.display())),
        ParseError::Limit(e) => fail(format!("{}: {e}", path.display())),
    })
}
