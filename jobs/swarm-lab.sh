#!/usr/bin/env bash
# The swarm lab: a three-node Docker Swarm on this one machine, for the Swarm tests and for
# trying `docker-stack.yaml`, without touching the host's own Docker engine or its containers.
#
#   jobs/swarm-lab.sh up|down|status|addr SERVICE
#
# up      three extra dockerd, each in its own network namespace (rblab-n1..3) with its own
#         hostname, joined by veth pairs to the bridge rblab0 (10.231.0.1/24; node N at
#         10.231.0.1N), all three Swarm managers; loads the project's images into each and
#         prints how to deploy the stack on it. A lab that is already complete is kept (its
#         images are loaded again); traces of a half-built one are removed first (`down`).
# down    leaves the swarm on every node, stops the daemons (SIGTERM, SIGKILL after
#         LAB_STOP_TIMEOUT seconds, default 20) with their containerd, shims and containers,
#         unmounts what they mounted, deletes the namespaces, veths, the bridge and every file
#         `up` made. Safe after a failed or half-finished `up`, and when run twice.
# status  the nodes as Swarm sees them (or what is left of a lab that is not up).
# addr    `NODE CONTAINER ADDRESS` per running task of the service: the address the root
#         namespace reaches it at (its docker_gwbridge address, see below).
#
# Needs root. Environment: IMAGE_REPO, IMAGE_TAG (jobs/lib.sh), REDIS_IMAGE; LAB_IMAGES, more
# images of the host engine to load into each node (space separated, e.g. test apps);
# LAB_HEARTBEAT, the dispatcher heartbeat (default 1s).
#
# Layout. Node N: namespace /run/netns/rblab-nN; veth rblab-nN (root side, on rblab0) and eth0
# (inside, 10.231.0.1N/24, default route via 10.231.0.1); engine socket
# /run/rblab/sockets/rblab-nN.sock; config, pid file, exec root (and so its containerd) and
# log under /run/rblab/rblab-nN (log: dockerd.log); data root and trust key under
# /var/lib/rblab/rblab-nN. Each daemon: `nsenter --net=/run/netns/rblab-nN unshare --uts sh -c
# 'hostname rblab-nN; exec dockerd ...'`, not `ip netns exec`, which remounts /sys, and then
# dockerd fails with "Devices cgroup isn't mounted". Each has its own --config-file, since the
# host's /etc/docker/daemon.json sets data-root and the storage driver, which conflict with
# the flags, and its own `deprecated-key-path` there (otherwise all share /etc/docker/key.json).
# Flags: --iptables=false (so no daemon changes any firewall; it would only be the node
# namespace's anyway), --storage-driver vfs (full copies of every layer: slow for big images,
# fine for ours). The default bridge docker0 (172.17.0.1/16) and docker_gwbridge
# (172.18.0.1/16) exist in every node's own namespace: they do not clash with each other or the
# host's, so they keep their defaults. The mount namespace is the host's: dockerd bind-mounts
# its data root onto itself, and container shm and network namespaces (under the exec root)
# are mounts too; `down` unmounts everything under /run/rblab, /var/lib/rblab.
#
# What was found to work here (Docker 20.10, cgroup v1, kernel 6.x without IPVS):
# - The nodes reach each other only with one FORWARD rule in the root namespace (br_netfilter
#   sends bridged packets through it and the host engine sets its policy to DROP): `up` adds
#   `-i rblab0 -o rblab0 -j ACCEPT` tagged `rblab-lab`, `down` removes it.
# - Reaching a service from the root namespace (tests, curl on this machine): publish its port
#   in mode host (`ports: - {target: 8000, published: 8000, mode: host}`); with
#   --iptables=false dockerd's userland proxy (docker-proxy) listens in the node's namespace on
#   every address, so 10.231.0.1N:PORT answers for the task on node N. The routing mesh
#   (mode ingress, the default) does NOT answer, and neither does a service's virtual IP on an
#   overlay network: both need IPVS (this kernel has none: no /proc/sys/net/ipv4/vs) and
#   iptables rules. So services reached by name use `endpoint_mode: dnsrr` (the name resolves
#   to the tasks' own addresses; `tasks.NAME` too). Overlay addresses (10.0.x.x) are not routed
#   from the root namespace directly, but every task also has an address on its node's
#   docker_gwbridge, and the lab gives node N the subnet 10.231.1N.0/24 (not Swarm's
#   172.18.0.0/16, the same on every node) and routes it from the root namespace via
#   10.231.0.1N: a test reaches any task's port (an agent's API, a worker) at that address
#   without publishing anything (`jobs/swarm-lab.sh addr SERVICE` prints them; the routes go
#   with rblab0).
# - Overlay networks carry traffic between the nodes' containers (VXLAN over the veths): a
#   container on rblab-n1 gets answers from tasks on rblab-n2 and rblab-n3 at their overlay
#   addresses.
# - Without DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 (set for the lab's daemons) every task first
#   tries to pull its image and stays in Preparing ~30 s until DNS times out. On a real swarm
#   without a registry the same wait happens unless the service names its image by id
#   (sha256:..., identical on every node after `docker save | docker load`) or the daemons set it.
#   The first task on a new overlay network takes longer (~20 s here); later ones ~2.5 s.
# - Node loss, dispatcher heartbeat 1s, polled every 0.1 s on rblab-n1 (`docker node ls`):
#   dockerd of rblab-n3 killed (SIGKILL): Down after 3.0 s and 1.9 s; its veth cut
#   (`ip link set rblab-n3 down`): Down after 2.7, 2.5 and 3.3 s (Ready again 1.4 s after
#   `up`). Swarm reschedules the node's tasks at once. Losing a second node loses the quorum of
#   three managers: nothing is marked down any more.
# - A node whose daemon was killed keeps its containerd, shims and containers running; `down`
#   stops those too (runc with the node's own state directory, then the processes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NODES=(rblab-n1 rblab-n2 rblab-n3)
BRIDGE=rblab0
SUBNET_PREFIX=10.231.0
RUN_DIR=/run/rblab
DATA_DIR=/var/lib/rblab
SOCKETS="$RUN_DIR/sockets"
HEARTBEAT="${LAB_HEARTBEAT:-1s}"
STOP_TIMEOUT="${LAB_STOP_TIMEOUT:-20}"
FW_COMMENT=rblab-lab

