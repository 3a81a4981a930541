//! `talos-capi gen secrets`, `talos-capi gen config` and `talos-capi validate`: the
//! talosctl workflow of the seed walkthrough, on our configuration engine.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{
    Contract, Input, MachineType, Mode, Patch, Patcher, RENDER_LIMITS, RenderBudget, SecretsBundle,
};

#[derive(Subcommand)]
pub enum Gen {
    /// Generate a secrets bundle (as `talosctl gen secrets` does).
    Secrets {
        /// Where to write the bundle.
        #[arg(short = 'o', long = "output-file", default_value = "secrets.yaml")]
        output: PathBuf,
        /// Version contract the bundle is for.
        #[arg(long)]
        talos_version: Option<String>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Generate controlplane.yaml, worker.yaml and talosconfig for a cluster.
    Config(Box<ConfigArgs>),
}

#[derive(Args)]
pub struct ConfigArgs {
    /// Cluster name.
    cluster_name: String,
    /// Control-plane endpoint, e.g. https://192.168.1.41:6443 (or a VIP).
    endpoint: String,
    /// Use this secrets bundle instead of generating one.
    #[arg(long)]
    with_secrets: Option<PathBuf>,
    /// Patch for both machine types: @file or inline YAML/JSON (repeatable).
    #[arg(long = "config-patch", allow_hyphen_values = true)]
    config_patch: Vec<String>,
    /// Patch for the control-plane configuration only (repeatable).
    #[arg(long = "config-patch-control-plane", allow_hyphen_values = true)]
    config_patch_control_plane: Vec<String>,
    /// Patch for the worker configuration only (repeatable).
    #[arg(long = "config-patch-worker", allow_hyphen_values = true)]
    config_patch_worker: Vec<String>,
    /// Kubernetes version, e.g. 1.33.2.
    #[arg(long)]
    kubernetes_version: Option<String>,
    /// Version contract to render, e.g. v1.12 (default: the newest known).
    #[arg(long)]
    talos_version: Option<String>,
    /// Install disk.
    #[arg(long)]
    install_disk: Option<String>,
    /// Installer image.
    #[arg(long)]
    install_image: Option<String>,
    /// Kubernetes DNS domain.
    #[arg(long)]
    dns_domain: Option<String>,
    /// Output directory.
    #[arg(short = 'o', long = "output", default_value = ".")]
    output: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// The configuration file to validate.
    #[arg(short = 'c', long)]
    config: PathBuf,
    /// metal, cloud or container.
    #[arg(short = 'm', long)]
    mode: Mode,
    /// Treat unknown fields as errors.
    #[arg(long)]
    strict: bool,
}

/// A command failure: the message to print (exit code 1; clap exits 2 on usage errors).
pub struct Failure(pub String);

pub(crate) fn fail(message: impl std::fmt::Display) -> Failure {
    Failure(message.to_string())
}

pub fn run(command: Gen) -> Result<(), Failure> {
    match command {
        Gen::Secrets {
            output,
            talos_version,
            force,
        } => {
            let contract = Contract::parse(talos_version.as_deref().unwrap_or("")).map_err(fail)?;
            let bundle = SecretsBundle::generate(contract).map_err(fail)?;
            write_private(&output, &bundle.to_yaml().map_err(fail)?, force)
        }
        Gen::Config(args) => gen_config(*args),
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    read_limited(path, machineconfig::LIMITS.input_bytes)
}

/// A text file of at most `limit` bytes. Reads at most one byte past the limit, so a device or
/// pipe that never ends (`/dev/urandom`) is refused as too large rather than read forever.
pub(crate) fn read_limited(path: &Path, limit: usize) -> Result<String, Failure> {
    use std::io::Read;
    let failed = |e: std::io::Error| fail(format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() > limit {
        return Err(fail(format!(
            "{}: larger than the limit of {limit} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "{}: not UTF-8 text ({})",
            path.display(),
            e.utf8_error()
        ))
    })
}

/// Write a file that holds secrets: mode 0600 from its creation, never through a symlink, and
/// only over an existing file with `force`.
pub(crate) fn write_private(path: &Path, content: &str, force: bool) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_symlink() {
        return Err(fail(format!(
            "{} is a symbolic link; refusing to write through it",
            path.display()
        )));
    }
    if path.exists() && !force {
        return Err(fail(format!(
            "{} already exists, use --force to overwrite",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    }
    // Written beside the target and renamed over it: the target is replaced whole or not at
    // all, and a hard link to it elsewhere keeps its old content.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| {
            f.write_all(content.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(format!("writing {}: {e}", path.display())));
    }
    println!("Created {}", path.display());
    Ok(())
}

/// `@file` or inline text, as talosctl takes patches; the `n`th given to `flag`. Returns the
/// text and how errors name it: the file, or the flag and position of an inline patch, never its
/// text (patches carry secrets).
fn load_patch(flag: &str, n: usize, spec: &str) -> Result<(String, String), Failure> {
    Ok(match spec.strip_prefix('@') {
        Some(file) => (read(Path::new(file))?, format!("patch {spec}")),
        None => (spec.to_owned(), format!("inline patch {} of {flag}", n + 1)),
    })
}

/// Render `machine_type` and apply `patches` (text and label) to it, within one render's
/// budget: each patch is parsed only once the one before is applied and dropped.
fn generate_one(
    machine_type: MachineType,
    input: &Input,
    bundle: &SecretsBundle,
    patches: &[&(String, String)],
    file: &str,
) -> Result<String, Failure> {
    let generating = |e: machineconfig::Error| fail(format!("generating {file}: {e}"));
    let budget = RenderBudget::new(RENDER_LIMITS);
    let docs = machineconfig::render(machine_type, input, bundle).map_err(generating)?;
    let mut patcher = Patcher::new(docs, &budget).map_err(generating)?;
    for (text, label) in patches {
        let patch =
            Patch::parse_within(text, &budget).map_err(|e| fail(format!("{label}: {e}")))?;
        patcher.apply(patch).map_err(generating)?;
    }
    machineconfig::render::to_yaml(&patcher.finish()).map_err(generating)
}

fn gen_config(a: ConfigArgs) -> Result<(), Failure> {
    let mut input = Input::new(&a.cluster_name, &a.endpoint);
    if let Some(v) = a.kubernetes_version {
        input.kubernetes_version = v;
    }
    if let Some(v) = a.talos_version {
        input.contract = Contract::parse(&v).map_err(fail)?;
    }
    if let Some(v) = a.install_disk {
        input.install_disk = v;
    }
    if let Some(v) = a.install_image {
        input.install_image = v;
    }
    if let Some(v) = a.dns_domain {
        input.dns_domain = v;
    }
    machineconfig::render::Endpoint::parse(&input.endpoint).map_err(fail)?;
    let bundle = match &a.with_secrets {
        Some(path) => SecretsBundle::from_yaml(&read(path)?).map_err(fail)?,
        None => SecretsBundle::generate(input.contract).map_err(fail)?,
    };
    let common = a
        .config_patch
        .iter()
        .enumerate()
        .map(|(n, p)| load_patch("--config-patch", n, p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut specific = Vec::new();
    for (flag, patches) in [
        (
            "--config-patch-control-plane",
            &a.config_patch_control_plane,
        ),
        ("--config-patch-worker", &a.config_patch_worker),
    ] {
        specific.push(
            patches
                .iter()
                .enumerate()
                .map(|(n, p)| load_patch(flag, n, p))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    let mut outputs = Vec::new();
    for ((machine_type, file), specific) in [
        (MachineType::Controlplane, "controlplane.yaml"),
        (MachineType::Worker, "worker.yaml"),
    ]
    .into_iter()
    .zip(&specific)
    {
        let patches: Vec<&(String, String)> = common.iter().chain(specific).collect();
        let yaml = generate_one(machine_type, &input, &bundle, &patches, file)?;
        outputs.push((file, yaml));
    }
    let talosconfig = talosconfig::generate(&a.cluster_name, &bundle, &ClientOptions::default())
        .and_then(|t| t.to_yaml())
        .map_err(fail)?;
    outputs.push(("talosconfig", talosconfig));

    std::fs::create_dir_all(&a.output)
        .map_err(|e| fail(format!("creating {}: {e}", a.output.display())))?;
    // Check every target before writing any, so a refusal leaves nothing half-written.
    if !a.force {
        for (file, _) in &outputs {
            let path = a.output.join(file);
            if path.exists() {
                return Err(fail(format!(
                    "{} already exists, use --force to overwrite",
                    path.display()
                )));
            }
        }
    }
    for (file, content) in outputs {
        write_private(&a.output.join(file), &content, true)?;
    }
    Ok(())
}

pub fn validate(a: ValidateArgs) -> Result<(), Failure> {
    let docs = machineconfig::render::from_yaml(&read(&a.config)?).map_err(fail)?;
    let report = machineconfig::validate(&docs, a.mode, a.strict);
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if report.is_valid() {
        println!("{} is valid for {} mode", a.config.display(), a.mode);
        return Ok(());
    }
    let n = report.errors.len();
    let mut message = format!("{n} error{} occurred:", if n == 1 { "" } else { "s" });
    for e in &report.errors {
        message.push_str(&format!("\n\t* {e}"));
    }
    Err(fail(message))
}
