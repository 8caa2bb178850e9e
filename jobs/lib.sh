# Shared by the jobs/ scripts: installing what is missing, Docker and Compose detection.
# Source it; it does nothing by itself.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The cargo profile of the binaries (BUILD_PROFILE): `dist` (fat LTO, one codegen unit: what
# images and benchmarks run) unless told otherwise; jobs/test.sh and `run.sh -e dev` use the
# quicker `release`. use_profile NAME switches it and the directory the binaries are in.
BUILD_PROFILE_GIVEN="${BUILD_PROFILE:-}"
use_profile() {
  case "$1" in dist|release) ;; *) echo "error: BUILD_PROFILE must be dist or release, got '$1'" >&2; exit 2 ;; esac
  BUILD_PROFILE="$1"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/$1"
}
use_profile "${BUILD_PROFILE:-dist}"
IMAGE_REPO="${IMAGE_REPO:-rustybalancer}"
IMAGE_TAG="${IMAGE_TAG:-dev}"
# The classic builder: BuildKit would try to fetch its frontend, and nothing can be pulled.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi
}

APT_UPDATED=0
# apt_install PACKAGE... : installs the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_cmd COMMAND PACKAGE : installs PACKAGE when COMMAND is not on the PATH.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 is still missing after installing $2"
}

# ensure_docker : the docker CLI installed and the engine answering (started if it is not).
ensure_docker() {
  need_cmd docker docker.io
  if ! docker info >/dev/null 2>&1; then
    log "starting the Docker engine"
    as_root service docker start >/dev/null 2>&1 || (as_root dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "the Docker engine does not answer; is your user allowed to use /var/run/docker.sock? (see README, Troubleshooting)"
  fi
}

# compose ARGS... : `docker compose` when the plugin exists, else `docker-compose`.
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose "$@"
  else
    apt_install docker-compose
    docker-compose "$@"
  fi
}

# ensure_rust : cargo with rustfmt and clippy.
ensure_rust() {
  command -v cargo >/dev/null || die "cargo is not installed; install Rust (https://rustup.rs)"
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"
}

# build_binaries : the one build of the workspace's binaries in BUILD_PROFILE (static, see
# .cargo/config.toml).
build_binaries() {
  log "building the static binaries (profile $BUILD_PROFILE)"
  (cd "$ROOT" && cargo build --profile "$BUILD_PROFILE" --workspace --bins --locked)
}

# build_image SERVICE : rustybalancer/SERVICE:TAG from deploy/SERVICE.Dockerfile and its binary.
build_image() {
  local service="$1" context
  [ -x "$TARGET_DIR/$service" ] || die "no binary $TARGET_DIR/$service; build first"
  context="$(mktemp -d)"
  cp "$TARGET_DIR/$service" "$context/"
  log "image $IMAGE_REPO/$service:$IMAGE_TAG"
  if ! output="$(docker build --quiet --label "org.opencontainers.image.title=$service" \
      -f "$ROOT/deploy/$service.Dockerfile" -t "$IMAGE_REPO/$service:$IMAGE_TAG" "$context" 2>&1)"; then
    rm -rf "$context"
    die "docker build of $service failed: $output"
  fi
  rm -rf "$context"
}

