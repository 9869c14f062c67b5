"""Frames in, pixel_values out: one SmolVLM2 video frame per step."""

import numpy as np
import torch

from prospect_core import _C as core


def to_hwc_uint8(frame, where: str) -> np.ndarray:
    """A PIL image, a numpy array or a tensor (HxWx3 or 3xHxW, uint8, or float in [0, 1]) -> HxWx3 uint8."""
    if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{where} expected a PIL image, numpy array or tensor, got {type(frame).__name__}")
    if frame.ndim != 3:
        raise ValueError(f"{where} expected a 3-D image (HxWx3 or 3xHxW), got shape {tuple(frame.shape)}")
    if frame.shape[-1] != 3 and frame.shape[0] == 3:
        frame = frame.transpose(1, 2, 0)
    if frame.shape[-1] != 3:
        raise ValueError(f"{where} expected 3 colour channels, got shape {tuple(frame.shape)}")
    if frame.dtype != np.uint8:
        if not np.issubdtype(frame.dtype, np.floating):
            raise TypeError(f"{where} expected uint8 or float pixels, got dtype {frame.dtype}")
        if frame.size and (np.nanmin(frame) < 0 or np.nanmax(frame) > 1 or np.isnan(frame).any()):
            raise ValueError(f"{where} expected float pixels in [0, 1], got values outside it")
        frame = (frame * 255).round().astype(np.uint8)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{where} expected a non-empty image, got shape {tuple(frame.shape)}")
    return np.ascontiguousarray(frame)


THUMBNAIL = 32  # frame_change compares frames at this many pixels a side


def thumbnail(frame, where: str) -> torch.Tensor:
    """A frame as a THUMBNAIL x THUMBNAIL grey image in [0, 1]: what frame_change compares (cheap, and blind
    to sensor noise that averages out)."""
    grey = torch.from_numpy(to_hwc_uint8(frame, where)).float().mean(-1) / 255.0
    return torch.nn.functional.adaptive_avg_pool2d(grey[None, None], THUMBNAIL)[0, 0]


def frame_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two thumbnails, in [0, 1] of the pixel range."""
    return float((a - b).abs().mean())


class FramePreprocessor:
    """A frame as the checkpoint's SmolVLM2 video processor would make it, done in C++
    (prospect_core.preprocess_frame). split_frames=True uses the image processor's tiles instead."""

    def __init__(self, processor, split_frames: bool = False):
        self.image_processor = processor.image_processor
        self.split = split_frames
        vp = processor.video_processor
        self.longest_edge = int(vp.size["longest_edge"])
        self.image_size = int(vp.max_image_size["longest_edge"])
        self.mean = [float(x) for x in vp.image_mean]
        self.std = [float(x) for x in vp.image_std]
        self.resample = _resample_name(vp.resample)

    def __call__(self, frame, where="frame"):
        img = to_hwc_uint8(frame, where)
        if self.split:
            out = self.image_processor(
                images=[[img]], do_image_splitting=True, return_tensors="pt", return_row_col_info=True
            )
            return out["pixel_values"], out.get("pixel_attention_mask"), out["rows"][0][0], out["cols"][0][0]
        pv = core.preprocess_frame(
            torch.from_numpy(img), self.longest_edge, self.image_size, self.mean, self.std, self.resample
        )
        return pv, None, 0, 0


def _resample_name(resample) -> str:
    """transformers resizes video frames with LANCZOS where torchvision >= 0.27 supports it, else BICUBIC."""
    import torchvision  # the hf extra's; only this version check needs it

    lanczos = int(resample) == 1
    major, minor = (int(x) for x in torchvision.__version__.split("+")[0].split(".")[:2])
    return "lanczos" if lanczos and (major, minor) >= (0, 27) else "bicubic"
