#!/usr/bin/env bash
# The whole test suite: set-up, GoogleTest through ctest, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k rope).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PY=${PYTHON:-python3}
tag=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
build=$(ls -d build/"$tag"-*/ | head -n 1)
ctest --test-dir "$build" --output-on-failure

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -m pytest -q tests "$@"
