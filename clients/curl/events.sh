#!/usr/bin/env bash
# Progress as Server-Sent Events until the job ends: GET /v1/jobs/ID/events   (usage: events.sh ID)
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f -N "${auth[@]}" "$url/v1/jobs/$1/events"
