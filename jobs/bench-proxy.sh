#!/usr/bin/env bash
# Proxy benchmark: the balancer against nginx and HAProxy (Debian's packages), each a reverse
# proxy with keep-alive to the same backend, measured with wrk (and h2load) in alternation.
#
# What is measured, in this order:
#   1. GET $BENCH_PATH (the worker's /health: a fast backend) through each proxy: a warm-up, then
#      ROUNDS rounds of wrk, the three in an order rotated every round so that none always gets
#      the same slot. Printed: mean req/s, p99 and errors of each, and the ratios (throughput and
#      p99) balancer/nginx, balancer/haproxy and balancer/faster, "faster" being whichever of
#      nginx and HAProxy had more req/s.
#   2. Unless LARGE=0, large bodies: GET of a 1 MiB file that a separate nginx serves (the same
#      backend for all three), through a second instance of each proxy whose one backend it is;
#      LARGE_ROUNDS rounds of LARGE_DURATION, rotated alike. Printed: req/s, p99 and MiB/s (wrk's
#      Transfer/sec) of each, and the ratios balancer/nginx and balancer/haproxy.
#   3. Unless H2C=0, HTTP/2 without TLS (h2c, prior knowledge): h2load, H2_REQUESTS requests of
#      GET $BENCH_PATH over 16 connections x 10 streams, to the balancer's own port, to an nginx
#      server block with http2 and to a HAProxy frontend with `proto h2`. Printed: req/s of
#      each and the ratios; a proxy that cannot be set up for h2c is skipped with the reason.
#   4. Unless INSTRUCTIONS=0, each proxy once more under valgrind's callgrind (one traffic
#      thread / one nginx worker / one HAProxy thread, 8 connections): the user-space
#      instructions each spends per proxied request, a figure that, unlike req/s on a shared
#      2-core machine, does not move from run to run.
#
# The three are set up alike for a 2-core machine: the balancer as it ships (2 traffic threads),
# nginx with `worker_processes auto` and an upstream keep-alive pool, HAProxy with `nbthread 2`,
# `http-reuse always` and `option http-keep-alive` (maxconn 10000, lower if the fd limit cannot
# hold it); all keep client and backend connections for any number of requests, add
# X-Forwarded-For/-Proto/-Host, and log no request.
#
#   jobs/bench-proxy.sh            # 3 rounds x 10 s, 64 connections, 2 wrk threads, all parts
#   ROUNDS=5 DURATION=20s CONNECTIONS=128 jobs/bench-proxy.sh
#   LARGE=0 H2C=0 INSTRUCTIONS=0 jobs/bench-proxy.sh   # the main rounds only
#
# Knobs (defaults): ROUNDS (3), DURATION (10s), CONNECTIONS (64), THREADS (2, of wrk),
# WARMUP (3s), BENCH_PATH (/health), LARGE (1), LARGE_ROUNDS (1), LARGE_DURATION (10s),
# H2C (1), H2_REQUESTS (200000), INSTRUCTIONS (1), INSTRUCTIONS_DURATION (8s), BUILD_PROFILE
# (dist, see lib.sh), CALLGRIND_DIR (unset: where to keep the callgrind profiles, for
# callgrind_annotate; build with CARGO_PROFILE_DIST_STRIP=none to see the balancer's symbols).
#
# Installs nginx, HAProxy, wrk, h2load and valgrind with apt-get when they are missing; builds
# the binaries. Everything listens on 127.0.0.1 ports picked at run time and is stopped on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3s}"
BENCH_PATH="${BENCH_PATH:-/health}"
LARGE="${LARGE:-1}"
LARGE_ROUNDS="${LARGE_ROUNDS:-1}"
LARGE_DURATION="${LARGE_DURATION:-10s}"
H2C="${H2C:-1}"
H2_REQUESTS="${H2_REQUESTS:-200000}"
INSTRUCTIONS="${INSTRUCTIONS:-1}"
INSTRUCTIONS_DURATION="${INSTRUCTIONS_DURATION:-8s}"
# HAProxy's maxconn: 10000, more than any load here needs, but HAProxy refuses to start when
# the fd limit cannot hold two sockets per connection (client and server) and a few more, so
# it is lowered to fit the limit (raised to the hard one first; here both are 20000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge 20100 ]; then
  HAPROXY_MAXCONN=10000
