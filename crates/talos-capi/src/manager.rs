//! `talos-capi manager`: runs both controllers against the cluster of the current kubeconfig
//! (or the in-cluster service account) until SIGTERM or SIGINT, with leader election, health
//! probes and Prometheus metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use controller::leader::{Elector, FenceLayer, LeaseSettings};
use controller::nodes::Grpc;
use controller::{Context, Options};
use futures::FutureExt;
use prometheus_client::registry::Registry;

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
    /// The controllers to run: bootstrap (TalosConfig), controlplane (TalosControlPlane), or
    /// both (one process serving both providers).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bootstrap,controlplane"
    )]
    controllers: Vec<Which>,
    /// TalosConfig reconciles running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    talosconfig_concurrency: u16,
    /// TalosControlPlane reconciles running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    taloscontrolplane_concurrency: u16,
    /// Also serve TalosConfigs owned by MachinePools (needs Cluster API's MachinePool feature;
    /// the manager then watches MachinePools too).
    #[arg(long, env = "EXP_MACHINE_POOL")]
    machine_pools: bool,
    /// The deadline of every Talos API call to a workload cluster's nodes (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = duration)]
    talos_timeout: Duration,
    /// How often a steady control plane's nodes are asked whether they still run the
    /// configuration controlPlaneConfig renders (a dry-run apply per node); 0s: never.
    #[arg(long, default_value = "5m", value_parser = duration)]
    config_drift_interval: Duration,
    /// How often a steady control plane's nodes are asked for etcd and service health over the
    /// Talos API (Kubernetes changes, workload Node readiness included, act at once anyway).
    #[arg(long, default_value = "30s", value_parser = duration)]
    health_check_interval: Duration,
    /// Elect a leader among the replicas: only the replica holding the Lease reconciles.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the kubeconfig's or service
    /// account's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "talos-capi-manager")]
    leader_election_id: String,
    /// How long a standby waits after the Lease was last renewed before it takes over.
    #[arg(long, default_value = "15s", value_parser = duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal (less than the lease
    /// duration); its writes are refused after it.
    #[arg(long, default_value = "10s", value_parser = duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the Lease is renewed or, by a standby, tried.
    #[arg(long, default_value = "2s", value_parser = duration)]
    leader_elect_retry_period: Duration,
    /// Where /metrics is served (host:port, ":port" for every interface, "0" to disable).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = bind_address)]
    metrics_bind_address: Bind,
    /// Where /healthz and /readyz are served (host:port, ":port" for every interface, "0" to
    /// disable).
    #[arg(long, default_value = "127.0.0.1:9440", value_parser = bind_address)]
    health_probe_bind_address: Bind,
    /// Export tracing spans (reconciles, Talos API calls) over OTLP/gRPC to this collector,
    /// e.g. http://otel-collector:4317 (builds with the `otlp` feature).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. info or controller=debug.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Bootstrap,
    Controlplane,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// A listen address, or none ("0").
#[derive(Clone, Copy, Debug)]
struct Bind(Option<SocketAddr>);

fn bind_address(s: &str) -> Result<Bind, String> {
    if s == "0" {
        return Ok(Bind(None));
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map(|a| Bind(Some(a)))
        .map_err(|_| format!("{s:?}: expected host:port (e.g. 127.0.0.1:8080), :port, or 0"))
}

/// `10s`, `500ms`, `2m`, or a number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: expected a duration such as 500ms, 15s or 2m");
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(bad()),
    }
}

