//! talos-capi's reconcilers. Each follows the same four steps: observe (all reads, into a plain
//! scope), decide (pure functions of that scope), act (idempotent writes), report (status,
//! conditions, Events, metrics). Nothing is remembered between reconciles except backoff.
#![forbid(unsafe_code)]

pub mod bootstrap;
mod context;
mod error;
pub mod metrics;
pub mod rollout;

pub use context::{Clock, Context, Options, SystemClock};
pub use error::{Error, SpecError};
