#!/usr/bin/env bash
# A job's path tree: GET /v1/jobs/ID/graph.svg   (usage: graph.sh ID [OUT.svg])
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" "$url/v1/jobs/$1/graph.svg" -o "${2:-paths.svg}" && echo "wrote ${2:-paths.svg}"