/// An invalid combination of flags: one line on stderr, exit code 2 (as for a bad flag).
fn usage_error(message: String) -> ! {
    use clap::CommandFactory;
    crate::Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// What the probes report.
#[derive(Debug)]
struct Probes {
    ctx: Arc<Context>,
    /// This replica waits for the Lease (ready: it can take over).
    standing_by: AtomicBool,
    /// Kinds the management cluster does not serve yet, one line each.
    missing: std::sync::Mutex<Vec<String>>,
    registry: Registry,
}

pub fn run(args: ManagerArgs) -> Result<(), String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|e| usage_error(format!("--log-level {:?}: {e}", args.log_level)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    // The OTLP exporter's gRPC channel lives on this runtime.
    let _entered = runtime.enter();
    let fmt = match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let (otlp, exporter) = otlp::layer(args.otlp_endpoint.as_deref())?;
    tracing_subscriber::registry()
        .with(otlp)
        .with(filter)
        .with(fmt)
        .init();
    let result = runtime.block_on(manage(args));
    exporter.shutdown();
    result
}

/// Spans exported over OTLP/gRPC, in builds with the `otlp` feature.
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    pub type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

    /// Flushes and stops the exporter.
    pub struct Exporter(Option<SdkTracerProvider>);

    impl Exporter {
        pub fn shutdown(self) {
            if let Some(provider) = self.0
                && let Err(e) = provider.shutdown()
            {
                eprintln!("flushing the OTLP exporter: {e}");
            }
        }
    }

    pub fn layer(endpoint: Option<&str>) -> Result<(Option<Boxed>, Exporter), String> {
        let Some(endpoint) = endpoint else {
            return Ok((None, Exporter(None)));
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("talos-capi")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("talos-capi");
        let layer: Boxed = Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        Ok((Some(layer), Exporter(Some(provider))))
    }
}

/// Builds without the `otlp` feature export nothing, and say so if asked to.
#[cfg(not(feature = "otlp"))]
mod otlp {
    pub type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

    pub struct Exporter;

    impl Exporter {
        pub fn shutdown(self) {}
    }

    pub fn layer(endpoint: Option<&str>) -> Result<(Option<Boxed>, Exporter), String> {
        if endpoint.is_some() {
            super::usage_error(
                "--otlp-endpoint: this build has no OTLP exporter (build with --features otlp)"
                    .into(),
            );
        }
        Ok((None, Exporter))
    }
}

async fn manage(args: ManagerArgs) -> Result<(), String> {
    let identity = identity();
    let lease = LeaseSettings {
        // Known once the kubeconfig is read.
        namespace: args.leader_election_namespace.clone().unwrap_or_default(),
        name: args.leader_election_id.clone(),
        identity: identity.clone(),
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    };
    if args.health_check_interval.is_zero() {
        usage_error("--health-check-interval: must be more than 0s".to_owned());
    }
    if args.leader_elect
        && let Err(m) = lease.check()
    {
        usage_error(format!("--leader-elect-*: {m}"));
    }
    let mut config = match &args.kubeconfig {
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
    // Identifies our requests, and which replica made them, in the API server's audit log.
    let agent = format!("talos-capi/{} ({identity})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)
            .unwrap_or_else(|_| http::HeaderValue::from_static("talos-capi")),
    ));
    let lease = LeaseSettings {
        namespace: Some(lease.namespace)
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| config.default_namespace.clone()),
        ..lease
    };
    let connect = |e: kube::Error| format!("connecting to the management cluster: {e}");
    let plain = kube::Client::try_from(config.clone()).map_err(connect)?;
    let elector = args
        .leader_elect
        .then(|| Elector::new(plain.clone(), lease.clone()));
    // Without leader election the controllers' client is the plain one; with it, every write
    // passes the fence of this replica's leadership.
    let client = match &elector {
        Some(e) => kube::client::ClientBuilder::try_from(config)
            .map_err(connect)?
            .with_layer(&FenceLayer(e.fence()))
            .build(),
        None => plain.clone(),
    };
    let options = Options {
        namespace: args.namespace,
        watch_filter: args.watch_filter,
        concurrency: args.talosconfig_concurrency,
        controlplane_concurrency: args.taloscontrolplane_concurrency,
        machine_pools: args.machine_pools,
        bootstrap: args.controllers.contains(&Which::Bootstrap),
        controlplane: args.controllers.contains(&Which::Controlplane),
        drift_check: args.config_drift_interval,
        health_check: args.health_check_interval,
        ..Options::default()
    };
    let mut ctx = Context::new(client, options);
    ctx.nodes = Arc::new(Grpc::new(
        args.talos_timeout,
        Some(Arc::new(ctx.metrics.clone())),
    ));
    let ctx = Arc::new(ctx);
    let mut registry = Registry::default();
    ctx.metrics.register(&mut registry);
    let probes = Arc::new(Probes {
        ctx: Arc::clone(&ctx),
        standing_by: AtomicBool::new(args.leader_elect),
        missing: Default::default(),
        registry,
    });

    let shutdown = shutdown_signal().shared();
    // Bind first: a port in use is a startup error, not a log line later.
    let servers = [
        (
            "--metrics-bind-address",
            args.metrics_bind_address,
            metrics_routes(),
        ),
        (
            "--health-probe-bind-address",
            args.health_probe_bind_address,
            health_routes(),
        ),
    ];
    for (flag, Bind(addr), routes) in servers {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{flag} {addr}: {e}"))?;
        let app = routes.with_state(Arc::clone(&probes));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%addr, error = %e, "serving {flag} stopped");
            }
        });
        tracing::info!(%addr, "serving {flag}");
    }
    tracing::info!(options = ?ctx.options, leader_elect = args.leader_elect, %identity, "talos-capi manager starting");

    if !wait_for_kinds(&plain, &probes, shutdown.clone()).await {
        return Ok(());
    }
    let Some(elector) = elector else {
        ctx.metrics.leader.set(1);
        controller::run(ctx, shutdown).await;
        tracing::info!("talos-capi manager stopped");
        return Ok(());
    };
    let mut leadership = tokio::select! {
        l = elector.acquire() => l,
        () = shutdown.clone() => return Ok(()),
    };
    probes.standing_by.store(false, Ordering::Relaxed);
    ctx.metrics.leader.set(1);
    let lost = tokio::select! {
        () = controller::run(Arc::clone(&ctx), shutdown) => None,
        lost = leadership.keep() => Some(lost),
    };
    ctx.metrics.leader.set(0);
    match lost {
        // Stop at once (the controllers' futures are dropped, and the fence is closed); the
        // restarted process stands by.
        Some(lost) => Err(format!("leader election lost: {lost}; exiting")),
        None => {
            if let Err(e) = leadership.release().await {
                tracing::warn!(error = %e, "could not release the lease; a standby takes over when it expires");
            }
            tracing::info!("talos-capi manager stopped");
            Ok(())
        }
    }
}

