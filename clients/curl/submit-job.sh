#!/usr/bin/env bash
# Submit a job without waiting: POST /v1/jobs -> 202 {"id", ...} + Location   (usage: submit-job.sh [JOB.json])
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" -X POST "$url/v1/jobs" -H "Content-Type: application/json" \
  --data @"${1:-$(dirname "$0")/../../docs/examples/first-job.json}"
