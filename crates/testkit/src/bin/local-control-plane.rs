//! `local-control-plane up` runs a local management cluster in the foreground until it gets
//! SIGINT/SIGTERM; `make up` starts it in the background and `make down` stops it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testkit::{LocalControlPlane, sim_infra};

#[derive(Parser)]
#[command(about = "A local Kubernetes management cluster of real components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver and (unless --no-cluster-api) Cluster API, and keep them running.
    Up {
        /// Directory for certificates, logs and the kubeconfig.
        #[arg(long, default_value = "target/local-cp")]
        dir: PathBuf,
        /// Extra CRD directories to install (repeatable).
        #[arg(long)]
        crds: Vec<PathBuf>,
        /// Only etcd and kube-apiserver.
        #[arg(long)]
        no_cluster_api: bool,
        /// Also serve the simulated infrastructure provider in this namespace (created if
        /// absent): a simulated Talos node per SimMachine, and a real workload kube-apiserver
        /// per bootstrapped Cluster (what `make e2e` runs the suite against).
        #[arg(long, value_name = "NAMESPACE")]
        sim_infra: Option<String>,
    },
    /// Serve the simulated infrastructure provider for the cluster of KUBECONFIG (its CRDs are
    /// installed first), with workload kube-apiservers kept in an etcd of its own, until
    /// SIGINT/SIGTERM. The nodes listen on loopback addresses of this host.
    SimInfra {
        /// The namespace served (created if absent).
        #[arg(long, default_value = "talos-capi-e2e")]
        namespace: String,
    },
    /// Measure startup: start and stop a control plane N times, print per-phase medians.
    Bench {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also install Cluster API's CRDs and start its manager.
        #[arg(long)]
        cluster_api: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // The readiness probe's expected failures are not worth an ERROR line each.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
    });
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let result = match Cli::parse().command {
        Command::Up {
            dir,
            crds,
            no_cluster_api,
            sim_infra,
        } => up(dir, crds, no_cluster_api, sim_infra).await,
        Command::SimInfra { namespace } => serve_sim_infra(&namespace).await,
        Command::Bench { runs, cluster_api } => bench(runs, cluster_api).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Failure domains of the simulated clusters (all for control planes).
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

async fn up(
    dir: PathBuf,
    crds: Vec<PathBuf>,
    no_cluster_api: bool,
    sim_infra: Option<String>,
) -> Result<(), testkit::Error> {
    let ready_marker = dir.join("ready");
    let _ = std::fs::remove_file(&ready_marker);
    let mut builder = LocalControlPlane::builder()
        .name("talos-capi-local")
        .dir(&dir);
    for d in crds.into_iter().filter(|d| d.is_dir()) {
        builder = builder.crds(d);
    }
    builder = if no_cluster_api {
        builder.cluster_api_crds()
    } else {
        builder.cluster_api()
    };
    let cp = builder.start().await?;
    let t = cp.startup_times();
    println!("local control plane ready at {}", cp.url());
    println!(
        "startup: etcd {:?}, kube-apiserver {:?}, CRDs {:?}, Cluster API manager {:?}",
        t.etcd, t.apiserver, t.crds, t.cluster_api
    );
    println!("kubeconfig: {}", cp.kubeconfig_path().display());
    let infra = match &sim_infra {
        Some(ns) => {
            let client = cp.client().await?;
            ensure_namespace(&client, ns).await?;
            println!("simulated infrastructure serving namespace {ns}");
            Some(sim_infra::start_with_workloads_in(
                &client,
                ns,
                &ZONES,
                cp.etcd(),
            ))
        }
        None => None,
    };
    std::fs::write(&ready_marker, cp.url()).map_err(|e| testkit::Error::Io {
        context: "writing ready marker".into(),
        source: e,
    })?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| testkit::Error::Io {
            context: "installing SIGTERM handler".into(),
            source: e,
        })?;
    let mut monitor = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = monitor.tick() => cp.check_running()?,
        }
    }
    let _ = std::fs::remove_file(&ready_marker);
    println!("stopping local control plane");
    drop(infra);
    drop(cp);
    Ok(())
}

async fn serve_sim_infra(ns: &str) -> Result<(), testkit::Error> {
    let client = kube::Client::try_default().await?;
    testkit::install_crds(&client, &testkit::infra::infrastructure_crds()?).await?;
    ensure_namespace(&client, ns).await?;
    let etcd = std::sync::Arc::new(testkit::Etcd::start(None).await?);
    let infra = sim_infra::start_with_workloads_in(&client, ns, &ZONES, etcd);
    println!("simulated infrastructure serving namespace {ns}");
    shutdown_signal().await?;
    drop(infra);
    Ok(())
}

async fn shutdown_signal() -> Result<(), testkit::Error> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| testkit::Error::Io {
            context: "installing SIGTERM handler".into(),
            source: e,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> Result<(), testkit::Error> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    if api.get_opt(ns).await?.is_none() {
        let namespace = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(ns.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&Default::default(), &namespace).await?;
    }
    Ok(())
}

async fn bench(runs: usize, cluster_api: bool) -> Result<(), testkit::Error> {
    let mut samples: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    for _ in 0..runs.max(1) {
        let started = std::time::Instant::now();
        let builder = LocalControlPlane::builder().name("bench");
        let builder = if cluster_api {
            builder.cluster_api()
        } else {
            builder.cluster_api_crds()
        };
        let cp = builder.start().await?;
        let total = started.elapsed().as_secs_f64();
        let t = cp.startup_times().clone();
        samples.push((
            t.etcd.as_secs_f64(),
            t.apiserver.as_secs_f64(),
            t.crds.as_secs_f64(),
            t.cluster_api.as_secs_f64(),
            total,
        ));
        drop(cp);
    }
    let median = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("runs: {}", samples.len());
    println!("median etcd ready:            {:.2} s", median(|s| s.0));
    println!("median kube-apiserver ready:  {:.2} s", median(|s| s.1));
    println!("median CRDs established:      {:.2} s", median(|s| s.2));
    if cluster_api {
        println!("median Cluster API ready:     {:.2} s", median(|s| s.3));
    }
    println!("median total:                 {:.2} s", median(|s| s.4));
    Ok(())
}
