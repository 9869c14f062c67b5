#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, no torch) and runs each from its committed
# seed corpus. Usage: scripts/fuzz.sh [seconds per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
out=build/fuzz
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icpp)
targets=(safetensors config shard_index gguf)
# The torch-free parser library, as CMake's prospect_parsers builds it (the matcher aside).
parsers=(cpp/errors.cpp cpp/safetensors.cpp cpp/model_config.cpp cpp/shard_index.cpp cpp/gguf.cpp)
for target in "${targets[@]}"; do
  clang++ "${flags[@]}" tests/fuzz/fuzz_${target}.cpp "${parsers[@]}" -o "$out/fuzz_$target"
  work="$out/corpus_$target"  # new inputs land here; the committed seeds stay as they are
  mkdir -p "$work"
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  "$out/fuzz_$target" -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -timeout=10 -print_final_stats=1 \
    "$work" tests/fuzz/corpus/$target 2>&1 | tail -n 12
done
echo "fuzz: ${#targets[@]} targets, no crash"
