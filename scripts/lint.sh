#!/usr/bin/env bash
# Lint, format check and type check of the Python tree: ruff (rules and format in pyproject.toml's
# [tool.ruff]) and mypy on the typed modules ([tool.mypy] files). Needs the test extra's ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
paths=(python tests benchmarks scripts)
"$PY" -m ruff check "${paths[@]}"
"$PY" -m ruff format --check "${paths[@]}"
"$PY" -m mypy
