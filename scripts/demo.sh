#!/usr/bin/env bash
# The main job on the embedded default: set-up, a tiny random-weight SmolVLM2 made locally,
# then every context strategy over the bundled sample videos, and the summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODEL=build/models/tiny
[ -f "$MODEL/config.json" ] || "$PY" -m prospect make-model "$MODEL" --preset tiny
exec "$PY" -m prospect compare --dataset sample --model "$MODEL" --out outputs/sample \
  --max-seq-len 1024 --reserved-seq-len 128 --last-keep-len 256 --summary-max-length 64 \
  --max-new-tokens 24 "$@"
