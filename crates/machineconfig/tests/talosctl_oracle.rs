//! The real talosctl (built from github.com/siderolabs/talos by hack/tools) as the oracle for
//! rendering, patching, validation, secrets bundles and talosconfig. Where talosctl and we
//! disagree, talosctl is right.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use machineconfig::talosconfig::{self, ClientOptions};
use machineconfig::{
    Contract, Input, MachineType, Mode, Patch, SecretsBundle, patch, render, validate,
};
use serde::Deserialize;
use serde_json::Value;
use testkit::tools::{Tool, locate};

struct Oracle {
    talosctl: PathBuf,
    dir: tempfile::TempDir,
}

impl Oracle {
    fn new() -> Oracle {
        Oracle::with(Tool::Talosctl)
    }

    fn with(tool: Tool) -> Oracle {
        Oracle {
            talosctl: locate(tool).unwrap_or_else(|e| panic!("{tool:?} (make tools): {e}")),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// talosctl of the release that introduced `contract`: v1.13.0 renders and validates
    /// contracts v1.10 to v1.13, v1.14.1 contract v1.14 (its defaults and output for the older
    /// contracts differ from v1.13.0's; the configurations we render for them stay v1.13.0's).
    fn of(contract: Contract) -> Oracle {
        Oracle::with(if contract.at_least(1, 14) {
            Tool::Talosctl114
        } else {
            Tool::Talosctl
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.talosctl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    /// `talosctl gen config` into `out`; Err(stderr) when talosctl refuses.
    fn gen_config(&self, out: &str, secrets: &str, extra: &[&str]) -> Result<(), String> {
        let mut args = vec![
            "gen",
            "config",
            "demo",
            "https://10.0.0.1:6443",
            "--with-secrets",
            secrets,
            "-o",
            out,
            "--force",
        ];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// talosctl's verdict: Ok or Err(its message).
    fn validate(&self, file: &Path) -> Result<(), String> {
        let o = self.run(&[
            "validate",
            "--config",
            &file.display().to_string(),
            "--mode",
            "metal",
            "--strict",
        ]);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
        }
    }
}

fn docs_of(path: &Path) -> Vec<Value> {
    render::from_yaml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn talosctl_bundle(oracle: &Oracle) -> (String, SecretsBundle) {
    let path = oracle.path("secrets.yaml").display().to_string();
    assert!(
        oracle
            .run(&["gen", "secrets", "-o", &path, "--force"])
            .status
            .success()
    );
    let bundle = SecretsBundle::from_yaml(&std::fs::read_to_string(&path).unwrap())
        .expect("talosctl's bundle loads unchanged");
    (path, bundle)
}

fn input(contract: Contract) -> Input {
    Input::for_contract("demo", "https://10.0.0.1:6443", contract)
}

const TYPES: [(MachineType, &str); 2] = [
    (MachineType::Controlplane, "controlplane.yaml"),
    (MachineType::Worker, "worker.yaml"),
];

#[test]
fn renders_exactly_what_talosctl_generates() {
    let variants: [(&str, &[&str]); 2] = [
        ("defaults", &[]),
        (
            "custom",
            &[
                "--kubernetes-version",
                "1.33.2",
                "--install-disk",
                "/dev/vda",
                "--install-image",
                "ghcr.io/siderolabs/installer:v1.12.4",
            ],
        ),
    ];
    for contract in Contract::all() {
        let oracle = Oracle::of(contract);
        let (secrets, bundle) = talosctl_bundle(&oracle);
        for (variant, flags) in variants {
            let out = format!("{contract}-{variant}");
            let mut args = vec!["--talos-version", &*contract.to_string()]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            args.extend(flags.iter().map(|s| (*s).to_owned()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            oracle.gen_config(&out, &secrets, &args).unwrap();
            let mut ours = input(contract);
            if variant == "custom" {
                ours.kubernetes_version = "1.33.2".into();
                ours.install_disk = "/dev/vda".into();
                ours.install_image = "ghcr.io/siderolabs/installer:v1.12.4".into();
            }
            for (machine_type, file) in TYPES {
                let theirs = docs_of(&oracle.path(&out).join(file));
                let mine = render(machine_type, &ours, &bundle).unwrap();
                assert_eq!(mine, theirs, "{contract} {variant} {file}");
            }
        }
    }
}

#[test]
fn talosctl_accepts_our_bundle_and_configs() {
    let oracle = Oracle::new();
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let secrets = oracle.write("ours.yaml", &bundle.to_yaml().unwrap());
    oracle
        .gen_config("with-ours", &secrets, &[])
        .expect("talosctl gen config --with-secrets accepts our bundle");
    for (machine_type, file) in TYPES {
        oracle
            .validate(&oracle.path("with-ours").join(file))
            .unwrap();
        for contract in Contract::all() {
            let oracle = Oracle::of(contract);
            let yaml =
                machineconfig::generate(machine_type, &input(contract), &bundle, &[]).unwrap();
            let path = oracle.write(&format!("ours-{contract}-{file}"), &yaml);
            oracle
                .validate(Path::new(&path))
                .unwrap_or_else(|e| panic!("{contract} {file}: {e}"));
        }
    }
}

#[test]
fn talosctl_loads_our_talosconfig() {
    let oracle = Oracle::new();
    let bundle = SecretsBundle::generate(Contract::NEWEST).unwrap();
    let options = ClientOptions {
        endpoints: vec!["10.0.0.2".into()],
        nodes: vec!["10.0.0.2".into()],
        ..ClientOptions::default()
    };
    let config = talosconfig::generate("demo", &bundle, &options).unwrap();
    let path = oracle.write("talosconfig", &config.to_yaml().unwrap());
    let o = oracle.run(&["--talosconfig", &path, "config", "info"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("demo") && stdout.contains("10.0.0.2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("os:admin"),
        "the client certificate carries the os:admin role:\n{stdout}"
    );
}

#[derive(Deserialize)]
struct Case {
    name: String,
    patch: String,
}

#[test]
fn patch_corpus_agrees_with_talosctl() {
    // Each contract's talosctl, with a bundle of its own.
    let oracles: Vec<_> = Contract::all()
        .map(|contract| {
            let oracle = Oracle::of(contract);
            let (secrets, bundle) = talosctl_bundle(&oracle);
            (contract, oracle, secrets, bundle)
        })
        .collect();
    let cases: Vec<Case> = serde_yaml_ng::from_str(include_str!("patches.yaml")).unwrap();
    assert!(cases.len() >= 40, "{} patches", cases.len());
    let (mut agree, mut disagreements, mut valid, mut invalid) = (0, Vec::new(), 0, 0);
    let mut per_contract = std::collections::BTreeMap::<Contract, usize>::new();
    for case in &cases {
        for (contract, oracle, secrets, bundle) in &oracles {
            let (contract, secrets) = (*contract, secrets.as_str());
            let patch_file = oracle.write(&format!("{}.patch", case.name), &case.patch);
            let out = format!("{}-{contract}", case.name);
            let theirs = oracle.gen_config(
                &out,
                secrets,
                &[
                    "--talos-version",
                    &contract.to_string(),
                    "--config-patch",
                    &format!("@{patch_file}"),
                ],
            );
            let ours = Patch::parse(&case.patch).and_then(|p| {
                TYPES
                    .iter()
                    .map(|(t, _)| {
                        patch::apply(
                            render(*t, &input(contract), bundle)?,
                            std::slice::from_ref(&p),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            });
            let (ours, theirs) = match (ours, theirs) {
                (Err(_), Err(_)) => {
                    agree += 2;
                    *per_contract.entry(contract).or_default() += 2;
                    invalid += 2;
                    continue;
                }
                (Ok(_), Err(e)) => {
                    disagreements.push(format!(
                        "{} {contract}: talosctl refuses the patch, we apply it: {e}",
                        case.name
                    ));
                    continue;
                }
                (Err(e), Ok(())) => {
                    disagreements.push(format!(
                        "{} {contract}: we refuse the patch, talosctl applies it: {e}",
                        case.name
                    ));
                    continue;
                }
                (Ok(ours), Ok(())) => (ours, out),
            };
            for ((machine_type, file), mine) in TYPES.iter().zip(ours) {
                let path = oracle.path(&theirs).join(file);
                let label = format!("{} {contract} {}", case.name, machine_type.as_str());
                if docs_of(&path) != mine {
                    disagreements.push(format!(
                        "{label}: patched configuration differs from talosctl's"
                    ));
                    continue;
                }
                let their_verdict = oracle.validate(&path);
                let our_report = validate(&mine, Mode::Metal, true);
                match (their_verdict, our_report.is_valid()) {
                    (Ok(()), true) => valid += 1,
                    (Err(_), false) => invalid += 1,
                    (Ok(()), false) => {
                        disagreements.push(format!(
                            "{label}: talosctl accepts, we reject: {:?}",
                            our_report.errors
                        ));
                        continue;
                    }
                    (Err(e), true) => {
                        disagreements.push(format!("{label}: talosctl rejects, we accept: {e}"));
                        continue;
                    }
                }
                agree += 1;
                *per_contract.entry(contract).or_default() += 1;
            }
        }
    }
    let total = cases.len() * Contract::all().count() * TYPES.len();
    println!("talosctl agreement: {agree}/{total} cases ({valid} valid, {invalid} invalid)");
    for (contract, n) in &per_contract {
        println!("  {contract}: {n}/{}", cases.len() * TYPES.len());
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(
        valid > 0 && invalid > 0,
        "the corpus has both valid and invalid cases"
    );
}
