#!/bin/sh
# Prints the Debian packages that own the shared libraries the given
# binaries link, one per line: what a runtime image must install (used by
# docker/*.Dockerfile). Libraries under a folder named in $SKIP (a
# colon-separated list) are left out: the caller copies them itself. Fails,
# naming the library, when no package owns one (ldd may print /lib/... for a
# file dpkg knows as /usr/lib/..., so both are asked).
#   scripts/runtime-packages.sh BINARY... > runtime-packages
set -eu
libs=$(ldd "$@" | awk '/=> \//{print $3}' | sort -u)
for lib in $libs; do
  skip=no
  for d in $(echo "${SKIP:-}" | tr ':' ' '); do
    case "$lib" in "$d"/*) skip=yes ;; esac
  done
  [ "$skip" = yes ] && continue
  real=$(readlink -f "$lib")
  owner=""
  for f in "$lib" "$real" "/usr$lib" "/usr$real"; do
    owner=$(dpkg -S "$f" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  if [ -z "$owner" ]; then
    echo "runtime-packages: no Debian package owns $lib" >&2
    exit 1
  fi
  echo "$owner"
done | sort -u
