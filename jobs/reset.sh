#!/usr/bin/env bash
# Removes the stack and everything it made: its containers, the worker containers the agent
# created (by label), its network and its volumes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_docker
project="${COMPOSE_PROJECT_NAME:-rustybalancer}"
app="${APP_IDENTIFIER:-rustybalancer}"
stack() {
  compose -p "$project" --project-directory "$ROOT" -f "$ROOT/docker-compose.yaml" \
    -f "$ROOT/docker-compose.dev.yaml" --profile load "$@"
}
# The agents first (both: the follower would take over), so none replaces the workers
# removed next.
stack stop deployment-agent deployment-agent-2 >/dev/null 2>&1 || true
workers="$(docker ps -aq --filter "label=application=$app")"
[ -z "$workers" ] || docker rm -f $workers >/dev/null
stack down --volumes --remove-orphans --timeout 35
docker network rm "$app" >/dev/null 2>&1 || true
log "the $project stack is gone"
