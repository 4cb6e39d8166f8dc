#!/usr/bin/env bash
# Cancel a job: DELETE /v1/jobs/ID   (usage: cancel-job.sh ID)
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" -X DELETE "$url/v1/jobs/$1"