else
  HAPROXY_MAXCONN=$(( (NOFILE - 100) / 2 ))
fi

ensure_rust
need_cmd nginx nginx
need_cmd haproxy haproxy
need_cmd wrk wrk
if [ "$H2C" != 0 ]; then need_cmd h2load nghttp2-client; fi
if [ "$INSTRUCTIONS" != 0 ]; then need_cmd valgrind valgrind; fi

log "building worker and balancer (profile $BUILD_PROFILE)"
cargo build --profile "$BUILD_PROFILE" --locked -p worker -p balancer --bins
BIN="$TARGET_DIR"
[ -x "$BIN/balancer" ] && [ -x "$BIN/worker" ] || die "no binaries in $BIN"

WORK="$(mktemp -d)"
# Run as root, nginx's workers are `nobody`: they must get through to their temporary files and
# the file they serve (the directory stays unlistable).
chmod 711 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ports are picked below the ephemeral range: a port there may be the local end of some
# outgoing connection, which nothing listens on and yet a server cannot bind.
EPHEMERAL_LOW="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)"
[ "${EPHEMERAL_LOW:-0}" -gt 12000 ] || EPHEMERAL_LOW=32768

# free_port : a loopback TCP port in 10000 to the ephemeral range that nobody listens on or
# uses, and not handed out before: the ports are all picked before the servers bind them, so
# two picks must not collide.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$(( (RANDOM % (EPHEMERAL_LOW - 10000)) + 10000 ))
    grep -qx "$port" "$WORK/ports" 2>/dev/null && continue
    if command -v ss >/dev/null && [ -n "$(ss -Htan "sport = :$port" 2>/dev/null)" ]; then continue; fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port" >>"$WORK/ports"
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# wait_port PORT [PID] : until something accepts connections on 127.0.0.1:PORT (30 s at most,
# valgrind starts slowly); fails at once when the process PID has exited.
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# spawn LOG COMMAND... : COMMAND in the background, its output in LOG; its PID in SPAWNED and
# PIDS (stopped on exit).
spawn() {
  local out="$1"
  shift
  "$@" >"$out" 2>&1 &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

# listening NAME PORT LOG : waits for the last spawned process to listen on PORT; else dies
# with the end of its LOG (the whole of $WORK goes on exit).
listening() {
  wait_port "$2" "$SPAWNED" && return 0
  tail -n 20 "$3" >&2 || true
  die "$1 does not listen on 127.0.0.1:$2"
}

# start_balancer NAME PORT BACKEND_PORT [VAR=VALUE...] : a balancer on PORT in front of
# 127.0.0.1:BACKEND_PORT, with these extra environment variables.
start_balancer() {
  local name="$1" port="$2" backend="$3" admin
  shift 3
  admin="$(free_port)"
  spawn "$WORK/$name.log" env RUST_LOG=warn "$@" "$BIN/balancer" --host 127.0.0.1 --port "$port" \
    --admin-port "$admin" --backends "127.0.0.1:$backend"
  listening "$name" "$port" "$WORK/$name.log"
}

NGINX_VERSION="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9][0-9.]*\).*|\1|p')"

# nginx_h2c_server PORT : the head of a server block for h2c with prior knowledge on PORT:
# `http2 on;` since nginx 1.25.1 (where `listen ... http2` is deprecated), the listen flag before.
nginx_h2c_server() {
  if [ "$(printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -n 1)" = 1.25.1 ]; then
    printf '    listen 127.0.0.1:%s;\n    http2 on;\n' "$1"
  else
    printf '    listen 127.0.0.1:%s http2;\n' "$1"
  fi
}

# nginx_conf NAME PORT BACKEND_PORT WORKERS [H2C_PORT] : writes $WORK/NAME/nginx.conf: nginx
# proxying 127.0.0.1:PORT (and h2c on H2C_PORT) to 127.0.0.1:BACKEND_PORT with an upstream
# keep-alive pool and the X-Forwarded-* headers the balancer adds. Connections, client's and
# upstream, are kept for any number of requests like the others do (nginx's default closes
# them after 1000: wrk reconnects, h2load does not and counts the rest as failed). WORKERS:
# `auto`, or 1 for callgrind, which then runs without a master process (one process to profile).
nginx_conf() {
  local name="$1" port="$2" backend="$3" workers="$4" h2c_port="${5:-}" dir="$WORK/$1" location
  mkdir -p "$dir"
  # shellcheck disable=SC2016 # nginx's variables, not the shell's
  location='
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }'
  {
    echo "daemon off;"
    echo "worker_processes $workers;"
    if [ "$workers" = 1 ]; then echo "master_process off;"; fi
    cat <<EOF
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream backend {
    server 127.0.0.1:$backend;
    keepalive 256;
    keepalive_requests 1000000000;
  }
  server {
    listen 127.0.0.1:$port;$location
  }
EOF
    if [ -n "$h2c_port" ]; then
      echo "  server {"
      nginx_h2c_server "$h2c_port"
      echo "${location#$'\n'}"
      echo "  }"
    fi
    echo "}"
  } >"$dir/nginx.conf"
}

