"""VideoReader and frame preprocessing on real videos from Debian's opencv-doc package."""

import warnings
from pathlib import Path

import pytest
import torch

import prospect_core as pc
from stream_fixtures import small_runner

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
pytestmark = pytest.mark.skipif(not pc.has_opencv, reason="prospect_core built without OpenCV")


def read_all(path, fps=2.0):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        frames = list(pc.VideoReader(str(path), fps))
    return frames, [str(x.message) for x in w]


def test_samples_at_target_fps_by_timestamp():
    r = pc.VideoReader(str(DATA / "vtest.avi"), 2.0)
    assert (r.width, r.height, r.native_fps, r.header_frames) == (768, 576, 10.0, 795)
    frames, warns = read_all(DATA / "vtest.avi")
    assert warns == [] and len(frames) == 159  # 79.5 s at 2 fps
    times = [t for t, _ in frames]
    assert times[:3] == [0.0, 0.5, 1.0] and all(b > a for a, b in zip(times, times[1:]))
    t, f = frames[10]
    assert f.shape == (576, 768, 3) and f.dtype == torch.uint8 and f.is_contiguous()
    assert 40 < f.float().mean().item() < 220  # a real picture, not a blank buffer


def test_broken_stream_ends_with_a_warning():
    frames, warns = read_all(DATA / "tree.avi")
    assert len(frames) == 9  # 68 decodable frames at 15 fps, sampled at 2 fps
    assert len(warns) == 1 and "stopped decoding after 68 of the 444 frames" in warns[0]


def test_buggy_stream_decodes():
    frames, _ = read_all(DATA / "Megamind_bugy.avi")
    assert len(frames) == 18 and all(f.shape == (528, 720, 3) for _, f in frames)


def test_missing_empty_and_not_video(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: '.*nope.avi'"):
        pc.VideoReader(str(tmp_path / "nope.avi"))
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.avi' is empty"):
        pc.VideoReader(str(tmp_path / "empty.avi"))
    (tmp_path / "text.avi").write_text("this is not a video\n" * 100)
    with pytest.raises(ValueError, match="text.avi' (could not be opened|has no video stream)"):
        read_all(tmp_path / "text.avi")
    with pytest.raises(ValueError, match="fps expected > 0"):
        pc.VideoReader(str(DATA / "vtest.avi"), 0.0)


def test_damaged_copies(tmp_path):
    src = (DATA / "Megamind.avi").read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(src[: len(src) // 3])
    frames, warns = read_all(truncated)
    assert 0 < len(frames) < 23 and any("stopped decoding" in w for w in warns)
    overwritten = tmp_path / "overwritten.avi"
    data = bytearray(src)
    for off in range(len(data) // 4, len(data) // 2, 997):
        data[off : off + 64] = bytes(64)  # zero 64-byte runs through the middle
    overwritten.write_bytes(bytes(data))
    frames, _ = read_all(overwritten)  # decodes with errors, but does not crash
    assert all(f.shape == (528, 720, 3) for _, f in frames)


def test_preprocess_matches_the_video_processor(tiny_model, tmp_path):
    """Pixel values of real frames against transformers' SmolVLM2 video processor (512 px, 256m preset)."""
    from transformers import AutoProcessor

    import prospect_core
    from prospect_core.frames import FramePreprocessor

    path = prospect_core.make_model(
        tmp_path / "m",
        "tiny",
        overrides={"vision_config.image_size": 512, "vision_config.patch_size": 16, "scale_factor": 4},
    )
    proc = AutoProcessor.from_pretrained(path)
    pre = FramePreprocessor(proc)
    diffs = []
    for name in ("vtest.avi", "Megamind.avi", "tree.avi"):
        for _, frame in list(pc.VideoReader(str(DATA / name), 0.5))[:2]:
            ref = proc.video_processor(
                videos=[frame.permute(2, 0, 1)[None]], do_sample_frames=False, return_tensors="pt"
            )["pixel_values"]
            got, _, _, _ = pre(frame)
            assert got.shape == ref.shape == (1, 1, 3, 512, 512)
            diffs.append(((got - ref) * 0.5 * 255).abs())  # back on the 0-255 scale, before normalisation
    d = torch.cat([x.flatten() for x in diffs])
    assert d.mean().item() < 1.0  # measured here: mean 0.004, max 2 (lanczos, torchvision 0.29)
    assert d.max().item() <= 4


def test_runner_reads_video_path(tiny_model):
    r = small_runner(tiny_model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = r.run_inference_on_video(
            {"video_id": "tree", "video_path": str(DATA / "tree.avi"), "fps": 2.0, "conversation": []}
        )
    assert out["totals"]["frames_processed"] == 9
    assert any("stopped decoding" in str(x.message) for x in w)


def test_preprocess_errors():
    with pytest.raises(ValueError, match=r"frame expected \[H, W, 3\]"):
        pc.preprocess_frame(torch.zeros(4, 4, dtype=torch.uint8), 64, 64)
    with pytest.raises(TypeError, match="frame expected uint8"):
        pc.preprocess_frame(torch.zeros(4, 4, 3), 64, 64)
    with pytest.raises(ValueError, match="resample expected 'lanczos' or 'bicubic'"):
        pc.preprocess_frame(torch.zeros(4, 4, 3, dtype=torch.uint8), 64, 64, resample="nearest")
