//! The bad-input corpus, through the CLI (which runs the engine the manager runs): YAML bombs,
//! patch chains that grow without bound, endless and oversized files, broken and mismatched
//! secrets bundles, secrets in the wrong place. Each case has its expected outcome: exit 1 with
//! a message naming the problem. Never a panic, a hang, a signal, memory past a cap, or a secret
//! echoed back. Each run is capped at 4 GiB of address space and 60 s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ENDPOINT: &str = "https://10.0.0.1:6443";

/// Exit code, stderr and how long the CLI took on `args`, run in `dir` under the caps.
fn run_capped(dir: &Path, args: &[String]) -> (Option<i32>, String, Duration) {
    run_capped_at(dir, args, 4 << 30)
}

/// [`run_capped`] with `bytes` of address space (a process past it fails to allocate and
/// aborts: exit code `None`).
fn run_capped_at(dir: &Path, args: &[String], bytes: u64) -> (Option<i32>, String, Duration) {
    let err = dir.join("stderr");
    let mut child = Command::new("prlimit")
        .arg(format!("--as={bytes}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_talos-capi"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let Some(status) = testkit::process::wait_exit(&mut child, Duration::from_secs(60)).unwrap()
    else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("{args:?} hung for 60 s");
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap()).into_owned();
    (status.code(), stderr, started.elapsed())
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    format!("@{name}")
}

/// Anchors each repeating the previous one ten times over a base list: 3 KB of YAML that
/// expands to 2×10^8 values.
fn alias_bomb() -> String {
    let mut text = format!("a0: &a0 [{}]\n", vec!["x"; 2000].join(","));
    for level in 1..=8 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text
}

/// A strategic patch of 3 KB that stays under the per-input limits (100,000 values and 4 MiB of
/// text) and expands, through YAML aliases, to 89,545 values and 4.06 MB of text: one-entry
/// mappings with long keys, about 20 MB once parsed. A document of another kind, which Talos
/// merges by its name, so that each such patch replaces the one before rather than growing it.
/// With `top` false, only the anchors: 47,322 values.
fn expanding_patch(top: bool) -> String {
    let mut text = "apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: hostile\n".to_owned();
    text.push_str(&format!("a0: &a0 {{{}: {{}}}}\n", "k".repeat(190)));
    for level in 1..=4 {
        let refs: Vec<String> = (0..10).map(|j| format!("b{j}: *a{}", level - 1)).collect();
        text.push_str(&format!("a{level}: &a{level} {{{}}}\n", refs.join(", ")));
    }
    // Enough YAML events for the parser's own bound on aliases followed (100 per event).
    let padding: Vec<String> = (0..200).map(|j| format!("p{j}: 0")).collect();
    text.push_str(&format!("p: {{{}}}\n", padding.join(", ")));
    if top {
        text.push_str("x: {c0: *a4}\n");
    }
    text
}

fn json_patch(ops: &[Value]) -> String {
    serde_json::to_string(ops).unwrap()
}

/// 40 `copy` operations, each doubling the list it copies into itself.
fn copy_chain() -> String {
    let copy = json!({"op": "copy", "from": "/machine/certSANs", "path": "/machine/certSANs/-"});
    let mut ops = vec![json!({"op": "add", "path": "/machine/certSANs", "value": ["a"]})];
    ops.extend(std::iter::repeat_n(copy, 40));
    json_patch(&ops)
}

/// `move` operations that nest a mapping one level deeper per three operations, 20,000 deep.
fn move_chain() -> String {
    let mut ops = vec![json!({"op": "add", "path": "/machine/n", "value": {}})];
    for _ in 0..300 {
        ops.push(json!({"op": "add", "path": "/machine/t", "value": {}}));
        ops.push(json!({"op": "move", "from": "/machine/n", "path": "/machine/t/n"}));
        ops.push(json!({"op": "move", "from": "/machine/t", "path": "/machine/n"}));
    }
    json_patch(&ops)
}

/// A TalosConfig manifest for `render`, with `patches` as its spec's patch fields.
fn talosconfig(patches: Value) -> String {
    let mut spec = json!({"generateType": "controlplane", "talosVersion": "v1.10"});
    spec.as_object_mut()
        .unwrap()
        .extend(patches.as_object().unwrap().clone());
    serde_yaml_ng::to_string(&json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha3",
        "kind": "TalosConfig",
        "metadata": {"name": "hostile", "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

/// The secrets bundle at `dir/secrets.yaml`, edited, written as `name`.
fn edited_bundle(dir: &Path, name: &str, edit: impl Fn(&mut Value)) -> String {
    let text = std::fs::read_to_string(dir.join("secrets.yaml")).unwrap();
    let mut bundle: Value = serde_yaml_ng::from_str(&text).unwrap();
    edit(&mut bundle);
    std::fs::write(dir.join(name), serde_yaml_ng::to_string(&bundle).unwrap()).unwrap();
    name.to_owned()
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn pem(b64_pem: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64_pem.as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// What must never appear in output: the bundle's tokens and secrets, every line of every key's
/// PEM body, and every 32 characters of the base64 text the bundle stores each key as (past its
/// PEM header, which every key of a kind shares).
fn secrets_of(bundle: &Value) -> Vec<String> {
    let mut out = vec![
        bundle["cluster"]["secret"].as_str().unwrap().to_owned(),
        bundle["secrets"]["bootstraptoken"]
            .as_str()
            .unwrap()
            .to_owned(),
        bundle["trustdinfo"]["token"].as_str().unwrap().to_owned(),
    ];
    for (name, pair) in bundle["certs"].as_object().unwrap() {
        if let Some(key) = pair.get("key") {
            let stored = key.as_str().unwrap();
            out.extend(
                stored.as_bytes()[64..]
                    .chunks(32)
                    .filter(|c| c.len() == 32)
                    .map(|c| String::from_utf8_lossy(c).into_owned()),
            );
            let body = pem(key);
            out.extend(
                body.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() > 16)
                    .map(str::to_owned),
            );
            assert!(!body.is_empty(), "{name}");
        }
    }
    out
}

struct Case {
    what: &'static str,
    args: Vec<String>,
    message: &'static str,
}

fn gen_config(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["gen", "config", "c", ENDPOINT, "--force", "-o", "out"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn validate(file: &str) -> Vec<String> {
    ["validate", "--config", file, "--mode", "metal"]
        .map(String::from)
        .to_vec()
}

fn render(file: &str) -> Vec<String> {
    ["render", "-f", file].map(String::from).to_vec()
}

#[test]
fn every_hostile_input_is_refused_with_a_message_never_a_crash_hang_or_leak() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (code, err, _) = run_capped(
        dir,
        &["gen", "secrets", "-o", "secrets.yaml"].map(String::from),
    );
    assert_eq!(code, Some(0), "{err}");
    let bundle: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("secrets.yaml")).unwrap())
            .unwrap();
    let secrets = secrets_of(&bundle);

    let bomb = alias_bomb();
    assert!(bomb.len() < 5000);
    write(dir, "bomb.yaml", &bomb);
    let nested = format!("{}x{}", "{a: ".repeat(150_000), "}".repeat(150_000));
    write(dir, "nested.yaml", &nested);
    write(
        dir,
        "quoted-closers.yaml",
        format!("{}x", "[']', ".repeat(100_000)),
    );
    write(dir, "documents.yaml", "machine: {}\n---\n".repeat(20_000));
    write(
        dir,
        "big.yaml",
        format!("# {}\n", "x".repeat(3 * 1024 * 1024)),
    );
    write(dir, "binary.yaml", [0xff, 0xfe, 0x00, 0x41]);
    let token_value = bundle["trustdinfo"]["token"].as_str().unwrap();
    write(
        dir,
        "wrong-type.yaml",
        format!(
            "version: v1alpha1\nmachine:\n  type: worker\n  token: {{nested: {token_value}}}\n  ca:\n    crt: {}\n    key: [{token_value}]\ncluster: {{}}\n",
            bundle["certs"]["os"]["crt"].as_str().unwrap()
        ),
    );
    write(
        dir,
        "tc-bomb.yaml",
        talosconfig(json!({"strategicPatches": [bomb]})),
    );
    let copy: Value = serde_json::from_str(&copy_chain()).unwrap();
    write(
        dir,
        "tc-copy.yaml",
        talosconfig(json!({"configPatches": copy})),
    );

    let cut_key = edited_bundle(dir, "cut-key.yaml", |b| {
        let key = pem(&b["certs"]["k8s"]["key"]);
        let lines: Vec<&str> = key.lines().collect();
        let cut = [&lines[..2], &lines[lines.len() - 1..]].concat().join("\n");
        b["certs"]["k8s"]["key"] = json!(b64(&cut));
    });
    let crafted = edited_bundle(dir, "crafted-pem.yaml", |b| {
        b["certs"]["os"]["key"] = json!(b64("-----BEGIN X-----END Y"));
    });
    let swapped = edited_bundle(dir, "swapped.yaml", |b| {
        b["certs"]["k8s"]["key"] = b["certs"]["etcd"]["key"].clone();
    });
    let bad_token = edited_bundle(dir, "bad-token.yaml", |b| {
        b["secrets"]["bootstraptoken"] = json!("x");
    });
    let leaky_patch = format!("machine: {{token: {token_value}, bogus: 1}}");
    // Bundles with a secret where a mapping belongs (serde's message quoted it), broken in the
    // middle of a key, or not UTF-8 in the middle of the token.
    let scalar_trustd = edited_bundle(dir, "scalar-trustdinfo.yaml", |b| {
        b["trustdinfo"] = b["trustdinfo"]["token"].clone();
    });
    let scalar_os = edited_bundle(dir, "scalar-os.yaml", |b| {
        b["certs"]["os"] = b["certs"]["os"]["key"].clone();
    });
    let listed_secret = edited_bundle(dir, "listed-secret.yaml", |b| {
        b["cluster"] = json!([b["cluster"]["secret"].clone()]);
    });
    let bundle_text = std::fs::read_to_string(dir.join("secrets.yaml")).unwrap();
    let etcd_key = bundle["certs"]["etcd"]["key"].as_str().unwrap();
    let (head, tail) = etcd_key.split_at(etcd_key.len() / 2);
    write(
        dir,
        "broken-key.yaml",
        bundle_text.replacen(etcd_key, &format!("\"{head}\n  - {tail}"), 1),
    );
    let mut not_utf8 = bundle_text.clone().into_bytes();
    not_utf8[bundle_text.find(token_value).unwrap() + 7] = 0xff;
    write(dir, "not-utf8-bundle.yaml", not_utf8);
    write(
        dir,
        "tagged-token.yaml",
        format!(
            "version: v1alpha1\nmachine:\n  type: worker\n  token: !!int {token_value}\ncluster: {{}}\n"
        ),
    );
    let garbage = edited_bundle(dir, "garbage-key.yaml", |b| {
        b["certs"]["etcd"]["key"] = json!(b64(
            "-----BEGIN EC PRIVATE KEY-----\nZ2FyYmFnZSBnYXJiYWdl\n-----END EC PRIVATE KEY-----\n"
        ));
    });

    let cases = vec![
        Case {
            what: "a YAML alias bomb as a machine configuration",
            args: validate("bomb.yaml"),
            message: "more than 100000 values, counting each use of a YAML alias in full",
        },
        Case {
            what: "a YAML alias bomb as a patch",
            args: gen_config(&["--config-patch", "@bomb.yaml"]),
            message: "more than 100000 values, counting each use of a YAML alias in full",
        },
        Case {
            what: "a JSON patch whose copy operations double a list",
            args: gen_config(&["--talos-version", "v1.10", "--config-patch", &copy_chain()]),
            message: "more than 100000 values",
        },
        Case {
            what: "a JSON patch whose move operations nest a mapping 300 levels deep",
            args: gen_config(&["--talos-version", "v1.10", "--config-patch", &move_chain()]),
            message: "nested more than 64 levels deep",
        },
        Case {
            what: "150,000 nested flow mappings",
            args: validate("nested.yaml"),
            message: "nested more than 64 levels deep",
        },
        Case {
            what: "100,000 nested flow lists, each followed by a quoted closing bracket",
            args: validate("quoted-closers.yaml"),
            message: "nested more than 64 levels deep",
        },
        Case {
            what: "20,000 YAML documents",
            args: validate("documents.yaml"),
            message: "more than 64 YAML documents",
        },
        Case {
            what: "a device that never ends",
            args: validate("/dev/urandom"),
            message: "the limit of 2097152 bytes",
        },
        Case {
            what: "a 3 MiB patch file",
            args: gen_config(&["--config-patch", "@big.yaml"]),
            message: "the limit of 2097152 bytes",
        },
        Case {
            what: "a patch file that is not text",
            args: gen_config(&["--config-patch", "@binary.yaml"]),
            message: "not UTF-8",
        },
        Case {
            what: "a patch that is a bare string",
            args: gen_config(&["--config-patch", "just some text"]),
            message: "must be a YAML mapping",
        },
        Case {
            what: "a patch with a document kind Talos does not have",
            args: gen_config(&["--config-patch", "apiVersion: v1alpha1\nkind: Evil\n"]),
            message: "unknown configuration document kind \"Evil\"",
        },
        Case {
            what: "secrets in fields of the wrong type",
            args: validate("wrong-type.yaml"),
            message: "machine.token",
        },
        Case {
            what: "a Kubernetes CA key cut short",
            args: gen_config(&["--with-secrets", &cut_key]),
            message: "certs.k8s.key: not a private key Talos can use",
        },
        Case {
            what: "a PEM block whose END line names another label",
            args: gen_config(&["--with-secrets", &crafted]),
            message: "certs.os.key: not PEM",
        },
        Case {
            what: "the etcd CA key beside the Kubernetes CA certificate",
            args: gen_config(&["--with-secrets", &swapped]),
            message: "certs.k8s.crt and certs.k8s.key do not belong together",
        },
        Case {
            what: "a bootstrap token Kubernetes would refuse",
            args: gen_config(&["--with-secrets", &bad_token]),
            message: "secrets.bootstraptoken: not a Kubernetes bootstrap token",
        },
        Case {
            what: "a failing inline patch that holds a token",
            args: gen_config(&["--config-patch", &leaky_patch]),
            message: "inline patch 1 of --config-patch",
        },
        Case {
            what: "a garbage etcd CA key",
            args: gen_config(&["--with-secrets", &garbage]),
            message: "certs.etcd.key: not a private key Talos can use",
        },
        Case {
            what: "a secrets bundle whose trustdinfo is the token",
            args: gen_config(&["--with-secrets", &scalar_trustd]),
            message: "parsing secrets bundle: field `trustdinfo` is a string, expected a map (line ",
        },
        Case {
            what: "a secrets bundle whose certs.os is the OS CA key",
            args: gen_config(&["--with-secrets", &scalar_os]),
            message: "parsing secrets bundle: field `certs.os` is a string, expected a map (line ",
        },
        Case {
            what: "a secrets bundle whose cluster is a list holding the cluster secret",
            args: gen_config(&["--with-secrets", &listed_secret]),
            message: "parsing secrets bundle: field `cluster` ",
        },
        Case {
            what: "a secrets bundle broken in the middle of a key",
            args: gen_config(&["--with-secrets", "broken-key.yaml"]),
            message: "parsing secrets bundle: not valid YAML: ",
        },
        Case {
            what: "a secrets bundle that is not UTF-8 in the middle of a token",
            args: gen_config(&["--with-secrets", "not-utf8-bundle.yaml"]),
            message: "not UTF-8",
        },
        Case {
            what: "a hostile secrets bundle given to render",
            args: [
                render("tc-copy.yaml"),
                vec!["--with-secrets".into(), scalar_trustd.clone()],
            ]
            .concat(),
            message: "parsing secrets bundle: field `trustdinfo` is a string, expected a map (line ",
        },
        Case {
            what: "a machine configuration with a token behind a tag that does not fit it",
            args: validate("tagged-token.yaml"),
            message: "parsing machine configuration: not valid YAML: ",
        },
        Case {
            what: "a YAML alias bomb in a TalosConfig's strategicPatches",
            args: render("tc-bomb.yaml"),
            message: "more than 100000 values, counting each use of a YAML alias in full",
        },
        Case {
            what: "a copy chain in a TalosConfig's configPatches",
            args: render("tc-copy.yaml"),
            message: "more than 100000 values",
        },
        Case {
            what: "a YAML alias bomb as a manifest file",
            args: render("bomb.yaml"),
            message: "more than 1000000 values, counting each use of a YAML alias in full",
        },
    ];
    let mut report = Vec::new();
    for case in &cases {
        let (code, err, took) = run_capped(dir, &case.args);
        report.push(format!("{:>6} ms  {}", took.as_millis(), case.what));
        assert_eq!(code, Some(1), "{}: exit {code:?}\n{err}", case.what);
        assert!(!err.contains("panicked"), "{}: {err}", case.what);
        assert!(
            err.contains(case.message),
            "{}: expected {:?} in\n{err}",
            case.what,
            case.message
        );
        for secret in &secrets {
            assert!(
                !err.contains(secret.as_str()),
                "{}: a secret in\n{err}",
                case.what
            );
        }
        assert!(
            err.len() < 4096,
            "{}: {} bytes of message",
            case.what,
            err.len()
        );
    }
    eprintln!(
        "{} hostile inputs refused (time per case, debug build):\n{}",
        cases.len(),
        report.join("\n")
    );
}

/// Patches that each stay under the per-input limits but expand to 20 MB once parsed: 64 of them
/// (as many as the CRD admits) took 1.3 GB and 16 through `gen config` 1 GB, when every patch was
/// parsed before any was applied. Now one render has one budget for all its patches together,
/// and holds at most one parsed patch at a time: refused, naming the render budget, within
/// 128 MiB of address space. The most the budget admits renders within it too.
#[test]
fn patches_that_expand_are_bounded_per_render_not_per_patch() {
    const CAP: u64 = 128 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (code, err, _) = run_capped(
        dir,
        &["gen", "secrets", "-o", "secrets.yaml"].map(String::from),
    );
    assert_eq!(code, Some(0), "{err}");
    let patch = expanding_patch(true);
    assert!(patch.len() < 3000, "{} bytes", patch.len());
    let with_secrets = |mut args: Vec<String>| {
        args.extend(["--with-secrets", "secrets.yaml"].map(String::from));
        args
    };

    let budget = "over the render budget: more than 150000 values in the configuration and all its patches together";
    write(
        dir,
        "tc-64.yaml",
        talosconfig(json!({"strategicPatches": vec![patch.clone(); 64]})),
    );
    let expanding = write(dir, "expanding.yaml", &patch);
    let mut sixteen = Vec::new();
    for _ in 0..16 {
        sixteen.extend(["--config-patch", expanding.as_str()]);
    }
    for (what, args) in [
        ("64 in a TalosConfig", with_secrets(render("tc-64.yaml"))),
        ("16 through gen config", with_secrets(gen_config(&sixteen))),
    ] {
        let (code, err, _) = run_capped_at(dir, &args, CAP);
        assert_eq!(code, Some(1), "{what}: exit {code:?}\n{err}");
        assert!(err.contains(budget), "{what}: {err}");
        assert!(
            !err.contains("kkkkkkkk"),
            "{what}: the input is quoted: {err}"
        );
    }

    // Under the budget: 137,000 values in two patches. Rendered within the cap, and refused
    // only for what it renders to (over the 1 MiB a bootstrap data Secret holds).
    write(
        dir,
        "tc-admitted.yaml",
        talosconfig(json!({"strategicPatches": [patch, expanding_patch(false)]})),
    );
    let (code, err, _) = run_capped_at(dir, &with_secrets(render("tc-admitted.yaml")), CAP);
    assert_eq!(code, Some(1), "exit {code:?}\n{err}");
    assert!(
        err.contains("the rendered machine configuration is")
            && err.contains("over the limit of 1048576 bytes"),
        "{err}"
    );
}

/// `--force` replaces an output file whole: a hard link to it elsewhere keeps its content, and
/// nothing is left half-written.
#[test]
fn force_replaces_files_and_never_writes_through_a_hard_link() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("elsewhere.txt"), "keep me").unwrap();
    std::fs::hard_link(dir.join("elsewhere.txt"), dir.join("out/worker.yaml")).unwrap();
    let (code, err, _) = run_capped(dir, &gen_config(&[]));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("elsewhere.txt")).unwrap(),
        "keep me"
    );
    let worker = std::fs::read_to_string(dir.join("out/worker.yaml")).unwrap();
    assert!(worker.contains("type: worker"));
    let left: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
