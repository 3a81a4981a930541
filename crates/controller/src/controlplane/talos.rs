//! The control plane's nodes over the Talos API: what etcd and the services say (observe), and
//! the few calls that change them (bootstrap, leadership, member removal). Every call goes
//! through [`crate::nodes::TalosNodes`] with the cluster's talosconfig, aimed at the Machines'
//! addresses, under the client's deadline.

use std::collections::BTreeMap;

use api::capi::Machine;
use kube::ResourceExt;
use talos_api::Nodes;

use super::scope::EtcdMember;
use crate::nodes::Backoff;
use crate::{Context, Error};

/// The address the Talos API of `machine`'s node is reached at: the first InternalIP, else
/// ExternalIP, else any address.
pub fn address(machine: &Machine) -> Option<String> {
    let addresses = machine.addresses();
    ["InternalIP", "ExternalIP"]
        .iter()
        .find_map(|t| addresses.iter().find(|a| a.type_ == *t))
        .or_else(|| addresses.first())
        .map(|a| a.address.clone())
}

/// The name `machine`'s node registers in etcd with: its Node's name, else its Hostname or
/// InternalDNS address, else the Machine's name.
pub fn hostname(machine: &Machine) -> String {
    let addresses = machine.addresses();
    machine
        .status
        .as_ref()
        .and_then(|s| s.node_ref.as_ref())
        .map(|n| n.name.clone())
        .or_else(|| {
            ["Hostname", "InternalDNS"]
                .iter()
                .find_map(|t| addresses.iter().find(|a| a.type_ == *t))
                .map(|a| a.address.clone())
        })
        .unwrap_or_else(|| machine.name_any())
}

/// One node's health, as its services report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node answered.
    pub reachable: bool,
    /// Its etcd service runs and is healthy.
    pub etcd: bool,
    /// etcd, kubelet and apid are healthy (the components Talos runs the control plane with).
    pub components: bool,
    /// Why not, for conditions.
    pub problem: Option<String>,
    /// The Talos version it reports (asked only when `versions` is asked for).
    pub talos_version: Option<String>,
}

/// What the nodes said.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// The etcd members, named after the machine they run on when one matches; `None` when no
    /// node answered.
    pub members: Option<Vec<EtcdMember>>,
    /// Per machine name.
    pub health: BTreeMap<String, NodeHealth>,
    /// Why the member list is unknown.
    pub problem: Option<String>,
}

/// The last look at each steady control plane (`namespace/name`): a control plane that is
/// steady, healthy and unchanged is not asked again before its next health check, however
/// many events (its own status writes, Secrets, Cluster updates) wake it. Anything in progress,
/// any problem, and any change of a Machine, the spec or the talosconfig asks the nodes.
#[derive(Debug, Default)]
pub struct SteadyLooks(std::sync::Mutex<std::collections::HashMap<String, SteadyLook>>);

#[derive(Debug)]
struct SteadyLook {
    at: std::time::Instant,
    fingerprint: u64,
    observed: Observed,
}

/// What a steady look depends on: the control plane's generation, the talosconfig, and each
/// machine as the cache holds it (any change of a Machine, by Cluster API or by us, counts).
pub fn fingerprint(generation: Option<i64>, talosconfig: &str, machines: &[Machine]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    generation.hash(&mut h);
    talosconfig.hash(&mut h);
    for m in machines {
        m.uid().hash(&mut h);
        m.resource_version().hash(&mut h);
    }
    h.finish()
}

impl SteadyLooks {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, SteadyLook>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The look kept for `key`, if it was taken less than `max_age` before `now` of the same
    /// `fingerprint`.
    pub fn fresh(
        &self,
        key: &str,
        fingerprint: u64,
        now: std::time::Instant,
        max_age: std::time::Duration,
    ) -> Option<Observed> {
        self.lock()
            .get(key)
            .filter(|l| l.fingerprint == fingerprint && now.duration_since(l.at) < max_age)
            .map(|l| l.observed.clone())
    }

    /// Keep `observed`, taken at `at`, for a control plane found steady.
    pub fn keep(&self, key: &str, fingerprint: u64, at: std::time::Instant, observed: &Observed) {
        self.lock().insert(
            key.to_owned(),
            SteadyLook {
                at,
                fingerprint,
                observed: observed.clone(),
            },
        );
    }

