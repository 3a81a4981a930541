//! etcd's HTTP endpoints as Talos v1.14 runs etcd: Talos v1.14 ships etcd 3.7 and starts it with
//! `--listen-client-http-urls` on port 2383 (machined's etcd service, `argsForInit` and
//! `argsForControlPlane`), so `/health` and `/metrics` are served there, over TLS with client
//! certificates of the cluster's etcd CA, and the client port 2379 is gRPC only. Talos's own
//! health check of the etcd service does not use them (a quorum read over gRPC, unchanged), so
//! what a client can see is the listener itself, which a simulated control plane of v1.14 or
//! later opens on its own loopback address once its etcd runs. Before v1.14 the simulator opens
//! none, as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::{Node, Phase, Shared, lock, release_at_least};

/// Talos's `constants.EtcdClientHTTPPort`.
pub const PORT: u16 = 2383;

/// The etcd version a node of Talos `version` runs, as EtcdStatus reports it (protocol and
/// storage version): etcd 3.7.1 from v1.14 (Talos's `DefaultEtcdVersion`); before, what the
/// simulator has always reported.
pub fn etcd_version(version: &str) -> (&'static str, &'static str) {
    if release_at_least(version, 14) {
        ("3.7.1", "3.7.0")
    } else {
        ("3.5.0", "3.5.0")
    }
}

/// Why the endpoints cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the configuration has no etcd CA certificate and key")]
    NoEtcdCa,
    #[error("etcd CA key: {0}")]
    CaKey(#[from] machineconfig::Error),
    #[error("etcd server certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("etcd TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("etcd client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
}

/// What etcd on a node knows when it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The node's etcd errors (its alarms).
    pub alarms: Vec<String>,
    /// The cluster has a leader this member can reach (quorum).
    pub has_leader: bool,
    pub is_leader: bool,
    pub is_learner: bool,
    /// A read through this member returns in time.
    pub responsive: bool,
    pub version: &'static str,
}

/// etcd's answer to `method path`: status, body. `/health` checks alarms, the leader, then a
/// read, as etcd's `HandleHealth` does; `/metrics` gives the server gauges.
pub fn respond(method: &str, path: &str, facts: &Facts) -> (u16, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/health" if method != "GET" => (405, "Method Not Allowed\n".into()),
        "/health" => {
            let alarm = facts.alarms.iter().find_map(|a| {
                ["NOSPACE", "CORRUPT"]
                    .into_iter()
                    .find(|kind| a.contains(kind))
            });
            let reason = match alarm {
                Some(kind) => format!("ALARM {kind}"),
                None if !facts.has_leader => "RAFT NO LEADER".into(),
                None if !facts.responsive => "RANGE ERROR:etcdserver: request timed out".into(),
                None => return (200, r#"{"health":"true","reason":""}"#.into()),
            };
            (
                503,
                format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}\n"),
            )
        }
        "/metrics" => {
            let gauge = |b: bool| u8::from(b);
            (
                200,
                format!(
                    "etcd_server_has_leader {}\netcd_server_is_leader {}\n\
                     etcd_server_is_learner {}\netcd_server_version{{server_version=\"{}\"}} 1\n",
                    gauge(facts.has_leader),
                    gauge(facts.is_leader),
                    gauge(facts.is_learner),
                    facts.version,
                ),
            )
        }
        _ => (404, "404 page not found\n".into()),
    }
}

/// Serve the endpoints for `node` while the returned future runs, if it is a control plane of
/// Talos v1.14 or later on a loopback address; otherwise never do anything.
pub(crate) async fn serve(shared: Arc<Shared>, node: Arc<Node>) {
    let config = node.state().config.clone();
    let wanted = node.spec.address.is_loopback()
        && release_at_least(&node.state().version, 14)
        && config.as_ref().is_some_and(|c| c.control_plane);
    let tls = match config.filter(|_| wanted).map(|c| server_tls(&node, &c)) {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            tracing::warn!(node = %node.address(), "no etcd HTTP endpoints: {e}");
            return std::future::pending().await;
        }
        None => return std::future::pending().await,
    };
    // etcd listens once it runs: once the node is a member of its cluster's etcd.
    while facts(&shared, &node).is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::new(node.spec.address, PORT)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %node.address(), "etcd HTTP bind failed: {e}");
                return std::future::pending().await;
            }
        };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Ok((stream, _)) = listener.accept().await {
        let (acceptor, shared, node) = (acceptor.clone(), shared.clone(), node.clone());
        tokio::spawn(async move {
            // A client that never finishes its request is let go.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                if let Ok(tls) = acceptor.accept(stream).await {
                    answer(tls, &shared, &node).await;
                }
            })
            .await;
        });
    }
}

