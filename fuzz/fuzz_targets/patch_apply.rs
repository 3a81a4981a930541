//! Any bytes as a patch (JSON 6902 or strategic merge), applied to a rendered configuration:
//! errors are fine, panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machineconfig::{Input, MachineType, Patch, SecretsBundle, patch, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(p) = Patch::parse(text) else { return };
    let mut input = Input::new("fuzz", "https://10.0.0.1:6443");
    for contract in machineconfig::Contract::all() {
        input.contract = contract;
        let Ok(docs) = render(MachineType::Controlplane, &input, &SecretsBundle::default()) else { return };
        if let Ok(out) = patch::apply(docs, std::slice::from_ref(&p)) {
            let _ = machineconfig::validate(&out, machineconfig::Mode::Metal, true);
            let _ = machineconfig::render::to_yaml(&out);
        }
    }
});
