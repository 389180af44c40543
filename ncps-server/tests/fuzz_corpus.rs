//! Replays every kept fuzz input (`fuzz/corpus/<target>/` and the crashes
//! found, `fuzz/regressions/<target>/`) through the fuzz targets' checks, in
//! an ordinary `cargo test`: no cargo-fuzz, no nightly features. A fixed
//! crash stays fixed, and CI runs the corpora on every change.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "fuzz target {target} fails on {}",
                    entry.path().display()
                );
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus for fuzz target {target}");
        replayed += inputs;
    }
    eprintln!("replayed {replayed} fuzz inputs");
}
