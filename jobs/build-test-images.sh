#!/usr/bin/env bash
# Builds the two third-party web servers the "bring your own app" tests and the README's
# example run behind RustyBalancer, from Debian packages (installed when missing), no pull:
#   rustybalancer-test/busybox-httpd:TAG  busybox httpd on 8080, answers `/`, 404 on /health
#   rustybalancer-test/nginx:TAG          nginx on 8080, answers `/`
#
#   jobs/build-test-images.sh [-t TAG] [DOCKER_BUILD_OPTION...]
#
# TAG defaults to $IMAGE_TAG or `dev`; options (e.g. --label k=v) go to `docker build`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [ "${1:-}" = -t ]; then IMAGE_TAG="$2"; shift 2; fi
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac
ensure_docker
log "image rustybalancer-test/busybox-httpd:$IMAGE_TAG"
build_busybox_httpd_image "rustybalancer-test/busybox-httpd:$IMAGE_TAG" "$@"
log "image rustybalancer-test/nginx:$IMAGE_TAG"
build_nginx_image "rustybalancer-test/nginx:$IMAGE_TAG" "$@"
