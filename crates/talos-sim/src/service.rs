//! The Talos API served by each simulated node: MachineService (the subset talosctl and
//! talos-capi use), LifecycleService.Upgrade and ImageService.Pull, with Talos's per-method
//! roles and apid's `node` / `nodes` proxying.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use talos_api::common::Metadata;
use talos_api::machine::image_service_server::{ImageService, ImageServiceServer};
use talos_api::machine::lifecycle_service_server::{LifecycleService, LifecycleServiceServer};
use talos_api::machine::machine_service_server::{MachineService, MachineServiceServer};
use talos_api::machine::*;
use tokio_stream::StreamExt;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::etcd::EtcdError;
use crate::node::{Configured, Node, Phase, Shared, SimEvent, Stage, lock};

/// Talos roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    None,
    Reader,
    Operator,
    Admin,
}

/// The API of one node.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    shared: Arc<Shared>,
    node: Arc<Node>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    node: Arc<Node>,
    tls: ServerTlsConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let faulty_shared = shared.clone();
    let counted = node.clone();
    let api = Api {
        shared,
        node: node.clone(),
    };
    Server::builder()
        .tls_config(tls)?
        .layer(tower::layer::layer_fn(move |inner| Faulty {
            inner,
            shared: faulty_shared.clone(),
            node: node.clone(),
        }))
        .add_service(MachineServiceServer::new(api.clone()))
        .add_service(LifecycleServiceServer::new(api.clone()))
        .add_service(ImageServiceServer::new(api))
        .serve_with_incoming_shutdown(
            // apid (Go) writes with TCP_NODELAY; without it, a small response waits for the
            // client's delayed ACK (40 ms on Linux) and every call looks that slow.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |accepted| {
                    accepted.inspect(|stream| {
                        counted
                            .connections
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = stream.set_nodelay(true);
                    })
                },
            ),
            shutdown,
        )
        .await
}

/// The gRPC method a call asks for (set on each request as it arrives).
#[derive(Clone)]
struct Called(String);

/// The failures that act on a whole call, by gRPC method: [`crate::node::Failures::stalls`]
/// holds a call for as long as it says before handing it on (a hung or overloaded apid), and
/// [`crate::node::Failures::lost_replies`] lets a call take effect and then answers it
/// Unavailable, as when the connection is reset before the reply arrives.
#[derive(Clone)]
struct Faulty<S> {
    inner: S,
    shared: Arc<Shared>,
    node: Arc<Node>,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Faulty<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        lock(&self.shared.calls)
            .entry(path.clone())
            .or_default()
            .received += 1;
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        // The method goes with the call, so a node it is proxied to can stall it too.
        req.extensions_mut().insert(Called(method.clone()));
        let method = method.as_str();
        let (stall, lose) = {
            let mut s = self.node.state();
            let stall = s.failures.stalls.get(method).copied();
            let lose = match s.failures.lost_replies.get_mut(method) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            (stall, lose)
        };
        let method = method.to_owned();
        if lose {
            lock(&self.shared.lost_replies).push((self.node.address(), method.clone()));
        }
        // The clone that was made ready is the one to call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            let response = ready.call(req).await?;
            // An Unimplemented answer is trailers-only: its status is in the headers.
            if response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                == Some((Code::Unimplemented as i32).to_string().as_str())
            {
                lock(&shared.calls).entry(path).or_default().unimplemented += 1;
            }
            if !lose {
                return Ok(response);
            }
            // The call has taken effect (a unary reply is complete once its future is); the
            // client learns nothing of it.
            drop(response);
            Ok(Status::unavailable(format!(
                "error reading from server: read tcp: connection reset by peer (the reply to {method} was lost)"
            ))
            .into_http())
        })
    }
}

/// A control-plane node that boots into a bootstrapped cluster joins etcd as a learner, and is
/// promoted a moment later.
pub(crate) fn after_boot(shared: &Arc<Shared>, node: &Arc<Node>) {
    let Some(cfg) = node.state().config.clone().filter(|c| c.control_plane) else {
        return;
    };
    let joined = lock(&shared.clusters)
        .get_mut(&cfg.cluster_id)
        .and_then(|etcd| etcd.join(&node.address(), &node.spec.hostname));
    if let Some(id) = joined {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(shared.timing.promote).await;
            if let Some(etcd) = lock(&shared.clusters).get_mut(&cfg.cluster_id) {
                etcd.promote(id);
            }
        });
    }
}

