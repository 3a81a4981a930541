//! `talos-sim --nodes 3 [--config FILE]...`: simulated Talos nodes on loopback, for the
//! kind-based e2e and for trying talosctl against them. Runs until SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use talos_sim::{NodeSpec, Simulator, Timing, loopback_address};

#[derive(Parser)]
#[command(about = "Simulated Talos nodes speaking the Talos API on loopback")]
struct Cli {
    /// Nodes booting in maintenance mode.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Machine configurations to boot nodes with (one node each, after the maintenance ones).
    #[arg(long)]
    config: Vec<PathBuf>,
    /// Talos version the nodes report.
    #[arg(long, default_value = "v1.13.0")]
    version: String,
    /// Port every node listens on (each node has its own loopback address).
    #[arg(long, default_value_t = 50000)]
    port: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    let sim = Simulator::new(Timing::default());
    let mut events = sim.events();
    let mut n = 0;
    let mut configs = Vec::new();
    for path in &cli.config {
        match std::fs::read_to_string(path) {
            Ok(c) => configs.push(Some(c)),
            Err(e) => {
                eprintln!("talos-sim: reading {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    for config in std::iter::repeat_n(None, cli.nodes as usize).chain(configs) {
        let address = loopback_address(n);
        let spec = NodeSpec {
            address,
            port: cli.port,
            hostname: format!("talos-sim-{n}"),
            version: cli.version.clone(),
            config,
        };
        if let Err(e) = sim.start(spec) {
            eprintln!("talos-sim: {e}");
            return ExitCode::FAILURE;
        }
        n += 1;
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            ev = events.recv() => if let Ok(ev) = ev { println!("{ev:?}") },
        }
    }
}
