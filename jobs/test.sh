#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing on a fresh machine, then
# formatting, lints, one release build of the workspace and every test (unit, HTTP, process,
# Docker). Exits non-zero on the first failure.
set -euo pipefail
# One compilation for everything: the tests' quicker profile, also for the images the
# end-to-end tests build (jobs/run.sh and jobs/swarm-lab.sh inherit it).
export BUILD_PROFILE=release
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

# stage NAME : ends the previous stage (printing how long it took) and starts NAME.
suite_started=$SECONDS stage_name="" stage_started=$SECONDS
stage() {
  [ -z "$stage_name" ] || log "$stage_name: $((SECONDS - stage_started)) s"
  stage_name="$1" stage_started=$SECONDS
  [ -z "$stage_name" ] || log "$stage_name"
}

stage "tools"

ensure_rust
need_cmd ldd libc-bin
need_cmd kill procps
need_cmd redis-server redis-server
# The third-party apps of the "bring your own app" tests: busybox httpd and nginx images.
ensure_test_app_packages
need_cmd chromium chromium
need_cmd chromedriver chromium-driver
ensure_docker

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

stage "release build"
build_binaries

stage "cargo test (unit, HTTP, process, Docker)"
cargo test --release --workspace --locked --exclude e2e

# The balancer's tests ran on its HTTP/1.1 fast path (the default); once more on hyper only.
stage "the balancer's tests on the hyper path (BALANCER_TEST_HTTP1_PATH=hyper)"
BALANCER_TEST_HTTP1_PATH=hyper cargo test --release --locked -p balancer --test balancer

# Last, alone on the machine: the whole stack through jobs/run.sh and jobs/reset.sh. It prints
# the cold-start and scale-out figures and where the chart of the run is.
stage "end-to-end tests: the prod, slim and dev stacks on Docker, the stack on a three-node swarm lab (about 15 minutes)"
cargo test --release -p e2e --locked -- --nocapture --test-threads=1

leftover="$(docker ps -aq --filter label=managed-by=rustybalancer-tests | wc -l)"
[ "$leftover" -eq 0 ] || die "tests left $leftover container(s) behind"
leftover="$(docker ps -a --format '{{.Names}}' | grep -c '^rbe2e-' || true)"
[ "$leftover" -eq 0 ] || die "the end-to-end test left $leftover container(s) behind"
if ip netns list 2>/dev/null | grep -q '^rblab' || [ -e /run/rblab ] || [ -e /var/lib/rblab ]; then
  die "the swarm tests left the swarm lab behind (jobs/swarm-lab.sh down removes it)"
fi
stage ""
log "all tests passed in $((SECONDS - suite_started)) s"
