"""summarize_and_drop: the model summarises what it has seen, then the cache restarts from the summary."""

from collections.abc import Mapping

from prospect_core import _C as core
from prospect_core import prompt
from prospect_core.context_strategies.base_strategy import BaseContextStrategy, check_int

DEFAULT_SUMMARY_PROMPT = {
    "role": "system",
    "content": "Watch the user's actions and track the task progress. Please summarize the progress.",
}


def summary_request_ids(processor, text):
    """The summary request in SmolVLM2's chat format, ending in the assistant prompt so the model answers it."""
    return processor.tokenizer(
        prompt.system_turn(text, first=False) + prompt.ASSISTANT_PROMPT, return_tensors="pt", add_special_tokens=False
    )["input_ids"]


def model_summarizer(context, past_key_values, who):
    """summarize(text, max_tokens) -> str from the caller's model and processor (the original's context)."""
    missing = {"model", "processor", "chat_formatter"} - set(context)
    if missing:
        raise ValueError(
            f"{who} needs model, processor and chat_formatter in the context (it generates the "
            f"summary from the cache); missing {sorted(missing)}"
        )
    model, processor = context["model"], context["processor"]

    def summarize(text, max_tokens):
        ids = summary_request_ids(processor, text)
        embeds = model.joint_embed(input_ids=ids.to(model.device))
        out, _ = model.fast_greedy_generate(
            inputs_embeds=embeds, past_key_values=past_key_values, max_length=max_tokens, verbose=False
        )
        return processor.tokenizer.decode(out[0], skip_special_tokens=True)

    return summarize


class SummarizeAndDropStrategy(BaseContextStrategy):
    """Context: either `summarize` (a callable text, max_tokens -> summary; StreamRunner passes its own), or
    `model`, `processor` and `chat_formatter` as the original runner passes them. Returns (None, the summary as
    a system message): the caller restarts from it."""

    name = "summarize_and_drop"

    def __init__(
        self,
        max_seq_len: int,
        reserved_seq_len: int = 128,
        summary_max_length: int = 512,
        summary_prompt=None,
        initial_sys_prompt: str | None = None,
        task_knowledge: str | None = None,
        **kwargs,
    ):
        super().__init__(max_seq_len, reserved_seq_len, **kwargs)
        check_int("summary_max_length", summary_max_length, 1, max_seq_len)
        if isinstance(summary_prompt, Mapping):  # a dict, or the DictConfig the original's evaluator passes
            summary_prompt = dict(summary_prompt)
        content = summary_prompt.get("content") if isinstance(summary_prompt, dict) else summary_prompt
        if summary_prompt is not None and (not isinstance(content, str) or not content.strip()):
            raise ValueError(
                f"summary_prompt expected a non-empty string or a {{role, content}} dict, got {summary_prompt!r}"
            )
        for key, value in (("initial_sys_prompt", initial_sys_prompt), ("task_knowledge", task_knowledge)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{key} expected a string or None, got {type(value).__name__}")
        self.summary_max_length = summary_max_length
        self.summary_prompt = dict(DEFAULT_SUMMARY_PROMPT) if summary_prompt is None else summary_prompt
        self.initial_sys_prompt, self.task_knowledge = initial_sys_prompt, task_knowledge
        self.summaries = []

    def _prompt_content(self):
        if isinstance(self.summary_prompt, dict):
            return self.summary_prompt.get("content", "")
        return str(self.summary_prompt)

    def summary_request(self, **context) -> str:
        """What the model is asked: the initial system prompt, the instruction, the task knowledge."""
        parts = [self.initial_sys_prompt, self._prompt_content(), self.task_knowledge]
        return " ".join(p for p in parts if p)

    def restart_text(self):
        """The last summary as a system turn (no generation prompt after it): what compress_cache prefills."""
        return prompt.system_turn(self.summaries[-1]["text"], first=True) if self.summaries else None

    def overflow_headroom(self, summary_room=None):
        summary = self.summary_max_length if summary_room is None else min(self.summary_max_length, summary_room)
        return 64 + summary  # the request (a few tokens; 64 bounds it) and the summary

    def handle_overflow(self, past_key_values, last_msg, **context):
        summarize = context.get("summarize") or model_summarizer(context, past_key_values, self.name)
        request = self.summary_request(**context)
        summary = self._clean_summary(summarize(request, self.summary_max_length), request)
        frame_idx, t = (
            context.get("frame_idx", context.get("frame_index")),
            context.get("current_timestamp", context.get("time")),
        )
        self.summaries.append({"frame_index": frame_idx, "time": t, "text": summary})
        trace = context.get("trace")
        if trace is not None and hasattr(trace, "add_summary"):
            trace.add_summary(
                timestamp=t, frame_idx=frame_idx, summary=summary, prompt={"role": "system", "content": request}
            )
        if isinstance(past_key_values, core.KVCache):
            past_key_values.drop_all()
        formatter = context.get("chat_formatter")
        msg = formatter.apply_chat_template([{"role": "system", "content": summary}]) if formatter else summary
        return None, msg

    @staticmethod
    def _clean_summary(raw, request):
        """The reply alone: no echoed "Assistant:" prefix, no echoed request."""
        text = raw.split("Assistant:")[-1] if "Assistant:" in raw else raw
        return text.replace(request, "").strip()

    def config(self):
        return {
            **super().config(),
            "summary_prompt": self.summary_prompt,
            "summary_max_length": self.summary_max_length,
        }
