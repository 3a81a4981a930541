//! The talos-capi binary. Later capabilities add their subcommands here (manager, crds, gen,
//! validate, render); each lives in its own crate and this file only dispatches.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

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
}

fn main() {
    match Cli::parse().command {
        Command::Version => {
            println!("talos-capi {}", env!("CARGO_PKG_VERSION"));
            println!(
                "api groups: bootstrap.cluster.x-k8s.io/v1alpha3, controlplane.cluster.x-k8s.io/v1alpha3"
            );
            println!("cluster api contracts: v1beta1, v1beta2");
        }
    }
}
