#!/usr/bin/env bash
# Builds the CPU image and runs two nppd replicas behind nginx with
# docker/compose.yaml, then checks them (scripts/docker-check.py): a first
# job equal to `npp run`'s, the identical job computing 0 values through
# the affinity key, 200 jobs from 8 clients while a replica is killed, and
# `docker-compose down` leaving no container. Needs Docker (a running
# engine), docker-compose, and build/npp (scripts/setup.sh or test.sh).
#   scripts/docker-test.sh
# Where no registry is reachable (as on this project's CI machines) the
# base image debian:bookworm-slim is made with mmdebstrap and docker import
# (both Debian packages; run as root). On a real machine it is pulled.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
project=npptest
compose=(docker-compose -p "$project" -f docker/compose.yaml)
command -v docker >/dev/null || { echo "docker-test: no docker here" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "docker-test: the Docker engine is not running" >&2; exit 2; }
# The vocabulary from the host (checked by its sha256 inside the build).
scripts/fetch-vocab.sh >/dev/null
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  if ! docker pull debian:bookworm-slim >/dev/null 2>&1; then
    echo "docker-test: no registry: making debian:bookworm-slim with mmdebstrap"
    tmp=$(mktemp -d)
    mmdebstrap --variant=minbase bookworm "$tmp/base.tar" >/dev/null 2>&1
    docker import "$tmp/base.tar" debian:bookworm-slim >/dev/null
    rm -rf "$tmp"
  fi
fi
t0=$(date +%s)
log=$(mktemp)
for img in cpu:nppd:cpu nginx:nppd-nginx; do
  if ! docker build --network host -f "docker/${img%%:*}.Dockerfile" -t "${img#*:}" . >"$log" 2>&1; then
    tail -30 "$log"; echo "docker-test: building docker/${img%%:*}.Dockerfile failed" >&2; exit 1
  fi
done
rm -f "$log"
echo "docker-test: images built in $(( $(date +%s) - t0 )) s"
docker images --format '  {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'nppd:cpu|nppd-nginx|debian:bookworm-slim'
cleanup() { "${compose[@]}" down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${compose[@]}" up -d >/dev/null 2>&1
for i in $(seq 1 120); do
  if curl -fsS http://127.0.0.1:8080/replicas/r1/readyz >/dev/null 2>&1 &&
     curl -fsS http://127.0.0.1:8080/replicas/r2/readyz >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
if [ "$i" = 120 ]; then
  "${compose[@]}" logs --tail 20 >&2 || true
  echo "docker-test: the replicas were not ready after 120 s" >&2
  exit 1
fi
echo "docker-test: nginx and two replicas ready after ${i} s"
docker inspect --format '  {{.Name}} health: {{.State.Health.Status}}' \
  "${project}_nppd-r1_1" "${project}_nppd-r2_1" 2>/dev/null || true
rc=0
/usr/bin/python3 scripts/docker-check.py build/npp models/induction http://127.0.0.1:8080 \
  "${project}_nppd-r2_1" || rc=1
cleanup
trap - EXIT
left=$(docker ps -a --filter "name=${project}_" --format '{{.Names}}' | wc -l)
echo "docker-test: after docker-compose down, $left container(s) left"
[ "$left" = 0 ] || rc=1
exit $rc
