"""The text around frames and turns, in SmolVLM2's chat format.

`<|im_start|>` once at the start; each message is `Role:` (no space before an
image), its content, `<end_of_utterance>` and a newline; a video frame is
`\\nFrame from MM:SS:` followed by the image tokens; the generation prompt is
`Assistant:`.
"""

EOU = "<end_of_utterance>"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant watching a video of a person doing a task. When it helps, "
    "tell them what to do next or what went wrong; otherwise stay silent."
)


def system_turn(text: str, first: bool) -> str:
    return ("<|im_start|>" if first else "") + f"System: {text}{EOU}\n"


def user_turn(text: str) -> str:
    return f"User: {text}{EOU}\n"


def assistant_turn(text: str) -> str:
    return f"Assistant: {text}{EOU}\n"


def summary_turn(summary: str) -> str:
    return f"System: Summary of the video so far: {summary}{EOU}\n"


def knowledge_turn(knowledge: str) -> str:
    return f"System: Task knowledge: {knowledge}{EOU}\n"


def timestamp(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"


def image_tokens(image_seq_len: int, rows: int = 0, cols: int = 0) -> str:
    """One frame's image string: a global image, plus row/col tiles when the frame was split."""
    glob = "<fake_token_around_image><global-img>" + "<image>" * image_seq_len + "<fake_token_around_image>"
    if rows == 0 and cols == 0:
        return glob
    tiles = ""
    for r in range(rows):
        for c in range(cols):
            tiles += f"<fake_token_around_image><row_{r + 1}_col_{c + 1}>" + "<image>" * image_seq_len
        tiles += "\n"
    return tiles + "\n" + glob


def frame_turn(time: float, image_seq_len: int, rows: int = 0, cols: int = 0) -> str:
    return f"User:\nFrame from {timestamp(time)}:{image_tokens(image_seq_len, rows, cols)}{EOU}\n"


ASSISTANT_PROMPT = "Assistant:"
AFTER_REPLY = f"{EOU}\n"  # closes a reply; the stop token itself is never fed back
