#!/usr/bin/env bash
# Sets up this machine, builds lowband and runs the main job: a Streaming DiLoCo run of a byte-level
# GPT on the Brown corpus, 4 worker processes and a coordinator on this machine over real gRPC,
# with live progress, a summary table and a report (RUN/report.md + plots).
#   deploy/demo.sh [extra lowband launch flags, e.g. --steps 200 --codec fp32]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
RUN=${RUN:-runs/demo}
deploy/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j "$(nproc)" --target lowband
"$BUILD_DIR"/tools/lowband data prepare brown --data-dir data
"$BUILD_DIR"/tools/lowband launch --config configs/brown-gpt.yaml --workers 4 --out "$RUN" "$@"
"$BUILD_DIR"/tools/lowband report "$RUN"
