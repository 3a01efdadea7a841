#!/usr/bin/env bash
# Sets up this machine, builds lowband and runs the whole test suite (what CI runs: .ci/run).
#   deploy/test.sh                 Release build in build/, all tests
#   BUILD_DIR=build-asan SANITIZE=address deploy/test.sh    the same under ASan+UBSan
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
SANITIZE=${SANITIZE:-}
JOBS=${JOBS:-$(nproc)}

deploy/install-deps.sh
deploy/check-format.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBAND_SANITIZE="$SANITIZE"
cmake --build "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$JOBS" --timeout 900
