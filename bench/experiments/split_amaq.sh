#!/usr/bin/env bash
# Split fine-tuning with AMAQ against its baselines, in one run (README "Split learning").
#
#   bench/experiments/split_amaq.sh [OUT]      (default runs/split-amaq)
#
# 1. Pretrains the byte GPT on the Brown corpus (one process; skipped when BASE names a checkpoint).
# 2. Spam/ham classification (configs/split-spam.yaml) and LM fine-tuning on e-mail text
#    (configs/split-lm.yaml), each with fp32, fixed 8-bit, fixed 4-bit, fixed 3-bit, AMAQ at a 4-bit and
#    a 3-bit budget: one split-server per task, one split-client per codec (same seed, same data order).
# 3. `lowband report` per task: OUT/report-{spam,lm}/report.md with the table and plots.
# Layout: OUT/runs/<task>-<codec> (client run dirs), OUT/logs, OUT/servers (server adapters).
# Environment: BASE (skip pretraining), PRETRAIN_STEPS (600), SPAM_STEPS (300), LM_STEPS (150), CODECS
# (CODEC:BITS[:GRADS], GRADS a split.grad_codec, the config's "auto" when left out: amaq:4 = AMAQ at a
# 4-bit budget with the gradients' own gates, amaq:4:follow = gradients on the activations' bit map,
# run name <task>-amaq4-gfollow),
# TASKS ("spam lm"), SEEDS (client seeds, "1"; with several, every codec runs once per seed as
# <task>-<codec>-s<seed> and the report adds mean, spread and per-seed paired differences),
# EXTRA (more split-client flags, e.g. "--eval-every 1000" for one evaluation at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/split-amaq}
BIN=${BIN:-build/tools/lowband}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-600}
CODECS=${CODECS:-"fp32 fixed:8 fixed:4 amaq:4 fixed:3 amaq:3"}
TASKS=${TASKS:-"spam lm"}
SEEDS=${SEEDS:-1}
read -r -a seeds <<<"$SEEDS"
read -r -a extra <<<"${EXTRA:-}"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build lowband first (deploy/demo.sh or cmake --build build)"; exit 1; }
"$BIN" data prepare brown --data-dir data
"$BIN" data prepare spam-assassin --data-dir data

BASE=${BASE:-}
if [ -z "$BASE" ]; then
  if [ ! -f "$OUT/base/checkpoints/worker-0/LATEST" ]; then
    # --data-split contiguous: the base of the README's tables (held out: the corpus's last 5%).
    "$BIN" launch --config configs/brown-gpt.yaml --algo ddp --workers 1 --steps "$PRETRAIN_STEPS" \
      --set inner.lr=0.002 --data-split contiguous --out "$OUT/base"
  fi
  BASE=$OUT/base/checkpoints/worker-0
fi

server_pid=
stop_server() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=; }
trap stop_server EXIT

run_task() {  # task config steps
  local task=$1 config=$2 steps=$3
  local port=$OUT/servers/$task.port
  mkdir -p "$OUT/servers" "$OUT/logs" "$OUT/runs"
  rm -f "$port"
  "$BIN" split-server --config "$config" --base "$BASE" --listen 127.0.0.1:0 --port-file "$port" \
    --set split.out="$OUT/servers/$task" > "$OUT/logs/$task-server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$port" ] && break; sleep 0.2; done
  [ -s "$port" ] || { cat "$OUT/logs/$task-server.log"; exit 1; }
  for seed in "${seeds[@]}"; do
    for spec in $CODECS; do
      local codec bits grads
      IFS=: read -r codec bits grads <<<"$spec"
      local name=$task-$codec
      if [ "$codec" = fp32 ]; then bits=4; else name=$name$bits; fi
      local grad_flags=()
      [ -n "$grads" ] && name=$name-g$grads && grad_flags=(--grad-codec "$grads")
      [ ${#seeds[@]} -gt 1 ] && name=$name-s$seed
      echo "== $name (log: $OUT/logs/$name.log)"
      "$BIN" split-client --config "$config" --base "$BASE" --server "127.0.0.1:$(cat "$port")" \
        --split-codec "$codec" --bits "$bits" "${grad_flags[@]}" --steps "$steps" --seed "$seed" --name "$name" \
        --out "$OUT/runs/$name" --set run.name="$name" "${extra[@]}" > "$OUT/logs/$name.log" 2>&1 ||
        { tail -20 "$OUT/logs/$name.log"; exit 1; }
      grep -E "^split-client" "$OUT/logs/$name.log"
    done
  done
  stop_server
}

for task in $TASKS; do
  case "$task" in
    spam) run_task spam configs/split-spam.yaml "${SPAM_STEPS:-300}" ;;
    lm) run_task lm configs/split-lm.yaml "${LM_STEPS:-150}" ;;
    *) echo "unknown task '$task' in TASKS (spam, lm)" >&2; exit 2 ;;
  esac
done
# One report per task (accuracy and perplexity do not share a table).
for task in $TASKS; do
  "$BIN" report "$OUT"/runs/"$task"-* --out "$OUT/report-$task" --title "Split fine-tuning with AMAQ: $task"
done
echo "results: $OUT/runs/*/summary.json, reports: $OUT/report-spam/report.md $OUT/report-lm/report.md"