    /// Forget `key`'s look: the nodes are asked at its next reconcile.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Ask the nodes of `machines` for the etcd member list, their services and etcd status (and,
/// with `versions`, their Talos versions): each call fanned out by one node to all of them, or,
/// when a node's last call failed or a fanned-out call ran out of time, asked of each node on
/// its own, so that one node that hangs holds up no other's answer. A node
/// that answered before and then stopped is left out until its own backoff ends (see
/// [`crate::nodes::Backoff`]), unless its machine is in `urgent` (a node rebooting into an
/// upgrade is watched closely). A node that never answered is always asked: it is booting,
/// and its first answer is what the next step waits for.
pub async fn observe(
    ctx: &Context,
    backoff: &Backoff,
    talosconfig: &str,
    machines: &[Machine],
    versions: bool,
    urgent: &[String],
) -> Observed {
    let mut observed = Observed::default();
    let now = std::time::Instant::now();
    let targets = targets(backoff, machines, urgent, now, &mut observed);
    if targets.is_empty() {
        observed.problem = Some(if observed.health.is_empty() {
            "no control-plane machine has an address yet".into()
        } else {
            "no control-plane node answered lately; each is asked again after its backoff".into()
        });
        return observed;
    }
    let addresses: Vec<String> = targets.iter().map(|(_, a)| a.clone()).collect();
    let client = match ctx.nodes.connect(talosconfig, addresses.clone()) {
        Ok(c) => c,
        Err(e) => {
            observed.problem = Some(format!("the cluster's talosconfig cannot be used: {e}"));
            return observed;
        }
    };
    let Answers {
        members,
        services,
        statuses,
        versions,
    } = ask(backoff, &client, &addresses, versions).await;
    if let Some(problem) =
        record_health(backoff, (services, statuses), &targets, now, &mut observed)
    {
        observed.problem = Some(problem);
        return observed;
    }
    for reply in versions.and_then(Result::ok).into_iter().flatten() {
        if let (Some(machine), Ok(v)) = (machine_at(&targets, &reply.node).cloned(), reply.result)
            && let Some(h) = observed.health.get_mut(&machine)
        {
            h.talos_version = v.version.map(|i| i.tag);
        }
    }
    // Any node's view of the membership will do; the first that answers is taken.
    match members {
        Ok(replies) => record_members(backoff, &client, machines, replies, &mut observed).await,
        Err(e) => observed.problem = Some(call_problem("listing etcd members", &e)),
    }
    observed
}

/// The machines to ask, by name and address. A node that answered before and then stopped
/// rests until its backoff ends (unless `urgent`), and is recorded as not answering.
fn targets(
    backoff: &Backoff,
    machines: &[Machine],
    urgent: &[String],
    now: std::time::Instant,
    observed: &mut Observed,
) -> Vec<(String, String)> {
    let mut targets = Vec::new();
    for (machine, address) in machines
        .iter()
        .filter_map(|m| address(m).map(|a| (m.name_any(), a)))
    {
        match backoff.resting(&address, now) {
            Some(rest) if rest.answered && !urgent.contains(&machine) => {
                observed.health.insert(
                    machine,
                    NodeHealth {
                        // No countdown here: it would change the conditions at every look.
                        problem: Some(format!("the Talos API does not answer: {}", rest.problem)),
                        ..NodeHealth::default()
                    },
                );
            }
            _ => targets.push((machine, address)),
        }
    }
    targets
}

/// The nodes' answers to one look.
struct Answers {
    members: Replies<talos_api::machine::EtcdMembers>,
    services: Replies<talos_api::machine::ServiceList>,
    statuses: Replies<talos_api::machine::EtcdStatus>,
    versions: Option<Replies<talos_api::machine::Version>>,
}

/// Ask `addresses` for the member list, services and etcd status (and versions): fanned out,
/// or node by node when one of them is failing or a fanned-out call ran out of time; a call
/// that failed as a whole is asked once more at once.
async fn ask(
    backoff: &Backoff,
    client: &talos_api::Client,
    addresses: &[String],
    versions: bool,
) -> Answers {
    let many = Nodes::Many(addresses.to_vec());
    let asked_versions = async {
        if versions {
            Some(client.version(&many).await)
        } else {
            None
        }
    };
    // A node whose last call failed is probed on its own, so that if it still hangs, it holds
    // up no other node's answer (apid waits for every node of a call fanned out to several).
    let probing = addresses.iter().any(|a| backoff.failing(a));
    let ((mut members, (mut services, mut statuses)), versions) = futures::join!(
        async {
            if probing {
                let (members, services, statuses) = node_by_node(client, addresses).await;
                (members, (services, statuses))
            } else {
                futures::join!(client.etcd_member_list(&many), ask_health(client, &many))
            }
        },
        asked_versions
    );
    // A call that failed as a whole did not reach the nodes: most often the endpoint it went
    // through has just gone (a machine being deleted). The client has dropped that connection
    // and fails over to the next endpoint, so the calls are asked once more at once.
    let failed_with = |f: fn(&talos_api::Error) -> bool| {
        members.as_ref().is_err_and(f)
            || services.as_ref().is_err_and(f)
            || statuses.as_ref().is_err_and(f)
    };
    if failed_with(timed_out) {
        // One node that hangs holds up a call fanned out to all of them (apid waits for every
        // node): each node is asked on its own, so the others answer and it is named, and rests.
        (members, services, statuses) = node_by_node(client, addresses).await;
    } else if failed_with(talos_api::Error::is_retryable) {
        (members, (services, statuses)) =
            futures::join!(client.etcd_member_list(&many), ask_health(client, &many));
    }
    Answers {
        members,
        services,
        statuses,
        versions,
    }
}

/// Each node's services and etcd status into `observed`; the problem, when a call failed as
/// a whole (nothing is then planned on any node: the member list is left unknown too).
fn record_health(
    backoff: &Backoff,
    (services, statuses): (
        Replies<talos_api::machine::ServiceList>,
        Replies<talos_api::machine::EtcdStatus>,
    ),
    targets: &[(String, String)],
    now: std::time::Instant,
    observed: &mut Observed,
) -> Option<String> {
    match services {
        Ok(replies) => record_services(backoff, replies, targets, observed),
        Err(e) => {
            // Only when every endpoint refused a connection did each node fail on its own,
            // and each rests; any other failure of the whole call says nothing of one node.
            if matches!(e, talos_api::Error::Connect { .. }) {
                for (_, address) in targets {
                    backoff.failed(address, now, steady_text(&e.to_string()));
                }
            }
            return Some(call_problem("listing services", &e));
        }
    }
    // What etcd itself says on each node (alarms, its leader); without it no member is judged.
    match statuses {
        Ok(replies) => record_etcd_status(replies, targets, observed),
        Err(e) => return Some(call_problem("reading etcd status", &e)),
    }
    None
}

/// The etcd members, from the first node that answered with the list; their health from what
/// their nodes said. A new machine's node is in etcd before Cluster API copies its address to
/// the Machine (up to a second later, in its own time): its services are asked at the address
/// etcd knows it by, so its health gates the next step at once.
async fn record_members(
    backoff: &Backoff,
    client: &talos_api::Client,
    machines: &[Machine],
    replies: Vec<talos_api::NodeResult<talos_api::machine::EtcdMembers>>,
    observed: &mut Observed,
) {
    let mut last_error = None;
    for reply in replies {
        let list = match reply.result {
            Ok(list) => list,
            Err(e) => {
                last_error = Some(call_problem(&reply.node, &e));
                continue;
            }
        };
        let owners: Vec<Option<&Machine>> = list
            .members
            .iter()
            .map(|m| owner_of(machines, &m.hostname, &m.peer_urls))
            .collect();
        let unaddressed: Vec<(String, String)> = list
            .members
            .iter()
            .zip(&owners)
            .filter_map(|(m, owner)| {
                let owner = (*owner)?;
                if address(owner).is_some() {
                    return None;
                }
                let host = m.peer_urls.iter().find_map(|u| peer_host(u))?;
                Some((owner.name_any(), host.to_owned()))
            })
            .collect();
        if !unaddressed.is_empty() {
            let nodes = Nodes::Many(unaddressed.iter().map(|(_, a)| a.clone()).collect());
            if let (Ok(services), Ok(statuses)) = ask_health(client, &nodes).await {
                record_services(backoff, services, &unaddressed, observed);
                record_etcd_status(statuses, &unaddressed, observed);
            }
        }
        let members = list
            .members
            .iter()
            .zip(owners)
            .map(|(m, owner)| EtcdMember {
                id: m.id,
                name: owner.map(hostname).unwrap_or_else(|| m.hostname.clone()),
                healthy: owner
                    .and_then(|x| observed.health.get(&x.name_any()))
                    .is_some_and(|h| h.etcd),
                learner: m.is_learner,
            })
            .collect();
        observed.members = Some(members);
        observed.problem = None;
        return;
    }
    observed.problem = Some(format!(
        "no control-plane node answered for the etcd member list{}",
        last_error
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    ));
}

type Replies<T> = Result<Vec<talos_api::NodeResult<T>>, talos_api::Error>;

/// The call did not complete within a deadline.
fn timed_out(e: &talos_api::Error) -> bool {
    matches!(
        e,
        talos_api::Error::Timeout(_) | talos_api::Error::DeadlineExceeded(_)
    )
}

/// The member list, services and etcd status of each of `addresses`, asked of each node on its
/// own (all at once): a node's failure, its deadline included, is its own reply.
async fn node_by_node(
    client: &talos_api::Client,
    addresses: &[String],
) -> (
    Replies<talos_api::machine::EtcdMembers>,
    Replies<talos_api::machine::ServiceList>,
    Replies<talos_api::machine::EtcdStatus>,
) {
    // The one node asked is the node of every reply, named or not.
    fn own<T>(node: &str, replies: Replies<T>) -> Vec<talos_api::NodeResult<T>> {
        match replies {
            Ok(replies) => replies
                .into_iter()
                .map(|r| talos_api::NodeResult {
                    node: node.to_owned(),
                    result: r.result,
                })
                .collect(),
            Err(e) => vec![talos_api::NodeResult {
                node: node.to_owned(),
                result: Err(e),
            }],
        }
    }
    let asked = futures::future::join_all(addresses.iter().map(|address| async move {
        let one = Nodes::One(address.clone());
        let (members, (services, statuses)) =
            futures::join!(client.etcd_member_list(&one), ask_health(client, &one));
        (
            own(address, members),
            own(address, services),
            own(address, statuses),
        )
    }))
    .await;
    let (mut members, mut services, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    for (m, s, e) in asked {
        members.extend(m);
        services.extend(s);
        statuses.extend(e);
    }
    (Ok(members), Ok(services), Ok(statuses))
}

/// Each of `nodes`' services and etcd status, asked at once.
async fn ask_health(
    client: &talos_api::Client,
    nodes: &Nodes,
) -> (
    Replies<talos_api::machine::ServiceList>,
    Replies<talos_api::machine::EtcdStatus>,
) {
    futures::join!(client.service_list(nodes), client.etcd_status(nodes))
}

/// What etcd reports on each node whose services say etcd is healthy (`targets`: machine name
/// and the address it was asked at), as KubeadmControlPlane judges a member: one that reports
/// errors (an alarm such as NOSPACE or CORRUPT), knows no leader, or cannot say is not healthy,
/// whatever its service's health check says.
fn record_etcd_status(
    replies: Vec<talos_api::NodeResult<talos_api::machine::EtcdStatus>>,
    targets: &[(String, String)],
    observed: &mut Observed,
) {
    for reply in replies {
        let Some(health) = machine_at(targets, &reply.node)
            .and_then(|m| observed.health.get_mut(m))
            .filter(|h| h.etcd)
        else {
            continue;
        };
        let problem = match reply.result.map(|s| s.member_status) {
            Ok(Some(s)) if !s.errors.is_empty() => {
                format!("etcd reports errors: {}", s.errors.join("; "))
            }
            Ok(Some(s)) if s.leader == 0 && !s.is_learner => "etcd has no leader".to_owned(),
            Ok(Some(_)) => continue,
            Ok(None) => "etcd status is empty".to_owned(),
            Err(e) => format!("etcd status: {e}"),
        };
        health.etcd = false;
        health.components = false;
        health.problem = Some(steady_text(&match health.problem.take() {
            Some(other) => format!("{problem}; {other}"),
            None => problem,
        }));
    }
}

/// The machine asked at `node` (`targets`: machine name and the address it was asked at).
fn machine_at<'a>(targets: &'a [(String, String)], node: &str) -> Option<&'a String> {
    targets.iter().find(|(_, a)| a == node).map(|(m, _)| m)
}