fn role_of<T>(req: &Request<T>) -> Role {
    let Some(certs) = req.peer_certs() else {
        return Role::None;
    };
    let Some(cert) = certs.first() else {
        return Role::None;
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Role::None;
    };
    parsed
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(|o| match o {
            "os:admin" => Role::Admin,
            "os:operator" => Role::Operator,
            "os:reader" | "os:etcd:backup" | "os:image:verifier" => Role::Reader,
            _ => Role::None,
        })
        .max()
        .unwrap_or(Role::None)
}

/// Where a call goes, from apid's `node` / `nodes` metadata.
enum Targets {
    Local,
    One(String),
    Many(Vec<String>),
}

fn targets<T>(req: &Request<T>) -> Targets {
    let md = req.metadata();
    let many: Vec<String> = md
        .get_all("nodes")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !many.is_empty() {
        return Targets::Many(many);
    }
    match md.get("node").and_then(|v| v.to_str().ok()) {
        Some(n) if !n.is_empty() => Targets::One(n.to_owned()),
        _ => Targets::Local,
    }
}

/// A unary reply: `{ repeated Msg messages = 1; }`.
trait Reply: Sized {
    type Msg: Default;
    fn into_msgs(self) -> Vec<Self::Msg>;
    fn from_msgs(msgs: Vec<Self::Msg>) -> Self;
    fn set_metadata(msg: &mut Self::Msg, md: Metadata);
}

macro_rules! reply {
    ($($resp:ty => $msg:ty),* $(,)?) => {$(
        impl Reply for $resp {
            type Msg = $msg;
            fn into_msgs(self) -> Vec<$msg> { self.messages }
            fn from_msgs(messages: Vec<$msg>) -> Self { Self { messages } }
            fn set_metadata(msg: &mut $msg, md: Metadata) { msg.metadata = Some(md); }
        }
    )*};
}

reply!(
    VersionResponse => Version,
    ApplyConfigurationResponse => ApplyConfiguration,
    BootstrapResponse => Bootstrap,
    ServiceListResponse => ServiceList,
    EtcdMemberListResponse => EtcdMembers,
    EtcdRemoveMemberByIdResponse => EtcdRemoveMemberById,
    EtcdLeaveClusterResponse => EtcdLeaveCluster,
    EtcdForfeitLeadershipResponse => EtcdForfeitLeadership,
    EtcdStatusResponse => EtcdStatus,
    HostnameResponse => Hostname,
    RebootResponse => Reboot,
    ResetResponse => Reset,
    UpgradeResponse => Upgrade,
);

fn one<R: Reply>(msg: R::Msg) -> R {
    R::from_msgs(vec![msg])
}

impl Api {
    /// Authorize at the entry node, then run `f` on the target node(s).
    async fn dispatch<T, R, F, Fut>(
        &self,
        req: Request<T>,
        need: Role,
        f: F,
    ) -> Result<Response<R>, Status>
    where
        R: Reply,
        F: Fn(Arc<Node>) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        // In maintenance mode there are no client certificates: the maintenance service offers
        // only a few methods (others are Unimplemented, see `guard`) and no roles.
        let maintenance = self.node.state().phase == Phase::Maintenance;
        if !maintenance && role_of(&req) < need {
            return Err(Status::permission_denied("not authorized"));
        }

        let targets = targets(&req);
        let method = req.extensions().get::<Called>().map(|c| c.0.clone());
        // apid waits for every node it proxies to: one whose apid hangs holds up the reply.
        let stalled = |node: &Arc<Node>| {
            let stall = method
                .as_ref()
                .filter(|_| !Arc::ptr_eq(node, &self.node))
                .and_then(|m| node.state().failures.stalls.get(m).copied());
            async move {
                if let Some(stall) = stall {
                    tokio::time::sleep(stall).await;
                }
            }
        };
        let served = match &targets {
            Targets::Many(ts) => ts.len() as u64,
            _ => 1,
        };
        self.shared
            .requests
            .fetch_add(served, std::sync::atomic::Ordering::Relaxed);
        match targets {
            Targets::Local => f(self.node.clone()).await.map(Response::new),
            Targets::One(t) => {
                let node = self.proxied_to(&t)?;
                stalled(&node).await;
                f(node).await.map(Response::new)
            }
            Targets::Many(ts) => {
                let mut out = Vec::new();
                for t in ts {
                    let result = match self.proxied_to(&t) {
                        Ok(node) => {
                            stalled(&node).await;
                            f(node).await
                        }
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(r) => out.extend(r.into_msgs().into_iter().map(|mut m| {
                            R::set_metadata(
                                &mut m,
                                Metadata {
                                    hostname: t.clone(),
                                    ..Metadata::default()
                                },
                            );
                            m
                        })),
                        Err(s) => {
                            let mut m = R::Msg::default();
                            R::set_metadata(&mut m, failed_on(&t, &s));
                            out.push(m);
                        }
                    }
                }
                Ok(Response::new(R::from_msgs(out)))
            }
        }
    }
}

