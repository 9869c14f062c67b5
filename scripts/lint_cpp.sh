#!/usr/bin/env bash
# Checks that the C++ sources are formatted as .clang-format says; prints what differs and fails if
# anything does. Fix with: clang-format -i <files> (the same file list as below).
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if ! command -v "$CLANG_FORMAT" > /dev/null; then
  echo "lint_cpp: $CLANG_FORMAT not found (apt-get install clang-format, or run scripts/setup.sh)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files -co --exclude-standard 'cpp/*.h' 'cpp/*.cpp' 'cpp/*.cu' 'tests/cpp/*.cpp' 'tests/fuzz/*.cpp')
"$CLANG_FORMAT" --dry-run --Werror "${files[@]}"
echo "lint_cpp: ${#files[@]} files formatted"
