#!/usr/bin/env bash
# Policy benchmark: which routing policy keeps latency lowest when the workers are unequal?
#
# Starts WORKERS worker containers with CPU limits on the local Docker engine (the last one
# deliberately slower), on a network of their own; the balancer runs on the host with a static
# backend list of the containers' addresses, once per policy, and nginx (round-robin upstream
# with keep-alive) as the peer. It measures the capacity first (closed loop through the
# least-request policy), then replays the same seeded trace at LEVELS percent of it through
# each, and prints one table: p50, p99, errors, and p99 relative to round-robin.
#
#   jobs/bench-policies.sh                      # 3 workers (0.5, 0.5, 0.2 CPU), 30 s per run
#   WORKERS=4 SLOW_CPUS=0.1 DURATION=60 ROUNDS=3 jobs/bench-policies.sh
#   CAPACITY=80 jobs/bench-policies.sh --no-build   # skip the measurement and the build
#
# Results, plots and the table (table.md) go to target/bench/ (OUT). Installs nginx when it is
# missing. Everything it starts is labelled managed-by=rustybalancer-tests and removed on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

WORKERS="${WORKERS:-3}"
WORKER_CPUS="${WORKER_CPUS:-0.5}"
SLOW_CPUS="${SLOW_CPUS:-0.2}"
WORK_UNIT="${WORK_UNIT:-2000000}"        # worker mixing rounds per intensity step
DURATION="${DURATION:-30}"               # seconds of trace per run
LEVELS="${LEVELS:-70 90}"                # percent of the measured capacity
POLICIES="${POLICIES:-round-robin weighted-random least-request p2c-ewma}"
SEED="${SEED:-42}"
CAPACITY="${CAPACITY:-}"                 # req/s; measured when empty
CAPACITY_DURATION="${CAPACITY_DURATION:-20}"
ROUNDS="${ROUNDS:-1}"                    # runs per proxy and level, pooled
OUT="${OUT:-$ROOT/target/bench}"
IMAGE="${IMAGE:-$IMAGE_REPO/worker:$IMAGE_TAG}"
LABEL="managed-by=rustybalancer-tests"

build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done

ensure_rust
ensure_docker
need_cmd nginx nginx

if [ "$build" -eq 1 ]; then
  log "building worker, balancer and loadgen (profile $BUILD_PROFILE, static)"
  cargo build --profile "$BUILD_PROFILE" --locked -p worker -p balancer -p loadgen --bins
  build_image worker
fi
BIN="$TARGET_DIR"
for binary in balancer loadgen; do
  [ -x "$BIN/$binary" ] || die "no $BIN/$binary; run without --no-build"
done
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE; run jobs/build-images.sh worker"

RUN_ID="rb-bench-$$"
NETWORK="$RUN_ID"
WORK="$(mktemp -d)"
PIDS=()
CONTAINERS=()

stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  for container in "${CONTAINERS[@]}"; do docker rm -f -v "$container" >/dev/null 2>&1; done
  docker network rm "$NETWORK" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port : a loopback TCP port nobody listens on, below Linux's ephemeral range (32768+) so
# that no outgoing connection holds it either.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$(( (RANDOM % 12000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

# wait_tcp HOST PORT [LOG] : until something accepts connections there (10 s); on failure the
# tail of LOG is shown.
wait_tcp() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  [ -n "${3:-}" ] && [ -f "$3" ] && tail -n 20 "$3" >&2
  die "nothing listens on $1:$2"
}