impl Api {
    /// The node a call is proxied to, as apid reaches it: over TLS, so a node serving an
    /// expired certificate is refused (the node itself still answers calls made to it).
    fn proxied_to(&self, target: &str) -> Result<Arc<Node>, Status> {
        let node = self
            .shared
            .node(target)
            .ok_or_else(|| unreachable(target))?;
        if !Arc::ptr_eq(&node, &self.node) && node.state().certificate_expired {
            // As Go's x509 says it, with the current time in it.
            let now = time::OffsetDateTime::now_utc();
            let rfc3339 = |t: time::OffsetDateTime| {
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            };
            return Err(Status::unavailable(format!(
                "connection error: desc = \"transport: authentication handshake failed: tls: \
                 failed to verify certificate: x509: certificate has expired or is not yet valid: \
                 current time {} is after {}\" (dialing {target}:50000)",
                rfc3339(now),
                rfc3339(now - time::Duration::hours(1)),
            )));
        }
        Ok(node)
    }
}

/// The metadata apid puts on a proxied node's reply in place of the reply, when the node fails.
fn failed_on(target: &str, status: &Status) -> Metadata {
    Metadata {
        hostname: target.to_owned(),
        error: status.message().to_owned(),
        status: Some(talos_api::google::rpc::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        }),
    }
}

fn unreachable(target: &str) -> Status {
    Status::unavailable(format!(
        "connection error: desc = \"transport: Error while dialing: dial tcp {target}:50000: connect: connection refused\""
    ))
}

/// Per-node preconditions: the node answers, the method exists in its phase, no injected error.
fn guard(node: &Node, method: &str, in_maintenance: bool) -> Result<Option<Configured>, Status> {
    let s = node.state();
    if s.phase == Phase::Down || s.failures.down {
        return Err(unreachable(&node.address()));
    }
    if let Some(code) = s.failures.api_errors.get(method) {
        return Err(Status::new(*code, format!("injected failure of {method}")));
    }
    if s.phase == Phase::Maintenance && !in_maintenance {
        return Err(Status::unimplemented(format!(
            "{method} is not available in maintenance mode"
        )));
    }
    Ok(s.config.clone())
}

fn control_plane(cfg: &Option<Configured>, method: &str) -> Result<Configured, Status> {
    match cfg {
        Some(c) if c.control_plane => Ok(c.clone()),
        _ => Err(Status::unimplemented(format!(
            "{method} is only available on control plane nodes"
        ))),
    }
}

/// Run an etcd operation of `method` on `node`'s cluster: control planes only, etcd running.
fn in_etcd<T>(
    shared: &Shared,
    node: &Node,
    method: &str,
    op: impl FnOnce(&mut crate::etcd::Etcd, &str) -> Result<T, EtcdError>,
) -> Result<T, Status> {
    let cfg = control_plane(&guard(node, method, false)?, method)?;
    let healthy = shared.healthy_etcd_nodes();
    let mut clusters = lock(&shared.clusters);
    let etcd = clusters
        .get_mut(&cfg.cluster_id)
        .ok_or_else(|| Status::failed_precondition("etcd is not running"))?;
    let changes = etcd.history.len();
    let result = op(etcd, &node.address()).map_err(etcd_status);
    // A removal is recorded with whether the rest kept quorum.
    let quorum = etcd.has_quorum(&healthy);
    for change in etcd.history.iter_mut().skip(changes) {
        if change.op == crate::etcd::Op::Remove {
            change.quorum_after = Some(quorum);
        }
    }
    result
}

fn etcd_status(e: EtcdError) -> Status {
    match e {
        EtcdError::AlreadyBootstrapped => Status::already_exists(e.to_string()),
        EtcdError::NoSuchMember(_) => Status::not_found(e.to_string()),
        EtcdError::NotMember => Status::failed_precondition(e.to_string()),
    }
}

