//! Any bytes as every kind of input the engine parses (see ../bodies.rs).
#![no_main]

include!("../bodies.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| config_parse(data));
