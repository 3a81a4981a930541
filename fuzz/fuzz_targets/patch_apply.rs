//! Any bytes as a patch, applied to a configuration of every contract (see ../bodies.rs).
#![no_main]

include!("../bodies.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    patch_apply(data);
});
