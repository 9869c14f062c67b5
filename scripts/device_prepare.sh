#!/usr/bin/env bash
# Fills .carry/ (git-ignored) for scripts/device_check.sh on the lent GPU machine, which has neither
# a package index nor the JSON and Eigen C++ headers: copies Debian's nlohmann-json and Eigen headers
# and downloads, for Python 3.12, the wheels of the Python packages the server tests need there
# (the versions installed here). Run it here, then name .carry in the device call's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .carry
mkdir -p .carry/include .carry/whl
cp -r /usr/include/nlohmann .carry/include/
mkdir -p .carry/include/eigen3
cp -r /usr/include/eigen3/Eigen .carry/include/eigen3/
pins=()
for p in fastapi starlette pydantic pydantic_core annotated-types annotated-doc typing-inspection typing_extensions \
  opentelemetry-api num2words uvicorn; do
  pins+=("$p==$("$PY" -m pip show "$p" | sed -n 's/^Version: //p')")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .carry/whl "${pins[@]}"
du -sh .carry
