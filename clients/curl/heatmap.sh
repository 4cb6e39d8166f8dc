#!/usr/bin/env bash
# A grid job's heatmap: GET /v1/jobs/ID/heatmap.svg   (usage: heatmap.sh ID [OUT.svg])
# With no ID, submits a small layer x head grid first (?wait=60) and draws it.
set -euo pipefail
. "$(dirname "$0")/_common.sh"
id=${1:-}
if [ -z "$id" ]; then
  id=$(curl -sS -f "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/jobs?wait=60" -d '{
    "inputs": ["The capital of Spain is", "The capital of Italy is"],
    "metric": {"type": "logit", "token": " Madrid", "normalize": true},
    "outputs": {"top_k": 1},
    "grid": {"node": "a{layer}.head{head}", "layer": "all", "head": "all",
             "preset": {"type": "activation_patch", "from": 1}}}' |
    grep -o '"id": *"[0-9a-f]*"' | head -n 1 | sed 's/.*"\([0-9a-f]*\)"$/\1/')
fi
curl -sS -f "${auth[@]}" "$url/v1/jobs/$id/heatmap.svg" -o "${2:-heatmap.svg}" &&
  echo "wrote ${2:-heatmap.svg} (job $id)"
