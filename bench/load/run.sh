#!/usr/bin/env bash
# bench/load: nppd under 32 concurrent clients (wrk, 2 threads, keep-alive),
# each POSTing a job and waiting for its result (?wait=60), on a small
# model (2 layers, 4 heads, 64 wide). Two runs of DURATION seconds:
#   cached   - one job repeated: every value comes from the shared cache;
#   uncached - every request has its own inputs: everything is computed.
# Prints jobs/s and p50/p99 latency for each.
#   bench/load/run.sh [BUILD_DIR] [DURATION_S] [WORKERS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
dur=${2:-20}
workers=${3:-2}
command -v wrk >/dev/null || { echo "bench/load needs wrk: apt-get install wrk" >&2; exit 1; }
model=$build/bench/tiny
[ -f "$model/model.safetensors" ] ||
  "$build/npp" make-model --out "$model" --layers 2 --heads 4 --embd 64 --positions 128 --seed 1
port=18437
"$build/nppd" --model tiny="$model" --listen 127.0.0.1:$port --workers "$workers" --threads 1 \
  --queue-max 1000 --max-inflight 1000 --max-conn-per-ip 100 2>/dev/null &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
echo "bench/load: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), nppd --workers $workers, 32 clients, ${dur}s each"
for mode in cached uncached; do
  MODE=$mode wrk -t2 -c32 -d"${dur}s" --timeout 60s -s "$root/bench/load/job.lua" \
    http://127.0.0.1:$port >/tmp/npp-bench-load.txt 2>&1 || true
  grep -E "^$mode:" /tmp/npp-bench-load.txt
done
