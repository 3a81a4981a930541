//! A Talos API client: mTLS from a talosconfig context, endpoint failover, node targeting with
//! apid's `node` / `nodes` metadata (per-node results from multi-node replies), a timeout on
//! every call, typed errors, and an explicit maintenance-mode client for applying a
//! configuration to an unconfigured node.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use machineconfig::DecodeError;
use machineconfig::talosconfig::{Context, TalosConfig};
use tonic::metadata::MetadataValue;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::common::Metadata;
use crate::machine::machine_service_client::MachineServiceClient;
use crate::machine::*;

/// The Talos API port.
pub const DEFAULT_PORT: u16 = 50000;

/// The cause of a local failure, shared so that [`Error`] stays `Clone`.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a Talos call failed.
///
/// gRPC statuses carry the server's message. Local failures keep their cause as
/// [`std::error::Error::source`] (the cause itself, ready to downcast) and name it in their
/// message as well, so printing `{error}` alone says everything (a printer that also walks the
/// source chain repeats it). Messages never contain key material. `Clone`: causes are shared.
/// [`Error::is_retryable`] tells transient failures from permanent ones.
#[derive(Debug, Clone)]
pub enum Error {
    NotFound(String),
    FailedPrecondition(String),
    AlreadyExists(String),
    Unimplemented(String),
    Unavailable(String),
    PermissionDenied(String),
    Unauthenticated(String),
    InvalidArgument(String),
    ResourceExhausted(String),
    Aborted(String),
    /// The call did not complete within the client's deadline (the duration given).
    Timeout(Duration),
    /// The server reported an exceeded deadline before the client's own deadline was up (a
    /// deadline of the server's), or where the client's deadline is not known.
    DeadlineExceeded(String),
    /// Any other gRPC status.
    Other {
        code: Code,
        message: String,
    },
    /// The talosconfig does not parse.
    Talosconfig(Arc<machineconfig::Error>),
    NoContext(String),
    /// A certificate or key of a talosconfig context cannot be decoded (never quoted).
    Credential {
        context: String,
        field: &'static str,
        source: DecodeError,
    },
    InvalidEndpoint {
        endpoint: String,
        problem: AddressProblem,
    },
    InvalidNodeName {
        node: String,
        source: Arc<InvalidMetadataValue>,
    },
    /// The TLS client configuration cannot be built.
    Tls {
        endpoint: String,
        source: Source,
    },
    /// No endpoint accepted a connection: the last one tried, and why it failed.
    Connect {
        endpoint: String,
        source: Source,
    },
    NoEndpoints,
}

