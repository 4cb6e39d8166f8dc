#!/usr/bin/env bash
# The models served: GET /v1/models
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" "$url/v1/models"
