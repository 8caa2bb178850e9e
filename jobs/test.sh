#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing on a fresh machine, then
# formatting, lints, one release build of the workspace and every test (unit, HTTP, process,
# Docker). Exits non-zero on the first failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
need_cmd ldd libc-bin
need_cmd kill procps
need_cmd redis-server redis-server
need_cmd chromium chromium
need_cmd chromedriver chromium-driver
ensure_docker

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

build_binaries

log "cargo test"
cargo test --release --workspace --locked

leftover="$(docker ps -aq --filter label=managed-by=rustybalancer-tests | wc -l)"
[ "$leftover" -eq 0 ] || die "tests left $leftover container(s) behind"
