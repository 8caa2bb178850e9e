#!/usr/bin/env bash
# Builds everything (no pulls) and starts the stack for an environment, waits until it is
# healthy, then prints where to reach it.
#
#   jobs/run.sh -e prod|dev|slim
set -euo pipefail
source "$(dirname "$0")/lib.sh"

environment=""
while getopts "e:h" opt; do
  case "$opt" in
    e) environment="$OPTARG" ;;
    *) sed -n '2,5p' "$0"; exit 2 ;;
  esac
done
case "$environment" in
  prod) files=(-f "$ROOT/docker-compose.yaml") ;;
  dev) files=(-f "$ROOT/docker-compose.yaml" -f "$ROOT/docker-compose.dev.yaml") ;;
  slim) files=(-f "$ROOT/docker-compose.yaml" -f "$ROOT/docker-compose.slim.yaml") ;;
  *) die "usage: $0 -e prod|dev|slim" ;;
esac

ensure_docker
build_binaries
for service in $(services); do build_image "$service"; done

log "starting the $environment stack"
compose -p "${COMPOSE_PROJECT_NAME:-rustybalancer}" --project-directory "$ROOT" "${files[@]}" up -d --remove-orphans

log "waiting until every container is healthy"
ids="$(compose -p "${COMPOSE_PROJECT_NAME:-rustybalancer}" --project-directory "$ROOT" "${files[@]}" ps -q)"
for _ in $(seq 1 60); do
  unhealthy=0
  for id in $ids; do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
    case "$status" in healthy|running) ;; *) unhealthy=1 ;; esac
  done
  [ "$unhealthy" -eq 0 ] && break
  sleep 1
done
[ "$unhealthy" -eq 0 ] || die "the stack did not become healthy; see: docker logs <container>"

port="${HOST_PORT_WORKER:-8080}"
cat <<MSG

RustyBalancer ($environment) is up.
  worker:   http://localhost:$port
  health:   curl http://localhost:$port/health
  a job:    curl -X POST http://localhost:$port/submit -H 'Content-Type: application/json' \\
              -d '{"operation":"monte_carlo_pi","data":{"iterations":1000000}}'
  stop:     jobs/reset.sh
MSG
