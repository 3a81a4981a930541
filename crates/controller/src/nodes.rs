//! How controllers reach Talos nodes. The control-plane controller asks [`TalosNodes`] for a
//! client from a cluster's talosconfig aimed at chosen node endpoints; [`Grpc`] is the real
//! one (mTLS against the cluster's OS CA, a deadline on every call). The seam lets a test run
//! the same controller against nodes that time out or fail, without changing the controller.

use std::sync::Arc;
use std::time::Duration;

/// A source of Talos API clients.
pub trait TalosNodes: Send + Sync + std::fmt::Debug {
    /// A client for the nodes at `endpoints`, with the credentials of `talosconfig` (YAML, as
    /// in `<cluster>-talosconfig`). Errors never carry the talosconfig's content.
    fn connect(
        &self,
        talosconfig: &str,
        endpoints: Vec<String>,
    ) -> Result<talos_api::Client, talos_api::Error>;
}

/// Talos API clients over gRPC.
#[derive(Debug, Clone)]
pub struct Grpc {
    /// The deadline of every call.
    pub timeout: Duration,
    /// Told of every call (the manager's metrics).
    pub observer: Option<Arc<dyn talos_api::Observer>>,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            timeout: Duration::from_secs(10),
            observer: None,
        }
    }
}

impl TalosNodes for Grpc {
    fn connect(
        &self,
        talosconfig: &str,
        endpoints: Vec<String>,
    ) -> Result<talos_api::Client, talos_api::Error> {
        let client = talos_api::Client::from_talosconfig(talosconfig, None)?
            .with_endpoints(endpoints)
            .with_timeout(self.timeout);
        Ok(match &self.observer {
            Some(o) => client.with_observer(Arc::clone(o)),
            None => client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machineconfig::talosconfig::{ClientOptions, generate};
    use machineconfig::{Contract, SecretsBundle};

    #[test]
    fn grpc_clients_aim_at_the_given_endpoints_and_never_echo_the_talosconfig() {
        let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let yaml = generate("c", &bundle, &ClientOptions::default())
            .and_then(|c| c.to_yaml())
            .expect("a talosconfig");
        let nodes = Grpc {
            timeout: Duration::from_secs(3),
            observer: None,
        };
        let client = nodes
            .connect(&yaml, vec!["127.0.0.1:50000".into()])
            .expect("a client");
        assert_eq!(client.timeout(), Duration::from_secs(3));

        let secret_looking = "context: c\ncontexts:\n  c:\n    key: c2VjcmV0LWtleS1tYXRlcmlhbA==\n";
        let err = nodes
            .connect(secret_looking, vec![])
            .expect_err("no usable credentials");
        assert!(
            !err.to_string().contains("c2VjcmV0LWtleS1tYXRlcmlhbA"),
            "{err}"
        );
    }
}