/// The target Talos version of an installer image: its tag.
/// The mode Talos applies a configuration in (its ApplyConfiguration), as it reports it. Up to
/// v1.13: TRY and NO_REBOOT are refused for a change that needs a reboot, AUTO picks one of the
/// two, and maintenance installs with REBOOT. From v1.14 (`live_only`): every change applies
/// live, AUTO is NO_REBOOT, REBOOT becomes NO_REBOOT in maintenance and is refused elsewhere.
fn apply_mode(
    asked: apply_configuration_request::Mode,
    maintenance: bool,
    live_only: bool,
    immediate: impl Fn() -> Result<(), crate::node::NeedsReboot>,
) -> Result<apply_configuration_request::Mode, Status> {
    use apply_configuration_request::Mode;
    Ok(match asked {
        Mode::Reboot | Mode::Auto if live_only && maintenance => Mode::NoReboot,
        Mode::Reboot if live_only => {
            return Err(Status::unimplemented(
                "the REBOOT mode is not supported, please use AUTO or NO_REBOOT modes instead",
            ));
        }
        Mode::Auto if live_only => Mode::NoReboot,
        _ if live_only => asked,
        _ if maintenance => Mode::Reboot,
        Mode::Try | Mode::NoReboot => {
            immediate().map_err(|e| Status::invalid_argument(e.to_string()))?;
            asked
        }
        Mode::Auto if immediate().is_ok() => Mode::NoReboot,
        Mode::Auto => Mode::Reboot,
        other => other,
    })
}

fn version_of_image(image: &str) -> Option<String> {
    let name = image.split('@').next().unwrap_or(image);
    let (_, tag) = name.rsplit_once(':')?;
    (!tag.contains('/')).then(|| tag.to_owned())
}

impl Api {
    fn services(&self, node: &Node) -> Vec<ServiceInfo> {
        let s = node.state();
        let cfg = s.config.clone();
        drop(s);
        let now = std::time::SystemTime::now();
        let ts = Some(prost_types::Timestamp::from(now));
        let svc = |id: &str, state: &str, healthy: bool| ServiceInfo {
            id: id.to_owned(),
            state: state.to_owned(),
            events: Some(ServiceEvents {
                events: vec![ServiceEvent {
                    msg: format!("Service {state}"),
                    state: state.to_owned(),
                    ts,
                }],
            }),
            health: Some(ServiceHealth {
                unknown: false,
                healthy,
                last_message: if healthy {
                    String::new()
                } else {
                    "not healthy".to_owned()
                },
                last_change: ts,
            }),
        };
        let mut list = vec![
            svc("apid", "Running", true),
            svc("machined", "Running", true),
            svc("containerd", "Running", true),
        ];
        let Some(cfg) = cfg else { return list };
        list.push(svc("cri", "Running", true));
        list.push(svc("kubelet", "Running", true));
        if cfg.control_plane {
            list.push(svc("trustd", "Running", true));
            let healthy_nodes = self.shared.healthy_etcd_nodes();
            let clusters = lock(&self.shared.clusters);
            let etcd = clusters.get(&cfg.cluster_id);
            let member = etcd.and_then(|e| e.member_of(&node.address())).is_some();
            let quorum = etcd.is_some_and(|e| e.has_quorum(&healthy_nodes));
            let unhealthy = node.state().failures.etcd_unhealthy;
            list.push(match (member, quorum && !unhealthy) {
                (false, _) => svc("etcd", "Preparing", false),
                (true, healthy) => svc("etcd", "Running", healthy),
            });
        }
        list
    }
}

type ApiResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MachineService for Api {
    async fn version(&self, req: Request<()>) -> ApiResult<VersionResponse> {
        self.dispatch(req, Role::Reader, |node| async move {
            guard(&node, "Version", true)?;
            let s = node.state();
            let maintenance = s.phase == Phase::Maintenance;
            Ok(one::<VersionResponse>(Version {
                metadata: None,
                version: Some(VersionInfo {
                    tag: s.version.clone(),
                    sha: "simulated".into(),
                    built: String::new(),
                    go_version: "talos-sim".into(),
                    os: "linux".into(),
                    arch: "amd64".into(),
                }),
                platform: Some(PlatformInfo {
                    name: "metal".into(),
                    mode: if maintenance { "maintenance" } else { "metal" }.into(),
                }),
                features: Some(FeaturesInfo { rbac: true }),
            }))
        })
        .await
    }

    async fn apply_configuration(
        &self,
        req: Request<ApplyConfigurationRequest>,
    ) -> ApiResult<ApplyConfigurationResponse> {
        let body = req.get_ref().clone();
        let need = if self.node.state().phase == Phase::Maintenance {
            Role::None
        } else {
            Role::Admin
        };
        let shared = self.shared.clone();
        self.dispatch(req, need, |node| {
            let body = body.clone();
            let shared = shared.clone();
            async move {
                guard(&node, "ApplyConfiguration", true)?;
                let data = String::from_utf8(body.data)
                    .map_err(|_| Status::invalid_argument("configuration is not UTF-8"))?;
                let version = node.state().version.clone();
                let cfg = Configured::parse(&data, &version).map_err(|e| {
                    Status::invalid_argument(format!("configuration validation failed: {e}"))
                })?;
                let maintenance = node.state().phase == Phase::Maintenance;
                // From v1.14 Talos no longer asks whether a change needs a reboot
                // (`CanApplyImmediate` is gone): every change applies live.
                let live_only = crate::node::release_at_least(&node.state().version, 14);
                use apply_configuration_request::Mode;
                let asked = Mode::try_from(body.mode).unwrap_or(Mode::Reboot);
                let immediate = || match node.state().config.as_ref() {
                    Some(current) => crate::node::immediate_change(&current.docs, &cfg.docs),
                    None => Ok(()),
                };
                let mode = apply_mode(asked, maintenance, live_only, immediate)?;
                let details = match mode {
                    Mode::Reboot => "Applied configuration with a reboot",
                    Mode::Staged => "Staged configuration to be applied after the next reboot",
                    _ => "Applied configuration without a reboot",
                };
                if body.dry_run {
                    let diff = crate::node::config_diff(
                        node.state()
                            .config
                            .as_ref()
                            .map_or(&[][..], |c| c.docs.as_slice()),
                        &cfg.docs,
                    );
                    return Ok(one::<ApplyConfigurationResponse>(ApplyConfiguration {
                        mode: mode as i32,
                        mode_details: format!(
                            "Dry run summary:\n{details} (skipped in dry-run).\n{diff}"
                        ),
                        ..Default::default()
                    }));
                }
                match mode {
                    _ if maintenance => {
                        // Install, then boot into the configured system.
                        shared.restart(&node, Stage::Installing, shared.timing.boot, move |s| {
                            s.applied += 1;
                            s.config = Some(cfg)
                        });
                    }
                    Mode::Reboot => {
                        shared.restart(&node, Stage::Installing, shared.timing.reboot, move |s| {
                            s.applied += 1;
                            s.config = Some(cfg)
                        });
                    }
                    Mode::Try => {
                        // Live now, and rolled back after the timeout unless another
                        // configuration (the confirming NO_REBOOT) is applied before.
                        let timeout = body
                            .try_mode_timeout
                            .and_then(|d| {
                                Some(
                                    std::time::Duration::from_secs(u64::try_from(d.seconds).ok()?)
                                        + std::time::Duration::from_nanos(
                                            u64::try_from(d.nanos).ok()?,
                                        ),
                                )
                            })
                            .filter(|d| !d.is_zero())
                            .unwrap_or(std::time::Duration::from_secs(60));
                        let (previous, tried) = {
                            let mut state = node.state();
                            state.applied += 1;
                            (state.config.replace(cfg), state.applied)
                        };
                        let node = Arc::clone(&node);
                        tokio::spawn(async move {
                            tokio::time::sleep(timeout).await;
                            let mut state = node.state();
                            if state.applied == tried {
                                state.applied += 1;
                                state.config = previous;
                            }
                        });
                    }
                    _ => {
                        let mut state = node.state();
                        state.applied += 1;
                        state.config = Some(cfg);
                    }
                }
                Ok(one::<ApplyConfigurationResponse>(ApplyConfiguration {
                    metadata: None,
                    warnings: Vec::new(),
                    mode: mode as i32,
                    mode_details: details.into(),
                }))
            }
        })
        .await
    }

    async fn bootstrap(&self, req: Request<BootstrapRequest>) -> ApiResult<BootstrapResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            async move {
                let cfg = control_plane(&guard(&node, "Bootstrap", false)?, "Bootstrap")?;
                let id = lock(&shared.clusters)
                    .entry(cfg.cluster_id.clone())
                    .or_default()
                    .bootstrap(&node.address(), &node.spec.hostname)
                    .map_err(etcd_status)?;
                let _ = id;
                let _ = shared.events.send(SimEvent::Bootstrapped {
                    cluster_id: cfg.cluster_id.clone(),
                    address: node.address(),
                });
                // Other running control planes of the cluster join now.
                let peers: Vec<Arc<Node>> = lock(&shared.nodes).values().cloned().collect();
                for peer in peers {
                    let same = peer
                        .state()
                        .config
                        .as_ref()
                        .is_some_and(|c| c.control_plane && c.cluster_id == cfg.cluster_id);
                    if same
                        && peer.state().phase == Phase::Running
                        && peer.address() != node.address()
                    {
                        after_boot(&shared, &peer);
                    }
                }
                Ok(one::<BootstrapResponse>(Bootstrap::default()))
            }
        })
        .await
    }

    type EventsStream = BoxStream<Event>;

    async fn events(&self, req: Request<EventsRequest>) -> ApiResult<Self::EventsStream> {
        if self.node.state().phase != Phase::Maintenance && role_of(&req) < Role::Reader {
            return Err(Status::permission_denied("not authorized"));
        }
        // apid fans Events out to every target node, tagging each event with its node.
        let tail = req.get_ref().tail_events;
        let (nodes, tagged) = match targets(&req) {
            Targets::Local => (vec![self.node.clone()], false),
            Targets::One(t) => (
                vec![self.shared.node(&t).ok_or_else(|| unreachable(&t))?],
                false,
            ),
            Targets::Many(ts) => {
                let nodes = ts
                    .iter()
                    .map(|t| self.shared.node(t).ok_or_else(|| unreachable(t)))
                    .collect::<Result<Vec<_>, _>>()?;
                (nodes, true)
            }
        };
        let mut streams = Vec::new();
        for node in nodes {
            guard(&node, "Events", true)?;
            let (past, live) = node.events(tail);
            let host = node.address();
            let live = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(|e| e.ok());
            let stream = tokio_stream::iter(past)
                .chain(live)
                .map(move |mut e: Event| {
                    if tagged {
                        e.metadata = Some(Metadata {
                            hostname: host.clone(),
                            ..Metadata::default()
                        });
                    }
                    Ok(e)
                });
            streams.push(Box::pin(stream) as BoxStream<Event>);
        }
        Ok(Response::new(Box::pin(futures::stream::select_all(
            streams,
        ))))
    }

    async fn etcd_member_list(
        &self,
        req: Request<EtcdMemberListRequest>,
    ) -> ApiResult<EtcdMemberListResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Reader, |node| {
            let shared = shared.clone();
            async move {
                let cfg = control_plane(&guard(&node, "EtcdMemberList", false)?, "EtcdMemberList")?;
                let healthy = shared.healthy_etcd_nodes();
                let clusters = lock(&shared.clusters);
                let etcd = clusters
                    .get(&cfg.cluster_id)
                    .filter(|e| e.member_of(&node.address()).is_some());
                let etcd = etcd.ok_or_else(|| {
                    Status::failed_precondition("etcd is not running on this node")
                })?;
                if !etcd.has_quorum(&healthy) || node.state().failures.etcd_unhealthy {
                    return Err(Status::unavailable(
                        "etcdserver: request timed out (no quorum)",
                    ));
                }
                let members = etcd
                    .members
                    .iter()
                    .map(|m| EtcdMember {
                        id: m.id,
                        hostname: m.hostname.clone(),
                        peer_urls: vec![format!("https://{}:2380", m.node)],
                        client_urls: vec![format!("https://{}:2379", m.node)],
                        is_learner: m.learner,
                    })
                    .collect();
                Ok(one::<EtcdMemberListResponse>(EtcdMembers {
                    metadata: None,
                    legacy_members: Vec::new(),
                    members,
                }))
            }
        })
        .await
    }

    async fn etcd_remove_member_by_id(
        &self,
        req: Request<EtcdRemoveMemberByIdRequest>,
    ) -> ApiResult<EtcdRemoveMemberByIdResponse> {
        let id = req.get_ref().member_id;
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            async move {
                in_etcd(&shared, &node, "EtcdRemoveMemberByID", |etcd, _| {
                    etcd.remove(id)
                })?;
                Ok(one::<EtcdRemoveMemberByIdResponse>(
                    EtcdRemoveMemberById::default(),
                ))
            }
        })
        .await
    }

    async fn etcd_leave_cluster(
        &self,
        req: Request<EtcdLeaveClusterRequest>,
    ) -> ApiResult<EtcdLeaveClusterResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            async move {
                in_etcd(&shared, &node, "EtcdLeaveCluster", |etcd, me| {
                    etcd.leave(me)
                })?;
                Ok(one::<EtcdLeaveClusterResponse>(EtcdLeaveCluster::default()))
            }
        })
        .await
    }

    async fn etcd_forfeit_leadership(
        &self,
        req: Request<EtcdForfeitLeadershipRequest>,
    ) -> ApiResult<EtcdForfeitLeadershipResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            async move {
                let healthy = shared.healthy_etcd_nodes();
                let member = in_etcd(&shared, &node, "EtcdForfeitLeadership", |etcd, me| {
                    let leader = etcd.forfeit(me, &healthy)?;
                    Ok(leader
                        .and_then(|id| etcd.members.iter().find(|m| m.id == id))
                        .map(|m| m.hostname.clone())
                        .unwrap_or_default())
                })?;
                Ok(one::<EtcdForfeitLeadershipResponse>(
                    EtcdForfeitLeadership {
                        metadata: None,
                        member,
                    },
                ))
            }
        })
        .await
    }

    async fn etcd_status(&self, req: Request<()>) -> ApiResult<EtcdStatusResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Reader, |node| {
            let shared = shared.clone();
            async move {
                let cfg = control_plane(&guard(&node, "EtcdStatus", false)?, "EtcdStatus")?;
                let (errors, version) = {
                    let s = node.state();
                    (s.failures.etcd_errors.clone(), s.version.clone())
                };
                let (protocol_version, storage_version) = crate::etcd_http::etcd_version(&version);
                let clusters = lock(&shared.clusters);
                let etcd = clusters
                    .get(&cfg.cluster_id)
                    .ok_or_else(|| Status::failed_precondition("etcd is not running"))?;
                let me = etcd.member_of(&node.address()).ok_or_else(|| {
                    Status::failed_precondition("etcd is not running on this node")
                })?;
                Ok(one::<EtcdStatusResponse>(EtcdStatus {
                    metadata: None,
                    member_status: Some(EtcdMemberStatus {
                        member_id: me.id,
                        leader: etcd.leader.unwrap_or_default(),
                        is_learner: me.learner,
                        errors,
                        protocol_version: protocol_version.into(),
                        storage_version: storage_version.into(),
                        ..Default::default()
                    }),
                }))
            }
        })
        .await
    }

    async fn hostname(&self, req: Request<()>) -> ApiResult<HostnameResponse> {
        self.dispatch(req, Role::Reader, |node| async move {
            guard(&node, "Hostname", true)?;
            Ok(one::<HostnameResponse>(Hostname {
                metadata: None,
                hostname: node.spec.hostname.clone(),
            }))
        })
        .await
    }

    type ListStream = BoxStream<FileInfo>;

    async fn list(&self, req: Request<ListRequest>) -> ApiResult<Self::ListStream> {
        if self.node.state().phase != Phase::Maintenance && role_of(&req) < Role::Reader {
            return Err(Status::permission_denied("not authorized"));
        }
        let listing = |target: &str| -> Result<Vec<FileInfo>, Status> {
            let node = self.proxied_to(target)?;
            self.listing(&node, req.get_ref())
        };
        let infos = match targets(&req) {
            Targets::Local => self.listing(&self.node, req.get_ref())?,
            Targets::One(t) => listing(&t)?,
            // apid streams each node's entries tagged with the node, and a node's error as one
            // message carrying it.
            Targets::Many(ts) => ts
                .iter()
                .flat_map(|t| match listing(t) {
                    Ok(infos) => infos
                        .into_iter()
                        .map(|mut info| {
                            info.metadata = Some(Metadata {
                                hostname: t.clone(),
                                ..Metadata::default()
                            });
                            info
                        })
                        .collect(),
                    Err(s) => vec![FileInfo {
                        metadata: Some(failed_on(t, &s)),
                        ..FileInfo::default()
                    }],
                })
                .collect(),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            infos.into_iter().map(Ok),
        ))))
    }

    async fn reboot(&self, req: Request<RebootRequest>) -> ApiResult<RebootResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Operator, |node| {
            let shared = shared.clone();
            async move {
                guard(&node, "Reboot", false)?;
                let delay = shared.timing.reboot;
                schedule(move || {
                    shared.restart(&node, Stage::Rebooting, delay, |s| {
                        if let Some(v) = s.staged.take() {
                            if std::mem::take(&mut s.failures.upgrade_fails) {
                                return; // the new version fails to boot: A/B rollback
                            }
                            s.version = v;
                        }
                    })
                });
                Ok(one::<RebootResponse>(Reboot {
                    metadata: None,
                    actor_id: "sim-reboot".into(),
                }))
            }
        })
        .await
    }

    async fn reset(&self, req: Request<ResetRequest>) -> ApiResult<ResetResponse> {
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            async move {
                let cfg = guard(&node, "Reset", false)?;
                if let Some(cfg) = cfg.filter(|c| c.control_plane)
                    && let Some(etcd) = lock(&shared.clusters).get_mut(&cfg.cluster_id)
                {
                    // A graceful reset leaves etcd first.
                    let _ = etcd.leave(&node.address());
                }
                let delay = shared.timing.reboot;
                schedule(move || {
                    shared.restart(&node, Stage::Resetting, delay, |s| s.config = None)
                });
                Ok(one::<ResetResponse>(Reset {
                    metadata: None,
                    actor_id: "sim-reset".into(),
                }))
            }
        })
        .await
    }

    async fn service_list(&self, req: Request<()>) -> ApiResult<ServiceListResponse> {
        let api = self.clone();
        self.dispatch(req, Role::Reader, |node| {
            let api = api.clone();
            async move {
                guard(&node, "ServiceList", false)?;
                Ok(one::<ServiceListResponse>(ServiceList {
                    metadata: None,
                    services: api.services(&node),
                }))
            }
        })
        .await
    }

    async fn upgrade(&self, req: Request<UpgradeRequest>) -> ApiResult<UpgradeResponse> {
        let image = req.get_ref().image.clone();
        let shared = self.shared.clone();
        self.dispatch(req, Role::Admin, |node| {
            let shared = shared.clone();
            let image = image.clone();
            async move {
                guard(&node, "Upgrade", false)?;
                let version = version_of_image(&image).ok_or_else(|| {
                    Status::invalid_argument(format!("image {image:?} has no tag"))
                })?;
                let delay = shared.timing.upgrade;
                schedule(move || {
                    shared.restart(&node, Stage::Upgrading, delay, move |s| {
                        if !std::mem::take(&mut s.failures.upgrade_fails) {
                            s.version = version;
                        }
                    })
                });
                Ok(one::<UpgradeResponse>(Upgrade {
                    metadata: None,
                    ack: "Upgrade request received".into(),
                    actor_id: "sim-upgrade".into(),
                }))
            }
        })
        .await
    }
}

