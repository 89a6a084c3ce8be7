#!/usr/bin/env bash
# Models larger than memory, on this machine: writes random checkpoints of real shapes with
# `headroom make-checkpoint` and runs the stages on them under /usr/bin/time -v, printing wall
# time, peak RSS and the streaming statistics (time per block materialising vs computing).
#
#   tools/scale-check.sh            # both checks below
#   tools/scale-check.sh llama13b   # a Llama-2-13B-shaped bf16 HF folder (~26 GB): importance on
#                                   # 4 prompts of ~128 tokens, eval of 10 COPA docs (0-shot)
#   tools/scale-check.sh llama3q4   # a Llama-3-8B-shaped Q4_0 GGUF (~4.7 GB): eval of 10 COPA docs
#
# Env: SCALE_DIR (where the checkpoints go; default target/scale, ~31 GB), BIN (headroom binary).
# Needs `headroom fetch --data` and tools/fetch-test-assets.sh (the 32000-token Llama
# SentencePiece vocabulary the 13B folder's tokenizer is made from).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/headroom}
DIR=${SCALE_DIR:-target/scale}
CACHE=${HEADROOM_CACHE:-$HOME/.cache/headroom}
SPM="$CACHE/test-assets/llama-spm/ggml-vocab-llama-spm.gguf"
mkdir -p "$DIR"
what=${1:-all}

timed() { # name, then the command; prints wall, peak RSS and the streaming line
  local name=$1; shift
  echo "== $name: $*"
  /usr/bin/time -v "$@" >"$DIR/$name.out" 2>"$DIR/$name.log" || { tail -20 "$DIR/$name.log"; exit 1; }
  grep -E "^(loaded|streamed|copa)|acc =" "$DIR/$name.log" "$DIR/$name.out" | sed 's/^[^:]*://' || true
  grep -E "Elapsed \(wall|Maximum resident" "$DIR/$name.log" | sed 's/^\s*/   /'
}

prompts() { # 4 prompts of about 128 tokens
  python3 - "$1" <<'EOF'
import json, sys
ctx = " ".join(["The quick brown fox jumps over the lazy dog while the farmer watches from the porch."] * 7)
with open(sys.argv[1], "w") as f:
    for i in range(4):
        f.write(json.dumps({"context": f"Story {i}: " + ctx, "continuation": " and then it rained."}) + "\n")
EOF
}

if [[ $what == all || $what == llama13b ]]; then
  M="$DIR/llama-13b-bf16"
  [[ -f $M/config.json ]] || timed make-13b "$BIN" make-checkpoint --shape llama-13b-shape --format hf --weight-dtype bf16 \
    --tokenizer-from "$SPM" --force --out "$M"
  du -sh "$M"
  prompts "$DIR/prompts-128.jsonl"
  timed importance-13b "$BIN" --weights stream importance --model "$M" --prompts "$DIR/prompts-128.jsonl" --batch-size 4 --out "$DIR/imp-13b"
  timed eval-13b "$BIN" --weights stream eval --model "$M" --tasks copa --shots 0 --limit 10 --out "$DIR/eval-13b"
fi
if [[ $what == all || $what == llama3q4 ]]; then
  G="$DIR/llama-3-8b-q4_0.gguf"
  [[ -f $G ]] || timed make-8b "$BIN" make-checkpoint --shape llama-3-8b --format gguf --quant q4_0 \
    --tokenizer-from "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" --force --out "$G"
  ls -la "$G"
  timed eval-8b-q4 "$BIN" eval --model "$G" --tasks copa --shots 0 --limit 10 --out "$DIR/eval-8b"
fi
