#!/usr/bin/env bash
# A scale model past this machine: the deployment-agent binary on the simulated runtime
# (AGENT_RUNTIME=simulated: workers are records, no container or process; one loopback
# listener inside the agent answers every worker's HTTP probe and /stats) with WORKERS
# workers, and SUBSCRIBERS WebSocket subscribers of its queue (`loadgen subscribers`) for
# DURATION. Prints
#   - the decision time per tick: the controller's decide + apply + execute + publish per
#     step (its `agent_tick_seconds` histogram since start, p50/p99 interpolated in the
#     buckets, max from `agent_tick_max_seconds`),
#   - the queue fan-out time: from the agent's publish (the snapshot's timestamp_ms) until the
#     first and the last subscriber had that snapshot or a newer one (p50/p99/max),
#   - the agent's memory: RSS from /proc, peak (VmHWM) and at the end.
# The goal is under 100 ms for each time. Run it on an otherwise idle machine (2 cores shared
# with other work inflate every figure); write the figures into the README.
#
#   jobs/bench-scale.sh        (WORKERS=1000 SUBSCRIBERS=10 DURATION=60s SCALE_CHECK_PERIOD=1s
#                               PUBLISH_INTERVAL=50ms; 0s publishes every change, as before)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

workers="${WORKERS:-1000}"
subscribers="${SUBSCRIBERS:-10}"
duration="${DURATION:-60s}"
period="${SCALE_CHECK_PERIOD:-1s}"
publish_interval="${PUBLISH_INTERVAL:-50ms}"
need_cmd curl curl
need_cmd python3 python3
[ -x "$TARGET_DIR/deployment-agent" ] && [ -x "$TARGET_DIR/loadgen" ] || build_binaries

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work="$(mktemp -d)"
agent_pid=""
sampler_pid=""
cleanup() {
  [ -z "$sampler_pid" ] || kill "$sampler_pid" 2>/dev/null || true
  [ -z "$agent_pid" ] || kill -9 "$agent_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

http="$(free_port)" ws="$(free_port)" grpc="$(free_port)"
env -i PATH="$PATH" AGENT_RUNTIME=simulated AGENT_HOST=127.0.0.1 AGENT_INSECURE=true \
  HOST_PORT_HTTP_DEPLOYMENT_AGENT="$http" HOST_PORT_WS_DEPLOYMENT_AGENT="$ws" \
  HOST_PORT_GRPC_DEPLOYMENT_AGENT="$grpc" APP_IDENTIFIER="rbscale$$" AGENT_NAME=rustybalancer-bench \
  MAX_CONTAINERS_LIMIT="$workers" MAX_CONTAINERS="$workers" MIN_CONTAINERS="$workers" \
  DEFAULT_CONTAINER="$workers" SCALE_CHECK_PERIOD="$period" PUBLISH_INTERVAL="$publish_interval" \
  WS_MAX_SUBSCRIBERS=$((subscribers + 10)) \
  RUST_LOG=warn "$TARGET_DIR/deployment-agent" >"$work/agent.log" 2>&1 &
agent_pid=$!

# cpu_ticks : the agent's user + system CPU time, in 1/100 s.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }

# rss_kib FIELD : VmRSS or VmHWM of the agent, KiB.
rss_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$agent_pid/status"; }

# serving : items of the queue that take requests (not INIT, not SUNDOWN).
serving() {
  curl -s --max-time 5 "http://127.0.0.1:$http/queue" | python3 -c '
import json, sys
try:
    items = json.load(sys.stdin)["items"]
    print(sum(i["utilization_category"] not in ("INIT", "SUNDOWN") for i in items))
except Exception:
    print(0)'
}

log "agent (pid $agent_pid): $workers simulated workers, SCALE_CHECK_PERIOD=$period, PUBLISH_INTERVAL=$publish_interval"
started="$(date +%s%N)"
deadline=$((SECONDS + 180))
until [ "$(serving)" -ge "$workers" ]; do
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log" >&2; die "the agent exited"; }
  [ "$SECONDS" -lt "$deadline" ] || die "not $workers serving workers within 180 s"
  sleep 1
done
ready_ms=$((($(date +%s%N) - started) / 1000000))
log "$workers workers serving after $ready_ms ms; $subscribers subscribers for $duration"

# The agent's RSS every second while the subscribers listen.
(while kill -0 "$agent_pid" 2>/dev/null; do
  rss_kib VmRSS >>"$work/rss"
  sleep 1
done) &
sampler_pid=$!

cpu_before="$(cpu_ticks)" window_started="$(date +%s%N)"
"$TARGET_DIR/loadgen" subscribers --url "ws://127.0.0.1:$ws/ws" --count "$subscribers" \
  --duration "$duration" --agent "http://127.0.0.1:$http" | tee "$work/report"

cpu_after="$(cpu_ticks)" window_ns=$(($(date +%s%N) - window_started))
snapshot_bytes="$(curl -s --max-time 5 "http://127.0.0.1:$http/queue" | wc -c)"
end_kib="$(rss_kib VmRSS)"
peak_kib="$(rss_kib VmHWM)"
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""
window_peak_kib="$(sort -n "$work/rss" | tail -1)"
kill -TERM "$agent_pid"
for _ in $(seq 1 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
kill -9 "$agent_pid" 2>/dev/null || true
agent_pid=""

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
echo "agent memory (RSS):                     peak $(mib "$peak_kib") (VmHWM), $(mib "$window_peak_kib") highest sample while measuring, $(mib "$end_kib") at the end"
awk -v t=$((cpu_after - cpu_before)) -v ns="$window_ns" -v b="$snapshot_bytes" 'BEGIN {
  printf "agent CPU while measuring:              %.2f cores; one snapshot is %.0f KiB of JSON\n", t / 100 / (ns / 1e9), b / 1024 }'
echo "time to $workers serving workers:        $ready_ms ms from the agent's start"
load="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, load average $load (1, 5, 15 min) at the end"
