#!/usr/bin/env bash
# Fails if any of lowband's C++ files differ from .clang-format (fix with: deploy/check-format.sh --fix).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.h' '*.cc' '*.cu' | grep -v -E '^(build|third_party)/')
[ ${#files[@]} -eq 0 ] && exit 0
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/lowband-format.log; then
  grep -E "^[^ ].*: (warning|error)" /tmp/lowband-format.log | cut -d: -f1 | sort -u | sed 's/^/unformatted: /' >&2
  echo "check-format: run deploy/check-format.sh --fix" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
