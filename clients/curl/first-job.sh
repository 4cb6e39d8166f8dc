#!/usr/bin/env bash
# A first job against a running nppd: submit, wait for the result, fetch the
# path graph. NPP_URL (default http://127.0.0.1:8080) and NPP_TOKEN (if the
# server has --token-file) select the server.
set -euo pipefail
. "$(dirname "$0")/_common.sh"
here=$(cd "$(dirname "$0")" && pwd)
# Submit and wait up to 60 s for the answer (200 with the result, or 202).
curl -sS "${auth[@]}" -X POST "$url/v1/jobs?wait=60" \
  -H 'Content-Type: application/json' --data @"$here/../../docs/examples/first-job.json" \
  -o /tmp/npp-first-job.json -w 'POST /v1/jobs -> %{http_code}\n'
id=$(sed -n 's/^{"id":"\([0-9a-f]*\)".*/\1/p' /tmp/npp-first-job.json)
echo "job $id; result in /tmp/npp-first-job.json"
curl -sS "${auth[@]}" "$url/v1/jobs/$id/graph.svg" -o /tmp/npp-first-job.svg \
  -w 'GET /v1/jobs/{id}/graph.svg -> %{http_code} (/tmp/npp-first-job.svg)\n'