impl Error {
    /// The error's kind, for a metric label: the gRPC code, or the local failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "NotFound",
            Error::FailedPrecondition(_) => "FailedPrecondition",
            Error::AlreadyExists(_) => "AlreadyExists",
            Error::Unimplemented(_) => "Unimplemented",
            Error::Unavailable(_) => "Unavailable",
            Error::PermissionDenied(_) => "PermissionDenied",
            Error::Unauthenticated(_) => "Unauthenticated",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::ResourceExhausted(_) => "ResourceExhausted",
            Error::Aborted(_) => "Aborted",
            Error::Timeout(_) => "Timeout",
            Error::DeadlineExceeded(_) => "DeadlineExceeded",
            Error::Other { .. } => "Other",
            Error::Talosconfig(_) | Error::NoContext(_) | Error::Credential { .. } => "Talosconfig",
            Error::InvalidEndpoint { .. } | Error::InvalidNodeName { .. } | Error::NoEndpoints => {
                "InvalidTarget"
            }
            Error::Tls { .. } => "Tls",
            Error::Connect { .. } => "Connect",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::FailedPrecondition(m) => write!(f, "failed precondition: {m}"),
            Error::AlreadyExists(m) => write!(f, "already exists: {m}"),
            Error::Unimplemented(m) => write!(f, "unimplemented: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::PermissionDenied(m) => write!(f, "permission denied: {m}"),
            Error::Unauthenticated(m) => write!(f, "unauthenticated: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::ResourceExhausted(m) => write!(f, "resource exhausted: {m}"),
            Error::Aborted(m) => write!(f, "aborted: {m}"),
            Error::Timeout(d) => write!(f, "timed out after {}", HumanDuration(*d)),
            Error::DeadlineExceeded(m) => write!(f, "deadline exceeded: {m}"),
            Error::Other { code, message } => write!(f, "{code:?}: {message}"),
            Error::Talosconfig(e) => write!(f, "{e}"),
            Error::NoContext(name) => write!(f, "talosconfig: no context {name:?}"),
            Error::Credential {
                context,
                field,
                source,
            } => write!(f, "talosconfig context {context:?}: {field}: {source}"),
            Error::InvalidEndpoint { endpoint, problem } => {
                write!(f, "invalid endpoint {endpoint:?}: {problem}")
            }
            Error::InvalidNodeName { node, source } => {
                write!(f, "invalid node name {node:?}: {source}")
            }
            Error::Tls { endpoint, source } => {
                write!(f, "TLS setup for {endpoint}: {}", chain(&**source))
            }
            Error::Connect { endpoint, source } => {
                write!(f, "no endpoint reachable: {endpoint}: {}", chain(&**source))
            }
            Error::NoEndpoints => f.write_str("no endpoints configured"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Talosconfig(e) => Some(&**e),
            Error::Credential { source, .. } => Some(source),
            Error::InvalidEndpoint { problem, .. } => Some(problem),
            Error::InvalidNodeName { source, .. } => Some(&**source),
            Error::Tls { source, .. } | Error::Connect { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// Why an endpoint (`host`, `host:port` or `[v6]:port`) cannot be used.
#[derive(Debug, Clone)]
pub enum AddressProblem {
    InvalidPort {
        port: String,
    },
    EmptyHost,
    /// Not a valid URI authority or TLS server name.
    Address(Source),
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressProblem::InvalidPort { port } => {
                write!(f, "port must be a number from 1 to 65535, not {port:?}")
            }
            AddressProblem::EmptyHost => f.write_str("the host is empty"),
            AddressProblem::Address(source) => f.write_str(&chain(&**source)),
        }
    }
}

impl std::error::Error for AddressProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AddressProblem::Address(source) => Some(&**source),
            AddressProblem::InvalidPort { .. } | AddressProblem::EmptyHost => None,
        }
    }
}

impl Error {
    /// Whether the same call may succeed if tried again later (after a backoff): the endpoint
    /// or node was unreachable, busy or slow. Errors in what was asked (invalid argument, no
    /// permission, not found, a precondition, an unimplemented method) or in the client's own
    /// configuration (talosconfig, TLS, endpoints) will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_)
            | Error::ResourceExhausted(_)
            | Error::Aborted(_)
            | Error::Timeout(_)
            | Error::DeadlineExceeded(_)
            | Error::Connect { .. } => true,
            Error::NotFound(_)
            | Error::FailedPrecondition(_)
            | Error::AlreadyExists(_)
            | Error::Unimplemented(_)
            | Error::PermissionDenied(_)
            | Error::Unauthenticated(_)
            | Error::InvalidArgument(_)
            | Error::Other { .. }
            | Error::Talosconfig(_)
            | Error::NoContext(_)
            | Error::Credential { .. }
            | Error::InvalidEndpoint { .. }
            | Error::InvalidNodeName { .. }
            | Error::Tls { .. }
            | Error::NoEndpoints => false,
        }
    }

    /// The error for a gRPC status of a call made with `deadline`, `elapsed` after it started:
    /// an exceeded deadline is this client's (a [`Error::Timeout`] naming it) once the deadline
    /// is up, the server's own before.
    pub fn from_status(status: &Status, deadline: Duration, elapsed: Duration) -> Error {
        // tonic's own per-request timeout (set to the same deadline) ends a call as Cancelled,
        // "Timeout expired", sometimes without the TimeoutExpired cause attached.
        let ours = elapsed >= deadline;
        if (ours && matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled))
            || transport_timeout(status)
        {
            return Error::Timeout(deadline);
        }
        Error::from(status.clone())
    }
}

