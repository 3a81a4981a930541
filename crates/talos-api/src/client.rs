//! A Talos API client: mTLS from a talosconfig context, endpoint failover, node targeting with
//! apid's `node` / `nodes` metadata (per-node results from multi-node replies), a timeout on
//! every call, typed errors, and an explicit maintenance-mode client for applying a
//! configuration to an unconfigured node.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::common::Metadata;
use crate::machine::machine_service_client::MachineServiceClient;
use crate::machine::*;

/// The Talos API port.
pub const DEFAULT_PORT: u16 = 50000;

/// Why a Talos call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{code:?}: {message}")]
    Other { code: i32, message: String },
    #[error("talosconfig: {0}")]
    Config(String),
    #[error("no endpoint reachable: {0}")]
    Connect(String),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        from_code(s.code(), s.message().to_owned())
    }
}

fn from_code(code: Code, message: String) -> Error {
    match code {
        Code::NotFound => Error::NotFound(message),
        Code::FailedPrecondition => Error::FailedPrecondition(message),
        Code::AlreadyExists => Error::AlreadyExists(message),
        Code::Unimplemented => Error::Unimplemented(message),
        Code::Unavailable => Error::Unavailable(message),
        Code::PermissionDenied => Error::PermissionDenied(message),
        Code::InvalidArgument => Error::InvalidArgument(message),
        Code::DeadlineExceeded => Error::Timeout(Duration::ZERO),
        other => Error::Other {
            code: other as i32,
            message,
        },
    }
}

/// Which nodes a call is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// The endpoint itself (no proxying).
    Endpoint,
    /// One node, proxied through the endpoint (`node` metadata).
    One(String),
    /// Several nodes, fanned out by the endpoint (`nodes` metadata); one result per node.
    Many(Vec<String>),
}

/// One node's part of a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResult<T> {
    /// The node (empty when the endpoint answered for itself).
    pub node: String,
    pub result: Result<T, Error>,
}

#[derive(Deserialize)]
struct TalosConfigFile {
    context: String,
    contexts: std::collections::BTreeMap<String, ContextFile>,
}

#[derive(Deserialize)]
struct ContextFile {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    ca: String,
    #[serde(default)]
    crt: String,
    #[serde(default)]
    key: String,
}

enum Security {
    /// mTLS verified against the cluster's OS CA.
    Mutual(ClientTlsConfig),
    /// Maintenance mode: server-only TLS, the server certificate is not verified.
    Maintenance,
}

/// A client for one cluster's Talos API.
pub struct Client {
    endpoints: Vec<String>,
    security: Arc<Security>,
    timeout: Duration,
    /// The connection in use, reused across calls; dropped (and failed over) when the endpoint
    /// becomes unavailable.
    connected: tokio::sync::Mutex<Option<Channel>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn decode(field: &str, b64: &str) -> Result<String, Error> {
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|_| Error::Config(format!("{field} is not base64")))?;
    String::from_utf8(bytes).map_err(|_| Error::Config(format!("{field} is not PEM text")))
}

