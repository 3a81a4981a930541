//! `talos-capi manager`: runs the controllers against the cluster of the current kubeconfig
//! (or the in-cluster service account) until SIGTERM or SIGINT.

use std::sync::Arc;

use clap::Args;
use controller::{Context, Options};

#[derive(Args, Debug)]
pub struct ManagerArgs {
    /// Kubeconfig of the management cluster (default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Watch only this namespace (Cluster API's --namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Only reconcile objects labelled cluster.x-k8s.io/watch-filter=<value> (Cluster API's
    /// --watch-filter).
    #[arg(long)]
    watch_filter: Option<String>,
    /// TalosConfig reconciles running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    talosconfig_concurrency: u16,
    /// Also serve TalosConfigs owned by MachinePools (needs Cluster API's MachinePool feature;
    /// the manager then watches MachinePools too).
    #[arg(long, env = "EXP_MACHINE_POOL")]
    machine_pools: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. info or controller=debug.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: ManagerArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async move {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| format!("using {}: {e}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| format!("finding the management cluster: {e}"))?,
        };
        let mut config = config;
        // Identifies our requests in the API server's audit log and metrics.
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("talos-capi/", env!("CARGO_PKG_VERSION"))),
        ));
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("connecting to the management cluster: {e}"))?;
        let options = Options {
            namespace: args.namespace,
            watch_filter: args.watch_filter,
            concurrency: args.talosconfig_concurrency,
            machine_pools: args.machine_pools,
            ..Options::default()
        };
        let ctx = Arc::new(Context::new(client, options));
        tracing::info!(options = ?ctx.options, "talos-capi manager starting");
        controller::run(ctx, shutdown_signal()).await;
        tracing::info!("talos-capi manager stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
