"""VLMStreamRunner: the original pipeline's runner, on the native engine.

Same constructor, defaults and output as theirs: dialogue at ground-truth DST
substep transitions (or predicted ones), a cache carried across transitions
when use_kv_cache=True, one FrameOutput per frame. Where theirs was broken,
this one differs on purpose (README, "Swapping into your pipeline").
"""

import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from prospect_core.context_strategies import ContextStrategyFactory, cache_length
from prospect_core.dst import active, dst_rows
from prospect_core.model import dtype_name, resolve_model_path
from prospect_core.models import CustomSmolVLMProcessor, SmolVLMWithStrategies
from prospect_core.runners.frame_output import FrameOutput
from prospect_core.utils.cache_manager import KVCacheManager
from prospect_core.utils.chat_formatter import ChatFormatter

RUNNER_KWARGS = {"max_seq_len": 4096, "reserved_seq_len": 128, "use_kv_cache": False, "seed": 0}
VIDEO_KWARGS = ("use_gt_context", "not_talk_threshold")  # what ProAssist's StreamEvaluator passes; not used here

__all__ = ["FrameOutput", "VLMStreamRunner"]


def _number(name, value, low, high=None, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} expected a number {bound}, got {value!r}")


class VLMStreamRunner:
    # Over 60 lines for its signature alone: it mirrors the original pipeline's constructor keyword for
    # keyword; the body only turns them into a RunnerConfig.
    def __init__(
        self,
        model_name,
        eval_name: str = "vlm_baseline",
        device: str = "cuda",
        torch_dtype: str = "bfloat16",
        max_new_tokens: int = 100,
        temperature: float = 0.7,
        top_p: float = 0.9,
        do_sample: bool = True,
        transition_detection_prompt: str = "",
        dialogue_generation_prompt: str = "",
        fps: int = 2,
        not_talk_threshold: float = 0.5,
        use_gt_substeps: bool = True,
        cache_dir=None,
        context_strategy_type: str = "none",
        context_strategy_config=None,
        trace=None,
        **kwargs,
    ):
        # Long as the original's constructor is: the same arguments, each checked, then the model loaded.
        unknown = sorted(set(kwargs) - set(RUNNER_KWARGS))
        if unknown:
            raise TypeError(
                f"VLMStreamRunner: unknown arguments {unknown} (extra keyword arguments are {', '.join(RUNNER_KWARGS)})"
            )
        opts = {**RUNNER_KWARGS, **kwargs}
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens expected an int >= 1, got {max_new_tokens!r}")
        _number("temperature", temperature, 0)
        _number("top_p", top_p, 0, 1, low_open=True)
        _number("fps", fps, 0, low_open=True)
        _number("not_talk_threshold", not_talk_threshold, 0, 1)
        if context_strategy_config is not None and not isinstance(context_strategy_config, Mapping):
            raise TypeError(
                f"context_strategy_config expected a dict or None, got {type(context_strategy_config).__name__}"
            )
        self.model_name, self.eval_name, self.device = model_name, eval_name, device
        self.max_new_tokens, self.temperature, self.top_p, self.do_sample = (
            max_new_tokens,
            temperature,
            top_p,
            bool(do_sample),
        )
        self.transition_detection_prompt = transition_detection_prompt
        self.dialogue_generation_prompt = dialogue_generation_prompt
        self.fps, self.not_talk_threshold, self.use_gt_substeps = fps, not_talk_threshold, use_gt_substeps
        self.trace, self.seed = trace, opts["seed"]
        self.max_seq_len, self.reserved_seq_len = opts["max_seq_len"], opts["reserved_seq_len"]

        self.context_strategy = None
        if context_strategy_type and context_strategy_type != "none":
            self.context_strategy = ContextStrategyFactory.create_strategy(
                context_strategy_type,
                max_seq_len=self.max_seq_len,
                reserved_seq_len=self.reserved_seq_len,
                **dict(context_strategy_config or {}),
            )

        from transformers import AutoProcessor

        path = resolve_model_path(model_name, cache_dir)
        self.processor = CustomSmolVLMProcessor(AutoProcessor.from_pretrained(path))
        self.chat_formatter = ChatFormatter(self.processor.tokenizer)
        self.model = SmolVLMWithStrategies.from_pretrained(path, torch_dtype=dtype_name(torch_dtype), device_map=device)
        self.model.config.max_seq_len = self.max_seq_len  # the cache is sized for it
        self.prev_substep = self.current_substep = None
        self.cache_manager = KVCacheManager(context_strategy=self.context_strategy)
        self.use_kv_cache = bool(opts["use_kv_cache"])
        self._rows = []

    # ---- the video --------------------------------------------------------------------------
    def run_inference_on_video(self, video, output_dir: str = "", **kwargs):
        """{"predictions": [FrameOutput per frame], "video_id"} for a video dict: video_id, frames (images),
        conversation ([{from, timestamp, value}]), dst_annotations (DataFrame or rows), fps."""
        unknown = sorted(set(kwargs) - set(VIDEO_KWARGS))
        if unknown:
            raise TypeError(f"run_inference_on_video: unknown arguments {unknown}")
        video_id, frames, conversation = self._check_video(video)
        self._rows = dst_rows(video.get("dst_annotations"), "video['dst_annotations']")
        if (
            not (self.use_gt_substeps and video.get("dst_annotations") is not None)
            and "<image>" not in self.transition_detection_prompt
        ):
            raise ValueError(
                "transition_detection_prompt expected a prompt with <image> (substeps are predicted "
                "when use_gt_substeps is off or the video has no dst_annotations), got "
                f"{self.transition_detection_prompt!r}"
            )
        self.prev_substep = self.current_substep = None
        self.cache_manager.reset()
        refs = reference_frames(conversation, self.fps)
        outputs = []
        for frame_idx, frame in enumerate(frames):
            t = frame_idx / self.fps
            curr = self._detect_substep(frame, video.get("dst_annotations"), t)
            self.current_substep = curr
            gen = ""
            if self.prev_substep is not None and curr is not None and curr != self.prev_substep:
                if self.use_kv_cache:
                    gen = self._generate_dialogue_with_cache(frame, self.prev_substep, curr, t, frame_idx)
                else:
                    gen = self._generate_dialogue(frame, self.prev_substep, curr, frame_idx)
            outputs.append(
                FrameOutput(
                    gen=gen,
                    ref=refs.get(frame_idx, ""),
                    image=frame,
                    frame_idx_in_stream=frame_idx,
                    timestamp_in_stream=t,
                )
            )
            self.prev_substep = curr
        return {"predictions": outputs, "video_id": video_id}

    def _check_video(self, video):
        if not isinstance(video, Mapping):
            raise TypeError(f"video expected a dict, got {type(video).__name__}")
        for key in ("video_id", "frames"):
            if key not in video:
                raise ValueError(f"video expected a '{key}' key; it has {sorted(video)}")
        fps = video.get("fps", self.fps)
        if fps != self.fps:
            raise ValueError(
                f"video['fps'] is {fps!r} but the runner was built with fps={self.fps}: timestamps "
                "would not match the frames; build the runner with the video's fps"
            )
        frames = video["frames"]
        if not isinstance(frames, (list, tuple)):
            raise TypeError(f"video['frames'] expected a list of images, got {type(frames).__name__}")
        conversation = video.get("conversation") or []
        if not isinstance(conversation, list) or not all(isinstance(t, Mapping) for t in conversation):
            raise TypeError("video['conversation'] expected a list of turns ({from, timestamp, value})")
        return video["video_id"], frames, conversation

    def _detect_substep(self, frame, dst_annotations, timestamp):
        """The ground-truth substep at this time, or the model's guess when there is none to read."""
        if self.use_gt_substeps and dst_annotations is not None:
            return active(self._rows, "SUBSTEP", timestamp)
        inputs = self.processor(images=frame, text=self.transition_detection_prompt, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=50, do_sample=False)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    # ---- dialogue -----------------------------------------------------------------------------
    def _sampling(self, frame_idx):
        return {
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed + frame_idx,
        }

    def _clean(self, text, prompt):
        if "Assistant:" in text:
            text = text.split("Assistant:")[-1]
        return text.replace(prompt, "").strip()

    def _generate_dialogue(self, frame, prev_substep, curr_substep, frame_idx=0):
        """Stateless: the frame and the prompt alone, from a fresh cache."""
        prompt = self.dialogue_generation_prompt.format(prev_substep=prev_substep, curr_substep=curr_substep)
        inputs = self.processor(images=frame, text=prompt, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **self._sampling(frame_idx))
        new = out[0, inputs["input_ids"].shape[1] :]  # the reply only, not the prompt decoded back
        return self._clean(self.processor.decode(new, skip_special_tokens=True), prompt)

    @staticmethod
    def _get_cache_length(past_key_values) -> int:
        return cache_length(past_key_values)

    def _save_frame(self, frame, frame_idx):
        frames_dir = getattr(self.trace, "frames_dir", None) if self.trace is not None else None
        if not frames_dir or not hasattr(frame, "save"):
            return None
        Path(frames_dir).mkdir(parents=True, exist_ok=True)
        name = f"frame_{frame_idx:06d}.jpg"
        frame.save(Path(frames_dir) / name, "JPEG", quality=85)
        return name

    def _compress(self, past_key_values, frame, timestamp, frame_idx):
        before = self._get_cache_length(past_key_values)
        t0 = time.perf_counter()
        past_key_values, _ = self.context_strategy.compress_cache(
            past_key_values=past_key_values,
            attention_mask=None,
            model=self.model,
            processor=self.processor,
            current_frame=frame,
            chat_formatter=self.chat_formatter,
            current_timestamp=timestamp,
            frame_idx=frame_idx,
            trace=self.trace,
            dst_annotations=self._rows or None,
        )
        if self.trace is not None:
            self.trace.add_compression_event(
                timestamp=timestamp,
                frame_idx=frame_idx,
                tokens_before=before,
                tokens_after=self._get_cache_length(past_key_values),
                strategy_name=self.context_strategy.name,
                compression_time=time.perf_counter() - t0,
            )
        return past_key_values

    @torch.no_grad()
    def _generate_dialogue_with_cache(self, frame, prev_substep, curr_substep, timestamp=0.0, frame_idx=0):
        """The frame and prompt on top of the carried cache; the strategy shrinks the cache first when due."""
        t0 = time.perf_counter()
        prompt = self.dialogue_generation_prompt.format(prev_substep=prev_substep, curr_substep=curr_substep)
        inputs = self.processor(images=frame, text=prompt, return_tensors="pt")
        pkv = self.cache_manager.get_cache()
        if (
            pkv is not None
            and self.context_strategy is not None
            and self.context_strategy.should_reduce_cache(self._get_cache_length(pkv))
        ):
            pkv = self._compress(pkv, frame, timestamp, frame_idx)
        embeds = self.model.joint_embed(
            input_ids=inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
        )
        out, new_cache = self.model.fast_greedy_generate(
            inputs_embeds=embeds,
            past_key_values=pkv,
            max_length=self.max_new_tokens,
            verbose=False,
            **self._sampling(frame_idx),
        )
        self.cache_manager.update_cache(new_cache)
        dialogue = self._clean(self.processor.tokenizer.decode(out[0], skip_special_tokens=True), prompt)
        if self.trace is not None and dialogue:
            self.trace.add_generation_event(
                timestamp=timestamp,
                frame_idx=frame_idx,
                generated_text=dialogue,
                generation_time=time.perf_counter() - t0,
                cache_tokens=self._get_cache_length(pkv),
                frame_path=self._save_frame(frame, frame_idx),
            )
        return dialogue

    def _get_reference_dialogue(self, conversation, timestamp):
        """The reference assistant turn of the frame at this time, or "" (each turn belongs to one frame)."""
        return reference_frames(conversation, self.fps).get(round(timestamp * self.fps), "")


def reference_frames(conversation, fps):
    """{frame index: reference text}: an assistant turn at time t belongs to frame floor(t * fps), as in
    ProAssist (the original gave a turn to every frame within 0.5 s, so one turn could count twice)."""
    refs = {}
    for turn in conversation:
        if turn.get("from") == "assistant":
            refs.setdefault(math.floor(float(turn.get("timestamp", 0)) * fps), turn.get("value", ""))
    return refs
