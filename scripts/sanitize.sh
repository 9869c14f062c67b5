#!/usr/bin/env bash
# The C++ tests again, built with AddressSanitizer and UndefinedBehaviorSanitizer, in build/asan; then the
# thread pool under ThreadSanitizer.
# libtorch is not instrumented; leaks it reports at exit are suppressed by name in
# tests/sanitizers/lsan.supp, never ours. The CUDA decode is left out: it never runs without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1  # cache hits across clones
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROSPECT_WITH_CUDA=OFF -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" > build/asan.log
cmake --build build/asan --target prospect_tests >> build/asan.log
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
./build/asan/prospect_tests --gtest_brief=1

# The thread pool's publishing and claiming under ThreadSanitizer. Only its own source and test are
# instrumented (libtorch is not, and no ATen-heavy source is rebuilt), so this takes seconds.
torch_dir=$("$PY" -c "import os, torch; print(os.path.dirname(torch.__file__))")
abi=$("$PY" -c "import torch; print(int(torch.compiled_with_cxx11_abi()))")
g++ -fsanitize=thread -O1 -g -fopenmp -std=gnu++20 -D_GLIBCXX_USE_CXX11_ABI="$abi" -Icpp -isystem "$torch_dir/include" \
  cpp/thread_pool.cpp tests/cpp/test_thread_pool.cpp -o build/tsan_pool_tests \
  -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" -lgtest_main -lgtest -ltorch_cpu -lc10 -lpthread
TSAN_OPTIONS=halt_on_error=1 ./build/tsan_pool_tests --gtest_brief=1