# nginx_check NAME : whether $WORK/NAME/nginx.conf passes `nginx -t` (its complaints on stderr).
nginx_check() {
  nginx -t -q -c "$WORK/$1/nginx.conf" -p "$WORK/$1" -e "$WORK/$1/error.log"
}

# nginx_cmd NAME : the command line of the nginx of $WORK/NAME.
nginx_cmd() {
  echo nginx -c "$WORK/$1/nginx.conf" -p "$WORK/$1" -e "$WORK/$1/error.log"
}

# start_nginx NAME PORT : the nginx of $WORK/NAME/nginx.conf, checked first, listening on PORT.
start_nginx() {
  nginx_check "$1" || die "nginx refuses $WORK/$1/nginx.conf"
  # shellcheck disable=SC2046 # the command line is words without spaces
  spawn "$WORK/$1.log" $(nginx_cmd "$1")
  listening "$1" "$2" "$WORK/$1/error.log"
}

# haproxy_conf NAME PORT BACKEND_PORT THREADS [H2C_PORT] : writes $WORK/NAME.cfg: HAProxy in
# HTTP mode proxying 127.0.0.1:PORT (and h2c on H2C_PORT) to 127.0.0.1:BACKEND_PORT, set up
# like the others: THREADS threads, backend connections kept and shared (`http-reuse always`),
# the X-Forwarded-* headers the balancer and nginx add, no log, timeouts no run reaches.
haproxy_conf() {
  local name="$1" port="$2" backend="$3" threads="$4" h2c_port="${5:-}" headers
  # X-Forwarded-For comes from `option forwardfor`; -Proto and -Host as nginx and the balancer.
  headers='  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be'
  {
    cat <<EOF
global
  nbthread $threads
  maxconn $HAPROXY_MAXCONN

defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  maxconn $HAPROXY_MAXCONN
  timeout connect 5s
  timeout client 60s
  timeout server 60s

frontend fe_http
  bind 127.0.0.1:$port
$headers
EOF
    if [ -n "$h2c_port" ]; then
      printf '\nfrontend fe_h2c\n  bind 127.0.0.1:%s proto h2\n%s\n' "$h2c_port" "$headers"
    fi
    printf '\nbackend be\n  server backend 127.0.0.1:%s\n' "$backend"
  } >"$WORK/$name.cfg"
}

# haproxy_check NAME : whether `haproxy -c` accepts $WORK/NAME.cfg; its output in
# $WORK/NAME.check, its warnings shown.
haproxy_check() {
  local ok=0
  haproxy -c -f "$WORK/$1.cfg" >"$WORK/$1.check" 2>&1 || ok=1
  grep -E 'WARNING|ALERT' "$WORK/$1.check" >&2 || true
  return "$ok"
}

