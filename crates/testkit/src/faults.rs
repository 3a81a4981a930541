//! A fault-injecting proxy in front of a kube-apiserver, for clients that must survive a bad day
//! of their management cluster: 500 answers, 409 conflicts, writes whose reply is lost (done, but
//! answered 500), and watch streams cut short.
//!
//! The proxy listens on loopback over plain HTTP and forwards to the API server with the
//! upstream client's credentials, so a client pointed at [`FaultProxy::write_kubeconfig`] sends
//! every request through it. Headers (the User-Agent among them) pass through, so the API
//! server's audit log still tells clients apart. Faults are drawn from a seeded generator: the
//! same seed and the same request order give the same faults.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};

use crate::Error;

/// What the proxy does to the requests it forwards. Fractions are of the requests of that class.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub seed: u64,
    /// Reads and writes (not watches) answered 500 InternalError without being forwarded.
    pub internal_error: f64,
    /// Updates and patches (PUT, PATCH) answered 409 Conflict without being forwarded.
    pub conflict: f64,
    /// Writes (POST, PUT, PATCH, DELETE) forwarded and done, but answered 500: the client does
    /// not learn that its write happened.
    pub lost_reply: f64,
    /// Watch streams end after this long (the client must watch again).
    pub cut_watches_after: Option<Duration>,
}

/// How many requests met each fault.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub forwarded: AtomicU64,
    pub internal_errors: AtomicU64,
    pub conflicts: AtomicU64,
    pub lost_replies: AtomicU64,
    pub watches_cut: AtomicU64,
}

impl FaultCounts {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (forwarded, 500s, 409s, lost replies, watches cut)
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            get(&self.forwarded),
            get(&self.internal_errors),
            get(&self.conflicts),
            get(&self.lost_replies),
            get(&self.watches_cut),
        )
    }
}

struct State {
    upstream: kube::Client,
    faults: Faults,
    /// splitmix64 state: one draw per decision.
    rng: AtomicU64,
    counts: Arc<FaultCounts>,
}

impl State {
    /// A uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` with `faults`.
    pub async fn start(upstream: kube::Client, faults: Faults) -> Result<FaultProxy, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("binding the fault proxy"))?;
        let port = listener
            .local_addr()
            .map_err(Error::io("reading the fault proxy's address"))?
            .port();
        let counts = Arc::new(FaultCounts::default());
        let state = Arc::new(State {
            upstream,
            faults,
            rng: AtomicU64::new(faults.seed),
            counts: counts.clone(),
        });
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            let state = state.clone();
            async move { forward(&state, request).await }
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the fault proxy stopped");
            }
        });
        Ok(FaultProxy { port, counts, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }

    /// A kubeconfig (0600) whose server is this proxy; it carries no credentials, the proxy
    /// adds its upstream's.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: faults\n\
             clusters:\n- name: faults\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: faults\n  user: {{}}\n\
             contexts:\n- name: faults\n  context:\n    cluster: faults\n    user: faults\n",
            self.port
        );
        crate::controlplane::write_private(path, &yaml)
    }
}

/// A Kubernetes Status answer, as the API server writes one.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn forward(state: &State, request: Request<Body>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let watch = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let write = matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let update = matches!(parts.method, Method::PUT | Method::PATCH);
    let faults = &state.faults;
    if !watch && state.draw() < faults.internal_error {
        FaultCounts::bump(&state.counts.internal_errors);
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Internal error occurred: injected by the fault proxy",
        );
    }
    if update && state.draw() < faults.conflict {
        FaultCounts::bump(&state.counts.conflicts);
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your \
             changes to the latest version and try again (injected by the fault proxy)",
        );
    }
    let lose_reply = write && state.draw() < faults.lost_reply;
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
        }
    };
    for hop in [
        http::header::HOST,
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_LENGTH,
    ] {
        parts.headers.remove(hop);
    }
    let upstream = Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    FaultCounts::bump(&state.counts.forwarded);
    let response = match state.upstream.send(upstream).await {
        Ok(r) => r,
        Err(e) => {
            return status(StatusCode::BAD_GATEWAY, "InternalError", &e.to_string());
        }
    };
    if lose_reply {
        // Let the write finish, then say it failed.
        let mut rest = Body::new(response.into_body()).into_data_stream();
        while let Some(Ok(_)) = rest.next().await {}
        FaultCounts::bump(&state.counts.lost_replies);
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Internal error occurred: the reply was lost by the fault proxy",
        );
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.remove(http::header::CONNECTION);
    let body = Body::new(body);
    match (watch, faults.cut_watches_after) {
        (true, Some(after)) => {
            let counts = state.counts.clone();
            let cut = tokio::time::sleep(after);
            let stream = body.into_data_stream().take_until(async move {
                cut.await;
                FaultCounts::bump(&counts.watches_cut);
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
        _ => Response::from_parts(parts, body),
    }
}