mkdir -p "$OUT"
rm -f "$OUT"/*.csv "$OUT"/table.md

log "network $NETWORK and $WORKERS workers ($IMAGE)"
docker network create --label "$LABEL" "$NETWORK" >/dev/null
BACKENDS=()
for i in $(seq 1 "$WORKERS"); do
  cpus="$WORKER_CPUS"
  [ "$i" -eq "$WORKERS" ] && cpus="$SLOW_CPUS"
  name="$RUN_ID-w$i"
  docker run -d --name "$name" --label "$LABEL" --network "$NETWORK" --cpus "$cpus" \
    -e WORKER_ID="w$i-${cpus}cpu" -e WORKER_WORK_UNIT="$WORK_UNIT" -e RUST_LOG=warn \
    "$IMAGE" >/dev/null
  CONTAINERS+=("$name")
  ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$name")"
  [ -n "$ip" ] || die "container $name has no address on $NETWORK"
  wait_tcp "$ip" 8080
  BACKENDS+=("$ip:8080")
  log "  w$i: $cpus CPU at $ip:8080"
done
BACKEND_LIST="$(IFS=,; echo "${BACKENDS[*]}")"

BALANCER_PID=""

# start_balancer POLICY : the balancer on fresh loopback ports (BALANCER_PORT).
start_balancer() {
  BALANCER_PORT="$(free_port)"
  ADMIN_PORT="$(free_port)"
  RUST_LOG=warn "$BIN/balancer" --host 127.0.0.1 --port "$BALANCER_PORT" --admin-port "$ADMIN_PORT" \
    --backends "$BACKEND_LIST" --policy "$1" --seed "$SEED" >"$WORK/balancer-$1.log" 2>&1 &
  BALANCER_PID=$!
  PIDS+=("$BALANCER_PID")
  wait_tcp 127.0.0.1 "$BALANCER_PORT" "$WORK/balancer-$1.log"
}

stop_balancer() {
  [ -n "$BALANCER_PID" ] && stop_pid "$BALANCER_PID"
  BALANCER_PID=""
}

# start_nginx : nginx on a fresh loopback port (NGINX_PORT).
start_nginx() {
  local temp
  NGINX_PORT="$(free_port)"
  mkdir -p "$WORK/nginx"
  {
    echo "daemon off;"
    echo "worker_processes 1;"
    echo "pid $WORK/nginx/nginx.pid;"
    echo "error_log $WORK/nginx/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    for temp in client_body proxy fastcgi uwsgi scgi; do echo "  ${temp}_temp_path $WORK/nginx/$temp;"; done
    echo "  upstream workers {"
    for backend in "${BACKENDS[@]}"; do echo "    server $backend;"; done
    echo "    keepalive 256;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$NGINX_PORT;"
    echo "    location / {"
    echo "      proxy_pass http://workers;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\";"
    echo "      proxy_read_timeout 60s;"
    echo "      add_header X-Backend \$upstream_addr always;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$WORK/nginx/nginx.conf"
  nginx -t -q -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log"
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_tcp 127.0.0.1 "$NGINX_PORT" "$WORK/nginx/error.log"
}

# The one seeded trace: lognormal demand (mean 20 ms of work, a fifth of it light requests).
# Long enough for the capacity run and every level; each run replays its first DURATION s.
log "trace (seed $SEED)"
"$BIN/loadgen" trace generate --samples 100000 --inter-arrival 0.001 --distribution lognormal \
  --mean 0.02 --stdev 0.015 --read-ratio 0.2 --size lognormal:512:256 --seed "$SEED" \
  --out "$OUT/trace.csv" >/dev/null

if [ -z "$CAPACITY" ]; then
  log "capacity: closed loop, $((WORKERS * 4)) in flight, ${CAPACITY_DURATION}s through least-request"
  start_balancer least-request
  "$BIN/loadgen" replay "$OUT/trace.csv" --target "http://127.0.0.1:$BALANCER_PORT" --closed-loop \
    --concurrency $((WORKERS * 4)) --duration "${CAPACITY_DURATION}s" --quiet \
    --out "$OUT/capacity.csv" >/dev/null
  stop_balancer
  CAPACITY="$("$BIN/loadgen" report "$OUT/capacity.csv" --format tsv | awk -F'\t' 'NR == 2 {print $4}')"
  errors="$("$BIN/loadgen" report "$OUT/capacity.csv" --format tsv | awk -F'\t' 'NR == 2 {print $3}')"
  [ "$errors" = "0" ] || log "  warning: $errors errors while measuring the capacity"
fi
log "capacity: $CAPACITY req/s"
awk -v c="$CAPACITY" 'BEGIN { exit !(c > 0) }' || die "measured no capacity; see $OUT/capacity.csv"

# run_one LEVEL RATE PROXY FILE : the trace at RATE through PROXY (a policy, or nginx).
run_one() {
  local level="$1" rate="$2" proxy="$3" file="$4" port
  if [ "$proxy" = nginx ]; then
    start_nginx
    port="$NGINX_PORT"
  else
    start_balancer "$proxy"
    port="$BALANCER_PORT"
  fi
  log "$level% ($rate req/s, ${DURATION}s): $proxy"
  "$BIN/loadgen" replay "$OUT/trace.csv" --target "http://127.0.0.1:$port" --rate "$rate" \
    --duration "${DURATION}s" --concurrency 2048 --timeout 60s --quiet \
    --out "$file" | sed 's/^/    /' >&2
  if [ "$proxy" = nginx ]; then stop_pid "$NGINX_PID"; else stop_balancer; fi
  sleep 2 # let the workers' queues drain before the next run
}

read -r -a PROXIES <<<"$POLICIES nginx"
for level in $LEVELS; do
  rate="$(awk -v c="$CAPACITY" -v l="$level" 'BEGIN { printf "%.2f", c * l / 100 }')"
  dir="$OUT/load-$level"
  rm -rf "$dir"
  for round in $(seq 1 "$ROUNDS"); do
    mkdir -p "$dir/rounds/$round"
    # Rotate the order each round, so that no proxy always gets the same slot.
    count="${#PROXIES[@]}"
    for k in $(seq 0 $((count - 1))); do
      proxy="${PROXIES[$(( (k + round - 1) % count ))]}"
      run_one "$level" "$rate" "$proxy" "$dir/rounds/$round/$proxy.csv"
    done
  done
  # Every round of a proxy pooled into one results file.
  files=()
  for proxy in "${PROXIES[@]}"; do
    head -n 1 "$dir/rounds/1/$proxy.csv" >"$dir/$proxy.csv"
    for round in $(seq 1 "$ROUNDS"); do tail -n +2 "$dir/rounds/$round/$proxy.csv" >>"$dir/$proxy.csv"; done
    files+=("$dir/$proxy.csv")
  done
  "$BIN/loadgen" report "${files[@]}" --baseline round-robin --format tsv >"$dir/report.tsv"
  plotted=()
  for proxy in "${PROXIES[@]}"; do plotted+=("$dir/rounds/1/$proxy.csv"); done
  "$BIN/loadgen" plot "${plotted[@]}" --out-dir "$dir/plots" --title "$level% of capacity" >/dev/null
done

{
  echo "Policy benchmark: $WORKERS workers ($(( WORKERS - 1 )) x $WORKER_CPUS CPU, 1 x $SLOW_CPUS CPU), capacity $CAPACITY req/s, $ROUNDS x ${DURATION}s per proxy and load, trace seed $SEED, $(nproc) host cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| load | policy | p50 (ms) | p99 (ms) | errors | p99 vs round-robin |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  for level in $LEVELS; do
    awk -F'\t' -v level="$level" 'NR > 1 {
      rel = ($9 == "") ? "-" : sprintf("%.2fx", $9)
      printf "| %s%% | %s | %.1f | %.1f | %d | %s |\n", level, $1, $5, $7, $3, rel
    }' "$OUT/load-$level/report.tsv"
  done
} >"$OUT/table.md"

echo
cat "$OUT/table.md"
echo
echo "results, plots and table: $OUT (load-*/plots/*.png)"
