# Sourced by the examples: NPP_URL (default http://127.0.0.1:8080) and
# NPP_TOKEN (when the server runs with --token-file).
url=${NPP_URL:-http://127.0.0.1:8080}
auth=()
if [ -n "${NPP_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer $NPP_TOKEN")
fi
