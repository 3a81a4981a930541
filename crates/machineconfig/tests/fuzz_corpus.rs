//! Every input of the fuzz corpus (fuzz/corpus), run through the fuzz targets' own bodies as an
//! ordinary test: what the fuzzer once found or was seeded with never regresses, without
//! cargo-fuzz.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code: a panic is a test failure

include!("../../../fuzz/bodies.rs");

/// The contents of every file of the `target` corpus.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn patch_apply_corpus_replays_clean_and_reaches_apply() {
    let inputs = corpus("patch_apply");
    assert!(inputs.len() >= 50, "{} inputs", inputs.len());
    let applied: Vec<usize> = inputs.iter().map(|i| patch_apply(i)).collect();
    // Most seeds are patches that apply (and then fail or pass validation): the target
    // exercises apply and validate, not only the parser.
    let reaching = applied.iter().filter(|&&n| n > 0).count();
    eprintln!("{reaching} of {} seeds reach apply", inputs.len());
    assert!(
        reaching * 2 > inputs.len(),
        "{reaching} of {} reach apply",
        inputs.len()
    );
}

#[test]
fn config_parse_corpus_replays_clean() {
    let inputs = corpus("config_parse");
    assert!(inputs.len() >= 2);
    inputs.iter().for_each(|i| config_parse(i));
}
