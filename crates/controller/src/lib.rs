//! talos-capi's reconcilers. Each follows the same four steps: observe (all reads, into a plain
//! scope), decide (pure functions of that scope), act (idempotent writes), report (status,
//! conditions, Events, metrics). Nothing is remembered between reconciles except backoff.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod cache;
mod context;
pub mod controlplane;
mod error;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod preflight;
pub mod raw;
pub mod report;

pub use context::{Clock, Context, Options, SystemClock};
pub use error::{Error, SpecError};

use std::sync::Arc;

use futures::FutureExt;

/// Run every controller and the caches they share until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    // Controllers subscribe to the caches' streams before the watches start.
    let mut controllers: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    if ctx.options.bootstrap {
        let Some(c) = bootstrap::controller(Arc::clone(&ctx), shutdown.clone()) else {
            tracing::error!("the shared caches are already running; a Context serves one run");
            return;
        };
        controllers.push(Box::pin(c));
    }
    if ctx.options.controlplane {
        let Some(c) = controlplane::controller(Arc::clone(&ctx), shutdown.clone()) else {
            tracing::error!("the shared caches are already running; a Context serves one run");
            return;
        };
        controllers.push(Box::pin(c));
    }
    if controllers.is_empty() {
        tracing::error!("no controller enabled: nothing to run");
        return;
    }
    let caches = ctx.caches.run(ctx.client.clone(), ctx.options.clone());
    // Reconciles in flight may finish after `shutdown`, but not for longer than the grace:
    // one waiting for a cache that cannot list (or for a node that does not answer) would
    // otherwise hold the process past its Pod's termination grace period.
    let grace = async {
        shutdown.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the shutdown grace; stopping them");
    };
    tokio::select! {
        _ = futures::future::select_all(controllers) => {}
        () = caches => {}
        () = grace => {}
    }
}

/// How long reconciles in flight may run on after a shutdown is asked for. Every write is
/// idempotent and every Talos action is recorded before it is made, so one cut short is taken
/// up again by the next leader, as after a crash. Within the chart's 30 s termination grace.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
