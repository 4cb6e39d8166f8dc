#!/usr/bin/env bash
# Readiness: GET /readyz -> 200 ready, 503 while loading or draining
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS "$url/readyz"
