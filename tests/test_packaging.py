"""What `pip install .` puts on a machine: one package, prospect_core, with the core inside it."""

import importlib.metadata as md
import subprocess
import sys

import torch

import prospect_core


def test_one_package_and_no_top_level_prospect():
    files = [str(f) for f in md.files("prospect-core")]
    tops = {f.split("/")[0] for f in files if not f.startswith(("prospect_core-", "../", "bin/"))}
    assert tops == {"prospect_core"}, tops
    assert any(f.startswith("prospect_core/_C.") and f.endswith(".so") for f in files)
    ep = [e for e in md.entry_points(group="console_scripts") if e.name == "prospect"]
    assert [e.value for e in ep] == ["prospect_core.cli:main"]


def test_requires_the_torch_series_it_was_built_with():
    series = ".".join(prospect_core.__torch_version__.split(".")[:2])
    assert series == ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert f"torch=={series}.*" in md.requires("prospect-core")
    assert prospect_core.__version__ == md.version("prospect-core")  # one version, from pyproject


def test_the_cores_names_are_importable_from_the_package():
    from prospect_core import KVCache, SmolVLM, drop_all, drop_middle, joint_embed, rope_shift_  # noqa: F401

    assert prospect_core.KVCache is prospect_core._C.KVCache


def test_the_prospect_command_runs():
    r = subprocess.run([sys.executable, "-m", "prospect_core", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "compare" in r.stdout
