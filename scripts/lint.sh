#!/usr/bin/env bash
# Lint, format check and type check of the Python tree: ruff (rules and format in pyproject.toml's
# [tool.ruff]) and mypy on the typed modules ([tool.mypy] files). Installs ruff and mypy, at the test
# extra's versions, where they are missing; needs no build, so CI runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
if ! "$PY" -m ruff --version >/dev/null 2>&1 || ! "$PY" -m mypy --version >/dev/null 2>&1; then
  mapfile -t tools < <("$PY" scripts/requirements.py test | grep -E '^(ruff|mypy)\b')
  "$PY" -m pip install -q --disable-pip-version-check "${tools[@]}"
fi
paths=(python tests benchmarks scripts)
"$PY" -m ruff check "${paths[@]}"
"$PY" -m ruff format --check "${paths[@]}"
"$PY" -m mypy
