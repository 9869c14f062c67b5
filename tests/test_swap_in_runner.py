"""The original pipeline's VLMStreamRunner and BaselineGenerator, mirrored, on CPU with their inputs."""

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from prospect_core.generators import BaselineGenerator
from prospect_core.runners import VLMStreamRunner
from prospect_core.runners.frame_output import FrameOutput

FPS = 2
SUBSTEPS = [
    ("Fill the kettle", 0.0, 3.9),
    ("Boil the water", 4.0, 7.9),
    ("Warm the pot", 8.0, 11.9),
    ("Add the tea", 12.0, 15.9),
    ("Pour the water", 16.0, 19.9),
    ("Wait", 20.0, 23.9),
    ("Serve", 24.0, 29.9),
]
PROMPT = "<image>They finished {prev_substep} and now start {curr_substep}. Say one helpful thing."


def dst_frame():
    rows = [{"type": "STEP", "name": "Make tea", "start_ts": 0.0, "end_ts": 29.9}]
    rows += [{"type": "SUBSTEP", "name": n, "start_ts": a, "end_ts": b} for n, a, b in SUBSTEPS]
    return pd.DataFrame(rows)


def tea_video(n_frames=60, fps=FPS):
    frames = [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (40, 52, 3), dtype=np.uint8)) for i in range(n_frames)
    ]
    conversation = [
        {"from": "assistant", "timestamp": a, "value": f"Now {n.lower()}.", "labels": ""} for n, a, _ in SUBSTEPS[1:]
    ]
    conversation[2]["timestamp"] += 0.2  # between two frames: it belongs to one of them, floor(t * fps)
    return {
        "video_id": "tea-01",
        "dataset": "prospect/test",
        "frames": frames,
        "conversation": conversation,
        "dst_annotations": dst_frame(),
        "fps": fps,
    }


TRANSITIONS = [int(a * FPS) for _, a, _ in SUBSTEPS[1:]]


class RecordingTrace:
    """The trace methods the original runner and strategies call, recorded."""

    frames_dir = None

    def __init__(self):
        self.events = []

    def add_compression_event(self, **kw):
        self.events.append(("compression", kw))

    def add_generation_event(self, **kw):
        self.events.append(("generation", kw))

    def add_summary(self, **kw):
        self.events.append(("summary", kw))


def make_runner(model, strategy="none", config=None, trace=None, **kw):
    # The original evaluator's call, with a local checkpoint and the CPU.
    kw = {"use_gt_substeps": True, **kw}
    return VLMStreamRunner(
        model_name=str(model),
        eval_name="baseline_smolvlm2",
        device="cpu",
        torch_dtype="float32",
        max_new_tokens=8,
        temperature=0.7,
        top_p=0.9,
        do_sample=False,
        transition_detection_prompt="",
        dialogue_generation_prompt=PROMPT,
        fps=FPS,
        not_talk_threshold=0.5,
        cache_dir=None,
        context_strategy_type=strategy,
        context_strategy_config=config,
        trace=trace,
        **kw,
    )


def test_defaults_are_the_originals():
    import inspect

    sig = inspect.signature(VLMStreamRunner.__init__)
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {
        "eval_name": "vlm_baseline",
        "device": "cuda",
        "torch_dtype": "bfloat16",
        "max_new_tokens": 100,
        "temperature": 0.7,
        "top_p": 0.9,
        "do_sample": True,
        "transition_detection_prompt": "",
        "dialogue_generation_prompt": "",
        "fps": 2,
        "not_talk_threshold": 0.5,
        "use_gt_substeps": True,
        "cache_dir": None,
        "context_strategy_type": "none",
        "context_strategy_config": None,
        "trace": None,
    }


STRATEGIES = {
    "drop_all": {},
    "drop_middle": {"last_keep_len": 96},
    "summarize_and_drop": {"summary_max_length": 6},
    "summarize_with_dst": {"summary_max_length": 6},
}


