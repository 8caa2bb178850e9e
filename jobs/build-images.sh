#!/usr/bin/env bash
# Builds the static binaries, then one `FROM scratch` image per service in deploy/, tagged
# rustybalancer/<service>:<tag>. Nothing is pulled: it works on an engine with no registry.
#
#   jobs/build-images.sh [-t TAG] [--no-build] [SERVICE...]
#
# TAG defaults to $IMAGE_TAG or `dev`; SERVICE defaults to every deploy/*.Dockerfile.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

build=1
chosen=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t|--tag) IMAGE_TAG="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) chosen+=("$1"); shift ;;
  esac
done
[ "${#chosen[@]}" -gt 0 ] || mapfile -t chosen < <(services)

ensure_docker
[ "$build" -eq 1 ] && build_binaries
for service in "${chosen[@]}"; do
  [ -f "$ROOT/deploy/$service.Dockerfile" ] || die "no deploy/$service.Dockerfile"
  build_image "$service"
done
docker image ls --filter "reference=$IMAGE_REPO/*:$IMAGE_TAG" --format '{{.Repository}}:{{.Tag}}  {{.Size}}'
