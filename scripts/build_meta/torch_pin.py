"""scikit-build-core metadata hook: the wheel requires the torch series it was compiled against.

The extension links libtorch, whose C++ ABI changes between minor releases, so
`torch>=2.11` would let pip pair a wheel built on 2.14 with torch 2.11. An
isolated `pip install .` builds against the series in [build-system] requires;
`pip install --no-build-isolation .` builds against the torch already installed.
Either way the installed package then asks for that same series.
"""

import re


def dynamic_metadata(field, settings):
    if field != "dependencies":
        raise ValueError(f"torch_pin provides 'dependencies', not {field!r}")
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            "prospect-core's build needs torch importable: install it first, or let pip build "
            "in isolation (plain `pip install .`)"
        ) from e
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return [f"torch=={m.group(1)}.{m.group(2)}.*", *settings.get("requires", [])]
