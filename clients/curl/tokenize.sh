#!/usr/bin/env bash
# Token ids of a text: POST /v1/tokenize   (usage: tokenize.sh [TEXT])
set -euo pipefail
. "$(dirname "$0")/_common.sh"
curl -sS -f "${auth[@]}" -X POST "$url/v1/tokenize" -H "Content-Type: application/json" \
  --data "{\"text\": \"${1:-The capital of Spain is}\"}"