impl Client {
    /// A client from a talosconfig (YAML) and a context (default: the current one).
    pub fn from_talosconfig(yaml: &str, context: Option<&str>) -> Result<Client, Error> {
        let file: TalosConfigFile =
            serde_yaml_ng::from_str(yaml).map_err(|e| Error::Config(e.to_string()))?;
        let name = context.unwrap_or(&file.context);
        let ctx = file
            .contexts
            .get(name)
            .ok_or_else(|| Error::Config(format!("no context {name:?}")))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(decode("ca", &ctx.ca)?))
            .identity(Identity::from_pem(
                decode("crt", &ctx.crt)?,
                decode("key", &ctx.key)?.replace("ED25519 PRIVATE KEY", "PRIVATE KEY"), // Talos labels Ed25519 PKCS#8 keys "ED25519 PRIVATE KEY"
            ));
        Ok(Client {
            endpoints: ctx.endpoints.clone(),
            security: Arc::new(Security::Mutual(tls)),
            timeout: Duration::from_secs(5),
            connected: Default::default(),
        })
    }

    /// A client for nodes in maintenance mode: TLS without verifying the server (the node has
    /// no identity yet) and without a client certificate. Use it only to apply a configuration.
    pub fn maintenance(endpoints: Vec<String>) -> Client {
        Client {
            endpoints,
            security: Arc::new(Security::Maintenance),
            timeout: Duration::from_secs(5),
            connected: Default::default(),
        }
    }

    /// Use these endpoints (tried in order) instead of the talosconfig's.
    pub fn with_endpoints(mut self, endpoints: Vec<String>) -> Client {
        self.endpoints = endpoints;
        self.connected = Default::default();
        self
    }

    /// The deadline of every call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self.connected = Default::default();
        self
    }

    fn address(endpoint: &str) -> (String, u16) {
        match endpoint.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse().unwrap_or(DEFAULT_PORT),
            ),
            _ => (endpoint.trim_matches(['[', ']']).to_owned(), DEFAULT_PORT),
        }
    }

    /// A channel to the first endpoint that answers (failover in order).
    async fn channel(&self) -> Result<Channel, Error> {
        let mut last = String::from("no endpoints configured");
        for endpoint in &self.endpoints {
            let (host, port) = Self::address(endpoint);
            let attempt = match self.security.as_ref() {
                Security::Mutual(tls) => {
                    let ep = Endpoint::from_shared(format!("https://{host}:{port}"))
                        .map_err(|e| Error::Config(e.to_string()))?
                        .tls_config(tls.clone().domain_name(host.clone()))
                        .map_err(|e| Error::Config(format!("{e:?}")))?
                        .connect_timeout(self.timeout)
                        .timeout(self.timeout);
                    ep.connect().await.map_err(|e| format!("{endpoint}: {e}"))
                }
                Security::Maintenance => crate::insecure::connect(&host, port, self.timeout)
                    .await
                    .map_err(|e| format!("{endpoint}: {e}")),
            };
            match attempt {
                Ok(channel) => return Ok(channel),
                Err(e) => last = e,
            }
        }
        Err(Error::Connect(last))
    }

    fn request<T>(&self, message: T, nodes: &Nodes) -> Result<Request<T>, Error> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        let md = req.metadata_mut();
        let value = |s: &str| {
            MetadataValue::try_from(s)
                .map_err(|_| Error::Config(format!("invalid node name {s:?}")))
        };
        match nodes {
            Nodes::Endpoint => {}
            Nodes::One(n) => {
                md.insert("node", value(n)?);
            }
            Nodes::Many(ns) => {
                for n in ns {
                    md.append("nodes", value(n)?);
                }
            }
        }
        Ok(req)
    }

    async fn machine(&self) -> Result<MachineServiceClient<Channel>, Error> {
        let mut connected = self.connected.lock().await;
        let channel = match connected.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self.channel().await?;
                *connected = Some(c.clone());
                c
            }
        };
        Ok(MachineServiceClient::new(channel).max_decoding_message_size(32 * 1024 * 1024))
    }

    /// Run a call under the client's deadline, mapping the gRPC status.
    async fn call<F, T>(&self, fut: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(s)) if s.code() == Code::DeadlineExceeded => Err(Error::Timeout(self.timeout)),
            Ok(r) => r.map(tonic::Response::into_inner).map_err(Error::from),
        };
        if matches!(result, Err(Error::Timeout(_) | Error::Unavailable(_))) {
            // Reconnect (and fail over) on the next call.
            *self.connected.lock().await = None;
        }
        result
    }
}

impl Client {
    /// MachineService.Events of one node (or the endpoint): the last `tail` events (-1: all),
    /// then live ones until the node goes down or the stream is dropped.
    pub async fn events(&self, nodes: &Nodes, tail: i32) -> Result<tonic::Streaming<Event>, Error> {
        let mut c = self.machine().await?;
        let req = self.request(
            EventsRequest {
                tail_events: tail,
                ..Default::default()
            },
            nodes,
        )?;
        self.call(c.events(req)).await
    }
}

