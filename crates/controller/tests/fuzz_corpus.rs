//! The rollout_plan fuzz target's body (fuzz/plan_body.rs) as ordinary tests: every input of
//! its corpus (fuzz/corpus/rollout_plan), then 200,000 more drawn from a seeded generator, so
//! that `make test` fuzzes the planner's decisions without cargo-fuzz. Each world must get a
//! step that keeps etcd quorum and the machine count.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code: a panic is a test failure

include!("../../../fuzz/plan_body.rs");

use std::collections::BTreeSet;

fn corpus() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rollout_plan");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

/// The kind of a step, without its fields.
fn kind(step: &Step) -> String {
    let text = format!("{step:?}");
    text.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn rollout_plan_corpus_replays_clean() {
    let inputs = corpus();
    assert!(inputs.len() >= 20, "{} inputs", inputs.len());
    for input in &inputs {
        rollout_plan(input);
    }
}

#[test]
fn generated_worlds_get_safe_steps_of_every_kind() {
    let runs: u64 = std::env::var("PLAN_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    // xorshift64*: reproducible, no dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut kinds = BTreeSet::new();
    for _ in 0..runs {
        let len = (next() % 96) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        kinds.insert(kind(&rollout_plan(&data)));
    }
    // The generator reaches every decision that changes the control plane, so the rules are
    // checked where they matter (a generator that made only healthy worlds would prove little).
    for expected in [
        "CreateMachine",
        "BootstrapEtcd",
        "RemoveOrphanMember",
        "ReleaseMachine",
        "Remediate",
        "ScaleDown",
        "UpgradeTalos",
        "TryConfig",
        "Wait",
        "Steady",
    ] {
        assert!(kinds.contains(expected), "no {expected} step in {kinds:?}");
    }
}
