//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection` (which every Cluster API provider uses), plus a write fence.
//!
//! - A replica takes the Lease when it has no holder, or when its record has not changed for
//!   `leaseDurationSeconds` as measured on this replica's own monotonic clock (never by
//!   comparing the holder's timestamps with ours, so clock skew cannot elect two leaders).
//! - The leader renews every `retry_period`. When no renewal has succeeded for
//!   `renew_deadline` (shorter than the lease duration), it has lost: [`Leadership::keep`]
//!   returns and the caller stops reconciling.
//! - [`Fence`] closes earlier than anyone else can take over: every mutating request made
//!   through a client built with [`FenceLayer`] is refused locally unless the last successful
//!   renewal began less than `renew_deadline` ago. A leader that was frozen (SIGSTOP, a long GC
//!   pause, a suspended VM) and wakes up after its successor took over cannot land a write,
//!   even before its renew loop notices.
//! - [`Leadership::release`] empties the holder on a clean shutdown, so a standby takes over
//!   at its next retry instead of waiting for the lease to expire.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Where the Lease lives and how long its terms are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity` (the Pod name and a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Lease settings client-go would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseSettingsError {
    #[error("the lease duration must be at least 1s")]
    LeaseTooShort,
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?})"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "the retry period ({retry_period:?}) must be above zero and shorter than the renew deadline ({renew_deadline:?})"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl LeaseSettings {
    /// The constraints client-go enforces: retry < renew deadline < lease duration.
    pub fn check(&self) -> Result<(), LeaseSettingsError> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(LeaseSettingsError::LeaseTooShort);
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaseSettingsError::RenewDeadline {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(LeaseSettingsError::RetryPeriod {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// The request this replica's writes must pass: open only while its leadership is current.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    /// Whether a write may go out now.
    pub fn holds(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    fn open_until(&self, until: Instant) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    fn close(&self) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A write refused because this replica does not hold the Lease (any more).
#[derive(Debug, thiserror::Error)]
#[error(
    "not the leader: {method} {path} refused (the lease is held elsewhere or was not renewed in time)"
)]
pub struct NotLeader {
    method: http::Method,
    path: String,
}

/// A tower layer for the kube client: mutating requests go out only while the fence holds.
#[derive(Debug, Clone)]
pub struct FenceLayer(pub Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;
    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

/// See [`FenceLayer`].
#[derive(Debug, Clone)]
pub struct Fenced<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Fenced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reads = matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        if !reads && !self.fence.holds() {
            let refused = NotLeader {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            };
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("the lease {0} is held by {1} now")]
    TakenBy(String, String),
    #[error("the lease {lease} was not renewed within {deadline:?}; last error: {last}")]
    NotRenewed {
        lease: String,
        deadline: Duration,
        last: String,
    },
}

/// The outcome of one attempt to take or renew the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leader,
    Follower { holder: String },
}

/// Competes for the Lease; see the module documentation.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    fence: Fence,
    /// The Lease's resourceVersion when last seen, and when we first saw it.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// `client` must be a client without [`FenceLayer`]: the elector's own writes renew the
    /// fence.
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            fence: Fence::default(),
            observed: None,
        }
    }

    /// The fence this elector opens while it leads; give it to the clients that write.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    /// Wait until this replica holds the Lease.
    pub async fn acquire(mut self) -> Leadership {
        let mut last_holder: Option<String> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leader) => {
                    tracing::info!(lease = %self.lease_name(), identity = %self.settings.identity, "acquired the lease: leading");
                    return Leadership { elector: self };
                }
                Ok(Attempt::Follower { holder }) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(lease = %self.lease_name(), %holder, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.lease_name(), error = %e, "cannot read or take the lease; retrying");
                }
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let settings = &self.settings;
        let duration_secs = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&settings.name).await? else {
            return self.create(started, now, duration_secs).await;
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let seen_at = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => {
                self.observed = Some((version, started));
                started
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(settings.identity.as_str());
        let term = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(settings.lease_duration, Duration::from_secs);
        if let Some(holder) = &holder
            && !ours
            && started < seen_at + term
        {
            return Ok(Attempt::Follower {
                holder: holder.clone(),
            });
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if ours {
                spec.acquire_time
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // The resourceVersion we read makes this a compare-and-swap: a replica that took the
        // Lease in between makes it fail with 409.
        match self
            .api
            .replace(&settings.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => Ok(self.won(started, written)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower {
                holder: holder.unwrap_or_else(|| "(another replica, just now)".into()),
            }),
            Err(e) => Err(e),
        }
    }

    /// No Lease yet: take it by creating it; a replica that created it first wins.
    async fn create(
        &mut self,
        started: Instant,
        now: MicroTime,
        duration_secs: i32,
    ) -> Result<Attempt, kube::Error> {
        let settings = &self.settings;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => Ok(self.won(started, created)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower {
                holder: "(another replica, just now)".into(),
            }),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, started: Instant, written: Lease) -> Attempt {
        self.fence
            .open_until(started + self.settings.renew_deadline);
        self.observed = Some((
            written.metadata.resource_version.unwrap_or_default(),
            started,
        ));
        Attempt::Leader
    }
}

/// This replica leads. Keep it with [`Leadership::keep`]; give it up with
/// [`Leadership::release`].
#[derive(Debug)]
pub struct Leadership {
    elector: Elector,
}

impl Leadership {
    pub fn fence(&self) -> Fence {
        self.elector.fence()
    }

    /// Renew every retry period; returns (with the fence closed) once leadership is lost.
    pub async fn keep(&mut self) -> Lost {
        let settings = self.elector.settings.clone();
        let mut last_ok = Instant::now();
        let mut last_error = String::from("none");
        loop {
            tokio::time::sleep(settings.retry_period).await;
            let deadline = last_ok + settings.renew_deadline;
            let attempt =
                tokio::time::timeout_at(deadline, self.elector.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(Attempt::Leader)) => last_ok = Instant::now(),
                Ok(Ok(Attempt::Follower { holder })) => {
                    self.elector.fence.close();
                    return Lost::TakenBy(self.elector.lease_name(), holder);
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.elector.lease_name(), error = %e, "renewing the lease failed");
                    last_error = e.to_string();
                }
                Err(_) => last_error = "the renewal timed out".into(),
            }
            if Instant::now() >= deadline {
                self.elector.fence.close();
                return Lost::NotRenewed {
                    lease: self.elector.lease_name(),
                    deadline: settings.renew_deadline,
                    last: last_error,
                };
            }
        }
    }

    /// Close the fence, then hand the Lease back (empty holder, 1 s term) so that a standby
    /// takes over at its next retry.
    pub async fn release(self) -> Result<(), kube::Error> {
        let elector = self.elector;
        elector.fence.close();
        let settings = &elector.settings;
        let Some(mut lease) = elector.api.get_opt(&settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        elector
            .api
            .replace(&settings.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %elector.lease_name(), "released the lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease: u64, renew: u64, retry: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn terms_must_nest_as_client_go_requires() {
        assert!(settings(15, 10, 2).check().is_ok());
        assert!(settings(10, 10, 2).check().is_err());
        assert!(settings(15, 10, 10).check().is_err());
        assert!(settings(15, 10, 0).check().is_err());
        assert!(settings(0, 0, 0).check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_opens_until_its_deadline_and_closes_on_demand() {
        let fence = Fence::default();
        assert!(!fence.holds(), "closed until a lease is won");
        fence.open_until(Instant::now() + Duration::from_secs(10));
        assert!(fence.holds());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!fence.holds(), "a renewal deadline passed");
        fence.open_until(Instant::now() + Duration::from_secs(10));
        fence.close();
        assert!(!fence.holds());
    }

    #[tokio::test]
    async fn fenced_services_refuse_writes_but_not_reads_when_closed() {
        use tower::{Layer, Service, ServiceExt};
        let fence = Fence::default();
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut svc = FenceLayer(fence.clone()).layer(inner);
        let request = |m: http::Method| {
            http::Request::builder()
                .method(m)
                .uri("/apis/x/v1/namespaces/n/things/t")
                .body(())
                .unwrap_or_default()
        };
        let ready = svc.ready().await.map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(ready, Ok(()));
        assert!(svc.call(request(http::Method::GET)).await.is_ok());
        let refused = svc.call(request(http::Method::PATCH)).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("not the leader: PATCH /apis/x/v1/namespaces/n/things/t"),
            "{message}"
        );
        fence.open_until(Instant::now() + Duration::from_secs(5));
        assert!(svc.call(request(http::Method::DELETE)).await.is_ok());
    }
}
