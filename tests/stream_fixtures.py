"""Synthetic video data for runner tests: random frames and a ProAssist-style conversation."""

import numpy as np

CONVERSATION = [
    {"role": "user", "time": 0.5, "content": "How do I make tea?"},
    {"role": "assistant", "time": 2.0, "content": "Boil the water first."},
    {"role": "assistant", "time": 6.5, "content": "Now pour it over the tea bag."},
    {"role": "user", "time": 9.0, "content": "How long should it steep?"},
    {"role": "assistant", "time": 10.0, "content": "About three minutes."},
]


def video(n_frames, seed=0, conversation=CONVERSATION, **extra):
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n_frames)]
    return {"video_id": f"synthetic-{seed}", "frames": frames, "fps": 2.0, "conversation": conversation, **extra}


def small_runner(model, **kw):
    """A StreamRunner with a 512-token context (64 reserved), 4 new tokens and the last 128 tokens kept by its
    strategy; kw adds to or overrides these."""
    from prospect_core.runners import StreamRunner

    settings = dict(
        max_seq_len=512, reserved_seq_len=64, max_new_tokens=4, context_strategy_config={"last_keep_len": 128}
    )
    return StreamRunner(model, **{**settings, **kw})
