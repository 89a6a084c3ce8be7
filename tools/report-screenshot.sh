#!/usr/bin/env bash
# Screenshot of a run's report for the README: headless Chromium renders the whole page, and
# Pillow (tools/.venv, `pip install pillow`; or any Python with Pillow in $PYTHON) keeps a band of
# it. Development tool only.
#   tools/report-screenshot.sh RUN/report.html docs/report.png [TOP_PX] [HEIGHT_PX]
set -euo pipefail
html=$(realpath "$1"); out=$2; top=${3:-0}; height=${4:-1800}
tmp=$(mktemp --suffix .png)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1300,12000 \
  --screenshot="$tmp" "file://$html" >/dev/null 2>&1
"${PYTHON:-$(dirname "$0")/.venv/bin/python}" - "$tmp" "$out" "$top" "$height" <<'PY'
import sys
from PIL import Image
src, out, top, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
im = Image.open(src).convert("RGB").crop((0, top, 1300, top + height))
im = im.resize((975, int(height * 0.75)), Image.LANCZOS)
im.quantize(colors=128).save(out, optimize=True)
print(f"{out}: {im.size[0]}x{im.size[1]}")
PY
rm -f "$tmp"
