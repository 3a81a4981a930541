//! The real talosctl drives the simulator end to end, each Talos line with its own: talosctl
//! v1.13.0 against v1.13 nodes booted with v1.13 configurations, talosctl v1.14.1 against v1.14
//! nodes booted with v1.14 ones (both built by hack/tools). If talosctl cannot tell the simulator
//! from Talos for these commands, neither can our client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{Contract, Input, MachineType, SecretsBundle};
use talos_sim::{NodeSpec, Phase, SimEvent, Simulator, Timing, loopback_address};
use testkit::tools::Tool;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A Talos line a scenario runs against: the talosctl of that line, and nodes running it.
#[derive(Debug, Clone, Copy)]
struct Line {
    talosctl: Tool,
    /// The version the nodes boot.
    version: &'static str,
    /// The configuration contract of that version (what its talosctl generates).
    contract: Contract,
    /// Upgrade targets of the same line: one that boots, one that fails and rolls back.
    upgrades: [&'static str; 2],
    /// The etcd version its nodes report in EtcdStatus.
    etcd: &'static str,
}

const TALOS_1_13: Line = Line {
    talosctl: Tool::Talosctl,
    version: "v1.13.0",
    contract: Contract {
        major: 1,
        minor: 13,
    },
    upgrades: ["v1.13.1", "v1.13.2"],
    etcd: "3.5.0",
};

const TALOS_1_14: Line = Line {
    talosctl: Tool::Talosctl114,
    version: "v1.14.1",
    contract: Contract {
        major: 1,
        minor: 14,
    },
    upgrades: ["v1.14.2", "v1.14.3"],
    etcd: "3.7.1",
};

struct Cluster {
    sim: Simulator,
    nodes: Vec<String>,
    dir: tempfile::TempDir,
    talosctl: PathBuf,
    bundle: SecretsBundle,
    line: Line,
}

impl Cluster {
    async fn maintenance(line: Line, n: usize) -> Cluster {
        let sim = Simulator::new(Timing::default());
        let mut events = sim.events();
        let mut nodes = Vec::new();
        for i in 0..n {
            let address = loopback_address(NEXT.fetch_add(1, Ordering::SeqCst));
            nodes.push(address.to_string());
            let spec = NodeSpec {
                address,
                port: 50000,
                hostname: format!("node-{i}"),
                version: line.version.into(),
                config: None,
            };
            sim.start(spec).unwrap();
        }
        wait_up(&mut events, &nodes, false).await;
        Cluster {
            sim,
            nodes,
            dir: tempfile::tempdir().unwrap(),
            talosctl: testkit::tools::locate(line.talosctl).unwrap(),
            bundle: SecretsBundle::generate(line.contract).unwrap(),
            line,
        }
    }

