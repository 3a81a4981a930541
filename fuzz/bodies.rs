// The fuzz targets' bodies: compiled into the cargo-fuzz targets (fuzz/fuzz_targets) and into
// machineconfig's corpus replay test (crates/machineconfig/tests/fuzz_corpus.rs), so that every
// input in fuzz/corpus is also an ordinary test. Errors are fine; panics, hangs and unbounded
// memory are bugs.

use std::sync::OnceLock;

use machineconfig::{Contract, Input, MachineType, Patch, SecretsBundle, patch, render};
use serde_json::Value;

/// A control-plane configuration of every contract, rendered once from one real bundle (a
/// bundle per input would spend the fuzzer's time generating RSA keys).
fn rendered() -> &'static [Vec<Value>] {
    static DOCS: OnceLock<Vec<Vec<Value>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let bundle = SecretsBundle::generate(Contract::NEWEST).expect("a bundle");
        let mut input = Input::new("fuzz", "https://10.0.0.1:6443");
        Contract::all()
            .map(|contract| {
                input.contract = contract;
                render(MachineType::Controlplane, &input, &bundle).expect("a configuration")
            })
            .collect()
    })
}

/// Any text as a patch (JSON 6902 or strategic merge), applied to a configuration of each
/// contract, validated and serialized. Returns to how many contracts' configurations it applied.
pub fn patch_apply(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else { return 0 };
    let Ok(p) = Patch::parse(text) else { return 0 };
    let mut applied = 0;
    for docs in rendered() {
        if let Ok(out) = patch::apply(docs.clone(), std::slice::from_ref(&p)) {
            let _ = machineconfig::validate(&out, machineconfig::Mode::Metal, true);
            let _ = render::to_yaml(&out);
            applied += 1;
        }
    }
    applied
}

/// Any text as a machine configuration, a secrets bundle, a talosconfig, a kubeconfig, a
/// version or an endpoint.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(docs) = render::from_yaml(text) {
        for mode in [machineconfig::Mode::Metal, machineconfig::Mode::Container] {
            let _ = machineconfig::validate(&docs, mode, true);
        }
    }
    let _ = SecretsBundle::from_yaml(text);
    let _ = machineconfig::talosconfig::TalosConfig::from_yaml(text);
    let _ = machineconfig::kubeconfig::client_certificate_not_after(text);
    let _ = Contract::parse(text);
    let _ = render::Endpoint::parse(text);
}
