//! How controllers reach Talos nodes. The control-plane controller asks [`TalosNodes`] for a
//! client from a cluster's talosconfig aimed at chosen node endpoints; [`Grpc`] is the real
//! one (mTLS against the cluster's OS CA, a deadline on every call). The seam lets a test run
//! the same controller against nodes that time out or fail, without changing the controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A source of Talos API clients.
pub trait TalosNodes: Send + Sync + std::fmt::Debug {
    /// A client for the nodes at `endpoints`, with the credentials of `talosconfig` (YAML, as
    /// in `<cluster>-talosconfig`). Errors never carry the talosconfig's content.
    fn connect(
        &self,
        talosconfig: &str,
        endpoints: Vec<String>,
    ) -> Result<Arc<talos_api::Client>, talos_api::Error>;
}

/// How long a client nobody asked for is kept (with its connection): the clients a control
/// plane's observations use every reconcile (at least every 30 s) stay, and those of one-off
/// calls to one node (bootstrap, an upgrade) go soon after.
const IDLE: Duration = Duration::from_secs(60);

/// Talos API clients over gRPC. A client (and the mTLS connection it holds) is kept for the
/// same talosconfig and endpoints, so the reconciles of a control plane share one connection
/// instead of a TLS handshake each; it is dropped after [`IDLE`] unused, and replaced when the
/// talosconfig changes (the key is a digest of both).
#[derive(Debug)]
pub struct Grpc {
    timeout: Duration,
    observer: Option<Arc<dyn talos_api::Observer>>,
    /// By digest of talosconfig and endpoints: when last asked for, and the client.
    clients: Mutex<HashMap<[u8; 32], Kept>>,
}

type Kept = (Instant, Arc<talos_api::Client>);

impl Grpc {
    /// Clients whose calls have `timeout` as deadline (the default is 10 s), each call told to
    /// `observer` (the manager's metrics).
    pub fn new(timeout: Duration, observer: Option<Arc<dyn talos_api::Observer>>) -> Grpc {
        Grpc {
            timeout,
            observer,
            clients: Mutex::default(),
        }
    }

    /// Clients kept now.
    pub fn kept(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }

    /// [`TalosNodes::connect`] at `now`: clients unused for [`IDLE`] are dropped first.
    fn connect_at(
        &self,
        talosconfig: &str,
        endpoints: Vec<String>,
        now: Instant,
    ) -> Result<Arc<talos_api::Client>, talos_api::Error> {
        let mut digest = Sha256::new();
        digest.update(talosconfig.as_bytes());
        for endpoint in &endpoints {
            digest.update([0]);
            digest.update(endpoint.as_bytes());
        }
        let key: [u8; 32] = digest.finalize().into();
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|_, (used, _)| now.saturating_duration_since(*used) < IDLE);
            if let Some((used, client)) = clients.get_mut(&key) {
                *used = now;
                return Ok(Arc::clone(client));
            }
        }
        let client = talos_api::Client::from_talosconfig(talosconfig, None)?
            .with_endpoints(endpoints)
            .with_timeout(self.timeout);
        let client = Arc::new(match &self.observer {
            Some(o) => client.with_observer(Arc::clone(o)),
            None => client,
        });
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, (now, Arc::clone(&client)));
        }
        Ok(client)
    }
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc::new(Duration::from_secs(10), None)
    }
}

impl TalosNodes for Grpc {
    fn connect(
        &self,
        talosconfig: &str,
        endpoints: Vec<String>,
    ) -> Result<Arc<talos_api::Client>, talos_api::Error> {
        self.connect_at(talosconfig, endpoints, Instant::now())
    }
}

/// The first wait before a node that did not answer is asked again; it doubles per failure.
const REST_FIRST: Duration = Duration::from_millis(500);
/// The longest wait for a node that answered before (it went away).
pub const REST_MAX: Duration = Duration::from_secs(30);
/// The longest wait for a node that never answered: it is most likely still booting, and its
/// first answer is what a bring-up waits for.
pub const REST_MAX_BOOTING: Duration = Duration::from_secs(2);
/// Nodes not heard of for this long are forgotten.
const FORGET: Duration = Duration::from_secs(600);

/// Talos nodes that did not answer, by address, each asked again after its own delay (doubling
/// per failure): one dead node is not asked every half second, and does not slow the calls to
/// the others.
#[derive(Debug, Default)]
pub struct Backoff {
    nodes: Mutex<HashMap<String, Reach>>,
}

#[derive(Debug)]
struct Reach {
    /// Failures in a row.
    failures: u32,
    /// Not asked before this.
    until: Instant,
    /// It answered once (so it is not just booting).
    answered: bool,
    /// Last heard of.
    seen: Instant,
    /// Why it did not answer the last time.
    problem: String,
}

/// A node left alone for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resting {
    /// Until it is asked again.
    pub left: Duration,
    /// Why it did not answer the last time.
    pub problem: String,
    /// It answered before (it went away, rather than not being up yet).
    pub answered: bool,
}

impl Backoff {
    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reach>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the node at `address` is left alone at `now`, and for how long.
    pub fn resting(&self, address: &str, now: Instant) -> Option<Resting> {
        let nodes = self.nodes();
        let reach = nodes.get(address).filter(|r| r.until > now)?;
        Some(Resting {
            left: reach.until - now,
            problem: reach.problem.clone(),
            answered: reach.answered,
        })
    }