# node_index NODE : N of rblab-nN.
node_index() { echo "${1#rblab-n}"; }
node_addr() { echo "$SUBNET_PREFIX.1$(node_index "$1")"; }
node_sock() { echo "unix://$SOCKETS/$1.sock"; }
# on NODE ARGS... : the docker CLI against NODE's engine.
on() { local node="$1"; shift; docker -H "$(node_sock "$node")" "$@"; }
answers() { timeout 5 docker -H "$(node_sock "$1")" info >/dev/null 2>&1; }

# lab_pids [NODE] : the processes of the lab (of NODE), any of dockerd, containerd, shims:
# those whose command line names the lab's directories. Never the host engine's.
lab_pids() {
  local pattern="${1:-rblab-n}" pid cmdline
  for pid in /proc/[0-9]*; do
    pid="${pid#/proc/}"
    [ "$pid" = "$$" ] && continue
    cmdline="$({ tr "\0" " " <"/proc/$pid/cmdline"; } 2>/dev/null)" || continue
    case "$cmdline" in
      *"$RUN_DIR/$pattern"*|*"$DATA_DIR/$pattern"*|*"$SOCKETS/$pattern"*) echo "$pid" ;;
    esac
  done
}

# lab_exists : any trace of a lab (namespaces, links, processes, directories).
lab_exists() {
  [ -n "$(ip netns list 2>/dev/null | grep -E '^rblab-' || true)" ] \
    || ip link show "$BRIDGE" >/dev/null 2>&1 \
    || [ -n "$(lab_pids)" ] || [ -e "$RUN_DIR" ] || [ -e "$DATA_DIR" ] || firewall_rule_left
}

# lab_complete : every node answers and the swarm has three ready managers.
lab_complete() {
  local node ready
  for node in "${NODES[@]}"; do answers "$node" || return 1; done
  ready="$(on rblab-n1 node ls --format '{{.Status}} {{.ManagerStatus}}' 2>/dev/null \
    | grep -cE '^Ready (Leader|Reachable)$' || true)"
  [ "$ready" -eq "${#NODES[@]}" ]
}