/// Run `f` after the current reply is sent (a reboot must not cut the call that asked for it).
fn schedule(f: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        f();
    });
}

impl Api {
    /// `node`'s answer to a List call: its entries, or machined's error (gRPC Unknown, as Go's
    /// `os` errors are).
    fn listing(&self, node: &Node, request: &ListRequest) -> Result<Vec<FileInfo>, Status> {
        let cfg = guard(node, "List", false)?;
        let control_plane = cfg.as_ref().is_some_and(|c| c.control_plane);
        let etcd_member = cfg.as_ref().is_some_and(|c| {
            lock(&self.shared.clusters)
                .get(&c.cluster_id)
                .is_some_and(|e| e.member_of(&node.address()).is_some())
        });
        let modified = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let facts = crate::files::Facts {
            control_plane,
            etcd_member,
            modified,
        };
        crate::files::list(facts, request).map_err(|e| Status::unknown(e.to_string()))
    }
}

impl Api {
    /// Streaming calls go to one node: this one, or the one named by `node` metadata.
    fn stream_target<T>(&self, req: &Request<T>, method: &str) -> Result<Arc<Node>, Status> {
        if self.node.state().phase != Phase::Maintenance && role_of(req) < Role::Admin {
            return Err(Status::permission_denied("not authorized"));
        }
        let node = match targets(req) {
            Targets::Local => self.node.clone(),
            Targets::One(t) => self.shared.node(&t).ok_or_else(|| unreachable(&t))?,
            Targets::Many(_) => {
                return Err(Status::invalid_argument(
                    "one-2-many proxying is not supported",
                ));
            }
        };
        guard(&node, method, false)?;
        Ok(node)
    }
}

