#!/usr/bin/env bash
# Proxy benchmark: the same fast backend (the worker's GET /health) behind the balancer and
# behind nginx (Debian's package, reverse proxy with upstream keep-alive), wrk against each in
# alternation, then req/s and p99 of both and the ratio balancer/nginx.
#
#   jobs/bench-proxy.sh            # 3 rounds x 10 s, 64 connections, 2 wrk threads
#   ROUNDS=5 DURATION=20s CONNECTIONS=128 jobs/bench-proxy.sh
#   INSTRUCTIONS=0 jobs/bench-proxy.sh   # skip the instruction count
#
# Then, unless INSTRUCTIONS=0, each proxy runs once more under valgrind's callgrind (one
# traffic thread / one nginx worker, 8 connections) and the script prints the user-space
# instructions each spends per proxied request: a figure that, unlike req/s on a shared
# 2-core machine, does not move from run to run.
#
# Installs nginx and wrk with apt-get when they are missing; builds the release binaries.
# Everything listens on 127.0.0.1 ports picked at run time and is stopped on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3s}"
BENCH_PATH="${BENCH_PATH:-/health}"

ensure_rust
need_cmd nginx nginx
need_cmd wrk wrk
INSTRUCTIONS="${INSTRUCTIONS:-1}"
if [ "$INSTRUCTIONS" != 0 ]; then need_cmd valgrind valgrind; fi

log "building worker and balancer (profile $BUILD_PROFILE)"
cargo build --profile "$BUILD_PROFILE" --locked -p worker -p balancer --bins
BIN="$TARGET_DIR"
[ -x "$BIN/balancer" ] && [ -x "$BIN/worker" ] || die "no binaries in $BIN"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# free_port : a loopback TCP port nobody listens on.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$(( (RANDOM % 20000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

# wait_port PORT : until something accepts connections on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listens on port $1"
}

WORKER_PORT="$(free_port)"
BALANCER_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
NGINX_PORT="$(free_port)"

log "backend: worker on 127.0.0.1:$WORKER_PORT"
RUST_LOG=warn "$BIN/worker" --host 127.0.0.1 --port "$WORKER_PORT" --worker-id bench-worker \
  >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
wait_port "$WORKER_PORT"

log "balancer on 127.0.0.1:$BALANCER_PORT"
RUST_LOG=warn "$BIN/balancer" --host 127.0.0.1 --port "$BALANCER_PORT" --admin-port "$ADMIN_PORT" \
  --backends "127.0.0.1:$WORKER_PORT" >"$WORK/balancer.log" 2>&1 &
PIDS+=($!)
wait_port "$BALANCER_PORT"

log "nginx on 127.0.0.1:$NGINX_PORT"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream backend {
    server 127.0.0.1:$WORKER_PORT;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
EOF
nginx -t -q -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log"
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log" &
PIDS+=($!)
wait_port "$NGINX_PORT"

# to_ms VALUE : wrk's latency (`812.00us`, `1.20ms`, `2.00s`) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n
  }'
}

# bench NAME PORT DURATION : runs wrk, appends "NAME rps p99_ms errors" to $WORK/results.
bench() {
  local name="$1" port="$2" duration="$3" out rps p99 errors
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency "http://127.0.0.1:$port$BENCH_PATH")"
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")"
  echo "$name $rps $p99 $errors" >>"$WORK/results"
  printf '  %-9s %12s req/s   p99 %9s ms   errors %s\n' "$name" "$rps" "$p99" "$errors" >&2
}

log "warm-up ($WARMUP each)"
bench warmup-b "$BALANCER_PORT" "$WARMUP"
bench warmup-n "$NGINX_PORT" "$WARMUP"
: >"$WORK/results"

log "$ROUNDS rounds x $DURATION, $CONNECTIONS connections, $THREADS wrk threads, GET $BENCH_PATH"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round"
  # Alternate which one goes first, so neither always gets the quieter slot.
  if [ $((round % 2)) -eq 1 ]; then
    bench balancer "$BALANCER_PORT" "$DURATION"
    bench nginx "$NGINX_PORT" "$DURATION"
  else
    bench nginx "$NGINX_PORT" "$DURATION"
    bench balancer "$BALANCER_PORT" "$DURATION"
  fi
