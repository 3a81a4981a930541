//! Reconcile errors, by category: transient ones (the API server, conflicts) requeue with
//! backoff; spec errors (what the user wrote cannot be rendered) become a condition and wait for
//! the object to change.

/// What the user must fix in the object (or its inputs); never retried on a timer.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Render(#[source] machineconfig::Error),
    #[error("configPatches[{index}] cannot be encoded as a JSON patch: {source}")]
    PatchEncoding {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("{0}")]
    Invalid(String),
    /// A patch's per-machine values (`((machine.name))`, `((ipam.<pool>.address))`, …); boxed,
    /// as it is large and rare, so that every `Result` of this error stays small.
    #[error("{patch}: {source}")]
    Values {
        patch: String,
        #[source]
        source: Box<machineconfig::values::ValueError>,
    },
    /// The failure of the last render, whose inputs are unchanged since: not rendered again.
    #[error("{message}")]
    Unchanged {
        reason: &'static str,
        message: String,
    },
}

impl SpecError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        use api::conditions::reason;
        match self {
            SpecError::Render(machineconfig::Error::Patch { .. })
            | SpecError::Render(machineconfig::Error::JsonPatchOnMultiDocument)
            | SpecError::PatchEncoding { .. } => reason::PATCH_FAILED,
            SpecError::Render(_) => reason::RENDER_FAILED,
            SpecError::TooLarge { .. } | SpecError::Invalid(_) => reason::INVALID_SPEC,
            SpecError::Values { .. } => reason::VALUE_UNRESOLVED,
            SpecError::Unchanged { reason: r, .. } => r,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A Secret we depend on exists but cannot be used; fixing it is up to a person.
    #[error("Secret {name}: {reason}")]
    InvalidSecret { name: String, reason: String },
    /// A call to the Talos API of the cluster's nodes failed.
    #[error("{action}: {source}")]
    Talos {
        action: String,
        #[source]
        source: talos_api::Error,
    },
    /// Something the object refers to does not exist yet (an infrastructure template, say);
    /// retried with backoff, since its creation is not watched.
    #[error("{0}")]
    Missing(String),
    /// Generating or storing a cluster's secrets bundle failed (it runs beside the reconciles,
    /// which report it until the next attempt).
    #[error("the secrets bundle of cluster {cluster}: {message}")]
    Bundle {
        cluster: String,
        message: String,
        transient: bool,
    },
    /// The API server refused a status we wrote, for what it holds (its message bounded).
    #[error("the status of {object} was refused: {message}")]
    StatusRefused { object: String, message: String },
    #[error("the object cannot be read as {kind}: {source}")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn talos(action: impl Into<String>) -> impl FnOnce(talos_api::Error) -> Error {
        let action = action.into();
        move |source| Error::Talos { action, source }
    }

    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// A label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kubernetes",
            Error::Spec(_) => "spec",
            Error::InvalidSecret { .. } => "secret",
            Error::Decode { .. } => "decode",
            Error::StatusRefused { .. } => "status",
            Error::Talos { .. } => "talos",
            Error::Missing(_) => "missing",
            Error::Bundle { .. } => "bundle",
        }
    }

    /// Transient errors are retried with backoff; the others wait for a change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { .. } | Error::Talos { .. } | Error::Missing(_) => true,
            Error::Bundle { transient, .. } => *transient,
            Error::Spec(_)
            | Error::InvalidSecret { .. }
            | Error::Decode { .. }
            | Error::StatusRefused { .. } => false,
        }
    }
}
