#!/usr/bin/env bash
# Builds everything (no pulls), starts the stack for an environment, waits until it is healthy
# and serving, then prints where to reach it.
#
#   jobs/run.sh -e prod|dev|slim|swarm [-f COMPOSE_FILE]...
#
# -f adds a compose file on top (e.g. docker-compose.byoa.yaml: the stack in front of
# DOCKER_IMAGE, your own app; README, "Bring your own app"); with swarm, a stack file.
# Environment: anything from docker-compose.yaml (ports, thresholds, ...), and
# REDIS_IMAGE (default redis:7-alpine; built from Debian's redis-server when absent).
# AGENT_TOKEN: from the environment or .env, else .secrets/agent-token (made on first run).
#
# swarm: deploys docker-stack.yaml (stack STACK_NAME, default rustybalancer) on the swarm whose
# manager DOCKER_HOST names. The images are built on this machine's own engine (BUILD_DOCKER_HOST,
# default: the default engine) and reach the nodes either
#  - through a registry, when IMAGE_REPO names one (a host part before the first `/`, with a
#    `.` or `:` in it, or `localhost`, e.g. registry.example:5000/rb): pushed there, and the
#    nodes pull them (`--with-registry-auth`); or
#  - without a registry: `docker save | docker -H NODE load` into every node of SWARM_NODES,
#    a space separated list of DOCKER_HOST values (ssh://user@host, tcp://..., unix://...;
#    default: DOCKER_HOST alone, a one-node swarm).
# ENGINE_SOCKET: the engine socket on every node, mounted into its agent (default
# /var/run/docker.sock; may hold {{.Node.Hostname}}, as the swarm lab's does). DOCKER_GID: its
# group on the nodes (default: the group of that socket here, when it exists here).
# BALANCER_REPLICAS: N balancers instead of one per node (adds docker-stack.replicated.yaml).
# BUILD_PROFILE: the binaries' cargo profile, `dist` (fat LTO; prod, slim, swarm) or `release`
# (quicker to build; the default of dev).
# The swarm lab (jobs/swarm-lab.sh up) prints the line to deploy on it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# registry_host REPO : the registry host of an image repository (`registry.example:5000/rb`),
# empty for a plain name (`rustybalancer`, `user/rb` on Docker Hub).
registry_host() {
  case "$1" in
    */*) local host="${1%%/*}"
      case "$host" in *.*|*:*|localhost) echo "$host" ;; esac ;;
  esac
}

# local_docker ARGS... : the docker CLI on the engine that builds (BUILD_DOCKER_HOST, default
# the local default engine), not on the swarm's manager.
local_docker() {
  if [ -n "${BUILD_DOCKER_HOST:-}" ]; then DOCKER_HOST="$BUILD_DOCKER_HOST" docker "$@"
  else (unset DOCKER_HOST; docker "$@"); fi
}

# run_swarm : `-e swarm`, see the header.
run_swarm() {
  local stack_name="${STACK_NAME:-rustybalancer}" manager="${DOCKER_HOST:-}" images=() node
  local registry nodes socket pids=() archive name replicas lab_socket
  [ -n "$manager" ] || die "-e swarm: set DOCKER_HOST to a manager of the swarm (e.g. ssh://user@manager; the lab prints its own)"
  need_cmd docker docker.io
  need_cmd curl curl
  [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] \
    || die "$manager is not a manager of a swarm (docker info: Swarm.ControlAvailable is not true)"
  ensure_agent_token "$ROOT/.env" "$ROOT/.secrets"
  # On the swarm lab the default would hand every agent this machine's own engine.
  case "$manager" in
    unix:///run/rblab/sockets/*) lab_socket='/run/rblab/sockets/{{.Node.Hostname}}.sock'
      ENGINE_SOCKET="${ENGINE_SOCKET:-$lab_socket}" ;;
  esac
  ENGINE_SOCKET="${ENGINE_SOCKET:-/var/run/docker.sock}"
  if [ -z "${DOCKER_GID:-}" ]; then
    # The socket of the manager's own node, when it is on this machine (the lab's are).
    socket="${ENGINE_SOCKET//\{\{.Node.Hostname\}\}/$(docker info --format '{{.Name}}')}"
    [ -S "$socket" ] || die "cannot find the engine socket $socket here to read its group: set DOCKER_GID to the group id owning $ENGINE_SOCKET on the nodes"
    DOCKER_GID="$(stat -L -c %g "$socket")"
  fi
  export ENGINE_SOCKET DOCKER_GID

  # The images, built on this machine's engine (the swarm's engines do not build).
  (
    unset DOCKER_HOST
    [ -z "${BUILD_DOCKER_HOST:-}" ] || export DOCKER_HOST="$BUILD_DOCKER_HOST"
    ensure_docker
    [ "${SKIP_BUILD:-0}" = 1 ] || build_binaries
    for service in $(services); do build_image "$service"; done
    ensure_redis_image
    echo "$REDIS_IMAGE" >"$ROOT/target/.swarm-redis-image"
  )
  REDIS_IMAGE="$(cat "$ROOT/target/.swarm-redis-image")"
  rm -f "$ROOT/target/.swarm-redis-image"
  for service in $(services); do images+=("$IMAGE_REPO/$service:$IMAGE_TAG"); done
  registry="$(registry_host "$IMAGE_REPO")"
  if [ -n "$registry" ]; then
    # A Redis image built here goes to the registry too; one the nodes can pull stays as is.
    if [ "$REDIS_IMAGE" = "$IMAGE_REPO/redis:$IMAGE_TAG" ]; then images+=("$REDIS_IMAGE"); fi
    log "pushing ${images[*]} to $registry"
    for name in "${images[@]}"; do
      local_docker push -q "$name" >/dev/null || die "docker push $name failed (docker login $registry?)"
    done
  else
    images+=("$REDIS_IMAGE")
    read -r -a nodes <<<"${SWARM_NODES:-$manager}"
    # Only what some node lacks (or holds in another version): a load copies every layer.
    local missing=() name id node
    for name in "${images[@]}"; do
      id="$(local_docker image inspect -f '{{.Id}}' "$name")" || die "no image $name here"
      for node in "${nodes[@]}"; do
        if [ "$(DOCKER_HOST="$node" docker image inspect -f '{{.Id}}' "$name" 2>/dev/null)" != "$id" ]; then
          missing+=("$name")
          break
        fi
      done
    done
    images=("${missing[@]}")
  fi
  if [ -z "$registry" ] && [ "${#images[@]}" -gt 0 ]; then
    log "loading ${images[*]} into ${nodes[*]}"
    archive="$(mktemp)"
    local_docker save -o "$archive" "${images[@]}" || { rm -f "$archive"; die "docker save failed"; }
    for node in "${nodes[@]}"; do
      DOCKER_HOST="$node" docker load -q -i "$archive" >/dev/null &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || { rm -f "$archive"; die "loading the images into a node of SWARM_NODES failed"; }; done
    rm -f "$archive"
  fi
  export REDIS_IMAGE IMAGE_REPO IMAGE_TAG
  export DOCKER_IMAGE="${DOCKER_IMAGE:-$IMAGE_REPO/worker:$IMAGE_TAG}"

  files=(-c "$ROOT/docker-stack.yaml")
  [ -z "${BALANCER_REPLICAS:-}" ] || files+=(-c "$ROOT/docker-stack.replicated.yaml")
  # dev rebuilds often: the quicker profile unless BUILD_PROFILE says otherwise.
if [ "$environment" = dev ] && [ -z "$BUILD_PROFILE_GIVEN" ]; then use_profile release; fi
for ((i = 1; i < ${#extra[@]}; i += 2)); do files+=(-c "${extra[$i]}"); done
  # Swarm cannot switch a service between global and replicated: a balancer deployed the other
  # way is removed first (its traffic port is down until the new one runs).
  local want=global have
  [ -z "${BALANCER_REPLICAS:-}" ] || want=replicated
  have="$(docker service inspect "${stack_name}_balancer" \
    --format '{{if .Spec.Mode.Global}}global{{else}}replicated{{end}}' 2>/dev/null || true)"
  if [ -n "$have" ] && [ "$have" != "$want" ]; then
    log "the balancer runs $have, $want is asked: removing it first"
    docker service rm "${stack_name}_balancer" >/dev/null
    while [ -n "$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack_name}_balancer" 2>/dev/null)" ] \
      || docker service inspect "${stack_name}_balancer" >/dev/null 2>&1; do sleep 1; done
  fi
  log "deploying the stack $stack_name on $manager"
  if [ -n "$registry" ]; then
    docker stack deploy --prune --with-registry-auth "${files[@]}" "$stack_name"
  else
    # The nodes have the images: no registry to ask for digests.
    docker stack deploy --prune --resolve-image never "${files[@]}" "$stack_name"
  fi

  log "waiting until every service of $stack_name runs all its tasks"
  deadline=$((SECONDS + ${RUN_TIMEOUT:-180}))
  while :; do
    waiting=""
    # REPLICAS reads `2/3`, or `2/3 (max 1 per node)`: the first word only.
    while read -r name replicas _; do
      case "$replicas" in 0/*|"") waiting="$waiting $name($replicas)" ;;
        */*) [ "${replicas%%/*}" = "${replicas#*/}" ] || waiting="$waiting $name($replicas)" ;; esac
    done < <(docker stack services "$stack_name" --format '{{.Name}} {{.Replicas}}')
    [ -z "$waiting" ] && break
    [ "$SECONDS" -lt "$deadline" ] || die "not running:$waiting; see: docker service ps --no-trunc <service>, docker service logs <service>"
    sleep 1
  done

  local addresses
  addresses="$(docker node ls -q | xargs docker node inspect --format '{{.Status.Addr}}' | tr '\n' ' ')"
  cat <<MSG

