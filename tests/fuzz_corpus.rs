//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every
//! input that once broke a target (`fuzz/regressions/<target>/`) through
//! the targets' entry points: what the fuzzer found stays fixed, without
//! the nightly toolchain.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("request_head", lastclick::fuzz::request_head),
    ("cookie", lastclick::fuzz::cookie),
    ("utm_location", lastclick::fuzz::utm_location),
    ("event_json", lastclick::fuzz::event_json),
    ("config", lastclick::fuzz::config),
];

/// Runs `target` on every file in `dir`; how many there were.
fn replay(dir: &Path, target: Target) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| target(&input));
        assert!(outcome.is_ok(), "{} fails its target", path.display());
        count += 1;
    }
    count
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let corpus = replay(&root.join("corpus").join(name), *target);
        let regressions = replay(&root.join("regressions").join(name), *target);
        assert!(
            corpus > 0,
            "fuzz/corpus/{name} is empty: run scripts/fuzz to seed it"
        );
        eprintln!("{name}: {corpus} corpus inputs, {regressions} regressions");
    }
}
