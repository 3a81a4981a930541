//! `local-control-plane up` runs a local management cluster in the foreground until it gets
//! SIGINT/SIGTERM; `make up` starts it in the background and `make down` stops it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testkit::LocalControlPlane;

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
        } => up(dir, crds, no_cluster_api).await,
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

async fn up(dir: PathBuf, crds: Vec<PathBuf>, no_cluster_api: bool) -> Result<(), testkit::Error> {
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
    drop(cp);
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
