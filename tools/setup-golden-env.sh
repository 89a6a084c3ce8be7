#!/usr/bin/env bash
# Creates tools/.venv with the pinned packages of tools/requirements-golden.txt.
# Idempotent: reruns are a no-op when the venv already matches the requirements file.
# Only tools/make_golden.py needs this; the golden outputs are committed and CI never runs it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements-golden.txt"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi

stamp="$venv/.requirements-golden.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "tools/.venv is up to date ($req unchanged)"
    exit 0
fi

# --no-deps: the requirements file is a complete pinned closure (see its header for why the
# nvidia-* wheels are in it).
"$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$req"
"$venv/bin/python" -m pip check
"$venv/bin/python" -c 'import torch, transformers, gguf, safetensors, tokenizers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "gguf", __import__("importlib.metadata").metadata.version("gguf"))'
echo "$want" > "$stamp"
