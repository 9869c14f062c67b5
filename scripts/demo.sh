#!/usr/bin/env bash
# The main job on the embedded default: set-up, then `prospect demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m prospect demo "$@"
