"""Loading a SmolVLM2 checkpoint into the native engine."""

from pathlib import Path

import torch

from prospect_core import _C as core

# The one table of dtype names. The model runs in DTYPES (what the CLI, the loaders, the backends and the
# mirrored API take); a KVCache may also hold float64. _C reads names through dtype_named, and the Python
# layer hands _C the torch.dtype, never the name.
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
DTYPES = ("float32", "bfloat16", "float16")
TORCH_DTYPES = {k: DTYPE_NAMES[k] for k in DTYPES}


def dtype_named(name, arg: str = "dtype") -> torch.dtype:
    """Any name in DTYPE_NAMES (what _C takes, e.g. for a KVCache) as a torch.dtype; a ValueError naming `arg`
    for anything else."""
    dt = DTYPE_NAMES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise ValueError(f"{arg} expected {', '.join(DTYPES)} or float64, got {name!r}")
    return dt


def torch_dtype_of(name, arg: str = "dtype") -> torch.dtype:
    """The torch.dtype a name in DTYPES stands for; a ValueError naming `arg` for anything else."""
    dt = TORCH_DTYPES.get(name) if isinstance(name, str) else None
    if dt is None:
        raise ValueError(f"{arg} expected one of {', '.join(DTYPES)}, got {name!r}")
    return dt


def dtype_name(torch_dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' from a torch.dtype or its name; None (or "auto") means float32."""
    if torch_dtype is None or torch_dtype == "auto":
        return "float32"
    for name, dt in TORCH_DTYPES.items():
        if torch_dtype == name or torch_dtype is dt:
            return name
    raise ValueError(f"torch_dtype expected one of {', '.join(DTYPES)} (or the torch dtype), got {torch_dtype!r}")


def resolve_model_path(model_name, cache_dir=None) -> Path:
    """A local folder, or a Hugging Face id already in the local HF cache (or `cache_dir`); never downloaded."""
    p = Path(model_name).expanduser()
    if p.is_dir():
        return check_model_folder(p)
    name = str(model_name)
    if p.exists():
        raise NotADirectoryError(f"model_name expected a checkpoint folder, got the file '{name}'")
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True, cache_dir=cache_dir))
        except Exception as e:  # not in the cache, or no huggingface_hub
            raise FileNotFoundError(
                f"model_name '{name}' is neither a folder nor in the local Hugging Face cache. Download it where a "
                f"network is available (`huggingface-cli download {name}`), or point at a local folder; "
                f"`prospect make-model DIR --preset tiny` makes a random-weight one."
            ) from e
    raise FileNotFoundError(
        f"model_name expected a checkpoint folder or a Hugging Face id, got '{name}' (no such folder)"
    )


def check_model_folder(path: Path) -> Path:
    """Refuses a folder holding a FIFO, socket or device: opening one for reading waits forever for a writer."""
    for entry in path.iterdir():
        if entry.exists() and not (entry.is_file() or entry.is_dir()):
            raise ValueError(
                f"model_name: '{entry}' expected a regular file, got a special file (FIFO, socket or "
                "device); a checkpoint folder holds regular files only"
            )
    return path


def rope_theta(text_config) -> float:
    """rope_theta of a text config: transformers 5 keeps it in rope_parameters, 4.x beside them."""
    params = getattr(text_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(text_config, "rope_theta", None) or 10000.0)


def load_model(path, dtype: str = "float32", device: str = "cpu", weights: str = "dense") -> core.SmolVLM:
    """Loads a Hugging Face SmolVLM2 folder into the C++ engine; weights are cast once, here. dtype: a name
    in DTYPES. weights: "dense" (as stored), "bf16" (the decoder kept in bf16, widened as read), "int8" (the
    decoder quantized to Q8_0 at load) or "gguf" (the decoder's blocks from the folder's model.gguf, as
    stored); all but "dense" need float32 on the CPU, and "int8" and "gguf" also run the vision tower's
    products in int8 (oneDNN) and, on CPUs that multiply bf16 in hardware, its attention's scores in int8
    and weighted sums in bf16."""
    torch_dtype = torch_dtype_of(dtype)
    if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but torch sees no CUDA device")
    return core.SmolVLM(str(resolve_model_path(path)), torch_dtype, device, weights)
