#!/usr/bin/env bash
# Sets up this machine, builds lowband and runs the main job.
# Until the training job lands this is the codec benchmark (lowband bench quant).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
deploy/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j "$(nproc)" --target lowband
"$BUILD_DIR"/tools/lowband bench quant "$@"