/// Wait until the management cluster serves every kind the controllers watch, saying what to
/// install meanwhile (in the log and on /readyz). `false`: shut down while waiting.
async fn wait_for_kinds(
    client: &kube::Client,
    probes: &Probes,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let check = async {
        let mut attempt = 0u32;
        loop {
            match controller::preflight::missing_kinds(client).await {
                Ok(missing) if missing.is_empty() => {
                    probes
                        .missing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    return;
                }
                Ok(missing) => {
                    for line in &missing {
                        tracing::error!("{line}; waiting for it");
                    }
                    *probes.missing.lock().unwrap_or_else(|e| e.into_inner()) = missing;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the management cluster's discovery API; retrying")
                }
            }
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(15)) * 2)).await;
        }
    };
    tokio::select! {
        () = check => true,
        () = shutdown => false,
    }
}

fn metrics_routes() -> Router<Arc<Probes>> {
    Router::new().route(
        "/metrics",
        get(
            |axum::extract::State(p): axum::extract::State<Arc<Probes>>| async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &p.registry) {
                    Ok(()) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            },
        ),
    )
}

fn health_routes() -> Router<Arc<Probes>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(p): axum::extract::State<Arc<Probes>>| async move {
                    readiness(&p)
                },
            ),
        )
}

/// Ready: every watched kind is served, and this replica either stands by for the Lease or
/// leads with its caches listed.
fn readiness(p: &Probes) -> (StatusCode, String) {
    let missing = p.missing.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !missing.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, missing.join("\n") + "\n");
    }
    if p.standing_by.load(Ordering::Relaxed) {
        return (
            StatusCode::OK,
            "ok: standing by for the leader lease\n".into(),
        );
    }
    let failing = p.ctx.caches.failing_watches();
    if !failing.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, failing.join("\n") + "\n")
    } else if p.ctx.caches.is_ready() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the watches of Machines, Clusters and Secrets have not listed yet\n".into(),
        )
    }
}

/// This replica's name in the Lease: the Pod name (or host name) and a random suffix, as
/// controller-runtime makes it.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "talos-capi".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}_{:08x}", nanos ^ std::process::id().rotate_left(16))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_addresses_parse_as_documented() {
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("7"), Ok(Duration::from_secs(7)));
        assert!(duration("1h").is_err() && duration("s").is_err() && duration("").is_err());
        assert!(matches!(bind_address("0"), Ok(Bind(None))));
        let all = bind_address(":9440").ok().and_then(|b| b.0);
        assert_eq!(all.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:9440"));
        assert!(bind_address("localhost").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            manager: ManagerArgs,
        }
        let a = <Cli as clap::Parser>::try_parse_from(["talos-capi"])
            .map(|c| c.manager)
            .map_err(|e| e.to_string());
        let Ok(a) = a else {
            panic!("defaults parse: {a:?}");
        };
        // As client-go's and controller-runtime's leader election.
        assert_eq!(a.leader_elect_lease_duration, Duration::from_secs(15));
        assert_eq!(a.leader_elect_renew_deadline, Duration::from_secs(10));
        assert_eq!(a.leader_elect_retry_period, Duration::from_secs(2));
        assert_eq!(a.leader_election_id, "talos-capi-manager");
        assert!(!a.leader_elect);
        assert_eq!(a.health_check_interval, Duration::from_secs(30));
        assert_eq!(a.config_drift_interval, Duration::from_secs(300));
        assert_eq!(a.talos_timeout, Duration::from_secs(10));
        assert_eq!(
            (a.talosconfig_concurrency, a.taloscontrolplane_concurrency),
            (10, 10)
        );
        assert_eq!(
            a.controllers,
            [Which::Bootstrap, Which::Controlplane],
            "both providers in one process"
        );
        // Loopback unless asked otherwise.
        let loopback = |b: Bind| b.0.is_some_and(|a| a.ip().is_loopback());
        assert!(loopback(a.metrics_bind_address) && loopback(a.health_probe_bind_address));
    }
}
