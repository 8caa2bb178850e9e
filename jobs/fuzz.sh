#!/usr/bin/env bash
# Fuzzes the balancer's HTTP/1 fast path (crates/balancer/src/h1, issue #16) with cargo fuzz:
# the request parser, the response parser and the chunked decoder, FUZZ_SECONDS each
# (default 60), at nice 19. Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when
# missing. The toolchain is stable without rustup: RUSTC_BOOTSTRAP=1 lets cargo-fuzz's
# nightly flags (-Zsanitizer=address) through; this works on the stable 1.95 here.
# Seeds live in crates/balancer/fuzz/corpus/<target> (kept in the repo, small); what the
# fuzzer finds besides goes to target/fuzz-corpus/<target>, crashes to
# crates/balancer/fuzz/artifacts/<target>. Exits non-zero if a target fails.
#   FUZZ_SECONDS=300 jobs/fuzz.sh [TARGET...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request response chunked)

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  nice -n 19 cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
fuzz_dir=crates/balancer/fuzz
for target in "${targets[@]}"; do
  found="$ROOT/target/fuzz-corpus/$target"
  mkdir -p "$found"
  log "fuzzing $target for $seconds s"
  (cd "$fuzz_dir" && nice -n 19 cargo fuzz run --release "$target" "$found" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1)
done
log "fuzzing: no failure in ${targets[*]}"