done

awk -v cores="$(nproc)" -v conns="$CONNECTIONS" -v rounds="$ROUNDS" -v dur="$DURATION" '
  { rps[$1] += $2; p99[$1] += $3; err[$1] += $4; n[$1]++ }
  END {
    b_rps = rps["balancer"] / n["balancer"]; n_rps = rps["nginx"] / n["nginx"]
    b_p99 = p99["balancer"] / n["balancer"]; n_p99 = p99["nginx"] / n["nginx"]
    printf "\nGET /health of one worker, %d connections, %d rounds x %s each, %d cores (means over rounds)\n", conns, rounds, dur, cores
    printf "%-10s %14s %12s %8s\n", "proxy", "req/s", "p99 (ms)", "errors"
    printf "%-10s %14.0f %12.3f %8d\n", "balancer", b_rps, b_p99, err["balancer"]
    printf "%-10s %14.0f %12.3f %8d\n", "nginx", n_rps, n_p99, err["nginx"]
    printf "ratio balancer/nginx: throughput %.2f, p99 %.2f\n", b_rps / n_rps, b_p99 / n_p99
  }' "$WORK/results"

[ "$INSTRUCTIONS" != 0 ] || exit 0

# instructions NAME PORT PID_TO_STOP OUT : requests through PORT for 8 s; appends
# "NAME instructions/request" from the callgrind profile OUT to $WORK/instructions.
instructions() {
  local name="$1" port="$2" pid="$3" out="$4" requests total
  wait_port "$port"
  requests="$(wrk -t1 -c8 -d"${INSTRUCTIONS_DURATION:-8s}" "http://127.0.0.1:$port$BENCH_PATH" | awk '/requests in/ {print $1}')"
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  total="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
  [ -n "$total" ] && [ "${requests:-0}" -gt 0 ] || die "no instruction count for $name"
  echo "$name $((total / requests)) $requests" >>"$WORK/instructions"
  printf '  %-9s %8d instructions/request (%d requests)\n' "$name" "$((total / requests))" "$requests" >&2
}

log "user-space instructions per request (valgrind callgrind, 8 connections, GET $BENCH_PATH)"
: >"$WORK/instructions"
CG_BALANCER_PORT="$(free_port)"
RUST_LOG=warn BALANCER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$WORK/balancer.cg" \
  "$BIN/balancer" --host 127.0.0.1 --port "$CG_BALANCER_PORT" --admin-port "$(free_port)" \
  --backends "127.0.0.1:$WORKER_PORT" >"$WORK/balancer-cg.log" 2>&1 &
PIDS+=($!)
instructions balancer "$CG_BALANCER_PORT" "${PIDS[-1]}" "$WORK/balancer.cg"

CG_NGINX_PORT="$(free_port)"
sed -e "s/^worker_processes auto;/worker_processes 1;\nmaster_process off;/" \
  -e "s/listen 127.0.0.1:$NGINX_PORT;/listen 127.0.0.1:$CG_NGINX_PORT;/" \
  -e "s|^pid .*|pid $WORK/nginx/nginx-cg.pid;|" \
  "$WORK/nginx/nginx.conf" >"$WORK/nginx/nginx-cg.conf"
valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.cg" \
  nginx -c "$WORK/nginx/nginx-cg.conf" -p "$WORK/nginx" -e "$WORK/nginx/error.log" >"$WORK/nginx-cg.log" 2>&1 &
PIDS+=($!)
instructions nginx "$CG_NGINX_PORT" "${PIDS[-1]}" "$WORK/nginx.cg"

awk '{ n[$1] = $2 } END {
  printf "\nuser-space instructions per request: balancer %d, nginx %d, ratio balancer/nginx %.2f\n", n["balancer"], n["nginx"], n["balancer"] / n["nginx"]
}' "$WORK/instructions"
