"""Where a frame's vision encoder time goes: the torch profiler's table for prospect's image_features
(and transformers' get_image_features with --transformers), on one preprocessed vtest.avi frame.

usage: python benchmarks/profile_vision.py [--model build/models/256m] [--weights int8] [--transformers] [--rows 12]
"""

import argparse
import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "build" / "models" / "256m"))
    ap.add_argument("--transformers", action="store_true", help="profile transformers' encoder instead")
    ap.add_argument("--weights", default="dense", help="prospect's weights: dense, int8 (int8 products in the tower)")
    ap.add_argument("--rows", type=int, default=12)
    a = ap.parse_args()

    from transformers import AutoProcessor

    import prospect_core as core
    from prospect_core.frames import FramePreprocessor

    frame = next(iter(core.VideoReader(VIDEO, 2.0)))[1]
    pv = FramePreprocessor(AutoProcessor.from_pretrained(a.model))(frame)[0]
    if a.transformers:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(a.model).eval()
        run = lambda: model.model.get_image_features(pv)  # noqa: E731
    else:
        import prospect_core

        model = prospect_core.load_model(a.model, weights=a.weights)
        run = lambda: model.image_features(pv)  # noqa: E731
    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as p:
        run()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