RustyBalancer is deployed on the swarm of $manager as the stack $stack_name.
  balancer:   http://<node>:${HOST_PORT_HTTP_BALANCER:-8000} on every node running one (nodes: $addresses)
  agents:     not published: on the overlay network ${AGENT_NETWORK:-rustybalancer-workers}
              (attachable), e.g. docker run --rm --network ${AGENT_NETWORK:-rustybalancer-workers} ...
              http://deployment-agent:9000/status; on the swarm lab: jobs/swarm-lab.sh addr ${stack_name}_deployment-agent
  services:   docker stack services $stack_name
  stop:       docker stack rm $stack_name, then the workers the agent made (services labelled
              application=${APP_IDENTIFIER:-rustybalancer})
MSG
}

environment=""
extra=()
while getopts "e:f:h" opt; do
  case "$opt" in
    e) environment="$OPTARG" ;;
    f) case "$OPTARG" in /*) extra+=(-f "$OPTARG") ;; *) extra+=(-f "$PWD/$OPTARG") ;; esac ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
  esac
done
for ((i = 1; i < ${#extra[@]}; i += 2)); do
  [ -f "${extra[$i]}" ] || die "no compose file ${extra[$i]} (-f)"
done
if [ "$environment" = swarm ]; then
  run_swarm
  exit 0
fi
files=(-f "$ROOT/docker-compose.yaml")
case "$environment" in
  prod) ;;
  dev) files+=(-f "$ROOT/docker-compose.dev.yaml") ;;
  slim) files+=(-f "$ROOT/docker-compose.slim.yaml") ;;
  *) die "usage: $0 -e prod|dev|slim|swarm [-f COMPOSE_FILE]..." ;;
esac
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
