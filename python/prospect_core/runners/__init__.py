"""Runners: StreamRunner (prospect's own) and VLMStreamRunner (the original pipeline's, mirrored)."""

from prospect_core.runners.stream_runner import StreamRunner

__all__ = ["StreamRunner", "VLMStreamRunner"]


def __getattr__(name):  # VLMStreamRunner pulls in transformers' processor: imported when asked for
    if name == "VLMStreamRunner":
        from prospect_core.runners.vlm_stream_runner import VLMStreamRunner

        return VLMStreamRunner
    raise AttributeError(f"module 'prospect_core.runners' has no attribute {name!r}")
