#!/usr/bin/env bash
# Builds everything (no pulls), starts the stack for an environment, waits until it is healthy
# and serving, then prints where to reach it.
#
#   jobs/run.sh -e prod|dev|slim
#
# Environment: anything from docker-compose.yaml (ports, thresholds, ...), and
# REDIS_IMAGE (default redis:7-alpine; built from Debian's redis-server when absent).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

environment=""
while getopts "e:h" opt; do
  case "$opt" in
    e) environment="$OPTARG" ;;
    *) sed -n '2,8p' "$0"; exit 2 ;;
  esac
done
files=(-f "$ROOT/docker-compose.yaml")
case "$environment" in
  prod) ;;
  dev) files+=(-f "$ROOT/docker-compose.dev.yaml") ;;
  slim) files+=(-f "$ROOT/docker-compose.slim.yaml") ;;
  *) die "usage: $0 -e prod|dev|slim" ;;
esac
project="${COMPOSE_PROJECT_NAME:-rustybalancer}"
stack() { compose -p "$project" --project-directory "$ROOT" "${files[@]}" "$@"; }

ensure_docker
need_cmd curl curl
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

balancer="http://localhost:${HOST_PORT_HTTP_BALANCER:-8000}"
admin="http://localhost:${HOST_PORT_ADMIN_BALANCER:-8001}"
agent="http://localhost:${HOST_PORT_HTTP_DEPLOYMENT_AGENT:-9000}"
ws="ws://localhost:${HOST_PORT_WS_DEPLOYMENT_AGENT:-9001}/ws"
log "waiting until the balancer has a worker"
until curl -fsS "$admin/ready" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || die "the balancer has no worker yet; see: docker logs ${project}_deployment-agent_1"
  sleep 1
done

cat <<MSG

RustyBalancer ($environment) is up.
  balancer:   $balancer             (admin: $admin/backends, $admin/metrics)
  agent API:  $agent/status         ($agent/stats, $agent/graph, $agent/events)
  queue:      $ws                   (WebSocket, pushed on every change)
  dashboard:  $([ "$environment" = slim ] && echo "off in the slim stack" || echo "$agent/")
  a job:      curl -X POST $balancer/submit -H 'Content-Type: application/json' \\
                -d '{"operation":"monte_carlo_pi","data":{"iterations":1000000}}'
  stop:       jobs/reset.sh
MSG