# start_haproxy NAME PORT : HAProxy in the foreground (-db) on $WORK/NAME.cfg, checked first,
# listening on PORT.
start_haproxy() {
  haproxy_check "$1" || die "haproxy -c refuses $WORK/$1.cfg"
  spawn "$WORK/$1.log" haproxy -db -f "$WORK/$1.cfg"
  listening "$1" "$2" "$WORK/$1.log"
}

PROXIES=(balancer nginx haproxy)
declare -A PORT H2C_PORT H2C_SKIP

WORKER_PORT="$(free_port)"
PORT[balancer]="$(free_port)"
PORT[nginx]="$(free_port)"
PORT[haproxy]="$(free_port)"
H2C_PORT[balancer]="${PORT[balancer]}" # the balancer tells h2c from HTTP/1.1 on its one port

log "backend: worker on 127.0.0.1:$WORKER_PORT"
spawn "$WORK/worker.log" env RUST_LOG=warn "$BIN/worker" --host 127.0.0.1 --port "$WORKER_PORT" \
  --worker-id bench-worker
listening worker "$WORKER_PORT" "$WORK/worker.log"

log "balancer on 127.0.0.1:${PORT[balancer]}"
start_balancer balancer "${PORT[balancer]}" "$WORKER_PORT"

# nginx and HAProxy get their h2c listener in the same process as the HTTP/1.1 one (the same
# workers and upstream pool); when a configuration with it is refused, they go on without.
if [ "$H2C" != 0 ]; then
  if [[ "$(nginx -V 2>&1)" == *--with-http_v2_module* ]]; then
    H2C_PORT[nginx]="$(free_port)"
  else
    H2C_SKIP[nginx]="this nginx is built without http_v2_module"
  fi
  H2C_PORT[haproxy]="$(free_port)"
fi

log "nginx $NGINX_VERSION on 127.0.0.1:${PORT[nginx]}${H2C_PORT[nginx]:+ (h2c on ${H2C_PORT[nginx]})}"
nginx_conf nginx "${PORT[nginx]}" "$WORKER_PORT" auto "${H2C_PORT[nginx]:-}"
if [ -n "${H2C_PORT[nginx]:-}" ] && ! nginx_check nginx; then
  H2C_SKIP[nginx]="nginx -t refuses the h2c server block ($(nginx_h2c_server "${H2C_PORT[nginx]}" | tr -s ' \n' ' '))"
  unset 'H2C_PORT[nginx]'
  nginx_conf nginx "${PORT[nginx]}" "$WORKER_PORT" auto
fi
start_nginx nginx "${PORT[nginx]}"

log "haproxy $(haproxy -v | awk 'NR == 1 {print $3}') on 127.0.0.1:${PORT[haproxy]}${H2C_PORT[haproxy]:+ (h2c on ${H2C_PORT[haproxy]})}"
haproxy_conf haproxy "${PORT[haproxy]}" "$WORKER_PORT" 2 "${H2C_PORT[haproxy]:-}"
if [ -n "${H2C_PORT[haproxy]:-}" ] && ! haproxy_check haproxy; then
  H2C_SKIP[haproxy]="haproxy -c refuses a \`bind ... proto h2\` frontend"
  unset 'H2C_PORT[haproxy]'
  haproxy_conf haproxy "${PORT[haproxy]}" "$WORKER_PORT" 2
fi
start_haproxy haproxy "${PORT[haproxy]}"

# to_ms VALUE : wrk's latency (`812.00us`, `1.20ms`, `2.00s`) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
    printf "%.3f", n
  }'
}

# to_mib VALUE : wrk's Transfer/sec (`812.00KB`, `1.20GB`: powers of 1024) in MiB.
to_mib() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /TB$/) n = n * 1048576; else if (v ~ /GB$/) n = n * 1024; else if (v ~ /MB$/) n = n
    else if (v ~ /KB$/) n = n / 1024; else n = n / 1048576
    printf "%.1f", n
  }'
}