/// Whether tonic's own per-request timeout (`Endpoint::timeout`) ended the call.
fn transport_timeout(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A status whose deadline is unknown: DeadlineExceeded stays the server's message (use
/// [`Error::from_status`] when the call's deadline is known).
impl From<Status> for Error {
    fn from(s: Status) -> Self {
        // A status that carries a cause was made here, from the transport failing under the call
        // (the connection reset or closed: "h2 protocol error", "operation was canceled"); one
        // decoded from a reply has none. The node went away mid-call: as retryable as a node
        // that does not answer.
        if std::error::Error::source(&s).is_some()
            && matches!(s.code(), Code::Internal | Code::Unknown | Code::Cancelled)
        {
            return Error::Unavailable(format!(
                "the connection failed during the call: {}",
                s.message()
            ));
        }
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
        Code::Unauthenticated => Error::Unauthenticated(message),
        Code::InvalidArgument => Error::InvalidArgument(message),
        Code::ResourceExhausted => Error::ResourceExhausted(message),
        Code::Aborted => Error::Aborted(message),
        Code::DeadlineExceeded => Error::DeadlineExceeded(message),
        // This client never cancels a call whose result it reads: a Cancelled it sees is the
        // connection closing under the call (the node rebooted or went away), so it is as
        // retryable as an unreachable node.
        Code::Cancelled => {
            Error::Unavailable(format!("the connection closed during the call: {message}"))
        }
        code => Error::Other { code, message },
    }
}

/// An error and its causes, `: `-separated (tonic's transport errors say little on their own).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A duration as people write it: `5s`, `1.5s`, `250ms`, `2m30s`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d < Duration::from_micros(1) {
            return write!(f, "{}ns", d.as_nanos());
        }
        if d < Duration::from_millis(1) {
            return write!(f, "{}µs", d.as_micros());
        }
        if d < Duration::from_secs(1) {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        let (h, m, s, ms) = (secs / 3600, secs / 60 % 60, secs % 60, d.subsec_millis());
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || ms > 0 {
            write!(f, "{s}")?;
            if ms > 0 {
                let frac = format!("{ms:03}");
                write!(f, ".{}", frac.trim_end_matches('0'))?;
            }
            f.write_str("s")?;
        }
        Ok(())
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
#[derive(Debug, Clone)]
pub struct NodeResult<T> {
    /// The node (empty when the endpoint answered for itself).
    pub node: String,
    pub result: Result<T, Error>,
}

enum Security {
    /// mTLS verified against the cluster's OS CA.
    Mutual(ClientTlsConfig),
    /// Maintenance mode: server-only TLS, the server certificate is not verified.
    Maintenance,
}

/// Told of every call a [`Client`] makes: the gRPC method, how long it took, and the error it
/// ended with (metrics, say).
pub trait Observer: Send + Sync + fmt::Debug {
    fn observe(&self, method: &'static str, took: Duration, error: Option<&Error>);
}

/// A client for one cluster's Talos API.
pub struct Client {
    endpoints: Vec<String>,
    security: Arc<Security>,
    timeout: Duration,
    observer: Option<Arc<dyn Observer>>,
    /// The connection in use, reused across calls, with the index of its endpoint; dropped
    /// (and failed over) when the endpoint becomes unavailable.
    connected: tokio::sync::Mutex<Option<(Channel, usize)>>,
    /// The endpoint a new connection tries first: the one after an endpoint whose call ran out
    /// of time (its apid may hang while it still accepts connections).
    first: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Host and port of an endpoint: `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6
/// address; the port defaults to [`DEFAULT_PORT`] when none is written, and a port that is
/// written must be valid.
pub(crate) fn address(endpoint: &str) -> Result<(String, u16), Error> {
    let invalid = |problem| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        problem,
    };
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            let port = machineconfig::render::parse_port(p)
                .ok_or_else(|| invalid(AddressProblem::InvalidPort { port: p.to_owned() }))?;
            (h, port)
        }
        _ => (endpoint, DEFAULT_PORT),
    };
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(invalid(AddressProblem::EmptyHost));
    }
    Ok((host.to_owned(), port))
}

/// `host:port`, with an IPv6 host in brackets.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Client {
    /// A client for `context` (default: the current one) of a talosconfig, as machineconfig
    /// parses and generates it.
    pub fn from_config(config: &TalosConfig, context: Option<&str>) -> Result<Client, Error> {
        let (name, ctx) = config
            .context_named(context)
            .ok_or_else(|| Error::NoContext(context.unwrap_or(&config.context).to_owned()))?;
        Self::from_context(name, ctx)
    }

    /// A client from one talosconfig context (`name` is used in messages).
    pub fn from_context(name: &str, ctx: &Context) -> Result<Client, Error> {
        let credential = |field: &'static str, pem: Result<String, DecodeError>| {
            pem.map_err(|source| Error::Credential {
                context: name.to_owned(),
                field,
                source,
            })
        };
        let ca = credential("ca", ctx.ca_pem())?;
        let crt = credential("crt", ctx.crt_pem())?;
        // Talos labels Ed25519 PKCS#8 keys "ED25519 PRIVATE KEY"; rustls reads "PRIVATE KEY".
        let key = credential("key", ctx.key_pem())?.replace("ED25519 PRIVATE KEY", "PRIVATE KEY");
        for endpoint in &ctx.endpoints {
            address(endpoint)?;
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(crt, key));
        Ok(Client {
            endpoints: ctx.endpoints.clone(),
            security: Arc::new(Security::Mutual(tls)),
            timeout: Duration::from_secs(5),
            observer: None,
            connected: Default::default(),
            first: Default::default(),
        })
    }

    /// A client from talosconfig YAML and a context (default: the current one); the YAML is
    /// parsed by [`TalosConfig::from_yaml`].
    pub fn from_talosconfig(yaml: &str, context: Option<&str>) -> Result<Client, Error> {
        let config = TalosConfig::from_yaml(yaml).map_err(|e| Error::Talosconfig(Arc::new(e)))?;
        Self::from_config(&config, context)
    }

    /// A client for nodes in maintenance mode: TLS without verifying the server (the node has
    /// no identity yet) and without a client certificate. Use it only to apply a configuration.
    pub fn maintenance(endpoints: Vec<String>) -> Client {
        Client {
            endpoints,
            security: Arc::new(Security::Maintenance),
            timeout: Duration::from_secs(5),
            observer: None,
            connected: Default::default(),
            first: Default::default(),
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

    /// Tell `observer` of every call.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Client {
        self.observer = Some(observer);
        self
    }

    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A channel to the first endpoint that answers (failover in order, from [`Client::first`]),
    /// with its index. An endpoint that is written wrongly fails at once; one that does not
    /// answer is skipped.
    async fn channel(&self) -> Result<(Channel, usize), Error> {
        let mut last = Error::NoEndpoints;
        let n = self.endpoints.len();
        let first = self.first.load(std::sync::atomic::Ordering::Relaxed);
        for index in (0..n).map(|i| (first + i) % n) {
            let endpoint = &self.endpoints[index];
            let (host, port) = address(endpoint)?;
            let attempt = match self.security.as_ref() {
                Security::Mutual(tls) => self.connect_mutual(endpoint, tls, &host, port).await,
                Security::Maintenance => {
                    crate::insecure::connect(endpoint, &host, port, self.timeout).await
                }
            };
            match attempt {
                Ok(channel) => return Ok((channel, index)),
                Err(e @ Error::Connect { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn connect_mutual(
        &self,
        endpoint: &str,
        tls: &ClientTlsConfig,
        host: &str,
        port: u16,
    ) -> Result<Channel, Error> {
        let ep = Endpoint::from_shared(format!("https://{}", authority(host, port)))
            .map_err(|e| Error::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                problem: AddressProblem::Address(Arc::new(e)),
            })?
            .tls_config(tls.clone().domain_name(host))
            .map_err(|e| Error::Tls {
                endpoint: endpoint.to_owned(),
                source: Arc::new(e),
            })?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        ep.connect().await.map_err(|e| Error::Connect {
            endpoint: endpoint.to_owned(),
            source: Arc::new(e),
        })
    }

    fn request<T>(&self, message: T, nodes: &Nodes) -> Result<Request<T>, Error> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        let md = req.metadata_mut();
        let value = |s: &str| {
            MetadataValue::try_from(s).map_err(|e| Error::InvalidNodeName {
                node: s.to_owned(),
                source: Arc::new(e),
            })
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

    /// The connected channel, connecting (with failover) when there is none.
    async fn connection(&self) -> Result<Channel, Error> {
        let mut connected = self.connected.lock().await;
        Ok(match connected.as_ref() {
            Some((c, _)) => c.clone(),
            None => {
                let (c, index) = self.channel().await?;
                *connected = Some((c.clone(), index));
                c
            }
        })
    }

    async fn machine(&self) -> Result<MachineServiceClient<Channel>, Error> {
        Ok(MachineServiceClient::new(self.connection().await?)
            .max_decoding_message_size(32 * 1024 * 1024))
    }

    /// Run a call under the client's deadline, mapping the gRPC status. Returns the reply and
    /// how long the call took.
    async fn call<F, T>(&self, method: &'static str, fut: F) -> Result<(T, Duration), Error>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(s)) => Err(Error::from_status(&s, self.timeout, start.elapsed())),
            Ok(Ok(r)) => Ok((r.into_inner(), start.elapsed())),
        };
        if matches!(result, Err(Error::Timeout(_) | Error::Unavailable(_))) {
            // Reconnect (and fail over) on the next call; after a call that ran out of time,
            // starting from the next endpoint.
            let mut connected = self.connected.lock().await;
            if let (Some((_, index)), Err(Error::Timeout(_))) = (connected.as_ref(), &result) {
                self.first
                    .store(index + 1, std::sync::atomic::Ordering::Relaxed);
            }
            *connected = None;
        }
        if let Some(observer) = &self.observer {
            observer.observe(method, start.elapsed(), result.as_ref().err());
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
        self.call("events", c.events(req))
            .await
            .map(|(stream, _)| stream)
    }
}

impl Client {
    /// LifecycleService.Upgrade of one node (`nodes` names at most one): install Talos from the
    /// installer `image` to disk, to boot at the next reboot, following the progress stream to
    /// its exit code. The stream has no overall deadline (an install takes minutes); each
    /// progress message must come within the client's timeout. A non-zero exit code is
    /// [`Error::Aborted`] with the last progress message. Talos before 1.13 answers
    /// [`Error::Unimplemented`]: use [`Client::upgrade`] there.
    pub async fn install_upgrade(&self, nodes: &Nodes, image: String) -> Result<(), Error> {
        use crate::machine::lifecycle_service_client::LifecycleServiceClient;
        use crate::machine::lifecycle_service_install_progress::Response as Progress;
        let mut c = LifecycleServiceClient::new(self.connection().await?);
        let mut req = self.request(
            LifecycleServiceUpgradeRequest {
                source: Some(InstallArtifactsSource { image_name: image }),
                ..Default::default()
            },
            nodes,
        )?;
        req.metadata_mut().remove("grpc-timeout");
        let (mut stream, _) = self.call("lifecycle_upgrade", c.upgrade(req)).await?;
        let mut last = String::new();
        loop {
            let next = tokio::time::timeout(self.timeout, stream.message())
                .await
                .map_err(|_| Error::Timeout(self.timeout))?
                .map_err(|s| Error::from_status(&s, self.timeout, self.timeout))?;
            match next.and_then(|m| m.progress).and_then(|p| p.response) {
                None => {
                    return Err(Error::Aborted(format!(
                        "the upgrade stream ended without an exit code (last: {last:?})"
                    )));
                }
                Some(Progress::Message(m)) => last = m,
                Some(Progress::ExitCode(0)) => return Ok(()),
                Some(Progress::ExitCode(code)) => {
                    return Err(Error::Aborted(format!(
                        "the installer exited with code {code}: {last}"
                    )));
                }
            }
        }
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

/// Split a multi-node reply into per-node results (errors carried in `Metadata.error`) of a call
/// made with `deadline` that took `elapsed`.
fn per_node<M>(
    messages: Vec<M>,
    metadata: impl Fn(&M) -> Option<&Metadata>,
    deadline: Duration,
    elapsed: Duration,
) -> Vec<NodeResult<M>> {
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
                Err(Error::from_status(
                    &Status::new(code, md.error.clone()),
                    deadline,
                    elapsed,
                ))
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
            let (reply, elapsed) = self.call(stringify!($method), c.$method(req)).await?;
            Ok(per_node(reply.messages, |m| m.metadata.as_ref(), self.timeout, elapsed))
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
        /// Apply a machine configuration in TRY mode: it runs at once, without a reboot, and
        /// the node rolls it back after `timeout` unless another configuration is applied
        /// before (a NO_REBOOT apply of the same one confirms it). Talos refuses a change that
        /// needs a reboot with InvalidArgument.
        apply_configuration_try(data: Vec<u8>, timeout: Duration) -> ApplyConfiguration =
            apply_configuration(ApplyConfigurationRequest {
                data,
                mode: apply_configuration_request::Mode::Try as i32,
                try_mode_timeout: Some(prost_types::Duration {
                    seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(timeout.subsec_nanos()).unwrap_or(0),
                }),
                ..Default::default()
            })
    );
    unary!(
        /// Ask how the node would take a machine configuration (AUTO mode, dry run): the reply
        /// says whether it would reboot, and the difference from the configuration it runs
        /// (`Config diff:`). Nothing changes on the node.
        apply_configuration_dry_run(data: Vec<u8>) -> ApplyConfiguration =
            apply_configuration(ApplyConfigurationRequest {
                data,
                mode: apply_configuration_request::Mode::Auto as i32,
                dry_run: true,
                ..Default::default()
            })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

    use std::error::Error as _;

    use machineconfig::talosconfig::{self, ClientOptions};
    use machineconfig::{Contract, SecretsBundle};

    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        for (d, text) in [
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(150), "2m30s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(61_250), "1m1.25s"),
            (Duration::from_micros(20), "20µs"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(HumanDuration(d).to_string(), text, "{d:?}");
        }
        assert_eq!(
            Error::Timeout(Duration::from_secs(5)).to_string(),
            "timed out after 5s"
        );
    }

    #[test]
    fn a_deadline_is_never_lost() {
        let five = Duration::from_secs(5);
        // The server's DeadlineExceeded once our deadline is up: our timeout, named.
        let s = Status::deadline_exceeded("context deadline exceeded");
        let e = Error::from_status(&s, five, Duration::from_millis(5001));
        assert!(matches!(e, Error::Timeout(d) if d == five), "{e:?}");
        assert_eq!(e.to_string(), "timed out after 5s");
        // Before it: a deadline of the server's, with its message.
        let e = Error::from_status(&s, five, Duration::from_millis(20));
        assert_eq!(
            e.to_string(),
            "deadline exceeded: context deadline exceeded"
        );
        // tonic's own request timeout (the same deadline) ends a call as Cancelled.
        let s = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(s.code(), Code::Cancelled);
        let e = Error::from_status(&s, five, Duration::from_millis(20));
        assert_eq!(e.to_string(), "timed out after 5s");
        // ... at times without the cause attached: the elapsed time tells.
        let s = Status::cancelled("Timeout expired");
        let e = Error::from_status(&s, five, Duration::from_millis(5002));
        assert!(matches!(e, Error::Timeout(d) if d == five), "{e:?}");
        let e = Error::from_status(&s, five, Duration::from_millis(20));
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        // Without a known deadline, the status's message is kept.
        let e = Error::from(Status::deadline_exceeded("slow"));
        assert_eq!(e.to_string(), "deadline exceeded: slow");
        // A call cut short by its connection closing: Unavailable, so retried.
        let e = Error::from(Status::cancelled("operation was canceled"));
        assert!(
            matches!(e, Error::Unavailable(_)) && e.is_retryable(),
            "{e:?}"
        );

        // Per-node errors of a multi-node reply.
        let failed = Version {
            metadata: Some(Metadata {
                hostname: "n1".into(),
                error: "rpc error: code = DeadlineExceeded".into(),
                status: Some(crate::google::rpc::Status {
                    code: Code::DeadlineExceeded as i32,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        for (elapsed, text) in [
            (five, "timed out after 5s"),
            (
                Duration::from_millis(3),
                "deadline exceeded: rpc error: code = DeadlineExceeded",
            ),
        ] {
            let results = per_node(vec![failed.clone()], |m| m.metadata.as_ref(), five, elapsed);
            let err = results[0].result.as_ref().unwrap_err();
            assert_eq!(err.to_string(), text);
            assert!(!err.to_string().contains("0ns"));
            assert!(err.is_retryable());
        }
    }

    #[tokio::test]
    async fn a_call_that_outlives_its_deadline_names_it() {
        let client = Client::maintenance(vec![]).with_timeout(Duration::from_millis(50));
        let never = std::future::pending::<Result<tonic::Response<()>, Status>>();
        let err = client.call("never", never).await.unwrap_err();
        assert!(matches!(err, Error::Timeout(d) if d == Duration::from_millis(50)));
        assert_eq!(err.to_string(), "timed out after 50ms");
    }

    #[test]
    fn retryable_errors() {
        let retryable = [
            Error::Unavailable("x".into()),
            Error::Timeout(Duration::from_secs(1)),
            Error::DeadlineExceeded("x".into()),
            Error::ResourceExhausted("x".into()),
            Error::Aborted("x".into()),
            Error::Connect {
                endpoint: "10.0.0.1".into(),
                source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            },
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e:?}");
        }
        let permanent = [
            Error::InvalidArgument("x".into()),
            Error::PermissionDenied("x".into()),
            Error::Unauthenticated("x".into()),
            Error::NotFound("x".into()),
            Error::AlreadyExists("x".into()),
            Error::FailedPrecondition("x".into()),
            Error::Unimplemented("x".into()),
            Error::Other {
                code: Code::Internal,
                message: "x".into(),
            },
            Error::NoContext("x".into()),
            Error::NoEndpoints,
            Error::Tls {
                endpoint: "10.0.0.1".into(),
                source: Arc::new(std::io::Error::other("bad")),
            },
            Error::InvalidEndpoint {
                endpoint: "10.0.0.1:x".into(),
                problem: AddressProblem::InvalidPort { port: "x".into() },
            },
        ];
        for e in &permanent {
            assert!(!e.is_retryable(), "{e:?}");
        }
        // gRPC codes map onto them.
        for (code, retry) in [
            (Code::Unavailable, true),
            (Code::DeadlineExceeded, true),
            (Code::ResourceExhausted, true),
            (Code::Aborted, true),
            (Code::InvalidArgument, false),
            (Code::PermissionDenied, false),
            (Code::Unauthenticated, false),
            (Code::NotFound, false),
            (Code::AlreadyExists, false),
            (Code::FailedPrecondition, false),
            (Code::Unimplemented, false),
        ] {
            assert_eq!(
                Error::from(Status::new(code, "m")).is_retryable(),
                retry,
                "{code:?}"
            );
        }
    }

    #[test]
    fn endpoints_with_bad_ports_are_refused() {
        assert_eq!(address("10.0.0.1").unwrap(), ("10.0.0.1".into(), 50000));
        assert_eq!(
            address("10.0.0.1:50001").unwrap(),
            ("10.0.0.1".into(), 50001)
        );
        assert_eq!(address("node-1:443").unwrap(), ("node-1".into(), 443));
        assert_eq!(address("fd00::1").unwrap(), ("fd00::1".into(), 50000));
        assert_eq!(address("[fd00::1]").unwrap(), ("fd00::1".into(), 50000));
        assert_eq!(
            address("[fd00::1]:50001").unwrap(),
            ("fd00::1".into(), 50001)
        );
        for (endpoint, port) in [
            ("10.0.0.1:0", "0"),
            ("10.0.0.1:65536", "65536"),
            ("10.0.0.1:http", "http"),
            ("10.0.0.1:", ""),
            ("[fd00::1]:x", "x"),
        ] {
            let err = address(endpoint).unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::InvalidEndpoint { problem: AddressProblem::InvalidPort { port: p }, .. }
                        if p == port
                ),
                "{endpoint}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("not {port:?}")), "{err}");
            assert!(!err.is_retryable());
        }
        assert!(matches!(
            address(":50000"),
            Err(Error::InvalidEndpoint {
                problem: AddressProblem::EmptyHost,
                ..
            })
        ));
        assert_eq!(authority("fd00::1", 50000), "[fd00::1]:50000");
        assert_eq!(authority("10.0.0.1", 50000), "10.0.0.1:50000");
    }

    fn talosconfig(endpoints: Vec<String>) -> TalosConfig {
        let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
        let options = ClientOptions {
            endpoints,
            ..ClientOptions::default()
        };
        talosconfig::generate("demo", &bundle, &options).unwrap()
    }

    #[tokio::test]
    async fn clients_come_from_machineconfigs_talosconfig() {
        let config = talosconfig(vec!["127.0.0.1:1".into()]);
        let key = config.current().unwrap().key.clone();
        let client = Client::from_config(&config, None).unwrap();
        assert_eq!(client.endpoints, vec!["127.0.0.1:1".to_owned()]);
        assert!(!format!("{client:?}").contains(&key));
        // The YAML convenience delegates to machineconfig's parser.
        let yaml = config.to_yaml().unwrap();
        let client = Client::from_talosconfig(&yaml, Some("demo")).unwrap();
        // Nothing listens on port 1: a transport error, retryable, with its cause.
        let err = client.version(&Nodes::Endpoint).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(
            err.source()
                .is_some_and(|s| s.is::<tonic::transport::Error>()),
            "{err:?}"
        );
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(
            err.to_string().len() > "no endpoint reachable: 127.0.0.1:1: transport error".len(),
            "{err}"
        );

        let err = Client::from_talosconfig(&yaml, Some("other")).unwrap_err();
        assert!(
            matches!(&err, Error::NoContext(c) if c == "other"),
            "{err:?}"
        );
        let err = Client::from_talosconfig("context: [", None).unwrap_err();
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<machineconfig::Error>())
                .is_some(),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("parsing talosconfig: "),
            "{err}"
        );
        assert!(!err.is_retryable());

        let mut broken = config.clone();
        if let Some(ctx) = broken.contexts.get_mut("demo") {
            ctx.key = format!("{}%", &key[..key.len() - 1]);
        }
        let err = Client::from_config(&broken, None).unwrap_err();
        assert!(
            matches!(&err, Error::Credential { field: "key", context, .. } if context == "demo"),
            "{err:?}"
        );
        assert!(!err.to_string().contains(&key[..8]) && !format!("{err:?}").contains(&key[..8]));

        let err =
            Client::from_config(&talosconfig(vec!["10.0.0.1:99999".into()]), None).unwrap_err();
        assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn no_endpoints_is_an_error_not_a_hang() {
        let err = Client::maintenance(vec![])
            .version(&Nodes::Endpoint)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoEndpoints), "{err:?}");
        let err = Client::maintenance(vec!["127.0.0.1:0".into()])
            .version(&Nodes::Endpoint)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    }
}
