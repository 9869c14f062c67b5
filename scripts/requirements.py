"""Prints the Python requirements named in pyproject.toml, one per line.

usage: python scripts/requirements.py [extra ...] | --no-deps
Build requirements, the CI pins, the runtime dependencies and the given extras
(or, with --no-deps, the packages to install without their dependencies):
pyproject.toml stays the one place where versions are pinned or bounded.
"""

import sys
import tomllib
from pathlib import Path

meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
if sys.argv[1:] == ["--no-deps"]:
    print("\n".join(meta["tool"]["prospect"]["no-deps"]))
    sys.exit(0)
reqs = list(meta["build-system"]["requires"]) + list(meta["tool"]["prospect"]["ci-pins"])
reqs += meta["project"].get("dependencies", [])
reqs += meta["tool"]["scikit-build"]["metadata"]["dependencies"]["requires"]  # beside the torch pin
for extra in sys.argv[1:]:
    reqs += meta["project"]["optional-dependencies"][extra]
print("\n".join(dict.fromkeys(reqs)))
