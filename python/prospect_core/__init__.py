"""prospect_core: a streaming vision-language runtime with a KV cache that lives across frames.

The compiled core is `prospect_core._C`; its names (KVCache, drop_middle, joint_embed, SmolVLM, ...)
are importable from here too.
"""

import torch  # loads libtorch before the extension that links it

try:
    from prospect_core import _C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "prospect_core's compiled core (prospect_core._C) is not importable: reinstall with `pip install .` "
        f"from the prospect checkout ({e})"
    ) from e


def _series(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


if _series(_C.__torch_version__) != _series(torch.__version__):
    raise ImportError(
        f"prospect_core was built against torch {_C.__torch_version__} but torch {torch.__version__} is "
        "installed; rebuild with `pip install --no-build-isolation .` (or `pip install .`)"
    )

from prospect_core._C import *  # noqa: E402,F401,F403 - the core's names, as before the move
from prospect_core._C import KVCache, __torch_version__, __version__  # noqa: E402,F401
from prospect_core.engine import Engine  # noqa: E402
from prospect_core.model import load_model  # noqa: E402
from prospect_core.tools.make_model import make_model  # noqa: E402

core = _C  # the old spelling `prospect.core`
has_opencv = getattr(_C, "has_opencv", False)

__all__ = ["Engine", "KVCache", "core", "load_model", "make_model", "__version__"]
