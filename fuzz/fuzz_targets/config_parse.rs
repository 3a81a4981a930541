//! Any bytes as a machine configuration, a secrets bundle or a talosconfig: parse and validate
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(docs) = machineconfig::render::from_yaml(text) {
        for mode in [machineconfig::Mode::Metal, machineconfig::Mode::Container] {
            let _ = machineconfig::validate(&docs, mode, true);
        }
    }
    let _ = machineconfig::SecretsBundle::from_yaml(text);
    let _ = machineconfig::talosconfig::TalosConfig::from_yaml(text);
    let _ = machineconfig::Contract::parse(text);
    let _ = machineconfig::render::Endpoint::parse(text);
});
