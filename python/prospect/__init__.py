"""prospect: a streaming vision-language runtime with a KV cache that lives across frames."""

import torch  # loads libtorch before the extension that links it

try:
    import prospect_core as core
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "prospect's C++ core (prospect_core) is not importable. Install torch first, then "
        "`pip install --no-build-isolation .` from the prospect checkout."
    ) from e

if core.__torch_version__ != torch.__version__.split("+")[0]:
    raise ImportError(
        f"prospect_core was built against torch {core.__torch_version__} but torch "
        f"{torch.__version__} is installed; rebuild with `pip install --no-build-isolation .`"
    )

from prospect.engine import Engine  # noqa: E402
from prospect.make_model import make_model  # noqa: E402
from prospect.model import load_model  # noqa: E402

KVCache = core.KVCache

__version__ = core.__version__
__all__ = ["Engine", "KVCache", "core", "load_model", "make_model", "__version__"]
