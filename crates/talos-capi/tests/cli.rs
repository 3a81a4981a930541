//! The `gen`, `validate` and `render` commands as a shell user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::process::{Command, Output};

use testkit::tools::{Tool, locate};

fn talos_capi(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_talos-capi"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The real talosctl accepts `file` (in `dir`) for bare metal, strictly.
fn talosctl_validates(dir: &Path, file: &str) {
    let v = Command::new(locate(Tool::Talosctl).unwrap())
        .args(["validate", "--config", file, "--mode", "metal", "--strict"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "talosctl validate {file}: {}",
        stderr(&v)
    );
}

#[test]
fn seed_walkthrough_gen_config_then_talosctl_validates() {
    let dir = tempfile::tempdir().unwrap();
    let o = talos_capi(
        dir.path(),
        &["gen", "config", "mi-cluster", "https://192.168.1.41:6443"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["controlplane.yaml", "worker.yaml"] {
        talosctl_validates(dir.path(), file);
    }
    let talosctl = locate(Tool::Talosctl).unwrap();
    let info = Command::new(&talosctl)
        .args(["--talosconfig", "talosconfig", "config", "info"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("mi-cluster"),
        "{}",
        stderr(&info)
    );

    // A second run refuses to overwrite, and changes nothing.
    let before = std::fs::read_to_string(dir.path().join("worker.yaml")).unwrap();
    let again = talos_capi(
        dir.path(),
        &["gen", "config", "mi-cluster", "https://192.168.1.41:6443"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists, use --force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("worker.yaml")).unwrap(),
        before
    );
}

#[test]
fn secrets_and_patches_from_files_and_inline() {
    let dir = tempfile::tempdir().unwrap();
    assert!(talos_capi(dir.path(), &["gen", "secrets"]).status.success());
    std::fs::write(dir.path().join("vip.yaml"), "machine:\n  network:\n    interfaces:\n      - interface: eth0\n        dhcp: true\n        vip:\n          ip: 192.168.1.50\n").unwrap();
    let o = talos_capi(
        dir.path(),
        &[
            "gen",
            "config",
            "ha",
            "https://192.168.1.50:6443",
            "--with-secrets",
            "secrets.yaml",
            "--config-patch-control-plane",
            "@vip.yaml",
            "--config-patch",
            "machine:\n  install:\n    disk: /dev/vda\n",
            "--talos-version",
            "v1.11",
            "--kubernetes-version",
            "1.33.2",
            "-o",
            "out",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cp = std::fs::read_to_string(dir.path().join("out/controlplane.yaml")).unwrap();
    let worker = std::fs::read_to_string(dir.path().join("out/worker.yaml")).unwrap();
    assert!(
        cp.contains("192.168.1.50") && !worker.contains("vip"),
        "the VIP goes to control planes only"
    );
    assert!(cp.contains("/dev/vda") && worker.contains("/dev/vda"));
    assert!(worker.contains("kubelet:v1.33.2"));
    let ok = talos_capi(
        dir.path(),
        &[
            "validate",
            "--config",
            "out/controlplane.yaml",
            "--mode",
            "metal",
            "--strict",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn mistakes_get_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for (args, code, text) in [
        (
            vec![
                "gen",
                "config",
                "c",
                "[https://192.168.1.41:6443](https://192.168.1.41:6443)",
            ],
            1,
            "Markdown link",
        ),
        (
            vec!["gen", "config", "c", "https://10.0.0.1"],
            1,
            "must include a port",
        ),
        (
            vec!["gen", "config", "c", "10.0.0.1:6443"],
            1,
            "must start with https://",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--talos-version",
                "v1.7",
            ],
            1,
            "unsupported Talos version",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--config-patch",
                "[{\"op\": \"merge\", \"path\": \"/x\"}]",
            ],
            1,
            "valid operations",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--config-patch",
                "- op: add\n  path: /machine/x\n  value: 1",
            ],
            1,
            "JSON6902 patches are not supported for multi-document",
        ),
        (
            vec![
                "gen",
                "config",
                "c",
                "https://10.0.0.1:6443",
                "--with-secrets",
                "missing.yaml",
            ],
            1,
            "missing.yaml",
        ),
        (
            vec!["validate", "--config", "x.yaml", "--mode", "baremetal"],
            2,
            "unknown mode",
        ),
        (vec!["gen", "config"], 2, "required"),
    ] {
        let o = talos_capi(dir.path(), &args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(text), "{args:?}: {}", stderr(&o));
    }
    std::fs::write(
        dir.path().join("bad.yaml"),
        "version: v1alpha1\nmachine:\n  type: worker\n  installer: {}\ncluster: {}\n",
    )
    .unwrap();
    let o = talos_capi(
        dir.path(),
        &[
            "validate", "--config", "bad.yaml", "--mode", "metal", "--strict",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("errors occurred")
            && e.contains("machine.installer: unknown field")
            && e.contains("machine.token"),
        "{e}"
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/render/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn render_previews_a_gitops_repository_and_talosctl_accepts_what_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = talos_capi(
        dir.path(),
        &["render", "-f", &fixture("ha.yaml"), "--out-dir", "out"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (file, vip) in [
        ("taloscontrolplane-mi-cluster-cp.yaml", true),
        ("talosconfigtemplate-mi-cluster-workers.yaml", false),
    ] {
        let path = out.join(file);
        assert_eq!(mode(&path), 0o600, "{file} holds secrets");
        let text = std::fs::read_to_string(&path).unwrap();
        // The Cluster's endpoint and the control plane's Kubernetes version are rendered in.
        assert!(text.contains("https://192.168.1.50:6443"), "{file}");
        assert_eq!(text.contains("ip: 192.168.1.50"), vip, "{file}");
        talosctl_validates(&out, file);
    }
    let cp = std::fs::read_to_string(out.join("taloscontrolplane-mi-cluster-cp.yaml")).unwrap();
    assert!(cp.contains("kube-apiserver:v1.34.1"), "{cp}");
    assert!(cp.contains("type: controlplane"));

    // Again without --force: refused, nothing changed.
    let again = talos_capi(
        dir.path(),
        &["render", "-f", &fixture("ha.yaml"), "--out-dir", "out"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists, use --force"));

    // Printed, one object by name.
    let one = talos_capi(
        dir.path(),
        &[
            "render",
            "-f",
            &fixture("ha.yaml"),
            "--name",
            "mi-cluster-workers",
        ],
    );
    let printed = String::from_utf8_lossy(&one.stdout);
    assert!(
        printed.starts_with(
            "# TalosConfigTemplate clusters/mi-cluster-workers (cluster mi-cluster)\n---\n"
        ),
        "{printed}"
    );
    assert!(printed.contains("type: worker"));
}

#[test]
fn render_names_each_seed_object_that_talos_would_refuse_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let o = talos_capi(dir.path(), &["render", "-f", &fixture("seed.yaml")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("5 of 5 objects failed:"), "{err}");
    for expected in [
        // Talos 1.7 is past support; the contracts rendered are listed.
        "TalosConfig worker-node-bootstrap: unsupported Talos version \"v1.7.0\": this provider renders contracts v1.10 to v1.14",
        "TalosConfig controlplane-config: unsupported Talos version \"v1.7.0\"",
        // Without talosVersion the newest contract is rendered: multi-document, where Talos
        // (and talosctl) refuse JSON 6902 patches.
        "TalosConfig static-network: JSON6902 patches are not supported for multi-document machine configuration",
        "TalosControlPlane cluster-control-plane: JSON6902 patches are not supported",
        "TalosControlPlane production-control-plane: JSON6902 patches are not supported",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
}

/// Patches written for v1.13 on a TalosConfig moved to v1.14: each moved field is named with the
/// document that replaced it, on the object Talos accepts (a warning) and on the one it refuses
/// (beside the reason).
#[test]
fn render_names_the_fields_talos_1_14_moved_that_patches_set() {
    let dir = tempfile::tempdir().unwrap();
    let o = talos_capi(dir.path(), &["render", "-f", &fixture("talos-1.14.yaml")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for expected in [
        "warning: TalosConfig default/install-disk: spec.strategicPatches[0] sets .machine.install, which Talos v1.14 moved to the UnattendedInstallConfig document",
        "1 of 2 objects failed:",
        "TalosConfig default/kubelet-args: Talos would refuse the rendered configuration (metal mode): machine.kubelet: kubelet config is already set in v1alpha1 config (.machine.kubelet); spec.strategicPatches[0] sets .machine.kubelet, which Talos v1.14 moved to the KubeletConfig document",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("kind: KubeletConfig"), "{printed}");
}

/// The real talosctl v1.14 accepts `path` for bare metal, strictly, without a warning.
fn talosctl_1_14_validates(path: &Path) {
    let v = Command::new(locate(Tool::Talosctl114).unwrap())
        .args(["validate", "--config", path.to_str().unwrap()])
        .args(["--mode", "metal", "--strict"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&v.stdout), stderr(&v));
    assert!(
        v.status.success() && !said.contains("WARNING"),
        "talosctl validate {}: {said}",
        path.display()
    );
}

/// `talos-capi render` of the static-addresses fixture with `extra` arguments, into `dir/out`:
/// its output, and the documents written (none when it fails).
fn render_static(dir: &Path, extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let fixture = fixture("static-addresses.yaml");
    let mut args = vec!["render", "-f", &fixture, "--out-dir", "out", "--force"];
    args.extend_from_slice(extra);
    let o = talos_capi(dir, &args);
    let path = dir.join("out/talosconfigtemplate-static-workers.yaml");
    let docs = match std::fs::read_to_string(&path) {
        Ok(text) if o.status.success() => {
            assert!(
                !text.contains("(("),
                "a reference rendered as written: {text}"
            );
            talosctl_1_14_validates(&path);
            machineconfig::render::from_yaml(&text).unwrap()
        }
        _ => Vec::new(),
    };
    (o, docs)
}

fn env_of(docs: &[serde_json::Value]) -> &serde_json::Value {
    &docs[0]["machine"]["env"]
}

/// The LinkConfig's addresses and its route's gateway.
fn link_of(docs: &[serde_json::Value]) -> (Vec<&str>, &str) {
    let link = docs
        .iter()
        .find(|d| d["kind"] == "LinkConfig")
        .expect("a LinkConfig");
    let addresses = link["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap())
        .collect();
    (addresses, link["routes"][0]["gateway"].as_str().unwrap())
}

#[test]
fn render_takes_per_machine_values_from_flags_and_a_file_the_flags_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pools = [
        "--value",
        "ipam.nodes.address=10.5.0.12",
        "--value",
        "ipam.nodes.prefix=24",
        "--value",
        "ipam.nodes.gateway=10.5.0.1",
        "--value",
        "ipam.storage.address=fd00:5::12",
        "--value",
        "ipam.storage.prefix=64",
        "--value",
        "machine.failureDomain=fd-1",
        "--value",
        "infrastructureMachine.name=vm-17",
    ];
    let (o, docs) = render_static(dir.path(), &pools);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        link_of(&docs),
        (vec!["10.5.0.12/24", "fd00:5::12/64"], "10.5.0.1")
    );
    let env = env_of(&docs);
    assert_eq!(env["ZONE"], "fd-1");
    assert_eq!(env["VM"], "vm-17");
    assert_eq!(
        env["CLUSTER"], "static",
        "the Cluster's name, from the files"
    );
    assert!(!stderr(&o).contains("placeholder"), "{}", stderr(&o));

    // A file of the same names: numbers and strings; text that looks like YAML stays a string.
    std::fs::write(
        dir.path().join("values.yaml"),
        "ipam.nodes.address: 10.6.0.7\nipam.nodes.prefix: 16\nipam.nodes.gateway: 10.6.0.1\nipam.storage.address: 10.7.0.7\nipam.storage.prefix: 24\nmachine.failureDomain: \"a: b\\n- c\"\ninfrastructureMachine.name: '{vm: 1}'\n",
    )
    .unwrap();
    let (o, docs) = render_static(dir.path(), &["--values", "values.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        link_of(&docs),
        (vec!["10.6.0.7/16", "10.7.0.7/24"], "10.6.0.1")
    );
    assert_eq!(env_of(&docs)["ZONE"], "a: b\n- c");
    assert_eq!(env_of(&docs)["VM"], "{vm: 1}");

    // Flags over the file, the same text from a flag a string too.
    let (o, docs) = render_static(
        dir.path(),
        &[
            "--values",
            "values.yaml",
            "--value",
            "ipam.nodes.address=10.6.0.99",
            "--value",
            "machine.failureDomain=x: y\n- z",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(link_of(&docs).0[0], "10.6.0.99/16");
    assert_eq!(env_of(&docs)["ZONE"], "x: y\n- z");
    assert_eq!(env_of(&docs)["VM"], "{vm: 1}");
}

#[test]
fn render_fills_placeholders_for_what_is_not_given_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let (o, docs) = render_static(
        dir.path(),
        &[
            "--placeholders",
            "--value",
            "ipam.storage.address=10.7.0.7",
            "--value",
            "ipam.storage.prefix=24",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The first pool of addressesFromPools gets the first documentation address; the pool given
    // keeps its address.
    assert_eq!(
        link_of(&docs),
        (vec!["192.0.2.10/24", "10.7.0.7/24"], "192.0.2.1")
    );
    let env = env_of(&docs);
    assert_eq!(env["ZONE"], "placeholder-failure-domain");
    assert_eq!(
        env["VM"], "static-workers",
        "the machine's (the object's) name"
    );
    let err = stderr(&o);
    assert!(
        err.contains("placeholders: TalosConfigTemplate default/static-workers: ((infrastructureMachine.name)) = static-workers, ((machine.failureDomain)) = placeholder-failure-domain, ((ipam.nodes.address)) = 192.0.2.10, ((ipam.nodes.prefix)) = 24"),
        "{err}"
    );
    assert!(err.contains("((ipam.nodes.gateway)) = 192.0.2.1"), "{err}");
    assert!(
        !err.contains("ipam.storage"),
        "given, not a placeholder: {err}"
    );

    // With no pool given, a distinct address per pool.
    let (o, docs) = render_static(dir.path(), &["--placeholders"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(link_of(&docs).0, ["192.0.2.10/24", "192.0.2.11/24"]);
}

#[test]
fn render_fails_naming_every_value_it_cannot_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let (o, docs) = render_static(
        dir.path(),
        &[
            "--value",
            "ipam.nodes.address=10.5.0.12",
            "--value",
            "ipam.nodes.prefix=24",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(docs.is_empty());
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.starts_with("1 of 1 object failed:\n  * TalosConfigTemplate default/static-workers: unresolved per-machine values (give values with --value NAME=VALUE or --values FILE, or fill in placeholders with --placeholders):\n"),
        "{err}"
    );
    for expected in [
        "- ((machine.failureDomain)) is not given (spec.strategicPatches[0], document 0, /machine/env/ZONE)",
        "- ((infrastructureMachine.name)) is not given (spec.strategicPatches[0], document 0, /machine/env/VM)",
        "- ((ipam.storage.address)) is not given (spec.strategicPatches[0], document 2, /addresses/1/address)",
        "- ((ipam.storage.prefix)) is not given (spec.strategicPatches[0], document 2, /addresses/1/address)",
        "- ((ipam.nodes.gateway)) (spec.strategicPatches[0], document 2, /routes/0/gateway): the address given for pool \"nodes\" has no gateway (ipam.nodes.gateway)",
    ] {
        assert!(err.contains(expected), "{expected:?} in:\n{err}");
    }
    assert!(!err.contains("((ipam.nodes.address))"), "given: {err}");

    // Names are checked before anything renders; so is a pool's address.
    for (args, expected) in [
        (
            &["--value", "ipam.nodes.hostname=x"][..],
            "--value: unknown value \"ipam.nodes.hostname\" (values: machine.name, infrastructureMachine.name, machine.failureDomain, cluster.name, ipam.<pool>.address, ipam.<pool>.prefix, ipam.<pool>.gateway)",
        ),
        (
            &["--value", "machine.failureDomain"][..],
            "--value \"machine.failureDomain\": expected NAME=VALUE",
        ),
        (
            &["--value", "ipam.nodes.address=10.5.0.12"][..],
            "ipam.nodes.prefix is not given: an address needs ipam.nodes.address and ipam.nodes.prefix",
        ),
        (
            &[
                "--value",
                "ipam.nodes.address=10.5.0.300",
                "--value",
                "ipam.nodes.prefix=24",
            ][..],
            "ipam.nodes: address \"10.5.0.300\" is not an IP address",
        ),
        (&["--values", "missing.yaml"][..], "reading missing.yaml"),
    ] {
        let (o, docs) = render_static(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(docs.is_empty());
        let err = stderr(&o);
        assert!(err.starts_with(expected), "{expected:?} in:\n{err}");
    }
    std::fs::write(dir.path().join("values.yaml"), "machine.zone: a\n").unwrap();
    let (o, _) = render_static(dir.path(), &["--values", "values.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("values.yaml: unknown value \"machine.zone\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generated_files_hold_secrets_so_they_are_private_and_never_written_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let o = talos_capi(dir.path(), &["gen", "secrets"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&dir.path().join("secrets.yaml")), 0o600);
    let o = talos_capi(
        dir.path(),
        &[
            "gen",
            "config",
            "c",
            "https://10.0.0.1:6443",
            "--with-secrets",
            "secrets.yaml",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["controlplane.yaml", "worker.yaml", "talosconfig"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
    let target = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.path().join("link.yaml")).unwrap();
    let o = talos_capi(
        dir.path(),
        &["gen", "secrets", "-o", "link.yaml", "--force"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(!target.exists(), "nothing written through the link");
}

/// `talos-capi manager` refuses a bad flag before it connects anywhere: exit code 2, the first
/// line names the flag, and the few lines there are say what it accepts.
#[test]
fn manager_flags_that_cannot_work_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, [flag, accepts]) in [
        (
            vec!["--talos-timeout", "5x"],
            ["--talos-timeout", "expected a duration"],
        ),
        (
            vec!["--controllers", "etcd"],
            ["--controllers", "bootstrap"],
        ),
        (
            vec!["--metrics-bind-address", "nowhere"],
            ["--metrics-bind-address", "nowhere"],
        ),
        (
            vec!["--health-check-interval", "0s"],
            ["--health-check-interval", "more than 0s"],
        ),
        (
            vec!["--leader-elect", "--leader-elect-renew-deadline", "20s"],
            ["--leader-elect-", "renew"],
        ),
        (
            vec!["--talosconfig-concurrency", "0"],
            ["--talosconfig-concurrency", "1..=1000"],
        ),
    ]
    .into_iter()
    .chain(
        // A build without the exporter refuses the flag rather than dropping the spans.
        cfg!(not(feature = "otlp")).then_some((
            vec!["--otlp-endpoint", "http://127.0.0.1:4317"],
            ["--otlp-endpoint", "--features otlp"],
        )),
    ) {
        let all: Vec<&str> = ["manager", "--kubeconfig", "/nonexistent"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let o = talos_capi(dir.path(), &all);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        let first = e.lines().next().unwrap_or_default();
        assert!(first.contains(flag), "{args:?}: {flag} in {first:?}");
        assert!(e.contains(accepts), "{args:?}: {accepts} in {e}");
        assert!(e.lines().count() <= 5, "{args:?}: {e}");
    }
}

#[test]
fn a_port_in_use_is_a_startup_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig that loads; nothing listens at its server, and nothing should be asked.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for flag in ["--metrics-bind-address", "--health-probe-bind-address"] {
        let other = if flag == "--metrics-bind-address" {
            "--health-probe-bind-address"
        } else {
            "--metrics-bind-address"
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_talos-capi"))
            .args(["manager", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([flag, &format!("127.0.0.1:{port}"), other, "0"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a manager that got past the bind would wait for the API server for ever.
        let exited = testkit::process::wait_exit(&mut child, std::time::Duration::from_secs(30));
        if exited.unwrap().is_none() {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{flag}: the manager did not stop on a port in use");
        }
        let o = child.wait_with_output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{flag}: {e}");
        assert!(
            e.contains(&format!("{flag} 127.0.0.1:{port}")),
            "{flag}: names the flag and address in {e}"
        );
        assert!(
            e.to_lowercase().contains("in use"),
            "{flag}: says why in {e}"
        );
    }
    drop(taken);
}
