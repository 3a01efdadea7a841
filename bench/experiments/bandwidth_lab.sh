#!/usr/bin/env bash
# The bandwidth lab's validation experiment (docs/bandwidth-lab.md): data-parallel, DiLoCo (fp32)
# and Streaming DiLoCo FP4, 4 workers each, over links of several rates, measured in the kernel-
# shaped namespace lab (deploy/netns-lab.sh: tc tbf on every host's link, both directions); DiLoCo
# and Streaming DiLoCo also get 20 ms one-way latency from a `lowband link` shaper per worker (the
# kernel here has no netem, and ddp's rank-to-rank Gloo traffic cannot go through a proxy, so ddp
# runs without added latency). Then `lowband report --simulate` runs the simulator with each run's
# measured step time and payload sizes and writes utilization vs bandwidth (simulated curves with
# the measured points), measured-vs-simulated tables, loss vs wall time and loss vs bytes.
#
#   bench/experiments/bandwidth_lab.sh [OUT_DIR]          (needs root for the namespaces)
#   RATES="100 10" bench/experiments/bandwidth_lab.sh ...  (Mbit/s; default "1000 100 10 1")
#   SKIP_DONE=1 ...                                        keeps runs that already have a summary.json
#   CPU_PER_WORKER=0.4 ...                                 cap each worker at 0.4 core (cgroup; default 0:
#                                                          no cap; docs/bandwidth-lab.md says what it changes)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/lab}
RATES=${RATES:-1000 100 10 1}
BIN=${LOWBAND:-build/tools/lowband}
[ -x "$BIN" ] || { echo "build first: cmake -S . -B build -G Ninja && cmake --build build" >&2; exit 1; }
# A private copy, so that rebuilding during the experiment cannot pull the binary from under it.
cp "$BIN" "${TMPDIR:-/tmp}/lowband-lab.$$" && BIN="${TMPDIR:-/tmp}/lowband-lab.$$"
trap 'rm -f "$BIN"' EXIT
deploy/netns-lab.sh --check
"$BIN" data prepare brown --data-dir data
CONFIG=configs/lab-gpt.yaml

# Fewer steps where a step is link-bound, so every point takes about a minute; utilization is a
# per-step ratio, so the step count does not change it (beyond start-up, which is excluded).
ddp_steps() { case $1 in 1) echo 6 ;; 10) echo 30 ;; *) echo 120 ;; esac; }

run() {
  local name=$1 rate=$2; shift 2
  if [ -n "${SKIP_DONE:-}" ] && [ -f "$OUT/$name/summary.json" ]; then
    echo "=== $name: done already, skipped (unset SKIP_DONE to redo)"
    return
  fi
  echo "=== $name"
  LOWBAND="$BIN" deploy/netns-lab.sh --workers 4 --rate "${rate}mbit" --prefix lblab -- \
    --config "$CONFIG" --out "$OUT/$name" --progress-seconds 20 --cpu-per-worker "${CPU_PER_WORKER:-0}" "$@" |
    tail -n 14
}

# The host cost of ddp's all-reduce (reduction, copies, the kernel's TCP path), which the simulator
# cannot derive from the link: measured from ddp over unshaped links, then used for every ddp point.
if [ -n "${SKIP_DONE:-}" ] && [ -f "$OUT/ddp-unshaped/summary.json" ]; then
  echo "=== ddp-unshaped: done already, skipped"
else
  echo "=== ddp-unshaped"
  LOWBAND="$BIN" deploy/netns-lab.sh --workers 4 --rate none --prefix lblab -- \
    --config "$CONFIG" --out "$OUT/ddp-unshaped" --progress-seconds 20 --cpu-per-worker "${CPU_PER_WORKER:-0}" \
    --algo ddp --steps 120 | tail -n 14
fi

runs=()
for r in $RATES; do
  run "ddp-${r}mbit" "$r" --algo ddp --steps "$(ddp_steps "$r")"
  run "diloco-${r}mbit" "$r" --algo diloco --codec fp32 --link-latency 20ms
  run "streaming-fp4-${r}mbit" "$r" --algo streaming --codec fp4_e3m0 --link-latency 20ms
  # late = defer: a worker ahead of a slower peer trains on instead of stalling at t + tau
  run "streaming-fp4-defer-${r}mbit" "$r" --algo streaming --codec fp4_e3m0 --link-latency 20ms --late defer
  runs+=("$OUT/ddp-${r}mbit" "$OUT/diloco-${r}mbit" "$OUT/streaming-fp4-${r}mbit" "$OUT/streaming-fp4-defer-${r}mbit")
done
# One report: it writes report.md and the plots, and --json prints its table (stdout, redirected).
mkdir -p "$OUT/report"
"$BIN" report "${runs[@]}" --simulate --ddp-calibration "$OUT/ddp-unshaped" --out "$OUT/report" --json \
  --title "Compute utilization over shaped links: 4 workers, measured vs simulated" >"$OUT/report/table.json"
echo "report: $OUT/report/report.md"
