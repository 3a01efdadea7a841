#!/usr/bin/env bash
# Builds lowband's libFuzzer targets (clang, ASan+UBSan, torch-free) and runs them.
#   deploy/fuzz.sh                 configure and build in $BUILD_DIR (default build-fuzz), then the
#                                  bounded smoke runs (ctest -L fuzz: a fixed number of inputs each)
#   deploy/fuzz.sh --long SECONDS  build the same way, then run every fuzz target for SECONDS each,
#                                  growing a corpus per target in $BUILD_DIR/fuzz-corpus/<target>,
#                                  and print the number of executions each reached
# Environment: BUILD_DIR (build-fuzz), JOBS (parallel build jobs; nproc), FUZZ_ARGS (extra libFuzzer
# flags for --long, e.g. "-max_len=8192"). Logs of --long runs: $BUILD_DIR/fuzz-logs/; a
# crashing input is written to $BUILD_DIR/fuzz-artifacts/ (replay: $BUILD_DIR/<path>/<target> FILE).
# Idempotent: a second run reconfigures and rebuilds incrementally and reuses (and grows) the corpora.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
FUZZ_ARGS=${FUZZ_ARGS:-}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

seconds=""
case "${1:-}" in
  "") ;;
  --long)
    seconds=${2:-}
    if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
      echo "fuzz: --long needs a positive number of seconds, got '${seconds}'" >&2
      exit 2
    fi
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    echo "fuzz: unknown argument '$1'" >&2
    usage >&2
    exit 2
    ;;
esac

for tool in clang clang++ cmake ninja; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fuzz: $tool is not installed (deploy/install-deps.sh installs it)" >&2
    exit 1
  fi
done

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
cmake --build "$BUILD_DIR" -j "$JOBS" --target lowband_fuzz

if [ -z "$seconds" ]; then
  cd "$BUILD_DIR"
  exec ctest -L fuzz --output-on-failure
fi

# Every fuzz executable the build made (tests/<dir>/fuzz_*), in a stable order.
mapfile -t targets < <(find "$BUILD_DIR/tests" -path '*/CMakeFiles' -prune -o -type f -name 'fuzz_*' \
  -perm -u+x -print | sort)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets under $BUILD_DIR/tests" >&2
  exit 1
fi

read -r -a extra <<<"$FUZZ_ARGS"
mkdir -p "$BUILD_DIR/fuzz-logs" "$BUILD_DIR/fuzz-artifacts"
failed=0
summary=()
for exe in "${targets[@]}"; do
  name=$(basename "$exe")
  corpus="$BUILD_DIR/fuzz-corpus/$name"
  log="$BUILD_DIR/fuzz-logs/$name.log"
  mkdir -p "$corpus"
  echo "fuzz: $name for ${seconds} s (corpus $corpus, log $log)"
  rc=0
  "$exe" -max_total_time="$seconds" -timeout=60 -print_final_stats=1 \
    -artifact_prefix="$BUILD_DIR/fuzz-artifacts/$name-" "${extra[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  units=$(find "$corpus" -type f | wc -l)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc; see $log)"
    failed=1
    tail -n 40 "$log" >&2
  fi
  summary+=("$(printf '%-24s %12s executions %8s exec/s %7s corpus files  %s' \
    "$name" "${execs:-?}" "${rate:-?}" "$units" "$result")")
done

echo
echo "fuzz: ${seconds} s per target"
printf '%s\n' "${summary[@]}"
exit "$failed"
