//! Any bytes as a spec and an observed control plane; the planner's next step must keep etcd
//! quorum and the machine count (see ../plan_body.rs).
#![no_main]

include!("../plan_body.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rollout_plan(data);
});
