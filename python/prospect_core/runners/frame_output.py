"""FrameOutput: one frame's result. ProAssist's own class when `mmassist` is importable, else one with the same
fields."""

from dataclasses import asdict, dataclass

try:
    from mmassist.eval.runners.stream_inference import FrameOutput
except ImportError:

    @dataclass
    class FrameOutput:
        gen: str
        ref: str | None = None
        image: object = None
        text_inputs: list | None = None
        frame_idx_in_stream: int | None = None
        frame_idx_in_original_video: int | None = None
        timestamp_in_stream: float | None = None

        def to_dict(self, ignore_keys="image") -> dict:
            d = asdict(self)
            for k in [ignore_keys] if isinstance(ignore_keys, str) else (ignore_keys or []):
                d.pop(k, None)
            return d


__all__ = ["FrameOutput"]
