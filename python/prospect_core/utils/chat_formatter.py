"""ChatFormatter: the tokenizer's chat template over {role, content} messages."""


def _as_parts(messages):
    """SmolVLM2's template reads content as a list of {type, text} parts; a plain string there renders as
    nothing, so strings are wrapped (the original lost its summaries that way)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] expected a dict with role and content, got {m!r}")
        content = m["content"]
        out.append({**m, "content": [{"type": "text", "text": content}] if isinstance(content, str) else content})
    return out


class ChatFormatter:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = True):
        return self.tokenizer.apply_chat_template(
            _as_parts(messages), tokenize=tokenize, add_generation_prompt=add_generation_prompt
        )

    def format_system_message(self, content: str) -> str:
        return self.apply_chat_template([{"role": "system", "content": content}], add_generation_prompt=False)

    def format_user_message(self, content: str) -> str:
        return self.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
