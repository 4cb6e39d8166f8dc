#!/usr/bin/env bash
# Liveness: GET /healthz -> {"status": "ok"}
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "$url/healthz"
