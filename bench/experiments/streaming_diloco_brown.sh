#!/usr/bin/env bash
# Streaming DiLoCo vs data-parallel on the Brown corpus: 4 workers, identical token budget.
#   bench/experiments/streaming_diloco_brown.sh [OUT_DIR] [extra lowband flags...]
# Runs ddp fp32, diloco fp32, streaming fp32, streaming FP4 (tau=1, alpha=0.5) and streaming FP4 with
# error feedback, then writes OUT_DIR/report/report.md (+ plots) comparing them.
# SKIP_DONE=1 keeps runs that already have a summary.json (to finish an interrupted experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/exp-brown}
shift || true
BIN=${LOWBAND:-build/tools/lowband}
# Run a private copy, so that rebuilding during the experiment cannot pull the binary from under it.
cp "$BIN" "${TMPDIR:-/tmp}/lowband-experiment.$$" && BIN="${TMPDIR:-/tmp}/lowband-experiment.$$"
trap 'rm -f "$BIN"' EXIT
[ -x "$BIN" ] || { echo "build first: cmake -S . -B build -G Ninja && cmake --build build" >&2; exit 1; }
"$BIN" data prepare brown --data-dir data
COMMON=(--config configs/exp-brown.yaml --workers 4 "$@")
run() {
  local name=$1; shift
  if [ -n "${SKIP_DONE:-}" ] && [ -f "$OUT/$name/summary.json" ]; then
    echo "=== $name: done already ($OUT/$name/summary.json), skipped (unset SKIP_DONE to redo)"
    return
  fi
  echo "=== $name"
  "$BIN" launch "${COMMON[@]}" --out "$OUT/$name" --progress-seconds 30 "$@" | tail -n 12
}
run ddp              --algo ddp
run diloco-fp32      --algo diloco --codec fp32
run streaming-fp32   --algo streaming --codec fp32
run streaming-fp4    --algo streaming --codec fp4_e3m0
run streaming-fp4-ef --algo streaming --codec fp4_e3m0 --error-feedback true
"$BIN" report "$OUT/ddp" "$OUT/diloco-fp32" "$OUT/streaming-fp32" "$OUT/streaming-fp4" "$OUT/streaming-fp4-ef" \
  --out "$OUT/report" --title "Streaming DiLoCo vs data-parallel, Brown corpus, 4 workers"
"$BIN" report "$OUT/ddp" "$OUT/diloco-fp32" "$OUT/streaming-fp32" "$OUT/streaming-fp4" "$OUT/streaming-fp4-ef" \
  --out "$OUT/report" --json > "$OUT/report/table.json"
echo "report: $OUT/report/report.md"
