#!/usr/bin/env bash
# The fuzz targets (fuzz/, outside the workspace): mkv_reader, datastream_ops.
#   scripts/fuzz.sh corpus               build the targets, replay each checked-in corpus once (CI)
#   scripts/fuzz.sh run [SECS] [TARGET]  fuzz each target (or TARGET) for SECS seconds (default 60)
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
targets="mkv_reader datastream_ops"
case "$mode" in
  corpus)
    for t in $targets; do
      corpus="fuzz/corpus/$t"
      cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$corpus" -- -runs=0
      echo "fuzz: $t: corpus of $(ls "$corpus" | wc -l) inputs replayed without a failure"
    done
    ;;
  run)
    secs="${2:-60}"
    for t in ${3:-$targets}; do
      mkdir -p "/tmp/kinema-fuzz-corpus/$t"
      cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "/tmp/kinema-fuzz-corpus/$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536
    done
    ;;
  *) echo "usage: $0 corpus | run [SECS] [TARGET]" >&2; exit 2 ;;
esac