@pytest.mark.parametrize("strategy", ["none", *STRATEGIES])
def test_one_frame_output_per_frame_and_dialogue_at_transitions(tiny_model, strategy):
    trace = RecordingTrace()
    r = make_runner(
        tiny_model,
        strategy,
        STRATEGIES.get(strategy),
        trace,
        use_kv_cache=strategy != "none",
        max_seq_len=640,
        reserved_seq_len=32,
    )
    out = r.run_inference_on_video(tea_video(), output_dir="")
    preds = out["predictions"]
    assert out["video_id"] == "tea-01" and len(preds) == 60
    assert all(isinstance(p, FrameOutput) for p in preds)
    assert [p.frame_idx_in_stream for p in preds] == list(range(60))
    assert [p.timestamp_in_stream for p in preds] == [i / FPS for i in range(60)]
    assert [i for i, p in enumerate(preds) if p.gen] == TRANSITIONS  # random weights still say something
    assert [i for i, p in enumerate(preds) if p.ref] == TRANSITIONS
    assert preds[TRANSITIONS[0]].ref == "Now boil the water." and preds[0].image is not None
    kinds = [k for k, _ in trace.events]
    if strategy == "none":
        assert kinds == []  # stateless: no cache, no compression, nothing traced
        return
    assert kinds.count("generation") == len(TRANSITIONS)
    compressions = [kw for k, kw in trace.events if k == "compression"]
    assert len(compressions) >= 2, "the stream never compressed twice"
    assert all(c["tokens_after"] < c["tokens_before"] and c["strategy_name"] == strategy for c in compressions)
    if strategy.startswith("summarize"):
        summaries = [kw for k, kw in trace.events if k == "summary"]
        assert len(summaries) == len(compressions)
        # The summary is kept: the cache after a compression holds it, prefilled.
        assert all(c["tokens_after"] > 0 for c in compressions)
    if strategy == "summarize_with_dst":
        assert "Make tea" in summaries[0]["prompt"]["content"]  # the video's own DST state


def test_kv_cache_path_is_the_models_loop_over_a_carried_cache(tiny_model):
    # Without a strategy and with use_kv_cache, each transition's reply comes from fast_greedy_generate over
    # the cache the previous one left: the same as calling the model by hand.
    r = make_runner(tiny_model, use_kv_cache=True)
    video = tea_video(20)
    got = [p.gen for p in r.run_inference_on_video(video)["predictions"] if p.gen]
    cache, want = None, []
    for i in TRANSITIONS[:2]:
        prev = next(n for n, a, b in SUBSTEPS if a <= (i - 1) / FPS <= b)
        curr = next(n for n, a, b in SUBSTEPS if a <= i / FPS <= b)
        inputs = r.processor(
            images=video["frames"][i], text=PROMPT.format(prev_substep=prev, curr_substep=curr), return_tensors="pt"
        )
        ids, cache = r.model.fast_greedy_generate(
            r.model.joint_embed(
                input_ids=inputs["input_ids"],
                pixel_values=inputs["pixel_values"],
                pixel_attention_mask=inputs["pixel_attention_mask"],
            ),
            cache,
            max_length=8,
        )
        want.append(r.processor.decode(ids[0], skip_special_tokens=True).split("Assistant:")[-1].strip())
    assert got == want


def test_video_inputs_are_checked(tiny_model):
    r = make_runner(tiny_model)
    with pytest.raises(ValueError, match=r"video\['fps'\] is 4 but the runner was built with fps=2"):
        r.run_inference_on_video(tea_video(4, fps=4))
    with pytest.raises(ValueError, match="video expected a 'frames' key"):
        r.run_inference_on_video({"video_id": "x"})
    bad = tea_video(4)
    bad["dst_annotations"] = [{"type": "SUBSTEP", "name": "x"}]
    with pytest.raises(ValueError, match=r"video\['dst_annotations'\]\[0\] expected a row with type, name"):
        r.run_inference_on_video(bad)
    no_dst = {**tea_video(4), "dst_annotations": None}
    with pytest.raises(ValueError, match="transition_detection_prompt expected a prompt with <image>"):
        r.run_inference_on_video(no_dst)
    with pytest.raises(TypeError, match=r"unknown arguments \['max_seq'\]"):
        make_runner(tiny_model, max_seq=3)
    with pytest.raises(TypeError, match=r"unknown arguments \['beam'\]"):
        r.run_inference_on_video(tea_video(2), beam=2)


