#!/usr/bin/env bash
# Runs the original pipeline's own strategy tests against the installed prospect_core, with only
# `prospect.` replaced by `prospect_core.` in their imports. Their code is not part of this repository:
# point the script at a checkout of adibMosharrof/ProAssist.
#   usage: scripts/upstream_tests.sh PATH/TO/ProAssist [pytest args]
set -euo pipefail
src=${1:?usage: scripts/upstream_tests.sh PATH/TO/ProAssist [pytest args]}
shift
tests="$src/custom/src/prospect/tests"
[ -f "$tests/test_context_strategies.py" ] || { echo "no $tests/test_context_strategies.py" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in conftest.py test_context_strategies.py; do
  sed -E 's/^(\s*)(from|import) prospect\./\1\2 prospect_core./' "$tests/$f" > "$work/$f"
done
cd "$work"
HF_HUB_OFFLINE=1 "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@" .
