use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while running the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("locating {tool}: {message}")]
    Tool { tool: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),

    #[error("{name} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    ProcessExited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("timed out after {after:?} waiting for {what}: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },

    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("watching {what}: {message}")]
    Watch { what: String, message: String },

    #[error("kubeconfig: {0}")]
    Kubeconfig(String),

    #[error("reading {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