def test_rows_work_as_well_as_a_dataframe_and_predicted_substeps(tiny_model):
    r = make_runner(tiny_model)
    video = tea_video(12)
    a = [p.gen for p in r.run_inference_on_video(video)["predictions"]]
    b = [
        p.gen
        for p in r.run_inference_on_video({**video, "dst_annotations": video["dst_annotations"].to_dict("records")})[
            "predictions"
        ]
    ]
    assert a == b and sum(bool(x) for x in a) == 1
    # No ground truth: the model names the substep from the frame; each change of name is a transition.
    guess = make_runner(tiny_model, use_gt_substeps=False)
    guess.transition_detection_prompt = "<image>Which substep is this?"
    named = []
    detect = guess._detect_substep
    guess._detect_substep = lambda *a: named.append(detect(*a)) or named[-1]
    out = guess.run_inference_on_video({**video, "dst_annotations": None})["predictions"]
    changes = [i for i in range(1, 12) if named[i] and named[i - 1] and named[i] != named[i - 1]]
    assert len(out) == 12 and len(named) == 12 and all(named)
    assert len(set(named)) > 1, "random frames should get different names from random weights"
    assert [i for i, p in enumerate(out) if p.gen] == changes


def test_baseline_generator_writes_the_originals_files_and_keys(tiny_model, tmp_path):
    class Dataset(list):
        dataset_name = "prospect/proassist_dst"

    cfg = OmegaConf.create(
        {
            "fps": FPS,
            "not_talk_threshold": 0.5,
            "eval_max_seq_len_str": "4k",
            "match_window_time": [-15, 15],
            "match_dist_func_factor": 0.3,
            "match_dist_func_power": 1.5,
            "match_semantic_score_threshold": 0.5,
            "sts_model_type": "sentence-transformers/all-mpnet-base-v2",
            "nlg_metrics": ["Bleu"],
            "generator": {"context_handling_method": "drop_middle"},
        }
    )
    r = make_runner(
        tiny_model, "drop_middle", {"last_keep_len": 96}, use_kv_cache=True, max_seq_len=320, reserved_seq_len=32
    )
    metrics = BaselineGenerator(Dataset([tea_video(40)]), r, tmp_path, cfg, None).run()
    eval_dir = tmp_path / "eval" / "prospect-proassist_dst" / "stream" / "notalk0.5-maxlen_4k-drop_middle"
    assert json.loads((eval_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (eval_dir / "all_results.json").exists()
    result = json.loads((eval_dir / "results" / "0.json").read_text())
    assert len(result["predictions"]) == 40 and "image" not in result["predictions"][0]
    for key in (
        "F1",
        "precision",
        "recall",
        "num_matched",
        "num_mismatched",
        "num_missed",
        "num_redundant",
        "jaccard_index",
        "missing_rate",
        "redundant_rate",
        "semantic_score",
        "time_diff",
        "Bleu_4",
        "Bleu_4_w",
        "f1",
        "good",
    ):
        assert key in metrics, key
    # Every prediction and reference is accounted for, once.
    gens = sum(bool(p["gen"]) for p in result["predictions"])
    refs = sum(bool(p["ref"]) for p in result["predictions"])
    matched = metrics["num_matched"] + metrics["num_mismatched"]
    assert matched + metrics["num_redundant"] == gens and matched + metrics["num_missed"] == refs
    assert metrics["sts_model"].startswith("sentence-transformers/all-MiniLM-L6-v2")  # offline stand-in, recorded
    total = matched + metrics["num_missed"] + metrics["num_redundant"]
    assert metrics["jaccard_index"] == pytest.approx(metrics["num_matched"] / total)