start_network() {
  local node veth
  log "bridge $BRIDGE ($SUBNET_PREFIX.1/24) and namespaces ${NODES[*]}"
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET_PREFIX.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for node in "${NODES[@]}"; do
    veth="$node"
    ip netns add "$node"
    ip link add "$veth" type veth peer name eth0 netns "$node"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$node" link set lo up
    ip -n "$node" addr add "$(node_addr "$node")/24" dev eth0
    ip -n "$node" link set eth0 up
    ip -n "$node" route add default via "$SUBNET_PREFIX.1"
  done
  # With br_netfilter loaded (the host engine loads it), bridged packets between the nodes go
  # through the root namespace's FORWARD chain, whose policy the host engine sets to DROP: one
  # rule, tagged with the comment, lets the lab's own bridge through; `down` removes it.
  if command -v iptables >/dev/null && iptables -S FORWARD >/dev/null 2>&1; then
    iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$FW_COMMENT" -j ACCEPT
  fi
}

# remove_firewall_rule : the FORWARD rule(s) of start_network.
remove_firewall_rule() {
  command -v iptables >/dev/null || return 0
  while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$FW_COMMENT" -j ACCEPT 2>/dev/null; do :; done
}

# firewall_rule_left : any rule of the lab left in the root namespace's firewall.
firewall_rule_left() {
  command -v iptables >/dev/null && iptables -S 2>/dev/null | grep -q -- "$FW_COMMENT"
}

start_daemon() {
  local node="$1" run="$RUN_DIR/$1" data="$DATA_DIR/$1"
  mkdir -p "$run" "$data" "$SOCKETS"
  cat >"$run/daemon.json" <<JSON
{
  "deprecated-key-path": "$data/key.json",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "3"}
}
JSON
  # setsid: the daemon outlives this script and no terminal signal reaches it.
  # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: a task uses the node's own image without trying a
  # pull first (the nodes have no way out, and each pull attempt waits for DNS to time out:
  # about 30 s in Preparing per task).
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid nsenter --net="/run/netns/$node" unshare --uts sh -c "hostname $node; exec dockerd \
    --config-file $run/daemon.json --data-root $data/docker --exec-root $run/exec \
    --pidfile $run/dockerd.pid -H $(node_sock "$node") --iptables=false --storage-driver vfs \
    --swarm-default-advertise-addr $(node_addr "$node")" \
    </dev/null >"$run/dockerd.log" 2>&1 &
}

start_daemons() {
  local node
  log "starting dockerd on ${NODES[*]}"
  for node in "${NODES[@]}"; do start_daemon "$node"; done
  for node in "${NODES[@]}"; do
    for _ in $(seq 1 60); do answers "$node" && break; sleep 0.5; done
    answers "$node" || die "dockerd of $node does not answer; see $RUN_DIR/$node/dockerd.log:
$(tail -n 5 "$RUN_DIR/$node/dockerd.log" 2>/dev/null)"
  done
}

# gwbridge_subnet NODE : the node's docker_gwbridge subnet, 10.231.1N.0/24. Every task with a
# network has an address there; the root namespace routes each subnet to its node, so tests
# reach any task (the agents' API, a worker) without publishing a port.
gwbridge_subnet() { echo "10.231.1$(node_index "$1").0/24"; }

start_gwbridges() {
  local node
  for node in "${NODES[@]}"; do
    # Made before the node joins the swarm, with the options Swarm gives its own.
    on "$node" network create --driver bridge --subnet "$(gwbridge_subnet "$node")" \
      --opt com.docker.network.bridge.name=docker_gwbridge \
      --opt com.docker.network.bridge.enable_icc=false \
      --opt com.docker.network.bridge.enable_ip_masquerade=true docker_gwbridge >/dev/null
    ip route add "$(gwbridge_subnet "$node")" via "$(node_addr "$node")" dev "$BRIDGE"
  done
}