# services : every service with a Dockerfile in deploy/.
services() {
  for file in "$ROOT"/deploy/*.Dockerfile; do basename "$file" .Dockerfile; done
}

# build_redis_image TAG : a Redis image from the Debian redis-server package (no pull).
build_redis_image() {
  local tag="$1" context lib
  apt_install redis-server redis-tools
  context="$(mktemp -d)"
  mkdir -p "$context/rootfs/usr/bin" "$context/data"
  cp -L /usr/bin/redis-server /usr/bin/redis-cli "$context/rootfs/usr/bin/"
  for lib in $(ldd /usr/bin/redis-server /usr/bin/redis-cli | awk '/=>/ {print $3} /ld-linux/ && !/=>/ {print $1}' | sort -u); do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
  done
  if ! output="$(docker build --quiet -f "$ROOT/deploy/redis/Dockerfile" -t "$tag" "$context" 2>&1)"; then
    rm -rf "$context"
    die "building the Redis image failed: $output"
  fi
  rm -rf "$context"
}

# ensure_redis_image : exports REDIS_IMAGE, building one from Debian's package when the
# configured image (default redis:7-alpine) is absent and cannot be pulled.
ensure_redis_image() {
  REDIS_IMAGE="${REDIS_IMAGE:-redis:7-alpine}"
  if ! docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1 && ! docker pull -q "$REDIS_IMAGE" >/dev/null 2>&1; then
    local local_tag="$IMAGE_REPO/redis:$IMAGE_TAG"
    if ! docker image inspect "$local_tag" >/dev/null 2>&1; then
      log "$REDIS_IMAGE is not here and cannot be pulled: building $local_tag from Debian's redis-server package"
      build_redis_image "$local_tag"
    else
      log "$REDIS_IMAGE is not here and cannot be pulled: using $local_tag (built from Debian's redis-server package)"
    fi
    REDIS_IMAGE="$local_tag"
  fi
  export REDIS_IMAGE
}

# ensure_agent_token ENV_FILE SECRETS_DIR : exports AGENT_TOKEN, the bearer token the agent
# requires on mutating calls and the balancer sends with its gRPC calls. Taken from, in order:
# the environment, an `AGENT_TOKEN=` line of ENV_FILE (compose's `.env`), SECRETS_DIR/agent-token,
# else 32 new random bytes (64 hex digits) written to SECRETS_DIR/agent-token. The directory is
# kept mode 700 and the file 600. Sets AGENT_TOKEN_SOURCE to where the token came from.
ensure_agent_token() {
  local env_file="$1" dir="$2" file="$2/agent-token" from_file=""
  if [ -n "${AGENT_TOKEN:-}" ]; then
    AGENT_TOKEN_SOURCE="environment"
  elif [ -f "$env_file" ] \
      && from_file="$(sed -n 's/^[[:space:]]*AGENT_TOKEN=//p' "$env_file" | tail -n 1 | tr -d '[:space:]')" \
      && from_file="${from_file#[\"\']}" && from_file="${from_file%[\"\']}" && [ -n "$from_file" ]; then
    AGENT_TOKEN="$from_file"
    AGENT_TOKEN_SOURCE="$env_file"
  else
    (umask 077 && mkdir -p "$dir") || die "cannot create $dir for the agent token"
    chmod 700 "$dir"
    if [ -s "$file" ]; then
      AGENT_TOKEN_SOURCE="$file"
    else
      # od is in coreutils, so this needs nothing beyond a Linux base system.
      (umask 077 && head -c 32 /dev/urandom | od -An -vtx1 | tr -d ' \n' >"$file.tmp" \
        && echo >>"$file.tmp" && mv "$file.tmp" "$file") || die "cannot write $file"
      AGENT_TOKEN_SOURCE="$file (new)"
    fi
    chmod 600 "$file"
    AGENT_TOKEN="$(tr -d '[:space:]' <"$file")"
    [ -n "$AGENT_TOKEN" ] || die "$file is empty; delete it and run again to make a new token"
  fi
  case "$AGENT_TOKEN" in
    *[![:graph:]]*) die "AGENT_TOKEN (from $AGENT_TOKEN_SOURCE) must be printable ASCII without spaces" ;;
  esac
  export AGENT_TOKEN
}

# ensure_docker_gid : exports DOCKER_GID (unless set), the group owning the Docker socket that
# compose mounts into the agent (DOCKER_SOCKET_VOLUME), so the agent, an unprivileged user, can
# reach it through `group_add`.
ensure_docker_gid() {
  local socket="${DOCKER_SOCKET_VOLUME:-/var/run/docker.sock}" mode
  if [ -z "${DOCKER_GID:-}" ]; then
    DOCKER_GID="$(stat -L -c %g "$socket" 2>/dev/null)" \
      || die "cannot read the group of the Docker socket $socket (DOCKER_SOCKET_VOLUME); set DOCKER_GID to the group id that may use it"
  fi
  case "$DOCKER_GID" in
    ''|*[!0-9]*) die "DOCKER_GID must be a numeric group id, got '$DOCKER_GID'" ;;
  esac
  mode="$(stat -L -c %a "$socket" 2>/dev/null || echo 660)"
  [ $((8#$mode & 8#060)) -eq $((8#060)) ] \
    || warn "the Docker socket $socket (mode $mode) is not read-write for its group $DOCKER_GID: the agent, which runs as user 10001 in that group, will not reach it"
  export DOCKER_GID
}

# ensure_test_app_packages : the Debian packages the third-party test apps are built from
# (busybox-static for busybox httpd, nginx-light for nginx), installed when missing.
ensure_test_app_packages() {
  apt_install busybox-static
  command -v ldd >/dev/null || apt_install libc-bin
  [ -x /usr/sbin/nginx ] || apt_install nginx-light
  [ -x /usr/sbin/nginx ] || die "/usr/sbin/nginx is still missing after installing nginx-light"
}

# test_app_index CONTEXT NAME : the page the test apps serve, CONTEXT/www/index.html.
test_app_index() {
  mkdir -p "$1/www"
  printf '<!doctype html><title>%s</title><p>%s behind RustyBalancer</p>\n' "$2" "$2" >"$1/www/index.html"
}

# build_busybox_httpd_image IMAGE [DOCKER_BUILD_OPTION...] : a FROM scratch image with Debian's
# busybox-static binary serving /www on 8080 (`busybox httpd`; answers `/`, 404 on /health,
# `/cgi-bin/slow?S` after S seconds), for the "bring your own app" tests. Options (e.g. --label) go to `docker build`. No pull.
build_busybox_httpd_image() {
  local image="$1" context output
  shift
  ensure_test_app_packages
  context="$(mktemp -d)"
  cp -L /bin/busybox "$context/busybox"
  test_app_index "$context" "busybox httpd"
  # /cgi-bin/slow?S answers after S seconds (default 1): requests that stay in flight.
  mkdir -p "$context/www/cgi-bin"
  cat >"$context/www/cgi-bin/slow" <<'CGI'
#!/bin/busybox sh
/bin/busybox sleep "${QUERY_STRING:-1}"
printf 'Content-Type: text/plain\r\n\r\nslow\n'
CGI
  chmod 755 "$context/www/cgi-bin/slow"
  if ! output="$(docker build --quiet "$@" -f "$ROOT/deploy/test-apps/busybox-httpd.Dockerfile" -t "$image" "$context" 2>&1)"; then
    rm -rf "$context"
    die "building the busybox httpd image failed: $output"
  fi
  rm -rf "$context"
}

# build_nginx_image IMAGE [DOCKER_BUILD_OPTION...] : Debian's nginx (nginx-light) with exactly
# the shared libraries `ldd` names, listening on 8080 as user 10001 (deploy/test-apps/nginx.conf),
# serving /www. Options (e.g. --label) go to `docker build`. No pull.
build_nginx_image() {
  local image="$1" context output lib
  shift
  ensure_test_app_packages
  context="$(mktemp -d)"
  mkdir -p "$context/rootfs/usr/sbin" "$context/rootfs/etc/nginx" "$context/tmp"
  cp -L /usr/sbin/nginx "$context/rootfs/usr/sbin/"
  cp "$ROOT/deploy/test-apps/nginx.conf" "$context/rootfs/etc/nginx/nginx.conf"
  for lib in $(ldd /usr/sbin/nginx | awk '/=>/ {print $3} /ld-linux/ && !/=>/ {print $1}' | sort -u); do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
  done
  test_app_index "$context/rootfs" "nginx"
  if ! output="$(docker build --quiet "$@" -f "$ROOT/deploy/test-apps/nginx.Dockerfile" -t "$image" "$context" 2>&1)"; then
    rm -rf "$context"
    die "building the nginx image failed: $output"
  fi
  rm -rf "$context"
}