# bench NAME PORT DURATION PATH RESULTS : wrk against 127.0.0.1:PORT/PATH; appends
# "NAME rps p99_ms errors MiB/s" to RESULTS.
bench() {
  local name="$1" port="$2" duration="$3" path="$4" results="$5" out rps p99 errors mib
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" --latency "http://127.0.0.1:$port$path")"
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")"
  mib="$(to_mib "$(awk '/^Transfer\/sec:/ {print $2}' <<<"$out")")"
  echo "$name $rps $p99 $errors $mib" >>"$results"
  printf '  %-9s %12s req/s   p99 %9s ms   errors %-6s %9s MiB/s\n' "$name" "$rps" "$p99" "$errors" "$mib" >&2
}

# in_order ROUND : the proxies in the order of round ROUND (from 1): rotated by one every round,
# so that each takes every slot in turn.
in_order() {
  local first=$(( ($1 - 1) % ${#PROXIES[@]} ))
  echo "${PROXIES[@]:first}" "${PROXIES[@]:0:first}"
}

# rounds N DURATION PATH RESULTS SUFFIX : N rounds of bench against each proxy in rotated order;
# the proxy NAME is reached at PORT[NAME$SUFFIX].
rounds() {
  local count="$1" duration="$2" path="$3" results="$4" suffix="$5" round name
  for round in $(seq 1 "$count"); do
    log "round $round"
    for name in $(in_order "$round"); do
      bench "$name" "${PORT[$name$suffix]}" "$duration" "$path" "$results"
    done
  done
}

# The awk functions of the summaries: the mean of each proxy, and a ratio that says n/a where
# a proxy served nothing (rather than awk dying on a division by zero).
# shellcheck disable=SC2016 # awk's fields, not the shell's
AWK_MEANS='
  function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
  { rps[$1] += $2; p99[$1] += $3; err[$1] += $4; mib[$1] += $5; n[$1]++ }
  function means(p) { for (p in n) { rps[p] /= n[p]; p99[p] /= n[p]; mib[p] /= n[p] } }
  function ratios(a, b) {
    printf "ratio %s/%s: throughput %s, p99 %s\n", a, b, ratio(rps[a], rps[b]), ratio(p99[a], p99[b])
  }'

# warm_up SUFFIX PATH : WARMUP of wrk against each proxy (PORT[NAME$SUFFIX]); warns of errors
# there, which would make the figures that follow meaningless (a 404, a refused connection).
warm_up() {
  local name
  : >"$WORK/warmup"
  for name in "${PROXIES[@]}"; do bench "$name" "${PORT[$name$1]}" "$WARMUP" "$2" "$WORK/warmup"; done
  awk '$4 > 0 {print $1, $4}' "$WORK/warmup" | while read -r name errors; do
    warn "$name answered $errors errors (non-2xx or socket errors) to GET $2 in the warm-up"
  done
}

log "warm-up ($WARMUP each)"
warm_up "" "$BENCH_PATH"

log "$ROUNDS rounds x $DURATION, $CONNECTIONS connections, $THREADS wrk threads, GET $BENCH_PATH"
: >"$WORK/results"
rounds "$ROUNDS" "$DURATION" "$BENCH_PATH" "$WORK/results" ""

awk -v cores="$(nproc)" -v conns="$CONNECTIONS" -v rounds="$ROUNDS" -v dur="$DURATION" -v path="$BENCH_PATH" "$AWK_MEANS"'
  END {
    means()
    printf "\nGET %s of one worker, %d connections, %d rounds x %s each, %d cores (means over rounds)\n", path, conns, rounds, dur, cores
    printf "%-10s %14s %12s %8s\n", "proxy", "req/s", "p99 (ms)", "errors"
    for (i = 1; i <= 3; i++) {
      p = i == 1 ? "balancer" : i == 2 ? "nginx" : "haproxy"
      printf "%-10s %14.0f %12.3f %8d\n", p, rps[p], p99[p], err[p]
    }
    ratios("balancer", "nginx")
    ratios("balancer", "haproxy")
    faster = rps["nginx"] >= rps["haproxy"] ? "nginx" : "haproxy"
    printf "ratio balancer/faster (%s): throughput %s, p99 %s\n", faster, ratio(rps["balancer"], rps[faster]), ratio(p99["balancer"], p99[faster])
  }' "$WORK/results"

if [ "$LARGE" != 0 ]; then
  # The worker has no route answering a large body of a chosen size, so a second nginx serves
  # one file: the same backend for the three proxies, each in a second instance whose only
  # backend it is (the balancer cannot route by path). The file is random, so that nothing can
  # shrink it, and marked no-store, so that the balancer's cache (on by default) never answers
  # in its place: every proxy fetches every body.
  LARGE_FILE_PORT="$(free_port)"
  mkdir -p "$WORK/files/www"
  head -c $((1 << 20)) /dev/urandom >"$WORK/files/www/large.bin"
  cat >"$WORK/files/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $WORK/files/nginx.pid;
error_log $WORK/files/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  keepalive_timeout 75s;
  keepalive_requests 1000000000;
  client_body_temp_path $WORK/files/body;
  proxy_temp_path $WORK/files/proxy;
  fastcgi_temp_path $WORK/files/fastcgi;
  uwsgi_temp_path $WORK/files/uwsgi;
  scgi_temp_path $WORK/files/scgi;
  server {
    listen 127.0.0.1:$LARGE_FILE_PORT;
    root $WORK/files/www;
    location = /large.bin { add_header Cache-Control no-store; }
  }
}
EOF
  log "large bodies: a 1 MiB file served by nginx on 127.0.0.1:$LARGE_FILE_PORT"
  start_nginx files "$LARGE_FILE_PORT"

  PORT[balancer-large]="$(free_port)"
  PORT[nginx-large]="$(free_port)"
  PORT[haproxy-large]="$(free_port)"
  log "second instances in front of it: balancer ${PORT[balancer-large]}, nginx ${PORT[nginx-large]}, haproxy ${PORT[haproxy-large]}"
  start_balancer balancer-large "${PORT[balancer-large]}" "$LARGE_FILE_PORT"
  nginx_conf nginx-large "${PORT[nginx-large]}" "$LARGE_FILE_PORT" auto
  start_nginx nginx-large "${PORT[nginx-large]}"
  haproxy_conf haproxy-large "${PORT[haproxy-large]}" "$LARGE_FILE_PORT" 2
  start_haproxy haproxy-large "${PORT[haproxy-large]}"

  log "large-body warm-up ($WARMUP each)"
  warm_up -large /large.bin
  log "$LARGE_ROUNDS rounds x $LARGE_DURATION, $CONNECTIONS connections, $THREADS wrk threads, GET /large.bin (1 MiB)"
  : >"$WORK/large"
  rounds "$LARGE_ROUNDS" "$LARGE_DURATION" /large.bin "$WORK/large" -large
  # nginx buffers answers (proxy_buffering, its default) and spills what its buffers cannot
  # hold to files: worth knowing when reading its figure.
  spilled="$(grep -c 'buffered to a temporary file' "$WORK/nginx-large/error.log" || true)"
  [ "${spilled:-0}" -eq 0 ] || log "nginx buffered $spilled answers to temporary files in the large-body run"

  awk -v conns="$CONNECTIONS" -v rounds="$LARGE_ROUNDS" -v dur="$LARGE_DURATION" "$AWK_MEANS"'
    END {
      means()
      printf "\nGET of a 1 MiB body from nginx, %d connections, %d rounds x %s each (means over rounds)\n", conns, rounds, dur
      printf "%-10s %14s %12s %8s %10s\n", "proxy", "req/s", "p99 (ms)", "errors", "MiB/s"
      for (i = 1; i <= 3; i++) {
        p = i == 1 ? "balancer" : i == 2 ? "nginx" : "haproxy"
        printf "%-10s %14.0f %12.3f %8d %10.1f\n", p, rps[p], p99[p], err[p], mib[p]
      }
      ratios("balancer", "nginx")
      ratios("balancer", "haproxy")
    }' "$WORK/large"
fi

# h2c NAME PORT : h2load with prior knowledge against 127.0.0.1:PORT; appends "NAME rps errors"
# to $WORK/h2c, or says why there is no figure.
h2c() {
  local name="$1" port="$2" out rps total succeeded
  if ! out="$(h2load -n "$H2_REQUESTS" -c 16 -m 10 -t 2 "http://127.0.0.1:$port$BENCH_PATH" 2>&1)"; then
    echo "h2c: $name skipped (h2load failed: $(tail -n 1 <<<"$out"))"
    return
  fi
  # finished in 1.23s, 16260.16 req/s, 1.03MB/s
  rps="$(awk '/^finished in/ {print $4}' <<<"$out")"
  # requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout
  total="$(awk '/^requests:/ {print $2}' <<<"$out")"
  succeeded="$(awk '/^requests:/ {print $8}' <<<"$out")"
  if [ -z "$rps" ] || [ "${succeeded:-0}" -eq 0 ]; then
    echo "h2c: $name skipped (no request succeeded: $(grep -m 1 '^requests:' <<<"$out" || tail -n 1 <<<"$out"))"
    return
  fi
  echo "$name $rps $((total - succeeded))" >>"$WORK/h2c"
  printf '  %-9s %12s req/s   errors %s\n' "$name" "$rps" "$((total - succeeded))" >&2
}

if [ "$H2C" != 0 ]; then
  log "h2c (prior knowledge): h2load, $H2_REQUESTS requests, 16 connections x 10 streams, 2 threads, GET $BENCH_PATH"
  : >"$WORK/h2c"
  : >"$WORK/h2c-skipped"
  for name in "${PROXIES[@]}"; do
    if [ -n "${H2C_PORT[$name]:-}" ]; then
      h2c "$name" "${H2C_PORT[$name]}" >>"$WORK/h2c-skipped"
    else
      echo "h2c: $name skipped (${H2C_SKIP[$name]:-no h2c listener})" >>"$WORK/h2c-skipped"
    fi
  done
  awk -v reqs="$H2_REQUESTS" -v path="$BENCH_PATH" '
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
    { rps[$1] = $2; err[$1] = $3 }
    END {
      printf "\nh2c GET %s, %d requests, 16 connections x 10 streams\n", path, reqs
      printf "%-10s %14s %8s\n", "proxy", "req/s", "errors"
      for (i = 1; i <= 3; i++) {
        p = i == 1 ? "balancer" : i == 2 ? "nginx" : "haproxy"
        if (p in rps) printf "%-10s %14.0f %8d\n", p, rps[p], err[p]
      }
      if (("balancer" in rps) && ("nginx" in rps)) printf "ratio balancer/nginx: throughput %s\n", ratio(rps["balancer"], rps["nginx"])
      if (("balancer" in rps) && ("haproxy" in rps)) printf "ratio balancer/haproxy: throughput %s\n", ratio(rps["balancer"], rps["haproxy"])
    }' "$WORK/h2c"
  cat "$WORK/h2c-skipped"
fi

[ "$INSTRUCTIONS" != 0 ] || exit 0

# stop PID SIGNAL : sends SIGNAL to PID and waits for it to exit, 60 s at most (then SIGKILL):
# a process that ignores the signal must not hang the script.
stop() {
  local pid="$1"
  kill -s "$2" "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    warn "process $pid did not exit on SIG$2 within 60 s; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# instructions NAME PORT PID SIGNAL OUT : requests through PORT for INSTRUCTIONS_DURATION, then
# PID (valgrind) stopped with SIGNAL, one on which the proxy exits cleanly, so that callgrind
# writes its profile; appends "NAME instructions/request requests" from the callgrind profile
# OUT to $WORK/instructions. Fails (without dying) when there is no count.
instructions() {
  local name="$1" port="$2" pid="$3" signal="$4" out="$5" requests total
  wait_port "$port" "$pid" || { warn "$name under valgrind does not listen on 127.0.0.1:$port"; return 1; }
  requests="$(wrk -t1 -c8 -d"$INSTRUCTIONS_DURATION" "http://127.0.0.1:$port$BENCH_PATH" | awk '/requests in/ {print $1}')" || true
  stop "$pid" "$signal"
  total="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')" || true
  if [ -z "$total" ] || [ "${requests:-0}" -le 0 ]; then
    warn "no instruction count for $name (${requests:-0} requests)"
    return 1
  fi
  if [ -n "${CALLGRIND_DIR:-}" ]; then mkdir -p "$CALLGRIND_DIR" && cp "$out" "$CALLGRIND_DIR/"; fi
  echo "$name $((total / requests)) $requests" >>"$WORK/instructions"
  printf '  %-9s %8d instructions/request (%d requests)\n' "$name" "$((total / requests))" "$requests" >&2
}

log "user-space instructions per request (valgrind callgrind, 8 connections, GET $BENCH_PATH)"
: >"$WORK/instructions"
CG_PORT="$(free_port)"
spawn "$WORK/balancer-cg.log" env RUST_LOG=warn BALANCER_THREADS=1 \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/balancer.cg" \
  "$BIN/balancer" --host 127.0.0.1 --port "$CG_PORT" --admin-port "$(free_port)" \
  --backends "127.0.0.1:$WORKER_PORT"
instructions balancer "$CG_PORT" "$SPAWNED" INT "$WORK/balancer.cg" \
  || { tail -n 20 "$WORK/balancer-cg.log" >&2; die "no instruction count for the balancer"; }

CG_PORT="$(free_port)"
nginx_conf nginx-cg "$CG_PORT" "$WORKER_PORT" 1
nginx_check nginx-cg || die "nginx refuses $WORK/nginx-cg/nginx.conf"
# shellcheck disable=SC2046 # the command line is words without spaces
spawn "$WORK/nginx-cg.log" valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.cg" $(nginx_cmd nginx-cg)
instructions nginx "$CG_PORT" "$SPAWNED" INT "$WORK/nginx.cg" \
  || { tail -n 20 "$WORK/nginx-cg.log" >&2; die "no instruction count for nginx"; }

CG_PORT="$(free_port)"
haproxy_conf haproxy-cg "$CG_PORT" "$WORKER_PORT" 1
haproxy_check haproxy-cg || die "haproxy -c refuses $WORK/haproxy-cg.cfg"
spawn "$WORK/haproxy-cg.log" valgrind --tool=callgrind --callgrind-out-file="$WORK/haproxy.cg" \
  haproxy -db -f "$WORK/haproxy-cg.cfg"
# SIGUSR1, HAProxy's soft stop: it exits once its connections are done. It dies of SIGTERM
# (without running its exit path) and, started in the background by a script, ignores SIGINT.
if ! instructions haproxy "$CG_PORT" "$SPAWNED" USR1 "$WORK/haproxy.cg"; then
  tail -n 20 "$WORK/haproxy-cg.log" >&2
  echo "instructions: haproxy skipped (it did not run under valgrind; its last lines are above)" \
    >>"$WORK/instructions-skipped"
fi

awk '
  function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
  { n[$1] = $2 }
  END {
    printf "\nuser-space instructions per request: balancer %d, nginx %d", n["balancer"], n["nginx"]
    if ("haproxy" in n) printf ", haproxy %d", n["haproxy"]
    printf "\nratio balancer/nginx %s", ratio(n["balancer"], n["nginx"])
    if ("haproxy" in n) printf ", ratio balancer/haproxy %s", ratio(n["balancer"], n["haproxy"])
    printf "\n"
  }' "$WORK/instructions"
cat "$WORK/instructions-skipped" 2>/dev/null || true