start_swarm() {
  local token node
  log "swarm: init on rblab-n1 ($(node_addr rblab-n1)), dispatcher heartbeat $HEARTBEAT"
  on rblab-n1 swarm init --advertise-addr "$(node_addr rblab-n1)" \
    --listen-addr "$(node_addr rblab-n1):2377" --dispatcher-heartbeat "$HEARTBEAT" >/dev/null
  token="$(on rblab-n1 swarm join-token -q manager)"
  for node in "${NODES[@]:1}"; do
    log "swarm: $node joins as a manager"
    on "$node" swarm join --token "$token" --advertise-addr "$(node_addr "$node")" \
      --listen-addr "$(node_addr "$node"):2377" "$(node_addr rblab-n1):2377" >/dev/null
  done
  for _ in $(seq 1 60); do lab_complete && return 0; sleep 0.5; done
  die "the swarm does not have three ready managers: $(on rblab-n1 node ls 2>&1)"
}

# lab_images : the images loaded into every node: the project's (built from the binaries when
# absent), Redis, and LAB_IMAGES.
lab_images() {
  local service image
  for service in $(services); do
    image="$IMAGE_REPO/$service:$IMAGE_TAG"
    docker image inspect "$image" >/dev/null 2>&1 || build_image "$service"
    echo "$image"
  done
  ensure_redis_image
  echo "$REDIS_IMAGE"
  for image in ${LAB_IMAGES:-}; do
    docker image inspect "$image" >/dev/null 2>&1 || die "LAB_IMAGES names $image, which the host engine does not have"
    echo "$image"
  done
}

load_images() {
  local images node archive pids=()
  mapfile -t images < <(lab_images)
  log "loading ${images[*]} into ${NODES[*]}"
  archive="$RUN_DIR/images.tar"
  docker save -o "$archive" "${images[@]}"
  for node in "${NODES[@]}"; do
    on "$node" load -q -i "$archive" >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { rm -f "$archive"; die "loading the images into a node failed"; }; done
  rm -f "$archive"
}

deploy_hint() {
  local nodes=() node
  for node in "${NODES[@]}"; do nodes+=("$(node_sock "$node")"); done
  cat <<MSG

The swarm lab is up: ${NODES[*]} at $SUBNET_PREFIX.11-13, engines $SOCKETS/rblab-nN.sock.
  status:  jobs/swarm-lab.sh status
  deploy:  SWARM_NODES="${nodes[*]}" DOCKER_HOST=$(node_sock rblab-n1) ENGINE_SOCKET='$SOCKETS/{{.Node.Hostname}}.sock' jobs/run.sh -e swarm
  reach:   a port published in mode host answers at $SUBNET_PREFIX.1N:PORT (node N); any
           task's own ports at its address from: jobs/swarm-lab.sh addr SERVICE
  stop:    jobs/swarm-lab.sh down
MSG
}

cmd_up() {
  [ "$(id -u)" -eq 0 ] || die "the swarm lab needs root (namespaces, links, dockerd)"
  need_cmd ip iproute2
  need_cmd nsenter util-linux
  need_cmd dockerd docker.io
  ensure_docker
  if lab_exists; then
    if lab_complete; then
      log "the lab is already up"
      load_images
      deploy_hint
      return 0
    fi
    log "removing a half-built lab first"
    cmd_down
  fi
  UP_DONE=0
  trap '[ "$UP_DONE" = 1 ] || warn "up failed; the daemons log to $RUN_DIR/rblab-nN/dockerd.log; jobs/swarm-lab.sh down removes what was made"' EXIT
  start_network
  start_daemons
  start_gwbridges
  start_swarm
  load_images
  UP_DONE=1
  on rblab-n1 node ls
  deploy_hint
}

# stop_pids SIGNAL-TIMEOUT PID... : SIGTERM, then SIGKILL to what is left after the timeout.
stop_pids() {
  local timeout="$1" pid left deadline
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while :; do
    left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ "${#left[@]}" -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.5
  done
  warn "still running after ${timeout}s, killing: ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
  for _ in $(seq 1 20); do
    left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ "${#left[@]}" -eq 0 ] && return 0
    sleep 0.25
  done
}

# stop_containers NODE : the node's containers, through runc with the node's own state
# directory (they outlive a killed dockerd, since their shims keep them).
stop_containers() {
  local state="$RUN_DIR/$1/exec/runtime-runc/moby" id
  [ -d "$state" ] || return 0
  for id in $(runc --root "$state" list -q 2>/dev/null); do
    runc --root "$state" kill "$id" KILL >/dev/null 2>&1 || true
    runc --root "$state" delete --force "$id" >/dev/null 2>&1 || true
  done
}