#[tonic::async_trait]
impl LifecycleService for Api {
    type UpgradeStream = BoxStream<LifecycleServiceUpgradeResponse>;

    async fn upgrade(
        &self,
        req: Request<LifecycleServiceUpgradeRequest>,
    ) -> ApiResult<Self::UpgradeStream> {
        let node = self.stream_target(&req, "LifecycleService.Upgrade")?;
        let image = req
            .get_ref()
            .source
            .as_ref()
            .map(|s| s.image_name.clone())
            .unwrap_or_default();
        let version = version_of_image(&image)
            .ok_or_else(|| Status::invalid_argument(format!("image {image:?} has no tag")))?;
        // Staged: the next reboot boots the new version (or rolls back if it fails).
        node.state().staged = Some(version.clone());
        let progress = |r| LifecycleServiceUpgradeResponse {
            progress: Some(LifecycleServiceInstallProgress { response: Some(r) }),
        };
        use lifecycle_service_install_progress::Response as P;
        let items = vec![
            Ok(progress(P::Message(format!("installing {image}")))),
            Ok(progress(P::Message(format!(
                "staged Talos {version} for the next boot"
            )))),
            Ok(progress(P::ExitCode(0))),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

#[tonic::async_trait]
impl ImageService for Api {
    type PullStream = BoxStream<ImageServicePullResponse>;

    async fn pull(&self, req: Request<ImageServicePullRequest>) -> ApiResult<Self::PullStream> {
        self.stream_target(&req, "ImageService.Pull")?;
        let image = req.get_ref().image_ref.clone();
        if version_of_image(&image).is_none() && !image.contains('@') {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("invalid reference {image:?}"),
            ));
        }
        let item = ImageServicePullResponse {
            response: Some(image_service_pull_response::Response::Name(image)),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(item)]))))
    }
}
