#!/usr/bin/env bash
# How long a follower takes to lead when the leading agent dies. Two agent processes on the
# local Docker engine share a Redis server started here; each round kills the leader
# (SIGKILL, no lease release), times until the other one's /status says "leader" under a
# higher epoch, then starts the killed one again as the follower. Prints each round and
# min / median / max. Run it on an otherwise idle machine; write the figures into the README.
#
#   jobs/bench-takeover.sh [ROUNDS]      (LEADER_LEASE from the environment, default 3s)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

rounds="${1:-5}"
lease="${LEADER_LEASE:-3s}"
need_cmd redis-server redis-server
need_cmd curl curl
need_cmd python3 python3
ensure_docker
[ -x "$TARGET_DIR/deployment-agent" ] || build_binaries
docker image inspect "$IMAGE_REPO/worker:$IMAGE_TAG" >/dev/null 2>&1 || build_image worker

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

work="$(mktemp -d)"
app="rbbench$$"
redis_port="$(free_port)"
declare -A pids http
cleanup() {
  for n in "${!pids[@]}"; do kill -9 "${pids[$n]}" 2>/dev/null || true; done
  docker ps -aq --filter "label=application=$app" | xargs -r docker rm -f >/dev/null
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$redis_port" --save "" --appendonly no --daemonize yes \
  --logfile "$work/redis.log" --pidfile "$work/redis.pid"

start_agent() { # start_agent N
  local n="$1"
  [ -n "${http[$n]:-}" ] || http[$n]="$(free_port)"
  env -i PATH="$PATH" AGENT_ID="bench-$n" AGENT_REPLICAS=2 LEADER_LEASE="$lease" \
    REDIS_URL="redis://127.0.0.1:$redis_port/0" AGENT_HOST=127.0.0.1 \
    HOST_PORT_HTTP_DEPLOYMENT_AGENT="${http[$n]}" HOST_PORT_WS_DEPLOYMENT_AGENT="$(free_port)" \
    HOST_PORT_GRPC_DEPLOYMENT_AGENT="$(free_port)" DOCKER_IMAGE="$IMAGE_REPO/worker:$IMAGE_TAG" \
    APP_IDENTIFIER="$app" AGENT_NAME=rustybalancer-bench MIN_CONTAINERS=1 DEFAULT_CONTAINER=2 \
    AGENT_TOKEN="bench-token-0123456789abcdef" RUST_LOG=warn \
    "$TARGET_DIR/deployment-agent" >>"$work/agent-$n.log" 2>&1 &
  pids[$n]=$!
  disown "$!" # killed on purpose: no job-control notice
}

# role_of N : "leader <epoch>" or "follower <epoch>" from the agent's /status.
role_of() {
  curl -s --max-time 1 "http://127.0.0.1:${http[$1]}/status" | python3 -c '
import json, sys
try:
    l = json.load(sys.stdin)["leadership"]
    print(l["role"], l["epoch"])
except Exception:
    print("none 0")'
}

start_agent 1
sleep 2
start_agent 2
sleep 3
log "two agents, lease $lease, $rounds rounds"
times=()
for ((round = 1; round <= rounds; round++)); do
  leader="" follower=""
  for n in 1 2; do
    read -r role epoch < <(role_of "$n")
    if [ "$role" = leader ]; then leader="$n" before="$epoch"; else follower="$n"; fi
  done
  [ -n "$leader" ] && [ -n "$follower" ] || die "round $round: no leader and follower pair"
  started="$(date +%s%N)"
  kill -9 "${pids[$leader]}"
  while :; do
    read -r role epoch < <(role_of "$follower")
    [ "$role" = leader ] && [ "$epoch" -gt "$before" ] && break
    [ $(( ($(date +%s%N) - started) / 1000000 )) -lt 30000 ] || die "round $round: no takeover in 30 s"
    sleep 0.02
  done
  took=$(( ($(date +%s%N) - started) / 1000000 ))
  times+=("$took")
  printf 'round %d: bench-%s -> bench-%s, epoch %d -> %d, takeover %d ms\n' \
    "$round" "$leader" "$follower" "$before" "$epoch" "$took"
  start_agent "$leader"
  sleep 3
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys
t = [int(x) for x in sys.stdin]
print(f"takeover (ms): min {t[0]}, median {t[len(t)//2]}, max {t[-1]} over {len(t)} rounds")'
running="$(docker ps -q --filter "label=application=$app" | wc -l)"
log "workers running at the end: $running (wanted 2)"