    /// The record of the node at `address` (a new one if none), after forgetting nodes not
    /// heard of for [`FORGET`].
    fn reach<'a>(
        nodes: &'a mut HashMap<String, Reach>,
        address: &str,
        now: Instant,
    ) -> &'a mut Reach {
        nodes.retain(|_, r| now.duration_since(r.seen) < FORGET);
        let reach = nodes.entry(address.to_owned()).or_insert(Reach {
            failures: 0,
            until: now,
            answered: false,
            seen: now,
            problem: String::new(),
        });
        reach.seen = now;
        reach
    }

    /// Whether the last call to the node at `address` failed (it is probed after its rest).
    pub fn failing(&self, address: &str) -> bool {
        self.nodes().get(address).is_some_and(|r| r.failures > 0)
    }

    /// The node at `address` answered.
    pub fn answered(&self, address: &str, now: Instant) {
        let mut nodes = self.nodes();
        let reach = Self::reach(&mut nodes, address, now);
        reach.failures = 0;
        reach.until = now;
        reach.answered = true;
    }

    /// The node at `address` did not answer, because of `problem`: how long it is left alone.
    pub fn failed(&self, address: &str, now: Instant, problem: String) -> Duration {
        let mut nodes = self.nodes();
        let reach = Self::reach(&mut nodes, address, now);
        reach.failures = reach.failures.saturating_add(1);
        let max = if reach.answered {
            REST_MAX
        } else {
            REST_MAX_BOOTING
        };
        let wait = REST_FIRST
            .saturating_mul(1 << (reach.failures - 1).min(16))
            .min(max);
        reach.until = now + wait;
        reach.problem = problem;
        wait
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
        let nodes = Grpc::new(Duration::from_secs(3), None);
        let client = nodes
            .connect(&yaml, vec!["127.0.0.1:50000".into()])
            .expect("a client");
        assert_eq!(client.timeout(), Duration::from_secs(3));
        // The same talosconfig and endpoints share the client; other endpoints or another
        // talosconfig do not.
        let again = nodes
            .connect(&yaml, vec!["127.0.0.1:50000".into()])
            .expect("a client");
        assert!(Arc::ptr_eq(&client, &again));
        let elsewhere = nodes
            .connect(&yaml, vec!["127.0.0.2:50000".into()])
            .expect("a client");
        assert!(!Arc::ptr_eq(&client, &elsewhere));
        let other = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let other = generate("c", &other, &ClientOptions::default())
            .and_then(|c| c.to_yaml())
            .expect("a talosconfig");
        let rotated = nodes
            .connect(&other, vec!["127.0.0.1:50000".into()])
            .expect("a client");
        assert!(!Arc::ptr_eq(&client, &rotated));
        assert_eq!(nodes.kept(), 3);

        // A client unused for a minute goes (with its connection); one in use stays.
        let t0 = Instant::now();
        let endpoints = || vec!["127.0.0.9:50000".to_owned()];
        let idle = Grpc::default();
        let first = idle.connect_at(&yaml, endpoints(), t0).expect("a client");
        let busy = idle.connect_at(&other, endpoints(), t0).expect("a client");
        let later = t0 + IDLE - Duration::from_secs(1);
        let kept = idle
            .connect_at(&other, endpoints(), later)
            .expect("a client");
        assert!(Arc::ptr_eq(&busy, &kept), "used within the minute: kept");
        let after = t0 + IDLE + Duration::from_secs(1);
        let still = idle
            .connect_at(&other, endpoints(), after)
            .expect("a client");
        assert!(Arc::ptr_eq(&busy, &still), "its use renewed it");
        assert_eq!(idle.kept(), 1, "the one unused for a minute is gone");
        let fresh = idle
            .connect_at(&yaml, endpoints(), after)
            .expect("a client");
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "asked again, it is a new client"
        );

        let secret_looking = "context: c\ncontexts:\n  c:\n    key: c2VjcmV0LWtleS1tYXRlcmlhbA==\n";
        let err = nodes
            .connect(secret_looking, vec![])
            .expect_err("no usable credentials");
        assert!(
            !err.to_string().contains("c2VjcmV0LWtleS1tYXRlcmlhbA"),
            "{err}"
        );
    }

    #[test]
    fn a_node_that_does_not_answer_rests_longer_each_time_and_a_booting_one_not_long() {
        let backoff = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(backoff.resting("10.0.0.1", t0), None);
        // Never answered: booting, asked again within REST_MAX_BOOTING.
        let waits: Vec<Duration> = (0..6)
            .map(|_| backoff.failed("10.0.0.1", t0, "refused".into()))
            .collect();
        assert_eq!(waits[0], REST_FIRST);
        assert_eq!(waits[1], REST_FIRST * 2);
        assert_eq!(waits[5], REST_MAX_BOOTING);
        let resting = backoff.resting("10.0.0.1", t0).expect("left alone");
        assert_eq!(resting.problem, "refused");
        assert_eq!(backoff.resting("10.0.0.1", t0 + REST_MAX_BOOTING), None);
        // Answered once, then went away: up to REST_MAX, and an answer ends it.
        backoff.answered("10.0.0.1", t0);
        assert_eq!(backoff.resting("10.0.0.1", t0), None);
        let longest = (0..10)
            .map(|_| backoff.failed("10.0.0.1", t0, "timeout".into()))
            .max();
        assert_eq!(longest, Some(REST_MAX));
        assert_eq!(backoff.resting("10.0.0.2", t0), None, "per node");
        backoff.answered("10.0.0.1", t0);
        assert_eq!(backoff.resting("10.0.0.1", t0), None);
    }
}
