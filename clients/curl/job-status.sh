#!/usr/bin/env bash
# A job's state, progress and result: GET /v1/jobs/ID   (usage: job-status.sh ID)
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" "$url/v1/jobs/$1"
