"""Command lines of `prospect compare` for the tests that run it as a process of its own."""

# The sample dataset, a 512-token context whose strategy keeps the last 128 tokens, 8 new tokens a reply.
SMALL = ["--dataset", "sample", "--max-seq-len", "512", "--last-keep-len", "128", "--max-new-tokens", "8"]


def compare_args(strategies, max_frames):
    """`prospect compare` arguments, with SMALL's settings, for strategies (comma-separated) over max_frames."""
    return ["compare", *SMALL, "--strategies", strategies, "--max-frames", str(max_frames)]
