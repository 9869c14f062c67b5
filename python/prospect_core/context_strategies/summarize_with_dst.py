"""summarize_with_dst: summarize_and_drop whose request carries the task state from DST annotations."""

from prospect_core.context_strategies.summarize_and_drop import SummarizeAndDropStrategy
from prospect_core.dst import dst_rows, dst_state, read_dst_tsv

DEFAULT_DST_PROMPT = {
    "role": "system",
    "content": "Summarize the progress of the task from the task state below and what you have seen and heard.",
}


class SummarizeWithDSTStrategy(SummarizeAndDropStrategy):
    """Annotations come from `dst_file` (a TSV), or from `dst_annotations` in the context (the runner passes the
    video's own); the state at `current_timestamp` goes into the summary request."""

    name = "summarize_with_dst"

    def __init__(
        self,
        max_seq_len: int,
        reserved_seq_len: int = 128,
        summary_max_length: int = 256,
        dst_file: str | None = None,
        initial_sys_prompt: str | None = None,
        task_knowledge: str | None = None,
        summary_prompt=None,
        **kwargs,
    ):
        super().__init__(
            max_seq_len,
            reserved_seq_len,
            summary_max_length,
            summary_prompt if summary_prompt is not None else dict(DEFAULT_DST_PROMPT),
            initial_sys_prompt,
            task_knowledge,
            **kwargs,
        )
        self.dst_file = dst_file
        self.dst_annotations = read_dst_tsv(dst_file) if dst_file else None

    def summary_request(self, **context) -> str:
        rows = dst_rows(context.get("dst_annotations")) or self.dst_annotations or []  # the video's, else the file's
        t = context.get("current_timestamp", context.get("time")) or 0.0
        state = dst_state(rows, float(t))
        lines = [f"Task state at {state['timestamp']:.1f} s:"]
        if state["completed_steps"]:
            lines.append("done: " + "; ".join(state["completed_steps"]) + ".")
        lines.append(f"now: {state['current_step']}")
        for key in ("current_substep", "current_action"):
            if state[key] != "Unknown":
                lines.append(f"({key.split('_')[1]}: {state[key]})")
        if state["next_step"]:
            lines.append(f"next: {state['next_step']}.")
        parts = [self.initial_sys_prompt, self.task_knowledge, " ".join(lines), self._prompt_content()]
        return " ".join(p for p in parts if p)

    def config(self):
        return {**super().config(), "dst_file": self.dst_file}
