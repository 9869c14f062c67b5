"""The streaming step per frame: preprocessing + vision encoder + prefill + the talk decision."""

import torch

from common import median_ms_pair


def vision_flops(cfg):
    """Multiply-adds x 2 of one image through the vision encoder (attention included) and the connector."""
    v = cfg["vision_config"]
    S = (v["image_size"] // v["patch_size"]) ** 2
    D, I = v["hidden_size"], v["intermediate_size"]
    patch = S * D * 3 * v["patch_size"] ** 2
    layer = S * (4 * D * D + 2 * D * I) + 2 * S * S * D
    conn = cfg["image_seq_len"] * D * cfg["scale_factor"] ** 2 * cfg["text_config"]["hidden_size"]
    return 2 * (patch + v["num_hidden_layers"] * layer + conn)


@torch.no_grad()
def bench_streaming(path, video, frames=12, repeats=3, weights="dense"):
    from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

    import prospect_core
    import prospect_core as core
    from prospect_core import prompt
    from prospect_core.frames import FramePreprocessor

    ours = prospect_core.load_model(path, weights=weights)
    cfg = ours.config
    proc = AutoProcessor.from_pretrained(path)
    ref = AutoModelForImageTextToText.from_pretrained(path).eval()
    pre = FramePreprocessor(proc)
    tok = proc.tokenizer
    eou = tok.convert_tokens_to_ids(prompt.EOU)
    clips = [f for _, f in zip(range(frames), (f for _, f in core.VideoReader(str(video), 2.0)))]
    texts = [
        prompt.frame_turn((i + 1) / 2.0, cfg["image_seq_len"]) + prompt.ASSISTANT_PROMPT for i in range(len(clips))
    ]
    ids = [tok(t, add_special_tokens=False, return_tensors="pt").input_ids for t in texts]
    pvs = [pre(f)[0] for f in clips]  # the same pixel_values for both models' part

    def ours_stream():
        cache = ours.make_cache(4096)
        for f, i in zip(clips, ids):
            pv = pre(f)[0]
            r = ours.greedy_generate(ours.joint_embed(i, pv), cache, 0, [], silence=(eou, 1.0), span_kind="frame")
            assert r.silence_prob is not None

    def ref_stream():
        cache = DynamicCache()
        for f, i in zip(clips, ids):
            pv = proc.video_processor(videos=[f.permute(2, 0, 1)[None]], do_sample_frames=False, return_tensors="pt")[
                "pixel_values"
            ]
            logits = ref(input_ids=i, pixel_values=pv, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            torch.softmax(logits[0, -1].float(), -1)[eou].item()

    # Each comparison in turns (ours, theirs, ours, ...): this machine's speed drifts over minutes.
    ours_ms, ref_ms = (t / len(clips) for t in median_ms_pair(ours_stream, ref_stream, repeats))
    pre_ms, ref_pre_ms = (
        t / len(clips)
        for t in median_ms_pair(
            lambda: [pre(f) for f in clips],
            lambda: [
                proc.video_processor(videos=[f.permute(2, 0, 1)[None]], do_sample_frames=False, return_tensors="pt")
                for f in clips
            ],
            repeats,
        )
    )
    vis_ms, ref_vis_ms = (
        t / len(clips)
        for t in median_ms_pair(
            lambda: [ours.image_features(pv) for pv in pvs],
            lambda: [ref.model.get_image_features(pv) for pv in pvs],
            repeats,
        )
    )
    return {
        "frames": len(clips),
        "tokens_per_frame": int(ids[0].shape[1]),
        "prospect_ms_per_frame": ours_ms,
        "transformers_ms_per_frame": ref_ms,
        "prospect_preprocess_ms": pre_ms,
        "transformers_preprocess_ms": ref_pre_ms,
        "prospect_vision_ms": vis_ms,
        "transformers_vision_ms": ref_vis_ms,
        "vision_gflop_per_frame": vision_flops(cfg) / 1e9,
    }