/// The MachineStatusEvent an event carries, if it is one.
pub fn machine_status(event: &Event) -> Option<MachineStatusEvent> {
    use prost::Message;
    let any = event.data.as_ref()?;
    any.type_url
        .ends_with("machine.MachineStatusEvent")
        .then(|| MachineStatusEvent::decode(any.value.as_slice()).ok())
        .flatten()
}

/// Split a multi-node reply into per-node results (errors carried in `Metadata.error`).
fn per_node<M>(messages: Vec<M>, metadata: impl Fn(&M) -> Option<&Metadata>) -> Vec<NodeResult<M>> {
    messages
        .into_iter()
        .map(|m| {
            let md = metadata(&m).cloned().unwrap_or_default();
            let result = if md.error.is_empty() {
                Ok(m)
            } else {
                let code = md
                    .status
                    .as_ref()
                    .map(|s| Code::from_i32(s.code))
                    .unwrap_or(Code::Unknown);
                Err(from_code(code, md.error.clone()))
            };
            NodeResult {
                node: md.hostname,
                result,
            }
        })
        .collect()
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $msg:ty = $method:ident($req:expr)) => {
        $(#[$doc])*
        pub async fn $name(&self, nodes: &Nodes $(, $arg: $ty)*) -> Result<Vec<NodeResult<$msg>>, Error> {
            let mut c = self.machine().await?;
            let req = self.request($req, nodes)?;
            let reply = self.call(c.$method(req)).await?;
            Ok(per_node(reply.messages, |m| m.metadata.as_ref()))
        }
    };
}

impl Client {
    unary!(
        /// Talos version of each node.
        version() -> Version = version(())
    );
    unary!(
        /// Apply a machine configuration.
        apply_configuration(data: Vec<u8>, mode: apply_configuration_request::Mode) -> ApplyConfiguration =
            apply_configuration(ApplyConfigurationRequest { data, mode: mode as i32, ..Default::default() })
    );
    unary!(
        /// Bootstrap etcd (exactly once per cluster, on one control-plane node).
        bootstrap() -> Bootstrap = bootstrap(BootstrapRequest::default())
    );
    unary!(
        /// Services and their health.
        service_list() -> ServiceList = service_list(())
    );
    unary!(
        /// etcd members as this node sees them.
        etcd_member_list() -> EtcdMembers = etcd_member_list(EtcdMemberListRequest::default())
    );
    unary!(
        /// Remove an etcd member by id.
        etcd_remove_member(member_id: u64) -> EtcdRemoveMemberById = etcd_remove_member_by_id(EtcdRemoveMemberByIdRequest { member_id })
    );
    unary!(
        /// Make the node leave etcd.
        etcd_leave_cluster() -> EtcdLeaveCluster = etcd_leave_cluster(EtcdLeaveClusterRequest {})
    );
    unary!(
        /// Move etcd leadership away from the node.
        etcd_forfeit_leadership() -> EtcdForfeitLeadership = etcd_forfeit_leadership(EtcdForfeitLeadershipRequest {})
    );
    unary!(
        /// etcd member status of the node.
        etcd_status() -> EtcdStatus = etcd_status(())
    );
    unary!(
        /// Upgrade Talos to the installer `image` and reboot (legacy MachineService.Upgrade).
        upgrade(image: String) -> Upgrade = upgrade(UpgradeRequest { image, ..Default::default() })
    );
    unary!(
        /// Reboot.
        reboot() -> Reboot = reboot(RebootRequest::default())
    );
    unary!(
        /// Reset (wipe) the node.
        reset(graceful: bool) -> Reset = reset(ResetRequest { graceful, reboot: true, ..Default::default() })
    );
}
