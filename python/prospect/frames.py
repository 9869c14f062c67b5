"""Frames in, pixel_values out: one SmolVLM2 video frame per step."""

import numpy as np
import torch


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


class FramePreprocessor:
    """The checkpoint's own image processor, with tile splitting off by default (video mode)."""

    def __init__(self, processor, split_frames: bool = False):
        self.image_processor = processor.image_processor
        self.split = split_frames

    def __call__(self, frame, where="frame"):
        img = to_hwc_uint8(frame, where)
        out = self.image_processor(images=[[img]], do_image_splitting=self.split, return_tensors="pt",
                                   return_row_col_info=True)
        rows, cols = out["rows"][0][0], out["cols"][0][0]
        return out["pixel_values"], out.get("pixel_attention_mask"), rows, cols
