#!/usr/bin/env bash
# The GPU checks in one run on a lent GPU machine (see README, "On a GPU"): builds the extension
# there, runs the GPU benchmarks and the cuda-marked tests, and leaves at most 8 files in $OUT:
#   summary.md  build.log  pytest.log  junit-cuda.xml  bench.log  gpu-<date>.json  gpu-<date>.md
# It needs .carry/ from scripts/device_prepare.sh (headers and wheels the GPU machine lacks).
# Without a GPU, or with --dry-run, the same steps run with the GPU parts skipped, each saying why;
# tests/test_device_check.py runs it so on every test run.
# usage: OUT=<dir> bash scripts/device_check.sh [--dry-run]   (OUT defaults to build/device-check)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/build/device-check}
SITE=${SITE:-/tmp/prospect-device-site}  # the build is installed here, not over the machine's packages
mkdir -p "$OUT"
: >"$OUT/summary.md"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore
start=$(date +%s)
failed=0

note() { echo "- $(($(date +%s) - start)) s: $*" | tee -a "$OUT/summary.md"; }
# step NAME LOG CMD...: runs CMD with its output in LOG, notes the outcome.
step() {
  local name=$1 log=$2 t0=$(date +%s) rc
  shift 2
  "$@" >>"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then note "$name: ok ($(($(date +%s) - t0)) s)"; else note "$name: FAILED, exit $rc ($(($(date +%s) - t0)) s; see $(basename "$log"))"; failed=1; fi
  return $rc
}

dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
gpu=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$gpu" != 1 ]; then
  dry=1
  note "no CUDA device: a dry run (GPU parts skipped)"
fi
echo "# device check, $(date -u +%Y-%m-%dT%H:%MZ)" >>"$OUT/summary.md"
note "python $("$PY" -c 'import platform; print(platform.python_version())'), torch $("$PY" -c 'import torch; print(torch.__version__)'), nproc $(nproc)"
[ "$gpu" = 1 ] && note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"

# Carried wheels (the server's packages) and headers: the GPU machine has no index and no -dev packages.
if [ "$dry" = 0 ] && [ -d .carry/whl ]; then
  step "carried wheels" "$OUT/build.log" "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/prospect-wheels .carry/whl/*.whl
  export PYTHONPATH=/tmp/prospect-wheels${PYTHONPATH:+:$PYTHONPATH}
else
  note "carried wheels: skipped ($([ "$dry" = 1 ] && echo "dry run: this machine has its packages" || echo "no .carry/whl; run scripts/device_prepare.sh first"))"
fi
cmake_args=()
if [ -d .carry/include ]; then
  cmake_args+=("-DPROSPECT_NLOHMANN_INCLUDE_DIR=$PWD/.carry/include" "-DPROSPECT_EIGEN_INCLUDE_DIR=$PWD/.carry/include/eigen3")
fi
if [ "$dry" = 0 ]; then
  # Only what the GPU run needs, for this GPU's architecture: the build must leave time for the checks.
  arch=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
  cmake_args+=(-DPROSPECT_BUILD_TESTS=OFF -DPROSPECT_WITH_OPENCV=OFF "-DPROSPECT_CUDA_ARCHITECTURES=$arch")
fi

# Build with every core (ninja, through scikit-build-core), installed into $SITE.
rm -rf "$SITE"
CMAKE_ARGS="${cmake_args[*]}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  step build "$OUT/build.log" "$PY" -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps --target "$SITE" . ||
  { note "no build: stopping"; exit 1; }
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
note "$("$PY" -c 'import prospect_core._C as c; print(f"built: has_cuda_graphs={c.has_cuda_graphs} has_cuda_kernels={c.has_cuda_kernels}")' 2>&1)"

# The GPU benchmarks (benchmarks/gpu.py) first, on a quiet machine: a test worker still exiting would skew
# their timings. A dry run takes the --quick path, which says why it skips.
bench=(--device cuda --out "$OUT")
[ "$dry" = 1 ] && bench+=(--quick)
step "benchmarks --device cuda" "$OUT/bench.log" timeout 200 "$PY" benchmarks/run.py "${bench[@]}"
tail -n 5 "$OUT/bench.log" | sed 's/^/  /' | tee -a "$OUT/summary.md"
for md in "$OUT"/gpu-*.md; do [ -f "$md" ] && cat "$md"; done

# The cuda-marked tests (on a dry run they are collected and skipped by tests/conftest.py).
# Only the files that hold cuda tests: the others may import what the GPU machine lacks (openai, omegaconf).
mapfile -t cuda_files < <(grep -l "mark.cuda" tests/test_*.py)
# In 8 worker processes (pytest-xdist, where installed): faster, and a crash fails one test, not the run.
xdist=()
"$PY" -c "import xdist" 2>/dev/null && [ "$dry" = 0 ] && xdist=(-n 8)
step "pytest -m cuda" "$OUT/pytest.log" timeout -k 10 130 "$PY" -m pytest -q -m cuda -rfEs --tb=short -p no:cacheprovider "${xdist[@]}" \
  --junitxml="$OUT/junit-cuda.xml" "${cuda_files[@]}"
{ grep -E "^(FAILED|ERROR) " "$OUT/pytest.log" | cut -c1-300 | head -n 40; tail -n 1 "$OUT/pytest.log"; } | sed 's/^/  /' | tee -a "$OUT/summary.md"

note "done, $([ $failed = 0 ] && echo "every step passed" || echo "some step FAILED")"
exit $failed
