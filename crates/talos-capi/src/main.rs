//! The talos-capi binary. Each capability lives in its own crate; this file only parses the
//! command line and dispatches.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod generate;
mod manager;
mod render;

/// Cluster API bootstrap and control-plane provider for Talos Linux.
#[derive(Parser)]
#[command(name = "talos-capi", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version and the API contracts this build implements.
    Version,
    /// Print every CustomResourceDefinition as YAML, or write one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also write the Markdown API reference to this file.
        #[arg(long)]
        docs: Option<PathBuf>,
    },
    /// Generate Talos secrets bundles and machine configurations.
    #[command(subcommand)]
    Gen(Box<generate::Gen>),
    /// Validate a Talos machine configuration.
    Validate(generate::ValidateArgs),
    /// Preview offline the machine configurations that TalosConfigs, TalosConfigTemplates,
    /// TalosControlPlanes and TalosControlPlaneTemplates in YAML files yield, validated as
    /// Talos validates them (exit 1 naming each object that fails).
    Render(render::RenderArgs),
    /// Run the controllers (TalosConfig and TalosControlPlane) against the management cluster.
    Manager(Box<manager::ManagerArgs>),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Version => {
            println!("talos-capi {}", env!("CARGO_PKG_VERSION"));
            println!(
                "api groups: bootstrap.cluster.x-k8s.io/v1alpha3, controlplane.cluster.x-k8s.io/v1alpha3"
            );
            println!("cluster api contracts: v1beta1, v1beta2");
            Ok(())
        }
        Command::Crds { out_dir, docs } => crds(out_dir.as_deref(), docs.as_deref()),
        Command::Gen(g) => generate::run(*g).map_err(|generate::Failure(m)| m),
        Command::Validate(v) => generate::validate(v).map_err(|generate::Failure(m)| m),
        Command::Render(r) => render::render(r).map_err(|generate::Failure(m)| m),
        Command::Manager(m) => manager::run(*m),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out_dir: Option<&Path>, docs: Option<&Path>) -> Result<(), String> {
    let crds = api::all_crds();
    if let Some(path) = docs {
        std::fs::write(path, api::docs::markdown(&crds))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    for crd in crds {
        let yaml = api::to_yaml(&crd).map_err(|e| format!("serializing CRDs: {e}"))?;
        match out_dir {
            None => print!("{yaml}"),
            Some(dir) => {
                let path = dir.join(api::crds::file_name(&crd));
                std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&path, yaml))
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
