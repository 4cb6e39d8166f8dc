#!/usr/bin/env bash
# Prometheus metrics: GET /metrics
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" "$url/metrics"
