#!/usr/bin/env bash
# Removes the stack: its containers, networks and volumes, and every container the stack
# created at run time (found by label).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_docker
project="${COMPOSE_PROJECT_NAME:-rustybalancer}"
compose -p "$project" --project-directory "$ROOT" -f "$ROOT/docker-compose.yaml" \
  -f "$ROOT/docker-compose.dev.yaml" down --volumes --remove-orphans --timeout 35
leftover="$(docker ps -aq --filter "label=application=${APP_IDENTIFIER:-rustybalancer}")"
[ -z "$leftover" ] || docker rm -f $leftover >/dev/null
log "the $project stack is gone"