    fn talosctl(&self, args: &[&str]) -> Output {
        Command::new(&self.talosctl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.talosctl(args);
        assert!(
            o.status.success(),
            "talosctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.talosctl(args);
        assert!(
            !o.status.success(),
            "talosctl {args:?} should fail: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    fn talosconfig(&self, name: &str, role: &str) -> String {
        let options = ClientOptions {
            role: role.into(),
            endpoints: vec![self.nodes[0].clone()],
            ..ClientOptions::default()
        };
        let cfg = talosconfig::generate("sim", &self.bundle, &options).unwrap();
        self.write(name, &cfg.to_yaml().unwrap())
    }

    fn controlplane_config(&self) -> String {
        self.patched_controlplane_config("controlplane.yaml", None)
    }

    /// The control plane configuration of the line's contract, with `patch` applied if any,
    /// written to `name`.
    fn patched_controlplane_config(&self, name: &str, patch: Option<&str>) -> String {
        let endpoint = format!("https://{}:6443", self.nodes[0]);
        let input = Input::for_contract("sim", &endpoint, self.line.contract);
        let patches: Vec<machineconfig::Patch> = patch
            .map(|p| machineconfig::Patch::parse(p).unwrap())
            .into_iter()
            .collect();
        let yaml =
            machineconfig::generate(MachineType::Controlplane, &input, &self.bundle, &patches)
                .unwrap();
        self.write(name, &yaml)
    }
}

async fn wait_up(
    events: &mut tokio::sync::broadcast::Receiver<SimEvent>,
    nodes: &[String],
    configured: bool,
) {
    let mut pending: Vec<&String> = nodes.iter().collect();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !pending.is_empty() {
            if let Ok(SimEvent::NodeUp {
                address,
                configured: c,
                ..
            }) = events.recv().await
                && c == configured
            {
                pending.retain(|n| **n != address);
            }
        }
    })
    .await
    .expect("nodes come up");
}

/// How long a simulated cluster is given to get somewhere.
const WAIT: Duration = Duration::from_secs(60);

/// Until `check` holds, within [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    testkit::eventually(what, WAIT, async || check().then_some(())).await;
}

fn member_count(out: &str) -> usize {
    out.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

/// `talosctl --talosconfig <tc> -e <endpoint> -n <nodes> <rest…>`.
fn via<'a>(tc: &'a str, endpoint: &'a str, nodes: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--talosconfig", tc, "-e", endpoint, "-n", nodes];
    args.extend_from_slice(rest);
    args
}

/// The whole scenario of one Talos line: install, mTLS and roles, etcd, upgrades, reboot and
/// reset, events, and a node that is down.
async fn drive_a_three_node_control_plane(line: Line) {
    let c = Cluster::maintenance(line, 3).await;
    install_three_control_planes(&c).await;
    let tc = c.talosconfig("talosconfig", "os:admin");
    check_mtls_and_roles(&c, &tc);
    bootstrap_and_change_etcd_membership(&c, &tc).await;
    upgrade_then_roll_back(&c, &tc).await;
    reboot_and_reset(&c, &tc).await;
    stream_machine_stages(&c, &tc).await;
    a_node_down_is_an_error_entry(&c, &tc);
    every_call_was_served(&c);
}

/// No call talosctl made was answered Unimplemented: the simulator serves everything this
/// talosctl asks of a node in the scenario.
fn every_call_was_served(c: &Cluster) {
    let calls = c.sim.calls();
    let unserved: Vec<&String> = calls
        .iter()
        .filter(|(_, n)| n.unimplemented > 0)
        .map(|(method, _)| method)
        .collect();
    assert!(
        unserved.is_empty(),
        "{:?} asked for what the simulator does not serve: {unserved:?}",
        c.line.talosctl
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talosctl_1_13_drives_a_three_node_control_plane() {
    drive_a_three_node_control_plane(TALOS_1_13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talosctl_1_14_drives_a_three_node_control_plane() {
    drive_a_three_node_control_plane(TALOS_1_14).await;
}

/// Maintenance mode: server-only TLS, talosctl --insecure; an invalid configuration is refused,
/// a valid one installs and the nodes boot into it.
async fn install_three_control_planes(c: &Cluster) {
    let a = &c.nodes[0];
    let mut events = c.sim.events();
    let out = c.ok(&["-e", a, "-n", a, "version", "--insecure"]);
    assert!(out.contains(c.line.version), "{out}");
    let bad = c.write(
        "bad.yaml",
        "version: v1alpha1\nmachine:\n  type: controlplane\n",
    );
    let err = c.fails(&[
        "-e",
        a,
        "-n",
        a,
        "apply-config",
        "--insecure",
        "--file",
        &bad,
    ]);
    assert!(
        err.contains("InvalidArgument") && err.contains("cluster"),
        "{err}"
    );
    let config = c.controlplane_config();
    for n in &c.nodes {
        c.ok(&[
            "-e",
            n,
            "-n",
            n,
            "apply-config",
            "--insecure",
            "--file",
            &config,
        ]);
    }
    wait_up(&mut events, &c.nodes, true).await;
}

/// Configured: mTLS with a client certificate signed by the cluster's OS CA, fanned out over
/// every node; a reader may read and not bootstrap.
fn check_mtls_and_roles(c: &Cluster, tc: &str) {
    let a = &c.nodes[0];
    let all = c.nodes.join(",");
    let out = c.ok(&via(tc, a, &all, &["version"]));
    assert_eq!(
        out.matches("NODE:").count(),
        3,
        "one entry per node:\n{out}"
    );
    let reader = c.talosconfig("reader", "os:reader");
    let err = c.fails(&via(&reader, a, a, &["bootstrap"]));
    assert!(err.contains("PermissionDenied"), "{err}");
    c.ok(&via(&reader, a, a, &["version"]));
}

/// Bootstrap once, the others join and are promoted; forfeit leadership, remove a member by id,
/// and let another leave.
async fn bootstrap_and_change_etcd_membership(c: &Cluster, tc: &str) {
    let [a, b] = [&c.nodes[0], &c.nodes[1]];
    c.ok(&via(tc, a, a, &["bootstrap"]));
    let err = c.fails(&via(tc, a, a, &["bootstrap"]));
    assert!(err.contains("AlreadyExists"), "{err}");

    eventually("three promoted etcd members", || {
        let out = c.ok(&via(tc, a, a, &["etcd", "members"]));
        member_count(&out) == 3 && !out.contains("true")
    })
    .await;
    let services = c.ok(&via(tc, a, a, &["service"]));
    assert!(
        services.contains("etcd") && services.contains("Running") && services.contains("kubelet"),
        "{services}"
    );
    let status = c.ok(&via(tc, a, a, &["etcd", "status"]));
    assert!(status.contains(c.line.etcd), "{status}");
    c.ok(&via(tc, a, a, &["etcd", "forfeit-leadership"]));

    // Remove the third node's member by id, then let the second leave.
    let members = c.ok(&via(tc, a, a, &["etcd", "members"]));
    let id = members
        .lines()
        .find(|l| l.contains("node-2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    c.ok(&via(tc, a, a, &["etcd", "remove-member", &id]));
    c.ok(&via(tc, b, b, &["etcd", "leave"]));
    let members = c.ok(&via(tc, a, a, &["etcd", "members"]));
    assert_eq!(member_count(&members), 1, "{members}");
}

/// Upgrade through ImageService.Pull + LifecycleService.Upgrade + Reboot, as talosctl 1.13 and
/// 1.14 do; then a failing upgrade rolls back.
async fn upgrade_then_roll_back(c: &Cluster, tc: &str) {
    let a = &c.nodes[0];
    let [to, failing] = c.line.upgrades;
    let image = |tag: &str| format!("ghcr.io/siderolabs/installer:{tag}");
    let upgrade = |image: &str| {
        c.ok(&via(
            tc,
            a,
            a,
            &["upgrade", "--image", image, "--wait=false", "--drain=false"],
        ))
    };
    upgrade(&image(to));
    eventually(&format!("node a runs {to}"), || {
        c.sim.status(a) == Some((Phase::Running, to.into()))
    })
    .await;
    let out = c.ok(&via(tc, a, a, &["version"]));
    assert!(out.contains(to), "{out}");

    c.sim.set_failures(a, |f| f.upgrade_fails = true).unwrap();
    let mut rebooted = c.sim.events();
    upgrade(&image(failing));
    // Wait for the reboot into the new version, which fails and comes back on the old one.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(SimEvent::NodeUp { address, .. }) = rebooted.recv().await
                && address == *a
            {
                break;
            }
        }
    })
    .await
    .expect("node a reboots");
    assert_eq!(c.sim.status(a), Some((Phase::Running, to.into())));
    let out = c.ok(&via(tc, a, a, &["version"]));
    assert!(out.contains(to) && !out.contains(failing), "{out}");
}

/// A reboot comes back running; a reset goes back to maintenance.
async fn reboot_and_reset(c: &Cluster, tc: &str) {
    let [b, n3] = [&c.nodes[1], &c.nodes[2]];
    c.ok(&via(tc, b, b, &["reboot", "--wait=false"]));
    eventually("node b rebooted", || {
        c.sim.status(b).is_some_and(|(p, _)| p == Phase::Running)
    })
    .await;
    c.ok(&via(
        tc,
        n3,
        n3,
        &["reset", "--wait=false", "--graceful=false"],
    ));
    eventually("node 3 back in maintenance", || {
        c.sim
            .status(n3)
            .is_some_and(|(p, _)| p == Phase::Maintenance)
    })
    .await;
    c.ok(&["-e", n3, "-n", n3, "version", "--insecure"]);
}

/// `talosctl events` streams the machine stages (it runs until killed).
async fn stream_machine_stages(c: &Cluster, tc: &str) {
    let a = &c.nodes[0];
    // Killed however this ends, a failed wait included.
    let mut events = Killed(
        Command::new(&c.talosctl)
            .args(via(tc, a, a, &["events", "--tail", "-1"]))
            .current_dir(c.dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let streamed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let mut stdout = events.0.stdout.take().unwrap();
        let streamed = std::sync::Arc::clone(&streamed);
        std::thread::spawn(move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut chunk) {
                streamed.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&streamed.lock().unwrap()).into_owned();
    let stages = ["MAINTENANCE", "INSTALLING", "REBOOTING", "RUNNING"];
    testkit::eventually_explained(
        "every machine stage streamed",
        WAIT,
        async || stages.iter().all(|s| text().contains(s)).then_some(()),
        async || format!("streamed so far:\n{}", text()),
    )
    .await;
    drop(events);
    reader.join().unwrap();
}

/// A child process, killed and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node that is down shows up as an error entry in a multi-node reply.
fn a_node_down_is_an_error_entry(c: &Cluster, tc: &str) {
    let [a, n3] = [&c.nodes[0], &c.nodes[2]];
    c.sim.set_failures(n3, |f| f.down = true).unwrap();
    let o = c.talosctl(&via(tc, a, &format!("{a},{n3}"), &["version"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains(c.line.upgrades[0]) && text.contains("connection refused"),
        "{text}"
    );
}

/// The seeds' flow by hand: talosctl generates the secrets, the configs and the talosconfig; the
/// node gets its config with apply-config --insecure; then our client, built from the
/// talosconfig talosctl wrote, talks to it over mTLS.
async fn our_client_works_from_a_talosconfig_talosctl_wrote(line: Line) {
    let c = Cluster::maintenance(line, 1).await;
    let a = &c.nodes[0];
    let mut events = c.sim.events();
    c.ok(&["gen", "secrets", "-o", "secrets.yaml"]);
    c.ok(&[
        "gen",
        "config",
        "sim",
        &format!("https://{a}:6443"),
        "--with-secrets",
        "secrets.yaml",
        "--install-disk",
        "/dev/sda",
        "--output-types",
        "controlplane,talosconfig",
        "-o",
        ".",
    ]);
    c.ok(&["--talosconfig", "talosconfig", "config", "endpoint", a]);
    c.ok(&[
        "-e",
        a,
        "-n",
        a,
        "apply-config",
        "--insecure",
        "--file",
        "controlplane.yaml",
    ]);
    wait_up(&mut events, &c.nodes, true).await;

    let written = std::fs::read_to_string(c.dir.path().join("talosconfig")).unwrap();
    let client = talos_api::Client::from_talosconfig(&written, None).unwrap();
    let versions = client.version(&talos_api::Nodes::Endpoint).await.unwrap();
    let tag = versions[0]
        .result
        .as_ref()
        .unwrap()
        .version
        .as_ref()
        .unwrap()
        .tag
        .clone();
    assert_eq!(tag, line.version, "the node's own version, over mTLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_works_from_a_talosconfig_talosctl_1_13_wrote() {
    our_client_works_from_a_talosconfig_talosctl_wrote(TALOS_1_13).await;
}

/// talosctl 1.14 writes the v1.14 contract's multi-document configuration, which a v1.14 node
/// boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_works_from_a_talosconfig_talosctl_1_14_wrote() {
    our_client_works_from_a_talosconfig_talosctl_wrote(TALOS_1_14).await;
}

/// `talosctl list` (MachineService.List) over three control planes, as CACPPT lists
/// `/var/lib/etcd/member` before it bootstraps: absent on every node until etcd has data, then
/// present on each node whose etcd joined; a reader may list.
async fn lists_the_etcd_data_directory_as_it_appears_on_each_node(line: Line) {
    let c = Cluster::maintenance(line, 3).await;
    let a = &c.nodes[0];
    let mut events = c.sim.events();
    let config = c.controlplane_config();
    for n in &c.nodes {
        c.ok(&[
            "-e",
            n,
            "-n",
            n,
            "apply-config",
            "--insecure",
            "--file",
            &config,
        ]);
    }
    wait_up(&mut events, &c.nodes, true).await;
    let tc = c.talosconfig("talosconfig", "os:admin");
    let reader = c.talosconfig("reader", "os:reader");
    let all = c.nodes.join(",");
    let list = |who: &str, nodes: &str, path: &str| {
        let out = c.talosctl(&["--talosconfig", who, "-e", a, "-n", nodes, "list", path]);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Before the bootstrap: the etcd directory exists, its member directory on no node.
    // (talosctl 1.14 leaves the NODE column out of a short listing of one node.)
    let (out, _) = list(&reader, a, "/var/lib/etcd");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().next_back() == Some(".")),
        "{out}"
    );
    let (out, err) = list(&tc, &all, "/var/lib/etcd/member");
    assert!(!out.contains("snap"), "{out}");
    assert_eq!(
        err.matches("lstat /var/lib/etcd/member: no such file or directory")
            .count(),
        3,
        "{err}"
    );

    c.ok(&["--talosconfig", &tc, "-e", a, "-n", a, "bootstrap"]);
    eventually("three etcd members", || {
        let out = c.ok(&["--talosconfig", &tc, "-e", a, "-n", a, "etcd", "members"]);
        member_count(&out) == 3
    })
    .await;
    let (out, err) = list(&reader, &all, "/var/lib/etcd/member");
    for n in &c.nodes {
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(n.as_str())).collect();
        assert_eq!(lines.len(), 3, "., snap and wal on {n}:\n{out}\n{err}");
        assert!(lines.iter().any(|l| l.ends_with("snap")), "{out}");
    }
    assert!(!err.contains("no such file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talosctl_1_13_lists_the_etcd_data_directory_as_it_appears_on_each_node() {
    lists_the_etcd_data_directory_as_it_appears_on_each_node(TALOS_1_13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talosctl_1_14_lists_the_etcd_data_directory_as_it_appears_on_each_node() {
    lists_the_etcd_data_directory_as_it_appears_on_each_node(TALOS_1_14).await;
}

/// Talos past v1.14 keeps v1.14's apply semantics: a node reporting v1.15.0-alpha.1 applies
/// every configuration change talosctl 1.14 sends live, in AUTO and NO_REBOOT mode alike, the
/// changes a v1.13 node reboots for (a machine feature) or refuses without a reboot (the
/// environment) included, without rebooting. (talosctl 1.14 no longer offers REBOOT mode; the
/// node's refusal of it is `client.rs`'s to show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_15_alpha_node_applies_every_change_live() {
    let c = Cluster::maintenance(
        Line {
            version: "v1.15.0-alpha.1",
            ..TALOS_1_14
        },
        1,
    )
    .await;
    let a = &c.nodes[0];
    let mut events = c.sim.events();
    let config = c.controlplane_config();
    c.ok(&[
        "-e",
        a,
        "-n",
        a,
        "apply-config",
        "--insecure",
        "--file",
        &config,
    ]);
    wait_up(&mut events, &c.nodes, true).await;
    let tc = c.talosconfig("talosconfig", "os:admin");
    let (boots, _) = c.sim.running(a).unwrap();

    // Each configuration is the whole one: the second keeps the first change.
    let feature = "machine:\n  features:\n    diskQuotaSupport: false\n";
    let env = format!("{feature}  env:\n    HTTP_PROXY: http://proxy:3128\n");
    let changes = [("auto", feature), ("no-reboot", env.as_str())];
    for (i, (mode, patch)) in changes.into_iter().enumerate() {
        let file = c.patched_controlplane_config(&format!("change-{i}.yaml"), Some(patch));
        let o = c.talosctl(&via(
            &tc,
            a,
            a,
            &["apply-config", "--file", &file, "--mode", mode],
        ));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "--mode {mode}: {text}");
        assert!(
            text.contains("Applied configuration without a reboot"),
            "--mode {mode}: {text}"
        );
    }
    let (boots_after, docs) = c.sim.running(a).unwrap();
    assert_eq!(boots_after, boots, "no reboot");
    assert_eq!(
        c.sim.status(a),
        Some((Phase::Running, "v1.15.0-alpha.1".into()))
    );
    let machine = &docs[0]["machine"];
    assert_eq!(machine["features"]["diskQuotaSupport"], false, "{machine}");
    assert_eq!(
        machine["env"]["HTTP_PROXY"], "http://proxy:3128",
        "{machine}"
    );
}