/// The machine an etcd member runs on: by name, else by the address in its peer URLs.
fn owner_of<'a>(machines: &'a [Machine], name: &str, peer_urls: &[String]) -> Option<&'a Machine> {
    machines.iter().find(|x| hostname(x) == name).or_else(|| {
        machines.iter().find(|x| {
            address(x).is_some_and(|a| peer_urls.iter().any(|u| peer_host(u) == Some(a.as_str())))
        })
    })
}

/// Each node's health from its ServiceList reply, recorded under its machine's name
/// (`targets`: machine name and the address it was asked at); a node that does not answer
/// rests (see [`crate::nodes::Backoff`]), counted from now, when its reply came.
fn record_services(
    backoff: &Backoff,
    replies: Vec<talos_api::NodeResult<talos_api::machine::ServiceList>>,
    targets: &[(String, String)],
    observed: &mut Observed,
) {
    let now = std::time::Instant::now();
    for reply in replies {
        let Some(machine) = machine_at(targets, &reply.node).cloned() else {
            continue;
        };
        let health = match reply.result {
            Ok(list) => {
                let healthy = |id: &str| {
                    list.services
                        .iter()
                        .any(|s| s.id == id && s.health.as_ref().is_some_and(|h| h.healthy))
                };
                let etcd = healthy("etcd");
                let components = etcd && healthy("kubelet") && healthy("apid");
                NodeHealth {
                    reachable: true,
                    talos_version: None,
                    etcd,
                    components,
                    problem: (!components).then(|| {
                        let sick: Vec<&str> = ["etcd", "kubelet", "apid"]
                            .into_iter()
                            .filter(|id| !healthy(id))
                            .collect();
                        format!("{} not healthy", sick.join(", "))
                    }),
                }
            }
            Err(e) => {
                let problem = steady_text(&e.to_string());
                if e.is_retryable() {
                    backoff.failed(&reply.node, now, problem.clone());
                }
                NodeHealth {
                    problem: Some(format!("the Talos API does not answer: {problem}")),
                    ..NodeHealth::default()
                }
            }
        };
        if health.reachable {
            backoff.answered(&reply.node, now);
        }
        observed.health.insert(machine, health);
    }
}

