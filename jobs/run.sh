#!/usr/bin/env bash
# Builds everything (no pulls), starts the stack for an environment, waits until it is healthy
# and serving, then prints where to reach it.
#
#   jobs/run.sh -e prod|dev|slim [-f COMPOSE_FILE]...
#
# -f adds a compose file on top (e.g. docker-compose.byoa.yaml: the stack in front of
# DOCKER_IMAGE, your own app; README, "Bring your own app").
# Environment: anything from docker-compose.yaml (ports, thresholds, ...), and
# REDIS_IMAGE (default redis:7-alpine; built from Debian's redis-server when absent).
# AGENT_TOKEN: from the environment or .env, else .secrets/agent-token (made on first run).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

environment=""
extra=()
while getopts "e:f:h" opt; do
  case "$opt" in
    e) environment="$OPTARG" ;;
    f) case "$OPTARG" in /*) extra+=(-f "$OPTARG") ;; *) extra+=(-f "$PWD/$OPTARG") ;; esac ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
files=(-f "$ROOT/docker-compose.yaml")
case "$environment" in
  prod) ;;
  dev) files+=(-f "$ROOT/docker-compose.dev.yaml") ;;
  slim) files+=(-f "$ROOT/docker-compose.slim.yaml") ;;
  *) die "usage: $0 -e prod|dev|slim [-f COMPOSE_FILE]..." ;;
esac
for ((i = 1; i < ${#extra[@]}; i += 2)); do
  [ -f "${extra[$i]}" ] || die "no compose file ${extra[$i]} (-f)"
done
files+=("${extra[@]}")
project="${COMPOSE_PROJECT_NAME:-rustybalancer}"
stack() { compose -p "$project" --project-directory "$ROOT" "${files[@]}" "$@"; }

ensure_docker
need_cmd curl curl
# The agent runs as user 10001 and reaches the Docker socket through the socket's group.
ensure_docker_gid
# Mutating calls to the agent need the token; the balancer sends it on its gRPC calls.
ensure_agent_token "$ROOT/.env" "$ROOT/.secrets"
# The dev `loadgen` service writes its results into target/loadgen: as the calling user, or as
# 10001 owning that directory when the caller is root (no service runs as root).
mkdir -p "$ROOT/target/loadgen"
if [ -z "${LOADGEN_USER:-}" ] && [ "$(id -u)" -eq 0 ]; then
  LOADGEN_USER=10001:10001
  chown "$LOADGEN_USER" "$ROOT/target/loadgen"
fi
export LOADGEN_USER="${LOADGEN_USER:-$(id -u):$(id -g)}"
# SKIP_BUILD=1 reuses binaries already built (the end-to-end test does, inside cargo test).
[ "${SKIP_BUILD:-0}" = 1 ] || build_binaries
for service in $(services); do build_image "$service"; done
[ "$environment" = slim ] || ensure_redis_image

log "starting the $environment stack"
stack up -d --remove-orphans

log "waiting until every service is healthy"
deadline=$((SECONDS + ${RUN_TIMEOUT:-120}))
while :; do
  waiting=""
  for id in $(stack ps -q); do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
    case "$status" in healthy|running) ;; *) waiting="$waiting $(docker inspect -f '{{.Name}}' "$id")($status)" ;; esac
  done
  [ -z "$waiting" ] && break
  [ "$SECONDS" -lt "$deadline" ] || die "not healthy:$waiting; see: docker logs <container>"
  sleep 1
done

# The agent's ports and the balancer's admin port listen on BIND_ADDRESS only.
case "${BIND_ADDRESS:-127.0.0.1}" in
  0.0.0.0|::|'[::]'|127.0.0.1) private=localhost ;;
  *:*) private="[${BIND_ADDRESS#[}"; private="${private%]}]" ;;
  *) private="$BIND_ADDRESS" ;;
esac
balancer="http://localhost:${HOST_PORT_HTTP_BALANCER:-8000}"
admin="http://$private:${HOST_PORT_ADMIN_BALANCER:-8001}"
agent="http://$private:${HOST_PORT_HTTP_DEPLOYMENT_AGENT:-9000}"
ws="ws://$private:${HOST_PORT_WS_DEPLOYMENT_AGENT:-9001}/ws"
# The second agent (prod, dev; none in slim) on its own host ports.
agents="$agent" second=""
if [ -n "$(stack ps -q deployment-agent-2)" ]; then
  agent2="http://$private:${HOST_PORT_HTTP_DEPLOYMENT_AGENT_2:-9010}"
  ws2="ws://$private:${HOST_PORT_WS_DEPLOYMENT_AGENT_2:-9011}/ws"
  agents="$agent $agent2"
  second="
  agent 2:    $agent2/status         (queue: $ws2)
              either agent answers the same; one leads (/status \"leadership\"), and a
              change sent to the other is forwarded to it"
fi
log "waiting until every agent answers, one leads and the balancer has a worker"
for url in $agents; do
  until curl -fsS "$url/health" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "the agent at $url does not answer; see: docker logs ${project}_deployment-agent_1 (or ${project}_deployment-agent-2_1)"
    sleep 1
  done
done
# One of them leads (GET /status, "leadership": {"role": "leader", ...}).
leads() { for url in $agents; do curl -fsS "$url/status" 2>/dev/null | grep -q '"role":"leader"' && return 0; done; return 1; }
until leads; do
  [ "$SECONDS" -lt "$deadline" ] || die "no agent leads; see: docker logs ${project}_deployment-agent_1 (and ${project}_deployment-agent-2_1)"
  sleep 1
done
until curl -fsS "$admin/ready" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || die "the balancer has no worker yet; see: docker logs ${project}_deployment-agent_1 (and ${project}_deployment-agent-2_1)"
  sleep 1
done

token_file="$ROOT/.secrets/agent-token"
[ "$PWD" = "$ROOT" ] && token_file=".secrets/agent-token"
case "$AGENT_TOKEN_SOURCE" in
  *"(new)") bearer="\$(cat $token_file)"; token_from="made just now in $token_file" ;;
  "$ROOT/.secrets/agent-token") bearer="\$(cat $token_file)"; token_from="in $token_file" ;;
  environment) bearer='$AGENT_TOKEN'; token_from="AGENT_TOKEN from the environment" ;;
  *) bearer="<AGENT_TOKEN in $AGENT_TOKEN_SOURCE>"; token_from="AGENT_TOKEN in $AGENT_TOKEN_SOURCE" ;;
esac

# Our worker takes jobs; your own app (DOCKER_IMAGE, README "Bring your own app") its own paths.
case "${DOCKER_IMAGE:-$IMAGE_REPO/worker:}" in
  "$IMAGE_REPO/worker:"*)
    try="curl -X POST $balancer/submit -H 'Content-Type: application/json' \\
                -d '{\"operation\":\"monte_carlo_pi\",\"data\":{\"iterations\":1000000}}'" ;;
  *) try="curl -i $balancer/          (your app, ${DOCKER_IMAGE})" ;;
esac

cat <<MSG

RustyBalancer ($environment) is up.
  balancer:   $balancer             (admin: $admin/backends, $admin/metrics)
  agent API:  $agent/status         ($agent/stats, $agent/graph, $agent/events)
  queue:      $ws                   (WebSocket, pushed on every change)$second
  dashboard:  $([ "$environment" = slim ] && echo "off in the slim stack" || echo "$agent/")
  try:        $try
  token:      $token_from: scale, bounds and drain need it (the dashboard asks once)
              curl -H "Authorization: Bearer $bearer" -H 'Content-Type: application/json' \\
                -X POST $agent/scale -d '{"replicas":2}'
  stop:       jobs/reset.sh
MSG