/// Read one request and answer it (then close, as `Connection: close`).
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    shared: &Shared,
    node: &Node,
) {
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(n @ 1..) => head.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request = head.split_whitespace();
    let (method, path) = (
        request.next().unwrap_or_default(),
        request.next().unwrap_or_default(),
    );
    // A member removed since the connection was accepted: its etcd has stopped.
    let Some(facts) = facts(shared, node) else {
        return;
    };
    let (status, body) = respond(method, path, &facts);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What `node`'s etcd knows now, or None when it does not run (not a member, node not running).
fn facts(shared: &Shared, node: &Node) -> Option<Facts> {
    let (cluster_id, alarms, unhealthy, version) = {
        let s = node.state();
        if s.phase != Phase::Running {
            return None;
        }
        let c = s.config.as_ref()?;
        (
            c.cluster_id.clone(),
            s.failures.etcd_errors.clone(),
            s.failures.etcd_unhealthy,
            s.version.clone(),
        )
    };
    let healthy = shared.healthy_etcd_nodes();
    let clusters = lock(&shared.clusters);
    let etcd = clusters.get(&cluster_id)?;
    let me = etcd.member_of(&node.address())?;
    Some(Facts {
        alarms,
        has_leader: etcd.leader.is_some() && etcd.has_quorum(&healthy),
        is_leader: etcd.leader == Some(me.id),
        is_learner: me.learner,
        responsive: !unhealthy,
        version: etcd_version(&version).0,
    })
}

/// etcd's serving certificate, signed by the cluster's etcd CA, and client certificates of
/// that CA required (`client-cert-auth`).
fn server_tls(
    node: &Node,
    cfg: &crate::node::Configured,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (ca_crt, ca_key) = cfg.etcd_ca.clone().ok_or(Error::NoEtcdCa)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node.spec.hostname.clone(), "localhost".into()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(node.spec.address));
    params
        .distinguished_name
        .push(DnType::CommonName, node.spec.hostname.as_str());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::from_ca_cert_pem(&ca_crt, machineconfig::secrets::signing_key(&ca_key)?)?;
    let cert = params.signed_by(&key, &issuer)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_crt.as_bytes())?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
        )?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            has_leader: true,
            responsive: true,
            version: "3.7.1",
            ..Facts::default()
        }
    }

    #[test]
    fn health_checks_alarms_then_the_leader_then_a_read() {
        assert_eq!(
            respond("GET", "/health", &healthy()),
            (200, r#"{"health":"true","reason":""}"#.into())
        );
        let alarmed = Facts {
            alarms: vec!["memberID:1 alarm:NOSPACE".into()],
            has_leader: false,
            ..healthy()
        };
        assert_eq!(
            respond("GET", "/health?exclude=x", &alarmed),
            (
                503,
                "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n".into()
            )
        );
        let leaderless = Facts {
            has_leader: false,
            responsive: false,
            ..healthy()
        };
        assert!(
            respond("GET", "/health", &leaderless)
                .1
                .contains("RAFT NO LEADER")
        );
        let slow = Facts {
            responsive: false,
            ..healthy()
        };
        assert!(respond("GET", "/health", &slow).1.contains("RANGE ERROR"));
        assert_eq!(respond("POST", "/health", &healthy()).0, 405);
        assert_eq!(respond("GET", "/version", &healthy()).0, 404);
        let metrics = respond("GET", "/metrics", &healthy()).1;
        assert!(
            metrics.contains("etcd_server_has_leader 1")
                && metrics.contains("etcd_server_version{server_version=\"3.7.1\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn talos_1_14_runs_etcd_3_7() {
        assert_eq!(etcd_version("v1.14.1"), ("3.7.1", "3.7.0"));
        assert_eq!(etcd_version("v1.15.0-alpha.1"), ("3.7.1", "3.7.0"));
        assert_eq!(etcd_version("v1.13.2"), ("3.5.0", "3.5.0"));
    }
}