/// A failed call's error as conditions carry it: `what: error`, made steady by [`steady_text`].
fn call_problem(what: &str, error: &dyn std::fmt::Display) -> String {
    steady_text(&format!("{what}: {error}"))
}

/// A node's error as conditions carry it: without the timestamps Go's errors embed (x509's
/// "current time … is after …"), which would change the conditions, and write them and an
/// Event, at every look; and at most [`MAX_PROBLEM`] characters.
pub fn steady_text(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(MAX_PROBLEM));
    let mut rest = error;
    let mut kept = 0;
    while let Some(c) = rest.chars().next() {
        if kept == MAX_PROBLEM {
            out.push('…');
            break;
        }
        match timestamp_at(rest) {
            Some(len) => {
                out.push('…');
                rest = &rest[len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        kept += 1;
    }
    out
}

/// The longest node error conditions carry, in characters.
pub const MAX_PROBLEM: usize = 512;

/// The length of the RFC 3339 timestamp `s` starts with (2026-11-24T10:00:00Z, with a fraction
/// or an offset), if it starts with one.
fn timestamp_at(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| {
        b.get(from..from + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = digits(0, 4)
        && at(4, b'-')
        && digits(5, 2)
        && at(7, b'-')
        && digits(8, 2)
        && (at(10, b'T') || at(10, b' '))
        && digits(11, 2)
        && at(13, b':')
        && digits(14, 2)
        && at(16, b':')
        && digits(17, 2);
    if !date_time {
        return None;
    }
    let mut i = 19;
    if at(i, b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if at(i, b'Z') {
        i += 1;
    } else if (at(i, b'+') || at(i, b'-'))
        && digits(i + 1, 2)
        && at(i + 3, b':')
        && digits(i + 4, 2)
    {
        i += 6;
    }
    Some(i)
}

/// The host of an etcd peer URL such as `https://10.0.0.2:2380` or `https://[fd00::2]:2380`.
fn peer_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

/// How a bootstrap call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrapped {
    /// etcd was bootstrapped by this call.
    Now,
    /// etcd already existed (an earlier call, another manager, or a person with talosctl).
    Already,
}

/// Bootstrap etcd on the node at `address`. Talos refuses a second bootstrap with
/// AlreadyExists, which is success here.
pub async fn bootstrap(
    ctx: &Context,
    talosconfig: &str,
    machine: &str,
    address: &str,
) -> Result<Bootstrapped, Error> {
    let action = format!("bootstrapping etcd on machine {machine} ({address})");
    let client = ctx
        .nodes
        .connect(talosconfig, vec![address.to_owned()])
        .map_err(Error::talos(action.clone()))?;
    // The refusal comes as the call's status, or as the node's part of a proxied reply.
    let result = client
        .bootstrap(&Nodes::Endpoint)
        .await
        .and_then(first_result);
    match result {
        Ok(()) => Ok(Bootstrapped::Now),
        Err(talos_api::Error::AlreadyExists(_)) => Ok(Bootstrapped::Already),
        Err(e) => Err(Error::talos(action)(e)),
    }
}

/// Move etcd leadership away from the node at `address` if it leads. Best effort: a node that
/// does not answer leads nothing the others could not take over.
pub async fn forfeit_leadership(ctx: &Context, talosconfig: &str, address: &str) {
    let Ok(client) = ctx.nodes.connect(talosconfig, vec![address.to_owned()]) else {
        return;
    };
    if let Err(e) = client.etcd_forfeit_leadership(&Nodes::Endpoint).await {
        tracing::debug!(node = %address, error = %e, "forfeiting etcd leadership");
    }
}

/// Why a node did not take an upgrade.
#[derive(Debug)]
pub enum UpgradeError {
    /// The node could not be asked (try again).
    Unreachable(String),
    /// The node refused or the installer failed: the upgrade failed.
    Refused(String),
}

/// Upgrade the node at `address` to the installer `image` the way `talosctl upgrade` does:
/// LifecycleService.Upgrade (install to disk) then a reboot into it; on Talos before 1.13
/// (Unimplemented), the legacy MachineService.Upgrade, which reboots by itself.
pub async fn upgrade(
    ctx: &Context,
    talosconfig: &str,
    address: &str,
    image: &str,
) -> Result<(), UpgradeError> {
    let client = ctx
        .nodes
        .connect(talosconfig, vec![address.to_owned()])
        .map_err(|e| UpgradeError::Unreachable(e.to_string()))?;
    let classify = |e: talos_api::Error| match e {
        talos_api::Error::InvalidArgument(_)
        | talos_api::Error::FailedPrecondition(_)
        | talos_api::Error::Aborted(_)
        | talos_api::Error::PermissionDenied(_) => UpgradeError::Refused(e.to_string()),
        other => UpgradeError::Unreachable(other.to_string()),
    };
    match client
        .install_upgrade(&Nodes::Endpoint, image.to_owned())
        .await
    {
        Ok(()) => client
            .reboot(&Nodes::Endpoint)
            .await
            .and_then(first_result)
            .map_err(classify),
        Err(talos_api::Error::Unimplemented(_)) => client
            .upgrade(&Nodes::Endpoint, image.to_owned())
            .await
            .and_then(first_result)
            .map_err(classify),
        Err(e) => Err(classify(e)),
    }
}

/// How a configuration change ended on a node.
#[derive(Debug)]
pub enum ConfigError {
    /// Talos can apply it only with a reboot (its message names what differs).
    NeedsReboot(String),
    /// The node refused it (invalid for it, or another apply in progress).
    Refused(String),
    /// The node could not be asked (try again).
    Unreachable(String),
}

/// How a configuration is applied to a node.
#[derive(Debug, Clone, Copy)]
pub enum ApplyMode {
    /// Live, rolled back by the node after the timeout unless confirmed.
    Try(std::time::Duration),
    /// Live for good (which confirms a tried one).
    NoReboot,
    /// Written, then the node reboots into it.
    Reboot,
}

/// Apply the machine configuration `data` to the node at `address` in `mode`.
pub async fn apply_config(
    ctx: &Context,
    talosconfig: &str,
    address: &str,
    data: &str,
    mode: ApplyMode,
) -> Result<(), ConfigError> {
    use talos_api::machine::apply_configuration_request::Mode;
    let client = ctx
        .nodes
        .connect(talosconfig, vec![address.to_owned()])
        .map_err(|e| ConfigError::Unreachable(e.to_string()))?;
    let data = data.as_bytes().to_vec();
    let result = match mode {
        ApplyMode::Try(timeout) => {
            client
                .apply_configuration_try(&Nodes::Endpoint, data, timeout)
                .await
        }
        ApplyMode::NoReboot => {
            client
                .apply_configuration(&Nodes::Endpoint, data, Mode::NoReboot)
                .await
        }
        ApplyMode::Reboot => {
            client
                .apply_configuration(&Nodes::Endpoint, data, Mode::Reboot)
                .await
        }
    };
    match result.and_then(first_result) {
        Ok(()) => Ok(()),
        // Talos's words for it (its CanApplyImmediate).
        Err(talos_api::Error::InvalidArgument(m))
            if m.contains("can't be applied in immediate mode") =>
        {
            Err(ConfigError::NeedsReboot(m))
        }
        Err(
            e @ (talos_api::Error::InvalidArgument(_)
            | talos_api::Error::FailedPrecondition(_)
            | talos_api::Error::PermissionDenied(_)),
        ) => Err(ConfigError::Refused(e.to_string())),
        Err(e) => Err(ConfigError::Unreachable(e.to_string())),
    }
}

/// The most differing fields a drift report names.
const MAX_DRIFT_FIELDS: usize = 10;

/// Why the configuration a node runs could not be compared with what it should run.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Talos(#[from] talos_api::Error),
    #[error("the node sent no reply")]
    NoReply,
}

/// The fields in which the configuration the node at `address` runs differs from `data`, as
/// the node's dry-run apply reports them; empty when it runs exactly `data`. Only field names
/// are taken from the diff, never values: the diff of a machine configuration carries keys
/// and tokens.
pub async fn config_drift(
    ctx: &Context,
    talosconfig: &str,
    address: &str,
    data: &str,
) -> Result<Vec<String>, DriftError> {
    let client = ctx.nodes.connect(talosconfig, vec![address.to_owned()])?;
    let replies = client
        .apply_configuration_dry_run(&Nodes::Endpoint, data.as_bytes().to_vec())
        .await?;
    let reply = replies
        .into_iter()
        .next()
        .ok_or(DriftError::NoReply)?
        .result?;
    Ok(diff_fields(&reply.mode_details))
}

/// The field names on the changed lines of a Talos `Config diff:`, in order, at most
/// [`MAX_DRIFT_FIELDS`]. A line counts only when it reads `key: ...` with a plain key, so
/// block-scalar content (certificates, manifests) is never taken.
pub fn diff_fields(details: &str) -> Vec<String> {
    let Some((_, diff)) = details.split_once("Config diff:") else {
        return Vec::new();
    };
    let mut fields: Vec<String> = Vec::new();
    for line in diff.lines() {
        if line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        let Some(rest) = line.strip_prefix('+').or_else(|| line.strip_prefix('-')) else {
            continue;
        };
        let Some((key, _)) = rest.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_start_matches("- ").trim();
        let plain = !key.is_empty()
            && key.len() <= 100
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if plain && !fields.iter().any(|f| f == key) {
            fields.push(key.to_owned());
        }
        if fields.len() == MAX_DRIFT_FIELDS {
            break;
        }
    }
    fields
}

/// The outcome of a call made to one node: its part of the reply.
fn first_result<M>(replies: Vec<talos_api::NodeResult<M>>) -> Result<(), talos_api::Error> {
    match replies.into_iter().next() {
        Some(reply) => reply.result.map(drop),
        None => Ok(()),
    }
}

/// Remove etcd member `id` through the nodes at `via` (never through the leaving node itself).
/// A member that is already gone is success.
pub async fn remove_member(
    ctx: &Context,
    talosconfig: &str,
    via: Vec<String>,
    id: u64,
) -> Result<(), Error> {
    let action = format!("removing etcd member {id:x}");
    let client = ctx
        .nodes
        .connect(talosconfig, via)
        .map_err(Error::talos(action.clone()))?;
    let result = client
        .etcd_remove_member(&Nodes::Endpoint, id)
        .await
        .and_then(first_result);
    match result {
        Ok(()) | Err(talos_api::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(Error::talos(action)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_with_an_alarm_no_leader_or_no_status_is_not_healthy() {
        use talos_api::machine::{EtcdMemberStatus, EtcdStatus};
        let healthy = NodeHealth {
            reachable: true,
            etcd: true,
            components: true,
            ..NodeHealth::default()
        };
        let status = |errors: &[&str], leader: u64, learner: bool| EtcdStatus {
            metadata: None,
            member_status: Some(EtcdMemberStatus {
                errors: errors.iter().map(|e| (*e).to_owned()).collect(),
                leader,
                is_learner: learner,
                ..EtcdMemberStatus::default()
            }),
        };
        let targets: Vec<(String, String)> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .enumerate()
            .map(|(i, m)| ((*m).to_owned(), format!("10.0.0.{i}")))
            .collect();
        let mut observed = Observed::default();
        for (m, _) in &targets {
            observed.health.insert(m.clone(), healthy.clone());
        }
        // "f"'s etcd service is down already: what its status says adds nothing.
        observed.health.insert(
            "f".into(),
            NodeHealth {
                reachable: true,
                problem: Some("etcd, kubelet, apid not healthy".into()),
                ..NodeHealth::default()
            },
        );
        let reply = |node: &str, result| talos_api::NodeResult {
            node: node.to_owned(),
            result,
        };
        record_etcd_status(
            vec![
                reply("10.0.0.0", Ok(status(&[], 7, false))),
                reply(
                    "10.0.0.1",
                    Ok(status(&["memberID:7 alarm:NOSPACE"], 7, false)),
                ),
                reply("10.0.0.2", Ok(status(&[], 0, false))),
                reply("10.0.0.3", Ok(status(&[], 0, true))),
                reply(
                    "10.0.0.4",
                    Err(talos_api::Error::FailedPrecondition(
                        "etcd is not running".into(),
                    )),
                ),
                reply("10.0.0.5", Ok(status(&["alarm:CORRUPT"], 7, false))),
            ],
            &targets,
            &mut observed,
        );
        let health = |m: &str| observed.health[m].clone();
        assert_eq!(health("a"), healthy, "no errors, a leader: healthy");
        assert_eq!(
            health("d"),
            healthy,
            "a learner without a leader yet is still catching up"
        );
        for (m, says) in [
            ("b", "etcd reports errors: memberID:7 alarm:NOSPACE"),
            ("c", "etcd has no leader"),
            ("e", "etcd status: "),
        ] {
            let h = health(m);
            assert!(!h.etcd && !h.components && h.reachable, "{m}: {h:?}");
            let problem = h.problem.unwrap_or_default();
            assert!(problem.starts_with(says), "{m}: {problem}");
        }
        assert_eq!(
            health("f").problem.as_deref(),
            Some("etcd, kubelet, apid not healthy"),
            "an etcd already known sick is not judged again"
        );
    }

    #[test]
    fn node_errors_lose_their_timestamps_and_are_bounded() {
        let a = "x509: certificate has expired or is not yet valid: current time \
                 2026-11-24T11:00:00Z is after 2026-11-24T10:00:00.123+01:00 (dialing 10.0.0.2)";
        let b = a.replace("11:00:00Z", "11:00:07Z");
        assert_eq!(steady_text(a), steady_text(&b), "the same at every look");
        assert_eq!(
            steady_text(a),
            "x509: certificate has expired or is not yet valid: current time … is after … \
             (dialing 10.0.0.2)"
        );
        assert_eq!(
            steady_text("2026-11-24"),
            "2026-11-24",
            "a date alone stays"
        );
        let long = "é".repeat(2 * MAX_PROBLEM);
        let bounded = steady_text(&long);
        assert_eq!(bounded.chars().count(), MAX_PROBLEM + 1);
        assert!(bounded.ends_with('…'));
    }

    #[test]
    fn whole_call_errors_are_steady_and_bounded_too() {
        let at = |t: &str| {
            call_problem(
                "listing etcd members",
                &format!("x509: current time {t} is after 2026-11-24T10:00:00Z"),
            )
        };
        assert_eq!(at("2026-11-24T11:00:00Z"), at("2026-11-24T11:00:09Z"));
        assert_eq!(
            at("2026-11-24T11:00:00Z"),
            "listing etcd members: x509: current time … is after …"
        );
        let long = call_problem("10.0.0.2", &"x".repeat(4 * MAX_PROBLEM));
        assert_eq!(long.chars().count(), MAX_PROBLEM + 1);
        assert!(long.starts_with("10.0.0.2: x"));
    }
    use api::capi::{MachineAddress, MachineStatus, NodeReference};

    fn machine(name: &str, addresses: &[(&str, &str)], node: Option<&str>) -> Machine {
        let mut m = Machine::new(name, Default::default());
        m.status = Some(MachineStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| MachineAddress {
                        type_: (*t).into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            node_ref: node.map(|n| NodeReference { name: n.into() }),
            ..MachineStatus::default()
        });
        m
    }

    #[test]
    fn addresses_and_hostnames_prefer_what_talos_and_etcd_use() {
        let m = machine(
            "cp-0",
            &[
                ("ExternalIP", "1.2.3.4"),
                ("Hostname", "talos-abc"),
                ("InternalIP", "10.0.0.2"),
            ],
            None,
        );
        assert_eq!(address(&m).as_deref(), Some("10.0.0.2"));
        assert_eq!(hostname(&m), "talos-abc");
        let with_node = machine("cp-1", &[("Hostname", "x")], Some("node-1"));
        assert_eq!(hostname(&with_node), "node-1");
        assert_eq!(address(&with_node).as_deref(), Some("x"));
        let bare = machine("cp-2", &[], None);
        assert_eq!(hostname(&bare), "cp-2");
        assert_eq!(address(&bare), None);
    }

    #[test]
    fn peer_urls_name_their_host() {
        assert_eq!(peer_host("https://10.0.0.2:2380"), Some("10.0.0.2"));
        assert_eq!(peer_host("https://[fd00::2]:2380"), Some("fd00::2"));
        assert_eq!(peer_host("10.0.0.3"), Some("10.0.0.3"));
    }

    #[test]
    fn only_field_names_are_taken_from_a_config_diff() {
        assert!(diff_fields("Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nConfig diff:\n\nNo changes.").is_empty());
        let talos = "Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nConfig diff:\n\n--- a\n+++ b\n@@ -10,6 +10,8 @@\n   machine:\n+    nodeLabels:\n+      example.com/tier: gold\n-    token: abcdef.0123456789abcdef\n+    token: 123456.fedcba9876543210\n       -----BEGIN CERTIFICATE-----\n-      MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n+      data: \"a: b\"\n";
        assert_eq!(
            diff_fields(talos),
            ["nodeLabels", "example.com/tier", "token", "data"]
        );
        let fields = diff_fields(talos).join(" ");
        assert!(
            !fields.contains("abcdef") && !fields.contains("MIIB"),
            "{fields}"
        );
    }
}
