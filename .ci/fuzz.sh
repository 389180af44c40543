#!/usr/bin/env bash
# A short fuzzing run of every cargo-fuzz target (fuzz/), after the tests.
# The kept corpora are replayed by `cargo test` already
# (ncps-server/tests/fuzz_corpus.rs); this looks for new crashes from them.
#
#   NCPS_FUZZ_SECONDS   seconds per target (default 20; 0 skips the run)
#
# cargo-fuzz needs nightly compiler flags: RUSTC_BOOTSTRAP=1 allows them on
# the stable toolchain. The targets are built without a sanitizer (the code
# under test has no `unsafe`) in the dev profile, which builds in a fraction
# of the release+ASan time; the build directory is kept in
# ~/.cache/ncps-ci/fuzz-target so a later run on the same machine only
# rebuilds what changed. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ with the fix.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SECONDS_PER_TARGET=${NCPS_FUZZ_SECONDS:-20}
if [ "$SECONDS_PER_TARGET" = 0 ]; then
    echo "fuzz.sh: NCPS_FUZZ_SECONDS=0, skipping the fuzzing run"
    exit 0
fi

started=$(date +%s)
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
installed=$(date +%s)

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$HOME/.cache/ncps-ci/fuzz-target"
FLAGS=(--dev --sanitizer none)
cargo fuzz build "${FLAGS[@]}"
built=$(date +%s)

for target in $(cargo fuzz list); do
    # New inputs go to a scratch directory; the kept corpus is only read.
    scratch=$(mktemp -d)
    status=0
    cargo fuzz run "${FLAGS[@]}" "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$scratch.log" 2>&1 || status=$?
    grep -E "^stat::(number_of_executed_units|new_units_added)|^Done|panicked|ERROR|SUMMARY" "$scratch.log" || true
    if [ "$status" != 0 ]; then
        tail -n 40 "$scratch.log" >&2
    fi
    rm -rf "$scratch" "$scratch.log"
    if [ "$status" != 0 ]; then
        echo "fuzz.sh: fuzz target $target failed (exit $status); its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    echo "fuzz.sh: $target: ${SECONDS_PER_TARGET}s without a crash"
done
done_at=$(date +%s)
echo "fuzz.sh: cargo-fuzz install $((installed - started))s, build $((built - installed))s, runs $((done_at - built))s"
