#!/usr/bin/env bash
# Installs everything prospect needs on a fresh Debian machine, then builds and
# installs it. Idempotent: what is already there at the right version is kept,
# and an unchanged tree rebuilds from the build dir and ccache in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# System libraries: compilers (clang and its sanitizer/fuzzer runtime for CI), clang-format (scripts/lint_cpp.sh),
# GoogleTest, OpenCV, Eigen, nlohmann-json, opencv-doc for its sample videos, and Java for pycocoevalcap (PTB
# tokenizer, METEOR).
APT_PACKAGES=(g++ clang libclang-rt-14-dev clang-format cmake ninja-build ccache git libgtest-dev libopencv-dev
  libeigen3-dev nlohmann-json3-dev opencv-doc procps
  default-jre-headless)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
# Python packages, versions from pyproject.toml; pip skips what is already satisfied.
mapfile -t reqs < <("$PY" scripts/requirements.py hf serve test)
"$PY" -m pip install -q --disable-pip-version-check "${reqs[@]}"
mapfile -t bare < <("$PY" scripts/requirements.py --no-deps)
"$PY" -m pip install -q --disable-pip-version-check --no-deps "${bare[@]}"

# The package was called `prospect` before it became `prospect_core`: an old install would shadow
# the original pipeline's own `prospect` package, so it goes.
if "$PY" -m pip show prospect 2>/dev/null | grep -q "^Summary: Streaming vision-language runtime"; then
  "$PY" -m pip uninstall -q -y prospect
fi

# ccache hits across clones: paths relative to the checkout, cwd not hashed.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
# The extension is built against the torch just installed, so no build isolation.
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
