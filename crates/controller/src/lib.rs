//! talos-capi's reconcilers. Each follows the same four steps: observe (all reads, into a plain
//! scope), decide (pure functions of that scope), act (idempotent writes), report (status,
//! conditions, Events, metrics). Nothing is remembered between reconciles except backoff.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod cache;
mod context;
pub mod controlplane;
mod error;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod preflight;
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
    tokio::select! {
        _ = futures::future::select_all(controllers) => {}
        () = caches => {}
    }
}
