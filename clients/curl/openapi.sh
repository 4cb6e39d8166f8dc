#!/usr/bin/env bash
# The API contract: GET /openapi.yaml
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "$url/openapi.yaml"
