#!/usr/bin/env bash
# The MKV reader fuzz target (fuzz/, outside the workspace).
#   scripts/fuzz.sh corpus      build it and replay the checked-in corpus once (CI)
#   scripts/fuzz.sh run [SECS]  fuzz for SECS seconds (default 60), growing the corpus
# cargo-fuzz is installed on first use. The stable toolchain builds libFuzzer
# targets without a sanitizer (`--sanitizer none`), which needs no nightly.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KINEMA_CACHE:-$HOME/.cache/kinema}"
export CARGO_TARGET_DIR="$CACHE/fuzz-target"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
mode="${1:-corpus}"
corpus=fuzz/corpus/mkv_reader
case "$mode" in
  corpus)
    cargo fuzz run --fuzz-dir fuzz --sanitizer none mkv_reader "$corpus" -- -runs=0
    echo "fuzz: corpus of $(ls "$corpus" | wc -l) inputs replayed without a failure"
    ;;
  run)
    secs="${2:-60}"
    mkdir -p /tmp/kinema-fuzz-corpus
    cargo fuzz run --fuzz-dir fuzz --sanitizer none mkv_reader /tmp/kinema-fuzz-corpus "$corpus" -- -max_total_time="$secs" -max_len=65536
    ;;
  *) echo "usage: $0 corpus|run [SECS]" >&2; exit 2 ;;
esac
