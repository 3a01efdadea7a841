#!/usr/bin/env bash
# Sets up this machine, builds lowband and runs the whole test suite (what CI runs: .ci/run).
#   deploy/test.sh            build in build/; first the libFuzzer targets (deploy/fuzz.sh: clang,
#                             ASan+UBSan, torch-free, in build-fuzz/) each run for FUZZ_SECONDS;
#                             then all tests (ctest's summary is the last line)
#   BUILD_DIR=build-asan SANITIZE=address FUZZ=0 deploy/test.sh    the tests under ASan+UBSan (.ci/asan)
# Environment:
#   BUILD_DIR      build directory (build)
#   SANITIZE       '' | address (ASan+UBSan) | thread (TSan); sanitizer runs read the suppressions
#                  in deploy/sanitizers/ (LibTorch and other uninstrumented system libraries only)
#   WITH_TORCH     ON | OFF: build the LibTorch parts (ON; .ci/tsan builds without them)
#   TESTS          a ctest -R regular expression: run only the tests it matches (all)
#   TESTS_EXCLUDE  a ctest -E regular expression: leave out the tests it matches (none)
#   FUZZ           1 | 0: build and run the fuzz targets first (1)
#   FUZZ_SECONDS   seconds per fuzz target (15), from the corpora in build-fuzz/fuzz-corpus/
#   JOBS           parallel build and test jobs (nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
SANITIZE=${SANITIZE:-}
WITH_TORCH=${WITH_TORCH:-ON}
TESTS=${TESTS:-}
TESTS_EXCLUDE=${TESTS_EXCLUDE:-}
FUZZ=${FUZZ:-1}
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
JOBS=${JOBS:-$(nproc)}

deploy/install-deps.sh
deploy/check-format.sh
if [ "$FUZZ" != 0 ]; then
  start=$SECONDS
  BUILD_DIR=build-fuzz JOBS="$JOBS" deploy/fuzz.sh --long "$FUZZ_SECONDS"
  echo "test: fuzz build and runs took $((SECONDS - start)) s"
fi

# Sanitizer runtime options; options already in the environment come after ours and win.
san=$PWD/deploy/sanitizers
case "$SANITIZE" in
  address)
    export ASAN_OPTIONS="suppressions=$san/asan.supp:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export LSAN_OPTIONS="suppressions=$san/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
    export UBSAN_OPTIONS="suppressions=$san/ubsan.supp:print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
    ;;
  thread)
    export TSAN_OPTIONS="suppressions=$san/tsan.supp:second_deadlock_stack=1:halt_on_error=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
    ;;
esac

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBAND_SANITIZE="$SANITIZE" \
  -DLOWBAND_WITH_TORCH="$WITH_TORCH"
cmake --build "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$JOBS" --timeout 900 ${TESTS:+-R "$TESTS"} ${TESTS_EXCLUDE:+-E "$TESTS_EXCLUDE"}
