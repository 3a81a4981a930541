//! What only the TalosControlPlane controller keeps between reconciles, beside the context both
//! controllers share ([`Context`], which [`Ctx`] dereferences to): the nodes' backoff and the
//! steady looks at them, the drift checks, the workload clusters' Nodes, the infrastructure
//! machines watched for addresses, the expectations of its own writes, discovered template
//! kinds and recently read templates, and the kubeconfigs' expiry.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::DynamicObject;

use super::{expectations, infra, talos, workload};
use crate::Context;
use crate::context::Parsed;

/// How long a read infrastructure template is reused. Templates are not watched (their kinds
/// are not known in advance); a change is seen by the first reconcile after this.
pub(crate) const TEMPLATE_TTL: Duration = Duration::from_secs(5);

/// Machines whose node runs another configuration than their spec renders, each with the
/// names of the fields that differ.
pub(crate) type Drifted = Vec<(String, Vec<String>)>;

/// The TalosControlPlane controller's context: the shared [`Context`] and its own state.
pub struct Ctx {
    shared: Arc<Context>,
    /// Talos nodes that did not answer, each asked again after its own delay.
    pub(crate) node_backoff: crate::nodes::Backoff,
    /// The last look at each steady control plane's nodes, until its next health check.
    pub(crate) steady_looks: talos::SteadyLooks,
    /// The last configuration drift check of each control plane (`namespace/name`): when, and
    /// the machines found drifted with the fields that differ.
    pub(crate) drift: Mutex<HashMap<String, (Instant, Drifted)>>,
    /// The workload clusters' control-plane Nodes, watched through their kubeconfig.
    pub(crate) workloads: workload::Workloads,
    /// The control planes' infrastructure machines, watched for their addresses.
    pub(crate) infra: infra::InfraMachines,
    /// Control-plane machines created or deleted, and markers written, that the cache does not
    /// show yet.
    pub(crate) expectations: expectations::Expectations,
    /// Infrastructure template kinds found through discovery, by `Kind.group`.
    discovered: Mutex<HashMap<String, kube::api::ApiResource>>,
    /// Infrastructure templates read in the last [`TEMPLATE_TTL`], by
    /// `namespace/Kind.group/name`: the reconciles of a burst share one read.
    templates: Mutex<HashMap<String, (Instant, DynamicObject)>>,
    /// When the client certificate of each `<cluster>-kubeconfig` expires, read once per
    /// change of the Secret.
    pub(crate) kubeconfig_expiry: Parsed<time::OffsetDateTime>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

impl Deref for Ctx {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.shared
    }
}

impl Ctx {
    pub fn new(shared: Arc<Context>) -> Ctx {
        Ctx {
            shared,
            node_backoff: crate::nodes::Backoff::default(),
            steady_looks: talos::SteadyLooks::default(),
            drift: Mutex::new(HashMap::new()),
            workloads: workload::Workloads::default(),
            infra: infra::InfraMachines::default(),
            expectations: expectations::Expectations::default(),
            discovered: Mutex::new(HashMap::new()),
            templates: Mutex::new(HashMap::new()),
            kubeconfig_expiry: Parsed::default(),
        }
    }

    /// A kind found through discovery earlier.
    pub(crate) fn discovered(&self, group_kind: &str) -> Option<kube::api::ApiResource> {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group_kind)
            .cloned()
    }

    /// An infrastructure template read less than [`TEMPLATE_TTL`] ago.
    pub(crate) fn recent_template(&self, key: &str) -> Option<DynamicObject> {
        let templates = self.templates.lock().unwrap_or_else(|e| e.into_inner());
        let (read, object) = templates.get(key)?;
        (read.elapsed() < TEMPLATE_TTL).then(|| object.clone())
    }

    pub(crate) fn remember_template(&self, key: String, object: DynamicObject) {
        self.templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), object));
    }

    pub(crate) fn remember(&self, group_kind: &str, ar: kube::api::ApiResource) {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group_kind.to_owned(), ar);
    }
}