# unmount_under DIR... : every mount point under the directories, deepest first.
unmount_under() {
  local dir mount
  for dir in "$@"; do
    # mountinfo's fifth field is the mount point (octal escapes: none in our paths).
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo \
      | sort -r | uniq | while read -r mount; do
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || warn "cannot unmount $mount"
      done
  done
}

cmd_down() {
  [ "$(id -u)" -eq 0 ] || die "the swarm lab needs root"
  local node pids=() pid ns
  if ! lab_exists; then
    log "no lab to remove"
    return 0
  fi
  log "removing the swarm lab"
  # All at once: one by one, each manager left behind waits for the lost quorum (12 s here).
  for node in "${NODES[@]}"; do
    [ -S "$SOCKETS/$node.sock" ] || continue
    timeout 15 docker -H "$(node_sock "$node")" swarm leave --force >/dev/null 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  # The daemons first (they stop their containers on SIGTERM), then anything left: containers
  # through runc, their shims and containerd.
  mapfile -t pids < <(for pid in $(lab_pids); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"; done)
  stop_pids "$STOP_TIMEOUT" "${pids[@]}"
  for node in "${NODES[@]}"; do stop_containers "$node"; done
  mapfile -t pids < <(lab_pids)
  stop_pids 5 "${pids[@]}"
  unmount_under "$RUN_DIR" "$DATA_DIR"
  for ns in $(ip netns list 2>/dev/null | awk '/^rblab-/ {print $1}'); do
    ip netns delete "$ns" 2>/dev/null || warn "cannot delete the namespace $ns"
  done
  for node in "${NODES[@]}"; do
    ip link show "$node" >/dev/null 2>&1 && ip link delete "$node" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" 2>/dev/null || true
  remove_firewall_rule
  rm -rf "$RUN_DIR" "$DATA_DIR"
  lab_exists && die "something of the lab is left: $(ip netns list | grep rblab-; ip -br link | grep rblab; lab_pids; ls -d $RUN_DIR $DATA_DIR 2>/dev/null)"
  log "the swarm lab is gone"
}

cmd_status() {
  local node
  if ! lab_exists; then
    echo "no swarm lab"
    return 0
  fi
  for node in "${NODES[@]}"; do
    if answers "$node"; then
      printf '%s  %s  engine answers  swarm: %s\n' "$node" "$(node_addr "$node")" \
        "$(on "$node" info --format '{{.Swarm.LocalNodeState}}{{if .Swarm.ControlAvailable}} manager{{end}}' 2>/dev/null)"
    else
      printf '%s  %s  engine does not answer\n' "$node" "$(node_addr "$node")"
    fi
  done
  for node in "${NODES[@]}"; do
    if answers "$node" && on "$node" node ls >/dev/null 2>&1; then
      echo
      on "$node" node ls
      return 0
    fi
  done
  echo "no node answers as a manager"
}

# addr SERVICE : one line per running task of SERVICE, `NODE CONTAINER ADDRESS`, ADDRESS its
# docker_gwbridge address, reachable from the root namespace. Only tasks on an overlay network
# have one (a task without a network is on its node's docker0, which is not routed). Only tasks on an overlay network
# have one (a task without a network is on its node's docker0, which is not routed).
cmd_addr() {
  local service="${1:-}" node id name address
  [ -n "$service" ] || die "usage: $0 addr SERVICE (e.g. rustybalancer_deployment-agent)"
  for node in "${NODES[@]}"; do
    answers "$node" || continue
    on "$node" ps --no-trunc --filter "label=com.docker.swarm.service.name=$service" \
        --format '{{.ID}} {{.Names}}' | while read -r id name; do
      address="$(on "$node" network inspect docker_gwbridge \
        -f "{{with index .Containers \"$id\"}}{{.IPv4Address}}{{end}}" 2>/dev/null)"
      [ -n "$address" ] && echo "$node $name ${address%/*}"
    done
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  addr) cmd_addr "${2:-}" ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
